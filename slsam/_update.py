"""How ``second_step()`` restores the weights and takes the base optimizer's step.

One table, :data:`PATHS`, tried in order: the first path whose ``applies`` accepts
the base optimizer (and its param groups) is used. ``fused_adamw`` restores x and
takes AdamW's step in one kernel pass; ``generic`` restores x, then calls the base
optimizer's own ``step()``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from slsam import ops
from slsam._adamw_state import adamw_states, restore_adamw_
from slsam._pending import PendingStep


@dataclass(frozen=True)
class UpdatePath:
    name: str
    applies: Callable[[torch.optim.Optimizer], bool]
    # (base optimizer, pending step, its second-pass gradients in pending.params' order
    # with None where a tensor got none, found_inf, grad_scale)
    run: Callable[[torch.optim.Optimizer, PendingStep, list[Tensor | None], Tensor,
                   Tensor | None], None]


def _fused_adamw_applies(base: torch.optim.Optimizer) -> bool:
    if type(base) is not torch.optim.AdamW:
        return False
    return not any(g.get("amsgrad") or g.get("maximize") or g.get("differentiable")
                   for g in base.param_groups)


def _fused_adamw_run(base: torch.optim.Optimizer, pending: PendingStep,
                     all_grads: list[Tensor | None], found_inf: Tensor,
                     grad_scale: Tensor | None) -> None:
    start = 0
    for group, ps, backups in pending.groups:
        grads = all_grads[start:start + len(ps)]
        start += len(ps)
        params, bks = ps, backups
        if any(g is None for g in grads):  # unused in the second pass: nothing to update with
            rest = [i for i, g in enumerate(grads) if g is None]
            ops.restore_([ps[i] for i in rest], [backups[i] for i in rest])
            upd = [i for i, g in enumerate(grads) if g is not None]
            params, bks, grads = [ps[i] for i in upd], [backups[i] for i in upd], \
                [grads[i] for i in upd]
        if not params:
            continue
        beta1, beta2 = group["betas"]
        restore_adamw_(
            params, bks, grads, adamw_states(base.state, params),  # type: ignore[arg-type]
            float(group["lr"]), float(beta1), float(beta2), float(group["weight_decay"]),
            float(group["eps"]), grad_scale, found_inf)


def _any_optimizer(base: torch.optim.Optimizer) -> bool:
    del base
    return True


def _generic_run(base: torch.optim.Optimizer, pending: PendingStep,
                 all_grads: list[Tensor | None], found_inf: Tensor,
                 grad_scale: Tensor | None) -> None:
    pending.restore()
    if not bool(found_inf):  # host sync: only on the generic path
        grads = [g for g in all_grads if g is not None]
        if grad_scale is not None and grads:
            torch._foreach_mul_(grads, grad_scale.reciprocal().to(grads[0].device))
        base.step()


PATHS: tuple[UpdatePath, ...] = (
    UpdatePath("fused_adamw", _fused_adamw_applies, _fused_adamw_run),
    UpdatePath("generic", _any_optimizer, _generic_run),
)


def choose(base: torch.optim.Optimizer) -> UpdatePath:
    """The first path of :data:`PATHS` that applies to ``base``."""
    return next(path for path in PATHS if path.applies(base))
