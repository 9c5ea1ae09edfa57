"""
memory.py: the memory plan. Bytes per GPU that a training run will need, printed by train.py before it loads any
weights, so that a run that cannot fit stops at once with the flag that fixes it, not after minutes of loading.

Paper: Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170), Sec. 4 / App. D: Llama-3.2-3B, Llama-3.1-8B and
Qwen-2.5-3B trained on one node of 8 x 80 GB GPUs. The plan counts, for one process:
- parameters, gradients and the two AdamW states, all in the master dtype (fp32: 4 + 4 + 8 = 16 bytes per
  parameter), divided by the process count under --fsdp;
- the compute-dtype copies: autocast's cached bf16 weights (DDP), or under FSDP the rollout copy on every rank
  (bf16 decoder layers, fp32 E and head) plus the gathered weights being computed (fp32 E and head, two bf16
  layers);
- the larger of the two phases' working memory: the rollout (KV cache of this rank's N / P rows, fp32 logits of
  one step) and the re-score of one micro-batch (activations saved for backward, fp32 logits over the answer and
  CoT positions, the mixture's p at soft CoT steps).
The static parts are exact (a test checks them against the tensors torch allocates); activations are an estimate
from the tensors a Llama layer saves for backward (a test compares it with the profiler on a small model). The gate
keeps a headroom free on top of the plan (`headroom`: the CUDA context, NCCL's buffers, fragmentation).

    python memory.py                                     # the paper's three models on 8 x 80 GB, DDP and FSDP
    python memory.py --model meta-llama/Llama-3.1-8B-Instruct --world 8 --fsdp --micro_batch 2
    python memory.py --disk                              # the run folder's size on disk, per paper model
"""

import argparse
import os

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, Qwen2Config

import recipes
import softcot

# Published shapes of the paper's models, so that the plan needs no download (memory.py's table, the README, docs/training.md).
PAPER_MODELS = {
    "meta-llama/Llama-3.2-3B-Instruct": LlamaConfig(
        vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, tie_word_embeddings=True),
    "meta-llama/Llama-3.1-8B-Instruct": LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, tie_word_embeddings=False),
    "Qwen/Qwen2.5-3B-Instruct": Qwen2Config(
        vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
        num_key_value_heads=2, tie_word_embeddings=True),
}
PROMPT_TOKENS = 512     # the longest prompt we plan for: App. B's prompt with a long MATH problem stays below it
PREFILL_TOKENS = 16     # " The final answer is: \boxed{" in any of these vocabularies
GiB = 2**30
CARD_80GB = 79.2 * GiB  # what torch reports as total_memory for the paper's 80 GB cards (A100 / H100 80GB)

# What a GPU process holds beyond the plan's tensors, kept free by the gate. Estimates (a CPU cannot measure them;
# scripts/gpu_check.py prints what the CUDA context takes on a real GPU): the CUDA context with torch's kernels
# (~0.5-1 GiB), NCCL's communicator buffers with more than one process (NCCL_BUFFSIZE, 4 MiB, per channel and
# peer: up to ~1 GiB on 8 GPUs), and the caching allocator's fragmentation (reserved, not allocated: 5% of the plan).
CONTEXT, NCCL, FRAGMENTATION = 1 * GiB, 1 * GiB, 0.05


def headroom(total, world):
    return int(CONTEXT + (NCCL if world > 1 else 0) + FRAGMENTATION * total)


def shape(config):
    """(parameters, parameters of the largest decoder layer, of the embedding matrices), counted on the meta device:
    exact for any architecture, tied embeddings counted once, no memory used."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    layer = max(sum(p.numel() for p in m.parameters()) for m in model.model.layers)
    emb = {id(model.get_input_embeddings().weight): model.get_input_embeddings().weight.numel(),
           id(model.get_output_embeddings().weight): model.get_output_embeddings().weight.numel()}
    return total, layer, sum(emb.values())


def plan(config, args, world, device, prompt_tokens=PROMPT_TOKENS):
    """Bytes per process for `args` (train.py's parsed flags, or gpu_run's) on `world` processes; 'device' is what
    the device has."""
    n_param, n_layer, n_emb = shape(config)
    master = softcot.resolve_dtype(args.dtype, device).itemsize                  # bytes per weight
    compute = min(master, softcot.resolve_dtype(args.compute_dtype, device).itemsize)
    shards = world if args.fsdp else 1
    d, V, L = config.hidden_size, config.vocab_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or d // config.num_attention_heads
    kv = config.num_key_value_heads * head_dim
    ff = config.intermediate_size

    p = {}
    p["parameters"] = -(-n_param // shards) * master
    p["gradients"] = p["parameters"]
    p["optimizer"] = 2 * p["parameters"]                     # AdamW's exp_avg and exp_avg_sq, in the master dtype
    if args.fsdp:      # the rollout copy (fp32 E and head) + the gathered fp32 E/head + two gathered layers (one
        # prefetched); runtime.load_fsdp's precision policy
        p["compute copies"] = (n_param - n_emb) * compute + n_emb * 4 + \
            ((n_emb * master + 2 * n_layer * compute) if shards > 1 else 0)
    else:              # autocast keeps a bf16 copy of every weight it has cast during a forward
        p["compute copies"] = n_param * compute if compute < master else 0
    rows = args.prompts_per_step * args.samples // world     # this rank's rollouts
    S = args.max_cot_tokens + PREFILL_TOKENS + args.max_answer_tokens
    T = prompt_tokens + S
    # rollout: K and V of every layer for each row and position; fp32 logits, softmax and cdf of one step
    rollout = rows * T * L * 2 * kv * compute + 3 * rows * V * 4
    # re-score: per token and layer, the tensors a Llama layer saves for backward: the two RMSNorm inputs (fp32),
    # the normed inputs, q, k, v, attention output, the residual, gate, up, silu(gate) and their product
    mb = min(args.micro_batch, rows)
    per_token_layer = 8 * d + compute * (6 * d + 2 * kv + 4 * ff)
    if args.grad_ckpt:   # only each layer's input is kept; one layer is recomputed at a time
        acts = mb * T * (L * d * compute + per_token_layer)
    else:
        acts = mb * T * L * per_token_layer
    # fp32 logits at the S generated positions: the logits, their log-softmax and its gradient; soft CoT steps
    # add p = softmax(logits / tau)
    logits = mb * S * V * 4 * (3 + (args.mode != "hard"))
    # backward: the (V, d) gradients of the embedding lookup and of the head, before they are added into E's
    grad_tmp = 2 * V * d * 4
    p["activations"] = max(rollout, acts + logits + grad_tmp)     # the two phases do not overlap
    p["total"] = sum(p.values())
    p["headroom"] = headroom(p["total"], world)
    p["device"] = device_bytes(device, world)
    p["_rollout"], p["_rescore"] = rollout, acts + logits + grad_tmp
    return p


def gib(p):
    """The plan's public parts in GiB, two decimals (config.json's `memory_plan_gib`)."""
    return {k: round(v / GiB, 2) for k, v in p.items() if not k.startswith("_")}


def fits(p):
    """The gate: the plan and its headroom within what the device has."""
    return p["total"] + p["headroom"] <= p["device"]


def device_bytes(device, world):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))   # CPU processes on one machine share its memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // local


def describe(p):
    parts = ", ".join(f"{k} {p[k] / GiB:.1f}" for k in ("parameters", "gradients", "optimizer", "compute copies"))
    return (f"memory plan per process (GiB): {parts}, activations {p['activations'] / GiB:.1f} (rollout "
            f"{p['_rollout'] / GiB:.1f}, re-score {p['_rescore'] / GiB:.1f}) = {p['total'] / GiB:.1f}, "
            f"+ {p['headroom'] / GiB:.1f} headroom (context, NCCL, fragmentation), of {p['device'] / GiB:.1f}")


def advice(p, args):
    """Why the run cannot fit, and the flags that would make it fit, in the order to try them."""
    fixes = []
    if not args.fsdp:
        fixes.append("--fsdp (shards parameters, gradients and optimizer states over the processes)")
    if p["_rescore"] >= p["_rollout"] and args.micro_batch > 1:
        fixes.append(f"a smaller --micro_batch (now {args.micro_batch}; it only trades time for memory)")
    if not args.grad_ckpt:
        fixes.append("--grad_ckpt (activation checkpointing)")
    if p["_rollout"] > p["_rescore"]:
        fixes.append("more processes, or fewer --samples per step (the rollout holds a KV cache per row)")
    return (f"this run needs about {p['total'] / GiB:.1f} GiB per process, + {p['headroom'] / GiB:.1f} GiB of "
            f"headroom, and the device has "
            f"{p['device'] / GiB:.1f} GiB. Try: " + "; or ".join(fixes or ["a larger device"]))


def gpu_run(recipe, **flags):
    """The settings plan() reads, as train.py would parse them for `recipe` on GPUs: the recipe's row, train.py's
    defaults (fuzzy, fp32 master weights, no sharding) with bf16 compute (auto's choice on a GPU), and `flags`."""
    return argparse.Namespace(**dict(mode="fuzzy", dtype="float32", compute_dtype="bfloat16", fsdp=False,
                                     grad_ckpt=False) | recipes.RECIPES[recipe] | flags)


def table(device=CARD_80GB, world=8):
    """Markdown: the paper's recipes on `world` GPUs of `device` bytes each (what torch reports), fp32 masters +
    bf16 compute, DDP and FSDP; `fits` is train.py's gate (plan + headroom)."""
    rows = ["| recipe | sharding | params | grads | AdamW | compute copies | activations | total | + headroom | fits |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for recipe in ("llama3b-gsm8k", "llama3b-math", "qwen3b-math", "llama8b-gsm8k"):
        for fsdp in (False, True):
            args = gpu_run(recipe, fsdp=fsdp)
            p = plan(PAPER_MODELS[args.model], args, world, torch.device("cpu"))
            p["device"] = device
            g = {k: f"{v / GiB:.1f}" for k, v in p.items()}
            rows.append(f"| {recipe} | {'FSDP' if fsdp else 'DDP'} | {g['parameters']} | {g['gradients']} | "
                        f"{g['optimizer']} | {g['compute copies']} | {g['activations']} | {g['total']} | "
                        f"{g['headroom']} | "
                        f"{'yes' if fits(p) else 'no'} |")
    return "\n".join(rows)


def checkpoint_table():
    """Markdown: the disk a run folder of each paper model takes (GB, 10^9 bytes, as disks are sold), fp32 masters:
    best/ holds the weights, last/ the weights and AdamW's two states, last.prev/ the last/ before it."""
    rows = ["| model | best/ (weights) | last/ (+ AdamW) | last.prev/ | run folder |", "|---|---|---|---|---|"]
    for name, config in PAPER_MODELS.items():
        weights = shape(config)[0] * 4
        last = 3 * weights
        rows.append(f"| {name.split('/')[1]} | {weights / 1e9:.1f} | {last / 1e9:.1f} | {last / 1e9:.1f} | "
                    f"{(weights + 2 * last) / 1e9:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="The memory plan of a training run, per process, in GiB.")
    ap.add_argument("--gpu_gib", type=float, default=CARD_80GB / GiB,
                    help="GPU memory in GiB as torch reports it (total_memory; an 80 GB A100 / H100: 79.2)")
    ap.add_argument("--world", type=int, default=8, help="processes (GPUs)")
    ap.add_argument("--model", default=None, help="a Hugging Face name or folder (default: the paper's table)")
    ap.add_argument("--recipe", default="llama3b-gsm8k", choices=sorted(recipes.RECIPES),
                    help="with --model: the batch shape and lengths (train.py's --recipe)")
    for flag in ("prompts_per_step", "samples", "micro_batch", "max_cot_tokens", "max_answer_tokens"):
        ap.add_argument(f"--{flag}", type=int, help="as train.py's (default: the recipe's)")
    ap.add_argument("--mode", choices=softcot.MODES, help="as train.py's (default fuzzy)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], help="master weights, as train.py's (float32)")
    ap.add_argument("--fsdp", action="store_true", help="as train.py's")
    ap.add_argument("--grad_ckpt", action="store_true", help="as train.py's")
    ap.add_argument("--disk", action="store_true", help="the disk a run folder of each paper model takes")
    args = ap.parse_args()
    if args.disk:
        print(checkpoint_table())
    elif args.model is None:
        print(table(int(args.gpu_gib * GiB), args.world))
    else:
        given = {k: v for k, v in vars(args).items() if v is not None and k not in ("gpu_gib", "world", "recipe")}
        run = gpu_run(args.recipe, **given)
        config = PAPER_MODELS.get(args.model) or AutoConfig.from_pretrained(args.model)
        p = plan(config, run, args.world, torch.device("cpu"))
        p["device"] = int(args.gpu_gib * GiB)
        print(describe(p))
        if not fits(p):
            print(advice(p, run))
