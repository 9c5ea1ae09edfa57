"""FSDP2's loading and precision (runtime.load_fsdp), in this process: a one-rank gloo group runs the same code as 8
GPUs (sharding over one rank still casts, gathers and reduces). Checked: the model folder's generation config (its
EOS list) survives loading and saving, the shards' root (E, head) and the rollout copy's E and head stay fp32 under
bf16 compute, and the sharded re-score agrees with the DDP path (fp32 masters under bf16 autocast)."""
import json
import os

import pytest
import torch
import torch.distributed as dist
from safetensors import safe_open

import checkpoints
import runtime
import softcot
from conftest import make_model

PROMPTS = ["Natalia sold", "User: what is 3 + 4? Assistant:"]


@pytest.fixture()
def one_rank_group(tmp_path):
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def two_eos_folder(tokenizer, tmp_path, tied=True):
    """A Qwen2-shaped folder whose config.json names one EOS and generation_config.json two, as Qwen2.5's do."""
    path = str(tmp_path / "model")
    model = make_model("qwen2", tokenizer, tied=tied)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    assert json.load(open(os.path.join(path, "config.json")))["eos_token_id"] == tokenizer.eos_token_id
    return path, [tokenizer.eos_token_id, tokenizer.pad_token_id]


def test_fsdp_keeps_the_generation_config(tokenizer, tmp_path, one_rank_group):
    """Built with from_config, both FSDP models had config.json's single EOS: a rollout ran past the second one,
    and every checkpoint saved the reduced list."""
    path, eos = two_eos_folder(tokenizer, tmp_path)
    lm, scorer, rollout_lm = runtime.load_fsdp(path, torch.device("cpu"), 0, torch.float32, torch.float32)
    assert lm.generation_config.eos_token_id == rollout_lm.generation_config.eos_token_id == eos
    assert softcot._eos_ids(rollout_lm, tokenizer) == set(eos)
    weights, _ = runtime.gather_state(scorer, None, fsdp=True, with_optimizer=False)
    checkpoints.save_checkpoint(str(tmp_path / "best"), lm, tokenizer, weights=weights)
    assert json.load(open(tmp_path / "best" / "generation_config.json"))["eos_token_id"] == eos
    # the tied E is written once, under the name a plain save_pretrained gives it (it was written twice)
    with safe_open(str(tmp_path / "best" / "model.safetensors"), "pt") as f, \
            safe_open(os.path.join(path, "model.safetensors"), "pt") as g:
        assert sorted(f.keys()) == sorted(g.keys()) and "lm_head.weight" not in f.keys()
        assert all(torch.equal(f.get_tensor(k), g.get_tensor(k)) for k in f.keys())


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_fsdp_head_and_mixture_are_fp32_under_bf16(tokenizer, tmp_path, one_rank_group, tied, monkeypatch):
    """Under --fsdp with bf16 compute the mixture p E and the head must see fp32 E and head weights, in the sharded
    re-score and in the rollout copy (the decoder layers are bf16 in both); the re-score then agrees with the DDP
    path's (autocast over the same fp32 weights) to bf16-layer rounding."""
    path, _ = two_eos_folder(tokenizer, tmp_path, tied=tied)
    lm, scorer, rollout_lm = runtime.load_fsdp(path, torch.device("cpu"), 0, torch.float32, torch.bfloat16)
    ctx = runtime.compute_context(torch.device("cpu"), torch.bfloat16)
    seen = []   # the dtypes of E in every mixture, and of the head weight in every FP32Head forward
    mixture, head = softcot.mixture, softcot.FP32Head.forward
    monkeypatch.setattr(softcot, "mixture",
                        lambda logits, E, *a, **k: seen.append(E.dtype) or mixture(logits, E, *a, **k))
    monkeypatch.setattr(softcot.FP32Head, "forward", lambda self, x: seen.append(self.weight.dtype) or head(self, x))
    with ctx:
        ro = softcot.rollout(rollout_lm, tokenizer, PROMPTS, mode="soft", tau=0.5, sigma=0.05, num_samples=2,
                             max_cot_tokens=6, max_answer_tokens=3, answer_temperature=1.0,
                             generator=torch.Generator().manual_seed(0))
    assert seen and set(seen) == {torch.float32}
    layer = rollout_lm.model.layers[0].self_attn.q_proj.weight
    assert layer.dtype == torch.bfloat16 and rollout_lm.get_input_embeddings().weight.dtype == torch.float32
    seen.clear()
    with ctx:
        lp_fsdp = scorer(ro)                                                            # (n, S)
    assert seen and set(seen) == {torch.float32}
    ddp = softcot.use_fp32_head(runtime.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32))
    with ctx:
        lp_ddp = runtime.Scorer(ddp)(ro)
    assert lp_fsdp.dtype == torch.float32
    # the layers' weights are bf16 in both (FSDP's gather, autocast's cast); only the layer norms' weights differ
    # (bf16 under FSDP, fp32 under autocast), so the two agree far more closely than a bf16 step of a logit
    assert (lp_fsdp - lp_ddp).abs().max() < 0.05
