"""
rloo.py: RLOO, the leave-one-out advantages and the REINFORCE loss, for one process or many.

Paper: Butt et al., "Soft Tokens, Hard Truths" (arXiv 2509.19170), App. A, Eq. 12, 14, 15. The paper
trains with RLOO (Kool et al. 2019), REINFORCE with a per-prompt leave-one-out baseline. For B
prompts with G sampled rollouts each, reward r_{b,g} (Eq. 11, rewards.py):

    Eq. 12   A_{b,g} = r_{b,g} - 1/(G-1) * sum_{j != g} r_{b,j}
    Eq. 13   l_{b,g} = sum_t log pi_theta(y_{b,g,t} | y_{b,g,<t}, x_b)    (softcot.py: a SUM
             over CoT and answer tokens; Gaussian terms of Eq. 10 for soft/fuzzy CoT steps)
    Eq. 14   L(theta) = -1/(B*G) * sum_{b,g} sg(A_{b,g}) * l_{b,g}
    Eq. 15   grad L   = -1/(B*G) * sum_{b,g} A_{b,g} * grad l_{b,g}

What is NOT here, because the paper has none of it: no division of the advantages by a
standard deviation (GRPO does that; here advantages are in reward units, up to +-100), no
KL penalty or reference model, no PPO ratio or clipping, no entropy bonus. Each rollout batch
gets one on-policy gradient step, so the loss needs no importance ratio. The loss VALUE is not a
progress signal (its expectation is ~0 by construction of the baseline); watch the rewards.

Many processes, micro-batches. The global batch of N = B*G sequences is split BY SEQUENCE
across P processes (a prompt's group may straddle two ranks), and each rank may split its
share into micro-batches whose gradients it accumulates. The advantages need the whole group,
so each rank all-gathers the (B, G) rewards, calls `rloo_advantages` on the full matrix and
keeps only the entries of its own sequences. Then each micro-batch calls

    rloo_loss(logp, adv, num_global_sequences=N, world_size=P)
        = -P * sum_{local micro-batch} A * l / N

Why the factor P: summing the micro-batch gradients on one rank gives -P/N * sum_{rank's
sequences} A grad l; summing that over ranks gives -P/N * sum_{all N} A grad l; DDP AVERAGES
(divides the sum over ranks by P), leaving -1/N * sum_{all} A grad l = Eq. 15 exactly. So the
update is the single-process full-batch update for any P, any split, any micro-batch size, and
results do not depend on the GPU count. (DDP needs every rank to run the same number of
backward passes; a rank with fewer sequences can run a micro-batch whose loss is 0 * logp.sum().)

Usage:
    adv = rloo_advantages(rewards)                          # (B, G) -> (B, G), constants
    adv_local = adv.flatten()[rank_slice(B * G, rank, P)]   # this rank's sequences
    for each micro-batch mb of this rank's sequences:
        logp = sequence_logprobs(...)                       # (n_mb,) Eq. 13, with grad
        rloo_loss(logp, adv_local[mb], B * G, P).backward()
"""

import torch


# ------------------------------------------------------------------------------------------------ advantages
# Eq. 12 on the (B, G) rewards of the whole step: each rank all-gathers them and keeps its own sequences' entries.


def _as_reward_matrix(rewards):
    r = torch.as_tensor(rewards)
    if r.dim() != 2:
        raise ValueError(
            f"rewards must be a (B, G) matrix, one row per prompt and one column per sample, "
            f"got shape {tuple(r.shape)}; reshape a flat list with .view(B, G)"
        )
    if not r.is_floating_point():
        r = r.float()
    return r.detach()  # rewards and baselines are constants w.r.t. theta (App. A)


def rloo_advantages(rewards):
    """Eq. 12: A_{b,g} = r_{b,g} - mean of the other G-1 rewards of prompt b.   (B, G) -> (B, G)

    No standard-deviation normalisation; the result carries no gradient. Each row sums to 0,
    and adding a constant to a row leaves its advantages unchanged.
    """
    r = _as_reward_matrix(rewards)  # (B, G)
    G = r.shape[1]
    if G < 2:
        raise ValueError(
            f"RLOO needs at least 2 samples per prompt for a leave-one-out baseline, got G={G}; "
            "sample more rollouts per prompt"
        )
    baseline = (r.sum(dim=1, keepdim=True) - r) / (G - 1)  # (B, G): mean over j != g
    return r - baseline  # (B, G)  Eq. 12


def zero_advantage_fraction(rewards):
    """Fraction of prompts whose G rewards are all equal: their advantages are all 0, so they
    give no learning signal (all right, all wrong, or all unboxed)."""
    r = _as_reward_matrix(rewards)  # (B, G)
    return (r == r[:, :1]).all(dim=1).float().mean().item()


# ------------------------------------------------------------------------------------------------ the loss
# Eq. 14 for one micro-batch, scaled so that DDP's average over ranks is Eq. 15.


def rloo_loss(logp, adv, num_global_sequences, world_size=1):
    """Eq. 14 for one micro-batch: -world_size * sum(A * l) / num_global_sequences.

    logp: (n,) per-sequence log-prob SUMS l (Eq. 13), with grad.
    adv:  (n,) these sequences' advantages from `rloo_advantages` (treated as constants).
    num_global_sequences: B*G, the sequences of the whole step over all ranks.
    world_size: P, the number of processes whose gradients DDP averages (see the module
    docstring for why the factor P makes the averaged gradient equal Eq. 15).
    """
    if logp.shape != adv.shape or logp.dim() != 1:
        raise ValueError(
            f"logp and adv must both have shape (n,), one entry per sequence, got "
            f"{tuple(logp.shape)} and {tuple(adv.shape)}"
        )
    if num_global_sequences < 1 or world_size < 1:
        raise ValueError(
            f"num_global_sequences (B*G over all ranks, got {num_global_sequences}) and "
            f"world_size (got {world_size}) must be positive"
        )
    weighted = adv.detach().to(logp) * logp  # (n,)  sg(A_{b,g}) * l_{b,g}; dtype, device of logp
    return -world_size * weighted.sum() / num_global_sequences  # Eq. 14 (its share)


# ------------------------------------------------------------------------------------------------ sharding
# Which of the B*G sequences a rank rolls out and re-scores.


def rank_slice(num_sequences, rank, world_size):
    """This rank's contiguous share of the flattened (B*G,) sequences, prompt-major.

    Shares differ by at most one sequence when P does not divide B*G; a group may straddle two
    ranks, which the loss's scaling makes harmless.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    base, extra = divmod(num_sequences, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))
