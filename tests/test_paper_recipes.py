"""The paper's recipes end to end on CPU: each through train.py with its real tokenizer and a shrunk random-weight copy
of its real architecture (tests/paper_models.py), on local files in the datasets' hub schemas: every recipe on 1
process, every mode on Llama-3.2-3B, a pause and --resume (scripts/gpu_check.py's section 4), Qwen2.5 on 2
processes under --fsdp (one run of scripts/paper_recipes.py, which runs them all), evaluate.py on the 8B shape's
checkpoint. What is checked: the run goes through, its EOS set is the model folder's in every checkpoint, and a
resumed run continues the same schedule."""
import contextlib
import importlib.util
import io
import json
import os

import pytest
import torch

import evaluate
import train
from conftest import ROOT, launch
from paper_models import MODELS, QUESTIONS, RECIPES, SMALL, data_file, eos_of, paper_model_folder

@pytest.fixture(scope="module")
def folders():
    return {name: paper_model_folder(name) for name in MODELS}


@pytest.fixture(autouse=True)
def nondeterministic_after():
    yield
    torch.use_deterministic_algorithms(False)   # train.main turns it on for CPU runs; the other tests' default


def run_here(argv, capsys):
    train.main(argv)
    return capsys.readouterr().out


# every recipe in one mode, every mode on Llama-3.2-3B (each run costs ~10 s of CPU on the real vocabularies); the
# fuzzy run pauses and resumes. Below: llama3b-gsm8k fuzzy (a pause, --resume) is scripts/gpu_check.py's section 4,
# llama8b-gsm8k fuzzy is trained and then evaluated. (llama3b-gsm8k hard would add nothing: its model and mode are
# deepscaler's, its dataset gpu_check's.)
RUNS = [("llama3b-math", "soft"), ("llama3b-deepscaler", "hard"), ("qwen3b-math", "fuzzy")]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("recipe, mode", RUNS)
def test_each_recipe_trains(recipe, mode, folders, tmp_path, capsys):
    model = folders[RECIPES[recipe]]
    dataset = train.recipes.RECIPES[recipe]["dataset"]
    out = str(tmp_path / "run")
    argv = ["--recipe", recipe, "--mode", mode, "--model", model, "--data_path", data_file(tmp_path, dataset),
            "--out", out] + SMALL
    if mode == "fuzzy":   # a pause after step 1, then --resume: the same two steps as one run
        stdout = run_here(argv + ["--stop_after", "1"], capsys)
        assert "paused after step 1" in stdout
        argv = argv + ["--resume"]
    stdout = run_here(argv, capsys)
    print(f"{recipe} {mode}: " + next(l for l in stdout.splitlines() if l.startswith("memory plan")))
    lines = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    assert [m["step"] for m in lines] == [0, 1, 2] and all(m["skipped"] == 0 for m in lines[1:])
    print(f"  s/step {sum(m['t_rollout'] + m['t_update'] for m in lines[1:]) / 2:.2f}, rescore_mismatch "
          f"{[m['rescore_mismatch'] for m in lines[1:]]}, EOS {eos_of(os.path.join(out, 'last'))}")
    for ckpt in ("best", "last"):
        assert eos_of(os.path.join(out, ckpt)) == eos_of(model)


def test_gpu_checks_recipe_section_runs_on_cpu(folders, tmp_path, capsys, monkeypatch):
    """scripts/gpu_check.py's section 4 (llama3b-gsm8k fuzzy: a step, a pause, --resume), on CPU with the shrunk
    Llama-3.2-3B and a small batch: its code runs and its checks pass (peak memory: none off CUDA). Its train.py
    commands run in this process, to save two interpreter starts; its --fsdp step is left out here (FSDP on the
    Llama architecture: the 8B test below)."""
    gpu_check = load_script("gpu_check")
    commands = []

    def run_in_process(cmd):
        assert cmd[1] == "train.py", cmd
        commands.append(cmd[2:])
        train.main(cmd[2:])

    monkeypatch.setattr(gpu_check, "run", run_in_process)
    gpu_check.paper_recipe(folders["llama3b"], str(tmp_path), extra=SMALL, fsdp=False)
    out = capsys.readouterr().out
    assert len(commands) == 2 and commands[1] == ["--out", str(tmp_path / "llama3b"), "--resume"]
    assert "paused after step 1" in out
    assert "1 process (bf16 autocast on a GPU), a pause and --resume: rescore_mismatch per step [0, 0]" in out
    assert "measured peak none (not CUDA)" in out and "EOS [128001, 128008, 128009]" in out


def test_qwen_on_two_processes_with_fsdp_keeps_both_eos_ids(folders, tmp_path):
    """Qwen2.5's config.json names one EOS, its generation_config.json two: under --fsdp on 2 processes the run's
    checkpoints keep both (FSDP's from_config models had dropped 151643). DDP builds no model of its own, so its
    checkpoints are the 1-process runs' (above). This is one run of scripts/paper_recipes.py, which runs every
    recipe under DDP and FSDP (docs/training.md has its table)."""
    row = load_script("paper_recipes").one_run("qwen3b-math", True, 2, str(tmp_path), launch=launch)
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:2] == ["qwen3b-math soft", "FSDP"], row
    assert cells[4:8] == ["[0, 0]", "0", "[151643, 151645]", "ok"], row


def test_llama8b_trains_then_evaluates(folders, tmp_path, capsys):
    """Llama-3.1-8B's untied shape (E and head apart) in fuzzy mode, then evaluate.py on its best/ checkpoint in
    every inference setting, on a file in MATH-500's schema. (Untied under FSDP on 2 processes: test_train.py's
    update-equality test, on the toy.)"""
    out = str(tmp_path / "run")
    stdout = run_here(["--recipe", "llama8b-gsm8k", "--mode", "fuzzy", "--model", folders["llama8b"], "--data_path",
                       data_file(tmp_path, "gsm8k"), "--out", out] + SMALL, capsys)
    print("llama8b-gsm8k fuzzy: " + next(l for l in stdout.splitlines() if l.startswith("memory plan")))
    for ckpt in ("best", "last"):
        assert eos_of(os.path.join(out, ckpt)) == eos_of(folders["llama8b"]) == [128001, 128008, 128009]
    test = data_file(tmp_path, "deepscaler")   # MATH-500's schema: problem, answer, solution
    with contextlib.redirect_stdout(io.StringIO()):
        evaluate.main(["--recipe", "llama8b-gsm8k", "--model", os.path.join(out, "best"), "--dataset", "math500",
                       "--data_path", test, "--samples", "2", "--k", "1", "2", "--batch", "4", "--max_cot_tokens",
                       "6", "--max_answer_tokens", "4", "--out", str(tmp_path / "eval"), "--label", "t"])
    r = json.load(open(tmp_path / "eval" / "results_t.json"))
    assert r["problems"] == len(QUESTIONS) and set(r["checkpoints"][0]["settings"]) == set(evaluate.softcot.SETTINGS)
