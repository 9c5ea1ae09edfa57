"""
gradsignal.py: where the learning signal goes. For a fixed model and fixed prompts, K independent batches of
training rollouts in one mode, each batch's policy gradient exactly as train.py's step computes it, and how much
of it is signal (the expected gradient) and how much is noise, per loss term and per parameter group.

Paper: Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170), Eq. 5-6 (the noisy CoT input
h~_t = p_{t-1} E + sigma eps), Eq. 10 (its Gaussian log-probability), Eq. 12-14 (RLOO advantages, the sequence
log-probability l = sum_t log pi, the loss -(1/N) sum_i A_i l_i). One batch's gradient g (Eq. 15) is split

    by loss term:        g = g_cot + g_answer   (Eq. 13's sum restricted to CoT steps, or to answer tokens;
                                                 prefill and padding add nothing)
    by parameter group:  "embed" = the token embeddings E and the output layer W_d (one tensor when tied,
                         counted once), "body" = every other parameter (attention, MLP, norms)

and for each cell (term x group, plus the total and all parameters) the K batch gradients g_1..g_K give

    E||g||^2                  mean squared norm of one batch's gradient
    ||E[g]||^2  (signal)      unbiased: sum_{j != k} <g_j, g_k> / (K (K - 1)) = ||mean||^2 - tr(Cov) / K
    tr Cov      (noise)       unbiased sample covariance trace; signal + noise = E||g||^2 exactly
    SNR                       signal / noise, per batch (a mean of n batches has n x this)
    split-half cos            cosine between the means of batches 1..K/2 and K/2+1..K; if the SNR is right it
                              is about s / (1 + s) with s = SNR x K / 2 ("predicted")
    SGD cos                   E<g, E[g]> / (sqrt(E||g||^2) ||E[g]||) = sqrt(signal / E||g||^2): how well one
                              batch's gradient points along the expected one
    Adam cos                  the same for Adam's steady-state direction u = g / sqrt(v), v = E[g^2] per
                              coordinate of the total gradient (Adam's second moment after many steps,
                              beta2 -> 1, no momentum, eps neglected): E<u, E[g]> / (sqrt(E||u||^2) ||E[g]||)

Only running sums are stored, never K gradients: each cell keeps M bucket sums of the batch gradients (batch k
goes to bucket floor(k M / K), M = --buckets), the per-batch squared norms, and one per-coordinate sum of squares
of the total gradient (for Adam). Standard errors are delete-one-bucket jackknife estimates over the M buckets
(for Adam's cosine, v is held at its all-batch estimate; none where a left-out estimate of ||E[g]||^2 is <= 0).
The jackknife is conservative here: on synthetic vectors it overstates the SE of ||E[g]||^2 by 1.3-1.6x.
Memory: (2 M + 3) x 4 bytes per parameter on top of the training step's (SmolLM2-135M, M = 4: 5.9 GB).

The batches follow train.py's step 1: its B prompts (the step-seeded draw from the training split), each
repeated G times, rollouts at the mode's training settings (softcot.TRAIN_TAU, sigma = gamma RMS(E) from
softcot.noise_sigma, answers at temperature 1), rewards.score, rloo.rloo_advantages, and batch k's rollout
generator seeded as train.py seeds step k + 1 (batch 0 is step 1's batch). `batch_gradient` is the training
step's loss, split; `measure` is the function a training loop can call on its current model.

    python gradsignal.py --recipe tiny --mode hard soft fuzzy --batches 16          # toy base model, minutes
    python gradsignal.py --recipe smol --mode fuzzy --batches 4 --buckets 4         # SmolLM2-135M: 6-12 min a batch
    import gradsignal
    res = gradsignal.measure(model, tok, prompts, golds, mode="fuzzy", batches=16)  # dict, see `measure`
    print(gradsignal.markdown(res))

Writes <out>/gradsignal.json (every number) and <out>/gradsignal.md (the tables); docs/gradient_signal.md
reads them.
"""

import argparse
import json
import math
import os
import sys
import time

import torch

import rewards
import rloo
import recipes
import runtime
import softcot

TERMS = ("cot", "answer")                      # stored terms; "total" = their sum
GROUPS = ("embed", "body")                     # stored groups; "all" = both
KINDS = {"cot": softcot.COT, "answer": softcot.ANSWER}


# ------------------------------------------------------------------------------------------------ one batch
def parameter_groups(model):
    """{"embed": [E (and W_d if untied)], "body": [everything else]}, each parameter once (tied E = W_d is one)."""
    model = softcot.unwrap(model)
    emb = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    params = [p for p in model.parameters() if p.requires_grad]   # .parameters() lists a tied tensor once
    return {"embed": [p for p in params if id(p) in emb], "body": [p for p in params if id(p) not in emb]}


def batch_gradient(model, ro, adv, micro_batch, groups=None):
    """One batch's policy gradient, Eq. 14-15, split by loss term: ({term: {group: (P_group,) fp32}}, stats).

    Mirrors train.policy_gradient_step without the update: micro-batches of `ro` (its n rows) are re-scored by
    softcot.sequence_logprobs, and the loss is rloo.rloo_loss(l, A, n): -(1/n) sum A l. Here l is summed over the
    CoT positions (term "cot") and over the answer positions (term "answer") separately, one backward each; the
    two gradients add up to the training step's (prefill and padding have log-prob 0). `adv` (n,) constants.
    stats: the number of soft/fuzzy CoT steps, and of those whose tau-softmax p_{t-1} is exactly one-hot in fp32
    (then its Jacobian (diag p - p p^T) / tau is exactly 0 and the CoT term reaches only E).
    """
    n = len(adv)
    if ro.ids.shape[0] != n:
        raise ValueError(f"adv has {n} entries but the rollout has {ro.ids.shape[0]} rows: one advantage per row")
    if micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    groups = groups or parameter_groups(model)
    dev = adv.device
    grads = {t: {g: torch.zeros(sum(p.numel() for p in ps), device=dev) for g, ps in groups.items()} for t in TERMS}
    params = [p for ps in groups.values() for p in ps]
    where = [(g, off) for g, ps in groups.items() for off in _offsets(ps)]   # each param's group and offset
    soft = ro.mode != "hard"
    stats = {"cot_steps": 0, "onehot_steps": 0}
    seen = {}
    # the logits of each re-scoring forward, to count one-hot tau-softmaxes (no extra forward)
    hook = softcot.unwrap(model).get_output_embeddings().register_forward_hook(
        lambda mod, inp, out: seen.__setitem__("logits", out.detach()))
    try:
        for i in range(0, n, micro_batch):
            rows = list(range(i, min(i + micro_batch, n)))
            mb = ro.select(rows)
            lp = softcot.sequence_logprobs(model, mb)                                  # (m, S) Eq. 10 / 9
            if soft:
                is_cot = mb.kind == softcot.COT                                        # (m, S)
                p = torch.softmax(seen["logits"][:, :-1][is_cot].float() / ro.tau, -1)   # (n_cot, V)
                stats["cot_steps"] += int(is_cot.sum())
                stats["onehot_steps"] += int(((p > 0).sum(-1) == 1).sum())
            for j, term in enumerate(TERMS):
                l = lp.masked_fill(mb.kind != KINDS[term], 0.0).sum(-1)               # (m,) Eq. 13, this term
                loss = rloo.rloo_loss(l, adv[rows], n)                                 # Eq. 14, this term
                gs = torch.autograd.grad(loss, params, retain_graph=j < len(TERMS) - 1, allow_unused=True)
                for gr, (g, off), p in zip(gs, where, params):
                    if gr is not None:
                        grads[term][g][off:off + p.numel()] += gr.reshape(-1).float()
    finally:
        hook.remove()
    return grads, stats


def _offsets(ps):
    off = 0
    for p in ps:
        yield off
        off += p.numel()


# ------------------------------------------------------------------------------------------------ the estimator
class SignalStats:
    """Running sums of K vectors per (term, group) cell, and the statistics of the module docstring.

    add(k, {term: {group: (P_group,)}}) for k = 0..K-1 (any order, each once); summary() -> {term: {group:
    {stat: (value, standard error)}}} for terms cot / answer / total and groups embed / body / all.
    """

    def __init__(self, sizes, batches, buckets, device="cpu"):
        if batches < 4:
            raise ValueError(f"batches must be >= 4 (two halves of two for the jackknife), got {batches}")
        if buckets < 4 or buckets % 2 or buckets > batches:
            raise ValueError(f"buckets must be even, >= 4 and <= batches ({batches}), got {buckets}: the jackknife "
                             "leaves one bucket out, the split-half cosine needs two equal halves of buckets")
        self.K, self.M, self.sizes = batches, buckets, dict(sizes)
        self.sums = {t: {g: torch.zeros(buckets, s, device=device) for g, s in sizes.items()} for t in TERMS}
        self.sumsq = {g: torch.zeros(s, device=device) for g, s in sizes.items()}   # sum_k g_total^2 per coordinate
        self.sqnorm = {t: {g: torch.zeros(buckets, dtype=torch.float64) for g in sizes}
                       for t in TERMS + ("total",)}                                 # sum of ||g||^2 per bucket
        self.count = torch.zeros(buckets, dtype=torch.float64)
        self.added = set()

    def bucket(self, k):
        return k * self.M // self.K

    def add(self, k, grads):
        if not 0 <= k < self.K or k in self.added:
            raise ValueError(f"batch index {k}: each of 0..{self.K - 1} must be added exactly once")
        self.added.add(k)
        b = self.bucket(k)
        self.count[b] += 1
        for g in self.sizes:
            total = grads["cot"][g] + grads["answer"][g]                           # (P_g,)
            for t in TERMS:
                self.sums[t][g][b] += grads[t][g]
                self.sqnorm[t][g][b] += grads[t][g].double().pow(2).sum().item()
            self.sqnorm["total"][g][b] += total.double().pow(2).sum().item()
            self.sumsq[g] += total.pow(2)

    def mean(self, term, group):
        """The mean of the K batch gradients of a cell, (P_group,) (for "all": embed then body)."""
        self._check_full()
        gs = GROUPS if group == "all" else (group,)
        ts = TERMS if term == "total" else (term,)
        return torch.cat([sum(self.sums[t][g].sum(0) for t in ts) for g in gs]) / self.K

    def _check_full(self):
        if len(self.added) != self.K:
            raise ValueError(f"{len(self.added)} of {self.K} batches added: add them all first")

    def _grams(self, g, chunk=1 << 20):
        """fp64 Gram matrices of group g's bucket sums: {term: (M, M)}, and Adam's <S_a, S_b / sqrt(v)> of the
        total, with the number of coordinates where v > 0. Chunked: no fp64 copy of a bucket sum."""
        M = self.M
        out = {t: torch.zeros(M, M, dtype=torch.float64) for t in TERMS + ("total",)}
        adam = torch.zeros(M, M, dtype=torch.float64)
        nz = 0
        for c in range(0, self.sizes[g], chunk):
            sl = slice(c, c + chunk)
            S = {t: self.sums[t][g][:, sl].double().cpu() for t in TERMS}          # (M, chunk)
            S["total"] = S["cot"] + S["answer"]
            for t, s in S.items():
                out[t] += s @ s.T
            v = self.sumsq[g][sl].double().cpu() / self.K                          # (chunk,) E[g_i^2]
            w = torch.where(v > 0, v.rsqrt(), torch.zeros_like(v))                  # 1 / sqrt(v), 0 where v = 0
            adam += (S["total"] * w) @ S["total"].T
            nz += int((v > 0).sum())
        return out, adam, nz

    def summary(self):
        """{term: {group: {stat: [value, standard error]}}}; stats as in the module docstring."""
        self._check_full()
        per = {g: self._grams(g) for g in self.sizes}
        res = {}
        for t in TERMS + ("total",):
            res[t] = {}
            for g in GROUPS + ("all",):
                gs = list(self.sizes) if g == "all" else [g]
                G = sum(per[x][0][t] for x in gs)
                Q = sum(self.sqnorm[t][x] for x in gs)
                adam = (sum(per[x][1] for x in gs), sum(per[x][2] for x in gs)) if t == "total" else None
                res[t][g] = _cell(G, Q, self.count, adam)
        return res


def _stats(G, Q, n, adam):
    """The statistics from bucket-sum Gram matrix G (M, M), per-bucket sums of ||g||^2 Q (M,), counts n (M,)."""
    K, SS, Qs = n.sum().item(), G.sum().item(), Q.sum().item()
    signal = (SS - Qs) / (K * (K - 1))                  # sum_{j != k} <g_j, g_k> / (K (K - 1))
    noise = (Qs - SS / K) / (K - 1)                     # unbiased tr Cov; signal + noise = Qs / K
    out = dict(mean_sq=Qs / K, signal=signal, noise=noise,
               snr=signal / noise if noise > 0 else float("nan"),
               sgd_cos=math.sqrt(max(signal, 0.0) / (Qs / K)) if Qs > 0 else float("nan"))
    if adam is not None:
        A, nz = adam
        pairs = K * K - n.pow(2).sum().item()           # batch pairs in different buckets
        cross = (A.sum() - A.diagonal().sum()).item() / pairs   # unbiased E<g, E[g] / sqrt(v)> (other buckets)
        # E||u||^2 = sum_i E[g_i^2] / v_i = nz exactly, with v the all-batch estimate
        out["adam_cos"] = cross / math.sqrt(nz * signal) if signal > 0 and nz else float("nan")
    return out


def _cell(G, Q, n, adam):
    M = len(n)
    full = _stats(G, Q, n, adam)
    # delete-one-bucket jackknife: se^2 = (M - 1) / M * sum_a (theta_-a - mean_a theta_-a)^2
    loo = []
    for a in range(M):
        keep = torch.tensor([b for b in range(M) if b != a])
        ad = (adam[0][keep][:, keep], adam[1]) if adam is not None else None
        loo.append(_stats(G[keep][:, keep], Q[keep], n[keep], ad))
    res = {}
    for k, v in full.items():
        xs = torch.tensor([x[k] for x in loo], dtype=torch.float64)
        se = math.sqrt((M - 1) / M * (xs - xs.mean()).pow(2).sum().item())
        res[k] = [v, se]
    h = M // 2                                           # split-half cosine: buckets [0, h) vs [h, M)
    a, b, ab = G[:h, :h].sum().item(), G[h:, h:].sum().item(), G[:h, h:].sum().item()
    res["split_cos"] = ab / math.sqrt(a * b) if a > 0 and b > 0 else float("nan")
    s = full["snr"] * n.sum().item() / 2
    res["split_cos_predicted"] = s / (1 + s) if s > 0 else 0.0
    return res


# ------------------------------------------------------------------------------------------------ K batches
def score_rewards(ro, golds):
    """The training reward (Eq. 11, rewards.py): 100 correct, 10 boxed, 0 otherwise; one float per row."""
    return rewards.score(ro.answer_text, golds).rewards


def measure(model, tok, prompts, golds, *, mode, tau=None, sigma=None, batches=16, buckets=8, samples=8,
            max_cot_tokens=64, max_answer_tokens=8, answer_temperature=1.0, top_k=None, micro_batch=64, seed=0,
            reward_fn=score_rewards, log=None):
    """K = `batches` batches of B x G training rollouts of `model` on the B `prompts` (G = `samples` each), their
    policy gradients (`batch_gradient`) and the signal statistics (`SignalStats`). Returns a dict: settings,
    per-batch diagnostics, timings, "cells" ({term: {group: {stat: [value, se]}}}) and "stats" (the SignalStats,
    for its `mean`). tau defaults to the mode's training temperature, sigma to softcot.noise_sigma(model) (soft,
    fuzzy; compute it from the base model when measuring a trained one, as train.py does). reward_fn(ro, golds)
    -> N rewards. Restores the model's train/eval mode; leaves its .grad untouched.
    """
    if mode not in softcot.MODES:
        raise ValueError(f"unknown mode {mode!r}: use one of {', '.join(softcot.MODES)}")
    if len(prompts) != len(golds) or not prompts:
        raise ValueError(f"need one gold answer per prompt and at least one prompt, got {len(prompts)} prompts "
                         f"and {len(golds)} golds")
    if samples < 2:
        raise ValueError("samples must be >= 2: RLOO's baseline leaves one sample out (Eq. 12)")
    tau = softcot.TRAIN_TAU[mode] if tau is None else tau
    sigma = (softcot.noise_sigma(model) if mode != "hard" else 0.0) if sigma is None else sigma
    B, G = len(prompts), samples
    rep_prompts = [prompts[i // G] for i in range(B * G)]          # prompt-major, as train.py lays out a step
    rep_golds = [golds[i // G] for i in range(B * G)]
    device = softcot.unwrap(model).device
    groups = parameter_groups(model)
    acc = SignalStats({g: sum(p.numel() for p in ps) for g, ps in groups.items()}, batches, buckets, device)
    was_training = model.training
    per_batch = []
    t_start = time.time()
    for k in range(batches):
        t0 = time.time()
        gen = torch.Generator(device).manual_seed(recipes.rollout_seed(seed, k, 0))   # train.py's step k + 1, rank 0
        model.eval()
        ro = softcot.rollout(model, tok, rep_prompts, mode=mode, tau=tau, sigma=sigma,
                             max_cot_tokens=max_cot_tokens, max_answer_tokens=max_answer_tokens,
                             answer_temperature=answer_temperature, top_k=top_k, generator=gen)
        r = torch.tensor([float(x) for x in reward_fn(ro, rep_golds)], device=device).view(B, G)
        adv = rloo.rloo_advantages(r).view(-1)                                        # (N,) Eq. 12
        t1 = time.time()
        model.train()
        grads, st = batch_gradient(model, ro, adv, micro_batch, groups)
        acc.add(k, grads)
        del grads
        t2 = time.time()
        per_batch.append(dict(reward=r.mean().item(), zero_adv_frac=rloo.zero_advantage_fraction(r),
                              cot_len=ro.cot_len.float().mean().item(),
                              noise_ratio=(ro.noise_ratio.sum(1) / ro.cot_len.clamp(min=1)).mean().item(),
                              onehot_frac=st["onehot_steps"] / st["cot_steps"] if st["cot_steps"] else None,
                              t_rollout=t1 - t0, t_gradient=t2 - t1))
        if log:
            log(f"{mode} batch {k + 1}/{batches}: reward {per_batch[-1]['reward']:.1f}, "
                f"CoT {per_batch[-1]['cot_len']:.1f} steps, {t2 - t0:.1f} s")
    model.train(was_training)
    cells = acc.summary()

    def avg(key):
        xs = [b[key] for b in per_batch if b[key] is not None]
        return sum(xs) / len(xs) if xs else None

    return dict(mode=mode, tau=tau, sigma=sigma, batches=batches, buckets=buckets, prompts=B, samples=G,
                max_cot_tokens=max_cot_tokens, max_answer_tokens=max_answer_tokens,
                answer_temperature=answer_temperature, top_k=top_k, seed=seed,
                params={g: acc.sizes[g] for g in GROUPS},
                reward=avg("reward"), zero_adv_frac=avg("zero_adv_frac"), cot_len=avg("cot_len"),
                noise_ratio=avg("noise_ratio") if mode != "hard" else None, onehot_frac=avg("onehot_frac"),
                seconds=time.time() - t_start, per_batch=per_batch, cells=cells, stats=acc)


# ------------------------------------------------------------------------------------------------ report
def _fmt(v, se=None):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.3g}" if se is None or math.isnan(se) else f"{v:.3g} ± {se:.1g}"


def markdown(res):
    """One mode's result (`measure`) as a settings line and a Markdown table."""
    head = (f"**{res['mode']}** (tau {res['tau']:g}, sigma {res['sigma']:.3g}): K = {res['batches']} batches of "
            f"{res['prompts']} prompts x {res['samples']} samples, jackknife over {res['buckets']} buckets; "
            f"mean reward {res['reward']:.1f}, zero-advantage groups {res['zero_adv_frac']:.0%}, "
            f"CoT {res['cot_len']:.1f} steps")
    if res["onehot_frac"] is not None:
        head += f", tau-softmax exactly one-hot at {res['onehot_frac']:.1%} of CoT steps"
    head += (f"; {res['seconds']:.0f} s ({res['seconds'] / res['batches']:.1f} s per batch). "
             f"Parameters: embed {res['params']['embed']:,}, body {res['params']['body']:,}.")
    cols = ["term", "params", "E‖g‖²", "‖E[g]‖²", "tr Cov", "SNR per batch", "split-half cos (predicted)",
            "SGD cos", "Adam cos"]
    lines = [head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for t in TERMS + ("total",):
        for g in GROUPS + ("all",):
            c = res["cells"][t][g]
            row = [t, g, _fmt(*c["mean_sq"]), _fmt(*c["signal"]), _fmt(*c["noise"]), _fmt(*c["snr"]),
                   f"{_fmt(c['split_cos'])} ({_fmt(c['split_cos_predicted'])})", _fmt(*c["sgd_cos"]),
                   _fmt(*c["adam_cos"]) if "adam_cos" in c else ""]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    _, recipe = recipes.recipe_of(argv, default="tiny")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="tiny", choices=sorted(recipes.RECIPES),
                   help="train.py's recipe: its model, data, prompt, batch shape and lengths are the defaults")
    p.add_argument("--mode", nargs="+", default=["fuzzy"], help="one or more of hard, soft, fuzzy")
    p.add_argument("--batches", type=int, default=16, help="K: independent rollout batches per mode")
    p.add_argument("--buckets", type=int, default=8,
                   help="M: bucket sums kept per cell (even, 4..K); memory (2M + 3) x 4 bytes per parameter")
    p.add_argument("--tau", type=float, default=None, help="CoT temperature (default: the mode's training tau)")
    p.add_argument("--gamma", type=float, default=softcot.GAMMA, help="sigma = gamma * RMS(E)")
    p.add_argument("--top_k", type=int, default=None)
    p.add_argument("--model", help="Hugging Face name or local folder; 'toy' / 'toy-calibrated' / 'toy-slips' / 'smol' as in "
                   "train.py")
    p.add_argument("--dataset")
    p.add_argument("--data_path", default=None)
    p.add_argument("--prompt", choices=list(recipes.PROMPTS), help=recipes.PROMPT_HELP)
    p.add_argument("--val_size", type=int, help="problems train.py holds out for validation (never drawn here)")
    p.add_argument("--prompts_per_step", type=int, help="B: the fixed prompts (train.py's step-1 draw)")
    p.add_argument("--samples", type=int, help="G: samples per prompt")
    p.add_argument("--micro_batch", type=int)
    p.add_argument("--max_cot_tokens", type=int)
    p.add_argument("--max_answer_tokens", type=int)
    p.add_argument("--answer_temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="the base model (toy), the prompts and the rollouts")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="the weights' dtype (train.py's --dtype: fp32 master weights by default)")
    p.add_argument("--out", default=None, help="folder for gradsignal.json / .md (default runs/gradsignal-<recipe>)")
    p.set_defaults(**recipe)
    args = p.parse_args(argv)
    bad = [m for m in args.mode if m not in softcot.MODES]
    if bad:
        p.error(f"--mode {' '.join(bad)}: use hard, soft or fuzzy")
    if not 4 <= args.buckets <= args.batches or args.buckets % 2:
        p.error(f"--buckets {args.buckets}: must be even and between 4 and --batches ({args.batches})")
    problem = recipes.cache_problem(args.model, args.seed)
    if problem:
        p.error(problem)
    args.out = args.out or f"runs/gradsignal-{args.recipe}-s{args.seed}"
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(args.seed)
    model, _, _, tok = runtime.load_model(recipes.model_path(args.model, args.seed), device, 0, 1, dtype=args.dtype,
                                          compute_dtype="float32", fsdp=False, grad_ckpt=False)
    train_rows, _ = recipes.load_problems(args.dataset, args.out, args.seed, args.val_size, args.data_path)
    batch = recipes.batch_rng(args.seed, 0).sample(train_rows, args.prompts_per_step)   # train.py's step 1
    prompts = [recipes.prompt_text(args.prompt, r["question"]) for r in batch]
    golds = [r["answer"] for r in batch]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{args.recipe}: {n_params:,} parameters; bucket sums and sums of squares take "
          f"{(2 * args.buckets + 3) * 4 * n_params / 1e9:.2f} GB", flush=True)
    results, md = [], [f"`python gradsignal.py {' '.join(argv)}`"]
    for mode in args.mode:
        sigma = softcot.noise_sigma(model, args.gamma) if mode != "hard" else 0.0
        res = measure(model, tok, prompts, golds, mode=mode, tau=args.tau, sigma=sigma, batches=args.batches,
                      buckets=args.buckets, samples=args.samples, max_cot_tokens=args.max_cot_tokens,
                      max_answer_tokens=args.max_answer_tokens, answer_temperature=args.answer_temperature,
                      top_k=args.top_k, micro_batch=args.micro_batch, seed=args.seed,
                      log=lambda s: print(s, flush=True))
        del res["stats"]
        results.append(res)
        md.append(markdown(res))
        print("\n" + md[-1] + "\n", flush=True)
        os.makedirs(args.out, exist_ok=True)      # after each mode: a killed run keeps the modes it finished
        with open(os.path.join(args.out, "gradsignal.json"), "w") as f:
            json.dump(dict(args=vars(args), results=results), f, indent=1)
        with open(os.path.join(args.out, "gradsignal.md"), "w") as f:
            f.write("\n\n".join(md) + "\n")


if __name__ == "__main__":
    main()
