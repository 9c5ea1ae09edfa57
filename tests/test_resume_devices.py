"""A checkpoint saved on one device and read on another: multi-GPU DDP saves its optimizer state from cuda:0, and
every rank that read it without map_location put its copy on GPU 0 (out of memory at 3B). Emulated on CPU: the
trainer state is written with every storage tagged cuda:0, which a plain torch.load on this machine cannot even
place (no CUDA), so each read below fails unless it maps the state to the CPU."""
import argparse
import os

import pytest
import torch

import checkpoints
import runtime
import train
from conftest import make_model

STATE = "trainer_state.pt"


def save_from_cuda0(path, model, tok, opt, sched, step, monkeypatch):
    """checkpoints.save_checkpoint as rank 0 of a GPU run would write it: every tensor's storage tagged cuda:0."""
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        checkpoints.save_checkpoint(path, model, tok, dict(optimizer=opt.state_dict(), scheduler=sched.state_dict(),
                                                    step=step, best=0.5, skipped=0, sigma=0.1, run_id="r1"),
                             keep_previous=True, run_id="r1")


@pytest.fixture()
def trained(tokenizer):
    """A model, its AdamW and schedule after one update (so the optimizer holds exp_avg / exp_avg_sq tensors)."""
    model = make_model("llama", tokenizer)
    args = argparse.Namespace(lr=1e-3, embed_lr_scale=1.0, weight_decay=0.0, warmup=2, steps=10, fsdp=False,
                              out=None)
    opt, sched = train.make_optimizer(args, model)
    model(input_ids=torch.tensor([[5, 6, 7]])).logits.sum().backward()
    opt.step()
    sched.step()
    return args, model, opt, sched


def test_the_emulation_needs_a_map_location(tmp_path, tokenizer, trained, monkeypatch):
    args, model, opt, sched = trained
    last = str(tmp_path / "last")
    save_from_cuda0(last, model, tokenizer, opt, sched, 3, monkeypatch)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(os.path.join(last, STATE), weights_only=False)


def test_a_checkpoint_from_cuda0_resumes_on_this_device(tmp_path, tokenizer, trained, monkeypatch):
    """The parser's check calls it complete, and train.restore loads its optimizer state onto the parameters'
    device with the same values."""
    args, model, opt, sched = trained
    out = tmp_path / "run"
    last = str(out / "last")
    save_from_cuda0(last, model, tokenizer, opt, sched, 3, monkeypatch)
    assert checkpoints.checkpoint_problem(last, "r1", verify=True) is None
    args.out = str(out)
    fresh = make_model("llama", tokenizer)
    opt2, sched2 = train.make_optimizer(args, fresh)
    step, best, skipped, sigma = train.restore(args, last, runtime.Scorer(fresh), opt2, sched2, rank0=False)
    assert (step, best, skipped, sigma) == (3, 0.5, 0, 0.1)
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert b["exp_avg"].device == next(fresh.parameters()).device
        torch.testing.assert_close(a["exp_avg"], b["exp_avg"], rtol=0, atol=0)


def test_a_save_never_deletes_last_on_one_failed_read(tmp_path, tokenizer, trained, monkeypatch):
    """save_last rotates last/ to last.prev/ after reading it: a read that fails for this process's reasons (here
    the device; on a GPU, memory) must not cost the previous checkpoint."""
    args, model, opt, sched = trained
    last = str(tmp_path / "last")
    save_from_cuda0(last, model, tokenizer, opt, sched, 3, monkeypatch)
    checkpoints.save_checkpoint(last, model, tokenizer, dict(optimizer=opt.state_dict(), step=4, run_id="r1"),
                         keep_previous=True, run_id="r1")
    assert checkpoints.read_manifest(last + ".prev")["step"] == 3 and checkpoints.read_manifest(last)["step"] == 4
    # a last/ that really is damaged is set aside as last.damaged/, and last.prev/ stays the fallback
    os.remove(os.path.join(last, STATE))
    checkpoints.save_checkpoint(last, model, tokenizer, dict(optimizer=opt.state_dict(), step=5, run_id="r1"),
                         keep_previous=True, run_id="r1")
    assert [checkpoints.read_manifest(last + s)["step"] for s in ("", ".prev", ".damaged")] == [5, 3, 4]


def test_nonfinite_names_nan_and_inf_but_not_a_sum_that_overflows():
    """checkpoints.nonfinite screens each tensor by its sum: NaN and +-inf anywhere are found; finite values whose sum
    overflows to inf are not called non-finite (the full check decides then)."""
    big = torch.full((4,), 3e38)                           # finite, sum inf in fp32
    assert big.sum().isinf() and checkpoints.nonfinite({"big": big}) is None
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.zeros(1000)
        t[617] = bad
        assert checkpoints.nonfinite({"ok": torch.ones(3), "w": t, "ids": torch.tensor([1, 2])}) == "w"
    assert checkpoints.nonfinite({"ok": torch.ones(3, dtype=torch.bfloat16)}) is None
