"""train.py end to end, as subprocesses with tiny budgets (CleanRL's habit), and its distributed arithmetic."""
import json
import os
import shutil
import statistics
import subprocess

from datetime import datetime
from types import SimpleNamespace

import pytest
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

import checkpoints
import ddp_step
import runs
import runtime
import toy
import train
from conftest import TORCHRUN, crash_report, killed_by_signal, launch, make_model, make_tokenizer, run_script

TINY = ["--recipe", "tiny", "--prompts_per_step", "2", "--samples", "2", "--max_cot_tokens", "16",
        "--val_cot_tokens", "16", "--val_size", "8", "--val_every", "2", "--micro_batch", "2"]


def run(args, torchrun=False):
    return run_script("train.py", args, torchrun)


def run_here(args, capsys):
    """train.main in this process, as a notebook calls it: the code of `python train.py`, without a process's
    ~10 s of imports; its stdout."""
    train.main(args)
    return capsys.readouterr().out


def params(folder):
    return AutoModelForCausalLM.from_pretrained(folder).state_dict()


@pytest.mark.parametrize("mode", ["hard", "soft", "fuzzy"])
def test_smoke_each_mode(base, tmp_path, capsys, mode):
    out = str(tmp_path / mode)
    transformers.utils.logging.enable_progress_bar()              # as in a fresh process: main must turn them off
    train.main(TINY + ["--mode", mode, "--model", base, "--steps", "2", "--out", out])
    stdout, stderr = capsys.readouterr()
    assert "global batch: 2 prompts x 2 samples = 4 sequences" in stdout
    assert f"method: mode {mode}, tau " in stdout and '"recipe": "tiny"' not in stdout   # a line per group, no JSON
    assert "Loading weights" not in stderr and "Writing model shards" not in stderr    # transformers' bars are off
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert [m["step"] for m in lines] == [0, 1, 2] and "val_acc" in lines[-1]
    for key in ("reward", "accuracy", "grad_norm", "zero_adv_frac", "cot_entropy", "noise_ratio", "t_rollout"):
        assert key in lines[1]
    assert (lines[1]["noise_ratio"] > 0) == (mode != "hard")
    for m in lines[1:]:   # throughput: the N = 4 rollouts' CoT and answer tokens per second of the step
        seconds = m["t_rollout"] + m["t_reward"] + m["t_update"]
        assert m["tokens_per_s"] * seconds == pytest.approx(4 * (m["cot_len"] + m["answer_len"]), rel=1e-2)
    times = [m["time"] for m in lines]
    assert 0 < times[0] < times[1] < times[2] and 0 <= lines[1]["reward_std"] <= 50
    cfg = json.load(open(os.path.join(out, "config.json")))
    assert cfg["mode"] == mode and (cfg["sigma"] > 0) == (mode != "hard")
    assert cfg["versions"]["torch"] == torch.__version__ and cfg["device"].startswith("cpu")
    assert datetime.fromisoformat(cfg["started"]).tzinfo is not None
    plan = cfg["memory_plan_gib"]   # the plan the gate admitted the run on, in GiB, beside peak_gib on a GPU
    assert plan["total"] + plan["headroom"] <= plan["device"] and "activations" in plan and "_rollout" not in plan
    assert "peak_gib" not in lines[1]   # CPU: torch keeps no peak count, so none is logged (never a made-up 0)
    assert os.path.isfile(os.path.join(out, "training.png"))
    # train soft, deploy hard: the best checkpoint is a plain Hugging Face folder that generate()s
    model = AutoModelForCausalLM.from_pretrained(os.path.join(out, "best"))
    tok = AutoTokenizer.from_pretrained(os.path.join(out, "best"))
    enc = tok([toy.TOY_PROMPT.format(question="Ann has 3 pens. She got 2 more. How many pens does Ann have?")],
              return_tensors="pt")
    assert model.generate(**enc, max_new_tokens=5, do_sample=False).shape[1] > enc.input_ids.shape[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """tests/ddp_step.py's three 2-rank updates (DDP, FSDP, FSDP untied), in one torchrun launch; what rank 0 saved."""
    out = tmp_path_factory.mktemp("two")
    settings = ["ddp-tied", "fsdp-tied", "fsdp-untied"]
    p = launch(TORCHRUN + ["tests/ddp_step.py", str(out)] + settings, timeout=300)
    assert p.returncode == 0, crash_report(p)
    return {s: torch.load(out / f"{s}.pt") for s in settings}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The one-process reference updates, tied and untied E, computed in this process."""
    return {tied: ddp_step.update(str(tmp_path_factory.mktemp("one")), tied=tied, fsdp=False) for tied in (True, False)}


@pytest.mark.parametrize("setting", ["ddp-tied", "fsdp-tied", "fsdp-untied"])
def test_one_process_update_equals_two_processes(one_process, two_processes, setting):
    """The DDP- or FSDP-averaged update on 2 ranks equals the one-process update on the same global batch (and under
    FSDP the ranks' rollouts of different lengths do not hang: ddp_step.py)."""
    tied = setting.endswith("-tied")
    a, b = one_process[tied], two_processes[setting]
    assert a["_norm"] > 0 and a["_drifted"] == 0 and b["_drifted"] == 0
    init = make_model("llama", make_tokenizer(), tied=tied)
    moved = 0
    for k, v in init.state_dict().items():
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(b["_copy"][k], a[k], atol=1e-6, rtol=1e-5)   # the rollout copy follows
        moved += int(not torch.equal(a[k], v))
    assert moved > 5                                              # the update really changed the weights
    torch.testing.assert_close(b["_norm"], a["_norm"], rtol=1e-4, atol=0)


def test_resume_equals_uninterrupted(base, tmp_path, capsys):
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    common = TINY + ["--mode", "fuzzy", "--model", base, "--steps", "4", "--save_every", "2"]
    run_here(common + ["--out", full], capsys)
    run_here(common + ["--out", part, "--stop_after", "2"], capsys)
    metrics = os.path.join(part, "metrics.jsonl")
    lines = [json.loads(x) for x in open(metrics)]
    assert lines[-1]["step"] == 2
    lines[-1]["time"] += 1000.0                 # as if the first process had run 1000 s longer
    open(metrics, "w").writelines(json.dumps(m) + "\n" for m in lines)
    run_here(["--out", part, "--resume"], capsys)   # the rest of the settings from config.json
    a, b = params(os.path.join(full, "last")), params(os.path.join(part, "last"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0)
    lines = [json.loads(x) for x in open(metrics)]
    assert [m["step"] for m in lines] == [0, 1, 2, 3, 4]
    assert 1000 < lines[2]["time"] < lines[3]["time"] < lines[4]["time"]   # `time` counts on across the resume


def test_fsdp_resume_equals_uninterrupted(base, tmp_path):
    """Under FSDP2 (2 processes, gloo): a run resumed from its step-2 checkpoint ends with the same weights as the
    uninterrupted run (the checkpoint is gathered from the shards into a plain folder, the optimizer state with it,
    and scattered back into the shards on resume), and the checkpoint decodes with from_pretrained + generate.
    The resumed run is a copy of the finished one whose last/ (step 3) is gone, as if the process had been killed
    before writing it: --resume takes last.prev/ (step 2) and redoes step 3. (One launch fewer than a paused run
    would take; pausing itself, --stop_after and signals, is tested on 1 and 2 processes in test_run_folder.py.)"""
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    p = run(TINY + ["--mode", "soft", "--model", base, "--steps", "3", "--save_every", "1", "--val_every", "3",
                    "--fsdp", "--out", full], torchrun=True)
    assert "memory plan per process" in p.stdout and "2 process(es) x 2 sequences" in p.stdout
    shutil.copytree(full, part)
    shutil.rmtree(os.path.join(part, "last"))
    assert checkpoints.load_trainer_state(os.path.join(part, "last.prev"))["step"] == 2
    run(["--out", part, "--resume"], torchrun=True)
    a, b, init = params(os.path.join(full, "last")), params(os.path.join(part, "last")), params(base)
    assert any(not torch.equal(a[k], init[k]) for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=0, rtol=0)
    assert [json.loads(x)["step"] for x in open(os.path.join(part, "metrics.jsonl"))] == [0, 1, 2, 3]
    model = AutoModelForCausalLM.from_pretrained(os.path.join(full, "last"))
    tok = AutoTokenizer.from_pretrained(os.path.join(full, "last"))
    enc = tok(["Ann has 3 pens."], return_tensors="pt")
    assert model.generate(**enc, max_new_tokens=3, do_sample=False).shape[1] == enc.input_ids.shape[1] + 3


def test_a_crashed_worker_is_told_apart_from_a_failure():
    """The test launcher's retry (conftest.launch) fires on a worker killed by a signal, never on an exception, and
    its report shows faulthandler's stacks first. The stderr lines are torchrun's own, from a CI run."""
    crashed = subprocess.CompletedProcess([], 1, "", "Traceback ...\nFatal Python error: Segmentation fault\n\n"
                                          "Thread 0x1 (most recent call first):\n  File \"train.py\", line 9\n" +
                                          "x" * 5000 + "\n  exitcode  : -11 (pid: 19910)  (SIGSEGV)\n")
    failed = subprocess.CompletedProcess([], 1, "", "ValueError: bad\n  exitcode  : 1 (pid: 19910)\n")
    assert killed_by_signal(crashed) and not killed_by_signal(failed)
    assert killed_by_signal(subprocess.CompletedProcess([], -11, "", ""))
    assert crash_report(crashed).startswith("Fatal Python error: Segmentation fault") and "train.py" in \
        crash_report(crashed)[:200]


def test_cpu_runs_use_deterministic_kernels(base, tmp_path, capsys):
    """The re-score's E[ids] backward (index_put with accumulate) adds rows in thread order on CPU, so with 2 threads
    the same step gave another gradient now and then (a run diverged at step 6). train.main turns on torch's
    deterministic kernels on CPU; then a 2-thread backward adds rows in the same order as a 1-thread one, bit for bit,
    every time. (Whether the threads race without the flag depends on what else the cores run, e.g. another pytest
    worker, so the test compares against the 1-thread sum instead of waiting for a race.)"""
    def gradient():
        g = torch.Generator().manual_seed(0)
        E = torch.randn(100, 128, requires_grad=True)
        ids, w = torch.randint(0, 100, (64, 120), generator=g), torch.randn(64, 120, 128, generator=g)
        (E[ids] * w).sum().backward()
        return E.grad.numpy().tobytes()

    threads, was = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(False)
        torch.set_num_threads(1)
        sequential = gradient()
        run_here(TINY + ["--mode", "hard", "--model", base, "--steps", "1", "--out", str(tmp_path / "r")], capsys)
        assert torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(2)
        assert all(gradient() == sequential for _ in range(30))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was)


def test_reward_std_is_over_the_steps_rollouts():
    ro = SimpleNamespace(cot_len=torch.tensor([3, 5, 4, 4]), answer_len=torch.tensor([2, 2, 2, 2]),
                         entropy=torch.ones(4, 6), noise_ratio=torch.zeros(4, 6), stop_reason=["trigger"] * 4)
    sc = SimpleNamespace(correct=[True, False, False, False], boxed=[True] * 4, grader_errors=0)
    r_all = torch.tensor([[100.0, 0.0], [10.0, 10.0]])                           # (B, G) = (2, 2)
    m = train.step_metrics(ro, sc, r_all, 0, 1, torch.device("cpu"))
    assert m["reward"] == 30.0 and m["reward_std"] == pytest.approx(statistics.pstdev([100, 0, 10, 10]))
    assert m["cot_len"] == 4.0 and m["zero_adv_frac"] == 0.5


def test_peak_memory_reads_the_cuda_peak_and_starts_it_again(monkeypatch):
    """`peak_gib`: torch's CUDA high-water mark since the last call, in GiB, then reset (so each step logs its own);
    emulated on CPU by standing in for torch.cuda's two counters."""
    calls = []
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 3 * 2**29 if not calls else 2**30)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: calls.append(d))
    cuda = torch.device("cuda:0")
    assert runtime.peak_memory(cuda, 1) == 1.5 and calls == [cuda]
    assert runtime.peak_memory(cuda, 1) == 1.0 and len(calls) == 2
    assert runtime.peak_memory(torch.device("cpu"), 1) is None and len(calls) == 2


def test_provenance_names_the_commit_and_records_null_outside_a_git_checkout(tmp_path, monkeypatch):
    here = runs.provenance(torch.device("cpu"))
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(runs.__file__), capture_output=True,
                          text=True)
    if head.returncode == 0:                                        # the suite runs in a checkout (CI: a clone)
        assert here["git_commit"] == head.stdout.strip() and isinstance(here["git_dirty"], bool)
    monkeypatch.setattr(runs, "__file__", str(tmp_path / "runs.py"))   # as if unpacked from a tarball
    away = runs.provenance(torch.device("cpu"))
    assert (away["git_commit"], away["git_dirty"]) == (None, None) and away["versions"] == here["versions"]


def test_run_summary_reads_base_best_and_final(tmp_path):
    """The line a run ends with: base (step 0), the first step that reached the best validation (best/ is only
    replaced by a strictly better one), the last validation, from metrics.jsonl; steps and time as passed."""
    rows = [{"step": 0, "val_acc": 0.075}, {"step": 1, "reward": 10.0}, {"step": 25, "val_acc": 0.67},
            {"step": 50, "val_acc": 0.67}, {"step": 75, "val_acc": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    line = runs.run_summary(str(tmp_path), 120.0, 75)
    assert line == ("done: greedy validation 0.075 (base) -> 0.670 (best, step 25) -> 0.500 (final, step 75), "
                    "+0.425 final - base; 75 steps in 120 s (0.62 steps/s)")
