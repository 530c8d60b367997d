"""One-pass SL-SAM (``SLSAM(..., passes=1)``): one forward/backward per step.

Two-pass SL-SAM spends a forward/backward at x only to find the ascent direction.
Momentum-SAM (Becker et al. 2024) takes a direction the base optimizer already holds
instead: its first moment m (Adam's ``exp_avg``, the running mean of past gradients).
One step, ``step(closure)``:

1. the active set S (sampled at the end of the previous step; with ``arm_groups``,
   every tensor of the active arms) is moved to x + e, e = -rho * m / ||m||  (norm
   over S; MSAM's sign: against the momentum, i.e. along the coming update); a tensor
   with no first moment yet (never updated) is not moved;
2. one closure call at x + e gives the update gradients and the per-arm norms the
   bandit learns from;
3. the step ends as a two-pass one does (``SLSAM._finish_step``): x restored exactly
   and the base step taken with those gradients (the fused restore + AdamW kernel for
   AdamW, else restore and the base optimizer's step), skipped on a non-finite
   gradient (weights and optimizer state stay as they were, the bandit is not
   updated); EXP3 update, next mask.

The weights are clean (at x) between steps, and ``opt.perturbed`` stays False (BatchNorm
statistics are updated in the one pass). Everything else (mask, bandit, backups, the
update paths) is SLSAM's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.amp.grad_scaler import GradScaler

from slsam import _checks, ops
from slsam._adamw_state import moment_dtype
from slsam._closure import first_pass
from slsam._pending import PendingStep
from slsam._perturb import Groups, restore_groups

if TYPE_CHECKING:
    from slsam.optim import SLSAM, Closure

# MSAM's convention: perturb against the first moment (along the descent step).
DIRECTION_SIGN = -1.0

# Base optimizers whose state holds the first moment as "exp_avg" (AdamW: fused path).
FIRST_MOMENT_BASES = (torch.optim.Adam, torch.optim.AdamW)


def check_args(passes: object, base_optimizer: type[torch.optim.Optimizer]) -> None:
    """Refuse a ``passes`` other than 1 or 2, and passes=1 without a first moment."""
    if isinstance(passes, bool) or passes not in (1, 2):
        raise ValueError(
            f"passes must be 1 or 2, got {passes!r}; 2 is SL-SAM's two forward/backward "
            "passes per step (the default), 1 the one-pass variant that perturbs along the "
            "base optimizer's first moment")
    if passes == 1 and not issubclass(base_optimizer, FIRST_MOMENT_BASES):
        raise TypeError(
            f"passes=1 perturbs along the base optimizer's first moment (exp_avg), which "
            f"{base_optimizer.__name__} does not keep; use torch.optim.AdamW (fused path) or "
            "torch.optim.Adam as base_optimizer, or passes=2")


def check_groups(groups: list[dict[str, Any]]) -> None:
    """Group options one-pass cannot honour (also checked at each step: groups can change)."""
    _checks.check_group_rhos(groups)
    for i, g in enumerate(groups):
        if g.get("adaptive"):
            raise ValueError(
                f"param_groups[{i}] has adaptive=True: ASAM's perturbation is built from the "
                "gradient at x, which passes=1 never computes; use adaptive=False or passes=2")
        if g.get("maximize"):
            raise ValueError(
                f"param_groups[{i}] has maximize=True: the first moment then tracks -g and "
                "the perturbation would point the wrong way; use maximize=False (negate the "
                "loss instead) or passes=2")


def split_step_error(which: str) -> RuntimeError:
    return RuntimeError(
        f"{which}() is the two-pass API; this SLSAM was built with passes=1, which takes one "
        "forward/backward per step: call opt.step(closure) (closure: forward, backward, "
        "return loss), or build the optimizer with passes=2 to call first_step/second_step")


def _first_moment(opt: SLSAM, p: Tensor) -> Tensor | None:
    state = opt.base_optimizer.state.get(p)
    m = state.get("exp_avg") if state else None
    if not isinstance(m, Tensor) or m.shape != p.shape or m.dtype not in (p.dtype,
                                                                          moment_dtype(p)):
        return None
    return m


def _perturb(opt: SLSAM) -> Groups:
    """Back up the active tensors and move those with a first moment to x + e."""
    per_group = opt._set.active_by_group
    flat = [p for ps in per_group for p in ps]
    backups = opt._backups.take(flat)
    moments = [_first_moment(opt, p) for p in flat]
    _, total = ops.grad_norms([m for m in moments if m is not None], device=opt._device)
    held: Groups = []
    start = 0
    try:
        for group, ps in zip(opt.param_groups, per_group, strict=False):
            bks, ms = backups[start:start + len(ps)], moments[start:start + len(ps)]
            start += len(ps)
            still = [k for k, m in enumerate(ms) if m is None]
            moving = [k for k, m in enumerate(ms) if m is not None]
            # NOTE: restore_(dst, src) copies src into dst: the backup of a tensor that
            # does not move, which the update reads as x.
            ops.restore_([bks[k] for k in still], [ps[k] for k in still])
            # NOTE: fp16 parameters keep fp32 moments (slsam._adamw_state); the kernel
            # takes a direction of the parameter's dtype.
            ops.perturb_([ps[k] for k in moving],
                         [ms[k].to(ps[k].dtype) for k in moving],  # type: ignore[union-attr]
                         [bks[k] for k in moving], total, DIRECTION_SIGN * float(group["rho"]))
            held.append((group, ps, bks))
    except BaseException:
        restore_groups(held)
        raise
    return held


def step(opt: SLSAM, closure: Closure | None, scaler: GradScaler | None,
         first_pass_done: bool) -> Tensor:
    """One one-pass SL-SAM step (see the module docstring); returns the loss at x + e."""
    if closure is None:
        raise RuntimeError(
            "SLSAM(passes=1).step() needs a closure that computes the loss, calls backward() "
            "and returns the loss: the one pass runs at the perturbed weights")
    if first_pass_done:
        raise ValueError(
            "first_pass_done=True hands over gradients at x, which passes=1 has no use for "
            "(its one pass runs at the perturbed weights); call opt.step(closure) without it")
    check_groups(opt.param_groups)
    active = opt._set
    active.note_unfrozen(opt.param_groups)
    active.clear_grads()  # gradients held at entry are at x, not at x + e
    held: Groups = []

    def perturbed_closure() -> Tensor:
        with torch.no_grad():
            held[:] = _perturb(opt)
        try:
            return closure()
        except BaseException:
            restore_groups(held)
            held.clear()
            raise

    opt._gradless.start()
    try:
        # NOTE: first_pass redraws a mask whose tensors the loss does not use; the
        # wrapper restores before each redraw and perturbs the new set.
        loss = first_pass(perturbed_closure, active, opt._bandit, opt.param_groups)
        opt._gradless.close()
        total, arm_norms, grads = opt._read_grads(scaler)
    except BaseException:
        opt._gradless.cancel()
        restore_groups(held)
        active.clear_grads()
        raise
    opt._gradless.defer(len(active.active_arms), active.active, grads)
    pending = PendingStep(held, arm_norms, ~torch.isfinite(total))
    opt._finish_step(pending, [p.grad for p in pending.params], pending.found_inf, scaler)
    return loss.detach()
