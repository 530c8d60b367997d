"""The GradScaler record SLSAM reads and writes across its two passes.

NOTE: ``torch.amp.GradScaler`` keeps, per optimizer, whether the gradients were
already unscaled (``unscale_()``) and the non-finite values it found, in the private
``_per_optimizer_states``, and the scale in the private ``_scale``; torch offers no
public API for them. SLSAM needs them: gradients the user unscaled (AMP's documented
``unscale_(opt)`` before ``clip_grad_norm_``) must not be divided by the scale again,
a second ``unscale_()`` in the second pass must be allowed, and ``update()`` must learn
of a non-finite pass. Every private access is here; tests/test_training_loops.py
checks each against the installed torch.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.amp.grad_scaler import GradScaler, OptState


def _record(scaler: GradScaler, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return scaler._per_optimizer_states[id(opt)]


def loss_scale(scaler: GradScaler, opt: torch.optim.Optimizer) -> Tensor | None:
    """The scale ``opt``'s gradients carry now: None when disabled or already unscaled."""
    if not scaler.is_enabled() or _record(scaler, opt)["stage"] is OptState.UNSCALED:
        return None
    return scaler._scale


def allow_second_unscale(scaler: GradScaler, opt: torch.optim.Optimizer) -> None:
    """After the first pass: forget its ``unscale_()`` so the second pass may call it
    again (its non-finite values are already in the optimizer's own check)."""
    if not scaler.is_enabled():
        return
    record = _record(scaler, opt)
    if record["stage"] is OptState.UNSCALED:
        record["stage"] = OptState.READY
        record["found_inf_per_device"] = {}


def record_step(scaler: GradScaler, opt: torch.optim.Optimizer, found_inf: Tensor) -> None:
    """What ``GradScaler.step()`` would record, so that ``update()`` backs off."""
    record = _record(scaler, opt)
    record["found_inf_per_device"] = {found_inf.device: found_inf.float()}
    record["stage"] = OptState.STEPPED
