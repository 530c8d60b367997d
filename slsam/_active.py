"""Which tensors a step perturbs and updates, and their ``requires_grad``.

The arms (the bandit's tensors, in ``probs`` order) active under the current
mask, plus the always-active tensors. With ``mask_mode="requires_grad"`` the
inactive arms' ``requires_grad`` is off, so autograd skips their weight
gradients; with ``"grad"`` every arm keeps it and the inactive gradients are
dropped after each backward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from slsam import _marks


class ActiveSet:
    def __init__(self, groups: list[dict[str, Any]], mask_mode: str,
                 device: torch.device) -> None:
        self.mask_mode = mask_mode
        self.arms: list[Tensor] = [
            p for g in groups if not g.get("always_active", False)
            for p in g["params"] if _marks.trainable(p)]
        self.always: list[Tensor] = [
            p for g in groups if g.get("always_active", False)
            for p in g["params"] if _marks.trainable(p)]
        if mask_mode == "requires_grad":
            for p in self.arms:
                _marks.keep_mark_in_copies(p)
        # NOTE: an empty stand-in per dtype, for active arms without a gradient: an fp32
        # one among fp64 gradients would turn their global norm into fp32.
        self._no_grad = {dt: torch.zeros(0, dtype=dt, device=device)
                         for dt in {p.dtype for p in self.arms}}
        self._device = device
        # Arms the user froze after construction (indices), and which arms should have
        # requires_grad now, to tell the user's freezing from our masking.
        self.frozen: set[int] = set()
        self.expect_grad: list[bool] = [True] * len(self.arms)
        self.mask = torch.ones(len(self.arms), dtype=torch.bool, device=device)
        self.mask_list: list[bool] = []
        self.active_arms: list[Tensor] = []
        self.active_by_group: list[list[Tensor]] = []
        self.active: list[Tensor] = []

    def set_mask(self, mask: Tensor, groups: list[dict[str, Any]]) -> None:
        self.mask = mask
        self.mask_list = mask.tolist()  # the step's one host sync
        self.apply(groups)

    def apply(self, groups: list[dict[str, Any]]) -> None:
        """Set ``requires_grad`` from the mask and list the active tensors (per group too)."""
        self.note_user_frozen()
        if self.mask_mode == "requires_grad":
            frozen = self.frozen
            for i, (p, on) in enumerate(zip(self.arms, self.mask_list, strict=False)):
                if i not in frozen:
                    _marks.set_active(p, on)
            self.expect_grad = list(self.mask_list)
        else:
            self.expect_grad = [True] * len(self.arms)
        self.active_arms = [p for p, on in zip(self.arms, self.mask_list, strict=False) if on]
        ids = {id(p) for p in self.active_arms} | {id(p) for p in self.always}
        self.active_by_group = [[p for p in g["params"] if id(p) in ids] for g in groups]
        self.active = self.active_arms + self.always

    def all_on(self) -> None:
        """Every arm ``requires_grad`` (except those the user froze), until the next ``apply``."""
        self.note_user_frozen()
        for i, p in enumerate(self.arms):
            if i not in self.frozen:
                p.requires_grad_(True)
        self.expect_grad = [True] * len(self.arms)

    def note_user_frozen(self) -> None:
        """Record the arms the user froze or unfroze since the mask was last applied.

        NOTE: an arm that should have requires_grad (active, every arm inside dense() or
        with mask_mode="grad") but has not was frozen by the user: a new mask,
        load_state_dict() or dense() must not turn it back on (it stays frozen until the
        user sets requires_grad again). An arm frozen while masked off looks like a masked
        one; freezing inside ``with opt.dense():`` is always seen.
        """
        frozen, expect = self.frozen, self.expect_grad
        for i, p in enumerate(self.arms):
            if i in frozen:
                if p.requires_grad:
                    frozen.discard(i)
            elif expect[i] and not p.requires_grad:
                frozen.add(i)

    def clear_grads(self) -> None:
        for active in self.active_by_group:
            for p in active:
                p.grad = None
        self.drop_inactive_grads()

    def drop_inactive_grads(self) -> None:
        """Inactive arms hold no gradient during a step. mask_mode="grad": every arm computes
        one, the inactive ones are dropped.

        NOTE: also with mask_mode="requires_grad": an inactive arm can still hold a gradient
        (a backward inside ``dense()``, one left from before); a generic base optimizer's
        step() would apply it to the inactive tensor, every step (tests/test_faults.py).
        """
        for p, on in zip(self.arms, self.mask_list, strict=False):
            if not on and p.grad is not None:
                p.grad = None

    def norm_inputs(self) -> list[Tensor]:
        """The active arms' gradients (an empty stand-in where one has none), in mask order,
        then the always-active tensors' gradients."""
        out = [p.grad if p.grad is not None else self._empty_grad(p) for p in self.active_arms]
        return out + [p.grad for p in self.always if p.grad is not None]

    def _empty_grad(self, p: Tensor) -> Tensor:
        t = self._no_grad.get(p.dtype)
        if t is None:
            t = self._no_grad[p.dtype] = torch.zeros(0, dtype=p.dtype, device=self._device)
        return t
