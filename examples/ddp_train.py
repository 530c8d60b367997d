"""SL-SAM under DistributedDataParallel. Launch with torchrun:

    torchrun --nproc_per_node=2 examples/ddp_train.py [--steps 20] [--report out.json]

Every rank trains on its own shard; DDP averages the gradients of both passes,
so the norms, the perturbation, the bandit and the masks agree on every rank.
Each step checks that: the ranks' masks and weight checksums are all-gathered
and compared. What DDP needs with SLSAM: `find_unused_parameters=True`, because
the inactive tensors have requires_grad=False and never produce a gradient; and
the same `seed` on every rank (SLSAM broadcasts rank 0's when seed=None).
With `--mask-mode grad` every tensor computes its gradient (inactive ones are
dropped after the all-reduce), so DDP needs no find_unused_parameters, at the
cost of the backward saving.
"""

from __future__ import annotations

import argparse
import gc
import json
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import slsam


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sparsity", type=float, default=0.3)
    ap.add_argument("--report", type=str, default=None)
    ap.add_argument("--mask-mode", default="requires_grad", choices=["requires_grad", "grad"])
    args = ap.parse_args()
    dist.init_process_group("gloo")
    result = train(args, dist.get_rank(), dist.get_world_size())
    finish(result, args.report)


def train(args: argparse.Namespace, rank: int, world: int) -> dict:
    torch.manual_seed(0)  # same initial weights on every rank
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
                                torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
                                torch.nn.Linear(32, 4))
    # mask_mode="grad" keeps every tensor in the graph (no backward saving), so plain DDP works
    ddp = DDP(model, find_unused_parameters=args.mask_mode == "requires_grad")
    torch.manual_seed(100 + rank)  # different global RNG per rank: the seed broadcast matters
    opt = slsam.SLSAM(ddp.parameters(), lr=1e-2, sparsity=args.sparsity, mask_mode=args.mask_mode)
    gen = torch.Generator().manual_seed(rank)  # each rank its own data shard
    agree_mask, agree_weights, losses = True, True, []
    for _ in range(args.steps):
        x = torch.randn(32, 16, generator=gen)
        y = (x[:, :4].argmax(1))

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()
            return loss

        losses.append(float(opt.step(closure)))
        mask = opt.mask.to(torch.int64)
        masks = [torch.empty_like(mask) for _ in range(world)]
        dist.all_gather(masks, mask)
        agree_mask &= all(torch.equal(m, masks[0]) for m in masks)
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        flats = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(flats, flat)
        agree_weights &= all(torch.equal(f, flats[0]) for f in flats)
    return dict(rank=rank, world=world, masks_agree=agree_mask, weights_agree=agree_weights,
                first_loss=losses[0], last_loss=losses[-1], probs=opt.probs.tolist())


def finish(result: dict, report: str | None) -> None:
    # NOTE: called after train() has returned, so DDP, its reducer and every
    # gloo work handle are freed while the interpreter is alive. Tensors that
    # gloo threads still reference at interpreter exit abort the process
    # ("terminate called without an active exception", pytorch/pytorch#179291).
    gc.collect()
    print(json.dumps(result))
    if report:
        with open(f"{report}.rank{result['rank']}", "w") as f:
            json.dump(result, f)
    dist.barrier()  # every rank's collectives are done before the group goes away
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
