"""
train.py: RLOO on a soft, fuzzy or hard chain of thought, on one process or many.

Paper: Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170), Sec. 4, App. A (RLOO), App. D (optimiser).
One step:
  1. B prompts, G samples each: N = B*G rollouts (softcot.rollout, no grad), sharded across ranks by sequence;
  2. rewards 100 / 10 / 0 (rewards.py, Eq. 11), all-gathered;
  3. leave-one-out advantages (rloo.py, Eq. 12);
  4. re-score each rollout with gradient (softcot.sequence_logprobs, Eq. 9, 10, 13) in micro-batches, loss
     -(1/N) sum A * l (Eq. 14), gradient accumulation, DDP averaging;
  5. gradient-norm clipping, AdamW, cosine schedule with 20 warm-up steps;
  6. every --val_every steps: greedy validation accuracy on a held-out slice of the training split; the best
     checkpoint is kept (the paper's model selection).

    python train.py --recipe tiny --mode fuzzy                          # offline toy world, CPU, minutes
    torchrun --standalone --nproc_per_node 8 train.py --mode fuzzy      # the paper: Llama-3.2-3B-Instruct, GSM8K
    python train.py --out runs/tiny-fuzzy-s0 --resume                   # continue a stopped run (its config.json)

What is deliberately absent, because the paper has none of it: a KL penalty or reference model, PPO ratios and
clipping, advantage standard-deviation normalisation, an entropy bonus, several updates per batch. Ours, and
documented: gradient-norm clipping (--grad_clip), skipping a step whose gradient is not finite.
This file is the parser, the step, validation and the loop; below it: recipes.py (settings, data, seeds),
runtime.py (processes, precision, loading, FSDP), runs.py (the run folder, resume), checkpoints.py (saving and
checking checkpoints), memory.py (the memory plan), report.py (--report_to: TensorBoard, wandb), plots.py
(<out>/training.png).
"""

import argparse
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext

import data
import recipes
import report


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=recipes.HelpFormatter, epilog=recipes.table())
    p.add_argument("--recipe", default="llama3b-gsm8k", choices=sorted(recipes.RECIPES),
                   help="a row of recipes.RECIPES: the paper's settings, or 'tiny' (offline toy world)")
    g = p.add_argument_group("method")
    g.add_argument("--mode", default="fuzzy", help="CoT tokens in training: hard | soft | fuzzy")
    g.add_argument("--tau", type=float, default=None, help="CoT temperature; None: 1.0 hard, 0.5 soft, 1e-4 fuzzy")
    g.add_argument("--gamma", type=float, help="noise sigma = gamma * RMS(E) of the base model; None: 0.33 (Sec. 4)")
    g.add_argument("--top_k", type=int, default=None, help="ablation: mix only the top-k tokens (soft/fuzzy)")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="Hugging Face name or local folder; 'toy' / 'toy-calibrated' / 'toy-slips': a "
                   "toy world's base model (toy.WORLDS)")
    g.add_argument("--dataset", help="gsm8k | math | deepscaler (data.py), or 'toy'")
    g.add_argument("--data_path", default=None, help="a local json/jsonl/parquet file in the dataset's hub schema")
    g.add_argument("--prompt", choices=recipes.PROMPTS, help=recipes.PROMPT_HELP)
    g.add_argument("--model_revision", help="a hub --model's tag, branch or commit (pin it: a commit)")
    g.add_argument("--data_revision", help="a hub --dataset's tag, branch or commit")
    g = p.add_argument_group("batch and lengths")
    g.add_argument("--prompts_per_step", type=int, help="B: distinct prompts per step (global)")
    g.add_argument("--samples", type=int, help="G: samples per prompt (>= 2, leave-one-out)")
    g.add_argument("--micro_batch", type=int, help="sequences per re-scoring forward on each rank")
    g.add_argument("--max_cot_tokens", type=int, help="CoT cap in training (128 GSM8K, 512 MATH/DeepScaleR)")
    g.add_argument("--max_answer_tokens", type=int, help="answer cap (32 in the paper)")
    g.add_argument("--answer_temperature", type=float, default=1.0, help="answer sampling temperature in training")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, help="RL steps (4000 in the paper)")
    g.add_argument("--lr", type=float, help="peak AdamW learning rate (App. D)")
    g.add_argument("--warmup", type=int, help="linear warm-up steps before the cosine decay (20 in the paper)")
    g.add_argument("--weight_decay", type=float, default=0.0, help="AdamW weight decay (not given by the paper)")
    g.add_argument("--grad_clip", type=float, default=1.0, help="global gradient-norm clip (ours; 0 = off)")
    g.add_argument("--embed_lr_scale", type=float, default=1.0,
                   help="learning-rate multiplier of the token embeddings E (and an untied output layer); 0 freezes")
    g = p.add_argument_group("validation, checkpoints, logs")
    g.add_argument("--val_size", type=int, help="held-out problems from the training split for model selection")
    g.add_argument("--val_every", type=int, help="validate (greedy) every this many steps")
    g.add_argument("--val_cot_tokens", type=int, help="CoT cap at validation (512 in the paper's evaluation)")
    g.add_argument("--out", default=None, help="run folder; None: runs/<recipe>-<mode>-s<seed>")
    g.add_argument("--resume", action="store_true", help="continue from <out>/last; flags not passed: config.json's")
    g.add_argument("--overwrite", action="store_true",
                   help="start a new run in an --out that holds one, removing that run's checkpoints and logs")
    g.add_argument("--save_every", type=int, default=50, help="write <out>/last every this many steps")
    g.add_argument("--stop_after", type=int, default=None,
                   help="pause after this step (saving <out>/last); --resume continues the same schedule")
    g.add_argument("--seed", type=int, default=0, help="seed of everything random (data order, rollouts, toy model)")
    g.add_argument("--report_to", default="none", choices=report.TRACKERS, help="metrics.jsonl to a tracker too")
    g = p.add_argument_group("precision and memory (the policy: see `precision` below)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype of the weights the optimizer steps (master weights). bfloat16 halves their memory but "
                        "rounds away most AdamW updates at the paper's learning rates (an update below half a bf16 "
                        "step of its weight is lost): the run then trains far less than its logs suggest")
    g.add_argument("--compute_dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="dtype of the transformer's matmuls: auto = bfloat16 on GPU, float32 on CPU. The LM head, "
                        "the CoT mixture and every log-probability stay fp32 whatever this says")
    g.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=False,
                   help="shard parameters, gradients and optimizer states over the processes (FSDP2); needed for "
                        "Llama-3.1-8B on 80 GB GPUs (the memory plan printed at start says when)")
    g.add_argument("--grad_ckpt", action=argparse.BooleanOptionalAction, default=False,
                   help="activation checkpointing in the re-scoring forward: less memory, ~1/3 more compute")
    g.add_argument("--loss_terms", default="both", choices=["both", "cot", "answer"],
                   help="ablation: which sampled steps enter l of Eq. 13 (both = the method; cot / answer = one term)")
    g.add_argument("--rescore_tol", type=float, default=1.0,
                   help="leave out of the loss any sampled step whose re-scored log-prob differs from the "
                        "rollout's by more than this many nats (numerical drift; counted as rescore_mismatch)")
    return p


def run_folder(args):
    return args.out or f"runs/{args.recipe}-{args.mode}-s{args.seed}"


def parse_args(argv=None):
    p = build_parser()
    p.set_defaults(**recipes.recipe_of(argv, default="llama3b-gsm8k")[1])
    args = p.parse_args(argv)
    if args.resume:   # the run's own settings (config.json) are the defaults: `--out DIR --resume` continues it
        p.set_defaults(**{k: v for k, v in runs.resume_defaults(run_folder(args)).items() if k in vars(args)})
        args = p.parse_args(argv)
    if args.mode not in softcot.MODES:
        p.error(f"--mode {args.mode!r}: use one of {', '.join(softcot.MODES)}")
    args.tau = softcot.TRAIN_TAU[args.mode] if args.tau is None else args.tau
    args.gamma = softcot.GAMMA if args.gamma is None else args.gamma
    if args.dtype == "bfloat16" and args.compute_dtype == "float32":
        p.error("--compute_dtype float32 with --dtype bfloat16: bf16 weights cannot compute in fp32; "
                "use --dtype float32 (the default)")
    args.out = run_folder(args)
    validate_args(p, args)
    return args


def validate_args(p, args):
    """Every flag checked before any model, data or process group is touched: a bad value ends the run at once
    with one line naming the flag (p.error: exit code 2), not minutes later inside a step."""
    def need(ok, flag, what):
        if not ok:
            p.error(f"--{flag} {getattr(args, flag)}: {what}")

    for flag in ("prompts_per_step", "micro_batch", "max_cot_tokens", "max_answer_tokens", "steps", "val_size",
                 "val_every", "val_cot_tokens", "save_every"):
        need(getattr(args, flag) >= 1, flag, "pass a whole number >= 1")
    need(args.samples >= 2, "samples", "pass >= 2: RLOO's baseline leaves one sample out (Eq. 12)")
    need(args.warmup >= 0, "warmup", "pass a number of steps >= 0")
    need(args.stop_after is None or 1 <= args.stop_after <= args.steps, "stop_after",
         f"pass a step from 1 to --steps ({args.steps})")
    need(0 <= args.seed < 2 ** 31, "seed", "pass a whole number from 0 to 2^31 - 1")
    finite = math.isfinite
    need(finite(args.lr) and args.lr > 0, "lr", "pass a learning rate > 0")
    # hard: tau is the sampling temperature, and a greedy CoT (0) has no log-probability to train;
    # soft / fuzzy: tau 0 is the argmax mixture, still trainable through the noise
    need(finite(args.tau) and (args.tau > 0 if args.mode == "hard" else args.tau >= 0), "tau",
         "pass a CoT temperature > 0 (>= 0 for soft / fuzzy)")
    need(finite(args.gamma) and (args.gamma > 0 or args.mode == "hard"), "gamma",
         "pass a noise scale > 0: soft and fuzzy training learn through the noise (Eq. 10)")
    need(finite(args.answer_temperature) and args.answer_temperature > 0, "answer_temperature",
         "pass a temperature > 0: greedy answers have no log-probability to train")
    for flag in ("weight_decay", "grad_clip", "embed_lr_scale"):
        need(finite(getattr(args, flag)) and getattr(args, flag) >= 0, flag, "pass a number >= 0")
    need(args.top_k is None or (args.top_k >= 1 and args.mode != "hard"), "top_k",
         "pass a whole number >= 1, with --mode soft or fuzzy (the top-k mixture ablation)")
    need(args.rescore_tol > 0, "rescore_tol", "pass a tolerance in nats > 0 (inf: never leave a step out)")
    world = int(os.environ.get("WORLD_SIZE", 1))    # torchrun sets it before this process starts
    N = args.prompts_per_step * args.samples
    need(N % world == 0, "prompts_per_step",
         f"the global batch ({args.prompts_per_step} prompts x {args.samples} samples = {N}) must be divisible by "
         f"the number of processes ({world})")
    problem = recipes.model_problem(args.model)
    if problem:
        p.error(f"--model {args.model}: {problem}")
    trainable = recipes.trainable_datasets()
    need(args.dataset in trainable, "dataset", f"pass one of {', '.join(trainable)}")
    if args.data_path is not None:
        # the toy problems are generated (toy.py): a file given with them would be ignored, so it is refused;
        # the same file trains the toy model through the GSM8K loader with --dataset gsm8k
        need(args.dataset != "toy", "data_path", "the toy dataset is generated and reads no file; to train on "
             "a GSM8K-schema file pass --dataset gsm8k --data_path FILE")
        need(os.path.isfile(args.data_path), "data_path", "no such file; pass a local json/jsonl/parquet file")
    need(not (args.resume and args.overwrite), "overwrite", "--resume continues the run in --out, --overwrite "
         "replaces it: pass one of them")
    problem = runs.out_problem(args.out, vars(args), rank0=int(os.environ.get("RANK", 0)) == 0)
    if problem:
        p.error(problem)
    problem = recipes.cache_problem(args.model, args.seed) or report.missing(args.report_to) or \
        recipes.revision_problem(args.model, args.model_revision, args.dataset, args.data_path, args.data_revision)
    if problem:
        p.error(problem)


# `-h` answers before torch and transformers are imported (5-7 s): the parser above needs only the light modules
if __name__ == "__main__" and ("-h" in sys.argv or "--help" in sys.argv):
    parse_args()

import torch                                # noqa: E402 (after the -h answer above)
import torch.distributed as dist            # noqa: E402
from tqdm import tqdm                       # noqa: E402
from transformers.utils import logging      # noqa: E402

import checkpoints                          # noqa: E402
import memory                               # noqa: E402
import plots                                # noqa: E402
import rewards                              # noqa: E402
import rloo                                 # noqa: E402
import runs                                 # noqa: E402
import runtime                              # noqa: E402
import softcot                              # noqa: E402


# ------------------------------------------------------------------------------------------------ set-up
def prepare_model(args, rank, world, device, train_rows, val):
    """The memory plan and every prompt's length, checked before any weight is read, then the model
    (runtime.load_model's four) and the plan. A resumed run loads its newest complete checkpoint; a new one the
    --model (made first for the toy worlds)."""
    path = runs.resume_checkpoint(args.out, rank, world) if args.resume else \
        recipes.model_path(args.model, args.seed, rank, world, args.model_revision)
    config = runtime.load_config(path)
    plan = memory.plan(config, args, world, device)   # the config only: no weights read yet
    if rank == 0:
        print(memory.describe(plan))
    if not memory.fits(plan):
        raise SystemExit(memory.advice(plan, args))
    tok, n = runtime.load_tokenizer(path), getattr(config, "max_position_embeddings", None)
    for rows, cot in ((train_rows, args.max_cot_tokens), (val, args.val_cot_tokens)):   # a rollout must fit
        if problem := recipes.check_prompt_lengths(rows, tok, args.prompt, cot, args.max_answer_tokens, n):
            raise SystemExit(problem)
    return path, *runtime.load_model(path, device, rank, world, dtype=args.dtype, compute_dtype=args.compute_dtype,
                                     fsdp=args.fsdp, grad_ckpt=args.grad_ckpt, tok=tok), plan


def make_optimizer(args, model):
    """AdamW (App. D) with the embeddings' own learning rate (--embed_lr_scale), linear warm-up, cosine decay."""
    emb = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    groups = [[p for p in model.parameters() if id(p) not in emb], [p for p in model.parameters() if id(p) in emb]]
    opt = torch.optim.AdamW([{"params": groups[0]}, {"params": groups[1], "lr": args.lr * args.embed_lr_scale}],
                            lr=args.lr, weight_decay=args.weight_decay)
    warm = args.warmup
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, args.steps - warm))))
    return opt, sched


def restore(args, path, scorer, opt, sched, rank0):
    """--resume: the optimizer, schedule and counters of the checkpoint at `path`, and the logs cut back to its
    step. Returns (start step, best, skipped, sigma)."""
    st = checkpoints.load_trainer_state(path)
    runtime.load_optimizer_state(scorer, opt, st["optimizer"], args.fsdp)
    sched.load_state_dict(st["scheduler"])
    if rank0:
        runs.trim_logs(args.out, st["step"])
    return st["step"], st["best"], st["skipped"], st["sigma"]


def describe_run(args, world, sigma, n_train, n_val, run_id, data_sha256, device, plan):
    """Rank 0: the settings (a line per group of flags) and the batch layout; a new run's settings in config.json
    (what --resume reads), with its id (every checkpoint carries it), its data's digest (a resume on edited data is
    refused), its memory plan in GiB (to set beside metrics.jsonl's measured `peak_gib` on a GPU) and where it ran
    (runs.provenance). A resume never rewrites it: resumes.jsonl says what it changed."""
    N = args.prompts_per_step * args.samples
    print(recipes.settings_lines(build_parser(), vars(args)))
    print(f"global batch: {args.prompts_per_step} prompts x {args.samples} samples = {N} sequences per step; "
          f"{world} process(es) x {N // world} sequences, re-scored in micro-batches of {args.micro_batch}\n"
          f"mode {args.mode}: tau {args.tau}, sigma {sigma:.4g} ({args.gamma} x RMS(E)); "
          f"{n_train} training problems, {n_val} validation")
    if args.fsdp and world == 1:
        print("--fsdp on one process: nothing to shard; running it anyway (the code path of 8 GPUs)")
    if not args.resume:
        with open(os.path.join(args.out, "config.json"), "w") as f:
            json.dump(vars(args) | dict(sigma=sigma, world_size=world, run_id=run_id, data_sha256=data_sha256,
                                        memory_plan_gib=memory.gib(plan)) | runs.provenance(device), f, indent=1)


# ------------------------------------------------------------------------------------------------ one step
def step_batch(args, train_rows, step, rows_mine):
    """This rank's prompts and gold answers at `step`: B problems drawn by the step's RNG (recipes.batch_rng),
    each repeated G times (prompt-major rows), then this rank's slice of the N rows."""
    batch = recipes.batch_rng(args.seed, step).sample(train_rows, args.prompts_per_step)
    rows = [batch[i // args.samples] for i in range(args.prompts_per_step * args.samples)][rows_mine]
    return [recipes.prompt_text(args.prompt, r["question"]) for r in rows], [r["answer"] for r in rows]


def policy_gradient_step(model, scorer, opt, ro, adv, num_global, world, micro_batch, grad_clip, ctx=nullcontext(),
                         rescore_tol=float("inf"), loss_terms="both"):
    """Eq. 14-15 on this rank's rollouts: accumulate -P * sum(A * l) / N over micro-batches, then one update.

    ro: this rank's Rollout (n rows); adv: (n,) advantages. DDP and FSDP average gradients over the P ranks, and the
    factor P in rloo_loss makes that average the single-process gradient of Eq. 15 (rloo.py). Steps whose re-scored
    log-prob drifted from the rollout's by more than rescore_tol are left out (softcot.drifted_steps). Returns the
    gradient norm before clipping, whether the update was applied (False if not finite), and the drifted steps.
    loss_terms: "both" (the method), or "cot" / "answer" to keep one term of l only (an ablation).
    """
    n = len(adv)
    chunks = [list(range(i, min(i + micro_batch, n))) for i in range(0, n, micro_batch)]
    drifted = 0
    for k, rows in enumerate(chunks):
        with runtime.no_sync(scorer, last=k == len(chunks) - 1):   # DDP: one all-reduce, after the last chunk
            mb = ro.select(rows)
            with ctx:
                lp = scorer(mb)                                                        # (m, S) Eq. 9-10
            drift = softcot.drifted_steps(lp, mb, rescore_tol)                         # (m, S) bool
            drifted += int(drift.sum())
            drop = drift if loss_terms == "both" else \
                drift | (mb.kind == (softcot.ANSWER if loss_terms == "cot" else softcot.COT))   # ablation: one term
            logp = lp.masked_fill(drop, 0.0).sum(-1)                                   # (m,) Eq. 13
            loss = rloo.rloo_loss(logp, adv[rows], num_global, world)                  # Eq. 14
            loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):   # FSDP: a DTensor, already the norm over all shards
        norm = norm.full_tensor()
    ok = bool(torch.isfinite(norm))    # grads are reduced, so every rank sees the same norm and decision
    if ok:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return norm.item(), ok, drifted


def step_metrics(ro, sc, r_all, drifted, world, device):
    """A step's diagnostics (docs/metrics.md), summed over the ranks' rows: per sequence, or a count (COUNTS)."""
    cot = ro.cot_len.clamp(min=1).float()
    sums = dict(accuracy=sum(sc.correct), boxed=sum(sc.boxed), grader_errors=sc.grader_errors,
                cap_rate=sum(r == "cap" for r in ro.stop_reason), eos_rate=sum(r == "eos" for r in ro.stop_reason),
                cot_len=ro.cot_len.sum().item(), answer_len=ro.answer_len.sum().item(),
                cot_entropy=(ro.entropy.sum(1) / cot).sum().item(),
                noise_ratio=(ro.noise_ratio.sum(1) / cot).sum().item(), rescore_mismatch=drifted)
    totals = runtime.all_sum(torch.tensor(list(sums.values()), device=device, dtype=torch.float64), world).tolist()
    m = {k: t if k in COUNTS else t / r_all.numel() for k, t in zip(sums, totals)}
    m["rescore_mismatch"] = round(m["rescore_mismatch"])
    return dict(reward=r_all.mean().item(), reward_std=r_all.std(correction=0).item()) | m | \
        dict(zero_adv_frac=rloo.zero_advantage_fraction(r_all))


COUNTS = ("grader_errors", "rescore_mismatch")   # step_metrics' totals over the step's N rollouts, not means


@torch.no_grad()
def validate(args, model, tok, val, rank, world, ctx=nullcontext()):
    """Greedy validation (Sec. 4): hard = greedy CoT; soft/fuzzy = CoT at the training tau without noise;
    answers greedy. Sharded over ranks, counts all-reduced."""
    mine = val[rank::world]
    correct = torch.zeros(2, device=model.device)
    for i in range(0, len(mine), 256):
        rows = mine[i:i + 256]
        with ctx:
            ro = softcot.rollout(model, tok, [recipes.prompt_text(args.prompt, r["question"]) for r in rows],
                                 mode=args.mode, tau=0.0 if args.mode == "hard" else args.tau,
                                 max_cot_tokens=args.val_cot_tokens, max_answer_tokens=args.max_answer_tokens,
                                 answer_temperature=0.0, top_k=args.top_k)
        s = rewards.score(ro.answer_text, [r["answer"] for r in rows])
        correct += torch.tensor([sum(s.correct), len(rows)], device=model.device, dtype=torch.float)
    c = runtime.all_sum(correct, world)
    return (c[0] / c[1]).item()


# ------------------------------------------------------------------------------------------------ run folder
def save_best(args, model, scorer, opt, tok, rank0, run_id, logs=None):
    """<out>/best: the weights only (every rank gathers under FSDP; rank 0 writes). logs: start metrics.jsonl and
    samples.jsonl afresh with this line (the base model's validation)."""
    weights, _ = runtime.gather_state(scorer, opt, args.fsdp, with_optimizer=False)
    if rank0:
        checkpoints.save_checkpoint(os.path.join(args.out, "best"), model, tok, weights=weights, run_id=run_id)
        if logs is not None:
            open(os.path.join(args.out, "metrics.jsonl"), "w").write(json.dumps(logs) + "\n")
            open(os.path.join(args.out, "samples.jsonl"), "w").close()


def save_last(args, model, scorer, opt, tok, rank0, state):
    """<out>/last: weights, optimizer and trainer state, for --resume; the previous one stays as last.prev/."""
    weights, opt_state = runtime.gather_state(scorer, opt, args.fsdp, with_optimizer=True)
    if rank0:
        checkpoints.save_checkpoint(os.path.join(args.out, "last"), model, tok, dict(optimizer=opt_state) | state,
                                    weights=weights, keep_previous=True, run_id=state["run_id"])


def log_step(args, m, sample, bar, best, tracker):
    """Rank 0: one line of metrics.jsonl (and of the tracker), one rollout in samples.jsonl, the progress bar."""
    with open(os.path.join(args.out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(m) + "\n")
    with open(os.path.join(args.out, "samples.jsonl"), "a") as f:
        f.write(json.dumps(dict(step=m["step"]) | sample) + "\n")
    tracker.log(m)
    bar.set_postfix(reward=f"{m['reward']:.1f}", acc=f"{m['accuracy']:.2f}", val=f"{best:.2f}",
                    gnorm=f"{m['grad_norm']:.3g}", cot=f"{m['cot_len']:.0f}",
                    **({"mismatch": m["rescore_mismatch"]} if m["rescore_mismatch"] else {}))


# ------------------------------------------------------------------------------------------------ the loop
def main(argv=None):
    t_start = time.time()
    args = parse_args(argv)
    if int(os.environ.get("RANK", 0)) == 0:   # --out is this run's until it exits (runs.claim_run)
        runs.claim_run(args.out, args.overwrite)
    rank, world, device = runtime.setup_distributed()
    logging.disable_progress_bar()   # transformers' and the hub's loading and saving bars would cut through tqdm's
    if device.type == "cpu":
        # The backward of E[ids] (index_put with accumulate) adds rows in thread order on CPU: with 2 threads two
        # runs of one command differed at step 6. Its deterministic kernel makes a CPU run repeat bit for bit.
        torch.use_deterministic_algorithms(True)
    rank0 = rank == 0
    print0 = print if rank0 else (lambda *a, **k: None)
    torch.manual_seed(args.seed)
    try:   # the data first: a bad file ends the run in one line before any model is loaded
        train_rows, val = recipes.load_problems(args.dataset, args.out, args.seed, args.val_size, args.data_path,
                                                args.prompts_per_step, args.data_revision)
    except (ValueError, RuntimeError) as e:   # a bad file; the hub out of reach
        raise SystemExit(str(e)) from None
    data_sha256 = data.data_digest(train_rows + val)
    if args.resume:
        runs.check_data(args.out, data_sha256)
    path, model, scorer, rollout_lm, tok, plan = prepare_model(args, rank, world, device, train_rows, val)
    ctx = runtime.compute_context(device, runtime.dtypes(args.dtype, args.compute_dtype, device)[1])
    run_id = runs.run_id(args.out) if args.resume else runs.new_run_id()   # only rank 0's is ever written
    opt, sched = make_optimizer(args, model)
    # sigma once, from the base model (the rollout model: under FSDP the only one with the whole of E on each rank)
    sigma = softcot.noise_sigma(rollout_lm, args.gamma) if args.mode != "hard" else 0.0
    start, best, skipped = 0, -1.0, 0
    if args.resume:
        start, best, skipped, sigma = restore(args, path, scorer, opt, sched, rank0)
        if rank0:
            runs.record_resume(args.out, vars(args), world, start)
    t_run = t_start - (runs.logged_time(args.out) if args.resume and rank0 else 0.0)   # `time` goes on across resumes
    N = args.prompts_per_step * args.samples
    rows_mine = rloo.rank_slice(N, rank, world)                                    # this rank's rows of the N
    last_dir, best_dir = os.path.join(args.out, "last"), os.path.join(args.out, "best")
    if rank0:
        describe_run(args, world, sigma, len(train_rows), len(val), run_id, data_sha256, device, plan)
    tracker = report.open_tracker(args.report_to if rank0 else "none", args.out)
    if start == 0:   # the base model's validation: the bar to beat, and best/ until something beats it
        best = validate(args, rollout_lm, tok, val, rank, world, ctx)
        print0(f"step 0 (base model): greedy validation accuracy {best:.3f}")
        first = dict(step=0, val_acc=best, time=time.time() - t_run)
        save_best(args, model, scorer, opt, tok, rank0, run_id, logs=first)
        tracker.log(first)

    stop_signal = runs.catch_stop_signals(world, device)
    last_step, stop = start, 0   # the last step this process ran (the summary's count); the signal that ended it
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not rank0, dynamic_ncols=True)
    for step in bar:
        t0 = time.time()
        # ---- 1. rollouts (no grad) of this rank's rows; eval(): no dropout in the policy that samples
        prompts, golds = step_batch(args, train_rows, step, rows_mine)
        gen = torch.Generator(device).manual_seed(recipes.rollout_seed(args.seed, step, rank))
        model.eval()
        with ctx:
            ro = softcot.rollout(rollout_lm, tok, prompts, mode=args.mode, tau=args.tau, sigma=sigma,
                                 max_cot_tokens=args.max_cot_tokens, max_answer_tokens=args.max_answer_tokens,
                                 answer_temperature=args.answer_temperature, top_k=args.top_k, generator=gen)
        t1 = time.time()
        # ---- 2-3. rewards (Eq. 11); every rank needs the whole (B, G) matrix for the leave-one-out baselines
        # (Eq. 12), and a group may straddle two ranks: each fills its slots of a zero vector, all-reduce sums them
        sc = rewards.score(ro.answer_text, golds)
        r_all = torch.zeros(N, device=device)
        r_all[rows_mine] = torch.tensor(sc.rewards, device=device)
        r_all = runtime.all_sum(r_all, world).view(args.prompts_per_step, args.samples)  # (B, G)
        adv = rloo.rloo_advantages(r_all).view(-1)[rows_mine]                             # (n,)
        t2 = time.time()
        # ---- 4-5. re-score with gradient, update (Eq. 14-15); a skipped update still advances the schedule
        model.train()
        gnorm, ok, drifted = policy_gradient_step(model, scorer, opt, ro, adv, N, world, args.micro_batch,
                                                  args.grad_clip, ctx, args.rescore_tol, args.loss_terms)
        runtime.sync_rollout_model(model, rollout_lm)   # FSDP: the next rollout samples from the updated weights
        sched.step()
        skipped += not ok
        m = dict(step=step + 1, lr=sched.get_last_lr()[0]) | step_metrics(ro, sc, r_all, drifted, world, device) | \
            dict(grad_norm=gnorm, skipped=skipped, t_rollout=t1 - t0, t_reward=t2 - t1, t_update=time.time() - t2)
        m["tokens_per_s"] = N * (m["cot_len"] + m["answer_len"]) / (time.time() - t0)   # sampled, then re-scored
        if (peak := runtime.peak_memory(device, world)) is not None:   # CUDA only: the plan's check in practice
            m["peak_gib"] = peak
        # ---- 6. greedy validation; the best checkpoint is the paper's model selection
        if (step + 1) % args.val_every == 0 or step + 1 == args.steps:
            m["val_acc"] = validate(args, rollout_lm, tok, val, rank, world, ctx)
            if m["val_acc"] > best:
                save_best(args, model, scorer, opt, tok, rank0, run_id)
            best = m["val_best"] = max(best, m["val_acc"])
        m["time"] = time.time() - t_run
        if rank0:
            log_step(args, m, dict(prompt=prompts[0], cot=ro.cot_text[0], answer=ro.answer_text[0],
                                   reward=sc.rewards[0], gold=golds[0], stop=ro.stop_reason[0]), bar, best, tracker)
        stop = stop_signal()
        last_step = step + 1
        pause = step + 1 == args.stop_after or stop
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps or pause:
            save_last(args, model, scorer, opt, tok, rank0,
                      dict(scheduler=sched.state_dict(), step=step + 1, best=best, skipped=skipped, sigma=sigma,
                           run_id=run_id))
        runtime.barrier(world)   # the other ranks wait for rank 0's checkpoint: a kill never finds them a step ahead
        if pause:
            bar.close()   # the bar's line ends before the message
            print0(f"{'stopped by ' + signal.Signals(stop).name if stop else 'paused'} after step {step + 1}, "
                   f"saved in {last_dir}; continue with:\n  {runs.resume_command(vars(args), world)}", flush=True)
            break
    runs.restore_signals()
    if rank0:
        tracker.close()
        plots.plot_training([os.path.join(args.out, "metrics.jsonl")], os.path.join(args.out, "training.png"))
        print(runs.run_summary(args.out, time.time() - t_start, last_step - start) +
              f"; {skipped} skipped updates; best checkpoint in {best_dir}, curves in training.png", flush=True)
        runs.release_run(args.out)
    if world > 1:
        # DDP's Reducer, FSDP2's modules and the sharded optimizer state hold the process group: freed after it,
        # gloo's destructor waited for its threads under the GIL (a hang, once) or aborted at exit (once). Freed
        # first, and with both ranks at the barrier, destroy_process_group is the last reference.
        del model, scorer, rollout_lm, opt, sched
        dist.barrier()
        dist.destroy_process_group()
    if stop == signal.SIGINT:
        raise KeyboardInterrupt   # exit 130 below
    if stop == signal.SIGTERM:
        sys.exit(128 + signal.SIGTERM)   # 143: the shell's code for "terminated", after the save


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:   # a first Ctrl-C in the loop saved last/ and said how to resume; no traceback
        print("interrupted", file=sys.stderr)
        sys.exit(130)           # the shell's status for an interrupt: a `for` loop of runs stops here too
