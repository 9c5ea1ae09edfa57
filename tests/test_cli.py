"""Fail fast, lose nothing: bad command lines of train.py, evaluate.py, bench.py and smol.py are refused by the
parser (exit code 2, one line naming the flag, no traceback) before any model, data or process group is
touched; damaged caches are rebuilt, damaged checkpoints skipped or named; --resume is guarded; Ctrl-C saves.

Every bad case is a valid invocation (BASE, checked to parse) plus one bad flag, so a check that moved later
would show: the valid invocation loads a small model and would train, evaluate or benchmark it. The table runs
in-process (parse_args with argv); a few cases run as real processes to prove the exit code and the absence of
a traceback end to end.
"""
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import bench
import evaluate
import gradsignal
import recipes
import checkpoints
import runs
import runtime
import smol
import softcot
import toy
import train
from conftest import ENV, ROOT

TINY = ["--recipe", "tiny", "--prompts_per_step", "2", "--samples", "2", "--max_cot_tokens", "16",
        "--val_cot_tokens", "16", "--val_size", "4", "--val_every", "2", "--micro_batch", "2"]
SCRIPTS = {"train": train, "evaluate": evaluate, "bench": bench, "smol": smol}
# {base}: a toy base model; {tmp}: an empty folder; {file}: a file (so {file}/x cannot be made)
BASE = {
    "train": TINY + ["--model", "{base}", "--steps", "3", "--out", "{tmp}/run"],
    "evaluate": ["--recipe", "tiny", "--model", "{base}", "--limit", "2", "--samples", "2", "--batch", "4",
                 "--max_cot_tokens", "8", "--max_answer_tokens", "4", "--out", "{tmp}/eval"],
    "bench": ["--quick", "--out", "{tmp}/bench.json"],
    "smol": ["--write", "{tmp}/problems.jsonl", "--count", "2"],
}
CASES = [   # (script, the bad flags added to BASE, what the error line must name)
    ("train", ["--micro_batch", "-1"], "--micro_batch"),
    ("train", ["--micro_batch", "0"], "--micro_batch"),
    ("train", ["--val_every", "0"], "--val_every"),
    ("train", ["--save_every", "0"], "--save_every"),
    ("train", ["--val_size", "0"], "--val_size"),
    ("train", ["--prompts_per_step", "0"], "--prompts_per_step"),
    ("train", ["--samples", "1"], "--samples"),
    ("train", ["--steps", "0"], "--steps"),
    ("train", ["--steps", "two"], "--steps"),
    ("train", ["--warmup", "-1"], "--warmup"),
    ("train", ["--stop_after", "4"], "--stop_after"),
    ("train", ["--lr", "-0.00001"], "--lr"),                            # (-1e-5 argparse takes for a flag)
    ("train", ["--lr", "nan"], "--lr"),
    ("train", ["--lr", "inf"], "--lr"),
    ("train", ["--tau", "-1"], "--tau"),
    ("train", ["--mode", "hard", "--tau", "0"], "--tau"),
    ("train", ["--gamma", "-0.33"], "--gamma"),
    ("train", ["--gamma", "0"], "--gamma"),
    ("train", ["--answer_temperature", "0"], "--answer_temperature"),
    ("train", ["--top_k", "0"], "--top_k"),
    ("train", ["--mode", "hard", "--top_k", "4"], "--top_k"),
    ("train", ["--grad_clip", "-1"], "--grad_clip"),
    ("train", ["--weight_decay", "-0.1"], "--weight_decay"),
    ("train", ["--embed_lr_scale", "nan"], "--embed_lr_scale"),
    ("train", ["--dtype", "fp16"], "--dtype"),
    ("train", ["--rescore_tol", "0"], "--rescore_tol"),
    ("train", ["--rescore_tol", "nan"], "--rescore_tol"),
    ("train", ["--mode", "fuzy"], "--mode"),
    ("train", ["--recipe", "llama"], "--recipe"),
    ("train", ["--seed", "-1"], "--seed"),
    ("train", ["--model", "{tmp}/nope"], "--model"),
    ("train", ["--model", "{tmp}"], "--model"),                         # a folder, but no model in it
    ("train", ["--dataset", "mmlu"], "--dataset"),                      # no train split
    ("train", ["--data_path", "{file}"], "--data_path"),                # the toy problems read no file
    ("train", ["--dataset", "gsm8k", "--data_path", "{tmp}/nope.jsonl"], "--data_path"),
    ("train", ["--out", "{file}/run"], "--out"),
    ("train", ["--resume", "--out", "{tmp}/never"], "--resume"),
    ("train", ["--model_revision", "main"], "--model_revision"),        # a local folder has no revisions
    ("train", ["--data_revision", "v1"], "--data_revision"),            # nor the generated toy problems
    ("train", ["--dataset", "gsm8k", "--data_path", "{file}", "--data_revision", "v1"], "--data_revision"),
    ("train", ["--report_to", "mlflow"], "--report_to"),
    ("evaluate", ["--out", "{file}/eval"], "--out"),
    ("evaluate", ["--samples", "0"], "--samples"),
    ("evaluate", ["--batch", "0"], "--batch"),
    ("evaluate", ["--max_cot_tokens", "0"], "--max_cot_tokens"),
    ("evaluate", ["--max_answer_tokens", "0"], "--max_answer_tokens"),
    ("evaluate", ["--limit", "0"], "--limit"),
    ("evaluate", ["--k", "0"], "--k"),
    ("evaluate", ["--k", "1", "4"], "--samples"),                       # pass@4 from 2 samples
    ("evaluate", ["--dtype", "fp16"], "--dtype"),
    ("evaluate", ["--seed", "-1"], "--seed"),
    ("evaluate", ["--settings", "hard_gready"], "--settings"),
    ("evaluate", ["--dataset", "nope"], "--dataset"),
    ("evaluate", ["--data_path", "{file}"], "--data_path"),             # the toy test set reads no file
    ("evaluate", ["--dataset", "gsm8k", "--data_path", "{tmp}/nope.jsonl"], "--data_path"),
    ("evaluate", ["--ood", "foo"], "--ood"),
    ("evaluate", ["--ood", "hellaswag={tmp}/nope.jsonl"], "--ood"),
    ("evaluate", ["--ood", "test_mul={file}"], "--ood"),
    ("evaluate", ["--model", "{tmp}/no/such/checkpoint"], "--model"),
    ("evaluate", ["--metrics", "{tmp}/metrics.jsonl"], "--metrics"),
    ("bench", ["--repeats", "0"], "--repeats"),
    ("bench", ["--threads", "0"], "--threads"),
    ("bench", ["--shapes", "tiny,huge"], "--shapes"),
    ("bench", ["--dtype", "fp16"], "--dtype"),
    ("bench", ["--out", "{tmp}"], "--out"),                             # a folder, not a file
    ("smol", ["--count", "0"], "--count"),
    ("smol", ["--write", "{file}/x.jsonl"], "--write"),
    ("smol", ["--split", "nope"], "--split"),
]


@pytest.fixture
def where(base, tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTCOT_CACHE", str(tmp_path / "cache"))    # never the real cache
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    (tmp_path / "file").write_text('{"question": "1+1?", "answer": "1+1=2\\n#### 2"}\n')
    return dict(base=base, tmp=str(tmp_path), file=str(tmp_path / "file"))


def fill(argv, where):
    return [a.format(**where) for a in argv]


def refused(script, argv, capsys):
    """parse_args(argv) must exit with code 2; returns its error line (the last line on stderr)."""
    with pytest.raises(SystemExit) as e:
        SCRIPTS[script].parse_args(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("script", list(BASE))
def test_the_valid_invocations_parse(script, where):
    assert SCRIPTS[script].parse_args(fill(BASE[script], where))


@pytest.mark.parametrize("script, bad, flag", CASES, ids=[f"{s} {' '.join(b)}" for s, b, _ in CASES])
def test_bad_flag_is_refused_by_the_parser(script, bad, flag, where, capsys):
    line = refused(script, fill(BASE[script] + bad, where), capsys)
    assert ": error: " in line and flag in line, line


def test_process_count_must_divide_the_batch(where, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")                               # torchrun --nproc_per_node 3
    assert "--prompts_per_step" in refused("train", fill(BASE["train"], where), capsys)


def test_unwritable_cache_is_refused_before_the_base_model_is_made(where, monkeypatch, capsys):
    monkeypatch.setenv("SOFTCOT_CACHE", os.path.join(where["file"], "cache"))
    argv = fill(BASE["train"], where)
    argv[argv.index("--model") + 1] = "toy"
    assert train.parse_args(argv).model == "toy"          # seed 0's base model ships in models/: no cache needed
    assert "SOFTCOT_CACHE" in refused("train", argv + ["--seed", "7"], capsys)   # seed 7's is made in the cache
    argv[argv.index("--model") + 1] = "toy-calibrated"
    assert train.parse_args(argv).model == "toy-calibrated"          # shipped for seed 0
    assert "SOFTCOT_CACHE" in refused("train", argv + ["--seed", "1"], capsys)
    assert SCRIPTS["evaluate"].parse_args(["--recipe", "tiny", "--model", "toy-calibrated"]).model == ["toy-calibrated"]
    # evaluate.py and gradsignal.py made the base model for minutes and then failed to write it
    assert "SOFTCOT_CACHE" in refused("evaluate", ["--recipe", "tiny", "--model", "toy", "--seed", "7"], capsys)
    with pytest.raises(SystemExit) as e:
        gradsignal.parse_args(["--recipe", "tiny", "--model", "toy", "--seed", "7"])
    assert e.value.code == 2 and "SOFTCOT_CACHE" in capsys.readouterr().err


def run_refused(cmd, flag, env=ENV):
    """A real process: exit code 2, its last stderr line names the flag, no traceback, nothing on stdout."""
    p = subprocess.run([sys.executable] + cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert flag in p.stderr.strip().splitlines()[-1] and not p.stdout.strip(), p.stdout[-2000:] + p.stderr[-2000:]


def test_refused_as_a_process(where):
    """One refusal as a real `python train.py` process (exit code 2, one line, no traceback): the parsers share
    their error path (every case above, in this process), so one process shows that path reaches the shell."""
    run_refused(["train.py"] + fill(BASE["train"] + ["--micro_batch", "-1"], where), "--micro_batch",   # was: exit 0
                env=dict(ENV, SOFTCOT_CACHE=os.path.join(where["tmp"], "cache")))


# ------------------------------------------------------------------------------------------------ caches
def test_damaged_cached_base_model_is_rebuilt(tmp_path, capsys):
    path = toy.base_model(seed=0, steps=2, cache_dir=str(tmp_path))
    weights = os.path.join(path, "model.safetensors")
    size = os.path.getsize(weights)
    os.truncate(weights, size // 2)                                     # a copy cut short
    assert "model.safetensors" in checkpoints.folder_problem(path)
    capsys.readouterr()
    assert toy.base_model(seed=0, steps=2, cache_dir=str(tmp_path)) == path
    out = capsys.readouterr().out
    assert f"the cached toy base model at {path} is damaged" in out and "making the toy base model" in out
    assert os.path.getsize(weights) == size and checkpoints.folder_problem(path) is None
    with open(os.path.join(path, "config.json"), "w") as f:            # a config that is not JSON
        f.write("{")
    assert checkpoints.folder_problem(path).startswith("config.json: JSONDecodeError")
    toy.base_model(seed=0, steps=2, cache_dir=str(tmp_path))
    assert checkpoints.folder_problem(path) is None


# ------------------------------------------------------------------------------------------------ resume
@pytest.fixture(scope="module")
def run(base, tmp_path_factory):
    """A 3-step run paused after step 2, checkpoints every step: last/ = step 2, last.prev/ = step 1."""
    out = str(tmp_path_factory.mktemp("resume") / "run")
    train.main(TINY + ["--model", base, "--steps", "3", "--save_every", "1", "--stop_after", "2", "--out", out])
    return out


def resume_argv(base, out, *extra):
    return TINY + ["--model", base, "--steps", "3", "--save_every", "1", "--out", out, "--resume", *extra]


def step_of(folder):
    return torch.load(os.path.join(folder, "trainer_state.pt"), weights_only=False)["step"]


def test_run_keeps_the_previous_checkpoint(run):
    assert (step_of(os.path.join(run, "last")), step_of(os.path.join(run, "last.prev"))) == (2, 1)


@pytest.mark.parametrize("change, refused_flag", [
    (["--mode", "hard"], "--mode hard (the run has fuzzy)"),
    (["--lr", "1e-4"], "--lr 0.0001 (the run has 3e-05)"),
    (["--seed", "1"], "--seed 1 (the run has 0)"),
    (["--val_size", "8"], "--val_size 8 (the run has 4)"),
], ids=["mode", "lr", "seed", "val_size"])
def test_resume_refuses_settings_that_change_the_run(run, base, change, refused_flag, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    line = refused("train", resume_argv(base, run, *change), capsys)
    assert "--resume" in line and refused_flag in line, line


def test_resume_refuses_a_new_step_count(run, base, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv = resume_argv(base, run)
    argv[argv.index("--steps") + 1] = "5"                               # the cosine schedule would change
    assert "--steps 5 (the run has 3)" in refused("train", argv, capsys)


def test_resume_allows_what_does_not_change_the_run(run, base, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = train.parse_args(resume_argv(base, run, "--val_every", "3", "--micro_batch", "1", "--save_every", "2"))
    assert args.resume and args.micro_batch == 1
    assert "--stop_after" in refused("train", resume_argv(base, run, "--stop_after", "2"), capsys)  # passed already


def test_resume_with_only_the_folder_continues_the_run_as_it_started(run, base, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    args = train.parse_args(["--out", run, "--resume"])                 # no --recipe: every setting from config.json
    config = runs.run_config(run)
    assert all(v == config[k] for k, v in vars(args).items() if k not in runs.ASKED_ANEW)
    assert (args.recipe, args.model, args.val_size, args.stop_after) == ("tiny", base, 4, None)  # the pause: not kept
    line = refused("train", ["--out", run, "--resume", "--lr", "1e-4"], capsys)
    assert "--lr 0.0001 (the run has 3e-05)" in line and "leave them out" in line, line
    # the command a pause prints: the folder, and what this command changed that a resume may change
    assert runs.resume_command(vars(args), 1) == f"python train.py --out {run} --resume"
    changed = train.parse_args(["--out", run, "--resume", "--micro_batch", "1", "--grad_ckpt"])
    command = runs.resume_command(vars(changed), 1)
    assert command == f"python train.py --out {run} --micro_batch 1 --grad_ckpt --resume"
    assert train.parse_args(shlex.split(command)[2:]) == changed


def test_refused_resume_writes_nothing(run, base, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = {f: open(os.path.join(run, f), "rb").read() for f in ("config.json", "metrics.jsonl")}
    with pytest.raises(SystemExit):
        train.main(resume_argv(base, run, "--mode", "hard"))
    assert "--mode hard" in capsys.readouterr().err
    assert {f: open(os.path.join(run, f), "rb").read() for f in before} == before


def test_truncated_checkpoints_are_named(run, base, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    out = str(tmp_path / "run")
    shutil.copytree(run, out)
    weights = os.path.join(out, "last", "model.safetensors")
    os.truncate(weights, os.path.getsize(weights) - 10)
    assert "model.safetensors" in checkpoints.checkpoint_problem(os.path.join(out, "last"))
    assert train.parse_args(resume_argv(base, out)).resume                 # last.prev/ is still complete
    state = os.path.join(out, "last.prev", "trainer_state.pt")
    os.truncate(state, os.path.getsize(state) // 2)
    line = refused("train", resume_argv(base, out), capsys)
    assert f"{out}/last: model.safetensors" in line and f"{out}/last.prev: trainer_state.pt" in line, line
    assert "start again without --resume" in line


def test_resume_falls_back_when_the_latest_checkpoint_is_damaged(run, base, tmp_path, capsys):
    out = str(tmp_path / "run")
    shutil.copytree(run, out)
    with open(os.path.join(out, "last", "config.json"), "w") as f:    # valid JSON, but no model's configuration
        f.write("{}")
    train.main(resume_argv(base, out))
    assert f"skipping {out}/last, it cannot be loaded (config.json" in capsys.readouterr().out
    assert [json.loads(x)["step"] for x in open(os.path.join(out, "metrics.jsonl"))] == [0, 1, 2, 3]
    # the damaged folder was dropped, not kept as the fallback: the two newest saves are the checkpoints now
    assert (step_of(os.path.join(out, "last")), step_of(os.path.join(out, "last.prev"))) == (3, 2)


# ------------------------------------------------------------------------------------------------ -h, no hub
def test_help_imports_no_torch_and_shows_the_recipes_defaults():
    code = ("import runpy, sys; sys.argv = ['train.py', '--recipe', 'tiny', '-h']\n"
            "try: runpy.run_path('train.py', run_name='__main__')\n"
            "except SystemExit: print('torch imported:', 'torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(ENV, COLUMNS="200"), capture_output=True,
                       text=True, timeout=120)
    assert p.stdout.rstrip().endswith("torch imported: False"), p.stdout[-500:] + p.stderr[-2000:]
    assert "(default: toy-slips)" in p.stdout and "(default: 3e-05)" in p.stdout        # --recipe tiny's
    assert f"None: {softcot.GAMMA} " in p.stdout                                      # the help's number is the code's
    for name, r in recipes.RECIPES.items():                                           # every recipe's row
        assert re.search(rf"^  {name} +{re.escape(r['model'])} +{r['dataset']} +{r['steps']} ", p.stdout, re.M), name


def test_torch_free_recipes_names_what_the_modules_define():
    """recipes.py imports no torch, so it writes out names that toy.py and smol.py define: they must agree."""
    assert recipes.MADE_HERE == tuple(toy.WORLDS) + ("smol",)
    assert recipes.prompt_text("toy", "Q?") == toy.TOY_PROMPT.format(question="Q?")
    assert recipes.prompt_text("smol", "Q?") == smol.SYSTEM_PROMPT.replace("QUESTION", "Q?")
    assert all("Q?" in recipes.prompt_text(name, "Q?") for name in recipes.PROMPTS)


def test_a_model_revision_is_read_from_its_snapshot(monkeypatch):
    import huggingface_hub
    calls = []

    def snapshot(repo, revision, allow_patterns):
        calls.append((repo, revision))
        return f"/hub/{repo}/snapshots/{revision}"

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
    assert recipes.model_path("org/name", 0, revision="abc123") == "/hub/org/name/snapshots/abc123"
    assert recipes.model_path("org/name", 0) == "org/name" and calls == [("org/name", "abc123")]   # unpinned: as is

    def offline(*args, **kwargs):
        raise OSError("no connection")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(SystemExit) as e:
        recipes.model_path("org/name", 0, revision="abc123")
    assert "--model_revision abc123" in str(e.value) and "`hf auth login`" in str(e.value) and "\n" not in str(e.value)


def test_a_bare_run_without_hub_access_says_what_to_run_instead(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants
    for module in (huggingface_hub.constants, datasets.config):   # HF_HUB_OFFLINE=1 (both read it at import)
        monkeypatch.setattr(module, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))   # nothing cached
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    monkeypatch.chdir(tmp_path)                                   # the default --out, runs/llama3b-gsm8k-fuzzy-s0
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit) as e:
        train.main([])                                            # the default recipe: Llama-3.2-3B on GSM8K
    message = str(e.value.code)
    assert "\n" not in message and "openai/gsm8k" in message and message.endswith("python train.py --recipe tiny")
    with pytest.raises(SystemExit) as e:                          # the model, had the data been there
        runtime.load_config("softcot-tests/not-on-this-machine")
    message = str(e.value.code)
    assert "\n" not in message and "`hf auth login`" in message and message.endswith("python train.py --recipe tiny")


# ------------------------------------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_saves_last_and_prints_the_resume_command(base, tmp_path):
    out = str(tmp_path / "run")
    metrics = os.path.join(out, "metrics.jsonl")
    cmd = TINY + ["--model", base, "--steps", "100", "--save_every", "100", "--out", out]
    p = subprocess.Popen([sys.executable, "train.py"] + cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    # wait for a training step to be logged (the handler is in place from the loop's start); not a timing
    # assertion: the deadline only keeps a broken run from hanging the suite
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline and not (
            os.path.exists(metrics) and len(open(metrics).readlines()) >= 2):
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    steps = [json.loads(x)["step"] for x in open(metrics)]
    saved = step_of(os.path.join(out, "last"))
    assert saved == steps[-1] and 1 <= saved < 100                      # the step in progress ended and was saved
    resume = stdout.split("continue with:\n")[1].splitlines()[0].strip()
    assert resume.startswith("python train.py ") and resume.endswith(" --resume")
    # the printed command continues the run (here for one more step)
    train.main(shlex.split(resume)[2:] + ["--stop_after", str(saved + 1)])
    assert [json.loads(x)["step"] for x in open(metrics)] == list(range(saved + 2))


def test_second_ctrl_c_quits_at_once():
    stop = runs.catch_stop_signals(1, torch.device("cpu"))
    try:
        assert not stop()
        os.kill(os.getpid(), signal.SIGINT)                             # the first: only a flag
        assert stop()
        with pytest.raises(KeyboardInterrupt):                          # the second: Python's own handler
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)                                               # (the signal lands here at the latest)
    finally:
        runs.restore_signals()
