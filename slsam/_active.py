"""Which tensors a step perturbs and updates, and their ``requires_grad``.

The arms (the bandit's choices, in ``probs`` order: one tensor each, or with
``arm_groups`` a group of tensors each) active under the current mask, plus the
always-active tensors and those frozen at construction that the user has unfrozen since
(gradual unfreezing). With ``mask_mode="requires_grad"`` the
inactive arms' ``requires_grad`` is off, so autograd skips their weight
gradients; with ``"grad"`` every arm keeps it and the inactive gradients are
dropped after each backward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from slsam import _marks


class ActiveSet:
    def __init__(self, groups: list[dict[str, Any]], mask_mode: str, device: torch.device,
                 arm_groups: Sequence[Sequence[Tensor]] | None = None) -> None:
        self.mask_mode = mask_mode
        self.arms: list[Tensor] = [
            p for g in groups if not g.get("always_active", False)
            for p in g["params"] if _marks.trainable(p)]
        self.always: list[Tensor] = [
            p for g in groups if g.get("always_active", False)
            for p in g["params"] if _marks.trainable(p)]
        # NOTE: frozen at construction, so not arms; one the user unfreezes later (gradual
        # unfreezing) trains every step from then on, as an always-active tensor, on every
        # base optimizer's path (see apply and note_unfrozen).
        self.late: list[Tensor] = [p for g in groups for p in g["params"]
                                   if not _marks.trainable(p) and p.is_floating_point()]
        self.late_on: list[bool] = [False] * len(self.late)
        # arm_of[i]: the arm of tensor arms[i]; None: one arm per tensor (no combining)
        self.arm_of: list[int] | None = None
        self.n_arms = len(self.arms)
        if arm_groups is not None:
            self.arm_of = _arm_index(self.arms, self.always, arm_groups)
            self.n_arms = max(self.arm_of, default=-1) + 1
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
        self.mask = torch.ones(self.n_arms, dtype=torch.bool, device=device)
        self.mask_list: list[bool] = []  # per arm
        self.tensor_on: list[bool] = []  # per tensor of ``arms``
        self.inactive_arms: list[Tensor] = []  # the arm tensors ``tensor_on`` leaves off
        self.active_arms: list[Tensor] = []
        self.active_by_group: list[list[Tensor]] = []
        self.group_pos: list[list[int]] = []
        self.active: list[Tensor] = []

    def arm_groups(self) -> list[list[Tensor]]:
        out: list[list[Tensor]] = [[] for _ in range(self.n_arms)]
        arm_of = self.arm_of or range(len(self.arms))
        for p, a in zip(self.arms, arm_of, strict=True):
            out[a].append(p)
        return out

    def arm_shapes(self) -> list[list[list[int]]]:
        return [[list(p.shape) for p in arm] for arm in self.arm_groups()]

    def check_arm_shapes(self, saved: list[list[list[int]]] | None) -> None:
        """A checkpoint's arms must be these (one without ``arm_shapes`` has one arm
        per tensor)."""
        mine = self.arm_shapes()
        if saved is None:
            if self.arm_of is not None and any(len(arm) != 1 for arm in mine):
                raise ValueError("state_dict was saved with one arm per tensor, this optimizer "
                                 "has arm_groups; create it with the arm_groups of the run "
                                 "that saved it (or none)")
        elif saved != mine:
            raise ValueError(
                f"state_dict's arms (tensors per arm: {[len(a) for a in saved]}) are not this "
                f"optimizer's ({[len(a) for a in mine]}); create it with the same arm_groups "
                "as the run that saved it")

    def set_mask(self, mask: Tensor, groups: list[dict[str, Any]]) -> None:
        self.mask = mask
        self.mask_list = mask.tolist()  # the step's one host sync
        if self.arm_of is None:
            self.tensor_on = self.mask_list
        else:
            self.tensor_on = [self.mask_list[a] for a in self.arm_of]
        self.inactive_arms = [p for p, on in zip(self.arms, self.tensor_on, strict=False) if not on]
        self.apply(groups)

    def apply(self, groups: list[dict[str, Any]]) -> None:
        """Set ``requires_grad`` from the mask and list the active tensors (per group too)."""
        self.note_user_frozen()
        if self.mask_mode == "requires_grad":
            frozen = self.frozen
            for i, (p, on) in enumerate(zip(self.arms, self.tensor_on, strict=False)):
                if i not in frozen:
                    _marks.set_active(p, on)
            self.expect_grad = list(self.tensor_on)
        else:
            self.expect_grad = [True] * len(self.arms)
        self.active_arms = [p for p, on in zip(self.arms, self.tensor_on, strict=False) if on]
        self.late_on = [p.requires_grad for p in self.late]
        late = [p for p, on in zip(self.late, self.late_on, strict=True) if on]
        self.active = self.active_arms + self.always + late
        where = {id(p): i for i, p in enumerate(self.active)}
        # group_pos[k]: where group k's active tensors sit in ``active``
        self.group_pos = [[where[id(p)] for p in g["params"] if id(p) in where] for g in groups]
        self.active_by_group = [[self.active[i] for i in pos] for pos in self.group_pos]

    def note_unfrozen(self, groups: list[dict[str, Any]]) -> None:
        """Take in the tensors frozen at construction that the user has (un)frozen since."""
        if self.late and [p.requires_grad for p in self.late] != self.late_on:
            self.apply(groups)

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

    def clear_grads(self, *, drop_inactive: bool = True) -> None:
        """Clear the active tensors' gradients, and the inactive arms' unless
        ``drop_inactive`` is False: after a pass whose gradients were just read (which
        dropped them) and no backward since, a second look at every inactive arm finds
        nothing and costs milliseconds at thousands of tensors."""
        for active in self.active_by_group:
            for p in active:
                p.grad = None
        if drop_inactive:
            self.drop_inactive_grads()

    def drop_inactive_grads(self) -> None:
        """Inactive arms hold no gradient during a step. mask_mode="grad": every arm computes
        one, the inactive ones are dropped.

        NOTE: also with mask_mode="requires_grad": an inactive arm can still hold a gradient
        (a backward inside ``dense()``, one left from before); a generic base optimizer's
        step() would apply it to the inactive tensor, every step (tests/test_faults.py).
        """
        for p in self.inactive_arms:
            if p.grad is not None:
                p.grad = None

    def norm_inputs(self, grads: list[Tensor | None]) -> list[Tensor]:
        """The active arms' gradients (an empty stand-in where one has none), in mask order,
        then those of the other active tensors (always-active, unfrozen since construction)
        that have one. ``grads``: the gradients of ``active``, in its order."""
        n = len(self.active_arms)
        out = [g if g is not None else self._empty_grad(p)
               for p, g in zip(self.active_arms, grads, strict=False)]
        return out + [g for g in grads[n:] if g is not None]

    def with_grads_by_group(self, grads: list[Tensor | None]
                            ) -> tuple[list[list[Tensor]], list[list[Tensor]]]:
        """Per param group, the active tensors that have a gradient and those gradients
        (``grads``: the gradients of ``active``, in its order)."""
        active = self.active
        tensors: list[list[Tensor]] = []
        by_group: list[list[Tensor]] = []
        for pos in self.group_pos:
            kept = [i for i in pos if grads[i] is not None]
            tensors.append([active[i] for i in kept])
            by_group.append([grads[i] for i in kept])  # type: ignore[misc]
        return tensors, by_group

    def arm_norms(self, norms: Tensor) -> Tensor:
        """The active arms' gradient norms (in arm order) from ``norms``, whose first
        entries are the active arm tensors' (``norm_inputs`` order). A group's norm is the
        L2 norm over its tensors: the root of the sum of their squared norms, in fp64."""
        per_tensor = norms[: len(self.active_arms)]
        if self.arm_of is None:
            return per_tensor
        on = [a for a in range(self.n_arms) if self.mask_list[a]]
        ordinal = {a: k for k, a in enumerate(on)}
        index = [ordinal[a] for a, t_on in zip(self.arm_of, self.tensor_on, strict=True) if t_on]
        idx = torch.tensor(index, dtype=torch.long).to(norms.device, non_blocking=True)
        sq = torch.zeros(len(on), dtype=torch.float64, device=norms.device)
        sq.index_add_(0, idx, per_tensor.double().square())
        return sq.sqrt().to(norms.dtype)

    def _empty_grad(self, p: Tensor) -> Tensor:
        t = self._no_grad.get(p.dtype)
        if t is None:
            t = self._no_grad[p.dtype] = torch.zeros(0, dtype=p.dtype, device=self._device)
        return t


def _arm_index(arms: list[Tensor], always: list[Tensor],
               arm_groups: Sequence[Sequence[Tensor]]) -> list[int]:
    """Each arm tensor's arm: the groups of ``arm_groups`` (tensors frozen at construction
    left out, empty groups dropped), then one arm per tensor listed in none, numbered in
    the order of their first tensor among ``arms``."""
    position = {id(p): i for i, p in enumerate(arms)}
    always_ids = {id(p) for p in always}
    group_of: dict[int, int] = {}
    for gi, group in enumerate(arm_groups):
        if isinstance(group, Tensor):
            raise TypeError(f"arm_groups[{gi}] is a tensor; arm_groups is a list of lists of "
                            "parameters, e.g. [[layer0.weight, layer0.bias], [...]]")
        for j, p in enumerate(group):
            where = f"arm_groups[{gi}][{j}]"
            if not isinstance(p, Tensor):
                raise TypeError(f"{where} is {type(p).__name__}, not a parameter")
            if id(p) in always_ids:
                raise ValueError(f"{where} is in an always_active param group; leave it out of "
                                 "arm_groups (it is active every step, outside the bandit)")
            if id(p) in group_of:
                raise ValueError(f"{where} is already in arm_groups[{group_of[id(p)]}]; each "
                                 "tensor belongs to one arm")
            if id(p) not in position:
                if not p.requires_grad:  # frozen at construction: not an arm
                    continue
                raise ValueError(f"{where} (shape {tuple(p.shape)}) is not among the optimizer's "
                                 "parameters; pass the same model's parameters to both")
            group_of[id(p)] = gi
    first: dict[tuple[str, int], int] = {}  # arm key -> number, by first tensor
    out = []
    for i, p in enumerate(arms):
        key = ("group", group_of[id(p)]) if id(p) in group_of else ("tensor", i)
        out.append(first.setdefault(key, len(first)))
    return out
