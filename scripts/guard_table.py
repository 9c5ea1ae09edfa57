"""
scripts/guard_table.py: the consistency guard's table (docs/training.md, "Precision") for the DDP path and the FSDP
path, on CPU: |re-scored - rollout| log-probability per sampled step, per mode, on the toy base model.

Paper: none (our precision policy, runtime.py). Rows: fp32 throughout; fp32 master weights under bf16 autocast (DDP,
one model rolls out and re-scores); FSDP2 with bf16 compute (a one-rank gloo group runs runtime.load_fsdp: the
rollout copy's bf16 layers and fp32 E/head generate, the sharded model re-scores). The rollout copy's logits are
also compared with the fp32 model's on the same inputs (max |difference|, and how often the argmax differs).

    python scripts/guard_table.py                  # 64 prompts x 4 samples per mode, CoT cap 64 (~2 min on 1 core)
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.distributed as dist

import data
import runtime
import softcot
import toy


def guard_row(rollout_lm, scorer, tok, prompts, mode, ctx, seed):
    """(median, max, count > 1 nat) of |re-scored - rollout| over the sampled steps of one batch."""
    with ctx:
        ro = softcot.rollout(rollout_lm, tok, prompts, mode=mode, tau=softcot.TRAIN_TAU[mode],
                             sigma=0.0 if mode == "hard" else softcot.noise_sigma(rollout_lm), num_samples=4,
                             max_cot_tokens=64, max_answer_tokens=8, answer_temperature=1.0,
                             generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            lp = scorer(ro)
    scored = (ro.kind == softcot.COT) | (ro.kind == softcot.ANSWER)
    d = (lp - ro.logp).abs()[scored]
    return d.median().item(), d.max().item(), int((d > 1).sum()), int(scored.sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    path = toy.base_model(seed=0)
    tok = runtime.load_tokenizer(path)
    rows = toy.make_rows(args.prompts, seed=123, split="test")
    prompts = [toy.TOY_PROMPT.format(question=r["question"]) for r in rows]
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    fp32_lm = softcot.use_fp32_head(runtime.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", store=dist.FileStore(os.path.join(tmp, "store"), 1), rank=0, world_size=1)
        lm, scorer, rollout_lm = runtime.load_fsdp(path, cpu, 0, torch.float32, bf16)
        paths = {"fp32, fp32": (fp32_lm, runtime.Scorer(fp32_lm), runtime.compute_context(cpu, torch.float32)),
                 "fp32 masters, bf16 autocast (DDP)": (fp32_lm, runtime.Scorer(fp32_lm),
                                                       runtime.compute_context(cpu, bf16)),
                 "FSDP, bf16 compute (rollout copy / shards)": (rollout_lm, scorer, runtime.compute_context(cpu, bf16))}
        print("| weights, compute | mode | median | max | steps > 1 nat | steps |\n|---|---|---|---|---|---|")
        for name, (gen_lm, sc, ctx) in paths.items():
            for mode in softcot.MODES:
                med, mx, n_bad, n = guard_row(gen_lm, sc, tok, prompts, mode, ctx, seed=0)
                print(f"| {name} | {mode} | {med:.2g} | {mx:.3g} | {n_bad} | {n} |", flush=True)
        ids = tok(prompts, return_tensors="pt", padding=True, padding_side="left")
        with torch.no_grad(), runtime.compute_context(cpu, bf16):
            a = rollout_lm(**ids).logits.float()
        with torch.no_grad():
            b = fp32_lm(**ids).logits
        mask = ids.attention_mask.bool()
        diff = (a - b).abs()[mask]
        flips = (a.argmax(-1) != b.argmax(-1))[mask].float().mean().item()
        print(f"\nFSDP rollout copy against the fp32 model, {int(mask.sum())} prompt positions: max |logit difference| "
              f"{diff.max().item():.4f}, argmax differs at {100 * flips:.2f}%")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
