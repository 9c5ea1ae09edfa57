"""Tests for data.py: the App. B prompt, every loader on small files written here in the hub
schema of its dataset (json, jsonl, parquet; with bad rows that must be counted), the
dispatcher's errors, files that cannot be read, the held-out validation split; and the checks of
the data made before a model is loaded (recipes.load_problems, check_split, check_prompt_lengths,
data.data_digest). Nothing is downloaded."""

import hashlib
import json
import random
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data
import recipes
import softcot
import toy
from data import PROMPT, format_prompt, load, split_train_val


def write(path, rows):
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        path.write_text(json.dumps(rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- the prompt

APP_B_SENTENCES = [  # typed again from the paper's App. B, independently of data.py
    "A conversation between User and Assistant.",
    "The user asks a question, and the Assistant solves it.",
    "The assistant first shows the complete reasoning process step by step, then provides the "
    "final answer in \\boxed{}.",
    "The assistant must always follow the format: \u2018User: [question] Assistant: [detailed "
    "reasoning] The final answer is: \\boxed{[answer]}.\u2019",
]


def test_prompt_is_app_b_verbatim():
    assert PROMPT == " ".join(APP_B_SENTENCES) + " User: QUESTION Assistant:"
    q = "Natalia sold clips to 48 of her friends in April. What is {x}?"  # braces are safe
    assert format_prompt(q) == " ".join(APP_B_SENTENCES) + f" User: {q} Assistant:"


def test_format_prompt_errors():
    with pytest.raises(ValueError, match="exactly once"):
        format_prompt("2+2?", template="no placeholder")
    with pytest.raises(ValueError, match="non-empty"):
        format_prompt("  ")


# ---------------------------------------------------------------- math datasets


def test_gsm8k_jsonl_with_bad_rows(tmp_path):
    path = write(tmp_path / "gsm8k.jsonl", [
        {"question": "How many?", "answer": "3 + 4 = <<3+4=7>>7\n#### 7"},
        {"question": "Big?", "answer": "so\n#### 1,000"},
        {"question": "Below zero?", "answer": "#### -5"},
        {"question": "No marker", "answer": "the answer is 3"},
        {"question": "Nothing after", "answer": "#### "},
        {"question": "Missing answer"},
        {"answer": "#### 2"},  # missing question
    ])
    with pytest.warns(UserWarning, match=r"gsm8k/train .*skipped 4 of 7 rows.*row 3: answer has no '####'"):
        rows = load("gsm8k", "train", path=path)
    assert [r["answer"] for r in rows] == ["7", "1000", "-5"]
    assert rows[0] == {"question": "How many?", "answer": "7", "solution": "3 + 4 = <<3+4=7>>7\n#### 7"}


def test_math_parquet_gold_is_last_boxed(tmp_path):
    path = write(tmp_path / "math.parquet", [
        {"problem": "Half?", "level": "Level 1", "type": "Algebra",
         "solution": "We get $\\boxed{2}$ first, then $\\boxed{\\frac{1}{2}}$."},
        {"problem": "Set?", "level": "Level 2", "type": "Algebra", "solution": "So $\\boxed{\\{1,2\\}}$."},
        {"problem": "Old style?", "level": "Level 3", "type": "Geometry", "solution": "$\\fbox{7}$"},
        {"problem": "No box", "level": "Level 1", "type": "Algebra", "solution": "The answer is 3."},
        {"problem": "Unclosed", "level": "Level 1", "type": "Algebra", "solution": "$\\boxed{3$"},
    ])
    with pytest.warns(UserWarning, match=r"skipped 2 of 5 rows.*no \\boxed\{\} answer"):
        rows = load("math", "train", path=path)
    assert [r["answer"] for r in rows] == ["\\frac{1}{2}", "\\{1,2\\}", "7"]
    assert rows[0]["question"] == "Half?" and rows[0]["level"] == "Level 1" and "solution" in rows[0]


def test_deepscaler_and_math500_use_the_answer_field(tmp_path):
    ds = write(tmp_path / "deepscaler.json", [
        {"problem": "p1", "answer": "\\frac{3}{4}", "solution": "... \\boxed{0.75}"},
        {"problem": "p2", "answer": "", "solution": "... \\boxed{12}"},  # falls back to the box
        {"problem": "p3", "answer": None, "solution": "no box"},  # bad
    ])
    with pytest.warns(UserWarning, match="skipped 1 of 3"):
        rows = load("deepscaler", "train", path=ds)
    assert [r["answer"] for r in rows] == ["\\frac{3}{4}", "12"]
    m5 = write(tmp_path / "math500.jsonl", [
        {"problem": "q", "solution": "s \\boxed{5}", "answer": "5", "subject": "Algebra", "level": 2,
         "unique_id": "test/algebra/1.json"},
    ])
    (row,) = load("math500", "test", path=m5)
    assert row["answer"] == "5" and row["subject"] == "Algebra" and row["unique_id"] == "test/algebra/1.json"


def olympiad_row(**overrides):
    row = {"id": 1, "question": "Find x.", "solution": ["Step.", "Done."], "final_answer": ["$3$"],
           "context": None, "image_1": None, "image_2": None, "image_3": None, "image_4": None,
           "image_5": None, "modality": "Text-only", "difficulty": "Competition",
           "is_multiple_answer": False, "unit": None, "answer_type": "Numerical", "error": None,
           "question_type": "Open-ended", "subfield": "Algebra", "subject": "Math", "language": "English"}
    return {**row, **overrides}


def test_olympiadbench_filters_the_subset_and_counts_bad_rows(tmp_path):
    path = write(tmp_path / "olympiad.jsonl", [
        olympiad_row(),
        olympiad_row(id=2, final_answer=["$3$", "$-5$"], is_multiple_answer=True),
        olympiad_row(id=3, context="Let f(x) = x^2.", question="Find f(2)."),
        olympiad_row(id=4, language="Chinese"),  # outside: not English
        olympiad_row(id=5, subject="Physics"),  # outside: not maths
        olympiad_row(id=6, image_1="<bytes>", modality="Multimodal", question="<image_1> Find x."),
        olympiad_row(id=7, question_type="Theorem proof", final_answer=None),  # outside: a proof
        olympiad_row(id=8, final_answer=[]),  # in the subset but no answer: bad
    ])
    with pytest.warns(UserWarning) as record:
        rows = load("olympiadbench", "test", path=path)
    messages = [str(w.message) for w in record]
    assert any("skipped 1 of 8" in m and "final_answer" in m for m in messages)
    assert any("4 of 8 rows are outside" in m for m in messages)
    assert [r["answer"] for r in rows] == ["3", "3, -5", "3"]
    assert rows[2]["question"] == "Let f(x) = x^2.\nFind f(2)."
    assert rows[0]["solution"] == "Step.\nDone." and rows[0]["id"] == 1


# ---------------------------------------------------------------- multiple choice


def test_hellaswag(tmp_path):
    path = write(tmp_path / "hellaswag.jsonl", [
        {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
         "ctx_b": "then", "ctx": "Then, the man writes over the snow. then",
         "endings": [", the man leaves.", ", the man sprays.", ", the man waits.", ", the man sings."],
         "source_id": "x", "split": "val", "split_type": "indomain", "label": "3"},
        {"ind": 5, "activity_label": "Home and Garden", "ctx_a": "[header] How to paint [title] Get a brush.",
         "ctx_b": "", "ctx": "", "endings": ["[step] Paint.", "Sing.", "Run.", "Eat."], "label": "0"},
        {"ind": 6, "activity_label": "x", "ctx_a": "a", "ctx_b": "b", "ctx": "a b",
         "endings": ["1", "2", "3", "4"], "label": ""},  # hidden label: bad
    ])
    with pytest.warns(UserWarning, match="skipped 1 of 3"):
        rows = load("hellaswag", "validation", path=path)
    assert rows[0]["question"] == "Removing ice from car: Then, the man writes over the snow. Then"
    assert rows[0]["label"] == 3 and rows[0]["answer"] == ", the man sings." and len(rows[0]["choices"]) == 4
    assert rows[1]["question"] == "Home and Garden: How to paint. Get a brush."
    assert rows[1]["choices"][0] == "Paint."


@pytest.mark.parametrize("name", ["arc", "arc_easy"])
def test_arc_parquet_nested_choices(tmp_path, name):
    path = write(tmp_path / "arc.parquet", [
        {"id": "a1", "question": "Which is a gas?",
         "choices": {"text": ["rock", "oxygen", "wood", "iron"], "label": ["A", "B", "C", "D"]}, "answerKey": "B"},
        {"id": "a2", "question": "Numbered labels?",
         "choices": {"text": ["one", "two", "three"], "label": ["1", "2", "3"]}, "answerKey": "3"},
        {"id": "a3", "question": "Broken key", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "E"},
    ])
    with pytest.warns(UserWarning, match="skipped 1 of 3"):
        rows = load(name, "test", path=path)
    assert [(r["label"], r["answer"]) for r in rows] == [(1, "oxygen"), (2, "three")]
    assert rows[0]["choices"] == ["rock", "oxygen", "wood", "iron"] and rows[0]["id"] == "a1"


def test_mmlu(tmp_path):
    path = write(tmp_path / "mmlu.parquet", [
        {"question": "2+2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "6"], "answer": 1},
        {"question": "Capital?", "subject": "geography", "choices": ["a", "b", "c", "d"], "answer": 7},  # bad
    ])
    with pytest.warns(UserWarning, match="skipped 1 of 2.*out of range"):
        (row,) = load("mmlu", "test", path=path)
    assert row == {"question": "2+2?", "choices": ["3", "4", "5", "6"], "label": 1, "answer": "4",
                   "subject": "elementary_mathematics"}
    letter = write(tmp_path / "mmlu.jsonl", [{"question": "q", "choices": ["a", "b", "c", "d"], "answer": "C"}])
    assert load("mmlu", "test", path=letter)[0]["label"] == 2


# ---------------------------------------------------------------- the dispatcher and the file reader


def test_limit_and_json_lines_in_a_json_file(tmp_path):
    # Dataset.to_json("x.json") writes JSON Lines despite the suffix
    path = write(tmp_path / "gsm8k.jsonl", [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(5)])
    path = path.rename(tmp_path / "gsm8k.json")
    assert [r["answer"] for r in load("gsm8k", "test", path=path, limit=2)] == ["0", "1"]
    with pytest.raises(ValueError, match="limit"):
        load("gsm8k", "test", path=path, limit=0)


def test_dispatcher_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'gsm9k'.*gsm8k, math, deepscaler, math500, "
                                         "olympiadbench, hellaswag, arc, arc_easy, mmlu"):
        load("gsm9k", "train")
    with pytest.raises(ValueError, match="no split 'train'; valid splits: test"):
        load("math500", "train")
    with pytest.raises(ValueError, match="no such data file"):
        load("gsm8k", "train", path=tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="unsupported file type '.csv'"):
        load("gsm8k", "train", path=write(tmp_path / "x.csv", []))
    bad = write(tmp_path / "bad.jsonl", [{"question": "q", "answer": "no marker"}])
    with pytest.raises(ValueError, match=r"none of its 1 rows is usable.*openai/gsm8k schema"):
        load("gsm8k", "train", path=bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(ValueError, match="line 2: not JSON"):
        load("gsm8k", "train", path=broken)


def test_hub_failures_name_the_dataset_and_the_way_out(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("offline")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(RuntimeError, match=r"'gsm8k' from the Hugging Face hub \(openai/gsm8k.*offline.*path="):
        load("gsm8k", "train")
    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed
    with pytest.raises(RuntimeError, match="needs the `datasets` package.*path=.*toy"):
        load("mmlu", "test")


def test_hub_rows_concatenate_configs_and_map_splits(monkeypatch):
    calls = []

    class FakeSplit:
        def __init__(self, rows):
            self.rows = rows

        def to_list(self):
            return self.rows

    def fake_load(repo, config, split, revision):
        calls.append((repo, config, split, revision))
        return FakeSplit([{"problem": f"{config}?", "solution": f"\\boxed{{{len(calls)}}}"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load))
    rows = load("math", "train", revision="v1")            # --data_revision: each config at that revision
    assert calls == [("EleutherAI/hendrycks_math", s, "train", "v1") for s in data.MATH_SUBJECTS]
    assert [r["answer"] for r in rows] == [str(i) for i in range(1, 8)]
    calls.clear()
    with pytest.raises(ValueError):  # the fake rows are MATH rows, not OlympiadBench rows
        load("olympiadbench", "test")
    assert calls == [("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train", None)]  # "test" -> hub "train"


# ---------------------------------------------------------------- the validation split


def test_split_train_val_is_deterministic_disjoint_and_order_free():
    rows = [{"question": f"question {i}", "answer": str(i)} for i in range(200)]
    train, val = split_train_val(rows, 20)
    assert len(val) == 20 and len(train) == 180
    assert {r["question"] for r in train}.isdisjoint(r["question"] for r in val)
    assert sorted(train + val, key=lambda r: int(r["answer"])) == rows
    assert split_train_val(rows, 20) == (train, val)  # same call, same split
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert {r["question"] for r in split_train_val(shuffled, 20)[1]} == {r["question"] for r in val}
    assert split_train_val(rows, 20, seed=1)[1] != val  # the seed chooses another slice
    assert [int(r["answer"]) for r in train] == sorted(int(r["answer"]) for r in train)  # order kept
    assert split_train_val(rows, 0) == (rows, [])
    with pytest.raises(ValueError, match="n_val"):
        split_train_val(rows, 200)


# ---------------------------------------------------------------- files that cannot be read: the file and the line


GOOD = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(4)]


@pytest.mark.parametrize("name,layout", [("gsm8k.jsonl", "lines"), ("gsm8k.json", "lines"), ("gsm8k.json", "list")])
def test_a_byte_that_is_not_utf8_is_named_by_file_and_line(tmp_path, name, layout):
    text = ("".join(json.dumps(r) + "\n" for r in GOOD) if layout == "lines"
            else json.dumps(GOOD, indent=1) + "\n")   # a list over many lines: the byte's line is named too
    lines = text.encode().split(b"\n")
    n = 3 if layout == "lines" else 11                # this line of the file (1-based) holds the bad byte
    assert b': "q' in lines[n - 1]
    lines[n - 1] = lines[n - 1].replace(b': "q', b': "caf\xe9 q')   # Latin-1's e-acute in a question
    path = tmp_path / name
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=rf"{name}, line {n}: byte \d+ of the line \(0xe9\) is not UTF-8; "
                                         r"re-save it as UTF-8") as e:
        load("gsm8k", "train", path=path)
    assert "position" not in str(e.value)             # not Python's offset into the whole file


def test_a_utf8_byte_order_mark_is_read_and_a_broken_json_list_names_its_line(tmp_path):
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\n" for r in GOOD).encode())
    assert [r["answer"] for r in load("gsm8k", "train", path=bom)] == ["0", "1", "2", "3"]
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD[0]).encode() + b"\n{\"question\": \"\xe9\"}\n")
    with pytest.raises(ValueError, match=r"bom.jsonl, line 2: byte 15 of the line \(0xe9\)"):
        load("gsm8k", "train", path=bom)               # counted after the byte-order mark
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(GOOD, indent=1).replace('"q2",', '"q2"', 1))
    with pytest.raises(ValueError, match=r"broken.json, line 1[0-9]: not JSON \(Expecting ',' delimiter at column"):
        load("gsm8k", "train", path=broken)


def test_parquet_not_utf8_names_row_and_column_and_a_bad_file_is_named(tmp_path):
    questions = pa.array([b"q0", b"q1", b"caf\xe9?"], type=pa.binary()).view(pa.string())   # unchecked by pyarrow
    path = tmp_path / "gsm8k.parquet"
    pq.write_table(pa.table({"question": questions, "answer": ["#### 1"] * 3}), path)
    with pytest.raises(ValueError, match=r"gsm8k.parquet, row 2, column 'question': not UTF-8 \(byte 0xe9\); re-save"):
        load("gsm8k", "train", path=path)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(ValueError, match=r"junk.parquet: not a readable parquet file"):
        load("gsm8k", "train", path=junk)


# ---------------------------------------------------------------- golds that are no answer


def test_gsm8k_golds_that_are_not_finite_numbers_are_named_and_left_out(tmp_path):
    fields = ["#### 7", "#### NaN", "#### inf", "x\n#### -Infinity", "#### 1e999", "#### ", "#### 1/2", "#### -3.5"]
    path = write(tmp_path / "gsm8k.jsonl", [{"question": f"q{i}", "answer": f} for i, f in enumerate(fields)])
    with pytest.warns(UserWarning, match=r"gsm8k/train \(.*gsm8k.jsonl\): skipped 5 of 8 rows .*\(rows 1, 2, 3, 4, 5, "
                                         r"counted from 0; first: row 1: gold 'NaN' after '####' is not a finite"):
        rows = load("gsm8k", "train", path=path)
    assert [r["answer"] for r in rows] == ["7", "1/2", "-3.5"]   # a fraction is Math-Verify's to read
    nan_only = write(tmp_path / "nan.jsonl", [{"question": "q", "answer": "#### nan"}])
    with pytest.raises(ValueError, match=r"none of its 1 rows is usable \(first: row 0: gold 'nan'"):
        load("gsm8k", "train", path=nan_only)
    # MATH's golds are strings, graded by Math-Verify: an infinite answer is an answer
    math = write(tmp_path / "math.jsonl", [{"problem": "Limit?", "solution": "So $\\boxed{\\infty}$."}])
    assert load("math", "train", path=math)[0]["answer"] == "\\infty"


def test_more_than_ten_bad_rows_are_numbered_then_counted(tmp_path):
    path = write(tmp_path / "gsm8k.jsonl", [{"question": f"q{i}", "answer": "#### nan" if i % 2 else "#### 1"}
                                            for i in range(30)])
    with pytest.warns(UserWarning, match=r"skipped 15 of 30 rows .*\(rows 1, 3, 5, 7, 9, 11, 13, 15, 17, 19 and 5 "
                                         r"more, counted from 0"):
        load("gsm8k", "train", path=path)


# ---------------------------------------------------------------- repeated questions, before the split


def split_order(questions, seed=recipes.SPLIT_SEED):
    """split_train_val's order: the first n_val indices of it are validation."""
    return sorted(range(len(questions)), key=lambda i: (hashlib.sha256(f"{seed}\n{questions[i]}".encode())
                                                         .hexdigest(), i))


def test_repeated_questions_are_dropped_before_the_split(tmp_path):
    rows = [{"question": f"What is {i} plus 1?", "answer": f"#### {i + 1}"} for i in range(40)]
    rows += [dict(rows[5]), {"question": rows[9]["question"], "answer": "#### 99"}]   # a copy; one with another gold
    order = split_order([r["question"] for r in rows])
    val_size = order.index(5) + 1        # the cut between the two copies of question 5: one would train, one validate
    assert order[val_size] == 40         # (the copy sorts right after the first, its equal hash)
    path = write(tmp_path / "gsm8k.jsonl", rows)
    with pytest.warns(UserWarning, match=r"gsm8k/train \(.*gsm8k.jsonl\): dropped 2 of 42 rows that repeat an earlier "
                                         r"question \(1 of them with another gold\); the first copy of each is kept"):
        train, val = recipes.load_problems("gsm8k", str(tmp_path), 0, val_size, str(path))
    assert {r["question"] for r in train}.isdisjoint(r["question"] for r in val)
    assert len(train) + len(val) == 40 and len(val) == val_size
    assert next(r for r in train + val if r["question"] == rows[9]["question"])["answer"] == "10"   # the first gold
    # the smol dataset reads a --data_path file through the same loader and the same rule
    with pytest.warns(UserWarning, match="dropped 2 of 42"):
        train, val = recipes.load_problems("smol", str(tmp_path), 0, val_size, str(path))
    assert len(train) + len(val) == 40


def test_drop_repeated_questions_keeps_order_and_is_silent_without_repeats(recwarn):
    rows = [{"question": q, "answer": a} for q, a in [("b", "1"), ("a", "2"), ("b", "1"), ("c", "3"), ("a", "5")]]
    with pytest.warns(UserWarning, match=r"here: dropped 2 of 5 rows .*\(1 of them with another gold\)"):
        assert data.drop_repeated_questions(rows, "here") == [rows[0], rows[1], rows[3]]
    recwarn.clear()
    assert data.drop_repeated_questions(rows[:2], "here") == rows[:2] and not recwarn.list


# ---------------------------------------------------------------- too few rows: before training, with the flags


def test_check_split_names_the_numbers_and_the_flags():
    assert recipes.check_split(202, 200, 2) is None            # 200 to validate, 2 to draw at each step
    problem = recipes.check_split(201, 200, 2)
    assert problem == ("the data has 201 usable problems (repeated questions dropped), fewer than --val_size 200 held "
                       "out for validation + --prompts_per_step 2 drawn each training step = 202; lower --val_size or "
                       "--prompts_per_step, or pass a larger --data_path")
    assert recipes.check_split(150, 200, 2).startswith("the data has 150 usable problems")


def test_load_problems_refuses_too_few_rows_before_splitting(tmp_path):
    path = write(tmp_path / "gsm8k.jsonl", [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(105)]
                 + [{"question": "q0", "answer": "#### 0"}])   # 106 rows, 105 once the repeat is dropped
    with pytest.warns(UserWarning, match="dropped 1"), \
            pytest.raises(ValueError, match=r"has 105 usable problems .*--val_size 100 .*--prompts_per_step 8 .*= 108"):
        recipes.load_problems("gsm8k", str(tmp_path), 0, 100, str(path), prompts_per_step=8)
    with pytest.warns(UserWarning, match="dropped 1"):
        train, val = recipes.load_problems("gsm8k", str(tmp_path), 0, 100, str(path), prompts_per_step=5)
    assert len(train) == 5 and len(val) == 100
    recipes.batch_rng(0, 0).sample(train, 5)                   # step 1's draw, which 8 would not have survived
    with pytest.raises(ValueError, match=r"--prompts_per_step 4001 "):
        recipes.load_problems("toy", str(tmp_path), 0, 200, prompts_per_step=4001)   # 4000 toy training problems


# ---------------------------------------------------------------- prompts longer than the context


def test_check_prompt_lengths_names_the_longest_row_that_does_not_fit():
    tok = toy.make_tokenizer()     # one token per character, and <bos>: the toy prompt "Q: {q}\nA:" is len(q) + 7
    prefill = max(len(softcot.PREFILL_STOPPED), len(softcot.PREFILL_CAPPED))
    room = 512 - (64 + prefill + 8)            # the tiny recipe's caps in the toy model's 512 positions
    rows = [{"question": "What is 1+2?", "answer": "3"}, {"question": "x" * (room - 7 + 1), "answer": "1"},
            {"question": "y" * (room - 7), "answer": "1"}, {"question": "z" * (room + 50), "answer": "1"}]
    problem = recipes.check_prompt_lengths(rows, tok, "toy", 64, 8, 512)
    assert problem == (f"2 of 4 prompts do not fit the model's context of 512 positions; the longest, row 3 "
                       f"({'z' * 60!r}), is {room + 57} tokens with the 'toy' prompt, and a rollout adds up to 64 CoT + "
                       f"{prefill} prefill + 8 answer tokens ({512 + 57} > 512): lower --max_cot_tokens "
                       f"(--val_cot_tokens for validation) or --max_answer_tokens, use a shorter --prompt, or leave "
                       f"out of the data file the questions whose prompt is over {room} tokens")
    assert recipes.check_prompt_lengths(rows[:1] + rows[2:3], tok, "toy", 64, 8, 512) is None   # exactly full fits
    assert recipes.check_prompt_lengths(rows, tok, "toy", 64, 8, None) is None                 # no limit, no check
    assert recipes.check_prompt_lengths(rows[:1], tok, "toy", 64, 8, 60) is not None           # caps alone too long


def test_check_prompt_lengths_agrees_with_the_rollout():
    """The check's bound is the rollout's own: a prompt it passes runs, the one a token longer is refused by both."""
    tok = toy.make_tokenizer()
    model = toy.make_model(tok, seed=0)
    n = model.config.max_position_embeddings
    room = n - (4 + max(len(softcot.PREFILL_STOPPED), len(softcot.PREFILL_CAPPED)) + 2)
    for extra, fits in [(0, True), (1, False)]:
        rows = [{"question": "7" * (room - 7 + extra), "answer": "1"}]
        assert (recipes.check_prompt_lengths(rows, tok, "toy", 4, 2, n) is None) == fits
        run = lambda: softcot.rollout(model, tok, [recipes.prompt_text("toy", rows[0]["question"])], mode="hard",
                                      tau=1.0, max_cot_tokens=4, max_answer_tokens=2)
        if fits:
            run()
        else:
            with pytest.raises(ValueError, match="exceeds the model's context"):
                run()


# ---------------------------------------------------------------- the data's digest, for --resume


def test_data_digest_changes_with_what_training_reads_and_nothing_else():
    rows = [{"question": "What is 1+2?", "answer": "3", "solution": "1+2=3\n#### 3"},
            {"question": "Café?", "answer": "\\frac{1}{2}", "level": "Level 1"}]
    digest = data.data_digest(rows)
    assert digest == "79973cc826a713cd"        # pinned: a change of the rule would fail every --resume of old runs
    assert data.data_digest([dict(r) for r in rows]) == digest
    assert data.data_digest([{**rows[0], "solution": "other"}, {**rows[1], "level": None}]) == digest
    others = [rows[::-1], rows[:1], rows + rows[:1], [{**rows[0], "answer": "4"}, rows[1]],
              [{**rows[0], "question": "What is 1+2? "}, rows[1]]]
    assert len({digest} | {data.data_digest(o) for o in others}) == 1 + len(others)


def test_data_digest_of_load_problems_is_the_same_when_loaded_again(tmp_path):
    path = write(tmp_path / "gsm8k.jsonl", [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(30)])
    train, val = recipes.load_problems("gsm8k", str(tmp_path), 0, 10, str(path))
    again = recipes.load_problems("gsm8k", str(tmp_path), 0, 10, str(path))
    assert data.data_digest(train + val) == data.data_digest(again[0] + again[1])
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + [json.dumps({"question": "q3", "answer": "#### 33"})] + lines[4:]) + "\n")
    edited = recipes.load_problems("gsm8k", str(tmp_path), 0, 10, str(path))
    assert data.data_digest(edited[0] + edited[1]) != data.data_digest(train + val)
