"""
toy.py: the offline toy world. A synthetic GSM8K-like task, a character tokenizer, a tiny Llama, and the short
supervised run that makes its base model.

Paper: none of the paper's experiments; it runs the paper's code path (Sec. 4, App. B-C) where Llama-3 and GPUs
cannot go. The task comes in GSM8K's hub schema ({"question", "answer": "...\\n#### N"}), the tokenizer is a
`PreTrainedTokenizerFast`, the model a `LlamaForCausalLM`, the base model a plain Hugging Face folder, and the
answer format is the paper's (the CoT ends with the trigger `The final answer is:`, then ` \\boxed{N}`). So
data.py, softcot.py, rewards.py and train.py run exactly the code they run for Llama-3 on GSM8K. Only the prompt
is shorter (TOY_PROMPT, not App. B: every character is a token, and sequence length is what CPU time pays for).

    python toy.py --world toy-slips   # a shipped base model's greedy accuracies and sample diversity
    python toy.py --from_scratch      # make the base model here (cached) by its supervised run
    path = toy.base_model(seed=0, **toy.WORLDS["toy-slips"])   # a Hugging Face folder (models/toy-slips-s0)
    splits = toy.toy_splits(seed=0)   # {"train", "val", "test", "test_mul", "test_expr"}: lists of rows

The task. "Ann had 7 pens, got 3, lost 2. How many now?" -> " 7+3=10. 10-2=8. The final answer is: \\boxed{8}":
1-3 steps of +/- on numbers 1-10 (never below zero). Two held-out skills are in the supervised data (10% each)
but never in RL, for the out-of-domain check (Table 2 in spirit): `mul` ("Ann had 3 bags of 4 pens, lost 2.
How many now?") and `expr` ("What is 7+3-2?"). A hash of the question's text decides its split (80% supervised,
10% RL train, 5% val, 5% test), so splits are disjoint whatever the seeds and sizes.

The base model: a 1.06 M-parameter Llama (MODEL: d 128, 4 layers, tied embeddings, 100 characters), trained on
the worked answers (loss on the completion only). Three worlds (WORLDS, train.py's --model): `toy`, sharp (its CoT
is nearly deterministic); `toy-calibrated`, each step written in one of three phrasings (the CoT has choices);
`toy-slips`, the tiny recipe's, whose answers often box the object with the number (`\\boxed{8 pens}`, which
the grader marks wrong): the habit RL visibly fixes first. Shipped base models (models/, pinned by sha256 in
tests/test_toy.py) are what base_model returns for the default settings; docs/toy_worlds.md has each world's
accuracies, how and where the shipped models were made, and why a model made on another CPU differs.
"""

import argparse
import json
import math
import os
import random
import re
import time
import zlib

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import rewards
import runs

TOY_PROMPT = "Q: {question}\nA:"             # the short prompt; the completion starts with a space
TRIGGER = "The final answer is:"              # App. C stop string, as in softcot.py
SKILLS = ("addsub", "mul", "expr")
IN_DOMAIN = "addsub"                          # the RL task
HELD_OUT = ("mul", "expr")                    # supervised only: the out-of-domain check
SPLITS = ("sft", "train", "val", "test")

# The supervised run that makes the base model (its timings: docs/toy_worlds.md).
STEPS, BATCH, LR, WARMUP, HELD_OUT_FRAC = 650, 16, 2e-3, 50, 0.1
MODEL = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=4, max_position_embeddings=512, tie_word_embeddings=True)

# The canonical base models ship with the repository: models/toy-base-s0 and -s1 (the seeds the README uses),
# made once by base_model's supervised run with the default settings and 1 torch thread (their toy.json says
# where and when). base_model returns them for the default settings, so `python toy.py` prints the same
# accuracies on every CPU; SHIPPED_VAL_ACCURACY is what it prints for val (greedy, 200 problems), pinned by
# tests/test_toy.py together with each model.safetensors' sha256.
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "models")
SHIPPED_VAL_ACCURACY = {0: 0.38, 1: 0.42}
# The toy worlds, by the name train.py's --model takes: base_model's settings for each. "toy" is the sharp
# default (shipped for seeds 0 and 1): its CoT is nearly deterministic, 0.13 nats per step. "toy-calibrated"
# writes each supervised step in one of three equally valid phrasings, so its CoT has real choices: twice the
# entropy, a third fewer near-one-hot steps (shipped for seed 0; docs/toy_study.md measures both against
# SmolLM2-135M-Instruct and compares the three training modes on it).
BASE_NAME = "toy-base"   # the sharp world's folder name: models/toy-base-s<seed>, <cache>/toy-base-s<seed>-<hash>
WORLDS = {"toy": dict(name=BASE_NAME), "toy-calibrated": dict(name="toy-calibrated", phrasings=3),
          "toy-slips": dict(name="toy-slips", units=0.8, steps=800)}
FROM_SCRATCH_NOTE = (
    "  note: a model made here is not the shipped one on another CPU. The supervised run amplifies the last\n"
    "  bits of the float sums (their order depends on the CPU's vector width, the math library and the torch\n"
    "  thread count) into different weights, so its accuracies and every RL number built on it differ from\n"
    "  the README's. It repeats bit for bit on this machine with the same thread count.")

# ------------------------------------------------------------------------------------------------- the task

NAMES = ("Ann", "Tom", "Mia", "Ben", "Zoe", "Sam", "Eva", "Max", "Kim", "Leo")
OBJECTS = ("pens", "eggs", "cards", "coins", "books", "apples", "shells", "stamps")
# The objects whose answers the slips world's supervised data writes with units (`units` knob): a habit tied to
# the problem, so the base model slips on some problems and not on others. Math-Verify grades `\boxed{8 pens}`
# wrong for these six (it drops "coins" and "apples" as units, so those would be no slip).
UNIT_OBJECTS = ("pens", "eggs", "cards", "books", "shells", "stamps")
GAIN = ("got", "won", "found", "bought")
LOSS = ("lost", "sold", "gave away", "used")
MAX_N = 10          # operands are 1..MAX_N
OPS = (1, 2, 3)     # number of +/- steps in an addsub / expr problem


def _split_of(question):
    """The split a question belongs to, from a stable hash of its text (crc32, not Python's salted hash)."""
    b = zlib.crc32(question.encode()) % 20
    return "val" if b == 0 else "test" if b == 1 else "train" if b < 4 else "sft"


def _chain(rng, value, n_ops):
    """n_ops random +/- steps starting from `value`, never below zero: [(op, operand, result), ...]."""
    steps = []
    for _ in range(n_ops):
        if value > 0 and rng.random() < 0.5:
            b = rng.randint(1, min(MAX_N, value))
            value -= b
            steps.append(("-", b, value))
        else:
            b = rng.randint(1, MAX_N)
            value += b
            steps.append(("+", b, value))
    return steps


def _worked(start, steps):
    """GSM8K's answer field: one `a+b=c.` line per step, then `#### N`."""
    lines, x = [], start
    for op, b, r in steps:
        lines.append(f"{x}{op}{b}={r}.")
        x = r
    return "\n".join(lines) + f"\n#### {x}"


def _verbs(rng, steps):
    return ", ".join(f"{rng.choice(GAIN if op == '+' else LOSS)} {b}" for op, b, _ in steps)


def _addsub(rng):
    a = rng.randint(1, MAX_N)
    steps = _chain(rng, a, rng.choice(OPS))
    q = f"{rng.choice(NAMES)} had {a} {rng.choice(OBJECTS)}, {_verbs(rng, steps)}. How many now?"
    return q, _worked(a, steps)


def _mul(rng):
    a, b = rng.randint(2, 5), rng.randint(2, 5)    # small products: the +/- step after stays in known range
    steps = [("*", b, a * b)] + _chain(rng, a * b, 1)
    q = f"{rng.choice(NAMES)} had {a} bags of {b} {rng.choice(OBJECTS)}, {_verbs(rng, steps[1:])}. How many now?"
    return q, _worked(a, steps)


def _expr(rng):
    a = rng.randint(1, MAX_N)
    steps = _chain(rng, a, rng.choice(OPS))
    return f"What is {a}" + "".join(f"{op}{b}" for op, b, _ in steps) + "?", _worked(a, steps)


_MAKERS = {"addsub": _addsub, "mul": _mul, "expr": _expr}
STEP = re.compile(r"(\d+)([-+*])(\d+)=(\d+)\.")    # one line of _worked
PHRASINGS = ("{a}{op}{b}={r}.", "{a} {op} {b} = {r}.", "{a} {word} {b} is {r}.")   # equally valid ways to write a step
WORDS = {"+": "plus", "-": "minus", "*": "times"}


def make_rows(n, seed, skill=IN_DOMAIN, split="train"):
    """n distinct problems of `skill` from `split`, as GSM8K rows {"question", "answer"}; same seed, same rows."""
    if skill not in _MAKERS:
        raise ValueError(f"unknown skill {skill!r}; valid skills: {', '.join(SKILLS)}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    rng = random.Random(f"{skill}/{split}/{seed}")     # str seeds are hashed with sha512: stable across runs
    rows, seen, draws = [], set(), 0
    while len(rows) < n:               # draws are rejected for the wrong split (~20x for val) or a repeat
        draws += 1
        if draws > 1000 * (n + 1):
            raise ValueError(f"could not draw {n} distinct {skill!r} problems from split {split!r}")
        q, a = _MAKERS[skill](rng)
        if q not in seen and _split_of(q) == split:
            seen.add(q)
            rows.append({"question": q, "answer": a})
    return rows


def toy_splits(seed=0, n_train=4000, n_val=200, n_test=200):
    """What a training / evaluation script needs: RL train and val rows, in-domain test rows, and test rows of
    each held-out skill ("test_mul", "test_expr"). Disjoint from each other and from the supervised data."""
    out = {"train": make_rows(n_train, seed, split="train"), "val": make_rows(n_val, seed, split="val"),
           "test": make_rows(n_test, seed, split="test")}
    out.update({f"test_{s}": make_rows(n_test, seed, s, "test") for s in HELD_OUT})
    return out


def gold(row):
    """The number after `####`, as a string: the GSM8K rule (rewards.gsm8k_gold), which data.py's loader shares."""
    return rewards.gsm8k_gold(row["answer"])


def _object(question):
    """The counted object of a word problem ("Ann had 7 pens, ..." -> "pens"), or None (a bare expression)."""
    found = [w for w in OBJECTS if f" {w}," in question or f" {w}." in question]
    return found[0] if found else None


def cot_target(row, rng=None, phrasings=1, label_noise=0.0, units=0.0, shortcut=0.0):
    """The supervised completion after TOY_PROMPT: the worked steps on one line, the trigger, ` \\boxed{N}`.
    (The supervised run appends EOS.) The rollout's prefill after the trigger is ` \\boxed{`, the same text.

    With an `rng`, the two knobs of a less confident base model (WORLDS) apply: each step is written in one of
    the first `phrasings` of PHRASINGS, drawn uniformly, and with probability `label_noise` its result is off by
    1 or 2; later steps then start from the written number and the boxed answer is the chain's written end, so
    the answer still copies the CoT (the answer slot stays a copy; the CoT's arithmetic is what is unsure).
    The two knobs of a world with slips that RL can fix (WORLDS["toy-slips"]): with probability `units`, a problem
    about one of UNIT_OBJECTS gets its object in the box (`\\boxed{8 pens}`: Math-Verify grades it wrong, reward
    10, except 0), so the base model keeps the habit for some problems and not others, a format slip that the
    answer term of Eq. 13 can fix in every mode (the answer is hard tokens in all three); with probability
    `shortcut` the worked steps are left out (` The final answer is: \\boxed{8}`): a guess without a chain of
    thought, a strategy choice at the CoT's second token. The two pairs of knobs are not combined (base_model).
    Without an rng: the canonical completion (`7+3=10.` steps, no noise), as the out-of-domain NLL scores it.
    """
    lines = row["answer"].split("\n####")[0].split("\n")
    if rng is None:
        return " " + " ".join(lines) + f" {TRIGGER} \\boxed{{{gold(row)}}}"
    if units or shortcut:
        obj = _object(row["question"])
        box = gold(row) + (f" {obj}" if obj in UNIT_OBJECTS and rng.random() < units else "")
        steps = "" if rng.random() < shortcut else " " + " ".join(lines)
        return f"{steps} {TRIGGER} \\boxed{{{box}}}"
    steps = [STEP.fullmatch(line).groups() for line in lines]
    x, out, offset = int(steps[0][0]), [], 0      # offset: the written value minus the true one so far
    for i, (_, op, b, true) in enumerate(steps):
        if rng.random() < label_noise:   # a near miss; this and every later written value stay >= 0
            low = -min(int(s[3]) for s in steps[i:])
            offset += rng.choice([d for d in (-2, -1, 1, 2) if offset + d >= low])
        r = int(true) + offset           # (the only `*` step is the first, so an offset carries through +/-)
        out.append(rng.choice(PHRASINGS[:phrasings]).format(a=x, op=op, word=WORDS[op], b=b, r=r))
        x = r
    return " " + " ".join(out) + f" {TRIGGER} \\boxed{{{x}}}"


# -------------------------------------------------------------------------------------- tokenizer and model

def make_tokenizer():
    """One token per character: the 95 printable ASCII characters and newline, plus <pad> <bos> <eos> <unk>.

    A WordLevel model over single characters (the Split pre-tokenizer isolates every character, spaces included)
    and a Fuse decoder that joins tokens with nothing between them, so decode(encode(s)) == s for any ASCII s.
    Encoding with special tokens prepends <bos> (as Llama-3's tokenizer does); pads go left by default.
    """
    vocab = {t: i for i, t in enumerate(["<pad>", "<bos>", "<eos>", "<unk>", "\n"] + [chr(c) for c in range(32, 127)])}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    t.decoder = decoders.Fuse()
    t.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                     special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", padding_side="left", clean_up_tokenization_spaces=False)


def make_model(tokenizer, seed=0):
    """A freshly initialised tiny LlamaForCausalLM (MODEL's shape, ~1.06 M parameters) for `tokenizer`."""
    ids = dict(pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), **MODEL, **ids))
    for k, v in ids.items():           # model.generate reads these from the generation config
        setattr(model.generation_config, k, v)
    return model


# ---------------------------------------------------------------------------------------- the supervised run

def _batches(tok, rows, batch_size, seed, phrasings=1, label_noise=0.0, units=0.0, shortcut=0.0):
    """Right-padded (input_ids, labels) pairs, (batch_size, L) each; labels are -100 on prompt and padding.

    Sequence: <bos> prompt completion <eos>, the prompt tokenised exactly as the rollout does; the completion is
    cot_target's, phrased and noised by its own rng when the knobs are on (each row is seen once). Rows are grouped
    by length within windows of 16 batches (16% fewer tokens than random batches), then the batches shuffled.
    """
    prompts = tok([TOY_PROMPT.format(question=r["question"]) for r in rows]).input_ids
    knobs = phrasings > 1 or label_noise > 0 or units > 0 or shortcut > 0
    rng = random.Random(f"targets/{seed}") if knobs else None
    completions = tok([cot_target(r, rng, phrasings, label_noise, units, shortcut) for r in rows], add_special_tokens=False).input_ids
    seqs = [(p + c + [tok.eos_token_id], len(p)) for p, c in zip(prompts, completions)]
    rng, window, groups = random.Random(seed), 16 * batch_size, []
    for w in range(0, len(seqs), window):
        chunk = sorted(seqs[w:w + window], key=lambda s: len(s[0]))
        groups += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    rng.shuffle(groups)
    for group in groups:
        L = max(len(s) for s, _ in group)
        ids = torch.full((len(group), L), tok.pad_token_id)
        labels = torch.full((len(group), L), -100)
        for i, (s, n_prompt) in enumerate(group):
            ids[i, :len(s)] = torch.tensor(s)
            labels[i, n_prompt:len(s)] = ids[i, n_prompt:len(s)]
        yield ids, labels


def train_sft(seed=0, steps=STEPS, batch_size=BATCH, lr=LR, warmup=WARMUP, held_out_frac=HELD_OUT_FRAC,
              phrasings=1, label_noise=0.0, units=0.0, shortcut=0.0, log_every=50):
    """Train the base model from scratch; returns (model, tokenizer). Deterministic for a seed and thread count."""
    tok = make_tokenizer()
    model = make_model(tok, seed)
    n = steps * batch_size
    n_held = round(held_out_frac * n)
    rows = make_rows(n - n_held * len(HELD_OUT), seed, IN_DOMAIN, "sft")
    for skill in HELD_OUT:
        rows += make_rows(n_held, seed, skill, "sft")
    random.Random(seed).shuffle(rows)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(   # linear warm-up, then cosine from lr down to lr / 10
        opt, lambda s: min(1.0, (s + 1) / warmup) * (0.55 + 0.45 * math.cos(math.pi * s / steps)))
    model.train()
    t0 = time.time()
    for step, (ids, labels) in enumerate(_batches(tok, rows, batch_size, seed, phrasings, label_noise, units, shortcut), 1):
        # No attention mask: padding is on the right, so the causal mask already keeps it out of every real
        # position, and SDPA takes its fast causal path. Loss: mean over completion tokens (HF shifts labels).
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % log_every == 0 or step in (1, steps):
            print(f"  step {step}/{steps}  loss {loss.item():.4f}  {time.time() - t0:.0f}s", flush=True)
    return model.eval(), tok


def base_model(seed=0, cache_dir=None, *, name=BASE_NAME, steps=STEPS, batch_size=BATCH, lr=LR, warmup=WARMUP,
               held_out_frac=HELD_OUT_FRAC, phrasings=1, label_noise=0.0, units=0.0, shortcut=0.0,
               from_scratch=False):
    """Path of the toy base model: a plain Hugging Face folder (safetensors, config, tokenizer).

    With the settings of a shipped model (the default settings: models/toy-base-s0, -s1; WORLDS["toy-calibrated"]:
    models/toy-calibrated-s0) this is that model, so every machine starts from the same weights. Otherwise, or
    with from_scratch=True, the model is made here by the supervised run, once: the folder is
    `<cache_dir>/<name>-s<seed>-<hash>`, where cache_dir defaults to $SOFTCOT_CACHE, else ~/.cache/softcot, and
    the hash covers the settings, the model shape, the vocabulary, the prompt and sample problems: changing any
    of them makes a new model, never a stale one (and never the shipped one). The model is written to a
    temporary folder and renamed into place, so a killed run leaves nothing half written. A made model repeats
    bit for bit on one machine with one thread count, but not across CPUs (see FROM_SCRATCH_NOTE).
    """
    if not 0 <= held_out_frac <= 1 / len(HELD_OUT):
        raise ValueError(f"held_out_frac is the share of each held-out skill: 0 to {1 / len(HELD_OUT)}")
    if phrasings not in range(1, len(PHRASINGS) + 1) or not all(0 <= q <= 1 for q in (label_noise, units, shortcut)):
        raise ValueError(f"phrasings is 1 to {len(PHRASINGS)}, and label_noise, units and shortcut are probabilities "
                         f"(got {phrasings}, {label_noise}, {units}, {shortcut})")
    if (units or shortcut) and (phrasings > 1 or label_noise):
        raise ValueError("units / shortcut (the slips world) and phrasings / label_noise (the calibrated world) "
                         "are separate worlds: set one pair")
    settings = dict(seed=seed, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                    held_out_frac=held_out_frac, model=MODEL, prompt=TOY_PROMPT,
                    vocab=sorted(make_tokenizer().get_vocab().items(), key=lambda kv: kv[1]),
                    sample=[make_rows(2, 0, s, "sft") for s in SKILLS])
    if phrasings > 1 or label_noise > 0:   # only when on: the default settings keep the shipped models' hash
        settings.update(phrasings=phrasings, phrasings_text=PHRASINGS[:phrasings], label_noise=label_noise)
    if units > 0 or shortcut > 0:             # likewise: the earlier worlds keep their hashes
        settings.update(units=units, unit_objects=UNIT_OBJECTS, shortcut=shortcut)
    path = runs.cache_path(f"{name}-s{seed}", settings, cache_dir)
    shipped = shipped_model(f"{name}-s{seed}", os.path.basename(path))
    if shipped and not from_scratch:
        return shipped
    if runs.reuse_cached(path, "toy base model"):
        return path
    print(f"making the toy base model ({steps} supervised steps of {batch_size}, "
          f"{torch.get_num_threads()} threads) -> {path}\n{FROM_SCRATCH_NOTE}"
          + (f"\n  (the shipped model for these settings is {shipped})" if shipped else ""), flush=True)
    t0 = time.time()
    model, tok = train_sft(seed, steps, batch_size, lr, warmup, held_out_frac, phrasings, label_noise, units,
                           shortcut)
    settings.update(train_seconds=round(time.time() - t0, 1), threads=torch.get_num_threads())
    runs.save_atomically(path, model, tok, "toy.json",    # how this model was made, for readers
                    {k: v for k, v in settings.items() if k not in ("vocab", "sample")})
    print(f"toy base model ready in {time.time() - t0:.0f}s", flush=True)
    return path


def shipped_world(world, seed):
    """Whether the repository ships world's (a name in WORLDS) base model for this seed, so nothing is made."""
    return os.path.isdir(os.path.join(SHIPPED_DIR, f"{WORLDS[world]['name']}-s{seed}"))


def shipped_model(folder_name, cache_name):
    """The shipped folder models/<folder_name> if it was made with exactly the settings that name the cache
    folder `cache_name` (its toy.json records that name), else None: after any change to the settings, the
    model shape, the vocabulary, the prompt or the problems, the shipped weights no longer apply."""
    folder = os.path.join(SHIPPED_DIR, folder_name)
    try:
        with open(os.path.join(folder, "toy.json")) as f:
            notes = json.load(f)
    except FileNotFoundError:
        return None
    return folder if notes.get("cache_name") == cache_name else None


# ------------------------------------------------------------------------ sanity prints (not the evaluation)

@torch.no_grad()
def _answers(model, tok, rows, num_samples=1, do_sample=False, max_new_tokens=96, batch_size=256):
    """The last \\boxed{...} of each generated completion (None if there is none): one list per row.
    model.generate with left padding; sampling is at temperature 1 over the full vocabulary."""
    kw = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if do_sample else dict(do_sample=False)
    out = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        enc = tok([TOY_PROMPT.format(question=r["question"]) for r in chunk], return_tensors="pt",
                  padding=True, padding_side="left")
        gen = model.generate(**enc, max_new_tokens=max_new_tokens, num_return_sequences=num_samples, **kw)
        texts = tok.batch_decode(gen[:, enc.input_ids.shape[1]:], skip_special_tokens=True)   # (len * k) texts
        found = [rewards.extract_boxed(t) for t in texts]
        out += [found[j * num_samples:(j + 1) * num_samples] for j in range(len(chunk))]
    return out


def accuracy(answers, rows):
    """Fraction of rows whose first answer (of _answers' list per row) equals the gold number."""
    return sum(a[0] == gold(r) for a, r in zip(answers, rows)) / len(rows)


def greedy_accuracy(model, tok, rows):
    """Fraction of rows whose greedy completion's \\boxed{} equals the gold number."""
    return accuracy(_answers(model, tok, rows), rows)


def sample_stats(model, tok, rows, num_samples=8, seed=0):
    """Temperature-1 samples: accuracy over all samples, and the mean number of distinct answers per problem."""
    with torch.random.fork_rng():      # reproducible, and leaves the caller's RNG alone
        torch.manual_seed(seed)
        ans = _answers(model, tok, rows, num_samples, do_sample=True)
    return {"sample_accuracy": sum(x == gold(r) for a, r in zip(ans, rows) for x in a) / (len(rows) * num_samples),
            "distinct_answers": sum(len(set(a)) for a in ans) / len(rows)}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Print the toy base model's accuracies: the shipped one (seeds 0 and 1), "
                                 "or one made here (--from_scratch, or a seed with no shipped model).")
    ap.add_argument("--seed", type=int, default=0, help="seed of the supervised run and of the problems")
    ap.add_argument("--world", default="toy", choices=sorted(WORLDS), help="the toy world (WORLDS): toy (sharp, "
                    "the default), toy-calibrated, or toy-slips (the tiny recipe's)")
    ap.add_argument("--from_scratch", action="store_true",
                    help="make the model here by the supervised run (cached) instead of loading the shipped one")
    ap.add_argument("--cache_dir", help="parent folder of a model made here (default: $SOFTCOT_CACHE or "
                    "~/.cache/softcot)")
    args = ap.parse_args()
    t0 = time.time()
    path = base_model(args.seed, args.cache_dir, from_scratch=args.from_scratch, **WORLDS[args.world])
    print(f"base model: {path} ({time.time() - t0:.0f}s)")
    if not path.startswith(SHIPPED_DIR):
        print(f"made here, not shipped: use it with train.py / evaluate.py --model {path}")
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    splits = toy_splits(args.seed)
    for name in ["val", "test"] + [f"test_{s}" for s in HELD_OUT]:
        print(f"greedy accuracy {name:10s} {greedy_accuracy(model, tok, splits[name]):.3f}")
    stats = sample_stats(model, tok, splits["val"][:100])
    print(f"8 samples at temperature 1 on 100 val problems: accuracy {stats['sample_accuracy']:.3f}, "
          f"{stats['distinct_answers']:.2f} distinct answers per problem")
