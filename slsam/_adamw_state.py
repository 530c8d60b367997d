"""The AdamW state the fused restore + update kernel reads, laid out as it needs.

The kernel (``slsam::restore_adamw_``) walks a parameter and its moments with one
set of strides, so the moments must have the parameter's. ``torch.optim.AdamW``
copes with any strides, and so must SLSAM: a model moved to another memory format
after the state exists (``model.to(memory_format=torch.channels_last)``), or a
contiguous checkpoint loaded into a channels_last model, leaves moments laid out
unlike their parameter; they are re-laid (copied once) at the next update.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

_MOMENTS = ("exp_avg", "exp_avg_sq")


def adamw_state(state: dict[str, Any], p: Tensor) -> dict[str, Any]:
    """``state`` (the base optimizer's entry for ``p``), created or re-laid for ``p``."""
    if not state:  # as torch.optim.AdamW lays it out (fused: step on the device)
        state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        for key in _MOMENTS:
            state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state
    if state["step"].device != p.device:
        state["step"] = state["step"].to(p.device)
    for key in _MOMENTS:
        t = state[key]
        if t.stride() != p.stride() and t.shape == p.shape:
            relaid = torch.empty_like(p, dtype=t.dtype, memory_format=torch.preserve_format)
            relaid.copy_(t)
            state[key] = relaid
    return state
