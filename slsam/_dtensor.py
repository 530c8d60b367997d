"""DTensor (FSDP2 ``fully_shard``) support for the operators.

The kernels work on each rank's local shard; the elementwise operators need
nothing else. A per-tensor norm of a sharded tensor is the square root of the
sum over ranks of the local sums of squares, so ``grad_norms`` all-reduces the
squared local norms of the sharded tensors (one small all-reduce of n floats).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # torch without distributed
    DTensor = None  # type: ignore[assignment,misc]


def has_dtensor(tensors: Sequence[Tensor | None] | None) -> bool:
    # NOTE: over the distinct types, not the tensors: called on every operator's lists.
    return DTensor is not None and tensors is not None and any(
        issubclass(t, DTensor) for t in set(map(type, tensors)))


def local(tensors: Sequence[Tensor]) -> list[Tensor]:
    """Each DTensor's local shard (a view: writes land in the parameter)."""
    return [t.to_local() if isinstance(t, DTensor) else t for t in tensors]


def reduce_norms(local_norms: Tensor, tensors: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Global per-tensor norms and total norm from the local shards' norms."""
    sq = local_norms.double().square()
    group = None
    weights = []
    for t in tensors:
        if isinstance(t, DTensor) and any(p.is_shard() for p in t.placements):
            if t.device_mesh.ndim != 1:
                raise NotImplementedError("slsam: DTensor parameters on a multi-dimensional "
                                          "device mesh are not supported yet; use a 1-D mesh")
            group = t.device_mesh.get_group()
            weights.append(1.0)
        else:  # replicated on every rank: counted once after the sum
            weights.append(0.0)
    if group is None:
        norms = sq.sqrt()
    else:
        w = torch.tensor(weights, dtype=torch.float64, device=sq.device)
        world = torch.distributed.get_world_size(group)
        # sharded: sum of the ranks' parts; replicated: every rank holds all of it
        contrib = torch.where(w > 0, sq, sq / world)
        torch.distributed.all_reduce(contrib, group=group)
        norms = contrib.sqrt()
    return norms.float(), norms.square().sum().sqrt().float()
