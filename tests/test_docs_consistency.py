"""The docs against the code and against themselves: the numbers and names that drift when one side changes.

Text only (no model, no subprocess), so the whole file runs in well under a second:
- every key train.py writes to metrics.jsonl is documented in docs/metrics.md, and is still written by the code;
- the suite-time claims of README.md and requirements.txt name the same measurement;
- every "mean ± std" over seeds in the docs' run tables follows from the rows above it (sample std, n - 1);
- every flag a doc passes to one of the repository's scripts is defined by some argparse call;
- every relative link in docs/ points at a file (and heading) that exists, and every `module.name` a doc cites is
  still defined by that module.
"""
import ast
import functools
import glob
import json
import os
import re
import statistics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


@functools.cache
def root_sources():
    """{file name: source} of the repository's top-level modules (code moves between them: search them all)."""
    return {os.path.basename(p): read(p) for p in sorted(glob.glob(os.path.join(ROOT, "*.py")))}


@functools.cache
def doc_texts():
    """{path: text} of docs/*.md and of the notebooks' markdown cells (the prose a reader follows)."""
    out = {os.path.relpath(p, ROOT): read(p) for p in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))}
    for p in sorted(glob.glob(os.path.join(ROOT, "notebooks", "*.ipynb"))):
        cells = json.loads(read(p))["cells"]
        prose = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
        out[os.path.relpath(p, ROOT)] = "\n\n".join(prose)
    return out


# ------------------------------------------------------------------------------------------------ metrics.jsonl
# Every key of a metrics.jsonl line (train.main: the step-0 line, then dict(step, lr) | step_metrics(...) |
# dict(grad_norm, ...), plus val_acc / val_best on validation steps). A new key must be added here and to
# docs/metrics.md; a key the code stops writing must leave both.
METRIC_KEYS = ["step", "lr", "reward", "reward_std", "accuracy", "boxed", "grader_errors", "cap_rate", "eos_rate",
               "cot_len", "answer_len", "cot_entropy", "noise_ratio", "rescore_mismatch", "zero_adv_frac", "grad_norm",
               "skipped", "t_rollout", "t_reward", "t_update", "tokens_per_s", "time", "peak_gib", "val_acc",
               "val_best"]
# keys that only the dicts of a metrics line use (gradsignal.py's report shares the others): they locate those
# dicts in the source, wherever the code has moved them; dict(step=..., lr=...) is the third
ANCHORS = {"grad_norm", "rescore_mismatch"}


def test_metrics_md_documents_every_key():
    missing = [key for key in METRIC_KEYS if f"`{key}`" not in read("docs/metrics.md")]
    assert not missing, f"docs/metrics.md does not document these metrics.jsonl keys (as `key`): {missing}"


def test_every_documented_key_is_written_by_the_code():
    """As a keyword (`dict(key=...)`) or a string key (`m["key"]`) in some top-level module."""
    written = [re.compile(rf"(?<![\w.])({key}\s*=(?!=)|[\"']{key}[\"'])") for key in METRIC_KEYS]
    gone = [key for key, w in zip(METRIC_KEYS, written) if not any(w.search(src) for src in root_sources().values())]
    assert not gone, f"no top-level module writes these metrics keys any more: {gone}; update METRIC_KEYS and " \
                     "docs/metrics.md"


@functools.cache
def _metric_dict_keys():
    """The keys of a metrics line as the source builds them, across all top-level modules: in a function with a
    statement whose dict(...) calls use an anchor key (or dict(step=..., lr=...)), the keywords of every dict(...)
    in those statements and in the function's return statements, and the string keys later assigned into a
    variable such a statement made (m["val_acc"] = ...)."""
    def dict_calls(node):
        return [c for c in ast.walk(node) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)
                and c.func.id == "dict"]

    def anchored(node):
        return any({k.arg for k in c.keywords} & ANCHORS or {"step", "lr"} <= {k.arg for k in c.keywords}
                   for c in dict_calls(node))

    keys = set()
    for name, src in root_sources().items():
        for fn in ast.walk(ast.parse(src, name)):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            statements = [n for n in ast.walk(fn) if isinstance(n, (ast.Assign, ast.Return))]
            hits = [n for n in statements if anchored(n)]
            if not hits:
                continue
            holders = {t.id for n in hits if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
            for n in hits + [n for n in statements if isinstance(n, ast.Return)]:
                keys |= {k.arg for c in dict_calls(n) for k in c.keywords if k.arg}
            for n in statements:
                for t in getattr(n, "targets", []):
                    if (isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and t.value.id in holders
                            and isinstance(t.slice, ast.Constant) and isinstance(t.slice.value, str)):
                        keys.add(t.slice.value)
    return keys


def test_the_code_writes_no_undocumented_metric():
    keys = _metric_dict_keys()
    assert {"step", "lr", "reward", "zero_adv_frac", "grad_norm", "val_acc"} <= keys, \
        f"could not find the dicts that build a metrics.jsonl line in the top-level modules (found {sorted(keys)})"
    new = keys - set(METRIC_KEYS)
    assert not new, f"metrics.jsonl keys written by the code but not in METRIC_KEYS / docs/metrics.md: {sorted(new)}"


def test_metrics_md_names_the_run_folder_files():
    md = read("docs/metrics.md")
    for name in ("config.json", "metrics.jsonl", "samples.jsonl", "best/", "last/", "last.prev/", "toy_train.jsonl",
                 "trainer_state.pt", "resumes.jsonl", "run.lock", "checkpoint.json", "training.png", "tensorboard/",
                 "wandb/"):
        assert f"`{name}`" in md, name
    # toy_train.jsonl is the run's own copy of its problems: the file name must still be the code's
    assert any("toy_train.jsonl" in src for src in root_sources().values())


# ------------------------------------------------------------------------------------------------ suite time
def test_suite_time_claims_agree():
    """README's "The N tests run in 2 processes ... in about M min ... (S s on DATE)" and requirements.txt's comment
    on pytest-xdist name the same N and S, and M min is S s rounded."""
    readme = re.sub(r"\s+", " ", read("README.md"))
    n = re.search(r"The (\d+) tests run in 2 processes", readme)
    s = re.search(r"in about (\d+) min on 2 cores \((\d+) s on (\d{4}-\d\d-\d\d)\)", readme)
    assert n and s, "README.md no longer states the suite's time as 'The N tests run in 2 processes ... (S s on DATE)'"
    minutes, seconds, date = int(s.group(1)), int(s.group(2)), s.group(3)
    assert abs(minutes * 60 - seconds) <= 60, f"README: about {minutes} min against {seconds} s"
    comment = [line for line in read("requirements.txt").splitlines() if line.startswith("#") and "-n 2" in line]
    assert len(comment) == 1, "requirements.txt: one comment line about the suite's -n 2 run"
    r = re.search(r"(\d+) tests in (\d+) s\b.*?(\d{4}-\d\d-\d\d)", comment[0])
    assert r, f"requirements.txt's comment names no 'N tests in S s (DATE)': {comment[0]}"
    assert (int(r.group(1)), int(r.group(2)), r.group(3)) == (int(n.group(1)), seconds, date), \
        f"requirements.txt says {r.group(0)!r}, README.md {n.group(1)} tests in {seconds} s on {date}"


# ------------------------------------------------------------------------------------------------ mean ± std
NUM = r"[+-]?\d+(?:\.\d+)?"


def _tables(text):
    """Every markdown table as a list of rows, each a list of stripped cells (bold markers removed)."""
    tables, cur = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip().replace("**", "") for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                cur.append(cells)
        elif cur:
            tables.append(cur)
            cur = []
    return tables


def _numbers(cell):
    return [float(x) for x in re.findall(NUM, cell)]


def _half_unit(number_text):
    """Half a unit of the last printed digit of a number as written ('9.5' -> 0.05, '38' -> 0.5)."""
    x = re.findall(NUM, number_text)[0]
    return 0.5 * 10 ** -(len(x.split(".")[1]) if "." in x else 0)


def _check(stated, cells, where):
    """stated: 'm ± s' as printed; cells: the seeds' numbers as printed. The seeds' rounding moves the mean by up to
    half their last digit and the sample std by up to that x sqrt(n / (n - 1)); the statement's own rounding adds
    half of its last digit."""
    values = [_numbers(c)[0] for c in cells]
    m_text, s_text = stated.split("±")[:2]
    m, s = _numbers(m_text)[0], _numbers(s_text)[0]
    n, rounding = len(values), max(_half_unit(c) for c in cells)
    ok_mean = abs(statistics.mean(values) - m) <= _half_unit(m_text) + rounding + 1e-9
    ok_std = abs(statistics.stdev(values) - s) <= _half_unit(s_text) + rounding * (n / (n - 1)) ** 0.5 + 1e-9
    assert ok_mean and ok_std, \
        f"{where}: {stated.strip()!r} but the rows give {statistics.mean(values):.3f} ± " \
        f"{statistics.stdev(values):.3f} (sample std, n - 1) from {values}"


def test_learning_md_mean_rows_follow_from_the_seeds():
    """docs/learning.md: each "mean ± std" row is the mean and sample std of the seed rows of its mode above it."""
    checked = 0
    for table in _tables(read("docs/learning.md")):
        header = table[0]
        for i, row in enumerate(table):
            if len(row) > 1 and row[1] == "mean ± std":
                seeds = [r for r in table[:i] if r[0] == row[0] and re.fullmatch(r"\d+", r[1])]
                assert len(seeds) >= 2, row
                for j, cell in enumerate(row[2:], start=2):
                    if "±" not in cell:
                        continue
                    parts = cell.split("->")
                    for k, part in enumerate(parts):
                        cells = [r[j].split("->")[k] if "->" in r[j] else r[j] for r in seeds]
                        _check(part, cells, f"docs/learning.md, {row[0]}, {header[j]}")
                        checked += 1
    assert checked >= 10


def test_toy_study_summary_rows_follow_from_the_runs():
    """docs/toy_study.md: the per-setting rows (val final - base, val best - base, last-50 train acc) from the runs."""
    tables = _tables(read("docs/toy_study.md"))
    runs = {}
    for table in tables:
        if table[0][:5] == ["run", "steps", "val base", "val best (step)", "val final"]:
            for r in table[1:]:   # validations are whole numbers (100 problems): differences are exact
                base, best, final = _numbers(r[2])[0], _numbers(r[3])[0], _numbers(r[4])[0]
                runs.setdefault(r[0], (f"{final - base:g}", f"{best - base:g}", r[5].split("->")[1]))
    checked = 0
    for table in tables:
        if table[0][:3] == ["setting", "seeds", "val final - base"]:
            for r in table[1:]:
                seeds = [runs[f"{r[0]}-s{k}"] for k in range(int(r[1]))]
                for j in range(3):
                    _check(r[2 + j], [s[j] for s in seeds], f"docs/toy_study.md, {r[0]}, {table[0][2 + j]}")
                    checked += 1
    assert checked >= 15


def test_results_md_mean_over_seeds_follows_from_its_table():
    """docs/results.md, "RL runs": the sentence under the shipped models' table states final - base over the seeds."""
    text = read("docs/results.md")
    part = text[text.index("From the shipped base models"):]
    table = _tables(part)[0]
    assert table[0][:5] == ["mode", "seed", "base", "best checkpoint (step)", "final (step 150)"], table[0]
    gains = {}
    for r in table[1:]:   # one decimal each, so the difference is exact to that decimal
        gains.setdefault(r[0], []).append(f"{_numbers(r[4])[0] - _numbers(r[2])[0]:.1f}")
    sentence = re.sub(r"\s+", " ", part[part.index("Mean ± std over the two seeds"):].split("\n\n")[0])
    for mode, values in gains.items():
        stated = re.search(rf"{mode} ({NUM} ± {NUM})", sentence)
        assert stated, f"docs/results.md states no mean ± std for {mode}"
        _check(stated.group(1), values, f"docs/results.md, {mode}")


# ------------------------------------------------------------------------------------------------ flags, links
COMMAND = re.compile(r"(?:python|torchrun)\b[^`\n]*?\s((?:scripts/)?\w+\.py)\b([^`\n|]*)")
NOT_OURS = {"--no-deps", "--standalone", "--nproc_per_node"}   # pip's and torchrun's own


@functools.cache
def _defined_flags():
    scripts = [read(p) for p in glob.glob(os.path.join(ROOT, "scripts", "*.py"))]
    return set(re.findall(r"[\"'](--[A-Za-z][\w-]*)[\"']", "\n".join([*root_sources().values(), *scripts])))


def test_doc_commands_use_existing_flags():
    """`python X.py ... --flag` in docs/ or a notebook's prose: X exists and some argparse call defines --flag."""
    defined, bad = _defined_flags(), []
    for path, text in doc_texts().items():
        for m in COMMAND.finditer(text):
            script, rest = m.group(1), m.group(2)
            if not os.path.exists(os.path.join(ROOT, script)):
                bad.append(f"{path}: {script} does not exist")
                continue
            bad += [f"{path}: {script} {flag}" for flag in re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", rest)
                    if flag not in defined and flag not in NOT_OURS]
    assert not bad, f"commands with flags no script defines: {bad}"


def _anchors(md):
    """GitHub's heading anchors of a markdown text."""
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", md, flags=re.M)}


def test_doc_links_resolve():
    """Every relative markdown link in docs/*.md names an existing file, and an existing heading after a #."""
    bad = []
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        for target in re.findall(r"\]\(([^)\s]+)\)", read(path)):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            full = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            if not os.path.exists(full) or (anchor and full.endswith(".md") and anchor not in _anchors(read(full))):
                bad.append(f"{os.path.relpath(path, ROOT)}: {target}")
    assert not bad, f"links to nothing: {bad}"


@functools.cache
def _top_level_names(module):
    """Names a top-level module defines at its top level (functions, classes, assignments, imports)."""
    names = set()
    for node in ast.parse(root_sources()[f"{module}.py"]).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_doc_code_names_exist():
    """`module.name` in docs/*.md (a module at the top level): the module still defines that name."""
    modules = {name[:-3] for name in root_sources()}
    bad = []
    for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))):
        for span in re.findall(r"`([^`\n]+)`", read(path)):
            for mod, attr in re.findall(r"\b([a-z_]\w*)\.([A-Za-z_]\w*)", span):
                if mod in modules and attr not in ("py",) and attr not in _top_level_names(mod):
                    bad.append(f"{os.path.relpath(path, ROOT)}: {mod}.{attr}")
    assert not bad, f"names the docs cite that their module no longer defines: {sorted(set(bad))}"
