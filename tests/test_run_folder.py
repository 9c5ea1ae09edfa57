"""A run folder belongs to one run and survives its faults (runs.py, docs/training.md's table): a second run into it
is refused, a live run's lock is honoured and a dead one's taken over, a checkpoint carries its run's id and every
file's sha256, NaN weights are never written or resumed from, an interrupted save is finished, a full disk leaves
nothing half-written, a torn log line is dropped, config.json is written once, and SIGTERM (to the process, or to
a torchrun launcher that then dies) saves last/ and exits 143.

In-process where a function is the point (train.main, runs.*); real processes only for signals and torchrun.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

import checkpoints
import runs
import train
from conftest import ENV, ROOT, TORCHRUN

TINY = ["--recipe", "tiny", "--prompts_per_step", "2", "--samples", "2", "--max_cot_tokens", "16",
        "--val_cot_tokens", "16", "--val_size", "4", "--val_every", "2", "--micro_batch", "2"]


@pytest.fixture(autouse=True)
def one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)


@pytest.fixture(scope="module")
def finished(base, tmp_path_factory):
    """A 3-step run paused after step 2, checkpoints every step: last/ = step 2, last.prev/ = step 1."""
    out = str(tmp_path_factory.mktemp("runs") / "run")
    train.main(argv(base, out, "--stop_after", "2"))
    return out


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run that a test may damage."""
    out = str(tmp_path / "run")
    shutil.copytree(finished, out)
    return out


def argv(base, out, *extra):
    return TINY + ["--model", base, "--steps", "3", "--save_every", "1", "--out", out, *extra]


def refused(args, capsys):
    """train.parse_args(args) must exit with code 2; its error line."""
    with pytest.raises(SystemExit) as e:
        train.parse_args(args)
    assert e.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def step_of(folder):
    return torch.load(os.path.join(folder, "trainer_state.pt"), weights_only=False)["step"]


# ------------------------------------------------------------------------------------------------ one run a folder
def test_a_new_run_into_a_finished_runs_folder_is_refused(finished, base, capsys):
    before = {f: open(os.path.join(finished, f), "rb").read() for f in ("config.json", "metrics.jsonl")}
    line = refused(argv(base, finished), capsys)
    assert "holds a run already (config.json, metrics.jsonl" in line and "--resume" in line and "--overwrite" in line
    assert {f: open(os.path.join(finished, f), "rb").read() for f in before} == before
    assert train.parse_args(argv(base, finished, "--overwrite")).overwrite
    assert "pass one of them" in refused(argv(base, finished, "--overwrite", "--resume"), capsys)


def test_overwrite_replaces_the_old_run_and_keeps_other_files(run, base, capsys):
    open(os.path.join(run, "notes.txt"), "w").write("mine")
    old_id = json.load(open(os.path.join(run, "config.json")))["run_id"]
    train.main(argv(base, run, "--overwrite", "--steps", "1"))
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["run_id"] != old_id and config["steps"] == 1 and config["overwrite"]
    assert not os.path.exists(os.path.join(run, "last.prev"))            # the old run's fallback went with it
    assert checkpoints.read_manifest(os.path.join(run, "last"))["run_id"] == config["run_id"]
    assert open(os.path.join(run, "notes.txt")).read() == "mine"


@pytest.mark.parametrize("inside", ["", "sub"])
def test_out_may_not_be_a_model_folder(base, inside, capsys):
    out = os.path.join(base, inside) if inside else base
    line = refused(argv(base, out), capsys)
    assert f"the model folder {os.path.abspath(base)}" in line, line
    assert not os.path.exists(os.path.join(base, "sub"))


def test_parsing_creates_no_folder(base, tmp_path):
    out = str(tmp_path / "a" / "b")
    train.parse_args(argv(base, out))
    assert not os.path.exists(tmp_path / "a")


def test_a_live_runs_lock_refuses_a_second_run_and_a_dead_ones_is_taken_over(tmp_path, base, capsys):
    out = str(tmp_path / "run")
    os.makedirs(out)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = dict(pid=sleeper.pid, host=os.uname().nodename, since="now")
        json.dump(lock, open(os.path.join(out, runs.LOCK), "w"))
        assert f"another run (pid {sleeper.pid}" in refused(argv(base, out), capsys)
        with pytest.raises(SystemExit, match="another run"):                 # two starts at once: one gets it
            runs.claim_run(out)
    finally:
        sleeper.kill()
        sleeper.wait()
    # the process is gone: its lock is stale, the next run takes it over and removes it at exit
    assert runs.lock_problem(out) is None
    runs.claim_run(out)
    assert json.load(open(os.path.join(out, runs.LOCK)))["pid"] == os.getpid()
    runs.release_run(out)
    assert not os.path.exists(os.path.join(out, runs.LOCK))


def test_train_main_releases_its_lock(finished):
    assert not os.path.exists(os.path.join(finished, runs.LOCK))


# ------------------------------------------------------------------------------------------------ resume
def test_resume_refuses_another_runs_checkpoint(run, base, capsys):
    config = json.load(open(os.path.join(run, "config.json")))
    for folder in ("last", "last.prev"):                                   # as if another run had written them
        path = os.path.join(run, folder, checkpoints.MANIFEST)
        json.dump(checkpoints.read_manifest(os.path.join(run, folder)) | dict(run_id="someone-else"), open(path, "w"))
    line = refused(argv(base, run, "--resume"), capsys)
    assert "belongs to another run (run id someone-else" in line and config["run_id"] in line, line


def test_a_flipped_byte_is_named_and_the_previous_checkpoint_used(run, base, capsys):
    weights = os.path.join(run, "last", "model.safetensors")
    with open(weights, "r+b") as f:                                        # inside the data, past the header
        f.seek(os.path.getsize(weights) - 100)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x40]))
    assert checkpoints.checkpoint_problem(os.path.join(run, "last")) is None      # sizes and headers: still fine
    train.main(argv(base, run, "--resume"))
    out = capsys.readouterr().out
    assert f"skipping {run}/last, it cannot be loaded (model.safetensors is not the file the checkpoint was saved with" in out
    assert [json.loads(x)["step"] for x in open(os.path.join(run, "metrics.jsonl"))] == [0, 1, 2, 3]


def test_nan_weights_are_found_on_load_and_never_written(run, base, capsys):
    last = os.path.join(run, "last")
    weights = load_file(os.path.join(last, "model.safetensors"))
    name = sorted(weights)[0]
    weights[name][0] = float("nan")
    save_file(weights, os.path.join(last, "model.safetensors"), metadata={"format": "pt"})
    os.remove(os.path.join(last, checkpoints.MANIFEST))                    # no checksum to catch it: the scan must
    assert checkpoints.content_problem(last) == f"model.safetensors: {name} holds NaN or inf"
    assert checkpoints.checkpoint_problem(last, verify=True).endswith("holds NaN or inf")
    # save_checkpoint refuses NaN weights, so a healthy checkpoint is never rotated away for them
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model, tok = AutoModelForCausalLM.from_pretrained(last), AutoTokenizer.from_pretrained(last)
    before = open(os.path.join(run, "last.prev", "model.safetensors"), "rb").read()
    with pytest.raises(SystemExit, match="not finite"):
        checkpoints.save_checkpoint(os.path.join(run, "last.prev"), model, tok, dict(step=9))
    assert open(os.path.join(run, "last.prev", "model.safetensors"), "rb").read() == before


def test_a_save_interrupted_between_its_renames_is_finished(run):
    best = os.path.join(run, "best")
    os.replace(best, best + ".old")                                        # killed after the first rename
    checkpoints.recover(best)
    assert os.path.isdir(best) and not os.path.exists(best + ".old")
    last = os.path.join(run, "last")                                       # last/ moved to .prev, .tmp complete
    shutil.rmtree(last + ".prev")
    shutil.copytree(last, last + ".tmp")
    os.replace(last, last + ".prev")
    checkpoints.recover(last)
    assert step_of(last) == 2 and not os.path.exists(last + ".tmp")


def test_a_full_disk_leaves_no_partial_folder_and_says_so(run, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    last = os.path.join(run, "last")
    model, tok = AutoModelForCausalLM.from_pretrained(last), AutoTokenizer.from_pretrained(last)

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(SystemExit, match=r"cannot write the checkpoint .*unexpected pos.*GiB free.*--resume"):
        checkpoints.save_checkpoint(last, model, tok, dict(step=3), keep_previous=True)
    assert not os.path.exists(last + ".tmp") and step_of(last) == 2


def test_a_torn_log_line_is_dropped_on_resume(run, capsys):
    metrics = os.path.join(run, "metrics.jsonl")
    with open(metrics, "a") as f:
        f.write('{"step": 3, "rew')                                        # a kill mid-write
    runs.trim_logs(run, 2)
    assert "is not complete JSON (a kill mid-write): dropped" in capsys.readouterr().out
    assert [json.loads(x)["step"] for x in open(metrics)] == [0, 1, 2]


def test_resume_writes_config_once_and_records_what_changed(run, base):
    config = open(os.path.join(run, "config.json"), "rb").read()
    train.main(argv(base, run, "--resume", "--micro_batch", "1"))
    assert open(os.path.join(run, "config.json"), "rb").read() == config
    (line,) = map(json.loads, open(os.path.join(run, "resumes.jsonl")))
    assert line["step"] == 2 and line["changed"] == {"micro_batch": [2, 1], "stop_after": [2, None]}
    runs.record_resume(run, json.load(open(os.path.join(run, "config.json"))), 2, 3)   # another process count
    assert json.loads(open(os.path.join(run, "resumes.jsonl")).readlines()[-1])["changed"]["world_size"] == [1, 2]


def test_resume_on_edited_data_is_refused(run, base):
    path = os.path.join(run, "config.json")
    json.dump(json.load(open(path)) | dict(data_sha256="0" * 16), open(path, "w"))
    with pytest.raises(SystemExit, match="not the ones the run .* started with"):
        train.main(argv(base, run, "--resume"))


# ------------------------------------------------------------------------------------------------ SIGTERM
def wait_for_steps(p, metrics, n):
    """Until metrics.jsonl has n lines; the deadline only keeps a broken run from hanging the suite."""
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline and not (
            os.path.exists(metrics) and len(open(metrics).readlines()) >= n):
        time.sleep(0.2)


def test_sigterm_saves_last_and_exits_143(base, tmp_path):
    out = str(tmp_path / "run")
    p = subprocess.Popen([sys.executable, "train.py"] + argv(base, out, "--steps", "100", "--save_every", "100"),
                         cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_steps(p, os.path.join(out, "metrics.jsonl"), 2)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 143 and "Traceback" not in stderr, stderr[-3000:]
    steps = [json.loads(x)["step"] for x in open(os.path.join(out, "metrics.jsonl"))]
    assert step_of(os.path.join(out, "last")) == steps[-1] and 1 <= steps[-1] < 100
    assert "stopped by SIGTERM" in stdout and not os.path.exists(os.path.join(out, runs.LOCK))


def test_workers_of_a_killed_torchrun_save_and_stop(base, tmp_path):
    """SIGKILL to the launcher: its workers get SIGTERM (PR_SET_PDEATHSIG), finish the step together, save last/
    and exit, instead of training on as orphans into the folder."""
    out = str(tmp_path / "run")
    log = open(tmp_path / "log", "w")   # a file, not a pipe: nobody reads a pipe after the launcher is killed
    p = subprocess.Popen(TORCHRUN + ["train.py"] + argv(base, out, "--steps", "100", "--save_every", "100"),
                         cwd=ROOT, env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)
    metrics = os.path.join(out, "metrics.jsonl")
    wait_for_steps(p, metrics, 2)
    p.kill()
    p.wait()
    lock = os.path.join(out, runs.LOCK)
    deadline = time.monotonic() + 120
    while os.path.exists(lock) and time.monotonic() < deadline:            # rank 0 removes it as it exits
        time.sleep(0.2)
    assert not os.path.exists(lock), "the workers are still running:\n" + open(tmp_path / "log").read()[-3000:]
    steps = [json.loads(x)["step"] for x in open(metrics)]
    assert step_of(os.path.join(out, "last")) == steps[-1] >= 1
