"""
scripts/gpu_check.py: the CUDA path, run for real, in one command of about 6-8 minutes on one H100 / H200.

Nothing in the tests needs a GPU; this is what to run the day one is at hand, and what to paste into a report:

    python scripts/gpu_check.py              # everything below, in order; stops at the first failure
    python scripts/gpu_check.py --skip_bench # without bench.py (the longest part, ~3 min)

1. train.py --recipe tiny on cuda (fp32 master weights, bf16 autocast, fp32 head), hard and fuzzy, 6 steps each:
   asserts that the weights moved, that no update was skipped, and prints rescore_mismatch (the consistency
   guard's count: steps whose re-scored log-prob drifted from the rollout's by more than 1 nat).
2. The same under torchrun with --fsdp on 1 process (NCCL, FSDP2 mixed precision, the rollout copy, the gathered
   checkpoint).
3. A Llama-3.2-3B-shaped model with random weights, fp32 masters and bf16 compute: a 32-row rollout with a
   128-token CoT per mode, and one training step (re-score in micro-batches of 4 + AdamW), with tokens/s, seconds
   per step, peak memory, and the guard's count at fuzzy tau = 1e-4.
4. bench.py --device cuda (Llama-3.2-3B's shape): the rollout, re-scoring and mixture tables, and table 5, the
   cost of the fp32 head.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


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


def main():
    ap = argparse.ArgumentParser(description="Run the CUDA path for real (one GPU, about 6-8 minutes).")
    ap.add_argument("--skip_bench", action="store_true", help="leave out bench.py --device cuda")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible (torch.cuda.is_available() is False)")
    print(f"gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__}", flush=True)
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
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "train.py", *tiny,
         "--mode", "soft", "--fsdp", "--out", out])
    check_run(out, base)
    print("\n## 3. Llama-3.2-3B shape, random weights, fp32 masters + bf16 compute: 32 rows, CoT 128", flush=True)
    model_step()
    if not args.skip_bench:
        print("\n## 4. bench.py --device cuda", flush=True)
        run([sys.executable, "bench.py", "--device", "cuda", "--repeats", "3", "--out", os.path.join(tmp, "bench.json")])
    print(f"\ngpu_check: all passed (outputs in {tmp})")


if __name__ == "__main__":
    main()
