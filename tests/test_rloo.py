"""Tests for rloo.py against independent references: a brute-force Eq. 12, the analytic
REINFORCE gradient of a linear-softmax policy (Eq. 15), and a simulated 2-rank DDP run with
gradient accumulation that must reproduce the single-process full-batch gradient."""

import pytest
import torch

from rloo import rank_slice, rloo_advantages, rloo_loss, zero_advantage_fraction


def brute_force_advantages(r):
    B, G = r.shape
    out = torch.empty_like(r)
    for b in range(B):
        for g in range(G):
            others = [r[b, j].item() for j in range(G) if j != g]
            out[b, g] = r[b, g] - sum(others) / len(others)
    return out


@pytest.mark.parametrize("B,G", [(1, 2), (2, 32), (5, 3)])
def test_advantages_equal_brute_force(B, G):
    torch.manual_seed(B * G)
    r = torch.tensor([0.0, 10.0, 100.0])[torch.randint(0, 3, (B, G))].double()
    torch.testing.assert_close(rloo_advantages(r), brute_force_advantages(r))


def test_advantages_sum_to_zero_and_ignore_a_constant_per_group():
    torch.manual_seed(0)
    r = torch.rand(4, 8) * 100
    adv = rloo_advantages(r)
    torch.testing.assert_close(adv.sum(dim=1), torch.zeros(4), atol=1e-4, rtol=0)
    shifted = r + torch.tensor([[0.0], [5.0], [-30.0], [1e3]])  # a different constant per group
    torch.testing.assert_close(rloo_advantages(shifted), adv, atol=1e-3, rtol=0)
    # known values, and no std normalisation: rewards 100, 0, 0, 0 -> 100, -33.3, -33.3, -33.3
    torch.testing.assert_close(rloo_advantages([[100.0, 0.0, 0.0, 0.0]]),
                               torch.tensor([[100.0, -100 / 3, -100 / 3, -100 / 3]]))


def test_advantages_are_constants_and_accept_lists_and_ints():
    r = torch.tensor([[1.0, 2.0], [3.0, 5.0]], requires_grad=True)
    assert not rloo_advantages(r).requires_grad
    assert rloo_advantages([[100, 10]]).tolist() == [[90.0, -90.0]]


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="at least 2 samples"):
        rloo_advantages(torch.ones(3, 1))
    with pytest.raises(ValueError, match=r"\(B, G\) matrix"):
        rloo_advantages(torch.ones(6))
    with pytest.raises(ValueError, match=r"shape \(n,\)"):
        rloo_loss(torch.zeros(3), torch.zeros(4), 4)
    with pytest.raises(ValueError, match="positive"):
        rloo_loss(torch.zeros(3), torch.zeros(3), 0)
    with pytest.raises(ValueError, match="rank must be"):
        rank_slice(10, 2, 2)


def test_zero_advantage_fraction():
    r = torch.tensor([[100.0, 100.0, 100.0], [0.0, 10.0, 0.0], [10.0, 10.0, 10.0], [0.0, 0.0, 100.0]])
    assert zero_advantage_fraction(r) == 0.5
    assert (rloo_advantages(r)[[0, 2]] == 0).all()


# ---------------------------------------------------------------- a tiny policy
# A linear softmax over K actions, T steps per "sequence".

K, F, T = 5, 3, 4


def rollouts(B, G, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(K, F, generator=g)
    x = torch.randn(B * G, T, F, generator=g)  # (N, T, F) per-step features
    a = torch.randint(0, K, (B * G, T), generator=g)  # (N, T) the sampled actions
    r = torch.tensor([0.0, 10.0, 100.0])[torch.randint(0, 3, (B, G), generator=g)]  # (B, G)
    return W, x, a, r


def seq_logprob(W, x, a):
    """Eq. 13: the per-sequence SUM of log pi(a_t | x_t).   (N, T, F), (N, T) -> (N,)"""
    logits = torch.einsum("ntf,kf->ntk", x, W)
    return torch.log_softmax(logits, -1).gather(-1, a[..., None])[..., 0].sum(-1)


def test_loss_gradient_equals_eq15_by_hand():
    B, G = 3, 4
    W, x, a, r = rollouts(B, G)
    adv = rloo_advantages(r).flatten()  # (N,)
    Wp = W.clone().requires_grad_()
    rloo_loss(seq_logprob(Wp, x, a), adv, B * G).backward()
    # Eq. 15 by hand: grad_W log softmax(W x)[a] = (onehot(a) - p) x^T, summed over steps.
    p = torch.softmax(torch.einsum("ntf,kf->ntk", x, W), -1)  # (N, T, K)
    dlogp = torch.einsum("ntk,ntf->nkf", torch.nn.functional.one_hot(a, K) - p, x)  # (N, K, F)
    expected = -(adv[:, None, None] * dlogp).sum(0) / (B * G)
    torch.testing.assert_close(Wp.grad, expected)


@pytest.mark.parametrize("P,micro", [(2, 2), (5, 2), (3, 1)])
def test_ranks_and_micro_batches_reproduce_the_full_batch_gradient(P, micro):
    """P ranks split the B*G sequences (groups straddle ranks), each accumulates `micro`
    micro-batches, DDP averages: the result must equal one process on the full batch."""
    B, G = 3, 4
    N = B * G
    W, x, a, r = rollouts(B, G, seed=P)
    adv = rloo_advantages(r).flatten()  # every rank sees the all-gathered rewards

    full = W.clone().requires_grad_()
    rloo_loss(seq_logprob(full, x, a), adv, N).backward()

    shares = [rank_slice(N, rank, P) for rank in range(P)]
    assert sorted(i for s in shares for i in range(N)[s]) == list(range(N))  # a partition
    if P == 2:
        assert shares[0].stop % G != 0  # the split falls inside a group
    rank_grads = []
    for share in shares:
        Wr = W.clone().requires_grad_()
        idx = torch.arange(N)[share]
        for mb in torch.tensor_split(idx, micro):  # gradient accumulation on this rank
            rloo_loss(seq_logprob(Wr, x[mb], a[mb]), adv[mb], N, world_size=P).backward()
        rank_grads.append(Wr.grad)
    ddp_grad = torch.stack(rank_grads).mean(0)  # what DDP's all-reduce leaves on every rank
    torch.testing.assert_close(ddp_grad, full.grad)
