"""evaluate.py against independent references (subset enumeration, explicit full forwards, hand-made Rollouts,
hand-written tables), then end to end as subprocesses: one process, and torchrun with 2 processes."""
import contextlib
import io
import itertools
import json
import math
import os
import shutil

import pytest
import torch

import evaluate
import rewards
import checkpoints
import runs
import softcot
import toy
from conftest import make_model, make_tokenizer, run_script

# 4 problems x 4 samples, 8 sequences per rollout: 2 chunks per sample setting, so each rank of 2 gets one
TINY = ["--recipe", "tiny", "--limit", "4", "--samples", "4", "--batch", "8", "--max_cot_tokens", "8",
        "--max_answer_tokens", "4", "--label", "toy"]


# ------------------------------------------------------------------------------------------------ pass@k
def brute_pass_at_k(n, c, k):
    """The fraction of size-k subsets of n samples (the first c correct) that hold a correct one."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_subset_enumeration():
    for n in range(1, 9):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert evaluate.pass_at_k(n, c, k) == pytest.approx(brute_pass_at_k(n, c, k), abs=1e-12), (n, c, k)


def test_pass_at_k_edge_cases():
    assert evaluate.pass_at_k(32, 0, 32) == 0.0 and evaluate.pass_at_k(32, 0, 1) == 0.0      # c = 0
    assert evaluate.pass_at_k(7, 7, 1) == 1.0 and evaluate.pass_at_k(7, 7, 7) == 1.0         # c = n
    assert evaluate.pass_at_k(32, 1, 32) == 1.0                                               # n = k: any correct
    assert evaluate.pass_at_k(10, 3, 1) == pytest.approx(0.3)                                 # k = 1: c / n
    # stable where the binomials are astronomically large: 1 - C(999, 500) / C(1000, 500) = 1/2
    assert evaluate.pass_at_k(1000, 1, 500) == pytest.approx(0.5, abs=1e-12)
    assert evaluate.pass_at_k(1000, 20, 16) == pytest.approx(1 - math.comb(980, 16) / math.comb(1000, 16), abs=1e-12)
    with pytest.raises(ValueError, match="at least k = 8 samples"):
        evaluate.pass_at_k(4, 1, 8)                                                           # n < k
    with pytest.raises(ValueError):
        evaluate.pass_at_k(4, 5, 1)


# ------------------------------------------------------------------------------------------------ measurements
def test_completion_nll_matches_full_forward(tokenizer):
    model = make_model("llama", tokenizer)
    contexts = ["User: what is 3 + 4? Assistant:", "Natalia", "She sold 48 / 2 = 24 clips in May, so"]
    completions = [" 3 + 4 = 7. The final answer is: \\boxed{7}", " sold", " 48 + 24 = 72 in all."]  # 3 lengths
    got = evaluate.completion_nll(model, tokenizer, contexts, completions)
    for i, (a, b) in enumerate(zip(contexts, completions)):
        ctx, comp = tokenizer(a).input_ids, tokenizer(b, add_special_tokens=False).input_ids
        ids = ctx + comp
        with torch.no_grad():   # one row alone: no padding, no position ids, every position's logits
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        want = -sum(logp[t - 1, ids[t]] for t in range(len(ctx), len(ids))) / len(comp)
        assert got[i].item() == pytest.approx(want.item(), abs=1e-5)


def fake_rollout(kind, entropy):
    N, S = kind.shape
    z = torch.zeros(N, S)
    return softcot.Rollout(prompt_ids=torch.zeros(N, 1, dtype=torch.long), prompt_mask=torch.ones(N, 1),
                           ids=torch.zeros(N, S, dtype=torch.long), kind=kind.to(torch.int8), cot_embeds=None,
                           logp=z, entropy=entropy, noise_ratio=torch.zeros_like(entropy),
                           cot_len=(kind == softcot.COT).sum(1), answer_len=(kind == softcot.ANSWER).sum(1),
                           stop_reason=["cap"] * N, cot_text=[""] * N, answer_text=[""] * N, mode="hard", tau=1.0,
                           sigma=0.0, answer_temperature=0.0, top_k=None)


def test_cot_entropy_profile_by_hand():
    C, F, A, P = softcot.COT, softcot.PREFILL, softcot.ANSWER, softcot.PAD
    kind = torch.tensor([[C, C, C, F, A],
                         [C, F, A, P, P],
                         [C, C, F, A, A]])
    entropy = torch.tensor([[1.0, 2.0, 3.0],          # 9 = a value outside the CoT: must not count
                            [4.0, 9.0, 9.0],
                            [5.0, 6.0, 9.0]])
    sums, counts = evaluate.cot_entropy(fake_rollout(kind, entropy))
    assert counts.tolist() == [3, 2, 1]
    assert (sums / counts).tolist() == pytest.approx([(1 + 4 + 5) / 3, (2 + 6) / 2, 3 / 1])


def test_multiple_choice_grading():
    row = {"question": "Which is a gas?", "choices": ["iron", "steam", "ice"], "label": 1, "answer": "steam"}
    assert evaluate.mc_question(row) == "Which is a gas?\nA. iron\nB. steam\nC. ice"
    for answer in (" \\boxed{B}", " \\boxed{(b)}", " \\boxed{B.}", " \\boxed{\\text{B}}", " \\boxed{Steam.}"):
        assert evaluate.mc_correct(answer, row), answer
    for answer in (" \\boxed{A}", " \\boxed{iron}", " B", " \\boxed{}"):
        assert not evaluate.mc_correct(answer, row), answer
    # a letter with its choice's text: the letter decides
    for answer in (" \\boxed{B. steam}", " \\boxed{(B) steam}", " \\boxed{B) Steam}", " \\boxed{B: ice}"):
        assert evaluate.mc_correct(answer, row), answer
    for answer in (" \\boxed{A. steam}", " \\boxed{(C) steam}", " \\boxed{D. steam}", " \\boxed{AB}"):
        assert not evaluate.mc_correct(answer, row), answer
    # the generations' reward on Eq. 11's scale: 100 right, 10 boxed but wrong, 0 no boxed answer
    assert evaluate.judge([" \\boxed{B}", " \\boxed{A}", " B"], [row] * 3) == (
        [True, False, False], [100.0, 10.0, 0.0], 0)
    # a whole answer equal to a choice's text is that choice, even when it starts like a letter
    row = {"question": "When?", "choices": ["1215", "A.D. 1066"], "label": 1, "answer": "A.D. 1066"}
    assert evaluate.mc_correct(" \\boxed{A.D. 1066}", row) and not evaluate.mc_correct(" \\boxed{A. 1066}", row)


def test_numeric_answers_are_not_read_as_letters():
    # maths items go to Math-Verify (rewards.py), never to the multiple-choice reading
    items = [{"answer": "7"}] * 3
    assert evaluate.judge([" \\boxed{B. 5}", " \\boxed{(B) 5}", " \\boxed{7}"], items) == (
        [False, False, True], [10.0, 10.0, 100.0], 0)                   # (correct, Eq. 11 rewards, grader errors)


def test_grader_errors_are_counted(monkeypatch):
    monkeypatch.setattr(rewards.Grader, "check", lambda self, gold, pred: (False, "timeout after 5 s"))
    assert evaluate.judge([" \\boxed{7}", " \\boxed{8}", " no box"], [{"answer": "7"}] * 3) == (
        [False] * 3, [10.0, 10.0, 0.0], 2)                              # an ungraded boxed answer: 10 (rewards.py)


def test_sample_settings_use_the_training_runs_sigma(tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"mode": "fuzzy", "gamma": 0.33, "sigma": 0.038}))
    assert evaluate.training_sigma(str(run / "best")) == (0.038, str(run / "config.json"))
    assert evaluate.training_sigma(str(run / "best") + "/") == (0.038, str(run / "config.json"))
    assert evaluate.training_sigma(str(run)) == (None, None)              # not a checkpoint folder of a run
    (run / "config.json").write_text(json.dumps({"mode": "hard", "gamma": 0.33, "sigma": 0.0}))
    assert evaluate.training_sigma(str(run / "best")) == (None, None)     # a hard run had no noise


# ------------------------------------------------------------------------------------------------ tables
def fake(hg, hs, hs32, acc, nll, correct=None):
    return {"settings": {"hard_greedy": {"pass@1": hg}, "hard_sample": {"pass@1": hs, "pass@2": hs, "pass@32": hs32}},
            "samples": 32, "correct": correct or {"hard_greedy": [0] * 10, "hard_sample": [0] * 10},
            "ood": {"arc": {"accuracy": acc, "nll": nll, "problems": 10}}}


def test_tables_mean_and_std_over_seeds():
    rows = {"no finetune": [fake(0.714, 0.45, 0.968, 0.7279, 2.86)],
            "gsm8k fuzzy": [fake(0.70, 0.60, 0.90, 0.70, 2.0), fake(0.80, 0.70, 1.00, 0.80, 3.0)]}
    lines = evaluate.format_table(rows).splitlines()
    assert lines[0] == "| model | n | ± | HG | HS | HS32 | FG | FS | FS32 | SG | SS | SS32 |"
    # one checkpoint: ± one standard error over its problems (0 here: every problem scored the same)
    assert lines[2] == "| no finetune | 10×32 | SE | 71.4±0.0 | 45.0±0.0 | 96.8±0.0 | – | – | – | – | – | – |"
    # two seeds: mean 75, sample std of (70, 80) = 7.07
    assert lines[3] == ("| gsm8k fuzzy | 10×32 | std of 2 seeds | 75.0±7.1 | 65.0±7.1 | 95.0±7.1 "
                        "| – | – | – | – | – | – |")
    lines = evaluate.format_ood_table(rows).splitlines()
    assert lines[0] == "| model | ± | arc n | arc acc | arc NLL |"
    assert lines[2:] == ["| no finetune | SE | 10 | 72.8 | 2.860 |",       # results without SEs: the value alone
                         "| gsm8k fuzzy | std of 2 seeds | 10 | 75.0±7.1 | 2.500±0.707 |"]


def test_standard_error_over_problems_by_brute_force():
    """One checkpoint's ± is the standard error over problems of the per-problem unbiased pass@k: here from
    subset enumeration and the textbook formula, on 4 problems with n = 4 samples."""
    counts, n = [0, 1, 2, 4], 4
    correct = {"hard_greedy": [1, 0, 1, 1], "hard_sample": counts}

    def se(values):   # sample std / sqrt(count)
        mean = sum(values) / len(values)
        return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) / math.sqrt(len(values))
    per_k = {k: [brute_pass_at_k(n, c, k) for c in counts] for k in (1, 4)}
    for k, values in per_k.items():
        assert evaluate.stderr([evaluate.pass_at_k(n, c, k) for c in counts]) == pytest.approx(se(values))
    r = {"samples": n, "correct": correct, "ood": {},
         "settings": {"hard_greedy": {"pass@1": 0.75},
                      "hard_sample": {f"pass@{k}": sum(v) / 4 for k, v in per_k.items()}}}
    cells = evaluate.format_table({"one": [r]}).splitlines()[2].split(" | ")
    want = [f"{100 * sum(v) / 4:.1f}±{100 * se(v):.1f}" for v in ([1, 0, 1, 1], per_k[1], per_k[4])]
    assert cells[1:6] == ["4×4", "SE", *want]
    assert want[2] == "75.0±25.0"          # pass@4 per problem 0, 1, 1, 1: std 0.5 / sqrt(4)


# ------------------------------------------------------------------------------------------------ end to end
def run(args, torchrun=False):
    return run_script("evaluate.py", args, torchrun)


def results(out):
    r = json.load(open(os.path.join(out, "results_toy.json")))
    for c in r["checkpoints"]:
        c.pop("seconds")
    return r


@pytest.fixture(scope="module")
def one_process(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    metrics = out / "run-a" / "metrics.jsonl"
    metrics.parent.mkdir()
    metrics.write_text("\n".join(json.dumps(m) for m in (     # train.py's format: val_acc on some steps only
        {"step": 0, "val_acc": 0.4},
        {"step": 1, "reward": 30.0, "accuracy": 0.3, "grad_norm": 5.0, "cot_entropy": 0.5},
        {"step": 2, "reward": 40.0, "accuracy": 0.4, "grad_norm": 4.0, "cot_entropy": 0.4, "val_acc": 0.5})) + "\n")
    stdout = io.StringIO()   # evaluate.main in this process: the code of `python evaluate.py`, ~10 s faster
    with contextlib.redirect_stdout(stdout):
        evaluate.main(TINY + ["--model", base, "--out", str(out), "--plots", "--metrics", str(metrics)])
    return str(out), stdout.getvalue()


def test_smoke_writes_results_table_and_plots(one_process):
    out, stdout = one_process
    r = results(out)
    assert (r["problems"], r["samples"], r["k"], r["world_size"]) == (4, 4, [1, 2, 4], 1)
    c = r["checkpoints"][0]
    assert list(c["settings"]) == list(softcot.SETTINGS) and c["sigma"] > 0
    assert c["sigma_source"] == "0.33 x RMS(E) of this model"                      # a base model: no run
    assert c["grader_errors"] == {name: 0 for name in softcot.SETTINGS}
    for name, got in c["settings"].items():
        n = 4 if name.endswith("_sample") else 1
        counts = c["correct"][name]
        assert len(counts) == 4 and all(0 <= x <= n for x in counts)
        assert got["pass@1"] == pytest.approx(sum(counts) / (4 * n))                 # pass@1 = mean accuracy
        if n > 1:
            assert got["pass@4"] == pytest.approx(sum(x > 0 for x in counts) / 4)     # pass@n = any correct
        assert 0 < len(c["entropy"][name]) <= 8 and min(c["entropy"][name]) >= 0      # CoT cap 8
    assert set(c["ood"]) == {"test_mul", "test_expr"}                                 # tiny: held-out skills
    assert all(v["problems"] == 4 and v["nll"] > 0 and 0 <= v["accuracy"] <= 1 for v in c["ood"].values())
    table = open(os.path.join(out, "table.md")).read()
    assert "| model | n | ± | HG | HS | HS4 | FG | FS | FS4 | SG | SS | SS4 |" in table
    assert "| toy | 4×4 | SE | " in table and "test_mul acc" in table and evaluate.LEGEND in table and table in stdout
    # every generation, one row each, naming its problem (index in the 200 toy test problems: --limit 4 takes
    # 0, 50, 100, 150) and sample; its correct flags add up to the results' counts
    assert set(c["generations"]) == {*softcot.SETTINGS, "ood-test_mul", "ood-test_expr"}
    for part, file in c["generations"].items():
        rows = [json.loads(line) for line in open(os.path.join(out, file))]
        n = 4 if part.endswith("_sample") else 1
        assert sorted((r["problem"], r["sample"]) for r in rows) == [(p, s) for p in (0, 50, 100, 150)
                                                                     for s in range(n)]
        assert {(r["set"], r["setting"]) for r in rows} == ({("toy", part)} if part in softcot.SETTINGS else
                                                            {(part[4:], "hard_greedy")})
        assert all(isinstance(r["cot"], str) and r["answer"].startswith(" The final answer is:") for r in rows)
        assert all(r["reward"] in (0.0, 10.0, 100.0) and (r["reward"] == 100.0) == r["correct"] and r["gold"]
                   for r in rows)
        per_problem = [sum(r["correct"] for r in rows if r["problem"] == p) for p in (0, 50, 100, 150)]
        if part in softcot.SETTINGS:
            assert per_problem == c["correct"][part]
        else:   # the OOD accuracy and its SE, from the rows: std of the 0/1 values / sqrt(4)
            v = c["ood"][part[4:]]
            assert v["accuracy"] == sum(per_problem) / 4
            mean = sum(per_problem) / 4
            assert v["accuracy_se"] == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in per_problem) / 3 / 4))
    import matplotlib.pyplot as plt
    for png in ("passk.png", "entropy.png", "training.png"):
        assert plt.imread(os.path.join(out, png)).ndim == 3


def test_torchrun_equals_one_process(one_process, base, tmp_path):
    run(TINY + ["--model", base, "--out", str(tmp_path)], torchrun=True)
    one, two = results(one_process[0]), results(str(tmp_path))
    assert two.pop("world_size") == 2 and one.pop("world_size") == 1
    assert two == one                                                  # exactly: floats included
    # rank 0 wrote every rank's generations and batch records, in the order of one process
    cache = sorted(f for f in os.listdir(os.path.join(one_process[0], "cache")) if f.endswith(".jsonl"))
    assert cache == sorted(f for f in os.listdir(tmp_path / "cache") if f.endswith(".jsonl")) and len(cache) == 16
    for f in cache:
        assert (tmp_path / "cache" / f).read_bytes() == open(os.path.join(one_process[0], "cache", f), "rb").read()



# ------------------------------------------------------------------------------------------------ resuming
def test_an_interrupted_evaluation_resumes_to_the_same_numbers(one_process, base, tmp_path, monkeypatch):
    """Killed in its third setting, then run again: the rerun computes only what was missing, says what it
    reused, and writes exactly the results of the uninterrupted run (one_process, same flags)."""
    real, calls = evaluate.run_setting, []

    def interrupted_in_the_third(*a, **kw):
        calls.append(a[4])                                   # the setting's name
        if len(calls) == 3:
            raise KeyboardInterrupt                          # what Ctrl-C raises in the middle of a setting
        return real(*a, **kw)
    monkeypatch.setattr(evaluate, "run_setting", interrupted_in_the_third)
    argv = TINY + ["--model", base, "--out", str(tmp_path)]
    with pytest.raises(KeyboardInterrupt), contextlib.redirect_stdout(io.StringIO()):
        evaluate.main(argv)
    assert not os.path.exists(tmp_path / "results_toy.json")            # nothing final yet: two parts cached
    calls.clear()
    monkeypatch.setattr(evaluate, "run_setting", lambda *a, **kw: calls.append(a[4]) or real(*a, **kw))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        evaluate.main(argv)
    first, second = list(softcot.SETTINGS)[:2]
    assert calls == list(softcot.SETTINGS)[2:] + ["hard_greedy"] * 2   # 4 settings left + the 2 OOD sets
    reused = [line for line in stdout.getvalue().splitlines() if "reusing" in line]
    assert [line.split()[2] for line in reused] == ["sigma", first, second], reused
    assert all(f"of {base} from {tmp_path}/cache/" in line for line in reused)
    assert results(str(tmp_path)) == results(one_process[0])           # exactly: floats included


def test_a_setting_killed_at_its_third_batch_resumes_there(base, tmp_path, monkeypatch):
    """Inside a setting: 4 batches of one problem; the rollout of batch 3 raises, and the kill is made worse by
    what a kill mid-write leaves (batch 3's rows without their record line, torn last lines). The rerun runs
    batches 3 and 4 only, and writes the numbers, generations and batch records of an uninterrupted run."""
    real, calls = softcot.rollout, []

    def rollout(model, tok, prompts, **kw):
        calls.append(prompts[0])
        if fail_at == len(calls):
            raise KeyboardInterrupt
        return real(model, tok, prompts, **kw)
    monkeypatch.setattr(softcot, "rollout", rollout)
    argv = TINY + ["--batch", "4", "--settings", "hard_sample", "--ood", "--model", base, "--out"]
    fail_at = None
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        evaluate.main(argv + [str(tmp_path / "whole")])
        whole, calls[:] = list(calls), []
        fail_at = 3
        with pytest.raises(KeyboardInterrupt):
            evaluate.main(argv + [str(tmp_path / "killed")])
        [gens] = (tmp_path / "killed" / "cache").glob("*.generations.jsonl")
        record = gens.with_name(gens.name.replace(".generations.", ".batches."))
        assert len(record.read_text().splitlines()) == 2                 # batches 1 and 2 kept
        with open(gens, "a") as f:                                        # batch 3's rows, one of them torn
            f.write(open(tmp_path / "whole" / "cache" / gens.name).readlines()[8] + '{"set": "toy", "pro')
        with open(record, "a") as f:
            f.write('{"batch": 2, "corr')
        fail_at, calls[:] = None, []
        evaluate.main(argv + [str(tmp_path / "killed")])
    assert len(whole) == 4 and calls == whole[2:]                        # batches 3 and 4, nothing else
    assert f"reusing 2 of 4 batches of hard_sample from {record}" in stdout.getvalue()
    assert results(tmp_path / "killed") == results(tmp_path / "whole")   # exactly: floats included
    for f in (gens.name, record.name):
        assert (tmp_path / "killed" / "cache" / f).read_bytes() == (tmp_path / "whole" / "cache" / f).read_bytes()


def test_appended_keeps_exactly_the_recorded_work(tmp_path):
    """runs.appended, the batch record's reader: rows past the last record line are cut off; a data file shorter
    than its record says (deleted, replaced) makes both start again, empty."""
    data, record = tmp_path / "rows.jsonl", tmp_path / "record.jsonl"
    end = runs.append_jsonl(str(data), [{"r": 0}, {"r": 1}])
    runs.append_jsonl(str(record), [{"batch": 0, "bytes": end}])
    runs.append_jsonl(str(data), [{"r": 2}])                              # a batch killed before its record line
    assert runs.appended(str(data), str(record)) == [{"batch": 0, "bytes": end}]
    assert [json.loads(line)["r"] for line in open(data)] == [0, 1]
    data.write_text('{"r": 0}\n')                                         # shorter than the record says
    assert runs.appended(str(data), str(record)) == [] and data.read_text() == record.read_text() == ""


def test_the_cache_key_changes_with_what_changes_the_numbers(base, tmp_path):
    """A changed flag or a retrained checkpoint must miss the cache; what does not change a part's numbers keeps
    its key (a greedy setting does not depend on n)."""
    folder = tmp_path / "ckpt"
    shutil.copytree(base, folder)
    device = torch.device("cpu")

    def keys(*flags):
        args = evaluate.parse_args(TINY + ["--model", str(folder), "--out", str(tmp_path / "eval"), *flags])
        return evaluate.part_keys(args, str(folder), str(folder), device)
    ref = keys()
    assert set(ref) == {"sigma", *softcot.SETTINGS, "ood-test_mul", "ood-test_expr"}
    for flags in (["--seed", "1"], ["--limit", "3"], ["--batch", "4"], ["--max_cot_tokens", "6"],
                  ["--max_answer_tokens", "3"], ["--prompt", "paper"]):
        changed = keys(*flags)
        assert all(changed[p] != ref[p] for p in ref if p != "sigma"), flags
    changed = keys("--samples", "2")                                     # n: the sample settings only
    assert [p for p in ref if changed[p] != ref[p]] == [p for p in softcot.SETTINGS if p.endswith("_sample")]
    assert keys("--settings", "hard_greedy")["hard_greedy"] == ref["hard_greedy"]
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(os.stat(weights).st_atime_ns, os.stat(weights).st_mtime_ns + 10 ** 9))   # a new save
    assert all(v != ref[p] for p, v in keys().items())


# ------------------------------------------------------------------------------------------------ labels
def test_default_labels_keep_seed_and_checkpoint():
    assert evaluate.default_label(["runs/tiny-fuzzy-s0/last"]) == "tiny-fuzzy-s0-last"
    assert evaluate.default_label(["runs/tiny-fuzzy-s1/best/"]) == "tiny-fuzzy-s1-best"
    assert evaluate.default_label(["runs/tiny-fuzzy-s0"]) == "tiny-fuzzy-s0"                # a folder, not best/last
    assert evaluate.default_label(["models/toy-slips-s0"]) == "toy-slips-s0"
    assert evaluate.default_label(["meta-llama/Llama-3.2-3B-Instruct"]) == "Llama-3.2-3B-Instruct"
    # several paths = the seeds of one row: the common name, seed dropped, checkpoint kept
    assert evaluate.default_label(["runs/tiny-fuzzy-s0/best", "runs/tiny-fuzzy-s1/best"]) == "tiny-fuzzy-best"
    assert evaluate.default_label(["runs/tiny-fuzzy-s0/last", "runs/tiny-fuzzy-s1/last"]) == "tiny-fuzzy-last"
    assert evaluate.default_label(["runs/a-s0/best", "runs/b-s0/best"]) == "a-best+b-best"  # not a-best alone


def test_results_of_another_evaluation_are_not_overwritten(one_process, base, tmp_path, monkeypatch, capsys):
    shutil.copy(os.path.join(one_process[0], "results_toy.json"), tmp_path)      # TINY + --model base wrote it
    monkeypatch.setattr(evaluate.runtime, "load_for_inference", lambda *a: pytest.fail("loaded a model"))
    argv = TINY + ["--model", base, "--out", str(tmp_path)]
    assert evaluate.parse_args(argv).label == "toy"                              # the same evaluation: rewritten
    for other in (["--settings", "hard_greedy"], ["--seed", "1"], ["--model", base, base]):
        with pytest.raises(SystemExit) as e:
            evaluate.main(argv + other)
        line = capsys.readouterr().err.strip().splitlines()[-1]
        assert e.value.code == 2 and f"{tmp_path}/results_toy.json holds another evaluation" in line, line
        assert "--label" in line and "--overwrite" in line, line
        assert evaluate.parse_args(argv + other + ["--overwrite"]).overwrite


# ------------------------------------------------------------------------------------------------ checks
def test_a_damaged_checkpoint_is_named_by_the_parser(base, tmp_path, capsys):
    folder = tmp_path / "last"
    shutil.copytree(base, folder)
    weights = folder / "model.safetensors"
    os.truncate(weights, os.path.getsize(weights) // 2)                         # a copy cut short
    with pytest.raises(SystemExit) as e:
        evaluate.main(TINY + ["--model", str(folder), "--out", str(tmp_path / "eval")])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and f"--model {folder}: cannot be loaded (model.safetensors is " in line, line


def test_a_tokenizer_that_is_not_the_models_is_refused(base, tmp_path, monkeypatch):
    """Before any rollout: a bigger vocabulary (an IndexError in the embedding before), special ids that moved, and
    a tokenizer.json replaced after train.py saved the checkpoint (a permutation: silent 0% before)."""
    monkeypatch.setattr(evaluate.softcot, "rollout", lambda *a, **kw: pytest.fail("a rollout ran"))

    def refused(folder):
        with pytest.raises(SystemExit) as e, contextlib.redirect_stdout(io.StringIO()):
            evaluate.main(TINY + ["--model", str(folder), "--out", str(tmp_path / "eval"), "--ood"])
        assert str(e.value).startswith(f"--model {folder}: "), e.value
        return str(e.value)

    def swapped(folder, a, b):   # tokenizer.json with the ids of tokens a and b exchanged
        t = json.load(open(folder / "tokenizer.json"))
        vocab = t["model"]["vocab"]
        vocab[a], vocab[b] = vocab[b], vocab[a]
        for added in t["added_tokens"]:
            added["id"] = vocab[added["content"]]
        (folder / "tokenizer.json").write_text(json.dumps(t))

    bigger = tmp_path / "bigger"
    shutil.copytree(base, bigger)
    make_tokenizer().save_pretrained(bigger)                                    # conftest's 300-token BPE
    assert "its tokenizer has 300 tokens, the model's embedding 100 rows" in refused(bigger)
    moved = tmp_path / "moved"
    shutil.copytree(base, moved)
    swapped(moved, "<eos>", "a")
    assert f"the tokenizer's eos token is id {toy.make_tokenizer().get_vocab()['a']}, config.json's eos_token_id is 2" \
        in refused(moved)
    saved = tmp_path / "run" / "last"                                           # a checkpoint as train.py saves it
    model, tok = evaluate.runtime.load_for_inference(base, torch.device("cpu"), "float32")
    checkpoints.save_checkpoint(str(saved), model, tok)
    swapped(saved, "1", "2")                                                    # same size, same special ids
    assert refused(saved).startswith(f"--model {saved}: tokenizer.json is not the file the checkpoint was saved with")


def test_a_checkpoint_with_nan_weights_is_refused(base, tmp_path, monkeypatch):
    """NaN weights (no checksum to catch them: a folder not saved by train.py) are named before any rollout;
    before, every answer failed and the table said 0% with exit code 0."""
    from safetensors.torch import load_file, save_file
    monkeypatch.setattr(evaluate.softcot, "rollout", lambda *a, **kw: pytest.fail("a rollout ran"))
    folder = tmp_path / "nan"
    shutil.copytree(base, folder)
    weights = load_file(folder / "model.safetensors")
    name = sorted(weights)[-1]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SystemExit) as e, contextlib.redirect_stdout(io.StringIO()):
        evaluate.main(TINY + ["--model", str(folder), "--out", str(tmp_path / "eval")])
    assert str(e.value) == f"--model {folder}: model.safetensors: {name} holds NaN or inf"
