"""
scripts/calibrate_toy.py: how sure of itself is a base model's chain of thought? Toy base models next to
SmolLM2-135M-Instruct, measured the same way (docs/toy_study.md, part 1).

Why: soft and fuzzy training can only move a model through the spread of its next-token distributions (Eq. 6:
the mixture p E is one token's embedding when p is one-hot), and hard training only through its samples' spread.
A toy base model far more confident than a real instruct model is not a fair place to compare the three modes.

For each model, on --limit test problems (spread evenly over the split) of its evaluate.py recipe (toy: the toy test split with the
toy prompt; smol: the same problems in English with SmolLM2's prompt), CoT cap --max_cot_tokens for both:
  - greedy accuracy: one hard greedy rollout, answer greedy, graded by evaluate.judge;
  - entropy profile: --samples hard CoTs at tau = 1 per problem; per CoT position, the mean next-token entropy
    over the generations still in their CoT (evaluate.cot_entropy, App. G.3, what evaluate.py plots);
  - the same entropy summed over the CoT and divided by its characters (a toy token is one character, a
    SmolLM2 token ~4: per character is the fairer comparison of how much is left open);
  - peak share: on the same samples, teacher-forced, the share of CoT steps where softmax(logits / 0.5) (the
    soft mixture's weights, Eq. 6 at tau = 0.5) puts more than 0.99 on one token.
Prints a markdown table, writes <out>/calibration.json and <out>/calibration.png (every profile on one axes).

    python scripts/calibrate_toy.py --toy models/toy-base-s0 models/toy-calibrated-s0 --smol --out runs/calib
"""

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate  # noqa: E402
import recipes  # noqa: E402
import runtime  # noqa: E402
import softcot  # noqa: E402

PEAK, PEAK_TAU = 0.99, 0.5


@torch.no_grad()
def cot_logits(model, ro):
    """Teacher-forced next-token logits for every generated position, (N, S, V) fp32, and the CoT mask (N, S):
    one full forward over [prompt ; generated ids] (a hard CoT's ids are the fed tokens)."""
    ids = torch.cat([ro.prompt_ids, ro.ids], 1)                                         # (N, P + S)
    mask = torch.cat([ro.prompt_mask, (ro.kind != softcot.PAD).long()], 1)
    logits = model(input_ids=ids, attention_mask=mask).logits.float()                   # (N, P + S, V)
    P = ro.prompt_ids.shape[1]
    return logits[:, P - 1:P - 1 + ro.ids.shape[1]], ro.kind == softcot.COT             # position j predicts j


def peak_share(model, ro):
    """(steps, CoT steps): how many of the rollout's CoT steps have a tau = 0.5 softmax with more than PEAK on
    one token."""
    logits, cot = cot_logits(model, ro)
    top = torch.softmax(logits / PEAK_TAU, -1).amax(-1)                                  # (N, S)
    return int(((top > PEAK) & cot).sum()), int(cot.sum())


def measure(recipe, model_path, label, args):
    """One model's row: greedy accuracy, entropy profile, peak share, mean CoT length."""
    ev = evaluate.parse_args(["--recipe", recipe, "--model", model_path, "--limit", str(args.limit),
                              "--max_cot_tokens", str(args.max_cot_tokens), "--seed", str(args.seed)])
    items, _ = evaluate.load_sets(ev)
    model, tok = runtime.load_for_inference(recipes.model_path(model_path, args.seed), torch.device("cpu"), ev.dtype)
    t0, correct, ent, cnt, peaks, steps, cot_len, chars = time.time(), 0, 0.0, 0.0, 0, 0, [], 0
    for s in range(0, len(items), args.chunk):
        chunk = items[s:s + args.chunk]
        prompts = [it["prompt"] for it in chunk]
        kw = dict(max_cot_tokens=args.max_cot_tokens, max_answer_tokens=ev.max_answer_tokens, answer_temperature=0.0)
        ro = softcot.rollout(model, tok, prompts, mode="hard", tau=0.0, **kw)
        correct += sum(evaluate.judge(ro.answer_text, chunk)[0])
        gen = torch.Generator().manual_seed(args.seed * 1000 + s)
        ro = softcot.rollout(model, tok, prompts, mode="hard", tau=1.0, num_samples=args.samples, generator=gen, **kw)
        e, c = evaluate.cot_entropy(ro)                                                  # (Tc,) sums and counts
        ent, cnt = ent + torch.nn.functional.pad(e, (0, args.max_cot_tokens - len(e))), \
            cnt + torch.nn.functional.pad(c, (0, args.max_cot_tokens - len(c)))
        p, n = peak_share(model, ro)
        peaks, steps, cot_len = peaks + p, steps + n, cot_len + ro.cot_len.tolist()
        chars += sum(len(t) for t in ro.cot_text)                                        # CoT characters
    live = cnt > 0
    return dict(label=label, model=model_path, recipe=recipe, greedy_accuracy=correct / len(items),
                profile=(ent[live] / cnt[live]).tolist(), mean_entropy=float(ent.sum() / cnt.sum()),
                entropy_per_char=float(ent.sum()) / chars, peak_share=peaks / steps,
                mean_cot_len=sum(cot_len) / len(cot_len), seconds=round(time.time() - t0))


def plot(rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        ax.plot(r["profile"], label=f"{r['label']} (mean {r['mean_entropy']:.2f})",
                lw=2.5 if r["recipe"] == "smol" else 1.5, color="black" if r["recipe"] == "smol" else None)
    ax.set(xlabel="CoT position t (tokens: characters for the toy, BPE for SmolLM2)",
           ylabel="mean next-token entropy (nats)", title="CoT entropy profile, hard samples at tau = 1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--toy", nargs="*", default=[], help="toy model folders (label: the folder's name)")
    ap.add_argument("--smol", action="store_true", help="also measure SmolLM2-135M-Instruct (smol.py)")
    ap.add_argument("--limit", type=int, default=100, help="test problems per model")
    ap.add_argument("--samples", type=int, default=4, help="hard samples per problem for the profile")
    ap.add_argument("--max_cot_tokens", type=int, default=64, help="the CoT cap, the same for every model")
    ap.add_argument("--chunk", type=int, default=25, help="problems per rollout")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/calibration")
    args = ap.parse_args()
    for path in args.toy:
        if not os.path.isdir(path):
            ap.error(f"--toy {path}: no such folder (a toy base model folder, e.g. models/toy-base-s0)")
    torch.manual_seed(args.seed)
    os.makedirs(args.out, exist_ok=True)
    rows = [measure("tiny", p, os.path.basename(p.rstrip("/")), args) for p in args.toy]
    if args.smol:
        rows.append(measure("smol", "smol", "SmolLM2-135M-Instruct", args))
    print("| model | greedy acc. | CoT entropy per token (nats) | per character | steps with tau=0.5 top-1 > 0.99 "
          "| CoT tokens | time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['label']} | {r['greedy_accuracy']:.1%} | {r['mean_entropy']:.3f} | {r['entropy_per_char']:.3f} "
              f"| {r['peak_share']:.1%} "
              f"| {r['mean_cot_len']:.1f} | {r['seconds']} s |")
    with open(os.path.join(args.out, "calibration.json"), "w") as f:
        json.dump(dict(args=vars(args), rows=rows), f, indent=1)
    plot(rows, os.path.join(args.out, "calibration.png"))


if __name__ == "__main__":
    main()
