"""The fast paths against the plain ones, and bench.py --quick as a smoke run.

softcot.mixture's exact sparse path (softcot.SPARSE_MIXTURE) mixes only the p_i that are not exactly 0; it must equal
the dense p E of Eq. 5 in value and gradient, including rows where the top logits nearly tie or tie exactly (several
p_i > 0 at tau = 1e-4). bench.attention_read, the fused attention read bench.py measures, must equal the plain
softmax(h W^T / tau) E, or its timings compare different things.
"""
import json
import os

import pytest
import torch

import bench
import softcot
from conftest import make_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mix(fast, *args, **kw):
    """softcot.mixture on the sparse path (fast) or the dense one (plain)."""
    return bench.path(fast, lambda: softcot.mixture(*args, **kw))()


def tied_logits(shape, V, dtype=torch.float32, seed=0):
    """Model-scale random logits (*shape, V) with ties: rows cycle through a near tie (top two 2e-3 apart: both
    p_i > 0 at tau = 1e-4), an exact tie, three entries within 5e-3, and a clear winner (one-hot)."""
    g = torch.Generator().manual_seed(seed)
    x = (3 * torch.randn(*shape, V, generator=g)).to(dtype).float()
    flat = x.view(-1, V)
    top = flat.argmax(-1)
    for r in range(len(flat)):
        t, j, k = top[r].item(), (top[r].item() + 1) % V, (top[r].item() + 2) % V
        if r % 4 == 0:
            flat[r, j] = flat[r, t] - 2e-3
        elif r % 4 == 1:
            flat[r, j] = flat[r, t]
        elif r % 4 == 2:
            flat[r, j], flat[r, k] = flat[r, t] - 5e-3, flat[r, t] - 1e-3
    return x.to(dtype)


SHAPES = [(6,), (3, 4)]          # (B, V) and (B, T, V) logits


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=["BV", "BTV"])
@pytest.mark.parametrize("tau", [1e-4, 1e-3, 1e-6])
def test_sparse_mixture_equals_dense(shape, dtype, tau):
    V, d = 500, 16
    logits = tied_logits(shape, V, dtype)
    E = torch.randn(V, d, generator=torch.Generator().manual_seed(1)).to(dtype)
    p = torch.softmax(logits.float() / tau, -1)
    if tau == 1e-4:        # the test covers what it claims: rows with several nonzero p_i, and one-hot rows
        nnz = (p > 0).sum(-1).flatten()
        assert nnz.max() >= 3 and nnz.min() == 1
    assert softcot._sparse_mixture(logits.float(), E, tau) is not None           # the sparse path is taken
    fast, plain = mix(True, logits, E, tau), mix(False, logits, E, tau)
    assert fast.shape == plain.shape == (*shape, d) and fast.dtype == plain.dtype == torch.float32
    tol = dict(atol=1e-6, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(fast, plain, **tol)
    torch.testing.assert_close(fast, (p @ E.float()), **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=["fp64", "fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=["BV", "BTV"])
def test_sparse_mixture_gradient_equals_dense(shape, dtype):
    """d/d logits flows only through p_i > 0 (elsewhere p_i (...) = 0); d/d E reaches only rows with p_i > 0."""
    V, d, tau = 500, 16, 1e-4
    logits0 = tied_logits(shape, V, dtype)
    E0 = torch.randn(V, d, generator=torch.Generator().manual_seed(1)).to(dtype)
    g = torch.randn(*shape, d, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    grads = []
    for fast in (True, False):
        logits, E = logits0.clone().requires_grad_(), E0.clone().requires_grad_()
        (mix(fast, logits, E, tau) * g.to(torch.float64 if dtype == torch.float64 else torch.float32)).sum().backward()
        grads.append((logits.grad, E.grad))
    (gl_fast, gE_fast), (gl_plain, gE_plain) = grads
    assert gl_plain.abs().max() > 0                    # the near ties carry a (large, 1/tau) gradient
    tol = dict(atol=1e-4 * gl_plain.abs().max().item(), rtol=1e-4) if dtype != torch.bfloat16 else \
        dict(atol=2e-2 * gl_plain.abs().max().item(), rtol=2e-2)
    torch.testing.assert_close(gl_fast, gl_plain, **tol)
    torch.testing.assert_close(gE_fast, gE_plain, **(dict(atol=1e-6, rtol=1e-5) if dtype != torch.bfloat16 else
                                                     dict(atol=2e-2, rtol=2e-2)))
    support = (torch.softmax(logits0.double() / tau, -1) > 0).flatten(0, -2).any(0)      # (V,) rows with p_i > 0
    assert (gE_fast[~support] == 0).all() and (gE_plain[~support] == 0).all()
    assert (gl_fast[..., ~support] == 0).all()


def test_sparse_path_keeps_every_nonzero_p_at_the_underflow_edge():
    """Second logits 0.0100 .. 0.0108 below the top: at tau = 1e-4, exp(-100 .. -108) goes from subnormal to 0 in
    fp32. Wherever the dense p_i is nonzero, however small, E's gradient row i is nonzero on both paths."""
    V, d, tau = 64, 4, 1e-4
    gaps = torch.linspace(0.0100, 0.0108, 33)
    logits0 = torch.zeros(len(gaps), V) - 1.0
    logits0[:, 0], logits0[:, 1] = 5.0, 5.0 - gaps
    p = torch.softmax(logits0 / tau, -1)
    assert (p[:, 1] > 0).any() and (p[:, 1] == 0).any() and p[:, 1].max() < 1e-37       # the edge is crossed
    g = torch.ones(len(gaps), d)
    for fast in (True, False):
        grads = []
        for r in range(len(gaps)):          # one row at a time: E's gradient row 1 then belongs to that row alone
            E = torch.ones(V, d, requires_grad=True)
            (mix(fast, logits0[r:r + 1], E, tau) * g[r]).sum().backward()
            grads.append(E.grad[1, 0].item())
        assert [x != 0 for x in grads] == (p[:, 1] > 0).tolist()


def test_sparse_path_falls_back_when_a_row_has_many_nonzero_p():
    V, d = 300, 8
    E = torch.randn(V, d)
    logits = torch.randn(4, V)
    logits[2, :softcot.SPARSE_MAX_K] = 5.0            # one row with SPARSE_MAX_K exactly tied entries
    assert softcot._sparse_mixture(logits, E, 1e-4) is None
    torch.testing.assert_close(mix(True, logits, E, 1e-4), mix(False, logits, E, 1e-4))
    assert softcot._sparse_mixture(torch.randn(4, V), E, 0.5) is None       # soft mode: every p_i > 0, dense
    logits[2, :softcot.SPARSE_MAX_K - 1] = 5.0       # one fewer: sparse again, and still equal
    logits[2, softcot.SPARSE_MAX_K - 1] = 0.0
    assert softcot._sparse_mixture(logits, E, 1e-4) is not None
    torch.testing.assert_close(mix(True, logits, E, 1e-4), mix(False, logits, E, 1e-4))


def test_sparse_path_with_the_top_k_ablation():
    """top_k masks all but k logits to -inf, so at most k (plus ties) p_i are nonzero: sparse up to SPARSE_MAX_TAU,
    dense above it, equal to the plain path either way."""
    logits, E = tied_logits((5,), 200), torch.randn(200, 8)
    masked = logits.masked_fill(logits < logits.topk(3).values[:, -1:], float("-inf"))
    for tau in (softcot.SPARSE_MAX_TAU, 1e-2, 1e-4, 0.5):
        assert softcot._sparse_mixture(masked, E, tau) is not None
        torch.testing.assert_close(mix(True, logits, E, tau, top_k=3), mix(False, logits, E, tau, top_k=3))


def test_fuzzy_rollout_and_rescoring_fast_equal_plain(tokenizer, monkeypatch):
    """A fuzzy rollout and its re-scoring (values and every parameter's gradient) on a tiny model are the same on
    either path, and the sparse path is really taken at every CoT step."""
    model = make_model("llama", tokenizer, tied=True)
    sigma = softcot.noise_sigma(model)
    taken, sparse = [], softcot._sparse_mixture

    def spy(*args):                        # records whether each mixture call went sparse
        h = sparse(*args)
        taken.append(h is not None)
        return h
    monkeypatch.setattr(softcot, "_sparse_mixture", spy)
    out = {}
    for fast in (True, False):
        ro = bench.path(fast, lambda: softcot.rollout(
            model, tokenizer, ["User: what is 3 + 4? Assistant:", "Natalia", "She sold 48 / 2 = 24 clips"],
            mode="fuzzy", tau=1e-4, sigma=sigma, num_samples=2, max_cot_tokens=16, answer_temperature=1.0,
            generator=torch.Generator().manual_seed(0)))()
        model.zero_grad(set_to_none=True)
        lp = bench.path(fast, lambda: softcot.sequence_logprobs(model, ro))()
        lp.sum().backward()
        out[fast] = ro, lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    assert taken and all(taken)
    (a, lp_a, g_a), (b, lp_b, g_b) = out[True], out[False]
    assert torch.equal(a.ids, b.ids) and a.answer_text == b.answer_text and a.cot_text == b.cot_text
    torch.testing.assert_close(a.cot_embeds, b.cot_embeds, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a.logp, b.logp, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(lp_a, lp_b, atol=1e-3, rtol=1e-5)
    for name in g_a:
        scale = g_b[name].abs().max().item()
        torch.testing.assert_close(g_a[name], g_b[name], atol=1e-5 * scale + 1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("tau", [0.5, 0.05])
def test_attention_read_equals_plain_mixture(tau):
    """bench.attention_read = softmax(h W^T / tau) E, value and gradients (at tau 1e-4 the rounding of h W^T
    alone decides near ties, so the two are compared where that cannot matter)."""
    torch.manual_seed(0)
    V, d = 400, 32
    h0, W0, E0 = torch.randn(6, d), torch.randn(V, d) / d**0.5, torch.randn(V, d)
    grads = []
    for fn in (lambda h, W, E: bench.attention_read(h, W, E, tau), lambda h, W, E: mix(False, h @ W.T, E, tau)):
        h, W, E = (t.clone().requires_grad_() for t in (h0, W0, E0))
        y = fn(h, W, E)
        (y * torch.arange(d)).sum().backward()
        grads.append((y.detach(), h.grad, W.grad, E.grad))
    for fused, plain in zip(*grads):
        torch.testing.assert_close(fused, plain, atol=1e-5 * plain.abs().max().item(), rtol=1e-3)


def test_peak_memory_counts_what_a_call_allocates(capfd):
    def f():
        a = torch.ones(1 << 20)            # 4 MiB, freed before b is made
        del a
        b = torch.ones(1 << 19)            # 2 MiB
        os.write(2, b"an error of the measured call\n")   # fd 2, as C++ writes it: must still come out
        return b.sum()
    peak = bench.peak_memory(f, "cpu")
    assert 4 * 2**20 <= peak < 4.1 * 2**20
    # the profiler's USDT profiler_start / profiler_stop lines (2 per profile) are dropped, nothing else
    assert capfd.readouterr().err == "an error of the measured call\n"


def test_bench_quick_runs(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--quick", "--out", str(out)])   # in this process: the code of `python bench.py --quick`
    stdout = capsys.readouterr().out
    assert "| tiny |" in stdout and "ours / generate" in stdout
    res = json.loads(out.read_text())["results"]["tiny"]
    assert set(res["rollout"]["seconds"]) == {"generate", "hard", "soft", "fuzzy plain", "fuzzy fast"}
    assert all(peak > 0 for w in res["rescore"]["sweep"] for peak in w["peak_bytes"].values())
