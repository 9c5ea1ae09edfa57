"""
runtime.py: where the model runs. Processes and collectives, the precision policy, loading a model and its
tokenizer, and FSDP2 sharding; every function takes named values, not a command line's namespace.

Paper: Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170), App. D (8 GPUs, Llama and Qwen models). None of
this is the method: it is what lets train.py and evaluate.py run the method on one CPU process or on 8 GPUs with
the same code. The precision policy is ours (the paper states none); docs/decisions.md says why.

    rank, world, device = runtime.setup_distributed()           # torchrun's environment, or one process
    lm, scorer, rollout_lm, tok = runtime.load_model(path, device, rank, world, dtype="float32",
                                                     compute_dtype="auto", fsdp=False, grad_ckpt=False)
    model, tok = runtime.load_for_inference(path, device, dtype="auto")   # evaluation: no optimizer
"""

import os
import signal
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

import softcot


# ------------------------------------------------------------------------------------------------ processes
def setup_distributed():
    """nanoGPT's rule: torchrun sets RANK; plain `python train.py` is one process. gloo on CPU, NCCL on GPU.
    Returns (rank, world size, device)."""
    if int(os.environ.get("RANK", -1)) == -1:
        return 0, 1, torch.device("cuda" if torch.cuda.is_available() else "cpu")
    orphan_gets_sigterm()
    cuda = torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    local = int(os.environ["LOCAL_RANK"])
    if cuda:
        torch.cuda.set_device(local)
    return dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu")


def orphan_gets_sigterm():
    """A torchrun worker whose launcher dies (SIGKILL, OOM killer) would train on as an orphan into the same run
    folder. Linux's PR_SET_PDEATHSIG sends it SIGTERM when its parent goes, and SIGTERM saves and exits (runs.py).
    Elsewhere nothing is set (no such call), and that case stays unhandled."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:   # the launcher died before the call: the signal will never come
        os.kill(os.getpid(), signal.SIGTERM)


def all_sum(t, world):
    """t summed over the ranks, in place (itself on one process)."""
    if world > 1:
        dist.all_reduce(t)
    return t


def broadcast_object(obj, world):
    """Rank 0's `obj` (any picklable value) on every rank: what one rank decided from files the others need not
    read again (the checkpoint to resume, the finished parts of an evaluation)."""
    if world > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        obj = box[0]
    return obj


def all_gather_object(obj, world):
    """[every rank's `obj`], in rank order, on every rank ([obj] on one process)."""
    if world == 1:
        return [obj]
    got = [None] * world
    dist.all_gather_object(got, obj)
    return got


def barrier(world):
    if world > 1:
        dist.barrier()


def peak_memory(device, world):
    """GiB: the most CUDA memory torch held on any rank since the last call (metrics.jsonl `peak_gib`, to set
    beside the memory plan), then the counters start again; None off CUDA, where torch keeps no such count."""
    if device.type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    if world > 1:   # one float per rank: a tensor all-reduce, not a pickled gather, on every step
        t = torch.tensor(peak, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        peak = t.item()
    return peak


# ------------------------------------------------------------------------------------------------ precision
# The precision policy. The optimizer steps fp32 master weights (--dtype): in bf16, an AdamW update smaller than
# half a bf16 step of its weight (~0.4% of it) rounds away, and at lr 3e-6 to 8e-6 most updates are that small.
# The transformer computes in bf16 on GPU (--compute_dtype): autocast over the fp32 weights, or FSDP's bf16
# compute copies. The LM head, the mixture p E and every log-probability are fp32 (softcot.FP32Head: at
# tau = 1e-4 a bf16 logit's rounding decides the token). CPU runs everything in fp32 unless told otherwise.
def dtypes(dtype, compute_dtype, device):
    """(master-weights dtype, compute dtype) as torch dtypes; 'auto' = bf16 on GPU, fp32 on CPU."""
    return softcot.resolve_dtype(dtype, device), softcot.resolve_dtype(compute_dtype, device)


def compute_context(device, compute):
    """Autocast to the compute dtype around forwards (not backwards). Under FSDP too: the decoder layers' bf16
    weights come from FSDP's gather, and autocast lets the rollout copy's bf16 layers take fp32 E's output."""
    return torch.autocast(device.type, dtype=compute, enabled=compute != torch.float32)


class Scorer(torch.nn.Module):
    """The re-score (softcot.sequence_logprobs, Eq. 9-10, 13) as one module forward. The mixture p E uses E outside
    the Hugging Face model's own forward, so DDP and FSDP must wrap this, not the model, to see that use of E."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, ro):
        return softcot.sequence_logprobs(self.lm, ro)                              # (n, S) fp32


# ------------------------------------------------------------------------------------------------ loading
def load_error(path, e):
    return SystemExit(f"could not load model {path!r} ({type(e).__name__}: {str(e).splitlines()[0]}); a gated "
                      "model needs `hf auth login` and its licence accepted; without hub access pass a local folder "
                      "(--model PATH), or run the whole method offline: python train.py --recipe tiny")


def load_config(path):
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise load_error(path, e)


def load_tokenizer(path):
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:       # Llama 3 ships without one; pads are masked, so any id works
        tok.pad_token = tok.eos_token
    return tok


def load_for_inference(path, device, dtype="auto"):
    """(model, tok) for evaluation: no optimizer, so the weights are in the compute dtype (auto: bf16 on GPU)
    with the fp32 head of the precision policy."""
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=softcot.resolve_dtype(dtype, device)).to(device)
        return softcot.use_fp32_head(model), load_tokenizer(path)
    except (OSError, ValueError) as e:
        raise load_error(path, e)


def load_model(path, device, rank, world, *, dtype, compute_dtype, fsdp, grad_ckpt, tok=None):
    """(lm, scorer, rollout_lm, tok) for training. lm: the Hugging Face model the optimizer steps (master weights
    in `dtype`); scorer: what the loss calls (DDP or FSDP around Scorer(lm)); rollout_lm: what generates (lm
    itself, or under FSDP a full compute-dtype copy on every rank, refreshed after each update by
    `sync_rollout_model`)."""
    master_dtype, compute = dtypes(dtype, compute_dtype, device)
    try:
        tok = load_tokenizer(path) if tok is None else tok   # a 128k-token vocabulary loads in seconds
        if fsdp:
            lm, scorer, rollout_lm = load_fsdp(path, device, rank, master_dtype, compute)
        else:
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=master_dtype).to(device)
    except (OSError, ValueError) as e:
        raise load_error(path, e)
    if not fsdp:
        softcot.use_fp32_head(lm)
        scorer = Scorer(lm)
        if world > 1:   # gradient_as_bucket_view: the gradients live in DDP's buckets, not in a second copy
            scorer = torch.nn.parallel.DistributedDataParallel(scorer, gradient_as_bucket_view=True)
        rollout_lm = lm
    if grad_ckpt:
        lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return lm, scorer, rollout_lm, tok


# ------------------------------------------------------------------------------------------------ FSDP2
# --fsdp: every decoder layer, then the rest (embeddings, final norm, head), is sharded over the P processes:
# each holds 1/P of the fp32 weights, gradients and AdamW states, and gathers a layer's full weights only while it
# computes with it. The decoder layers are gathered in the compute dtype (MixedPrecisionPolicy: bf16 on GPU) and
# run under the same autocast as DDP; the root's E, final norm and head are gathered in the master dtype, fp32:
# the precision policy's fp32 head and fp32 p E (a bf16 E would round p and p E to bf16 in the mixture).
# Gradients are reduced in fp32. Rollouts do not go through the
# shards: rows stop at different steps on different ranks, and a sharded forward needs every rank to take part
# in every step. Each rank instead generates with a plain full copy of the model, refreshed from the shards after
# every update, so a rollout has no collective and cannot hang: its decoder layers in the compute dtype (2 bytes a
# parameter in bf16: the memory that makes 8B fit), its E, head and norms fp32 like the shards' root (the drift
# between the bf16 copy and the re-score is what the --rescore_tol guard counts; docs/training.md measures it).
# Every collective of a step (the refresh, the rewards, each micro-batch's forward and backward) runs the same
# number of times on every rank: each holds N / P rows (checked at start).
def fsdp_layers(lm):
    try:
        return list(softcot.unwrap(lm).model.layers)
    except AttributeError:
        raise SystemExit(f"--fsdp shards each decoder layer at model.layers; {type(lm).__name__} has none")


def load_generation_config(lm, path):
    """A model built with from_config has a generation config derived from config.json alone: Qwen2.5's
    config.json names one EOS (151645), its generation_config.json two (151645, 151643), and softcot's rollout
    stops at both. So the folder's own file is loaded, and checkpoints saved from this model keep it."""
    try:
        lm.generation_config = GenerationConfig.from_pretrained(path)
    except OSError:   # a folder without generation_config.json: the one from_config derived is all there is
        pass


def load_fsdp(path, device, rank, master_dtype, compute):
    """Rank 0 reads the checkpoint; the others build the model's shape without memory, and the weights are
    broadcast into everyone's shards. Returns (lm, scorer, rollout_lm)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    config = AutoConfig.from_pretrained(path)
    full = AutoModelForCausalLM.from_pretrained(path, dtype=master_dtype) if rank == 0 else None
    with torch.device("meta"):
        lm = AutoModelForCausalLM.from_config(config, dtype=master_dtype)
    load_generation_config(lm, path)
    softcot.use_fp32_head(lm)
    scorer = Scorer(lm)
    # layers: weights gathered in the compute dtype, inputs left as they come (the fp32 residual stream, as under
    # DDP's autocast, which casts each matmul's inputs itself); the root (E, norm, head): the master dtype, fp32
    for layer in fsdp_layers(lm):
        fully_shard(layer, mp_policy=MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32,
                                                          cast_forward_inputs=False))
    fully_shard(scorer, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32))
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
    rollout_lm.generation_config = lm.generation_config
    for name, q in rollout_lm.named_parameters():   # fp32 E, head and final norm, as in the shards' root
        if ".layers." not in name:
            q.data = q.data.float()
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


def gather_state(scorer, opt, fsdp, with_optimizer):
    """(weights, optimizer state) as full tensors on rank 0, for a checkpoint. Without FSDP they are the model's
    own (None: save_pretrained reads them) and opt.state_dict(); under FSDP every rank must call this (it gathers
    the shards) and rank 0 gets them."""
    if not fsdp:
        return None, opt.state_dict() if with_optimizer else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = {k.removeprefix("lm."): v for k, v in get_model_state_dict(scorer, options=full).items()}
    lm = scorer.lm
    # tied: the gathered copies of E are two tensors, which save_pretrained would write twice (+1.6 GB at 3B); once,
    # under the embedding's name, is what a Hugging Face folder of a tied model holds
    if lm.get_output_embeddings().weight is lm.get_input_embeddings().weight:
        weights.pop("lm_head.weight", None)
    return weights, get_optimizer_state_dict(scorer, opt, options=full) if with_optimizer else None


def load_optimizer_state(scorer, opt, state, fsdp):
    """The inverse of gather_state's optimizer half: under FSDP rank 0's full state is broadcast into the shards."""
    if not fsdp:
        return opt.load_state_dict(state)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(scorer, opt, state if dist.get_rank() == 0 else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))


def no_sync(scorer, last):
    """DDP all-reduces gradients on the last micro-batch of a step only; FSDP reduce-scatters each one (accumulating
    its unsharded gradients instead would hold a full model's worth of them)."""
    ddp = isinstance(scorer, torch.nn.parallel.DistributedDataParallel)
    return scorer.no_sync() if ddp and not last else nullcontext()
