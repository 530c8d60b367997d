"""One-pass SL-SAM (``SLSAM(..., passes=1)``): one forward/backward per step.

Two-pass SL-SAM spends a forward/backward at x only to find the ascent direction.
Momentum-SAM (Becker et al. 2024) takes a direction the base optimizer already holds
instead: its first moment m (Adam's ``exp_avg``, the running mean of past gradients).
One step, ``step(closure)``:

1. the active set S (sampled at the end of the previous step) is moved to
   x + e, e = -rho * m / ||m||  (norm over S; MSAM's sign: against the momentum,
   i.e. along the coming update); a tensor with no first moment yet (never updated)
   is not moved;
2. one closure call at x + e gives the update gradients and the per-tensor norms
   the bandit learns from;
3. x is restored exactly and the base step taken with those gradients (the fused
   restore + AdamW kernel for AdamW, else restore and the base optimizer's step);
   a non-finite gradient skips the step: weights and optimizer state stay as they
   were, and the bandit is not updated;
4. EXP3 update of the probabilities, next mask.

The weights are clean (at x) between steps. The hook in :mod:`slsam.optim` is
``SLSAM.step``; everything else (mask, bandit, backups, the fused update) is SLSAM's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from torch.amp.grad_scaler import GradScaler

from slsam import _amp, ops
from slsam._adamw_state import moment_dtype

if TYPE_CHECKING:
    from slsam.optim import SLSAM, Closure

# MSAM's convention: perturb against the first moment (along the descent step).
DIRECTION_SIGN = -1.0

# Base optimizers whose state holds the first moment as "exp_avg" (AdamW: fused path).
FIRST_MOMENT_BASES = (torch.optim.Adam, torch.optim.AdamW)

Held = list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]


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


def _restore(held: Held) -> None:
    for _, ps, backups in held:
        ops.restore_(ps, backups)


def _perturb(opt: SLSAM) -> Held:
    """Back up the active tensors and move those with a first moment to x + e."""
    flat = [p for ps in opt._active_by_group for p in ps]
    backups = opt._backups.take(flat)
    moments = [_first_moment(opt, p) for p in flat]
    _, total = ops.grad_norms([m for m in moments if m is not None], device=opt._device)
    held: Held = []
    start = 0
    try:
        for group, ps in zip(opt.param_groups, opt._active_by_group, strict=False):
            bks, ms = backups[start:start + len(ps)], moments[start:start + len(ps)]
            start += len(ps)
            still = [k for k, m in enumerate(ms) if m is None]
            moving = [k for k, m in enumerate(ms) if m is not None]
            # NOTE: restore_(dst, src) copies src into dst: the backup of a tensor that
            # does not move, which the fused update reads as x.
            ops.restore_([bks[k] for k in still], [ps[k] for k in still])
            # NOTE: fp16 parameters keep fp32 moments (slsam._adamw_state); the kernel
            # takes a direction of the parameter's dtype.
            ops.perturb_([ps[k] for k in moving],
                         [ms[k].to(ps[k].dtype) for k in moving],  # type: ignore[union-attr]
                         [bks[k] for k in moving], total, DIRECTION_SIGN * float(group["rho"]))
            held.append((group, ps, bks))
    except BaseException:
        _restore(held)
        raise
    return held


def step(opt: SLSAM, closure: Closure | None, scaler: GradScaler | None) -> Tensor:
    """One one-pass SL-SAM step (see the module docstring); returns the loss at x + e."""
    if closure is None:
        raise RuntimeError(
            "SLSAM(passes=1).step() needs a closure that computes the loss, calls backward() "
            "and returns the loss: the one pass runs at the perturbed weights")
    check_groups(opt.param_groups)
    opt._note_unfrozen()
    opt._clear_grads()  # gradients held at entry are at x, not at x + e
    held: Held = []

    def perturbed_closure() -> Tensor:
        with torch.no_grad():
            held[:] = _perturb(opt)
        try:
            return closure()
        except BaseException:
            _restore(held)
            held.clear()
            raise

    try:
        # NOTE: SLSAM's first-pass logic redraws a mask whose tensors the loss does not
        # use; the wrapper restores before each redraw and perturbs the new set.
        loss = opt._first_pass(perturbed_closure)
    except BaseException:
        _restore(held)
        opt._clear_grads()
        raise
    try:
        opt._drop_inactive_grads()
        opt._check_grads(opt._active)
        arm_grads = [p.grad for p in opt._active_arms]
        norm_inputs = [g if g is not None else opt._empty_grad(p)
                       for p, g in zip(opt._active_arms, arm_grads, strict=False)]
        norm_inputs += [p.grad for p in opt._active[len(opt._active_arms):]
                        if p.grad is not None]
        norms, total = ops.grad_norms(norm_inputs, device=opt._device)
        found_inf = ~torch.isfinite(total)
        external = getattr(opt, "found_inf", None)  # set by GradScaler.step(opt)
        if external is not None:
            found_inf = found_inf | (external.to(found_inf.device) != 0)
        grad_scale = opt._grad_scale(scaler)
        if opt._fused:
            opt._restore_adamw(held, found_inf, grad_scale)
        else:
            _restore(held)
            if not bool(found_inf):  # host sync: only on the generic (non-AdamW) path
                grads = [p.grad for p in opt._active if p.grad is not None]
                if grad_scale is not None and grads:
                    torch._foreach_mul_(grads, grad_scale.reciprocal().to(grads[0].device))
                opt.base_optimizer.step()
    except BaseException:
        _restore(held)
        opt._clear_grads()
        raise
    arm_norms = norms[: len(arm_grads)]
    if grad_scale is not None:
        arm_norms = arm_norms / grad_scale.to(arm_norms.device, torch.float32)
    if opt._sparse:
        ops.bandit_update_(opt._probs, opt._mask, arm_norms, found_inf, opt.alpha, opt._k,
                           opt.normalize_loss)
    opt._skipped += found_inf
    if scaler is not None and scaler.is_enabled():
        _amp.record_step(scaler, opt, found_inf)
    opt._clear_grads()
    if opt._sparse:
        opt._set_mask(ops.sample_mask(opt._probs, opt._generator))
    return loss.detach()
