"""One policy-gradient update from a fixed global batch of rollouts, on 1 process or under torchrun (DDP or FSDP2).

    torchrun --nproc_per_node 2 tests/ddp_step.py DIR ddp-tied fsdp-tied fsdp-untied   # two ranks (gloo)

Each SETTING (`ddp` or `fsdp`, `tied` or `untied` embeddings) is one update, written to DIR/SETTING.pt; several
settings share one launch, since a process's imports (~10 s) cost more than its update. The one-process reference
is `update(...)` called in the test's own process (tests/test_train.py).

Every rank builds the same tiny model and the same global rollout (B = 3 prompts x G = 2 samples, so with
2 ranks prompt 1's group straddles them); rank 0 saves the model to a folder, and every rank loads it through
runtime.load_model (the code path of a real run), takes its rank's rows, and calls train.policy_gradient_step with
micro-batches of 2. Under FSDP the ranks first generate rollouts of different lengths with the rollout copy (rank
0's rows stop after one CoT token, rank 1's run 12): a collective inside a rollout would hang there. Rank 0 saves
the updated parameters (gathered from the shards under FSDP). SGD keeps the update linear in the gradient, so any
gradient error shows (Adam's first step would hide a scale error).
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rloo  # noqa: E402
import runtime  # noqa: E402
import softcot  # noqa: E402
import train  # noqa: E402
from conftest import make_model, make_tokenizer  # noqa: E402


def update(folder, tied, fsdp, rank=0, world=1, device=torch.device("cpu")):
    """The update on this rank; rank 0 returns the updated weights (with `_norm`, `_drifted` and the rollout copy's
    weights in `_copy`), the other ranks None."""
    tok = make_tokenizer()
    model = make_model("llama", tok, tied=tied)
    if rank == 0:
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    if world > 1:
        dist.barrier()
    B, G = 3, 2
    prompts = ["User: what is 3 + 4? Assistant:", "Natalia sold", "She sold 48 / 2 = 24 clips"]
    ro = softcot.rollout(model, tok, prompts, mode="soft", tau=0.5, sigma=softcot.noise_sigma(model), num_samples=G,
                         max_cot_tokens=8, max_answer_tokens=4, answer_temperature=1.0,
                         generator=torch.Generator().manual_seed(0))
    adv = rloo.rloo_advantages(torch.tensor([[100.0, 0.0], [10.0, 100.0], [0.0, 10.0]])).view(-1)
    mine = rloo.rank_slice(B * G, rank, world)

    lm, scorer, rollout_lm, _ = runtime.load_model(folder, device, rank, world, dtype="float32",
                                                   compute_dtype="auto", fsdp=fsdp, grad_ckpt=False)
    if fsdp:   # ranks that stop at different steps: the rollout must not wait for the other rank
        softcot.rollout(rollout_lm, tok, prompts[:1], mode="soft", tau=0.5, sigma=0.1, num_samples=2,
                        max_cot_tokens=1 if rank == 0 else 12, max_answer_tokens=1 if rank == 0 else 4)
    opt = torch.optim.SGD(lm.parameters(), lr=1e-3)
    norm, ok, drifted = train.policy_gradient_step(lm, scorer, opt, ro.select(list(range(B * G))[mine]), adv[mine],
                                                   B * G, world, micro_batch=2, grad_clip=0.0)
    weights, _ = runtime.gather_state(scorer, opt, fsdp, with_optimizer=False)
    runtime.sync_rollout_model(lm, rollout_lm)
    result = None
    if rank == 0:
        state = weights if weights is not None else lm.state_dict()
        if "lm_head.weight" not in state:   # a tied E is gathered once (runtime.gather_state); the reference has both
            state["lm_head.weight"] = state["model.embed_tokens.weight"]
        # under FSDP the rollout copy was refreshed from the shards: it must hold the updated weights too
        copy = {k: v.detach().clone() for k, v in rollout_lm.state_dict().items()}
        result = {k: v.detach().clone() for k, v in state.items()} | {"_norm": torch.tensor(norm),
                                                                      "_drifted": torch.tensor(drifted),
                                                                      "_copy": copy}
    # Free every FSDP/DDP object (each holds the process group) and wait for both ranks before the next setting
    # or the group's end: a rank that tears gloo down while the other still uses it aborts.
    del lm, scorer, rollout_lm, opt, weights
    if world > 1:
        dist.barrier()
    return result


if __name__ == "__main__":
    out, settings = sys.argv[1], sys.argv[2:]
    rank, world, device = runtime.setup_distributed()
    for setting in settings:
        sharding, tying = setting.split("-")
        state = update(os.path.join(out, setting), tying == "tied", sharding == "fsdp", rank, world, device)
        if rank == 0:
            torch.save(state, os.path.join(out, f"{setting}.pt"))
    if world > 1:
        dist.destroy_process_group()
