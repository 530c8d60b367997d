"""Tell an unused tensor from one that ran without autograd (reentrant checkpointing).

NOTE: ``torch.utils.checkpoint(..., use_reentrant=True)`` runs its block under
``no_grad`` and recomputes it in backward only when the block's input requires grad;
otherwise the block's parameters get no gradient, which SLSAM cannot tell from a tensor
the loss does not use: they would silently never be perturbed or updated. When active
tensors lack a first-pass gradient, the second forward is watched with a global module
forward hook (only then: the hook costs a Python call per module call); a tensor whose
module ran only with gradients disabled and which again got no gradient is reported,
once per optimizer. Tensors found unused are not watched again.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor
from torch.nn.modules.module import register_module_forward_hook

FIX = ("activation checkpointing with use_reentrant=True gives no gradient to the "
       "parameters of a block whose input does not require grad, and SLSAM then takes them "
       "for unused tensors (never perturbed or updated). Use torch.utils.checkpoint(..., "
       "use_reentrant=False), or give the block an input that requires grad (e.g. "
       "model.enable_input_require_grads() in transformers)")


class NoGradWatch:
    """Records which of ``params`` belong to a module that ran with gradients disabled
    (and not with them enabled) while the watch is open."""

    def __init__(self, params: list[Tensor]) -> None:
        self.params = {id(p): p for p in params}
        self.no_grad: set[int] = set()
        self.grad: set[int] = set()
        self._handle = register_module_forward_hook(self._ran)

    def _ran(self, module: torch.nn.Module, args: object, out: object) -> None:
        seen = self.grad if torch.is_grad_enabled() else self.no_grad
        for p in module._parameters.values():
            if p is not None and id(p) in self.params:
                seen.add(id(p))

    def close(self) -> list[Tensor]:
        """Stop watching; the tensors that ran only without autograd and have no gradient."""
        self._handle.remove()
        return [p for k, p in self.params.items()
                if k in self.no_grad and k not in self.grad and p.grad is None]


def warn(tensors: list[Tensor]) -> None:
    shapes = ", ".join(str(tuple(p.shape)) for p in tensors[:3])
    more = f" and {len(tensors) - 3} more" if len(tensors) > 3 else ""
    warnings.warn(f"SLSAM: {len(tensors)} active tensor(s) (shapes {shapes}{more}) got no "
                  f"gradient although their module ran, with gradients disabled: {FIX}",
                  stacklevel=4)


class GradlessCheck:
    """One optimizer's diagnosis: :meth:`open` after a first pass in which an active arm
    got no gradient, :meth:`close` after the second pass (warns once), :meth:`cancel`
    when the step is undone. One-pass SL-SAM has no second pass: :meth:`defer` after its
    pass, and the next step's pass is watched between :meth:`start` and :meth:`close`."""

    def __init__(self) -> None:
        self._watch: NoGradWatch | None = None
        self._next: list[Tensor] = []
        self._watched: set[int] = set()
        self._warned = False

    def _gradless(self, n_arms: int, active: list[Tensor],
                  grads: list[Tensor | None]) -> list[Tensor]:
        """The ``active`` tensors without a gradient (those not watched before), when one
        of the first ``n_arms`` (the active arms) has none. ``grads``: ``active``'s."""
        if self._warned or all(g is not None for g in grads[:n_arms]):
            return []
        gradless = [p for p, g in zip(active, grads, strict=True)
                    if g is None and id(p) not in self._watched]
        self._watched.update(id(p) for p in gradless)
        return gradless

    def open(self, n_arms: int, active: list[Tensor], grads: list[Tensor | None]) -> None:
        """Watch the second forward of the active tensors without a gradient."""
        gradless = self._gradless(n_arms, active, grads)
        if gradless:
            self._watch = NoGradWatch(gradless)

    def defer(self, n_arms: int, active: list[Tensor], grads: list[Tensor | None]) -> None:
        """Watch the active tensors without a gradient in the next :meth:`start`."""
        self._next = self._gradless(n_arms, active, grads)

    def start(self) -> None:
        if self._next:
            self._watch, self._next = NoGradWatch(self._next), []

    def close(self) -> None:
        if self._watch is None:
            return
        found, self._watch = self._watch.close(), None
        if found:
            self._warned = True
            warn(found)

    def cancel(self) -> None:
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def __getstate__(self) -> dict[str, object]:
        # a diagnosis of the pass in progress (a hook), not state
        return {**self.__dict__, "_watch": None, "_next": []}
