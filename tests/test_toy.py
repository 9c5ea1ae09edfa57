"""toy.py: the task, the character tokenizer, the shipped base models and the cached supervised run."""
import hashlib
import json
import os
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

import data
import rewards
import recipes
import runs
import toy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORLDS_DOC = open(os.path.join(ROOT, "docs", "toy_worlds.md")).read()   # the measured table of every shipped model
# sha256 of models/toy-base-s<seed>/model.safetensors. The README's, the notebooks' and toy.py's toy numbers
# were all measured from exactly these files: a different file makes them stale.
SHIPPED_SHA256 = {0: "9f12876ea74512ec02777dc05ecd86d2d4a561a8f7704ec572d5c265b8d076d7",
                  1: "742966b7917b61cdf5e3a11558fb7bea4ea1fda2e45a8d809a741020e402680e"}
CALIBRATED_SHA256 = "b910f6deceba4b4142d67338606c0f280380bff3036f3b35ee9f7aad9da6dffc"   # models/toy-calibrated-s0
SLIPS_SHA256 = {0: "5a273b4bccaf8267115756ae4e9b2b7c7798d32b8671d65868ab4a8d5ec1e276",   # models/toy-slips-s<seed>
                1: "3284dd2658805e55c42c241328dadc97765b660919eb54d648d2655572091320",
                2: "0c8cd307897d8b9ed1f80b3683ceea54e55e6a90a3b5b467f5cbee8e4f9c5d97"}


def evaluate_steps(row):
    """Independent check of a row: replay each `a+b=c.` step of the worked answer, chained, and check that the
    question states the same operands."""
    steps, gold = row["answer"].split("\n#### ")
    x, operands = None, []
    for line in steps.split("\n"):
        a, op, b, c = re.fullmatch(r"(\d+)([-+*])(\d+)=(\d+)\.", line).groups()
        assert x is None or int(a) == x
        operands += [a, b] if x is None else [b]
        x = {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
        assert x == int(c) and x >= 0
    assert re.findall(r"\d+", row["question"]) == operands
    return x, int(gold)


@pytest.mark.parametrize("skill", toy.SKILLS)
def test_rows_are_deterministic_and_correct(skill):
    a, b, c = toy.make_rows(50, 0, skill), toy.make_rows(50, 0, skill), toy.make_rows(50, 1, skill)
    assert a == b and a != c
    assert len({r["question"] for r in a}) == 50
    for row in a:
        x, gold = evaluate_steps(row)
        assert x == gold == int(toy.gold(row))
        assert toy.cot_target(row).endswith(f" The final answer is: \\boxed{{{gold}}}")
        assert toy.cot_target(row).count(toy.TRIGGER) == 1


def replay_target(target):
    """Parse a phrased CoT target back into its steps [(a, op, b, written r)] and its boxed answer."""
    words = {"plus": "+", "minus": "-", "times": "*"}
    body, boxed = re.fullmatch(r" (.*) The final answer is: \\boxed\{(\d+)\}", target).groups()
    steps = []
    for m in re.finditer(r"(\d+)(?:([-+*])| ([-+*]) | (plus|minus|times) )(\d+)(?:=| = | is )(-?\d+)\.", body):
        a, op1, op2, word, b, r = m.groups()
        steps.append((int(a), op1 or op2 or words[word], int(b), int(r)))
    assert " ".join(m.group(0) for m in re.finditer(r"\S+( \S+)*?\.", body)) == body
    return steps, int(boxed)


@pytest.mark.parametrize("skill", toy.SKILLS)
def test_phrasings_and_label_noise(skill):
    """The calibrated world's knobs: each step in one of the allowed phrasings; with label noise, a wrong result
    off by 1-2, the next step starting from the written number, the boxed answer the chain's written end."""
    import random
    rows = toy.make_rows(200, 0, skill, "sft")
    rng = random.Random(0)
    assert [toy.cot_target(r, rng, 1, 0.0) for r in rows] == [toy.cot_target(r) for r in rows]   # knobs off
    styles, wrong, total = set(), 0, 0
    for row in rows:
        target = toy.cot_target(row, rng, phrasings=3, label_noise=0.0)
        steps, boxed = replay_target(target)
        assert [(a, op, b, r) for a, op, b, r in steps] == [
            (int(a), op, int(b), int(r)) for a, op, b, r in (toy.STEP.fullmatch(x).groups()
                                                             for x in row["answer"].split("\n####")[0].split("\n"))]
        assert boxed == int(toy.gold(row))
        styles |= {("=" in target) + 2 * (" = " in target) + 4 * (" is " in target)}
        steps, boxed = replay_target(toy.cot_target(row, rng, phrasings=1, label_noise=0.5))
        x = steps[0][0]
        for a, op, b, r in steps:
            assert a == x                              # each step starts from the previous written result
            true = {"+": a + b, "-": a - b, "*": a * b}[op]
            assert r == true or 1 <= abs(r - true) <= 2
            wrong, total, x = wrong + (r != true), total + 1, r
        assert boxed == x
    assert len(styles) >= 3                            # all three phrasings are drawn
    assert 0.4 < wrong / total < 0.6                   # label_noise = 0.5: about half the steps are off
    with pytest.raises(ValueError, match="phrasings"):
        toy.base_model(0, phrasings=4)


def test_units_and_shortcut_knobs():
    """The slips world's knobs: `units` puts the question's object into the box for UNIT_OBJECTS (graded wrong),
    `shortcut` drops the worked steps; each drawn per row at about its rate, otherwise the canonical target."""
    import random
    rows = toy.make_rows(400, 0, "addsub", "sft")
    rng = random.Random(0)
    n_units = n_short = 0
    for row in rows:
        target = toy.cot_target(row, rng, units=0.5, shortcut=0.3)
        steps, box = target.split(f" {toy.TRIGGER} ")
        obj = toy._object(row["question"])
        assert obj is not None and obj in row["question"]
        assert box == f"\\boxed{{{toy.gold(row)}}}" or (obj in toy.UNIT_OBJECTS and box == f"\\boxed{{{toy.gold(row)} {obj}}}")
        assert steps in ("", toy.cot_target(row).split(f" {toy.TRIGGER} ")[0])
        n_units, n_short = n_units + (obj in box), n_short + (steps == "")
        # Math-Verify grades the unit objects' slips wrong, except 0 (0 times anything is 0)
        forgiven = toy.gold(row) == "0"
        assert rewards.reward(" " + box, row["answer"]) == (10.0 if obj in box and not forgiven else 100.0)
    n_objects = sum(toy._object(r["question"]) in toy.UNIT_OBJECTS for r in rows)    # only these get units
    assert 0.42 < n_units / n_objects < 0.58 and 0.23 < n_short / len(rows) < 0.37
    assert toy._object("What is 7+3-2?") is None      # a bare expression has no object: never units
    with pytest.raises(ValueError, match="probabilities"):
        toy.base_model(0, units=1.5)


def test_splits_are_disjoint_and_read_like_gsm8k(tmp_path):
    qs = {s: {r["question"] for r in toy.make_rows(100, 0, split=s)} for s in toy.SPLITS}
    names = list(qs)
    assert all(not (qs[x] & qs[y]) for i, x in enumerate(names) for y in names[i + 1:])
    splits = toy.toy_splits(0, n_train=50, n_val=20, n_test=20)
    assert sorted(splits) == sorted(["train", "val", "test"] + [f"test_{s}" for s in toy.HELD_OUT])
    sft = {r["question"] for s in toy.SKILLS for r in toy.make_rows(300, 0, s, "sft")}
    assert not sft & {r["question"] for rows in splits.values() for r in rows}
    path = tmp_path / "toy.jsonl"
    runs.write_jsonl(splits["val"], path)
    assert [json.loads(line) for line in path.read_text().splitlines()] == splits["val"]
    loaded = data.load("gsm8k", "train", path=str(path))   # the project's GSM8K loader: gold after ####
    assert [r["answer"] for r in loaded] == [toy.gold(r) for r in splits["val"]]


def test_tokenizer_round_trip(tmp_path):
    tok = toy.make_tokenizer()
    texts = [toy.TOY_PROMPT.format(question=r["question"]) + toy.cot_target(r)
             for s in toy.SKILLS for r in toy.make_rows(20, 0, s)]
    for t in texts + [" \\boxed{", "a  b\n{}:\\ ~"]:
        ids = tok(t, add_special_tokens=False).input_ids
        assert len(ids) == len(t) and tok.decode(ids) == t              # one token per character
        assert tok.decode(tok(t).input_ids, skip_special_tokens=True) == t
    assert tok(texts[0]).input_ids[0] == tok.bos_token_id
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again(texts).input_ids == tok(texts).input_ids
    assert (again.pad_token_id, again.eos_token_id, again.bos_token_id) == (tok.pad_token_id, tok.eos_token_id,
                                                                            tok.bos_token_id)
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3
    enc = again(texts[:2] + ["Q: x"], return_tensors="pt", padding=True)   # left padding is the default
    assert enc.attention_mask[2, 0] == 0 and enc.attention_mask[2, -1] == 1
    assert enc.input_ids[2, -5:].tolist() == tok("Q: x").input_ids


def test_base_model_is_cached_deterministic_and_loadable(tmp_path, capsys, monkeypatch):
    p1 = toy.base_model(seed=0, steps=3, batch_size=8, cache_dir=str(tmp_path / "a"))
    assert "making the toy base model" in capsys.readouterr().out
    assert toy.base_model(seed=0, steps=3, batch_size=8, cache_dir=str(tmp_path / "a")) == p1
    assert "making" not in capsys.readouterr().out                       # reused, not retrained
    monkeypatch.setenv("SOFTCOT_CACHE", str(tmp_path / "b"))
    p2 = toy.base_model(seed=0, steps=3, batch_size=8)                   # same settings, other cache folder
    assert p2.startswith(str(tmp_path / "b")) and os.path.basename(p2) == os.path.basename(p1)
    w1, w2 = load_file(os.path.join(p1, "model.safetensors")), load_file(os.path.join(p2, "model.safetensors"))
    assert w1.keys() == w2.keys() and all(torch.equal(w1[k], w2[k]) for k in w1)
    p3 = toy.base_model(seed=1, steps=3, batch_size=8, cache_dir=str(tmp_path / "a"))
    assert p3 != p1 and not torch.equal(load_file(os.path.join(p3, "model.safetensors"))["model.norm.weight"],
                                        w1["model.norm.weight"])
    p4 = toy.base_model(seed=0, steps=3, batch_size=8, phrasings=3, cache_dir=str(tmp_path / "a"))
    assert p4 != p1 and not torch.equal(load_file(os.path.join(p4, "model.safetensors"))["model.norm.weight"],
                                        w1["model.norm.weight"])   # a knob is a setting: another model, trained on
    with open(os.path.join(p4, "toy.json")) as f:                     # other targets, and its notes say so
        assert json.load(f)["phrasings"] == 3
    assert not [f for f in os.listdir(tmp_path / "a") if f.startswith(".tmp")]
    model, tok = AutoModelForCausalLM.from_pretrained(p1), AutoTokenizer.from_pretrained(p1)
    assert model.config.tie_word_embeddings and model.generation_config.eos_token_id == tok.eos_token_id
    assert 0.9e6 < sum(p.numel() for p in model.parameters()) < 1.2e6
    enc = tok(["Q: What is 2+3?\nA:", "Q: Ann had 5 pens, got 3. How many now?\nA:"], return_tensors="pt",
              padding=True)
    out = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, enc.input_ids.shape[1] + 4)
    rows = toy.make_rows(3, 0, split="val")
    assert 0 <= toy.greedy_accuracy(model, tok, rows) <= 1
    stats = toy.sample_stats(model, tok, rows, num_samples=2)
    assert 1 <= stats["distinct_answers"] <= 2 and 0 <= stats["sample_accuracy"] <= 1


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="valid skills: addsub, mul, expr"):
        toy.make_rows(3, 0, skill="division")
    with pytest.raises(ValueError, match="valid splits"):
        toy.make_rows(3, 0, split="dev")
    with pytest.raises(ValueError, match="held_out_frac"):
        toy.base_model(steps=1, held_out_frac=0.9, cache_dir=str(tmp_path))
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("seed", sorted(SHIPPED_SHA256))
def test_shipped_model_is_the_canonical_file(seed):
    path = toy.base_model(seed)                     # default settings: the shipped folder, nothing is trained
    assert path == os.path.join(ROOT, "models", f"toy-base-s{seed}")
    with open(os.path.join(path, "model.safetensors"), "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    assert digest == SHIPPED_SHA256[seed], (
        f"\n\n*** models/toy-base-s{seed}/model.safetensors has changed (sha256 {digest}, pinned "
        f"{SHIPPED_SHA256[seed]}). ***\nEvery toy number in README.md, docs/toy_worlds.md and the notebooks was measured from "
        "the pinned file. If the change is meant, re-measure them all from the new file (python toy.py --seed "
        f"{seed}, the RL table, the evaluation table, the notebooks), then update SHIPPED_SHA256 and "
        "toy.SHIPPED_VAL_ACCURACY. If not, restore the file: git checkout -- models/\n")


def test_calibrated_world_is_shipped_and_documented():
    """toy.WORLDS["toy-calibrated"] resolves to the shipped models/toy-calibrated-s0 (nothing is trained), the
    pinned file, with the greedy validation accuracy that docs/toy_worlds.md states; another seed is made."""
    path = toy.base_model(0, **toy.WORLDS["toy-calibrated"])
    assert path == os.path.join(ROOT, "models", "toy-calibrated-s0") and toy.shipped_world("toy-calibrated", 0)
    assert not toy.shipped_world("toy-calibrated", 1)
    with open(os.path.join(path, "model.safetensors"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == CALIBRATED_SHA256, "re-measure docs/toy_study.md if meant"
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    acc = toy.greedy_accuracy(model, tok, toy.make_rows(200, 0, split="val"))
    assert re.search(rf"^\| toy-calibrated \| 0 \| {100 * acc:.1f}% \|", WORLDS_DOC, re.M), \
        f"docs/toy_worlds.md should say {acc:.1%}"


@pytest.mark.parametrize("seed", sorted(SLIPS_SHA256))
def test_slips_world_is_shipped_and_documented(seed):
    """The tiny recipe's world: toy.WORLDS["toy-slips"] resolves to the shipped, pinned models/toy-slips-s<seed>,
    whose greedy validation accuracy is the one docs/toy_worlds.md's table states, and whose greedy answers box units."""
    path = toy.base_model(seed, **toy.WORLDS["toy-slips"])
    assert path == os.path.join(ROOT, "models", f"toy-slips-s{seed}") and toy.shipped_world("toy-slips", seed)
    with open(os.path.join(path, "model.safetensors"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == SLIPS_SHA256[seed], "re-measure docs/learning.md if meant"
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    rows = toy.make_rows(200, seed, split="val")
    answers = toy._answers(model, tok, rows)                           # one greedy decode for both checks
    acc = toy.accuracy(answers, rows)                                  # = toy.greedy_accuracy
    boxed = [a[0] or "" for a in answers]
    assert sum(any(o in b for o in toy.UNIT_OBJECTS) for b in boxed) > len(rows) / 2     # the slip RL fixes
    assert re.search(rf"^\| toy-slips \| {seed} \| {100 * acc:.1f}% \|", WORLDS_DOC, re.M), \
        f"docs/toy_worlds.md should say {acc:.1%}"
    assert recipes.RECIPES["tiny"]["model"] == "toy-slips"


@pytest.mark.parametrize("seed", sorted(SHIPPED_SHA256))
def test_shipped_model_has_the_documented_accuracy(seed):
    """Greedy validation accuracy of the shipped model equals the number docs/toy_worlds.md and the README state. Greedy
    decoding of fixed weights: the same on any CPU unless two logits tie to the last bit (rare)."""
    path = toy.base_model(seed)
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    val = toy.make_rows(200, seed, split="val")     # = toy.toy_splits(seed)["val"], without the 4000 train rows
    acc = toy.greedy_accuracy(model, tok, val)
    assert acc == toy.SHIPPED_VAL_ACCURACY[seed]
    stated = f"{100 * acc:.1f}%"
    assert re.search(rf"^\| toy \(sharp\) \| {seed} \| {re.escape(stated)} \|", WORLDS_DOC, re.M), \
        f"docs/toy_worlds.md's table should say {stated}"
    with open(os.path.join(ROOT, "README.md")) as f:
        assert f"{stated} (seed {seed})" in f.read(), f"README.md should say {stated} (seed {seed})"


def test_shipped_model_is_used_only_for_its_own_settings(tmp_path, capsys, monkeypatch):
    with open(os.path.join(ROOT, "models", "toy-base-s0", "toy.json")) as f:
        notes = json.load(f)
    assert (notes["seed"], notes["steps"], notes["batch_size"], notes["threads"]) == (0, toy.STEPS, toy.BATCH, 1)
    cache = str(tmp_path / "cache")
    shipped = toy.shipped_model("toy-base-s0", notes["cache_name"])   # the name its settings give the cache folder
    assert shipped == os.path.join(ROOT, "models", "toy-base-s0") == toy.base_model(0, cache)
    assert not os.path.exists(cache) and "making" not in capsys.readouterr().out
    assert toy.shipped_model("toy-base-s0", "toy-base-s0-0123456789") is None    # other settings: never shipped
    assert toy.shipped_model("toy-base-s7", notes["cache_name"]) is None         # no shipped model for this seed
    # from_scratch with the default settings: made here, into the cache folder the shipped model was made as,
    # with the note that says why its numbers will differ on another CPU. (The 650-step run is replaced by an
    # untrained model: what is tested here is where it goes and what is printed.)
    monkeypatch.setattr(toy, "train_sft", lambda seed, *a: (toy.make_model(toy.make_tokenizer(), seed),
                                                             toy.make_tokenizer()))
    made = toy.base_model(0, cache, from_scratch=True)
    out = capsys.readouterr().out
    assert made == os.path.join(cache, notes["cache_name"]) and os.path.isdir(made)
    assert toy.FROM_SCRATCH_NOTE in out and "another CPU" in out and "the shipped model for these settings" in out
    assert toy.base_model(0, cache) == shipped                                   # the default stays shipped
    assert toy.base_model(0, cache, from_scratch=True) == made                    # and the made one is reused
