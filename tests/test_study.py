"""scripts/calibrate_toy.py and scripts/study_tables.py: the numbers docs/toy_study.md is built from."""
import json
import os
import sys

import pytest
import torch

import softcot
import toy

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import calibrate_toy  # noqa: E402
import study_tables  # noqa: E402


def test_teacher_forced_logits_line_up_with_the_rollout():
    """The peak share reads teacher-forced logits at the CoT positions: their entropy must be the entropy the
    KV-cached rollout recorded at the same steps (an off-by-one would compare the wrong positions)."""
    tok = toy.make_tokenizer()
    model = toy.make_model(tok, seed=0).eval()
    ro = softcot.rollout(model, tok, ["Q: Ann had 7 pens. How many now?\nA:", "Q: 3+4?\nA:"], mode="hard", tau=1.0,
                         num_samples=3, max_cot_tokens=12, max_answer_tokens=3,
                         generator=torch.Generator().manual_seed(0))
    logits, cot = calibrate_toy.cot_logits(model, ro)
    Tc = ro.entropy.shape[1]
    ent = softcot.entropy(logits[:, :Tc])
    assert cot[:, :Tc].any()
    torch.testing.assert_close(ent[cot[:, :Tc]], ro.entropy[cot[:, :Tc]], atol=1e-4, rtol=1e-4)
    peaks, steps = calibrate_toy.peak_share(model, ro)
    assert steps == int(ro.cot_len.sum()) and 0 <= peaks <= steps


def test_study_summary(tmp_path):
    run = tmp_path / "fuzzy-s0"
    run.mkdir()
    rows = [{"step": 0, "val_acc": 0.10}]
    for s in range(1, 101):
        rows.append({"step": s, "accuracy": 0.1 if s <= 50 else 0.3, "cot_entropy": 1.0 if s <= 50 else 0.5})
        if s % 25 == 0:
            rows.append({"step": s, "val_acc": {25: 0.2, 50: 0.2, 75: 0.1, 100: 0.15}[s]})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    r = study_tables.summary(str(run))
    assert (r["steps"], r["base"], r["final"], r["best"], r["best_step"]) == (100, 0.10, 0.15, 0.2, 25)
    assert r["acc_first"] == pytest.approx(0.1) and r["acc_last"] == pytest.approx(0.3)
    assert (r["ent_first"], r["ent_last"]) == (pytest.approx(1.0), pytest.approx(0.5))


def test_common_problems_recompute_the_table(tmp_path):
    """--common: on its own limit a file gives evaluate.py's numbers; on a smaller one, the shared problems'."""
    import random
    rng = random.Random(0)
    counts = [rng.randint(0, 32) for _ in range(50)]
    greedy = [rng.randint(0, 1) for _ in range(50)]
    ck = dict(correct={"hard_greedy": greedy, "hard_sample": counts})
    path = tmp_path / "results_x.json"
    path.write_text(json.dumps(dict(label="x", problems=50, limit=50, samples=32, k=[1, 32], checkpoints=[ck])))
    full = study_tables.common_rows([str(path)], 50)["x"][0]["settings"]
    assert full["hard_sample"]["pass@1"] == pytest.approx(sum(counts) / (32 * 50))
    assert full["hard_sample"]["pass@32"] == pytest.approx(sum(c > 0 for c in counts) / 50)
    half = study_tables.common_rows([str(path)], 25)["x"][0]["settings"]   # problems 0, 8, 16, ... = every other
    assert half["hard_greedy"]["pass@1"] == pytest.approx(sum(greedy[::2]) / 25)
