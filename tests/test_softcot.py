"""softcot.py against independent references: unpadded full forwards, HF generate, torch.distributions,
finite differences, and scripted models whose greedy text we choose."""
import copy
import math

import pytest
import torch
from transformers import LlamaForCausalLM

import softcot
from conftest import make_model

PROMPTS = ["User: what is 3 + 4? Assistant:", "Natalia", "She sold 48 / 2 = 24 clips in May, so"]  # 3 lengths


def gen(seed):
    return torch.Generator().manual_seed(seed)


def sample(model, tok, mode, seed=0, G=2, cot=12, ans_T=1.0, sigma=None, **kw):
    tau = softcot.TRAIN_TAU[mode]
    if sigma is None:
        sigma = 0.0 if mode == "hard" else softcot.noise_sigma(model)
    return softcot.rollout(model, tok, PROMPTS, mode=mode, tau=tau, sigma=sigma, num_samples=G,
                           max_cot_tokens=cot, answer_temperature=ans_T, generator=gen(seed), **kw)


def unpadded_logits(model, ro, r):
    """Reference: row r alone, no padding, no cache, no position ids: one plain forward over what it was fed.
    Returns the logits that predicted each generated position, (S_r, V)."""
    E = model.get_input_embeddings().weight
    prompt = ro.prompt_ids[r][ro.prompt_mask[r].bool()]
    n = int((ro.kind[r] != softcot.PAD).sum())
    x = E[ro.ids[r, :n]].clone()
    if ro.cot_embeds is not None:
        c = int(ro.cot_len[r])
        x[:c] = ro.cot_embeds[r, :c]
    x = torch.cat([E[prompt], x])[None]
    with torch.no_grad():
        return model(inputs_embeds=x).logits[0, len(prompt) - 1: len(prompt) - 1 + n].float()


def reference_logp(model, ro, r):
    """Per-step log-probs of row r from `unpadded_logits`, written out independently of softcot."""
    logits = unpadded_logits(model, ro, r)
    E = model.get_input_embeddings().weight
    out = torch.zeros(len(logits))
    for j, (k, t) in enumerate(zip(ro.kind[r].tolist(), ro.ids[r].tolist())):
        if k == softcot.ANSWER:
            out[j] = torch.log_softmax(logits[j] / ro.answer_temperature, -1)[t]
        elif k == softcot.COT and ro.mode == "hard":
            out[j] = torch.log_softmax(logits[j] / ro.tau, -1)[t]
        elif k == softcot.COT:
            mean = torch.softmax(logits[j] / ro.tau, -1) @ E
            dist = torch.distributions.Normal(mean, ro.sigma)
            const = -(mean.shape[-1] / 2) * math.log(2 * math.pi * ro.sigma**2)
            out[j] = dist.log_prob(ro.cot_embeds[r, j]).sum(-1) - const          # Eq. 10 without its constant
    return out


# ---------------------------------------------------------------- the KV-cached loop vs one full forward
@pytest.mark.parametrize("mode", softcot.MODES)
def test_cached_rollout_equals_full_forward(model, tokenizer, mode):
    """Every step's log-prob (CoT and answer) and every CoT entropy from the cached, left-padded, compacting
    loop equals a plain unpadded forward of each row; and re-scoring (sequence_logprobs) equals both."""
    ro = sample(model, tokenizer, mode, cot=20)
    assert len(set((ro.cot_len + ro.answer_len).tolist())) > 1      # rows left the batch at different steps
    with torch.no_grad():
        lp = softcot.sequence_logprobs(model, ro)
    for r in range(len(ro.cot_len)):
        n = int((ro.kind[r] != softcot.PAD).sum())
        ref = reference_logp(model, ro, r)
        torch.testing.assert_close(ro.logp[r, :n], ref, atol=2e-3, rtol=1e-4)
        torch.testing.assert_close(lp[r, :n], ref, atol=2e-3, rtol=1e-4)
        assert (lp[r, n:] == 0).all() and (lp[r][ro.kind[r] == softcot.PREFILL] == 0).all()
        logits = unpadded_logits(model, ro, r)
        c = int(ro.cot_len[r])
        torch.testing.assert_close(ro.entropy[r, :c], softcot.entropy(logits[:c]), atol=1e-4, rtol=1e-4)
        if mode != "hard":
            assert torch.equal(ro.ids[r, :c], logits[:c].argmax(-1))          # shadow = greedy token


@pytest.mark.parametrize("mode", ["soft", "fuzzy"])
def test_soft_greedy_inputs_equal_full_forward_mixture(model, tokenizer, mode):
    """sigma = 0: each fed h~ is exactly p E from the reference forward's logits (Eq. 5), position by position."""
    ro = sample(model, tokenizer, mode, sigma=0.0, G=1, ans_T=0.0)
    E = model.get_input_embeddings().weight
    for r in range(len(PROMPTS)):
        c = int(ro.cot_len[r])
        ref = torch.softmax(unpadded_logits(model, ro, r)[:c] / ro.tau, -1) @ E
        torch.testing.assert_close(ro.cot_embeds[r, :c], ref, atol=1e-4, rtol=1e-4)


def test_hard_greedy_equals_generate(model, tokenizer):
    ro = softcot.rollout(model, tokenizer, PROMPTS, mode="hard", tau=0.0, max_cot_tokens=40)
    enc = tokenizer(PROMPTS, return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(**enc, do_sample=False, max_new_tokens=40, pad_token_id=tokenizer.pad_token_id)
    new = out[:, enc.input_ids.shape[1]:]
    for r in range(len(PROMPTS)):
        c = int(ro.cot_len[r])
        assert torch.equal(ro.ids[r, :c], new[r, :c]), r
        if ro.stop_reason[r] == "eos":
            assert new[r, c - 1] == tokenizer.eos_token_id
        else:
            assert c == 40 and ro.stop_reason[r] == "cap"


# ---------------------------------------------------------------- the mixture, noise and seeds
def test_mixture_limits(tokenizer):
    E = torch.randn(50, 8)
    logits = torch.randn(4, 50) * 3
    for tau in (0.0, 1e-4, 1e-6):
        torch.testing.assert_close(softcot.mixture(logits, E, tau), E[logits.argmax(-1)], atol=1e-6, rtol=0)
    torch.testing.assert_close(softcot.mixture(logits, E, 0.5), torch.softmax(logits / 0.5, -1) @ E)
    top = softcot.mixture(logits, E, 1.0, top_k=3)
    k3 = logits.topk(3, -1)
    ref = torch.stack([torch.softmax(v, -1) @ E[i] for v, i in zip(k3.values, k3.indices)])
    torch.testing.assert_close(top, ref)


def test_noise_sigma_is_gamma_times_embedding_rms(model):
    E = model.get_input_embeddings().weight
    assert softcot.noise_sigma(model) == pytest.approx(0.33 * E.pow(2).mean().sqrt().item(), rel=1e-5)
    assert softcot.noise_sigma(model, gamma=1.0) == pytest.approx(E.pow(2).mean().sqrt().item(), rel=1e-5)


def test_seeds(model, tokenizer):
    a = sample(model, tokenizer, "soft", seed=1)
    b = sample(model, tokenizer, "soft", seed=1)
    c = sample(model, tokenizer, "soft", seed=2)
    assert torch.equal(a.cot_embeds, b.cot_embeds) and a.answer_text == b.answer_text
    assert not torch.allclose(a.cot_embeds[:, :2], c.cot_embeds[:, :2])
    g1 = sample(model, tokenizer, "soft", seed=1, sigma=0.0, ans_T=0.0)
    g2 = sample(model, tokenizer, "soft", seed=2, sigma=0.0, ans_T=0.0)
    assert torch.equal(g1.cot_embeds, g2.cot_embeds) and g1.answer_text == g2.answer_text
    assert torch.equal(g1.cot_embeds[0::2], g1.cot_embeds[1::2])   # greedy: the G copies are identical


@pytest.mark.parametrize("mode", softcot.MODES)
def test_finished_rows_do_not_change_other_rows(tokenizer, mode):
    """Row 0 gets the same result whatever the other row is and whenever it finishes (and leaves the batch)."""
    model = make_model("llama", tokenizer, tied=False)
    sigma = 0.0 if mode == "hard" else softcot.noise_sigma(model)
    outs = [softcot.rollout(model, tokenizer, [PROMPTS[0], other], mode=mode, tau=softcot.TRAIN_TAU[mode],
                            sigma=sigma, max_cot_tokens=30, answer_temperature=1.0, generator=gen(0))
            for other in (PROMPTS[1], PROMPTS[2], "x", "The final")]
    assert len({int(o.cot_len[1] + o.answer_len[1]) for o in outs}) > 1   # the other row ends differently
    ref = outs[0].select([0])
    for o in outs[1:]:
        row = o.select([0])
        assert row.answer_text == ref.answer_text and torch.equal(row.ids, ref.ids)
        if mode != "hard":
            torch.testing.assert_close(row.cot_embeds, ref.cot_embeds, atol=1e-5, rtol=1e-5)


def test_select_is_a_consistent_micro_batch(tokenizer):
    model = make_model("qwen2", tokenizer, tied=False)
    ro = sample(model, tokenizer, "fuzzy")
    with torch.no_grad():
        full = softcot.sequence_logprobs(model, ro)
        sub = softcot.sequence_logprobs(model, ro.select([1, 4]))
    torch.testing.assert_close(sub.sum(-1), full[[1, 4]].sum(-1), atol=1e-3, rtol=1e-5)
    assert ro.select([1, 4]).answer_text == [ro.answer_text[1], ro.answer_text[4]]


# ---------------------------------------------------------------- Eq. 10 and the gradient
def test_gaussian_logprob_matches_torch_distributions():
    torch.manual_seed(0)
    h, mean, sigma = torch.randn(5, 16), torch.randn(5, 16), 0.3
    const = -(16 / 2) * math.log(2 * math.pi * sigma**2)
    ref = torch.distributions.Normal(mean, sigma).log_prob(h).sum(-1)
    torch.testing.assert_close(softcot.gaussian_logprob(h, mean, sigma) + const, ref)


def test_gaussian_logprob_gradient_matches_finite_differences():
    torch.manual_seed(0)
    h = torch.randn(3, 6, dtype=torch.float64)
    mean = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m: softcot.gaussian_logprob(h, m, 0.7), (mean,))


@pytest.mark.parametrize("mode", softcot.MODES)
def test_sequence_logprob_gradient_matches_finite_differences(tokenizer, mode):
    """d l / d theta of the whole re-scoring pass, for an entry of E and of transformer weights, in fp64.
    HF's RMSNorm computes in fp32 even in an fp64 model, so a tiny step drowns in rounding: central
    differences at h and h/2, Richardson-extrapolated (error O(h^4)), agree to ~1e-4 instead."""
    model = make_model("llama", tokenizer, tied=True).double()
    ro = sample(model, tokenizer, mode, G=1, cot=6)
    params = {"E": model.get_input_embeddings().weight, "mlp": model.model.layers[0].mlp.up_proj.weight,
              "attn": model.model.layers[1].self_attn.q_proj.weight}
    loss = softcot.sequence_logprobs(model, ro).sum()
    grads = torch.autograd.grad(loss, list(params.values()))
    for (name, p), g in zip(params.items(), grads):
        i = tuple(int(v) for v in (g.abs() == g.abs().max()).nonzero()[0])   # the most sensitive entry

        def central(h):
            with torch.no_grad():
                old = p[i].item()
                p[i] = old + h
                up = softcot.sequence_logprobs(model, ro).sum().item()
                p[i] = old - h
                down = softcot.sequence_logprobs(model, ro).sum().item()
                p[i] = old
            return (up - down) / (2 * h)

        fd = (4 * central(5e-3) - central(1e-2)) / 3
        assert g[i].item() == pytest.approx(fd, rel=1e-3), name


def test_soft_gradient_reaches_embeddings_and_every_layer(tokenizer):
    model = make_model("qwen2", tokenizer, tied=False)
    ro = sample(model, tokenizer, "soft", ans_T=1.0)
    cot = (ro.kind == softcot.COT).float()
    (softcot.sequence_logprobs(model, ro) * cot).sum().backward()   # the CoT (Gaussian) terms alone
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0
    for layer in model.model.layers:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_hard_logprobs_equal_plain_input_ids_forward(model, tokenizer):
    ro = sample(model, tokenizer, "hard")
    with torch.no_grad():
        lp = softcot.sequence_logprobs(model, ro).sum(-1)
    for r in range(len(lp)):
        prompt = ro.prompt_ids[r][ro.prompt_mask[r].bool()]
        n = int((ro.kind[r] != softcot.PAD).sum())
        ids = torch.cat([prompt, ro.ids[r, :n]])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].float(), -1)
        scored = ro.kind[r, :n] != softcot.PREFILL
        ref = logp[len(prompt) - 1: len(prompt) - 1 + n].gather(-1, ro.ids[r, :n, None])[:, 0][scored].sum()
        assert lp[r].item() == pytest.approx(ref.item(), abs=2e-3)


# ---------------------------------------------------------------- App. C: the stop rule and the prefills
class ScriptedLlama(LlamaForCausalLM):
    """A tiny Llama whose greedy (and almost sure sampled) next token at absolute position q is script[q]."""
    script = {}

    def forward(self, *args, position_ids=None, **kwargs):
        out = super().forward(*args, position_ids=position_ids, **kwargs)
        pos = position_ids[:, -out.logits.shape[1]:]          # positions of the returned logits, (N, L)
        bias = torch.zeros_like(out.logits)
        for b in range(pos.shape[0]):
            for t in range(pos.shape[1]):
                nxt = int(pos[b, t]) + 1
                if nxt in self.script:
                    bias[b, t, self.script[nxt]] = 60.0
        out.logits = out.logits + bias
        return out


def scripted(tokenizer, prompt, cot_text, answer_text, prefill, eos_in_cot_at=None):
    base = make_model("llama", tokenizer)
    model = ScriptedLlama(base.config).eval()
    model.load_state_dict(base.state_dict())
    n = len(tokenizer(prompt).input_ids)
    cot = tokenizer(cot_text, add_special_tokens=False).input_ids
    if eos_in_cot_at is not None:
        cot = cot[:eos_in_cot_at] + [tokenizer.eos_token_id]
    ans = tokenizer(answer_text, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
    k = len(tokenizer(prefill, add_special_tokens=False).input_ids)
    model.script = {n + i: t for i, t in enumerate(cot)}
    model.script.update({n + len(cot) + k + j: t for j, t in enumerate(ans)})
    return model, cot


@pytest.mark.parametrize("mode", softcot.MODES)
@pytest.mark.parametrize("before", ["24 = 72.", "so 72\n", "Final answers: x", "72"])
def test_shadow_stop_fires_exactly_at_the_trigger(tokenizer, mode, before):
    cot_text = "The final answer is 5. " + before + " The final answer is:"   # a decoy without the colon
    model, cot = scripted(tokenizer, PROMPTS[0], cot_text, "72}", softcot.PREFILL_STOPPED)
    tau = {"hard": 1.0, "soft": 0.5, "fuzzy": 1e-4}[mode]
    sigma = 0.0 if mode == "hard" else softcot.noise_sigma(model)
    ro = softcot.rollout(model, tokenizer, [PROMPTS[0]], mode=mode, tau=tau, sigma=sigma, num_samples=2,
                         max_cot_tokens=60, answer_temperature=1.0, generator=gen(0))
    assert ro.stop_reason == ["trigger", "trigger"]
    assert ro.cot_len.tolist() == [len(cot)] * 2
    assert ro.cot_text[0] == cot_text
    assert ro.answer_text[0] == "\\boxed{72}".join([" ", ""])
    pre = ro.ids[0][ro.kind[0] == softcot.PREFILL].tolist()
    assert pre == tokenizer(softcot.PREFILL_STOPPED, add_special_tokens=False).input_ids
    assert int(ro.answer_len[0]) == len(tokenizer("72}", add_special_tokens=False).input_ids) + 1  # + EOS


def test_cot_that_never_stops_ends_at_the_cap_with_the_longer_prefill(tokenizer):
    model, _ = scripted(tokenizer, PROMPTS[0], "so 48 + 24 = 72 clips in all and more", "72}",
                        softcot.PREFILL_CAPPED)
    ro = softcot.rollout(model, tokenizer, [PROMPTS[0]], mode="fuzzy", tau=1e-4,
                         sigma=softcot.noise_sigma(model), max_cot_tokens=10, generator=gen(0))
    assert ro.stop_reason == ["cap"] and int(ro.cot_len[0]) == 10
    pre = ro.ids[0][ro.kind[0] == softcot.PREFILL].tolist()
    assert pre == tokenizer(softcot.PREFILL_CAPPED, add_special_tokens=False).input_ids
    assert ro.answer_text[0].startswith(" The final answer is: \\boxed{")


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_eos_inside_the_cot_ends_it_with_the_longer_prefill(tokenizer, mode):
    model, cot = scripted(tokenizer, PROMPTS[0], "so 48 + 24 = 72 clips", "72}", softcot.PREFILL_CAPPED,
                          eos_in_cot_at=3)
    sigma = 0.0 if mode == "hard" else softcot.noise_sigma(model)
    ro = softcot.rollout(model, tokenizer, [PROMPTS[0]], mode=mode, tau=softcot.TRAIN_TAU[mode], sigma=sigma,
                         max_cot_tokens=30, answer_temperature=1.0, generator=gen(0))
    assert ro.stop_reason == ["eos"] and int(ro.cot_len[0]) == 4
    assert ro.answer_text == [" The final answer is: \\boxed{72}"]


# ---------------------------------------------------------------- bad input
def test_bad_input_gives_clear_errors(tokenizer):
    model = make_model("llama", tokenizer, max_positions=64)
    ok = dict(mode="soft", tau=0.5, sigma=0.1)
    cases = [
        (dict(ok, mode="fuzy"), "unknown mode 'fuzy'"),
        (dict(ok, sigma=-1.0), "must be >= 0"),
        (dict(ok, tau=-0.5), "must be >= 0"),
        (dict(mode="hard", tau=1.0, sigma=0.1), "pass sigma=0"),
        (dict(ok, max_cot_tokens=60), "exceeds the model's context"),
        (dict(ok, top_k=0), "top_k"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg):
            softcot.rollout(model, tokenizer, PROMPTS, **kw)
    with pytest.raises(ValueError, match="empty batch"):
        softcot.rollout(model, tokenizer, [], **ok)
    nopad = copy.deepcopy(tokenizer)
    nopad.pad_token = None
    with pytest.raises(ValueError, match="tokenizer.pad_token = tokenizer.eos_token"):
        softcot.rollout(model, nopad, PROMPTS, **ok)
    greedy = softcot.rollout(model, tokenizer, PROMPTS, mode="soft", tau=0.5, max_cot_tokens=4, max_answer_tokens=4)
    with pytest.raises(ValueError, match="no log-probability"):
        softcot.sequence_logprobs(model, greedy)
