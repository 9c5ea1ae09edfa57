"""
softcot.py: the continuous chain of thought. Noisy soft / fuzzy tokens, the batched KV-cached rollout with
shadow-greedy stopping, and the teacher-forced re-scoring that gives each sequence's log-probability.

Paper: Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170), Sec. 3 (Eq. 5, 6, 9, 10, 13), Sec. 4
(the six inference settings), App. C (stopping and prefill). Works with any Hugging Face causal LM that takes
`inputs_embeds` (tested on Llama and Qwen2, tied and untied embeddings).

    import softcot
    sigma = softcot.noise_sigma(model)                          # 0.33 * RMS(E), once, from the base model
    ro = softcot.rollout(model, tok, prompts, mode="fuzzy", tau=1e-4, sigma=sigma,
                         num_samples=32, max_cot_tokens=128, answer_temperature=1.0)
    ro.answer_text                                              # what the reward sees: "\\boxed{42}"
    lp = softcot.sequence_logprobs(model, ro)                   # (N, S) with grad; lp.sum(-1) is Eq. 13

The three CoT modes (Sec. 4): at CoT step t the model's next-token distribution p_{t-1} = softmax(logits/tau)
gives the next input
    hard:         E[x_t],  x_t ~ p_{t-1}                        (tau = 1 in training, 0 = greedy)
    soft / fuzzy: h~_t = p_{t-1} E + sigma * eps_t,  eps ~ N(0, I_d)  (Eq. 5-6; tau 0.5 soft, 1e-4 fuzzy;
                                                                  sigma = 0 is the "greedy" setting)
The rollout stores what the model was fed (token ids, or h~ for soft steps) and never anything V-sized per
step: p is recomputed, with gradient, in one teacher-forced forward by `sequence_logprobs`. Where the paper is
silent (the noise scale, the stop rule, EOS inside the CoT, the prefills, what a log-probability counts, the
randomness per row and step, fp32 logits) the choice and its reason are in docs/decisions.md, by those names.
At tau <= 0.1 (fuzzy) `mixture` mixes only the rows of E whose p_i does not underflow to exactly 0: the same
value, faster (`_sparse_mixture`; bench.py measures both).

Sections, in reading order: settings, precision (fp32 LM head), one CoT step (Eq. 4-6, 10), the rollout (App. C),
the re-score (Eq. 9, 10, 13).
"""

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from transformers import DynamicCache


# ------------------------------------------------------------------------------------------------ settings
TRIGGER = "The final answer is:"                   # App. C stop string
PREFILL_STOPPED = " \\boxed{"                        # App. C: after the trigger
PREFILL_CAPPED = " The final answer is: \\boxed{"    # App. C: after the CoT cap, or an EOS inside the CoT
                                                   #   (docs/decisions.md, "EOS inside the CoT")
MODES = ("hard", "soft", "fuzzy")
TRAIN_TAU = {"hard": 1.0, "soft": 0.5, "fuzzy": 1e-4}   # CoT temperature in training (Sec. 4)
GAMMA = 0.33                                             # sigma = GAMMA * RMS(E) (Sec. 4, App. F.1)

# The six inference settings of Sec. 4: name -> (mode, CoT tau, noise on). Answers are
# always greedy at test time; "sample" settings are the training variants.
SETTINGS = {
    "hard_greedy": ("hard", 0.0, False), "hard_sample": ("hard", 1.0, False),
    "soft_greedy": ("soft", 0.5, False), "soft_sample": ("soft", 0.5, True),
    "fuzzy_greedy": ("fuzzy", 1e-4, False), "fuzzy_sample": ("fuzzy", 1e-4, True),
}

# What each generated position holds (Rollout.kind).
PAD, COT, PREFILL, ANSWER = 0, 1, 2, 3


def unwrap(model):
    """The Hugging Face model inside a DDP / compile wrapper (rollouts call it directly, outside DDP)."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


# ------------------------------------------------------------------------------------------------ precision
# On a GPU the transformer computes in bf16 (train.py: autocast over fp32 master weights, or FSDP's bf16 compute).
# The CoT must not: at tau = 1e-4 the mixture p = softmax(logits / tau) amplifies a logit difference of one bf16
# step (2^-8 relative, ~0.03 for a logit of 8) into a factor e^300, so bf16 logits make the top two tokens tie or
# swap between the KV-cached rollout and the full-forward re-score. So the LM head (the logits that feed Eq. 5, the
# shadow argmax and every log-probability) and the mixture p E run in fp32, from the bf16 final hidden state.
class FP32Head(torch.nn.Linear):
    """An LM head that computes its logits in fp32 whatever the autocast or parameter dtype: (..., d) -> (..., V)."""

    def forward(self, x):
        with torch.autocast(x.device.type, enabled=False):
            bias = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), bias)   # .float() is free on fp32 master weights


def resolve_dtype(name, device):
    """'auto' | 'float32' | 'bfloat16' -> a torch dtype; auto is bf16 on a GPU, fp32 elsewhere."""
    if name == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return getattr(torch, name)


def use_fp32_head(model):
    """Make `model`'s LM head an FP32Head, in place; returns the model.

    The module keeps its parameters (so tied embeddings stay tied), its name and its state-dict keys, so checkpoints
    stay plain Hugging Face folders; only its class changes, to nn.Linear's fp32 subclass. A no-op in fp32.
    """
    head = unwrap(model).get_output_embeddings()
    if type(head) is torch.nn.Linear:
        head.__class__ = FP32Head
    elif not isinstance(head, FP32Head):
        raise TypeError(f"the LM head is a {type(head).__name__}, not an nn.Linear: fp32 CoT logits need a plain "
                        "linear head (Llama, Qwen2, Mistral, ...)")
    return model


def _fp32(x):
    """Upcast half precision to fp32 for softmaxes and densities; fp64 (the gradient-check tests) stays fp64."""
    return x if x.dtype == torch.float64 else x.float()


# ------------------------------------------------------------------------------------------------ one CoT step
# The pieces of one CoT step, from the next-token logits (the rollout's `_cot_step` puts them together): hard, a token
# x_t ~ p_{t-1} (`sample_tokens`, Eq. 4); soft and fuzzy, the mixture p_{t-1} E (`mixture`, Eq. 5) plus Gaussian
# noise, h~_t = p_{t-1} E + sigma eps_t (Eq. 6; sigma from `noise_sigma`), whose log-density (`gaussian_logprob`,
# Eq. 10) is what the policy gradient differentiates.

# The exact sparse path of the mixture (fuzzy mode). At tau = 1e-4 the fp32 softmax is exactly one-hot unless the
# top logits lie within ~0.01 of each other (exp underflows to 0 below about -104), so p E needs the rows of E at the
# few nonzero p_i only, not a (V x d) matmul. bench.py sets SPARSE_MIXTURE = False to time the plain path.
SPARSE_MIXTURE = True
SPARSE_MAX_K = 8          # look for the nonzero p_i among the top 8 logits of each row
SPARSE_MAX_TAU = 0.1      # the paper's fuzzy taus (App. F.3); at soft's 0.5 every p_i > 0: looking cost 3-6% (bench.py)


def mixture(logits, E, tau, top_k=None):
    """Eq. 5: the soft token h0 = p E with p = softmax(logits / tau), over the full vocabulary.

    logits (..., V), E (V, d) -> (..., d) fp32. The softmax is fp32 (at tau = 1e-4 a bf16 softmax is
    meaningless); the matmul runs in E's dtype with fp32 accumulation. tau = 0 is the argmax's embedding
    ("softmax extended by continuity", Sec. 3). `top_k` keeps the k largest logits before the softmax:
    an ablation (Soft Thinking's mixture), not the paper's method.
    Gradient flows into the logits (through p) and into E.
    When tau <= SPARSE_MAX_TAU and every row has fewer than SPARSE_MAX_K nonzero p_i (fuzzy mode: almost always
    one), only those are mixed (`_sparse_mixture`): the same value up to summation order, and the same gradient.
    """
    logits = _fp32(logits)
    if top_k is not None:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if tau == 0:
        return _fp32(E[logits.argmax(-1)])
    if SPARSE_MIXTURE and tau <= SPARSE_MAX_TAU and logits.numel():
        h = _sparse_mixture(logits, E, tau)
        if h is not None:
            return h
    p = torch.softmax(logits / tau, dim=-1)              # (..., V) fp32
    with torch.autocast(E.device.type, enabled=False):   # fp32 master E stays fp32 under autocast (see FP32Head)
        return _fp32(p.to(E.dtype) @ E)                  # (..., d)


def _sparse_mixture(logits, E, tau):
    """p E summed over the p_i that are not exactly 0, or None if some row may have SPARSE_MAX_K or more of them.

    The dense softmax computes p_i = exp(z_i - max z) / sum_j exp(z_j - max z) with z = logits / tau; where
    exp(z_i - max z) underflows to exactly 0, p_i is 0 and adds nothing to p E, to the normaliser, or to the
    gradient (d p_i / d logits = p_i (...) = 0, and E's gradient p_i * g reaches only rows with p_i > 0). So the
    softmax over the top k logits, k = the largest count of non-underflowing entries over rows (checked per row),
    mixes exactly the same terms, up to summation order.
    """
    top = logits.topk(min(SPARSE_MAX_K, logits.shape[-1]), dim=-1)         # (..., K), largest first
    z = top.values / tau                                                   # the dense path's z_i, bit for bit
    # exp(x) rounds to 0 below log(smallest subnormal / 2); one nat of margin keeps every entry it might not
    fin = torch.finfo(z.dtype)
    alive = z - z[..., :1] > math.log(fin.tiny * fin.eps) - 1.0            # (..., K); fp32: z - max z > -104.3
    k = int(alive.sum(-1).max())
    if k == top.values.shape[-1]:         # a row's nonzero entries may go on past the top K: use the dense path
        return None
    p = torch.softmax(z[..., :k], dim=-1)                                  # (..., k): the nonzero p_i (and 0s)
    with torch.autocast(E.device.type, enabled=False):
        return _fp32((p.to(E.dtype).unsqueeze(-2) @ E[top.indices[..., :k]]).squeeze(-2))   # (..., d)


@torch.no_grad()
def noise_sigma(model, gamma=GAMMA):
    """sigma = gamma * sqrt(mean(E**2)) over all V x d entries of the input embedding matrix
    (docs/decisions.md, "Noise scale").

    The per-coordinate RMS makes ||sigma * eps|| ~ gamma * sqrt(d) * RMS ~ gamma x a typical embedding norm:
    "noise comparable but a bit smaller than the embeddings". Compute it once, from the base model, and keep
    it fixed (train.py stores it in the trainer state). Summed in fp32 chunks: no fp32 copy of E.
    """
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    E = unwrap(model).get_input_embeddings().weight
    sq = sum(chunk.float().pow(2).sum() for chunk in E.split(8192))
    return gamma * (sq / E.numel()).sqrt().item()


def gaussian_logprob(h, mean, sigma):
    """Eq. 10: log N(h; mean, sigma^2 I_d) = -||h - mean||^2 / (2 sigma^2) - (d/2) log(2 pi sigma^2).

    h, mean (..., d) -> (...). The constant -(d/2) log(2 pi sigma^2) is dropped: sigma is fixed, so it has no
    gradient, and the number of CoT steps it multiplies is sampled data, not a function of theta.
    """
    return -(_fp32(h) - _fp32(mean)).pow(2).sum(-1) / (2 * sigma**2)


def sample_tokens(logits, temperature, u):
    """Categorical sample at `temperature` by inverse CDF: logits (n, V), u (n,) uniforms in (0, 1].

    One uniform per row keeps each row's randomness its own: the rollout draws one for every row at every step,
    so a row's sample depends only on (seed, row, step) (docs/decisions.md, "Randomness per row and step").
    temperature 0 is the argmax. A token of probability 0 can never be picked: its CDF step has zero width.
    """
    if temperature == 0:
        return logits.argmax(-1)
    cdf = torch.softmax(logits.float() / temperature, dim=-1).cumsum(-1)    # (n, V)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


def entropy(logits):
    """Entropy (nats) of softmax(logits) at temperature 1, per row: the model's own next-token uncertainty."""
    logits = logits.float()
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


# ------------------------------------------------------------------------------------------------ the rollout
# App. C: B prompts x G samples in one batch with a KV cache. Each CoT ends at the trigger (read on the greedy
# shadow text for soft / fuzzy), an EOS, or the cap; then the prefill, then hard answer tokens up to an EOS or
# max_answer_tokens.
# No gradient: the rollout stores what was fed, and `sequence_logprobs` re-scores it.
@dataclass
class Rollout:
    """A batch of N = B x G finished sequences, rows ordered prompt-major (row b*G + g is sample g of prompt b).

    Each row is [prompt (left-padded to P) ; generated part (right-padded to S)], and the generated part is
    [CoT (cot_len) ; prefill ; answer (answer_len)]. CoT position j is generated position j in every row.
    """
    prompt_ids: torch.Tensor       # (N, P) long, left-padded
    prompt_mask: torch.Tensor      # (N, P) long, 1 = real token
    ids: torch.Tensor              # (N, S) long: token fed at each generated position; at soft/fuzzy CoT
                                   #   positions the greedy shadow token (never fed, used for text and stop)
    kind: torch.Tensor             # (N, S) int8: PAD / COT / PREFILL / ANSWER
    cot_embeds: torch.Tensor | None  # (N, Tc, d): the fed h~ at soft/fuzzy CoT positions (Eq. 6); None if hard
    logp: torch.Tensor             # (N, S) fp32: the rollout's log-prob of each step under its own sampling
                                   #   distribution (Eq. 10 for soft CoT steps, categorical otherwise; 0 at
                                   #   prefill, pad and greedy steps). Re-scoring must reproduce it.
    entropy: torch.Tensor          # (N, Tc) fp32: entropy of softmax(logits) at each CoT step (App. G.3)
    noise_ratio: torch.Tensor      # (N, Tc) fp32: ||h~ - p E|| / ||p E|| at soft CoT steps (0 if hard)
    cot_len: torch.Tensor          # (N,) long
    answer_len: torch.Tensor       # (N,) long, including a sampled EOS
    stop_reason: list              # "trigger" | "eos" | "cap"
    cot_text: list                 # decoded CoT (shadow text for soft / fuzzy)
    answer_text: list              # prefill + decoded answer: what the reward sees
    mode: str
    tau: float
    sigma: float
    answer_temperature: float
    top_k: int | None

    def select(self, rows):
        """The sub-batch of these rows (a micro-batch), with columns that are padding in all of them trimmed."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                v = v[rows.to(v.device)]
            elif isinstance(v, list):
                v = [v[i] for i in rows.tolist()]
            out[f.name] = v
        keep_p = out["prompt_mask"].any(0).nonzero()
        first = keep_p[0].item() if len(keep_p) else out["prompt_mask"].shape[1]
        S = int((out["kind"] != PAD).sum(1).max().item()) if len(rows) else 0
        Tc = int(out["cot_len"].max().item()) if len(rows) else 0
        out["prompt_ids"], out["prompt_mask"] = out["prompt_ids"][:, first:], out["prompt_mask"][:, first:]
        out["ids"], out["kind"], out["logp"] = out["ids"][:, :S], out["kind"][:, :S], out["logp"][:, :S]
        for k in ("entropy", "noise_ratio", "cot_embeds"):
            if out[k] is not None:
                out[k] = out[k][:, :Tc]
        return Rollout(**out)


def _eos_ids(model, tokenizer):
    ids = set()
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for e in (gen_eos, tokenizer.eos_token_id):
        if e is not None:
            ids.update([e] if isinstance(e, int) else e)
    return ids


def _check_args(model, tokenizer, prompts, mode, tau, sigma, num_samples, max_cot_tokens,
                max_answer_tokens, answer_temperature, top_k):
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(MODES)}")
    if isinstance(prompts, str) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of strings (got "
                         f"{'a single string' if isinstance(prompts, str) else 'an empty batch'})")
    if tau < 0 or sigma < 0 or answer_temperature < 0:
        raise ValueError(f"tau, sigma and answer_temperature must be >= 0 (got tau={tau}, sigma={sigma}, "
                         f"answer_temperature={answer_temperature}); 0 means greedy / no noise")
    if mode == "hard" and sigma != 0:
        raise ValueError("sigma is the soft/fuzzy input noise; hard mode explores by sampling at tau: pass sigma=0")
    if num_samples < 1 or max_cot_tokens < 1 or max_answer_tokens < 1:
        raise ValueError("num_samples, max_cot_tokens and max_answer_tokens must be >= 1")
    if top_k is not None and (mode == "hard" or top_k < 1):
        raise ValueError("top_k (the top-k mixture ablation) must be a positive int, and only applies to soft/fuzzy")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token: set tokenizer.pad_token = tokenizer.eos_token "
                         "(pads are masked out, so any token id works)")


@torch.no_grad()
def rollout(model, tokenizer, prompts, *, mode, tau, sigma=0.0, num_samples=1, max_cot_tokens=128,
            max_answer_tokens=32, answer_temperature=0.0, top_k=None, generator=None,
            trigger=TRIGGER, prefill_stopped=PREFILL_STOPPED, prefill_capped=PREFILL_CAPPED):
    """Generate CoT + answer for every prompt, `num_samples` times each, in one batch with a KV cache.

    mode: "hard" | "soft" | "fuzzy". tau: the CoT temperature (hard: sampling temperature, 0 = greedy;
    soft/fuzzy: the mixture temperature of Eq. 5). sigma: the soft/fuzzy input noise of Eq. 6 (0 = greedy).
    The CoT ends at the trigger, an EOS, or max_cot_tokens (App. C: 128 GSM8K training, 512 otherwise);
    then the prefill, then up to max_answer_tokens hard answer tokens at answer_temperature (1.0 in
    training, 0 = greedy in evaluation), ending at EOS. Pass a seeded `torch.Generator` on the model's
    device for a reproducible sample. Returns a `Rollout`.
    """
    _check_args(model, tokenizer, prompts, mode, tau, sigma, num_samples, max_cot_tokens,
                max_answer_tokens, answer_temperature, top_k)
    model = unwrap(model)
    device = model.device
    E = model.get_input_embeddings().weight                                   # (V, d)
    soft = mode != "hard"
    eos = torch.tensor(sorted(_eos_ids(model, tokenizer)), device=device)
    if generator is None:   # seeded from torch's global RNG, so torch.manual_seed makes runs repeatable
        generator = torch.Generator(device).manual_seed(int(torch.randint(2**62, ())))
    prefills = [tokenizer(t, add_special_tokens=False).input_ids for t in (prefill_stopped, prefill_capped)]
    max_steps = max_cot_tokens + max(map(len, prefills)) + max_answer_tokens          # S, at most

    # 1. prefill: each distinct prompt once, its KV cache copied for its G samples
    prompt_ids, prompt_mask, logits, cache = _prefill_prompts(model, tokenizer, prompts, num_samples, max_steps)
    N = len(prompt_ids)
    out = _Buffers.empty(N, max_steps, max_cot_tokens, E, max(map(len, prefills)), soft)
    active = torch.arange(N, device=device)                                    # rows still generating
    attn = prompt_mask.clone()                                                 # (n, P + s): grows each step
    next_pos = (prompt_mask.sum(1) - 1).clamp(min=0) + 1                       # (n,) position of the next input

    for s in range(max_steps):
        # randomness for all N rows at every step, used by the active ones (rows stay independent)
        u = (1.0 - torch.rand(N, generator=generator, device=device))[active]                  # (n,) in (0, 1]
        eps = torch.randn(N, E.shape[1], generator=generator, device=device)[active] if soft else None
        k = s - out.cot_len[active]                                            # step within prefill + answer
        cot = out.in_cot[active]                                               # (n,) phase masks
        pre = ~cot & (k < out.prefill_len[active])
        ans = ~cot & ~pre
        tok = torch.zeros(len(active), dtype=torch.long, device=device)       # (n,) this step's token ids
        h = None
        # 2. one CoT step (Eq. 4, or Eq. 5, 6, 10), 3. prefill and answer tokens
        if cot.any():
            tok[cot], h = _cot_step(out, active[cot], s, logits[cot], u[cot], eps[cot] if soft else None,
                                    E, mode, tau, sigma, top_k)
        if pre.any():
            tok[pre] = out.prefill[active[pre], k[pre]]
            out.ids[active[pre], s], out.kind[active[pre], s] = tok[pre], PREFILL
        if ans.any():
            tok[ans] = _answer_step(out, active[ans], s, logits[ans], u[ans], answer_temperature)
        # 4. stop decisions: CoTs that end now get their prefill; answers end at EOS or the cap
        if cot.any():
            _end_cots(out, tokenizer, active[cot], tok[cot], s, eos, trigger, prefills, max_cot_tokens)
        done = torch.zeros(len(active), dtype=torch.bool, device=device)
        done[ans] = torch.isin(tok[ans], eos) | (out.answer_len[active[ans]] >= max_answer_tokens)
        if done.all():
            break
        # 5. the next inputs, E[token] or h~, for the rows not done; finished rows leave the batch and the cache
        emb = E[tok]                                                           # (n, d)
        if h is not None:
            emb[cot] = h
        if done.any():
            keep = (~done).nonzero()[:, 0]
            cache.batch_select_indices(keep)
            active, emb, attn, next_pos = active[keep], emb[keep], attn[keep], next_pos[keep]
        attn = torch.cat([attn, attn.new_ones(len(active), 1)], dim=1)
        logits = model(inputs_embeds=emb[:, None, :], attention_mask=attn, position_ids=next_pos[:, None],
                       past_key_values=cache, use_cache=True).logits[:, -1].float()            # (n, V)
        next_pos = next_pos + 1

    return _pack(out, tokenizer, prompt_ids, prompt_mask, (prefill_stopped, prefill_capped), mode=mode, tau=tau,
                 sigma=sigma, answer_temperature=answer_temperature, top_k=top_k)


def _prefill_prompts(model, tokenizer, prompts, G, max_steps):
    """Phase 1: one forward over the B distinct prompts (left-padded), then their KV cache and last logits repeated
    for G samples each (row b*G + g is sample g of prompt b). Returns prompt ids and mask (N, P), logits (N, V) fp32,
    and the cache."""
    device = model.device
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left")
    prompt_ids, prompt_mask = enc.input_ids.to(device), enc.attention_mask.to(device)  # (B, P)
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and int(prompt_mask.sum(1).max()) + max_steps > limit:
        raise ValueError(f"the longest prompt ({int(prompt_mask.sum(1).max())} tokens) plus the CoT cap, "
                         f"prefill and answer ({max_steps} tokens) exceeds the model's context ({limit}): "
                         "shorten the prompt or lower max_cot_tokens / max_answer_tokens")
    pos = (prompt_mask.cumsum(-1) - 1).clamp(min=0)                            # explicit positions: left pads
    cache = DynamicCache(config=model.config)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask, position_ids=pos,
                past_key_values=cache, use_cache=True, logits_to_keep=1)
    logits = out.logits[:, -1].float().repeat_interleave(G, 0)                 # (N, V)
    if G > 1:
        cache.batch_repeat_interleave(G)
    return prompt_ids.repeat_interleave(G, 0), prompt_mask.repeat_interleave(G, 0), logits, cache


@dataclass
class _Buffers:
    """A rollout in progress: per-row results, indexed by the original row (N rows, up to S generated positions)."""
    ids: torch.Tensor           # (N, S) long: the token at each position (the greedy shadow at soft CoT steps)
    kind: torch.Tensor          # (N, S) int8: PAD / COT / PREFILL / ANSWER
    logp: torch.Tensor          # (N, S) fp32: each sampled step's log-probability
    cot_embeds: torch.Tensor    # (N, Tc, d): the fed h~ (soft / fuzzy), or None
    entropy: torch.Tensor       # (N, Tc) fp32
    noise_ratio: torch.Tensor   # (N, Tc) fp32
    cot_len: torch.Tensor       # (N,) long
    answer_len: torch.Tensor    # (N,) long
    in_cot: torch.Tensor        # (N,) bool: still in the CoT
    prefill: torch.Tensor       # (N, longest prefill) long: this row's prefill (-1 padded)
    prefill_len: torch.Tensor   # (N,) long
    stop_reason: list           # "trigger" | "eos" | "cap"

    @staticmethod
    def empty(N, S, Tc, E, prefill_width, soft):
        dev, d = E.device, E.shape[1]
        zeros = lambda *shape, dtype=torch.float32: torch.zeros(*shape, dtype=dtype, device=dev)  # noqa: E731
        return _Buffers(ids=zeros(N, S, dtype=torch.long), kind=zeros(N, S, dtype=torch.int8), logp=zeros(N, S),
                        cot_embeds=zeros(N, Tc, d, dtype=E.dtype) if soft else None, entropy=zeros(N, Tc),
                        noise_ratio=zeros(N, Tc), cot_len=zeros(N, dtype=torch.long),
                        answer_len=zeros(N, dtype=torch.long), in_cot=torch.ones(N, dtype=torch.bool, device=dev),
                        prefill=torch.full((N, prefill_width), -1, dtype=torch.long, device=dev),
                        prefill_len=zeros(N, dtype=torch.long), stop_reason=["cap"] * N)


def _cot_step(out, rows, s, logits, u, eps, E, mode, tau, sigma, top_k):
    """Phase 2, one CoT step for c rows from their next-token logits (c, V): the token recorded and, for soft and
    fuzzy rows, the noisy input h~ (c, d) fed next. Returns (tokens (c,), h~ or None)."""
    out.entropy[rows, s] = entropy(logits)
    h = None
    if mode == "hard":
        x = sample_tokens(logits, tau, u)                                      # Eq. 4: x_t ~ p_{t-1}
        if tau > 0:
            out.logp[rows, s] = torch.log_softmax(logits / tau, -1).gather(-1, x[:, None])[:, 0]
    else:
        x = logits.argmax(-1)                                                  # the greedy shadow (App. C)
        mean = mixture(logits, E, tau, top_k).float()                          # Eq. 5: p_{t-1} E, (c, d)
        h = (mean + sigma * eps).to(E.dtype)                                   # Eq. 6: h~ = p E + sigma eps
        if sigma > 0:
            out.logp[rows, s] = gaussian_logprob(h, mean, sigma).float()       # Eq. 10
        out.noise_ratio[rows, s] = (h.float() - mean).norm(dim=-1) / mean.norm(dim=-1).clamp(min=1e-12)
        out.cot_embeds[rows, s] = h
    out.ids[rows, s], out.kind[rows, s] = x, COT
    return x, h


def _answer_step(out, rows, s, logits, u, temperature):
    """Phase 3, one hard answer token for these rows, at `temperature` (0 = greedy). Returns the tokens."""
    y = sample_tokens(logits, temperature, u)
    if temperature > 0:
        out.logp[rows, s] = torch.log_softmax(logits / temperature, -1).gather(-1, y[:, None])[:, 0]
    out.ids[rows, s], out.kind[rows, s] = y, ANSWER
    out.answer_len[rows] += 1
    return y


def _end_cots(out, tokenizer, rows, tok, s, eos, trigger, prefills, max_cot_tokens):
    """Phase 4, after a CoT step: the rows whose CoT ends here (the trigger at the end of the decoded text, an EOS,
    or the cap) leave the CoT and get their prefill (App. C: the short one after the trigger, else the long one)."""
    hit_eos = torch.isin(tok, eos)
    tails = out.ids[rows, max(0, s + 1 - len(trigger) - 2): s + 1]            # enough tokens to hold the trigger
    hit_trig = torch.tensor([t.rstrip().endswith(trigger) for t in tokenizer.batch_decode(tails)],
                            dtype=torch.bool, device=tok.device)
    stop = hit_trig | hit_eos | torch.tensor(s + 1 >= max_cot_tokens, device=tok.device)
    for r, trig, e in zip(rows[stop].tolist(), hit_trig[stop].tolist(), hit_eos[stop].tolist()):
        out.stop_reason[r] = "trigger" if trig else ("eos" if e else "cap")
        p = prefills[0] if trig else prefills[1]
        out.prefill[r, :len(p)] = torch.tensor(p, device=tok.device)
        out.prefill_len[r] = len(p)
    out.in_cot[rows[stop]] = False
    out.cot_len[rows] += 1


def _pack(out, tokenizer, prompt_ids, prompt_mask, prefill_texts, **settings):
    """Phase 5: the finished batch as a Rollout, trimmed to the longest row; texts decoded."""
    N = len(prompt_ids)
    S, Tc = int((out.kind != PAD).sum(1).max()), int(out.cot_len.max())
    cot_text = tokenizer.batch_decode([out.ids[r, :out.cot_len[r]] for r in range(N)], skip_special_tokens=True)
    start = out.cot_len + out.prefill_len
    answers = tokenizer.batch_decode([out.ids[r, start[r]: start[r] + out.answer_len[r]] for r in range(N)],
                                     skip_special_tokens=True)
    answer_text = [prefill_texts[0 if sr == "trigger" else 1] + a for sr, a in zip(out.stop_reason, answers)]
    return Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, ids=out.ids[:, :S], kind=out.kind[:, :S],
        cot_embeds=None if out.cot_embeds is None else out.cot_embeds[:, :Tc], logp=out.logp[:, :S],
        entropy=out.entropy[:, :Tc], noise_ratio=out.noise_ratio[:, :Tc], cot_len=out.cot_len,
        answer_len=out.answer_len, stop_reason=out.stop_reason, cot_text=cot_text, answer_text=answer_text, **settings)


# ------------------------------------------------------------------------------------------------ the re-score
# One teacher-forced forward with gradient recomputes every sampled step's log-probability (Eq. 9, 10, 13), and
# `drifted_steps` flags the steps where it disagrees with the rollout's own value.
def sequence_logprobs(model, ro):
    """Eq. 9, 10, 13: the log-probability of each rollout step under the current model, with gradient.

    One teacher-forced forward over [prompt embeddings ; stored CoT inputs ; prefill and answer embeddings]
    (no backprop through time: each step's density needs only the logits before it). Returns (N, S) fp32;
    `.sum(-1)` is the sequence log-probability l of Eq. 13. Per generated position:
    - soft / fuzzy CoT step: log N(h~_t; p_{t-1} E, sigma^2 I) = -||h~_t - p_{t-1} E||^2 / (2 sigma^2)  (Eq. 10)
      with p recomputed here from the logits. Gradient flows through p (the transformer, via the
      tau-softmax) and through E; h~ is a stored constant (pi^sg in Eq. 8). The residual is recomputed from
      this pass's mean, never taken from the rollout's eps (cached and full forwards round differently).
      At tau = 1e-4 the softmax Jacobian (diag p - p p^T) / tau is ~0 unless the top logits nearly tie, so
      in fuzzy mode this term trains almost only E (which is also W_d when embeddings are tied).
    - hard CoT step and sampled answer token: the categorical log-probability at the temperature it was
      sampled at.
    - prefill and padding: 0 (the prefill is not a sampled action; it is an input here all the same).
    The constant of Eq. 10 is dropped (see `gaussian_logprob`): the gradient of Eq. 14 is unchanged, but l
    is then no normalised density; its value, like the loss value, is no progress signal.
    `model` may be DDP-wrapped: the forward goes through the wrapper so that gradients are synchronised.
    """
    soft = ro.mode != "hard"
    if (soft and ro.sigma == 0) or (not soft and ro.tau == 0):
        raise ValueError("a greedy CoT (sigma = 0 soft/fuzzy, or tau = 0 hard) has no log-probability: "
                         "re-score sampled rollouts only")
    if ro.answer_temperature == 0 and bool((ro.kind == ANSWER).any()):
        raise ValueError("greedy answers have no log-probability: sample answers (answer_temperature > 0) "
                         "in rollouts meant for training")
    E = unwrap(model).get_input_embeddings().weight                            # (V, d)
    N, S = ro.ids.shape
    P = ro.prompt_ids.shape[1]
    is_cot, is_ans = ro.kind == COT, ro.kind == ANSWER                         # (N, S)
    x = E[ro.ids]                                                              # (N, S, d)
    if soft:   # the fed h~ replaces the (shadow) token at CoT positions
        h = F.pad(ro.cot_embeds, (0, 0, 0, S - ro.cot_embeds.shape[1]))        # (N, S, d), constant
        x = torch.where(is_cot[..., None], h.to(E.dtype), x)
    x = torch.cat([E[ro.prompt_ids], x], dim=1)                                # (N, P + S, d)
    mask = torch.cat([ro.prompt_mask, (ro.kind != PAD).long()], dim=1)        # (N, P + S)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    # logits at absolute positions P-1 .. P+S-2 predict generated positions 0 .. S-1
    logits = model(inputs_embeds=x, attention_mask=mask, position_ids=pos, logits_to_keep=S + 1).logits[:, :-1]

    lp = torch.zeros(N, S, dtype=_fp32(logits[:0]).dtype, device=x.device)
    if is_ans.any():
        la = _fp32(logits[is_ans]) / ro.answer_temperature                   # (n_ans, V)
        lp = lp.index_put((is_ans,), la.gather(-1, ro.ids[is_ans][:, None])[:, 0] - la.logsumexp(-1))
    if is_cot.any():
        lc = _fp32(logits[is_cot])                                             # (n_cot, V)
        if soft:
            mean = mixture(lc, E, ro.tau, ro.top_k)                            # Eq. 5, (n_cot, d)
            h_cot = ro.cot_embeds[is_cot[:, :ro.cot_embeds.shape[1]]]          # (n_cot, d), constant
            lp = lp.index_put((is_cot,), gaussian_logprob(h_cot, mean, ro.sigma))   # Eq. 10
        else:
            lc = lc / ro.tau
            lp = lp.index_put((is_cot,), lc.gather(-1, ro.ids[is_cot][:, None])[:, 0] - lc.logsumexp(-1))
    return lp                                                                  # Eq. 9/13: lp.sum(-1)


def drifted_steps(lp, ro, tol):
    """(N, S) bool: the sampled steps whose re-scored log-prob `lp` differs from the rollout's own by more than `tol`.

    The rollout (KV cache, one token at a time) and the re-score (one full forward) are two computations of the same
    policy; in fp32 they agree to ~1e-3 nats per step, in bf16 they can disagree by tens of nats where the fuzzy
    mixture's top two logits nearly tie. The sample then came from a distribution the re-score does not describe, and
    its 1/sigma-sized score would set the update's direction on its own. The RL literature calls this the
    training/inference (or sampler/learner) mismatch; its remedies weight each token by the importance ratio
    pi_learner / pi_sampler, truncated ("truncated importance sampling") or zeroed beyond a threshold ("masked
    importance sampling"). We do the second, per step: train.py leaves these steps out of the loss and counts them
    (`rescore_mismatch`). Only sampled positions (CoT and answer) are compared; prefill and padding are 0 in both.
    """
    scored = (ro.kind == COT) | (ro.kind == ANSWER)                             # (N, S)
    return scored & ((lp.detach() - ro.logp).abs() > tol)
