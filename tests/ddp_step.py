"""One policy-gradient update from a fixed global batch of rollouts, on 1 process or under torchrun.

    python tests/ddp_step.py OUT.pt                               # reference: one process
    torchrun --nproc_per_node 2 tests/ddp_step.py OUT.pt          # two ranks (gloo), sequences sharded

Every rank builds the same tiny model and the same global rollout (B = 3 prompts x G = 2 samples, so with
2 ranks prompt 1's group straddles them), takes its rank's rows, and calls train.policy_gradient_step with
micro-batches of 2. Rank 0 saves the updated parameters. SGD keeps the update linear in the gradient, so any
gradient error shows (Adam's first step would hide a scale error).
"""
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rloo  # noqa: E402
import softcot  # noqa: E402
import train  # noqa: E402
from conftest import make_model, make_tokenizer  # noqa: E402

rank, world, device = train.setup_distributed()
tok = make_tokenizer()
model = make_model("llama", tok, tied=True)
B, G = 3, 2
prompts = ["User: what is 3 + 4? Assistant:", "Natalia sold", "She sold 48 / 2 = 24 clips"]
ro = softcot.rollout(model, tok, prompts, mode="soft", tau=0.5, sigma=softcot.noise_sigma(model), num_samples=G,
                     max_cot_tokens=8, max_answer_tokens=4, answer_temperature=1.0,
                     generator=torch.Generator().manual_seed(0))
adv = rloo.rloo_advantages(torch.tensor([[100.0, 0.0], [10.0, 100.0], [0.0, 10.0]])).view(-1)
mine = rloo.rank_slice(B * G, rank, world)
ddp_model = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
opt = torch.optim.SGD(model.parameters(), lr=1e-3)
norm, ok = train.policy_gradient_step(model, ddp_model, opt, ro.select(list(range(B * G))[mine]), adv[mine],
                                      B * G, world, micro_batch=2, grad_clip=0.0)
if rank == 0:
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()} | {"_norm": torch.tensor(norm)},
               sys.argv[1])
if world > 1:
    dist.destroy_process_group()
