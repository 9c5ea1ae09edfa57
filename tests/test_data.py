"""Tests for data.py: the App. B prompt, every loader on small files written here in the hub
schema of its dataset (json, jsonl, parquet; with bad rows that must be counted), the
dispatcher's errors, and the held-out validation split. Nothing is downloaded."""

import json
import random
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data
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

    def fake_load(repo, config, split):
        calls.append((repo, config, split))
        return FakeSplit([{"problem": f"{config}?", "solution": f"\\boxed{{{len(calls)}}}"}])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=fake_load))
    rows = load("math", "train")
    assert calls == [("EleutherAI/hendrycks_math", s, "train") for s in data.MATH_SUBJECTS]
    assert [r["answer"] for r in rows] == [str(i) for i in range(1, 8)]
    calls.clear()
    with pytest.raises(ValueError):  # the fake rows are MATH rows, not OlympiadBench rows
        load("olympiadbench", "test")
    assert calls == [("Hothan/OlympiadBench", "OE_TO_maths_en_COMP", "train")]  # "test" -> hub "train"


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
