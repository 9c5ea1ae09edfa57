"""The precision policy (train.py, softcot.FP32Head) and the rollout/re-score consistency guard, emulated on CPU:
bf16 autocast over fp32 master weights, against pure bf16 weights; a constructed near-tie flip at tau = 1e-4."""
import os

import pytest
import torch
import torch.nn.functional as F

import memory
import rloo
import runtime
import softcot
import train
from conftest import make_model


def one_adamw_step(model, tok, compute, lr=3e-6):
    """One train.policy_gradient_step (AdamW, lr 3e-6 as the 8B recipe) on a soft rollout, the forward under
    autocast to `compute`. Returns (fraction of the parameters with a nonzero gradient that changed, of all)."""
    ro = softcot.rollout(model, tok, ["Natalia sold", "User: what is 3 + 4? Assistant:"], mode="soft", tau=0.5,
                         sigma=0.05, num_samples=2, max_cot_tokens=6, max_answer_tokens=3, answer_temperature=1.0,
                         generator=torch.Generator().manual_seed(0))
    adv = rloo.rloo_advantages(torch.tensor([[100.0, 0.0], [0.0, 10.0]])).view(-1)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    grads = []
    opt.register_step_pre_hook(lambda o, a, k: grads.extend(p.grad.detach().clone() for p in model.parameters()))
    ctx = runtime.compute_context(torch.device("cpu"), compute)
    train.policy_gradient_step(model, runtime.Scorer(model), opt, ro, adv, 4, 1, micro_batch=4, grad_clip=0.0, ctx=ctx)
    got_grad = torch.cat([(g != 0).flatten() for g in grads])
    changed = torch.cat([(p.detach() != b).flatten() for p, b in zip(model.parameters(), before)])
    return (changed & got_grad).sum().item() / got_grad.sum().item()


def test_fp32_masters_keep_small_adamw_updates(tokenizer):
    """fp32 masters + bf16 compute: every weight with a gradient moves. Pure bf16 weights: an AdamW step of
    ~lr = 3e-6 is far below half a bf16 step of a weight of size 0.05-0.5 (2^-9 relative: 1e-4 to 1e-3), so it
    rounds back to the old value except for the few weights within ~1e-3 of zero."""
    master = softcot.use_fp32_head(make_model("llama", tokenizer))
    assert one_adamw_step(master, tokenizer, torch.bfloat16) >= 0.99
    pure = softcot.use_fp32_head(make_model("llama", tokenizer).to(torch.bfloat16))
    assert one_adamw_step(pure, tokenizer, torch.bfloat16) < 0.1


def test_fp32_head_under_bf16_autocast(tokenizer):
    """The head's logits are fp32 and equal an fp32 matmul of the (bf16) hidden state; tying, names and the saved
    folder are unchanged (a plain Hugging Face checkpoint)."""
    for tied in (True, False):
        model = make_model("llama", tokenizer, tied=tied)
        keys = list(model.state_dict())
        softcot.use_fp32_head(model)
        assert type(model.lm_head) is softcot.FP32Head and list(model.state_dict()) == keys
        assert (model.lm_head.weight is model.model.embed_tokens.weight) == tied
        ids = torch.tensor([[5, 6, 7, 8]])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(input_ids=ids, output_hidden_states=True)
        assert out.logits.dtype == torch.float32
        h = out.hidden_states[-1]
        torch.testing.assert_close(out.logits, F.linear(h.float(), model.lm_head.weight.float()), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="nn.Linear"):
        bad = make_model("llama", tokenizer)
        bad.lm_head = torch.nn.Sequential(bad.lm_head)
        softcot.use_fp32_head(bad)


def test_mixture_is_fp32_under_autocast(tokenizer):
    """p E at tau = 0.5 under bf16 autocast equals the fp32 product: autocast must not round E to bf16."""
    model = make_model("llama", tokenizer)
    E = model.get_input_embeddings().weight
    logits = torch.randn(5, E.shape[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = softcot.mixture(logits, E, 0.5)
    torch.testing.assert_close(got, torch.softmax(logits / 0.5, -1) @ E, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", softcot.MODES)
def test_guard_masks_nothing_in_fp32(model, tokenizer, mode):
    tau, sigma = softcot.TRAIN_TAU[mode], (0.0 if mode == "hard" else softcot.noise_sigma(model))
    ro = softcot.rollout(model, tokenizer, ["Natalia sold", "She sold 48 / 2"], mode=mode, tau=tau, sigma=sigma,
                         num_samples=4, max_cot_tokens=12, max_answer_tokens=4, answer_temperature=1.0,
                         generator=torch.Generator().manual_seed(1))
    lp = softcot.sequence_logprobs(model, ro)
    assert not softcot.drifted_steps(lp, ro, tol=0.05).any()


def test_guard_catches_a_flipped_near_tie(tokenizer):
    """Fuzzy mode, tau = 1e-4. Between the rollout and the re-score we nudge the output row of the runner-up token
    at the CoT step whose top two logits are closest, so that it wins there by 1e-4 (what a differently rounded bf16
    forward does to a near tie). That step's re-scored log-prob is off by many nats and, unmasked, dominates the
    gradient; the guard leaves it out and the gradient norm is that of the unperturbed model's, give or take."""
    model = make_model("llama", tokenizer, tied=False, seed=7)   # a model whose rollout below has no near tie
    sigma = softcot.noise_sigma(model)
    ro = softcot.rollout(model, tokenizer, ["Natalia sold", "She sold 48 / 2"], mode="fuzzy", tau=1e-4, sigma=sigma,
                         num_samples=4, max_cot_tokens=12, max_answer_tokens=4, answer_temperature=1.0,
                         generator=torch.Generator().manual_seed(2))
    adv = torch.linspace(-50, 50, 8)

    def grad_norm(m, tol):
        m.zero_grad(set_to_none=True)
        lp = softcot.sequence_logprobs(m, ro)
        drift = softcot.drifted_steps(lp, ro, tol)
        rloo.rloo_loss(lp.masked_fill(drift, 0.0).sum(-1), adv, 8).backward()
        return torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]).norm().item(), drift

    reference, none = grad_norm(model, 1.0)
    assert not none.any()
    # the final hidden states at the CoT steps, and the step with the smallest top-2 gap
    with torch.no_grad():
        lp0 = softcot.sequence_logprobs(model, ro)
        E = model.get_input_embeddings().weight
        x = torch.where((ro.kind == softcot.COT)[..., None], torch.nn.functional.pad(
            ro.cot_embeds, (0, 0, 0, ro.ids.shape[1] - ro.cot_embeds.shape[1])), E[ro.ids])
        x = torch.cat([E[ro.prompt_ids], x], 1)
        mask = torch.cat([ro.prompt_mask, (ro.kind != softcot.PAD).long()], 1)
        out = model(inputs_embeds=x, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                    output_hidden_states=True)
        P = ro.prompt_ids.shape[1]
        h = out.hidden_states[-1][:, P - 1:-1]                                        # (N, S, d) predicts step s
        logits = out.logits[:, P - 1:-1].float()
        top = logits.topk(2, -1)
        gap = (top.values[..., 0] - top.values[..., 1]).masked_fill(ro.kind != softcot.COT, float("inf"))
        # at tau = 1e-4, p is exactly one-hot where the gap exceeds ~104 tau: no softmax Jacobian anywhere, so the
        # reference gradient is an ordinary one (near ties are common in tiny random models; this seed has none)
        assert gap.min() > 110 * 1e-4
        r, s = divmod(int(gap.argmin()), gap.shape[1])
        a, b = top.indices[r, s].tolist()
        W = model.get_output_embeddings().weight
        hv = h[r, s]
        W[b] += (gap[r, s] + 1e-4) * hv / hv.dot(hv)                                 # logit_b(r, s) += gap + 1e-4
    nudged, drift = grad_norm(model, 1.0)
    assert drift[r, s] and drift.sum() <= 3, drift.nonzero()
    unmasked, _ = grad_norm(model, float("inf"))
    lp1 = softcot.sequence_logprobs(model, ro).detach()
    assert (lp1 - lp0)[r, s].abs() > 10                                               # the flip costs many nats
    assert unmasked > 10 * reference and nudged < 3 * reference, (reference, nudged, unmasked)


def test_memory_plan_counts_what_torch_allocates(tokenizer):
    """Parameters, gradients and AdamW states of the plan equal the bytes of those tensors after a real step."""
    model = make_model("llama", tokenizer, tied=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sum(p.sum() for p in model.parameters()).backward()
    opt.step()
    args = train.parse_args(["--recipe", "tiny", "--micro_batch", "2"])
    p = memory.plan(model.config, args, 1, torch.device("cpu"))
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)     # noqa: E731
    assert p["parameters"] == nbytes(model.parameters())
    assert p["gradients"] == nbytes(p_.grad for p_ in model.parameters())
    assert p["optimizer"] == nbytes(v for s in opt.state.values() for k, v in s.items() if k != "step")


@pytest.mark.parametrize("mode", ["hard", "soft"])
def test_memory_plan_activations_against_the_profiler(mode, monkeypatch):
    """The re-score's estimated working memory against the peak the profiler records for one micro-batch's forward
    and backward (bench.py's measure): an estimate, so a margin: within -25% / +75%, erring high."""
    import bench
    from transformers import LlamaConfig, LlamaForCausalLM
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    V, micro, cot = 4000, 4, 32
    vocab = {"<pad>": 0, "<unk>": 1} | {f"w{i}": i for i in range(2, V)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=V, hidden_size=128, intermediate_size=344, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, pad_token_id=0,
                                         bos_token_id=None, eos_token_id=None))
    ro = bench.roll(model, tok, bench.prompts(micro, 16, V), mode, cot, 0.05)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    measured = bench.peak_memory(lambda: bench.rescore_step(model, ro, micro), "cpu")
    args = train.parse_args(["--recipe", "tiny", "--mode", mode, "--micro_batch", str(micro), "--max_cot_tokens",
                             str(cot), "--max_answer_tokens", "1", "--prompts_per_step", "1", "--samples", str(micro)])
    monkeypatch.setattr(memory, "PREFILL_TOKENS", 1)                  # bench's one-token prefill
    p = memory.plan(model.config, args, 1, torch.device("cpu"), prompt_tokens=ro.prompt_ids.shape[1])
    assert 0.75 * measured < p["_rescore"] < 1.75 * measured, (p["_rescore"], measured)


def test_gpu_check_step_runs_on_cpu(capsys):
    """scripts/gpu_check.py's model step (the Llama-3.2-3B-shaped check), on CPU at the tiny shape: its code runs."""
    import importlib.util
    import os
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(os.path.dirname(memory.__file__),
                                                                            "scripts", "gpu_check.py"))
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    gpu_check.model_step(shape="tiny", device="cpu", rows=4, cot=6, micro=2)
    out = capsys.readouterr().out
    assert all(f"| {mode} |" in out for mode in softcot.MODES)


def test_activation_checkpointing_gives_the_same_gradient(tokenizer):
    """--grad_ckpt recomputes each layer in the backward: the same gradient, up to float summation order."""
    grads = []
    for ckpt in (False, True):
        model = make_model("llama", tokenizer)
        ro = softcot.rollout(model, tokenizer, ["Natalia sold", "She sold 48 / 2"], mode="soft", tau=0.5, sigma=0.05,
                             num_samples=2, max_cot_tokens=6, max_answer_tokens=3, answer_temperature=1.0,
                             generator=torch.Generator().manual_seed(3))
        if ckpt:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        assert model.is_gradient_checkpointing == ckpt
        adv = torch.tensor([1.0, -1.0, 2.0, -2.0])
        rloo.rloo_loss(runtime.Scorer(model)(ro).sum(-1), adv, 4).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    assert grads[0].norm() > 0


def test_memory_gate_keeps_headroom_and_the_docs_tables_are_its_own():
    """The gate compares plan + headroom with what torch reports for the device: llama3b-math under DDP plans 75.7
    GiB, below an 80 GB card's 79.2 GiB, but leaves no room for the CUDA context, NCCL and fragmentation, so it is
    refused. README's and docs/training.md's tables are memory.table()'s, on the same GiB."""
    args = memory.gpu_run("llama3b-math")
    p = memory.plan(memory.PAPER_MODELS[args.model], args, 8, torch.device("cpu"))
    p["device"] = memory.CARD_80GB
    assert p["total"] < p["device"] and not memory.fits(p)
    assert memory.headroom(p["total"], 8) > memory.headroom(p["total"], 1) > memory.CONTEXT
    table = memory.table()
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line.split("|")[8:11] for line in table.splitlines()[2:]}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    training = open(os.path.join(root, "docs", "training.md")).read()
    assert table in training and memory.checkpoint_table() in training
    readme = open(os.path.join(root, "README.md")).read()
    for recipe in ("llama3b-gsm8k", "llama3b-math", "qwen3b-math", "llama8b-gsm8k"):
        ddp, fsdp = rows[(recipe, "DDP")], rows[(recipe, "FSDP")]
        line = next(l for l in readme.splitlines() if l.startswith(f"| {recipe} "))
        cells = [c.strip() for c in line.split("|")[2:6]]
        assert cells == [ddp[0].strip(), ddp[2].strip(), fsdp[0].strip(), fsdp[2].strip()], (line, ddp, fsdp)
