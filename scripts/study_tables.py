"""
scripts/study_tables.py: the training side of docs/toy_study.md, from the runs' metrics.jsonl (scripts/toy_study.sh).

Per run: greedy validation accuracy at step 0 and at the end, the best one and its step, and the training samples'
accuracy and CoT entropy averaged over the first and the last 50 steps (32 samples a step: a smoother view of
learning than a 100-problem validation, whose standard error is ~3 points). Then, per group of seeds, mean ± std.

    python scripts/study_tables.py runs/study/sweep-*      # the learning-rate sweep
    python scripts/study_tables.py runs/study/{hard,soft,fuzzy}-s? runs/study/fuzzy-g*-s?
    python scripts/study_tables.py --common 25 runs/study/eval/results_{base,fuzzy,fuzzy-g*}.json

--curves PNG: validation accuracy (mean over seeds, each seed faint) and the training samples' accuracy (trailing
25-step mean, averaged over seeds) per setting: Fig. 2 and Fig. 5a in miniature.
    python scripts/study_tables.py --curves assets/toy-study-training.png runs/study/{hard,soft,fuzzy}-s?

--common N: evaluate.py's Tables 3-5 recomputed from the per-problem correct counts of results files made with
different --limit, on the N problems they share (evaluate.py spreads a limit evenly over the test set, so the
25-problem subset is inside the 50-problem one): every row on the same problems.
"""

import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import evaluate  # noqa: E402


def metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def summary(run):
    rows = metrics(run)
    val = [(r["step"], r["val_acc"]) for r in rows if "val_acc" in r]
    train = [r for r in rows if "accuracy" in r]
    best = max(val, key=lambda sv: (sv[1], -sv[0]))          # the earliest of equal bests, as train.py keeps it

    def mean(key, part):
        return statistics.fmean(r[key] for r in part) if part else float("nan")
    return dict(run=os.path.basename(run.rstrip("/")), setting=evaluate.name_parts(run)[0], steps=len(train), base=val[0][1], final=val[-1][1],
                best=best[1], best_step=best[0], acc_first=mean("accuracy", train[:50]),
                acc_last=mean("accuracy", train[-50:]), ent_first=mean("cot_entropy", train[:50]),
                ent_last=mean("cot_entropy", train[-50:]))


def pm(values):
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def main(runs):
    rows = [summary(r) for r in runs if os.path.isfile(os.path.join(r, "metrics.jsonl"))]
    print("| run | steps | val base | val best (step) | val final | train acc, first 50 -> last 50 steps "
          "| CoT entropy, first 50 -> last 50 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['steps']} | {100 * r['base']:.0f} | {100 * r['best']:.0f} ({r['best_step']}) "
              f"| {100 * r['final']:.0f} | {100 * r['acc_first']:.1f} -> {100 * r['acc_last']:.1f} "
              f"| {r['ent_first']:.3f} -> {r['ent_last']:.3f} |")
    groups = {}
    for r in rows:                                            # seeds of one setting: the name without -s<seed>
        groups.setdefault(r["setting"], []).append(r)
    if any(len(g) > 1 for g in groups.values()):
        print("\n| setting | seeds | val final - base | val best - base | train acc, last 50 steps |")
        print("|---|---|---|---|---|")
        for name, g in groups.items():
            print(f"| {name} | {len(g)} | {pm([r['final'] - r['base'] for r in g])} "
                  f"| {pm([r['best'] - r['base'] for r in g])} | {pm([r['acc_last'] for r in g])} |")


TOY_TEST = 200      # problems in the toy test split (toy.toy_splits)


def plot_curves(runs, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    groups = {}
    for run in runs:
        groups.setdefault(evaluate.name_parts(run)[0], []).append(metrics(run))
    fig, (va, ta) = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, seeds in groups.items():
        vals = [[(m["step"], m["val_acc"]) for m in ms if "val_acc" in m] for ms in seeds]
        n = min(len(v) for v in vals)                          # the validations every seed reached
        line, = va.plot([s for s, _ in vals[0][:n]], [100 * statistics.fmean(v[i][1] for v in vals) for i in range(n)],
                        marker="o", ms=3, label=f"{name} ({len(seeds)} seeds)")
        for v in vals:
            va.plot(*zip(*[(s, 100 * a) for s, a in v]), color=line.get_color(), alpha=0.2, lw=0.8)
        accs = [[m["accuracy"] for m in ms if "accuracy" in m] for ms in seeds]
        n = min(len(a) for a in accs)
        smooth = [100 * statistics.fmean(statistics.fmean(a[max(0, i - 24):i + 1]) for a in accs) for i in range(n)]
        ta.plot(range(1, n + 1), smooth, color=line.get_color(), label=name)
    va.set(title="greedy validation accuracy (%), 100 problems", xlabel="step")
    ta.set(title="training samples' accuracy (%), trailing 25 steps", xlabel="step")
    va.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def common_rows(files, n):
    """{label: checkpoints} with every pass@k recomputed on the n test problems the files share."""
    rows = {}
    for path in files:
        with open(path) as f:
            res = json.load(f)
        ids = evaluate._subset(list(range(TOY_TEST)), res["limit"])          # the test problems it evaluated
        keep = [ids.index(p) for p in evaluate._subset(list(range(TOY_TEST)), n)]   # where the shared ones are
        runs = []
        for ck in res["checkpoints"]:
            settings = {}
            for name, counts in ck["correct"].items():
                G = res["samples"] if name.endswith("sample") else 1
                settings[name] = {f"pass@{k}": statistics.fmean(evaluate.pass_at_k(G, int(counts[i]), k) for i in keep)
                                  for k in res["k"] if k <= G}
            correct = {name: [counts[i] for i in keep] for name, counts in ck["correct"].items()}   # for the SE
            runs.append(dict(settings=settings, correct=correct, samples=res["samples"]))
        rows[res["label"]] = runs
    return rows


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if sys.argv[1] == "--curves":
        plot_curves(sys.argv[3:], sys.argv[2])
    elif sys.argv[1] == "--common":
        print(evaluate.format_table(common_rows(sys.argv[3:], int(sys.argv[2]))))
    else:
        main(sys.argv[1:])
