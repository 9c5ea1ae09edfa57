"""
plots.py: the figures. Training curves from train.py's metrics.jsonl (Fig. 2), and evaluate.py's pass@k against k
(Fig. 3) and CoT entropy profiles (Fig. 4 / App. G.3).

Paper: Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170), Fig. 2-4. matplotlib's Figure without pyplot:
no global backend switch (Agg, the file backend, is what Figure.savefig uses), so it works headless, in a
training run and in notebooks alike.

    plots.plot_training(["runs/tiny-fuzzy-s0/metrics.jsonl"], "training.png")   # train.py: <out>/training.png
    plots.plot_pass_at_k(rows, "passk.png"); plots.plot_entropy(rows, "entropy.png")   # evaluate.py's results
"""

import json
import math
import os
import statistics

from matplotlib.figure import Figure

import softcot

COLORS = {"hard": "tab:red", "fuzzy": "tab:blue", "soft": "tab:green"}   # in the column order of Tables 3-5


def plot_entropy(rows, path):
    """Fig. 4 / App. G.3: the CoT entropy profile of each setting, one panel per label, seeds by opacity."""
    fig = Figure(figsize=(5 * len(rows), 3.5))
    axes = fig.subplots(1, len(rows), squeeze=False, sharey=True)
    for ax, (label, ckpts) in zip(axes[0], rows.items()):
        for name, (mode, _, _) in softcot.SETTINGS.items():
            for i, r in enumerate(ckpts):
                if r["entropy"].get(name):
                    ax.plot(r["entropy"][name], color=COLORS[mode], ls="-" if name.endswith("greedy") else "--",
                            alpha=1.0 - 0.6 * i / max(1, len(ckpts) - 1), label=name if i == 0 else None)
        ax.set(title=label, xlabel="CoT position t", ylabel="mean next-token entropy (nats)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def plot_pass_at_k(rows, path):
    """Fig. 3: sample pass@k against k for each sample setting, one panel per label, mean ± std over seeds."""
    fig = Figure(figsize=(4.5 * len(rows), 3.5))
    axes = fig.subplots(1, len(rows), squeeze=False, sharey=True)
    for ax, (label, ckpts) in zip(axes[0], rows.items()):
        ks = sorted({int(key[5:]) for r in ckpts for s in r["settings"].values() for key in s})
        for mode, color in COLORS.items():
            got = [r["settings"][f"{mode}_sample"] for r in ckpts if f"{mode}_sample" in r["settings"]]
            if got:
                vals = [[100 * g[f"pass@{k}"] for g in got] for k in ks]       # (k, seed)
                ax.errorbar(ks, [statistics.fmean(v) for v in vals], capsize=3, marker="o", color=color,
                            yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in vals], label=f"{mode} sample")
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set(title=label, xlabel="k", ylabel="pass@k (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


CURVES = (("reward", "training reward"), ("accuracy", "training accuracy"), ("val_acc", "greedy validation accuracy"),
          ("cot_len", "CoT length (tokens)"), ("cot_entropy", "CoT entropy (nats)"),
          ("grad_norm", "gradient norm (before clipping)"))


def plot_training(paths, path):
    """Fig. 2: training curves from train.py's metrics.jsonl files, one line per run (named by its folder), three
    panels a row."""
    logs = {os.path.basename(os.path.dirname(os.path.abspath(p))): [json.loads(x) for x in open(p) if x.strip()]
            for p in paths}
    curves = [(k, t) for k, t in CURVES if any(k in m for ms in logs.values() for m in ms)]
    cols = min(3, len(curves))
    fig = Figure(figsize=(4 * cols, 3.2 * math.ceil(len(curves) / cols)))
    axes = list(fig.subplots(math.ceil(len(curves) / cols), cols, squeeze=False).flat)
    for ax, (key, title) in zip(axes, curves):
        positive = all(m[key] > 0 for ms in logs.values() for m in ms if key in m)   # a log axis can draw them
        for label, ms in logs.items():
            pts = [(m["step"], m[key]) for m in ms if key in m]
            if not pts:
                continue
            if key == "val_acc":        # a few points: draw them as they are
                ax.plot(*zip(*pts), marker="o", ms=3, lw=1, label=label)
                continue
            # per-step values of a 64-sequence batch are noisy: a faint raw line, and its trailing 10-step
            # median (robust to the gradient norm's spikes)
            steps, vals = zip(*pts)
            line, = ax.plot(steps, vals, lw=0.6, alpha=0.3)
            smooth = [statistics.median(vals[max(0, i - 9):i + 1]) for i in range(len(vals))]
            ax.plot(steps, smooth, lw=1.5, color=line.get_color(), label=label)
        ax.set(title=title, xlabel="step", yscale="log" if key == "grad_norm" and positive else "linear")
    for ax in axes[len(curves):]:       # the grid's empty places
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
