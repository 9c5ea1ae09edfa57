"""The paper's recipes end to end on CPU: each through train.py with its real tokenizer and a shrunk random-weight copy
of its real architecture (tests/paper_models.py), on local files in the datasets' hub schemas, in every mode; on 2
processes with DDP and with --fsdp; a pause and --resume; then evaluate.py on a checkpoint. What is checked: the
run goes through, its EOS set is the model folder's in every checkpoint (under DDP and FSDP alike), and a resumed
run continues the same schedule."""
import contextlib
import io
import json
import os

import pytest
import torch

import evaluate
import train
from conftest import run_script
from paper_models import MODELS, paper_model_folder

RECIPES = {"llama3b-gsm8k": "llama3b", "llama3b-math": "llama3b", "llama3b-deepscaler": "llama3b",
           "llama8b-gsm8k": "llama8b", "qwen3b-math": "qwen3b"}
# a couple of steps of the smallest batch the recipe's shape allows; the App. B prompt and the lengths are real
SMALL = ["--prompts_per_step", "1", "--samples", "2", "--micro_batch", "2", "--max_cot_tokens", "6",
         "--val_cot_tokens", "6", "--max_answer_tokens", "4", "--val_size", "2", "--val_every", "2", "--steps", "2",
         "--save_every", "2"]
QUESTIONS = [("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How "
              "many clips did Natalia sell altogether in April and May?", "72"),
             ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much "
              "did she earn?", "10"),
             ("What is $\\dfrac{9}{7}$ plus $1$?", "\\frac{16}{7}"),
             ("Compute $1{,}000 - 1$.", "999"),
             ("If $x + 3 = 21$, what is $x$?", "18")]


def hub_rows(dataset):
    """Rows in the hub copy's schema (data.py): GSM8K's `#### gold`, MATH's boxed solution, DeepScaleR's fields."""
    for q, a in QUESTIONS:
        if dataset == "gsm8k":
            yield {"question": q, "answer": f"She computes <<1+1=2>>2.\n#### {a}" if a.isdigit() else None}
        elif dataset == "math":
            yield {"problem": q, "solution": f"So it is $\\boxed{{{a}}}$.", "level": "Level 2", "type": "Algebra"}
        else:
            yield {"problem": q, "answer": a, "solution": f"$\\boxed{{{a}}}$"}


def data_file(tmp_path, dataset):
    path = tmp_path / f"{dataset}.jsonl"
    rows = [r for r in hub_rows(dataset) if r.get("answer", "") is not None]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def eos_of(folder):
    eos = json.load(open(os.path.join(folder, "generation_config.json")))["eos_token_id"]
    return sorted(eos if isinstance(eos, list) else [eos])


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


# every mode on one recipe, every recipe in one mode (each run costs ~10 s of CPU on the real vocabularies); the
# fuzzy runs pause and resume
RUNS = [("llama3b-gsm8k", "hard"), ("llama3b-gsm8k", "soft"), ("llama3b-gsm8k", "fuzzy"), ("llama3b-math", "soft"),
        ("llama3b-deepscaler", "hard"), ("llama8b-gsm8k", "fuzzy"), ("qwen3b-math", "fuzzy")]


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


def test_llama8b_evaluates_after_training(folders, tmp_path, capsys):
    """evaluate.py on a trained checkpoint of the untied 8B shape: each inference setting on a MATH-500-schema file."""
    out = str(tmp_path / "run")
    run_here(["--recipe", "llama8b-gsm8k", "--mode", "fuzzy", "--model", folders["llama8b"], "--data_path",
              data_file(tmp_path, "gsm8k"), "--out", out] + SMALL, capsys)
    test = data_file(tmp_path, "deepscaler")   # MATH-500's schema: problem, answer, solution
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        evaluate.main(["--recipe", "llama8b-gsm8k", "--model", os.path.join(out, "best"), "--dataset", "math500",
                       "--data_path", test, "--samples", "2", "--k", "1", "2", "--batch", "4", "--max_cot_tokens",
                       "6", "--max_answer_tokens", "4", "--out", str(tmp_path / "eval"), "--label", "t"])
    r = json.load(open(tmp_path / "eval" / "results_t.json"))
    assert r["problems"] == len(QUESTIONS) and set(r["checkpoints"][0]["settings"]) == set(evaluate.softcot.SETTINGS)


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_qwen_on_two_processes_keeps_both_eos_ids(sharding, folders, tmp_path):
    """Qwen2.5's config.json names one EOS, its generation_config.json two: under DDP and under --fsdp the run's
    checkpoints keep both (FSDP's from_config models had dropped 151643)."""
    out = str(tmp_path / "run")
    run_script("train.py", ["--recipe", "qwen3b-math", "--mode", "soft", "--model", folders["qwen3b"], "--data_path",
                            data_file(tmp_path, "math"), "--out", out] + SMALL + ["--prompts_per_step", "2"]
               + (["--fsdp"] if sharding == "fsdp" else []), torchrun=True)
    assert eos_of(folders["qwen3b"]) == [151643, 151645]
    for ckpt in ("best", "last"):
        assert eos_of(os.path.join(out, ckpt)) == [151643, 151645]
