"""
evaluate.py: pass@k in the paper's six inference settings, out-of-domain accuracy and NLL, CoT entropy,
tables and plots, for any checkpoint, on one process or many.

Paper: Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170), Sec. 4, Tables 2-5, Fig. 2-4:
- Tables 3-5 (Table 1 is their hard columns): every checkpoint in the six settings of softcot.SETTINGS, hard /
  fuzzy / soft CoT x greedy / sample, answers always greedy. Greedy pass@1, sample pass@1 and sample pass@n
  from n = 32 samples per problem, with the unbiased pass@k estimator (`pass_at_k`); "sample" soft and
  fuzzy settings add noise (Sec. 4): the sigma the training run used, when the checkpoint is <run>/best or
  <run>/last of a train.py run (its config.json records it), else 0.33 x RMS(E) of the evaluated model; the
  results say which (sigma, sigma_source). Answers the grader could not grade (error or timeout) count as
  wrong and are counted per setting (grader_errors).
  Several checkpoints of one method (seeds) make one table row, mean ± std (sample std, n - 1).
- Fig. 3 (pass@k for k = 1, 2, 4, 8, 16, 32), Fig. 4 / App. G.3 (CoT entropy per position: the mean
  next-token entropy over all generations still in their CoT at that position), Fig. 2 (training curves,
  from train.py's metrics.jsonl).
- Table 2, out of domain: accuracy with hard greedy decoding, and the NLL per token of the correct answer.
  The paper gives no protocol (docs/decisions.md, "Out-of-domain protocol"). Ours, the same for base and trained models:
    accuracy  one hard greedy rollout (CoT cap as in-domain, greedy answer) on the task's prompt (App. B; the toy
              prompt for --recipe tiny) with the question and its lettered choices ("A. ...", one a line);
              correct if the last \\boxed{} holds the right letter (`B`, `(B)`, `\\text{B}`), the right
              choice's text, or a letter with a text (`B. Paris`, `(B) Paris`: the letter decides).
    NLL       the mean, over problems, of the per-token negative log-likelihood of the correct choice's text,
              teacher-forced after the prompt with the question alone (listing the choices would measure
              copying) followed by the answer prefill ` The final answer is: \\boxed{` (App. C): the answer
              in the slot where the model writes it, with no CoT, because a CoT is the model's own and would
              make base and trained models' numbers incomparable.
  HellaSwag uses its validation split (test labels are hidden), ARC (Challenge; arc_easy for Easy) and MMLU
  their test splits. The toy world's held-out skills (toy.HELD_OUT: test_mul, test_expr) go through the same
  code: accuracy by a hard greedy rollout graded like in-domain answers, NLL per token of the gold worked
  completion (toy.cot_target: CoT, trigger and boxed answer) after the toy prompt.

    python evaluate.py --recipe tiny --model toy-slips --label base --out eval --plots  # the tiny recipe's base model
    python evaluate.py --recipe tiny --model runs/tiny-fuzzy-s0/best runs/tiny-fuzzy-s1/best --out eval --plots
    torchrun --standalone --nproc_per_node 8 evaluate.py --recipe llama3b-gsm8k --model runs/x/best --out eval
    python evaluate.py --metrics runs/*/metrics.jsonl --out eval                        # training curves only

Each call writes <out>/results_<label>.json (per checkpoint: every pass@k, per-problem correct counts, entropy
profiles, OOD numbers), then rebuilds <out>/table.md from every results_*.json in <out>: run it once per
method, same --out, and the table gets one row per label, with n and ± (LEGEND). Every generation is appended as
it is made to <out>/cache/<checkpoint>.<part>.<digest>.generations.jsonl (results_<label>.json names them:
generations), a row each: set, problem (index in the set), setting, sample, cot, answer, gold, correct, reward.
--plots draws passk.png and entropy.png; --metrics draws training.png.

Labels (default_label): --label, or from the --model paths. One checkpoint keeps its run's seed and its name,
runs/tiny-fuzzy-s0/last -> tiny-fuzzy-s0-last (models/toy-slips-s0 -> toy-slips-s0, a hub name -> its last
part), so seeds evaluated one at a time and best/ and last/ of one run get a file each. Several paths in one call
are the seeds of one row and get their common name, the seed dropped: runs/tiny-fuzzy-s{0,1}/best ->
tiny-fuzzy-best (names that still differ are joined by +). A results_<label>.json that holds another evaluation
(other checkpoints, settings, OOD sets, or any flag it records: KEEP) is never replaced: the call stops before
loading anything, naming the file; pass another --label, or --overwrite. The same evaluation may be rewritten.

Nothing finished is lost: each part of a checkpoint's evaluation (its noise sigma, each setting, each OOD set) is
written the moment it is done to <out>/cache/<checkpoint>.<part>.<digest>.json (beside, then renamed), and a call
whose part has the same key reads it from there instead ("reusing <part> of <checkpoint> from <file>"): rerun an
interrupted or failed command and it goes on where it stopped. Inside a setting it goes on from the first batch
not finished: each batch's generations, then its numbers (<...>.batches.jsonl: correct counts, entropy sums),
are appended the moment it is done, and a rerun cuts off what a kill left half written. The numbers are those
of an uninterrupted run (a test checks), because every batch's rollout draws from its own generator seeded by
(--seed, setting, first problem), never from what ran before it. The key (part_keys) holds the --model value,
its folder, every file's size and modification time there (a retrained or replaced checkpoint misses), the
training run's sigma, the dtype and device type, and the flags that change the part's numbers: dataset, data
file (size, mtime), prompt, seed, limit, batch, CoT and answer caps, and n and k for a sample setting. Not in
it: the code (delete <out>/cache after changing evaluate.py, softcot.py or rewards.py), a hub model's or hub
dataset's revision (a hub name is its name). The process count is not needed: it does not change the numbers.
Deleting <out>/cache is always safe; it costs the time to compute its parts again, and the generations go with
it. One call at a time per --out: two calls of the same evaluation would append to the same files.

Checks before a model runs: a --model folder that is cut short or damaged (checkpoints.folder_problem: config and
tokenizer JSON, safetensors lengths) is refused by the parser, naming it (exit code 2). After loading, before
any rollout (tokenizer_problem): the tokenizer's len fits the embedding's rows; its bos, eos and pad ids and the
generation config's eos ids lie inside it; its bos and eos ids are the ones config.json names; then
(checkpoints.content_problem) every file of a train.py checkpoint still has the sha256 checkpoint.json recorded at
save time, and no weight is NaN or inf. Not detectable: a tokenizer of the same size and special ids whose
ordinary tokens are in another order, when it was in the folder from the start (a folder without checkpoint.json, or a checkpoint saved with the wrong
tokenizer); the model then reads other text than it learned and scores near 0% without an error.

Reproducible: problems are cut into fixed chunks (--batch sequences each) and chunk j's rollout draws from a
torch.Generator seeded by (--seed, setting, j's first problem); chunks go round-robin to the ranks, and their
numbers are gathered and put together in chunk order, whoever ran them. So a result depends on (checkpoint,
--seed, --batch) and not on the process count: `torchrun --nproc_per_node 2` gives exactly the one-process
numbers (a test checks).
"""

import argparse
import glob
import hashlib
import json
import math
import os
import re
import statistics
import time
import zlib

import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoints
import data
import plots
import recipes
import rewards
import runs
import runtime
import smol
import softcot
import toy

LETTERS = "ABCDEFGHIJ"
MC_SPLIT = {"hellaswag": "validation", "arc": "test", "arc_easy": "test", "mmlu": "test"}   # Table 2's sets
TOY_OOD = tuple(f"test_{s}" for s in toy.HELD_OUT)                                          # test_mul, test_expr
TEST_SET = {"toy": "toy", "smol": "smol", "gsm8k": "gsm8k", "math": "math500", "deepscaler": "math500"}   # -> test
TABLE_ORDER = ("hard", "fuzzy", "soft")                            # the CoT modes in the column order of Tables 3-5
# The toy table's default problem count: all six settings at n = 32 on the 200 toy test problems took 5 min per
# checkpoint on 2 shared CPU cores (3.5 min of CPU); 100 problems keep a 4-row table near 10 min.
TOY_LIMIT = 100


# ------------------------------------------------------------------------------------------------ pass@k
def pass_at_k(n, c, k):
    """Unbiased pass@k (Chen et al. 2021) of one problem with n samples, c of them correct: 1 - C(n-c, k) / C(n, k).

    Computed as a product, stable for any n: C(n-c, k) / C(n, k) = prod_{i=n-c+1..n} (1 - k / i). Needs n >= k
    (fewer samples cannot estimate pass@k); c = 0 gives 0 (a shortcut some implementations take returns 1 there).
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs at least k = {k} samples per problem, got n = {n}")
    if not 0 <= c <= n:
        raise ValueError(f"the number of correct samples must be in [0, n = {n}], got {c}")
    if n - c < k:              # every size-k subset holds a correct sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# ------------------------------------------------------------------------------------------------ measurements
def cot_entropy(ro):
    """App. G.3: per CoT position t, the sum over rows of the next-token entropy and the number of rows still
    in their CoT there (padding excluded). Rollout -> (sums (Tc,), counts (Tc,)), fp64; sums / counts is the
    entropy profile of Fig. 4."""
    Tc = ro.entropy.shape[1]
    in_cot = (ro.kind[:, :Tc] == softcot.COT).double()          # (N, Tc): CoT position j = generated position j
    return (ro.entropy.double() * in_cot).sum(0), in_cot.sum(0)


@torch.no_grad()
def completion_nll(model, tok, contexts, completions):
    """Mean negative log-likelihood per token of each completion after its context, teacher-forced (Table 2's NLL).

    Tokenised apart, the context with the tokenizer's special tokens and the completion without, as a rollout
    sees a prompt then generated tokens. Left-padded, so every completion ends in the last column and only the
    last C + 1 positions' logits are computed (C = the longest completion; no (B, L, V) tensor). Returns (B,).
    """
    ctx = tok(list(contexts)).input_ids
    comp = tok(list(completions), add_special_tokens=False).input_ids
    if min(map(len, ctx)) == 0 or min(map(len, comp)) == 0:
        raise ValueError("contexts and completions must each hold at least one token")
    B, L, C = len(ctx), max(len(a) + len(b) for a, b in zip(ctx, comp)), max(map(len, comp))
    ids = torch.full((B, L), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    target = torch.zeros(B, L, dtype=torch.bool)                 # the completion's tokens
    for i, (a, b) in enumerate(zip(ctx, comp)):
        ids[i, L - len(a) - len(b):] = torch.tensor(a + b)
        mask[i, L - len(a) - len(b):] = 1
        target[i, L - len(b):] = True
    ids, mask, target = ids.to(model.device), mask.to(model.device), target[:, -C:].to(model.device)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)                      # explicit positions: left pads
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=C + 1).logits[:, :-1]
    logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, -C:, None])[..., 0]   # (B, C): log p(token)
    return -(logp * target).sum(1) / target.sum(1)


def mc_question(row):
    """A multiple-choice row as one question: the stem, then one "A. choice" line per choice."""
    return row["question"] + "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(row["choices"]))


def mc_correct(answer_text, row):
    """The last \\boxed{} names the right choice: its letter (`B`, `(B)`, `B.`, `\\text{B}`), its text, or both
    (`B. Paris`, `(B) Paris`: the letter decides, as a grader reading the letter would).

    Multiple choice only: rewards.py grades maths answers with Math-Verify and knows no choices, so nothing here
    can change a numeric answer's grade. A whole answer equal to a choice's text is read as that text first, so
    a choice such as `A.D. 1066` is not taken for the letter A.
    """
    got = rewards.extract_boxed(answer_text)
    if got is None:
        return False
    got = re.sub(r"^\\text\{(.*)\}$", r"\1", got.strip()).strip()
    letters, texts = LETTERS[:len(row["choices"])], [_norm(c) for c in row["choices"]]
    bare = got.strip("(). ").upper()
    if len(bare) == 1 and bare in letters:
        return letters.index(bare) == row["label"]
    if _norm(got) in texts:
        return texts.index(_norm(got)) == row["label"]
    m = re.fullmatch(r"\(?([A-J])\s*[.):]\s*.+", got, re.S)     # `B. Paris`, `(B) Paris`, `B) Paris`, `B: Paris`
    return bool(m) and m[1] in letters and letters.index(m[1]) == row["label"]


def _norm(text):
    """Case, runs of spaces and a final period do not matter."""
    return " ".join(text.lower().split()).rstrip(".")


def judge(answer_texts, items):
    """(correct, Eq. 11 reward, per answer; grader errors): Math-Verify (Eq. 11's check) for maths items, the
    choice for multiple choice (rewarded 100 / 10 boxed / 0 likewise). A grader error or timeout counts as wrong,
    and is counted (rewards.Scores)."""
    if "choices" in items[0]:
        ok = [mc_correct(a, it) for a, it in zip(answer_texts, items)]
        return ok, [100.0 if c else 10.0 if rewards.extract_boxed(a) else 0.0 for c, a in zip(ok, answer_texts)], 0
    s = rewards.score(answer_texts, [it["answer"] for it in items])
    return s.correct, s.rewards, s.grader_errors


# ------------------------------------------------------------------------------------------------ data
def _subset(rows, limit):
    """`limit` rows spread evenly over the set (MMLU's file order is by subject), or all of them."""
    if limit is None or limit >= len(rows):
        return rows
    return [rows[i * len(rows) // limit] for i in range(limit)]


def _load(name, split, path):
    try:
        return data.load(name, split, path=path)
    except (ValueError, RuntimeError) as e:
        raise SystemExit(f"could not load {name!r} ({split} split): {e}\nOffline, point at a local file in the "
                         f"dataset's hub schema: --data_path FILE for the test set, --ood {name}=FILE for an "
                         "out-of-domain set.")


def load_sets(args):
    """(test items, {OOD name: items}). An item holds the rollout's `prompt`, the gold `answer`, MC rows'
    `choices` and `label`, for OOD items the NLL's `context` and `completion` (module docstring), and `problem`:
    its index in the whole set, before --limit (the generations' problem id)."""
    splits = toy.toy_splits(args.seed) if args.dataset == "toy" or set(args.ood) & set(TOY_OOD) else {}
    if args.dataset == "toy":
        test = [dict(prompt=recipes.prompt_text(args.prompt, r["question"]), answer=toy.gold(r)) for r in splits["test"]]
    elif args.dataset == "smol" and not args.data_path:   # the toy test problems in English (smol.py), GSM8K rows
        test = [dict(prompt=recipes.prompt_text(args.prompt, r["question"]), answer=rewards.gsm8k_gold(r["answer"]))
                for r in smol.make_rows(200, args.seed, split="test")]
    else:
        test = [dict(prompt=recipes.prompt_text(args.prompt, r["question"]), answer=r["answer"])
                for r in _load("gsm8k" if args.dataset == "smol" else args.dataset, "test", args.data_path)]
    ood = {}
    for spec in args.ood:
        name, _, path = spec.partition("=")
        if name in TOY_OOD:
            ood[name] = [dict(prompt=recipes.prompt_text(args.prompt, r["question"]), answer=toy.gold(r),
                              context=recipes.prompt_text(args.prompt, r["question"]), completion=toy.cot_target(r))
                         for r in splits[name]]
        else:   # MC_SPLIT's sets (parse_args refused any other name)
            ood[name] = [dict(prompt=recipes.prompt_text(args.prompt, mc_question(r)), answer=r["answer"],
                              choices=r["choices"], label=r["label"], completion=r["answer"],
                              context=recipes.prompt_text(args.prompt, r["question"]) + softcot.PREFILL_CAPPED)
                         for r in _load(name, MC_SPLIT[name], path or None)]
    test = [dict(r, problem=i) for i, r in enumerate(test)]
    ood = {k: [dict(r, problem=i) for i, r in enumerate(v)] for k, v in ood.items()}
    return _subset(test, args.limit), {k: _subset(v, args.limit) for k, v in ood.items()}


# ------------------------------------------------------------------------------------------------ one checkpoint
def run_setting(args, model, tok, items, name, sigma, G, rank, world, desc, file, set_name):
    """One inference setting on all items, G samples each: (correct counts (P,), entropy profile as a list,
    grader errors and timeouts).

    Items are cut into batches of max(1, batch // G) problems. Batch j draws from a generator seeded by (seed,
    setting, its first problem): not by the process count, nor by the batches run before it in this process.
    Rank 0 keeps each finished batch at once (under torchrun, all ranks' are gathered): its generations, then its
    numbers (generation_files), and a rerun of a killed call runs only the batches not recorded there.
    """
    starts = list(range(0, len(items), max(1, args.batch // G)))
    gens, record = generation_files(file)
    done = {b["batch"]: b for b in runs.appended(gens, record)} if rank == 0 else None   # an earlier call's
    done = runtime.broadcast_object(done, world)
    todo = [j for j in range(len(starts)) if j not in done]
    if done and rank == 0:
        print(f"{desc}: reusing {len(done)} of {len(starts)} batches of {name} from {record}", flush=True)
    for i in tqdm(range(0, len(todo), world), desc=f"{desc} {name}", disable=rank != 0, dynamic_ncols=True):
        j = todo[i + rank] if i + rank < len(todo) else None            # the last round may leave ranks idle
        got = run_batch(args, model, tok, items, j, starts[j], name, sigma, G, set_name) if j is not None else None
        for numbers, rows in filter(None, runtime.all_gather_object(got, world)):
            if rank == 0:   # the generations first: a recorded batch always has them
                runs.append_jsonl(record, [dict(numbers, bytes=runs.append_jsonl(gens, rows))])
            done[numbers["batch"]] = numbers
    correct = torch.zeros(len(items), dtype=torch.float64)                                 # (P,)
    ent = torch.zeros(len(starts), args.max_cot_tokens, dtype=torch.float64)               # per batch
    cnt = torch.zeros_like(ent)
    for j, s in enumerate(starts):                   # the same numbers, whichever call or rank ran each batch
        b = done[j]
        correct[s:s + len(b["correct"])] = torch.tensor(b["correct"], dtype=torch.float64)
        ent[j, :len(b["entropy"])] = torch.tensor(b["entropy"], dtype=torch.float64)
        cnt[j, :len(b["count"])] = torch.tensor(b["count"], dtype=torch.float64)
    ent, cnt = ent.sum(0), cnt.sum(0)                                                       # (T,), one order
    return correct, (ent[cnt > 0] / cnt[cnt > 0]).tolist(), sum(b["grader_errors"] for b in done.values())


def run_batch(args, model, tok, items, j, s, name, sigma, G, set_name):
    """Batch j of a setting, its problems from s on: (its numbers, its generations as rows of the jsonl)."""
    mode, tau, noisy = softcot.SETTINGS[name]
    chunk = items[s:s + max(1, args.batch // G)]
    gen = torch.Generator(model.device).manual_seed(zlib.crc32(f"{args.seed}/{name}/{s}".encode()))
    ro = softcot.rollout(model, tok, [it["prompt"] for it in chunk], mode=mode, tau=tau,
                         sigma=sigma if noisy else 0.0, num_samples=G, max_cot_tokens=args.max_cot_tokens,
                         max_answer_tokens=args.max_answer_tokens, answer_temperature=0.0, generator=gen)
    per_row = [it for it in chunk for _ in range(G)]                                  # rows prompt-major
    ok, reward, errors = judge(ro.answer_text, per_row)
    e, c = cot_entropy(ro)
    numbers = dict(batch=j, correct=[sum(ok[i * G:(i + 1) * G]) for i in range(len(chunk))],
                   grader_errors=errors, entropy=e.tolist(), count=c.tolist())   # JSON keeps floats exactly
    rows = [dict(set=set_name, problem=it["problem"], setting=name, sample=r % G, cot=ro.cot_text[r],
                 answer=ro.answer_text[r], gold=it["answer"], correct=ok[r], reward=reward[r])
            for r, it in enumerate(per_row)]
    return numbers, rows


def generation_files(file):
    """The part cached in <name>.json: (<name>.generations.jsonl, <name>.batches.jsonl: run_batch's numbers)."""
    name = file.removesuffix(".json")
    return f"{name}.generations.jsonl", f"{name}.batches.jsonl"


def run_nll(args, model, tok, items, rank, world, desc):
    """completion_nll of every item, sharded in chunks of --batch: (P,) mean NLL per token of each item."""
    nll = torch.zeros(len(items), dtype=torch.float64, device=model.device)
    starts = list(range(0, len(items), args.batch))
    for j in tqdm(range(rank, len(starts), world), desc=f"{desc} NLL", disable=rank != 0, dynamic_ncols=True):
        chunk = items[starts[j]:starts[j] + args.batch]
        nll[starts[j]:starts[j] + len(chunk)] = completion_nll(model, tok, [it["context"] for it in chunk],
                                                               [it["completion"] for it in chunk]).double()
    return runtime.all_sum(nll, world).cpu()                 # exact: one rank wrote each slot


def training_sigma(path):
    """(sigma, where it was found) of the train.py run that wrote checkpoint `path` (<run>/best, <run>/last or
    <run>/last.prev: <run>/config.json records the noise scale it trained with), or (None, None): a base model,
    a hub model, a folder not in a run, or a hard-mode run (sigma 0: it had no noise)."""
    folder = os.path.normpath(path)
    if os.path.basename(folder) not in ("best", "last", "last.prev"):
        return None, None
    config = os.path.join(os.path.dirname(folder), "config.json")
    try:
        with open(config) as f:
            run = json.load(f)
    except (OSError, ValueError):
        return None, None
    sigma = run.get("sigma") if isinstance(run, dict) else None
    return (sigma, config) if isinstance(sigma, (int, float)) and sigma > 0 else (None, None)


def evaluate_checkpoint(args, path, test, ood, rank, world, device, desc):
    """Everything for one checkpoint, as the dict saved in results_<label>.json (pass@k as fractions).

    In parts: the noise sigma, each setting, each OOD set. A part whose key (part_keys) is in <out>/cache is read
    from there, and said so; every other part is computed and written there the moment it is done, and inside a
    setting each batch is (run_setting), so an interrupted call loses only the batch it was in. The model is
    loaded only if some part is missing, and its tokenizer is checked before the first rollout (tokenizer_problem).

    The "sample" settings' noise (Sec. 4): the sigma of the training run when `path` is a checkpoint of one
    (the paper's sample settings are the training variants, and a trained model's E, so its RMS, has moved),
    else 0.33 x RMS(E) of the evaluated model.
    """
    folder = recipes.model_path(path, args.seed, rank, world)
    keys = part_keys(args, path, folder, device)
    files = {part: part_file(args.out, path, part, key) for part, key in keys.items()}
    done = {part: cached(files[part], keys[part]) for part in keys} if rank == 0 else None
    # rank 0 alone reads the cache (the others may not see --out); every rank skips the same parts
    done = runtime.broadcast_object(done, world)
    done = {part: entry for part, entry in done.items() if entry is not None}
    if rank == 0:
        for part in done:
            print(f"{desc}: reusing {part} of {path} from {files[part]}", flush=True)
    if len(done) < len(keys):
        model, tok = runtime.load_for_inference(folder, device, args.dtype)
        # the tokenizer, then the bytes: checksums of a train.py checkpoint, NaN weights (0% and exit 0 before);
        # one read of the weights, against hours of rollouts
        problem = tokenizer_problem(model, tok) or \
            (checkpoints.content_problem(folder) if os.path.isdir(folder) else None)
        if problem:
            raise SystemExit(f"--model {path}: {problem}")
    if "sigma" not in done:
        t0 = time.time()
        sigma, source = training_sigma(path)
        source = f"the training run's, from {source}" if sigma else "0.33 x RMS(E) of this model"
        done["sigma"] = store(files["sigma"], keys["sigma"], dict(sigma=sigma or softcot.noise_sigma(model),
                                                                 sigma_source=source), t0, rank)
    sigma, source = done["sigma"]["value"]["sigma"], done["sigma"]["value"]["sigma_source"]
    if rank == 0 and any(softcot.SETTINGS[name][2] for name in args.settings):
        print(f"{desc}: sample settings' noise sigma = {sigma:.4g} ({source})", flush=True)
    out = dict(sigma=sigma, sigma_source=source, settings={}, correct={}, entropy={}, grader_errors={}, ood={},
               generations={part: os.path.relpath(generation_files(files[part])[0], args.out)   # from --out
                            for part in files if part != "sigma"})
    for name in args.settings:
        if name not in done:
            t0 = time.time()
            G = args.samples if name.endswith("_sample") else 1
            correct, profile, errors = run_setting(args, model, tok, test, name, sigma, G, rank, world, desc,
                                                   files[name], args.dataset)
            ks = args.k if G > 1 else [1]
            value = dict(settings={f"pass@{k}": statistics.fmean(pass_at_k(G, int(c), k) for c in correct) for k in ks},
                         correct=[int(c) for c in correct], entropy=profile, grader_errors=errors)
            done[name] = store(files[name], keys[name], value, t0, rank)
        for section, value in done[name]["value"].items():   # one entry in each of out's per-setting sections
            out[section][name] = value
    for name, items in ood.items():
        part = f"ood-{name}"
        if part not in done:
            t0 = time.time()
            correct, _, errors = run_setting(args, model, tok, items, "hard_greedy", 0.0, 1, rank, world,
                                             f"{desc} {name}", files[part], name)
            nll = run_nll(args, model, tok, items, rank, world, f"{desc} {name}")
            value = dict(accuracy=correct.mean().item(), nll=nll.mean().item(), problems=len(items),
                         grader_errors=errors, accuracy_se=stderr(correct.tolist()), nll_se=stderr(nll.tolist()))
            done[part] = store(files[part], keys[part], value, t0, rank)
        out["ood"][name] = done[part]["value"]
    errors = sum(out["grader_errors"].values()) + sum(v["grader_errors"] for v in out["ood"].values())
    if errors and rank == 0:
        print(f"{desc}: {errors} answers could not be graded (grader error or timeout) and count as wrong; "
              "results_<label>.json has them per setting (grader_errors)", flush=True)
    # the compute time of these numbers: of this call for the parts it computed, of an earlier one for those reused
    out["seconds"] = round(sum(entry["seconds"] for entry in done.values()), 1)
    return out


# ------------------------------------------------------------------------------------------------ the cache of parts
def part_keys(args, path, folder, device):
    """{part: its cache key} for the checkpoint `path` (made or found at `folder`): "sigma", each setting, and
    "ood-<set>" for each OOD set. A key holds everything that changes that part's numbers, so a changed flag or a
    retrained checkpoint misses the cache instead of reusing stale numbers; what it cannot hold is in the module
    docstring. The process count is left out: it does not change the numbers."""
    checkpoint = dict(model=path, folder=os.path.abspath(folder) if os.path.isdir(folder) else folder,
                      files=folder_stats(folder), run_sigma=training_sigma(path)[0],
                      dtype=str(softcot.resolve_dtype(args.dtype, device)), device=device.type)
    flags = {k: vars(args)[k] for k in ("seed", "prompt", "limit", "batch", "max_cot_tokens", "max_answer_tokens")}
    keys = {"sigma": dict(part="sigma", checkpoint=checkpoint)}   # training_sigma, or RMS(E) of these weights
    for name in args.settings:
        G = args.samples if name.endswith("_sample") else 1   # a greedy setting's numbers do not depend on n or k
        keys[name] = dict(part=name, checkpoint=checkpoint, dataset=args.dataset, data=file_stats(args.data_path),
                          samples=G, k=args.k if G > 1 else [1], **flags)
    for spec in args.ood:
        name, _, file = spec.partition("=")
        keys[f"ood-{name}"] = dict(part=f"ood-{name}", checkpoint=checkpoint, data=file_stats(file or None), **flags)
    return keys


def file_stats(path):
    """[absolute path, size, modification time in ns] of a file, None for none: a cheap identity that a rewrite
    changes (a digest would read every byte of a checkpoint's weights)."""
    if path is None:
        return None
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def folder_stats(folder):
    """{file: [size, mtime in ns]} of every file of a checkpoint folder: weights, configs, tokenizer, and the
    checkpoint.json of digests train.py writes, all rewritten by a new save. None for a hub name (no folder)."""
    if not os.path.isdir(folder):
        return None
    return {f: file_stats(os.path.join(folder, f))[1:] for f in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, f))}


def part_file(out, path, part, key):
    """<out>/cache/<checkpoint>.<part>.<digest of the key>.json: named for a reader, found by the digest."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return os.path.join(out, "cache", f"{file_name(default_label([path]))}.{part}.{digest}.json")


def cached(file, key):
    """The part saved in `file` ({key, value, seconds}) if its key is `key`, else None (absent, or unreadable: it
    is computed again and the file replaced)."""
    try:
        with open(file) as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("key") == key else None


def store(file, key, value, t0, rank):
    """A finished part, {key, value, seconds since t0}, written to `file` by rank 0; returned on every rank."""
    entry = dict(key=key, value=value, seconds=time.time() - t0)
    if rank == 0:
        runs.write_json(file, entry)
    return entry


# ------------------------------------------------------------------------------------------------ checks
def tokenizer_problem(model, tok):
    """Why `tok` cannot be the tokenizer of `model` (both read from one folder), or None. Cheap checks, before any
    rollout: an id the embedding has no row for would fail as an IndexError deep in a forward, and special ids
    that moved would make every answer wrong without an error. What they cannot see: module docstring."""
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tok) > rows:
        return (f"its tokenizer has {len(tok)} tokens, the model's embedding {rows} rows: the tokenizer is not this "
                "model's (a token id >= the row count has no embedding)")
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)   # softcot stops at these too
    special = [("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("pad", tok.pad_token_id)]
    special += [("generation_config.json's eos", i) for i in (gen_eos if isinstance(gen_eos, list) else [gen_eos])]
    for what, i in special:
        if i is not None and not 0 <= i < len(tok):
            return f"the {what} token id {i} is outside the tokenizer's {len(tok)} tokens"
    for what in ("bos", "eos"):   # not pad: pads are masked, and load_tokenizer makes one from eos when missing
        mine, saved = getattr(tok, f"{what}_token_id"), getattr(model.config, f"{what}_token_id", None)
        saved = [saved] if isinstance(saved, int) else saved or []
        if mine is not None and saved and mine not in saved:
            return (f"the tokenizer's {what} token is id {mine}, config.json's {what}_token_id is "
                    f"{' or '.join(map(str, saved))}: a tokenizer with another vocabulary than the model's")
    return None


# ------------------------------------------------------------------------------------------------ tables
LEGEND = ("n: problems × samples per problem in the sample settings (greedy: 1); set n: problems. ±: *SE* (one "
          "checkpoint) = sample std of the per-problem values (unbiased pass@k, correct, NLL) / sqrt(problems); "
          "*std of N seeds* (a row of N checkpoints) = sample std of their N values: the seeds' spread, not an SE.")


def stderr(values):
    """One standard error of the mean of `values`: their sample std / sqrt(their count); None for one value."""
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None


def mean_std(values, scale=100.0, digits=1, se=None):
    """Several seeds: '76.7±1.8', their mean ± sample std. One checkpoint: '76.7±0.9', its value ± `se`, one
    standard error over the problems (the value alone without it)."""
    v = [scale * x for x in values]
    if len(v) == 1:
        return f"{v[0]:.{digits}f}" + (f"±{scale * se:.{digits}f}" if se is not None else "")
    return f"{statistics.fmean(v):.{digits}f}±{statistics.stdev(v):.{digits}f}"


def spread(ckpts):
    """What a row's ± is (LEGEND): SE for one checkpoint, the std of the seeds for several."""
    return "SE" if len(ckpts) == 1 else f"std of {len(ckpts)} seeds"


def _markdown(head, lines):
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(cells) + " |" for cells in lines])


def format_table(rows):
    """Tables 3-5 from {label: [checkpoint results, each with its call's `samples`]}: n, what ± is (LEGEND),
    HG HS HS32 | FG FS FS32 | SG SS SS32, in percent.

    G = greedy pass@1, S = sample pass@1, S32 = sample pass@K for the largest K evaluated (32 at n = 32).
    """
    K = max((int(key[5:]) for ckpts in rows.values() for r in ckpts for s in r["settings"].values() for key in s),
            default=1)
    head = ["model", "n", "±"] + [f"{m[0].upper()}{c}" for m in TABLE_ORDER for c in ("G", "S", f"S{K}")]
    lines = []
    for label, ckpts in rows.items():
        n = ckpts[0]["samples"]
        cells = [label, f"{len(next(iter(ckpts[0]['correct'].values()), []))}×{n}", spread(ckpts)]
        for m in TABLE_ORDER:
            for setting, key in ((f"{m}_greedy", "pass@1"), (f"{m}_sample", "pass@1"), (f"{m}_sample", f"pass@{K}")):
                got = [r for r in ckpts if key in r["settings"].get(setting, {})]
                G, k = (n if setting.endswith("_sample") else 1), int(key[5:])
                se = stderr([pass_at_k(G, c, k) for c in got[0]["correct"][setting]]) if len(got) == 1 else None
                cells.append(mean_std([r["settings"][setting][key] for r in got], se=se) if got else "–")
        lines.append(cells)
    return _markdown(head, lines)


def format_ood_table(rows):
    """Table 2 from {label: [checkpoint results]}: what ± is (LEGEND), then per set its problem count n, the
    accuracy (%) and the NLL per token of the correct answer."""
    names = list(dict.fromkeys(n for ckpts in rows.values() for r in ckpts for n in r["ood"]))
    head = ["model", "±"] + [f"{n} {what}" for n in names for what in ("n", "acc", "NLL")]
    lines = []
    for label, ckpts in rows.items():
        cells = [label, spread(ckpts)]
        for n in names:
            got = [r["ood"][n] for r in ckpts if n in r["ood"]]
            if not got:
                cells += ["–"] * 3
                continue
            one = got[0] if len(got) == 1 else {}      # SE: one checkpoint's (results from before SEs have none)
            cells += [str(got[0]["problems"]), mean_std([g["accuracy"] for g in got], se=one.get("accuracy_se")),
                      mean_std([g["nll"] for g in got], scale=1.0, digits=3, se=one.get("nll_se"))]
        lines.append(cells)
    return _markdown(head, lines)


# ------------------------------------------------------------------------------------------------ CLI
def name_parts(path):
    """(run, seed, checkpoint) of a --model path, the parts of its label: runs/tiny-fuzzy-s0/last ->
    ("tiny-fuzzy", "-s0", "-last"); a folder outside a run, a hub or made name: its last part, without a
    checkpoint (models/toy-slips-s0 -> ("toy-slips", "-s0", ""), toy-slips -> ("toy-slips", "", ""))."""
    p = os.path.normpath(path)
    checkpoint = os.path.basename(p) if os.path.basename(p) in ("best", "last", "last.prev") else ""
    run, seed = re.fullmatch(r"(.*?)((?:-s\d+)?)", os.path.basename(os.path.dirname(p) if checkpoint else p)).groups()
    return run, seed, f"-{checkpoint}" if checkpoint else ""


def default_label(paths):
    """The label of a call without --label. One checkpoint keeps its seed and its name, so that seeds evaluated
    one at a time, and best/ and last/ of one run, get files of their own: runs/tiny-fuzzy-s0/last ->
    tiny-fuzzy-s0-last. Several are the seeds of one table row: their common name, the seed dropped
    (runs/tiny-fuzzy-s0/best runs/tiny-fuzzy-s1/best -> tiny-fuzzy-best); names that still differ (other runs)
    are all kept, joined by + (runs/a-s0/best runs/b-s0/best -> a-best+b-best)."""
    if len(paths) == 1:
        return "".join(name_parts(paths[0]))
    return "+".join(dict.fromkeys(run + checkpoint for run, _, checkpoint in map(name_parts, paths)))


def file_name(label):
    """A label as a file name's part: results_<file_name(label)>.json."""
    return re.sub(r"[^\w.-]", "_", label)


# What results_<label>.json records of the call that wrote it, besides the checkpoints, settings and OOD sets
KEEP = ("recipe", "dataset", "samples", "k", "limit", "batch", "max_cot_tokens", "max_answer_tokens", "seed")


def clash(args):
    """Why this call must not write its results_<label>.json, or None: the file is there and holds another
    evaluation (other checkpoints, settings, OOD sets or recorded flags; the same ones may be rewritten, and the
    cache makes that cheap). One line naming the file, what differs, and the two ways on."""
    path = os.path.join(args.out, f"results_{file_name(args.label)}.json")
    if args.overwrite or not os.path.exists(path):
        return None
    ways = "pass another --label, or --overwrite to replace it"
    want = dict(label=args.label, model=[os.path.normpath(m) for m in args.model], settings=sorted(args.settings),
                ood=sorted(spec.partition("=")[0] for spec in args.ood), **{k: vars(args)[k] for k in KEEP})
    try:
        with open(path) as f:
            r = json.load(f)
        ckpts = r["checkpoints"]
        have = dict(label=r["label"], model=[os.path.normpath(c["model"]) for c in ckpts],
                    settings=sorted(ckpts[0]["settings"]), ood=sorted(ckpts[0]["ood"]), **{k: r[k] for k in KEEP})
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:   # not a results file of ours
        return f"--label {args.label}: {path} is there and cannot be read ({type(e).__name__}); {ways}"
    for k in want:
        if want[k] != have[k]:
            return (f"--label {args.label}: {path} holds another evaluation ({k} {json.dumps(have[k])}, this call "
                    f"{json.dumps(want[k])}); {ways}")
    return None


def parse_args(argv=None):
    _, recipe = recipes.recipe_of(argv, default="llama3b-gsm8k")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="llama3b-gsm8k", choices=sorted(recipes.RECIPES),
                   help="a row of recipes.RECIPES: sets the default model, test set, prompt and lengths")
    g = p.add_argument_group("what to evaluate")
    g.add_argument("--model", nargs="+", help="checkpoint folder(s) (runs/<run>/best), hub name(s), 'toy', "
                   "'toy-calibrated', 'toy-slips' or 'smol'; "
                   "several = seeds of one method, one table row with mean ± std (default: the recipe's model, "
                   "none when only --metrics is given)")
    g.add_argument("--label", help="the table row's name and results_<label>.json's (default: one checkpoint: "
                   "runs/<run>-s<seed>/last -> <run>-s<seed>-last; several, the seeds of one row: <run>-last, the "
                   "seed dropped; an existing results file of another evaluation is never replaced, see --overwrite)")
    g.add_argument("--dataset", help="test set: toy | gsm8k | math500 | olympiadbench | math (default: the "
                   "recipe's: the toy test split, GSM8K test, or MATH-500 for math / deepscaler recipes)")
    g.add_argument("--data_path", help="a local file of the test set in its hub schema (offline machines)")
    g.add_argument("--settings", nargs="+", default=list(softcot.SETTINGS), choices=list(softcot.SETTINGS),
                   metavar="SETTING", help=f"inference settings (default: all six: {' '.join(softcot.SETTINGS)})")
    g.add_argument("--ood", nargs="*", help=f"out-of-domain sets (Table 2): {' '.join(MC_SPLIT)} or the toy's "
                   f"{' '.join(TOY_OOD)}; NAME=FILE reads a local file (default: the toy's held-out skills for "
                   "--recipe tiny, none otherwise; --ood alone: none)")
    g = p.add_argument_group("sampling")
    g.add_argument("--samples", type=int, default=32, help="n, samples per problem in the sample settings (paper: "
                   "32); not --n, which torchrun's parser would take for its own --nnodes / --nproc_per_node")
    g.add_argument("--k", type=int, nargs="+", help="pass@k to report (default: 1 2 4 ... up to n)")
    g.add_argument("--limit", type=int, help="evaluate this many problems of each set, spread evenly (default: all; "
                   f"{TOY_LIMIT} of the toy's 200 for --recipe tiny, for time)")
    g.add_argument("--batch", type=int, default=256, help="sequences per rollout (sample settings: batch // n "
                   "problems x n samples); results depend on it (chunking), not on the process count")
    g.add_argument("--max_cot_tokens", type=int, help="CoT cap (paper's evaluation: 512; default: the recipe's "
                   "val_cot_tokens)")
    g.add_argument("--max_answer_tokens", type=int, help="answer cap (paper: 32)")
    g.add_argument("--prompt", choices=list(recipes.PROMPTS), help=recipes.PROMPT_HELP)
    g.add_argument("--seed", type=int, default=0, help="seed of the rollouts' noise (and of the toy test problems)")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="weights: auto = bf16 on GPU, fp32 on CPU; the LM head computes in fp32 either way")
    g = p.add_argument_group("output")
    g.add_argument("--out", default="eval", help="folder for results_<label>.json, table.md and the plots")
    g.add_argument("--overwrite", action="store_true", help="replace a results_<label>.json that holds another "
                   "evaluation (other checkpoints, settings or flags); without it such a call stops before loading "
                   "anything. The cache of finished parts (<out>/cache) is used either way: its keys are exact")
    g.add_argument("--plots", action="store_true", help="draw passk.png and entropy.png for every label in --out")
    g.add_argument("--metrics", nargs="+", help="train.py metrics.jsonl file(s): draw training.png")
    p.set_defaults(dataset=TEST_SET.get(recipe["dataset"], recipe["dataset"]), prompt=recipe["prompt"],
                   max_cot_tokens=recipe["val_cot_tokens"], max_answer_tokens=recipe["max_answer_tokens"],
                   limit=TOY_LIMIT if recipe["dataset"] == "toy" else None)
    args = p.parse_args(argv)
    if args.model is None and not args.metrics:
        args.model = [recipe["model"]]
    args.model = args.model or []
    if args.ood is None:
        args.ood = list(TOY_OOD) if recipe["dataset"] == "toy" else []
    for flag in ("samples", "batch", "max_cot_tokens", "limit"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag} {getattr(args, flag)}: pass a whole number >= 1")
    args.k = sorted(set(args.k or [k for k in (1, 2, 4, 8, 16, 32) if k <= args.samples]))
    if args.k[0] < 1:
        p.error(f"--k {args.k[0]}: pass sizes k >= 1 (pass@k)")
    if args.k[-1] > args.samples:
        p.error(f"pass@{args.k[-1]} needs n >= {args.k[-1]} samples per problem, got --samples {args.samples}: "
                f"raise --samples or drop k > {args.samples} from --k")
    for path in args.metrics or []:
        if not os.path.isfile(path):
            p.error(f"--metrics {path}: no such file; pass a run's metrics.jsonl (runs/<run>/metrics.jsonl)")
    for path in args.model:   # a missing or damaged folder fails now, not after the first checkpoint's evaluation
        if problem := recipes.cache_problem(path, args.seed):
            p.error(problem)
        named = path in recipes.MADE_HERE or recipes.HUB_NAME.fullmatch(path)   # made, or a hub name
        if not named and not os.path.exists(path):
            p.error(f"--model {path}: no such checkpoint folder; pass a folder written by train.py "
                    "(runs/<run>/best), a hub name, 'toy' / 'toy-calibrated' / 'toy-slips' (a toy base model) or 'smol' (smol.py)")
        # headers and JSON only (checkpoints.folder_problem): a file cut short is named here, not a SafetensorError
        # later
        if path not in recipes.MADE_HERE and os.path.exists(path):
            problem = checkpoints.folder_problem(path) if os.path.isdir(path) else "a file, not a checkpoint folder"
            if problem:
                p.error(f"--model {path}: cannot be loaded ({problem}); pass a complete checkpoint folder "
                        "(train.py's best/ or last/, or last.prev/ when last/ is damaged)")
    validate_args(p, args)
    args.label = args.label or (default_label(args.model) if args.model else None)
    problem = clash(args) if args.model else None
    if problem:
        p.error(problem)
    return args


def validate_args(p, args):
    """The flags parse_args has not checked yet, before any model or data is touched (p.error: exit code 2,
    one line naming the flag); the --out folder is proven writable now, not after the evaluation."""
    if args.max_answer_tokens < 1:
        p.error(f"--max_answer_tokens {args.max_answer_tokens}: pass a whole number >= 1")
    if not 0 <= args.seed < 2 ** 31:
        p.error(f"--seed {args.seed}: pass a whole number from 0 to 2^31 - 1")
    if args.dtype not in ("auto", "float32", "bfloat16"):
        p.error(f"--dtype {args.dtype}: pass auto, float32 or bfloat16")
    sets = ["toy", "smol"] + [n for n, s in data.DATASETS.items() if "test" in s.splits and n not in MC_SPLIT]
    if args.dataset not in sets:
        p.error(f"--dataset {args.dataset}: pass one of {', '.join(sets)}")
    if args.data_path is not None:
        if args.dataset == "toy":   # generated (toy.py): a file would be ignored
            p.error(f"--data_path {args.data_path}: the toy test set is generated and reads no file; for a GSM8K-"
                    "schema file pass --dataset gsm8k --data_path FILE")
        if not os.path.isfile(args.data_path):
            p.error(f"--data_path {args.data_path}: no such file; pass a local json/jsonl/parquet file")
    for spec in args.ood:
        name, eq, path = spec.partition("=")
        if name not in MC_SPLIT and name not in TOY_OOD:
            p.error(f"--ood {spec}: unknown set; use {', '.join(MC_SPLIT)} (Table 2) or {', '.join(TOY_OOD)} (the "
                    "toy world's held-out skills), the former optionally as NAME=FILE")
        if eq and name in TOY_OOD:
            p.error(f"--ood {spec}: the toy world's held-out skills are generated and read no file; pass {name}")
        if eq and not os.path.isfile(path):
            p.error(f"--ood {spec}: no such file; pass NAME=FILE with a local file in the set's hub schema")
    if "smol" in args.model:
        try:
            smol.gguf_folder()
        except RuntimeError as e:
            p.error(f"--model smol: {e}")
    problem = runs.unwritable(args.out)
    if problem:
        p.error(f"--out {args.out}: cannot write there ({problem}); pass a folder you can write")


def main(argv=None):
    args = parse_args(argv)
    rank, world, device = runtime.setup_distributed()
    rank0 = rank == 0
    test, ood = load_sets(args) if args.model else ([], {})        # before any model: bad data fails at once
    ckpts = [dict(model=path) | evaluate_checkpoint(args, path, test, ood, rank, world, device, f"{args.label}[{i}]")
             for i, path in enumerate(args.model)]
    if rank0:
        os.makedirs(args.out, exist_ok=True)
        if ckpts:
            result = dict(label=args.label, problems=len(test), **{k: vars(args)[k] for k in KEEP},
                          world_size=world, checkpoints=ckpts)
            runs.write_json(os.path.join(args.out, f"results_{file_name(args.label)}.json"), result, indent=1)
        files = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(args.out, "results_*.json")))]
        rows = {r["label"]: [dict(c, samples=r["samples"]) for c in r["checkpoints"]] for r in files}
        if rows:
            sets = ", ".join(sorted({r["dataset"] for r in files}))
            table = f"## {sets} test (Tables 3-5)\n\n{format_table(rows)}\n"
            if any(c["ood"] for checkpoints in rows.values() for c in checkpoints):
                table += f"\n## Out of domain (Table 2)\n\n{format_ood_table(rows)}\n"
            table += f"\n{LEGEND}\n"
            open(os.path.join(args.out, "table.md"), "w").write(table)
            print(table)
            if args.plots:
                plots.plot_pass_at_k(rows, os.path.join(args.out, "passk.png"))
                plots.plot_entropy(rows, os.path.join(args.out, "entropy.png"))
        if args.metrics:
            plots.plot_training(args.metrics, os.path.join(args.out, "training.png"))
        print(f"wrote {args.out}/")
    if world > 1:
        dist.barrier()   # rank 0 writes the tables last: the others keep gloo up until it is done
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
