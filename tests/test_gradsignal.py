"""gradsignal.py: the estimator on synthetic vectors with a known mean and covariance, the whole pipeline against
an expected gradient enumerated exactly (hard mode, one CoT token, one answer token), fuzzy mode's zero CoT
gradient in the transformer body, the split gradient against train.py's own step, and the command line."""
import json
import math
import os

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import gradsignal
import runtime
import rloo
import softcot
import train
from conftest import make_model


# ------------------------------------------------------------------------------------------------ the estimator
def synthetic(K, M, seed, mu, root_cov):
    """SignalStats fed K draws g = mu[t] + root_cov[t] @ z per term, groups "embed" (first 5) and "body"."""
    gen = torch.Generator().manual_seed(seed)
    st = gradsignal.SignalStats({"embed": 5, "body": mu["cot"].numel() - 5}, K, M)
    for k in range(K):
        g = {t: mu[t] + root_cov[t] @ torch.randn(mu[t].numel(), generator=gen) for t in gradsignal.TERMS}
        st.add(k, {t: {"embed": g[t][:5], "body": g[t][5:]} for t in g})
    return st


def synthetic_case(P=40):
    gen = torch.Generator().manual_seed(123)
    mu = {"cot": 0.3 * torch.randn(P, generator=gen), "answer": 0.3 * torch.randn(P, generator=gen)}
    # cot: a diagonal covariance of varied scales; answer: correlated coordinates (a dense square root)
    root = {"cot": torch.diag(0.2 + 1.5 * torch.rand(P, generator=gen)),
            "answer": 0.3 * torch.randn(P, P, generator=gen)}
    return mu, root


def test_estimator_is_unbiased_with_honest_standard_errors():
    """Over 400 seeded replications of K = 8 batches: the mean of each estimate is within 3 standard errors of the
    truth; the naive ||mean||^2 is not (so the test can tell); the jackknife SE is at least the estimate's spread
    (delete-one-bucket jackknife variances of a U-statistic are biased upward: 1.4-1.6x here, mostly noise) and
    less than twice it."""
    mu, root = synthetic_case()
    mu_tot = mu["cot"] + mu["answer"]
    cov = {t: root[t] @ root[t].T for t in root}
    truth = {"cot": (mu["cot"].pow(2).sum(), cov["cot"].trace()),
             "answer": (mu["answer"].pow(2).sum(), cov["answer"].trace()),
             "total": (mu_tot.pow(2).sum(), (cov["cot"] + cov["answer"]).trace())}   # independent terms
    K, M, R = 8, 4, 400
    est = {t: {k: [] for k in ("signal", "noise", "mean_sq", "se_signal", "naive")} for t in truth}
    for r in range(R):
        st = synthetic(K, M, r, mu, root)
        cells = st.summary()
        for t in truth:
            c = cells[t]["all"]
            est[t]["signal"].append(c["signal"][0])
            est[t]["se_signal"].append(c["signal"][1])
            est[t]["noise"].append(c["noise"][0])
            est[t]["mean_sq"].append(c["mean_sq"][0])
            est[t]["naive"].append(st.mean(t, "all").pow(2).sum().item())
    for t, (sig, tr) in truth.items():
        e = {k: torch.tensor(v, dtype=torch.float64) for k, v in est[t].items()}
        for key, target in (("signal", sig), ("noise", tr), ("mean_sq", sig + tr)):
            x = e[key]
            assert abs(x.mean() - target) < 3 * x.std() / math.sqrt(R), (t, key, x.mean().item(), float(target))
        naive = e["naive"]                    # ||mean||^2 overshoots by tr Cov / K
        assert abs(naive.mean() - sig) > 5 * naive.std() / math.sqrt(R), t
        # the jackknife over 4 buckets: conservative, not wildly so
        ratio = e["se_signal"].pow(2).mean().sqrt() / e["signal"].std()
        assert 0.9 < ratio < 2.0, (t, ratio.item())


def test_cosines_on_a_known_case():
    """SGD and Adam cosines against their closed forms for independent coordinates (many batches, so the plug-in
    second moment is close to the true one): SGD sqrt(|mu|^2 / (|mu|^2 + tr C)), Adam's direction g / sqrt(E g^2)
    sum mu_i^2 / sqrt(mu_i^2 + s_i^2) / (sqrt(P) |mu|). Adam's differs from SGD's here, so swapping them fails."""
    P = 40
    mu = {"cot": torch.zeros(P), "answer": torch.cat([torch.full((10,), 1.0), torch.zeros(P - 10)])}
    s = torch.cat([torch.full((10,), 0.5), torch.full((P - 10,), 3.0)])
    root = {"cot": torch.diag(0.5 * s), "answer": torch.diag(math.sqrt(0.75) * s)}   # total variance s^2
    var = s.pow(2)
    m = mu["answer"]
    sgd = math.sqrt(m.pow(2).sum() / (m.pow(2).sum() + var.sum()))
    adam = ((m.pow(2) / (m.pow(2) + var).sqrt()).sum() / (math.sqrt(P) * m.norm())).item()
    assert abs(adam - sgd) > 0.2                                      # 0.19 vs 0.45
    vals = {"sgd": [], "adam": []}
    for r in range(40):
        st = synthetic(256, 8, 1000 + r, mu, root)
        c = st.summary()["total"]["all"]
        vals["sgd"].append(c["sgd_cos"][0])
        vals["adam"].append(c["adam_cos"][0])
    for key, target in (("sgd", sgd), ("adam", adam)):
        x = torch.tensor(vals[key])
        assert abs(x.mean() - target) < 0.03 * target + 3 * x.std() / math.sqrt(len(x)), (key, x.mean(), target)


def test_estimator_bad_input():
    with pytest.raises(ValueError, match="buckets must be even"):
        gradsignal.SignalStats({"embed": 2, "body": 2}, 8, 3)
    with pytest.raises(ValueError, match="batches must be >= 4"):
        gradsignal.SignalStats({"embed": 2, "body": 2}, 2, 4)
    st = gradsignal.SignalStats({"embed": 2, "body": 2}, 4, 4)
    z = {t: {"embed": torch.zeros(2), "body": torch.zeros(2)} for t in gradsignal.TERMS}
    st.add(0, z)
    with pytest.raises(ValueError, match="exactly once"):
        st.add(0, z)
    with pytest.raises(ValueError, match="add them all first"):
        st.summary()


# ------------------------------------------------------------------------------------------------ exact enumeration
def word_tokenizer():
    """Six tokens; everything else (the prompts' and prefills' words) is [UNK], which is only ever an input."""
    vocab = {"<pad>": 0, "<eos>": 1, "[UNK]": 2, "a": 3, "b": 4, "c": 5}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="[UNK]")


def test_hard_mode_mean_gradient_equals_the_enumerated_expectation():
    """Hard mode, a one-token CoT x and a one-token answer y, reward R[x, y]: the expected batch gradient of Eq. 14
    is -(1/B) sum_b grad J_b with J_b = sum_{x,y} p_b(x) q_b(y | x) R[x, y] (RLOO's baseline adds nothing in
    expectation); its CoT term differentiates only p, its answer term only q. The estimator's mean over K batches
    must match each within its noise, and the unbiased ||E g||^2 within 3 standard errors. A wrong gradient (sign,
    scale, a term in the wrong place) is off by about ||E g||^2, more than 10x the noise."""
    tok = word_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=6, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3,
                      pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    V = 6
    R = torch.randint(0, 101, (V, V), generator=torch.Generator().manual_seed(1)).float()   # reward table
    prompts, golds = ["a", "b c"], ["", ""]

    def reward_fn(ro, golds):
        x = ro.ids[:, 0]                                                           # the CoT token
        y = ro.ids[ro.kind == softcot.ANSWER]                                      # one answer token per row
        assert (ro.kind == softcot.COT).sum(1).eq(1).all() and len(y) == len(x)
        return R[x, y].tolist()

    K, M = 160, 8
    res = gradsignal.measure(model, tok, prompts, golds, mode="hard", batches=K, buckets=M, samples=16,
                             max_cot_tokens=1, max_answer_tokens=1, micro_batch=32, reward_fn=reward_fn)

    # the exact expectation, by enumerating all V x V outcomes of each prompt
    groups = gradsignal.parameter_groups(model)
    params = groups["embed"] + groups["body"]
    prefill = tok(softcot.PREFILL_CAPPED, add_special_tokens=False).input_ids   # cap and EOS both give this one
    E = model.get_input_embeddings().weight
    exact = {}
    for term in ("cot", "answer"):
        J = 0.0
        for prompt in prompts:
            # inputs E[ids] as softcot feeds them: the module's padding_idx would zero the <pad> row's gradient,
            # and <pad> is a token the one-step CoT samples here
            ids = tok(prompt).input_ids
            p = torch.softmax(model(inputs_embeds=E[torch.tensor([ids])]).logits[0, -1], -1)        # (V,) p(x)
            seqs = torch.tensor([ids + [x] + prefill for x in range(V)])                            # (V, L)
            q = torch.softmax(model(inputs_embeds=E[seqs]).logits[:, -1], -1)                       # (V, V) q(y|x)
            p, q = (p, q.detach()) if term == "cot" else (p.detach(), q)
            J = J + (p[:, None] * q * R).sum()
        grads = torch.autograd.grad(-J / len(prompts), params, allow_unused=True)
        exact[term] = torch.cat([(g if g is not None else torch.zeros_like(w)).reshape(-1)
                                 for g, w in zip(grads, params)])
    exact["total"] = exact["cot"] + exact["answer"]

    for term in ("cot", "answer", "total"):
        mean = res["stats"].mean(term, "all")
        cell = res["cells"][term]["all"]
        err = (mean - exact[term]).pow(2).sum().item()
        sig = exact[term].pow(2).sum().item()
        noise_of_mean = cell["noise"][0] / K
        assert sig > 10 * noise_of_mean, f"{term}: too noisy to tell a right gradient from a wrong one"
        # E[err] = noise_of_mean; a few directions carry most of the covariance, so err / E[err] is spread like
        # a chi-square with few degrees of freedom: below 4 at better than 95% (seeds 0-3: 0.4-3.1)
        assert err < 4 * noise_of_mean, (term, err, noise_of_mean, sig)
        assert abs(cell["signal"][0] - sig) < 3 * cell["signal"][1], (term, cell["signal"], sig)


# ------------------------------------------------------------------------------------------------ fuzzy mode
def test_fuzzy_cot_term_gives_the_body_exactly_zero_gradient(tokenizer):
    """At tau = 1e-4 the fp32 softmax is exactly one-hot at these CoT steps (checked), its Jacobian is exactly 0,
    so the CoT term (Eq. 10) reaches only E: the body's gradient is exactly zero, E's is not, and the answer term
    does reach the body. The same rollouts' CoT term at soft's tau = 0.5 reaches the body (the test can fail)."""
    model = make_model("llama", tokenizer, tied=True)
    prompts = ["She sold 48 clips.", "A conversation between User and Assistant. User: what is 3 + 4?"] * 3
    sigma = softcot.noise_sigma(model)
    adv = torch.randn(len(prompts), generator=torch.Generator().manual_seed(0))
    for mode, tau in (("fuzzy", 1e-4), ("soft", 0.5)):
        ro = softcot.rollout(model, tokenizer, prompts, mode=mode, tau=tau, sigma=sigma, max_cot_tokens=12,
                             max_answer_tokens=4, answer_temperature=1.0, generator=torch.Generator().manual_seed(0))
        grads, st = gradsignal.batch_gradient(model, ro, adv, micro_batch=4)
        assert st["cot_steps"] == int((ro.kind == softcot.COT).sum()) > 0
        assert grads["cot"]["embed"].abs().sum() > 0 and grads["answer"]["body"].abs().sum() > 0
        if mode == "fuzzy":
            assert st["onehot_steps"] == st["cot_steps"], "not all one-hot: pick another seed for this test"
            assert torch.equal(grads["cot"]["body"], torch.zeros_like(grads["cot"]["body"]))
        else:
            assert st["onehot_steps"] < st["cot_steps"]
            assert grads["cot"]["body"].abs().sum() > 0


# ------------------------------------------------------------------------------------------------ the training step
class KeepGradients:
    """An optimiser stand-in for train.policy_gradient_step: keeps the gradient it would have applied."""

    def __init__(self, model):
        self.model = model

    def step(self):
        self.grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in self.model.parameters()]

    def zero_grad(self, set_to_none=True):
        self.model.zero_grad(set_to_none=set_to_none)


@pytest.mark.parametrize("mode", ["hard", "soft", "fuzzy"])
def test_split_gradient_adds_up_to_the_training_step(tokenizer, mode):
    """cot + answer terms = train.policy_gradient_step's gradient (micro-batched, unclipped), parameter by
    parameter, for an untied model (E and W_d both in "embed")."""
    model = make_model("llama", tokenizer, tied=False)
    prompts = ["She sold 48 clips.", "what is 3 + 4?"] * 2
    sigma = softcot.noise_sigma(model) if mode != "hard" else 0.0
    ro = softcot.rollout(model, tokenizer, prompts, mode=mode, tau=softcot.TRAIN_TAU[mode], sigma=sigma,
                         max_cot_tokens=10, max_answer_tokens=4, answer_temperature=1.0,
                         generator=torch.Generator().manual_seed(1))
    adv = rloo.rloo_advantages(torch.tensor([[100.0, 0.0], [10.0, 0.0]])).view(-1)
    grads, _ = gradsignal.batch_gradient(model, ro, adv, micro_batch=3)
    assert all(p.grad is None for p in model.parameters())          # autograd.grad: .grad is left alone
    opt = KeepGradients(model)
    train.policy_gradient_step(model, runtime.Scorer(model), opt, ro, adv, len(adv), 1, 3, grad_clip=0)
    groups = gradsignal.parameter_groups(model)
    assert len(groups["embed"]) == 2
    ref = {id(p): g for p, g in zip(model.parameters(), opt.grads)}
    for g, ps in groups.items():
        want = torch.cat([ref[id(p)].reshape(-1) for p in ps])
        # two backward passes summed vs one: fp32 sums in another order
        torch.testing.assert_close(grads["cot"][g] + grads["answer"][g], want, rtol=1e-3,
                                   atol=1e-5 * want.abs().max().item())


# ------------------------------------------------------------------------------------------------ the command
def test_command_line_writes_json_and_markdown(base, tmp_path):
    out = str(tmp_path / "gs")
    gradsignal.main(["--recipe", "tiny", "--model", base, "--mode", "hard", "fuzzy", "--batches", "4",
                     "--buckets", "4", "--prompts_per_step", "2", "--samples", "2", "--max_cot_tokens", "8",
                     "--val_size", "8", "--out", out])
    res = json.load(open(os.path.join(out, "gradsignal.json")))["results"]
    assert [r["mode"] for r in res] == ["hard", "fuzzy"]
    for r in res:
        assert r["batches"] == 4 and set(r["cells"]) == {"cot", "answer", "total"}
        c = r["cells"]["total"]["all"]
        assert c["mean_sq"][0] == pytest.approx(c["signal"][0] + c["noise"][0])
    md = open(os.path.join(out, "gradsignal.md")).read()
    assert md.startswith("`python gradsignal.py --recipe tiny") and md.count("| total | all |") == 2


def test_command_line_bad_input():
    with pytest.raises(SystemExit):
        gradsignal.parse_args(["--mode", "warm"])
    with pytest.raises(SystemExit):
        gradsignal.parse_args(["--batches", "8", "--buckets", "5"])
