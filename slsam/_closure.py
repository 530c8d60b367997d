"""Running the user's closure: its result checked, and a first pass on a mask the loss can use."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from slsam._active import ActiveSet
from slsam.bandit import Bandit

Closure = Callable[[], Tensor]

# torch's message when backward() finds nothing that requires grad
_NO_GRAD_FN = "does not require grad and does not have a grad_fn"
_REDRAWS = 8


def call_closure(closure: Closure, which: str) -> Tensor:
    with torch.enable_grad():
        loss = closure()
    if not isinstance(loss, Tensor):
        raise TypeError(
            f"the closure returned {type(loss).__name__} in the {which} pass; it must "
            "compute the loss, call loss.backward() and `return loss`")
    return loss


def first_pass(closure: Closure, active: ActiveSet, bandit: Bandit,
               groups: list[dict[str, Any]]) -> Tensor:
    """The closure's first pass, on a mask the loss can use.

    NOTE: when every sampled tensor is one the loss does not use, nothing in the graph
    requires grad and backward() raises; the optimizer must not be stuck on its own
    draw. It draws again (a few times), then tries with every arm active; if that
    fails too, the loss uses none of them and the error is the closure's own.
    """
    generator = bandit.generator
    gen_state, mask = generator.get_state(), active.mask
    for attempt in range(_REDRAWS + 2):
        try:
            return call_closure(closure, "first")
        except RuntimeError as e:
            if (_NO_GRAD_FN not in str(e) or active.mask_mode != "requires_grad"
                    or not bandit.sparse or attempt > _REDRAWS):
                if attempt:  # the closure's own error: leave the mask as it was
                    generator.set_state(gen_state)
                    active.set_mask(mask, groups)
                raise
            active.clear_grads()
            if attempt < _REDRAWS:
                active.set_mask(bandit.sample(), groups)
            else:
                active.set_mask(torch.ones_like(active.mask), groups)
    raise AssertionError("unreachable")
