"""The first step's move to x + e: global norm (plain or ASAM-weighted), backups, perturb."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from slsam import ops
from slsam._backups import BackupPool

Groups = list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]


def restore_groups(groups: Groups) -> None:
    """Put every tensor of ``groups`` (group, tensors, backups) back at x, exactly."""
    for _, ps, backups in groups:
        ops.restore_(ps, backups)


def perturb_groups(param_groups: list[dict[str, Any]], per_group: list[list[Tensor]],
                   grads_by_group: list[list[Tensor]], pool: BackupPool, total: Tensor,
                   found_inf: Tensor, device: torch.device) -> tuple[Groups, Tensor]:
    """Back up and perturb each group's tensors (those with a gradient; ``grads_by_group``
    holds their gradients) by rho * g / ||g||, or ASAM's rho * x^2 g / ||x g|| in adaptive
    groups (along -g in groups whose base optimizer maximizes); ``total`` is the plain
    global norm. Returns the (group, tensors, backups) triples and found_inf
    (also set when the adaptive norm is not finite). A kernel refusing a later group
    undoes the earlier ones before the error propagates."""
    groups: Groups = []
    backups = pool.take([p for ps in per_group for p in ps])
    for group, ps in zip(param_groups, per_group, strict=False):
        groups.append((group, ps, backups[: len(ps)]))
        backups = backups[len(ps):]
    if any(g["adaptive"] for g in param_groups):
        # NOTE: |x|*g only for the adaptive groups' tensors; the others enter the
        # global norm with g, as in ASAM's and the peer libraries' mixed groups.
        weighted = [p for g, ps, _ in groups if g["adaptive"] for p in ps]
        plain = [p for g, ps, _ in groups if not g["adaptive"] for p in ps]
        _, total = ops.grad_norms([p.grad for p in weighted], weighted, device=device)
        if plain:
            _, total_plain = ops.grad_norms([p.grad for p in plain], device=device)
            total = (total.double().square() + total_plain.double().square()).sqrt().to(
                total.dtype)
        found_inf = found_inf | ~torch.isfinite(total)
        # NOTE: |x|*g can be finite where g is not (g overflowing only when squared);
        # a non-finite norm is what keeps the kernels from moving the weights, so
        # a skipped step never runs its second forward at moved weights.
        total = torch.where(found_inf, torch.full_like(total, math.nan), total)
    # NOTE: rho * g / ||g|| does not change when g is scaled, so the perturbation
    # uses the (loss-scaled) gradients as they are.
    done: Groups = []
    try:
        for (group, ps, bks), gs in zip(groups, grads_by_group, strict=True):
            # NOTE: a base optimizer with maximize=True ascends the loss, so the worst
            # nearby point for it lies along -g.
            rho = -group["rho"] if group.get("maximize") else group["rho"]
            ops.perturb_(ps, gs, bks, total, rho, group["adaptive"])
            done.append((group, ps, bks))
    except BaseException:
        restore_groups(done)  # NOTE: a kernel refused a later group: undo the earlier
        raise
    return groups, found_inf
