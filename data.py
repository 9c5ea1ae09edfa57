"""
data.py: the prompt (App. B, verbatim) and the datasets (Sec. 4), as lists of plain dicts.

Paper: Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170), App. B (the prompt), Sec. 4 (training and test
sets), Table 2 (the out-of-domain benchmarks). Golds are read with rewards.py's rules (`rewards.gsm8k_gold`,
`rewards.extract_boxed`), the same code that grades the answers.

Every loader returns `list[dict]`. Math rows: {"question", "answer", ...} where `answer` is the
GOLD final answer, ready for rewards.score (GSM8K: the number after `####`; MATH-style: the
dataset's answer field, or the content of the last `\\boxed{}` of its solution), plus the raw
`solution` where the dataset has one (the toy world's supervised run and readers use it).
Multiple-choice rows (out of domain, Table 2): {"question", "choices": list[str], "label": int,
"answer": choices[label]}.

    name           hub copy (config; split)                          paper / why this copy
    gsm8k          openai/gsm8k (main; train, test)                  Sec. 4, GSM8K train/test
    math           EleutherAI/hendrycks_math (7 subject configs      Sec. 4 "MATH": the standard
                   concatenated; train, test)                        7.5k train split; the original
                   hendrycks/competition_math was taken down, this is the maintained mirror that
                   lm-evaluation-harness uses, with the original schema (problem, level, type,
                   solution); the gold is the last \\boxed{} of the solution
    deepscaler     agentica-org/DeepScaleR-Preview-Dataset (train)   Sec. 4, ~40k problems
    math500        HuggingFaceH4/MATH-500 (test)                     Sec. 4 test set
    olympiadbench  Hothan/OlympiadBench (OE_TO_maths_en_COMP; its    Sec. 4: "675 math questions
                   only split, "train", served here as "test")       with final answers and no
                   images". The config name is the filter: Open-Ended (has a final answer), Text-
                   Only, maths, English, COMPetition. Rows are filtered again on their own fields
                   (so a local file holding the whole benchmark works too). Assumed schema, from
                   public loaders of this copy: question, final_answer (a list of strings with
                   `$...$`), solution (list), context, image_1..image_5, language ("English"),
                   subject ("Math"), modality ("Text-only"), question_type ("Open-ended"), id,
                   unit, is_multiple_answer. A third-party check reports 674 rows at one pinned
                   revision of this copy, one short of the paper's 675 (the paper follows
                   Qwen2.5-Math's 675-row file); the loader reports what it finds.
    hellaswag      Rowan/hellaswag (train, validation)               Table 2; the test split's
                   labels are hidden
    arc            allenai/ai2_arc (ARC-Challenge; train, validation, test)  Table 2 "ARC/AI2
                   Reasoning Challenge"; arc_easy: the ARC-Easy config
    mmlu           cais/mmlu (all; test, validation, dev)            Table 2

Offline use: every loader takes `path=` to a local .json (a list of rows, or JSON Lines as
`Dataset.to_json` writes), .jsonl or .parquet file laid out in that hub copy's schema (for
`math`, the 7 subjects in one file). JSON is read with the standard library; `datasets`
(requirements.txt pins datasets==5.2.0) is imported only for hub loads, pyarrow (which
`datasets` installs) only for parquet.

Rows without a usable answer (missing field, no `####`, no boxed answer, empty, a `####` gold that
is not a finite number) are never silently dropped: a warning names the dataset, the file, their
count and row numbers, they are excluded, and a file in which no row is usable raises. A file that
cannot be read (not UTF-8, not JSON, not parquet) raises a ValueError naming the file and the line
(parquet: the row and column). Before a training split is cut, `drop_repeated_questions` keeps one
copy of each question; `data_digest` fingerprints the rows a run trains and validates on.

Usage:
    from data import PROMPT, format_prompt, load, split_train_val
    rows = load("gsm8k", "train")                      # or load("gsm8k", "train", path="gsm8k.jsonl")
    rows = drop_repeated_questions(rows, "gsm8k/train")  # one copy of each question, before the split
    train, val = split_train_val(rows, n_val=500)      # a fixed held-out slice for model selection
    prompt = format_prompt(train[0]["question"])
    digest = data_digest(train + val)                  # changes if a question, a gold or their order does
"""

import hashlib
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import rewards


# ------------------------------------------------------------------------------------------------ the prompt
# App. B, verbatim.

# Copied character for character from the paper's App. B, including its curly
# quotes ‘ ’ (U+2018, U+2019) and no space after "Assistant:". App. B prints it as one line;
# the App. I example shows a line break before "User: <question>", which may be only the
# typesetting. We keep App. B's single line (one space before "User:"); pass another `template`
# to format_prompt to try the line break.
PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first shows the complete reasoning process step by step, then "
    "provides the final answer in \\boxed{}. The assistant must always follow the format: "
    "‘User: [question] Assistant: [detailed reasoning] The final answer is: \\boxed{[answer]}.’ "
    "User: QUESTION Assistant:"
)
PLACEHOLDER = "QUESTION"  # the paper's own placeholder; str.format would trip on \boxed{}


def format_prompt(question, template=PROMPT):
    """The template with its single QUESTION placeholder replaced by `question`."""
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty str, got {question!r}")
    if template.count(PLACEHOLDER) != 1:
        raise ValueError(
            f"the prompt template must contain the placeholder {PLACEHOLDER!r} exactly once, "
            f"found it {template.count(PLACEHOLDER)} times"
        )
    return template.replace(PLACEHOLDER, question)


# ------------------------------------------------------------------------------------------------ gold answers
# Read with rewards.py's rules: one box reader and one `####` rule in the whole project.


class _BadRow(Exception):
    """A row of the benchmark that has no usable question or answer (counted and reported)."""


def _text(row, key):
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise _BadRow(f"no {key!r}")
    return value.strip()


def _boxed_gold(solution):
    """The content of the solution's last box, `\\boxed{}` or `\\fbox{}` (a few MATH solutions use the latter)."""
    gold = rewards.extract_boxed(solution, fbox=True)
    if gold is None or not gold.strip():
        raise _BadRow("solution has no \\boxed{} answer")
    return gold.strip()


# ------------------------------------------------------------------------------------------------ hub schemas
# One row of each hub schema -> our dict (raise _BadRow if unusable; None = not in this subset).


def _gsm8k(row):
    field = _text(row, "answer")
    try:
        gold = rewards.gsm8k_gold(field)  # after the last `####`: "1,000" -> "1000"; "-3" kept
    except ValueError:  # the loader's own wording: it names the row, not the function's argument
        raise _BadRow("answer has no '####'" if "####" not in field else "nothing after '####'") from None
    # The '####' gold is a number. One that reads as NaN or +-inf (`#### NaN`: a missing value printed by the
    # script that wrote the file) is no answer at all: no sample can earn r = 100 on it (Eq. 11), so its group's
    # advantages are all 0 (Eq. 12), a prompt that teaches nothing. It is a row without a usable answer like one
    # without '####', and goes the same way: excluded, counted and named in load's warning. A gold that is no
    # plain number ("1/2") is Math-Verify's to read, and kept.
    try:
        finite = math.isfinite(float(gold))
    except ValueError:
        finite = True
    if not finite:
        raise _BadRow(f"gold {gold!r} after '####' is not a finite number")
    return {"question": _text(row, "question"), "answer": gold, "solution": field}


def _math(row):
    solution = _text(row, "solution")
    return {"question": _text(row, "problem"), "answer": _boxed_gold(solution),
            "solution": solution, "level": row.get("level"), "type": row.get("type")}


def _with_answer_field(row):
    """DeepScaleR, MATH-500: the `answer` field, else the solution's last box."""
    solution = row.get("solution") if isinstance(row.get("solution"), str) else ""
    answer = row.get("answer")
    gold = answer.strip() if isinstance(answer, str) and answer.strip() else _boxed_gold(solution)
    out = {"question": _text(row, "problem"), "answer": gold, "solution": solution}
    for key in ("subject", "level", "unique_id"):  # MATH-500's metadata
        if key in row:
            out[key] = row[key]
    return out


def _olympiadbench(row):
    def field_is(key, prefix):  # absent fields do not exclude a row
        value = row.get(key)
        return value is None or str(value).strip().lower().startswith(prefix)

    question = row.get("question") or ""
    has_image = any(row.get(f"image_{k}") for k in range(1, 6)) or "<image_" in question
    if not (field_is("language", "en") and field_is("subject", "math")
            and field_is("modality", "text") and field_is("question_type", "open")) or has_image:
        return None  # outside the 675: Chinese, physics, multimodal or theorem-proving
    question = _text(row, "question")
    if isinstance(row.get("context"), str) and row["context"].strip():
        question = row["context"].strip() + "\n" + question  # a shared preamble, where present
    answers = row.get("final_answer")
    answers = [answers] if isinstance(answers, str) else answers or []
    answers = [a.strip().strip("$").strip() for a in answers if isinstance(a, str)]
    answers = [a for a in answers if a]
    if not answers:
        raise _BadRow("no final_answer")
    solution = row.get("solution")
    solution = "\n".join(solution) if isinstance(solution, list) else solution or ""
    # Several answers are joined with ", ", which Math-Verify reads as a set.
    return {"question": question, "answer": ", ".join(answers), "solution": solution,
            "id": row.get("id"), "unit": row.get("unit")}


def _multiple_choice(question, choices, label, **extra):
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise _BadRow("choices must be a list of at least two strings")
    if not 0 <= label < len(choices):
        raise _BadRow(f"label {label} out of range for {len(choices)} choices")
    return {"question": question, "choices": choices, "label": label, "answer": choices[label], **extra}


def _hellaswag_clean(text):
    # WikiHow contexts carry markup such as " [title]" and "[step]"; drop it.
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return re.sub(r"\s+", " ", text).strip()


def _hellaswag(row):
    label = row.get("label")
    if label is None or str(label).strip() == "":
        raise _BadRow("no label (HellaSwag's test labels are hidden: use validation)")
    if row.get("ctx_a") is not None:
        context = row["ctx_a"] + " " + (row.get("ctx_b") or "").capitalize()
    else:
        context = _text(row, "ctx")
    activity = row.get("activity_label") or ""
    question = _hellaswag_clean(f"{activity}: {context}" if activity else context)
    endings = [_hellaswag_clean(e) for e in row.get("endings") or [] if isinstance(e, str)]
    return _multiple_choice(question, endings, int(label))


def _arc(row):
    choices = row.get("choices") or {}
    texts, labels = choices.get("text"), choices.get("label")
    if not isinstance(texts, list) or not isinstance(labels, list) or row.get("answerKey") not in labels:
        raise _BadRow("answerKey is not one of choices.label")
    return _multiple_choice(_text(row, "question"), texts, labels.index(row["answerKey"]), id=row.get("id"))


def _mmlu(row):
    answer = row.get("answer")
    if isinstance(answer, str) and answer.strip() in ("A", "B", "C", "D"):
        answer = "ABCD".index(answer.strip())
    if isinstance(answer, str) and answer.strip().isdigit():
        answer = int(answer)
    if not isinstance(answer, int) or isinstance(answer, bool):
        raise _BadRow("answer is not a choice index")
    return _multiple_choice(_text(row, "question"), row.get("choices"), answer, subject=row.get("subject"))


# ------------------------------------------------------------------------------------------------ the registry and load
# The hub copy of each dataset, the file reader and the dispatcher.

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra",
                 "number_theory", "prealgebra", "precalculus")


@dataclass(frozen=True)
class Source:
    repo: str  # the hub copy
    configs: tuple  # hub configs, concatenated (None: the default config)
    splits: dict  # our split name -> the hub's split name
    row: Callable[[dict], dict | None]  # one hub row -> our dict


def _same(*names):
    return {n: n for n in names}


DATASETS = {
    "gsm8k": Source("openai/gsm8k", ("main",), _same("train", "test"), _gsm8k),
    "math": Source("EleutherAI/hendrycks_math", MATH_SUBJECTS, _same("train", "test"), _math),
    "deepscaler": Source("agentica-org/DeepScaleR-Preview-Dataset", (None,), _same("train"), _with_answer_field),
    "math500": Source("HuggingFaceH4/MATH-500", (None,), _same("test"), _with_answer_field),
    "olympiadbench": Source("Hothan/OlympiadBench", ("OE_TO_maths_en_COMP",), {"test": "train"}, _olympiadbench),
    "hellaswag": Source("Rowan/hellaswag", (None,), _same("train", "validation"), _hellaswag),
    "arc": Source("allenai/ai2_arc", ("ARC-Challenge",), _same("train", "validation", "test"), _arc),
    "arc_easy": Source("allenai/ai2_arc", ("ARC-Easy",), _same("train", "validation", "test"), _arc),
    "mmlu": Source("cais/mmlu", ("all",), _same("test", "validation", "dev"), _mmlu),
}


def read_rows(path):
    """Rows of a local .json (list, or JSON Lines), .jsonl or .parquet file. A file that cannot be read raises a
    one-line ValueError naming the file and where in it (line; parquet: row and column) and what to do."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"no such data file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        rows = _parquet_rows(path)
    elif suffix in (".json", ".jsonl"):
        text = _utf8(path)
        if text.lstrip().startswith("["):
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {e.lineno}: not JSON ({e.msg} at column {e.colno})") from e
        else:
            rows = []
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}, line {n}: not JSON ({e.msg} at column {e.colno})") from e
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r}; use .json, .jsonl or .parquet")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"{path}: expected a list of JSON objects (one per row)")
    return rows


_RESAVE = "re-save it as UTF-8 (from Windows-1252 or Latin-1: iconv -f cp1252 -t utf-8 FILE > NEW)"


def _utf8(path):
    """The text of a JSON file. Python's own error gives only a byte offset into the whole file; this one names
    the line, so the bad character can be found in an editor. A leading byte-order mark (some Windows editors
    write one) is not data and is skipped: utf-8-sig."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        body, at = e.object, e.start   # the bytes after any byte-order mark, and the offset into them
        line = body.count(b"\n", 0, at) + 1
        column = at - body.rfind(b"\n", 0, at)
        raise ValueError(f"{path}, line {line}: byte {column} of the line (0x{body[at]:02x}) is not UTF-8; "
                         f"{_RESAVE}") from e


def _parquet_rows(path):
    """The rows of a parquet file. pyarrow reads invalid UTF-8 in a string column without complaint and fails only
    when a row becomes Python strings, with a byte offset into one value: the row and column are found here."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ValueError(f"reading {path} needs pyarrow (pip install pyarrow), or convert it to .jsonl") from e
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise ValueError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e
    try:
        return table.to_pylist()
    except UnicodeDecodeError as e:
        for name in table.column_names:   # the error path only: value by value, to name the first bad one
            column = table.column(name)
            for i in range(len(column)):
                try:
                    column[i].as_py()
                except UnicodeDecodeError as bad:
                    raise ValueError(f"{path}, row {i}, column {name!r}: not UTF-8 (byte "
                                     f"0x{bad.object[bad.start]:02x}); {_RESAVE}") from e
        raise


def _hub_rows(name, source, split, revision=None):
    hint = (f"Pass a local .jsonl/.json/.parquet file in the {source.repo} schema, downloaded on a machine with "
            "hub access (train.py's --data_path FILE, data.load's path=), or run the offline toy world: "
            "python train.py --recipe tiny")
    try:
        import datasets
    except ImportError as e:
        raise RuntimeError(f"loading {name!r} from the hub needs the `datasets` package. {hint}") from e
    rows = []
    for config in source.configs:
        try:
            rows += datasets.load_dataset(source.repo, config, split=source.splits[split],
                                          revision=revision).to_list()
        except Exception as e:  # offline, gated, renamed: all end here, with the way out
            raise RuntimeError(
                f"could not load {name!r} from the Hugging Face hub ({source.repo}, config "
                f"{config}, split {source.splits[split]}): {type(e).__name__}: {e}. {hint}"
            ) from e
    return rows


def load(name, split, path=None, limit=None, revision=None):
    """The usable rows of dataset `name`'s `split`, from the hub (at `revision`: a tag, branch or commit of its
    repository; None: the newest) or from a local `path`.

    `limit` keeps the first `limit` usable rows (in file order). Unusable rows are reported in
    a warning with their count and excluded; if none is usable, ValueError.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    source = DATASETS[name]
    if split not in source.splits:
        raise ValueError(f"{name!r} has no split {split!r}; valid splits: {', '.join(source.splits)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of rows or None, got {limit}")
    raw = read_rows(path) if path is not None else _hub_rows(name, source, split, revision)
    rows, bad, outside = [], [], 0   # bad: (row number, why), row numbers 0-based in file order
    for i, r in enumerate(raw):
        try:
            row = source.row(r)
        except _BadRow as e:
            bad.append((i, str(e)))
            continue
        except (TypeError, ValueError, AttributeError) as e:  # a field of the wrong type
            bad.append((i, f"malformed ({type(e).__name__}: {e})"))
            continue
        if row is None:
            outside += 1
        else:
            rows.append(row)
    where = f"{name}/{split}" + (f" ({path})" if path is not None else "")
    if not rows:
        raise ValueError(
            f"{where}: none of its {len(raw)} rows is usable"
            + (f" (first: row {bad[0][0]}: {bad[0][1]})" if bad else "")
            + f"; is it laid out in the {source.repo} schema?"
        )
    if bad:
        numbers = ", ".join(str(i) for i, _ in bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        warnings.warn(f"{where}: skipped {len(bad)} of {len(raw)} rows without a usable question or answer "
                      f"(rows {numbers}, counted from 0; first: row {bad[0][0]}: {bad[0][1]})", stacklevel=2)
    if outside:
        warnings.warn(f"{where}: {outside} of {len(raw)} rows are outside the benchmark's "
                      "subset (not text-only English maths with a final answer) and were left out",
                      stacklevel=2)
    return rows[:limit] if limit is not None else rows


# ------------------------------------------------------------------------------------------------ the validation split


def drop_repeated_questions(rows, where):
    """`rows` without the later copies of a question text seen before (the first copy is kept, order kept), with a
    one-line warning giving their count, how many of them had another gold, and `where` (the dataset and file).

    Call it on a training split before split_train_val (recipes.load_problems does). Why: a repeated question is
    one problem counted twice: drawn twice as often in training, weighted twice in validation accuracy, and, if its
    copies fall on both sides of split_train_val's cut, a validation question the policy trains on. (Equal
    questions hash equal there, so their copies are neighbours in its order and only the pair at the cut can be
    split; that one leak is still a leak, and the double counts are everywhere.) Dropped, not refused: a hub copy
    merged from several sources (DeepScaleR) can repeat a problem, and a refusal would make that recipe unusable
    without editing a file the user does not own. Keeping the first copy makes the result depend on the file order
    only. A copy with another gold contradicts the first; it is counted in the warning, not arbitrated.
    `python -W error::UserWarning` turns this warning, like load's, into a refusal.
    """
    first, kept, other_gold = {}, [], 0
    for row in rows:
        q = row["question"]
        if q in first:
            other_gold += row["answer"] != first[q]["answer"]
        else:
            first[q] = row
            kept.append(row)
    if len(kept) < len(rows):
        warnings.warn(f"{where}: dropped {len(rows) - len(kept)} of {len(rows)} rows that repeat an earlier "
                      f"question ({other_gold} of them with another gold); the first copy of each is kept",
                      stacklevel=2)
    return kept


def data_digest(rows):
    """16 hex digits of sha256 over the rows' (question, gold answer) pairs, in order: the fingerprint of the data
    a run trains and validates on.

    Call it as data_digest(train + val) on load_problems' two lists: record it in config.json, and on --resume
    compare it with the digest of the data loaded again. Editing the data file (a question, a gold, their order,
    a row added or removed) changes the training and validation sets under a resumed run without a word; the
    digest changes with any of those. With val_size fixed (a flag --resume checks), train + val determines both
    lists. Only what training reads is hashed: the question (in the prompt) and the answer (the gold of Eq. 11),
    not the solution or metadata. The JSON is canonical (no spaces, UTF-8 kept as is), so the digest is the same
    on every machine and Python version.
    """
    canonical = json.dumps([[r["question"], r["answer"]] for r in rows], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()[:16]   # a lone surrogate too


def split_train_val(rows, n_val, seed=0):
    """A fixed held-out validation slice of a training split, for model selection (Sec. 4).

    The `n_val` rows whose sha256(seed, question) is smallest form `val`; the rest, in their
    original order, form `train`. It depends only on the question texts and the seed: not on
    the process count, the rank, torch's or Python's RNG, nor the order of `rows`, so every
    run and every process holds out the same questions.
    """
    if not 0 <= n_val < len(rows):
        raise ValueError(f"n_val must be in [0, {len(rows)}) for {len(rows)} rows, got {n_val}")

    def key(i):
        question = rows[i].get("question")
        if not isinstance(question, str):
            raise ValueError(f"rows[{i}] has no 'question' string; pass rows made by data.load")
        return hashlib.sha256(f"{seed}\n{question}".encode()).hexdigest(), i

    held_out = set(sorted(range(len(rows)), key=key)[:n_val])
    train = [r for i, r in enumerate(rows) if i not in held_out]
    val = [r for i, r in enumerate(rows) if i in held_out]
    return train, val
