"""SL-SAM with FSDP2 (``fully_shard``). Launch with torchrun:

    torchrun --nproc_per_node=2 examples/fsdp2_train.py [--steps 10] [--report out]

Parameters and gradients are DTensors sharded across the ranks. The kernels run
on each rank's local shard; the per-tensor norms are the all-reduced local sums
of squares, so every rank sees the same norms, perturbation scale, bandit update
and masks. The script checks that against a single-process run of the same model
(``--check``: rank 0 replays the steps unsharded with the full batch).
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ddp_train import finish  # the same exit: free gloo work, report, barrier
from torch.distributed.fsdp import fully_shard

import slsam


def make_model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32),
                               torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 4))


def batches(steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        x = torch.randn(32, 16, generator=gen)
        out.append((x, x[:, :4].argmax(1)))
    return out


def train(model: torch.nn.Module, data: list, shard: tuple[int, int] | None) -> slsam.SLSAM:
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, sparsity=0.3, seed=7)
    for x, y in data:
        if shard is not None:  # each rank its half of the batch; FSDP averages the grads
            rank, world = shard
            x, y = x.chunk(world)[rank], y.chunk(world)[rank]

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return opt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--report", type=str, default=None)
    args = ap.parse_args()
    dist.init_process_group("gloo")
    result = compare(args.steps, dist.get_rank(), dist.get_world_size())
    finish(result, args.report)


def compare(steps: int, rank: int, world: int) -> dict:
    """The sharded run against a single-process run on the same data."""
    model = make_model()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    data = batches(steps)
    opt = train(model, data, (rank, world))
    full = [p.full_tensor().detach() for p in model.parameters()]
    ref_model = make_model()
    ref = train(ref_model, data, None)
    err = max(float((a - b.detach()).abs().max()) for a, b in zip(full, ref_model.parameters(), strict=False))
    return dict(rank=rank, world=world, masks_equal=bool(torch.equal(opt.mask, ref.mask)),
                probs_err=float((opt.probs - ref.probs).abs().max()), max_weight_err=err,
                sharded=all(type(p).__name__ == "DTensor" for p in model.parameters()))


if __name__ == "__main__":
    main()
