"""Pure-PyTorch SAM / SL-SAM baselines for the benchmarks.

Every class here has the calling convention of :class:`slsam.SAM`:
``step(closure)`` runs the closure for both passes (PyTorch's convention; the
closure zeroes gradients, runs forward and backward and returns the loss), and
``first_step()`` / ``second_step()`` are there for code that runs its own
passes (davda54/sam style, and the benchmarks that set ``.grad`` by hand).
Gradients are left as ``None`` after each half step, as slsam does, so the
benchmarks see the same gradient lifetime for every optimizer.

What each variant is (the ``impl`` argument of :class:`TorchSAM`):

``loop``
    per-tensor norms (``torch.linalg.vector_norm``), per-tensor backup copy and
    ``add_(g, alpha=scale)`` perturbation, per-tensor ``copy_`` restore, and
    ``torch.optim.AdamW(foreach=False)`` -- the single-tensor for-loop, which is
    what ``AdamW()`` picks by default for CPU tensors.
``foreach``
    ``torch._foreach_norm``; ``_foreach_copy_`` backup; ``_foreach_add_`` with a
    scalar ``alpha`` (one ``.item()``: no temporaries); ``_foreach_copy_``
    restore; ``AdamW(foreach=True)``.
``fused``
    the ``foreach`` perturb/restore with ``AdamW(fused=True)``.
``compile``
    norms, perturb and restore under ``torch.compile`` (no host sync: the scale
    stays a tensor), with ``AdamW(fused=True)``.

Backups are preallocated once (a careful user does not allocate 1x the model
per step); their memory is held for the optimizer's lifetime, as SAM needs it
every step anyway.

:class:`TorchSLSAM` is a faithful plain-PyTorch port of the algorithm (docs/design.md)
(masks through ``requires_grad``, backups of the active tensors only, EXP3 with
multiple plays and the capped projection from :mod:`slsam.reference`), i.e.
what a user would write without slsam's kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from slsam import reference

Closure = Callable[[], Tensor]

IMPLS = ("loop", "foreach", "fused", "compile")
EPS = 1e-12


def _tensor_bytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def state_bytes(opt: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in an optimizer's per-parameter state."""
    total = 0
    for st in opt.state.values():
        for v in st.values():
            if isinstance(v, Tensor):
                total += _tensor_bytes(v)
    return total


# --- compiled perturb / restore (built lazily: compiling takes seconds) ---

_COMPILED: dict[str, Callable[..., Any]] = {}


def _norms_eager(grads: list[Tensor]) -> Tensor:
    norms = torch._foreach_norm(grads, 2.0, dtype=torch.float32)
    return torch.linalg.vector_norm(torch.stack(norms))


def _perturb_eager(params: list[Tensor], grads: list[Tensor], backups: list[Tensor],
                   total: Tensor, rho: float) -> None:
    torch._foreach_copy_(backups, params)
    scale = rho / (total + EPS)
    torch._foreach_add_(params, torch._foreach_mul(grads, scale))


def _restore_eager(params: list[Tensor], backups: list[Tensor]) -> None:
    torch._foreach_copy_(params, backups)


def compiled(name: str) -> Callable[..., Any]:
    """``torch.compile``d norms / perturb / restore, compiled on first use."""
    if name not in _COMPILED:
        fn = {"norms": _norms_eager, "perturb": _perturb_eager, "restore": _restore_eager}[name]
        _COMPILED[name] = torch.compile(fn, dynamic=False)
    return _COMPILED[name]


class _SAMBase(torch.optim.Optimizer):
    """Shared plumbing: wraps a base optimizer like davda54/sam does."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                 base_optimizer: type[torch.optim.Optimizer], rho: float,
                 **base_kwargs: Any) -> None:
        if rho <= 0:
            raise ValueError(f"rho must be positive, got {rho}")
        super().__init__(params, dict(rho=rho))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.state = self.base_optimizer.state
        self.rho = float(rho)
        self.params: list[Tensor] = [p for g in self.param_groups for p in g["params"]
                                     if p.requires_grad]

    @torch.no_grad()
    def step(self, closure: Closure | None = None) -> Tensor:  # type: ignore[override]
        if closure is None:
            raise RuntimeError("SAM needs a closure that zeroes grads, runs forward and "
                               "backward and returns the loss")
        with torch.enable_grad():
            loss = closure()
        self.first_step()
        with torch.enable_grad():
            closure()
        self.second_step()
        return loss.detach()

    def first_step(self) -> None:
        raise NotImplementedError

    def second_step(self) -> None:
        raise NotImplementedError

    def backup_bytes(self) -> int:
        """Bytes of weight backups held at the second pass."""
        raise NotImplementedError

    def _clear_grads(self, params: Iterable[Tensor]) -> None:
        for p in params:
            p.grad = None


class TorchSAM(_SAMBase):
    """Dense SAM in pure PyTorch; ``impl`` is one of :data:`IMPLS` (see the module doc)."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                 base_optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
                 rho: float = 0.05, impl: str = "foreach", **base_kwargs: Any) -> None:
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
        if base_optimizer is torch.optim.AdamW:
            base_kwargs.setdefault("foreach", {"loop": False, "foreach": True}.get(impl))
            base_kwargs.setdefault("fused", impl in ("fused", "compile") or None)
        super().__init__(params, base_optimizer, rho, **base_kwargs)
        self.impl = impl
        self.backups = [torch.empty_like(p) for p in self.params]
        self._perturbed: list[int] = []

    def backup_bytes(self) -> int:
        return sum(_tensor_bytes(b) for b in self.backups)

    @torch.no_grad()
    def first_step(self) -> None:
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        ps = [self.params[i] for i in idx]
        gs = [p.grad for p in ps]
        bs = [self.backups[i] for i in idx]
        self._perturbed = idx
        if not ps:
            return
        if self.impl == "loop":
            norms = [torch.linalg.vector_norm(g, 2, dtype=torch.float32) for g in gs]
            total = torch.linalg.vector_norm(torch.stack(norms))
            scale = self.rho / (float(total) + EPS)
            for p, g, b in zip(ps, gs, bs, strict=False):
                b.copy_(p)
                p.add_(g, alpha=scale)
        elif self.impl in ("foreach", "fused"):
            total = _norms_eager(gs)
            scale = self.rho / (float(total) + EPS)
            torch._foreach_copy_(bs, ps)
            torch._foreach_add_(ps, gs, alpha=scale)
        else:
            total = compiled("norms")(gs)
            compiled("perturb")(ps, gs, bs, total, self.rho)
        self._clear_grads(ps)

    @torch.no_grad()
    def second_step(self) -> None:
        ps = [self.params[i] for i in self._perturbed]
        bs = [self.backups[i] for i in self._perturbed]
        if self.impl == "loop":
            for p, b in zip(ps, bs, strict=False):
                p.copy_(b)
        elif self.impl in ("foreach", "fused"):
            if ps:
                torch._foreach_copy_(ps, bs)
        elif ps:
            compiled("restore")(ps, bs)
        self.base_optimizer.step()
        self._perturbed = []
        self._clear_grads(self.params)


class TorchSLSAM(_SAMBase):
    """SL-SAM (docs/design.md) in plain PyTorch: foreach perturb/restore,
    backups of the active tensors only, the bandit from :mod:`slsam.reference`.

    ``torch.optim.AdamW`` is created with ``fused=True`` unless told otherwise.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict[str, Any]],
                 base_optimizer: type[torch.optim.Optimizer] = torch.optim.AdamW,
                 rho: float = 0.01, sparsity: float = 0.2, alpha: float = 1e-3,
                 seed: int = 0, **base_kwargs: Any) -> None:
        if not 0 < sparsity <= 1:
            raise ValueError(f"sparsity must be in (0, 1], got {sparsity}")
        if base_optimizer is torch.optim.AdamW:
            base_kwargs.setdefault("fused", True)
        super().__init__(params, base_optimizer, rho, **base_kwargs)
        self.arms = list(self.params)
        n = len(self.arms)
        device = self.arms[0].device if n else torch.device("cpu")
        self.k = sparsity * n
        self.alpha = float(alpha)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.probs = torch.full((n,), float(sparsity), dtype=torch.float64, device=device)
        self._backups: list[Tensor] = []
        self._norms = torch.zeros(0)
        self._set_mask(reference.sample_mask(self.probs, self.generator))

    def _set_mask(self, mask: Tensor) -> None:
        self.mask = mask
        self.active = [p for p, on in zip(self.arms, mask.tolist(), strict=False) if on]
        for p, on in zip(self.arms, mask.tolist(), strict=False):
            p.requires_grad_(on)

    def backup_bytes(self) -> int:
        return sum(_tensor_bytes(b) for b in self._backups)

    @torch.no_grad()
    def first_step(self) -> None:
        gs = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.active]
        norms = torch.stack(torch._foreach_norm(gs, 2.0, dtype=torch.float32))
        total = torch.linalg.vector_norm(norms)
        scale = self.rho / (float(total) + EPS)
        self._backups = [torch.empty_like(p) for p in self.active]
        torch._foreach_copy_(self._backups, self.active)
        torch._foreach_add_(self.active, gs, alpha=scale)
        self._norms = norms
        self._clear_grads(self.active)

    @torch.no_grad()
    def second_step(self) -> None:
        torch._foreach_copy_(self.active, self._backups)
        self._backups = []
        self.base_optimizer.step()
        reference.bandit_update_(self.probs, self.mask, self._norms, None, self.alpha, self.k)
        self._clear_grads(self.active)
        self._set_mask(reference.sample_mask(self.probs, self.generator))


# --- the authors'-style bandit on the host (numpy), a baseline for the bandit ops ---


def numpy_bandit_update(probs: np.ndarray, mask: np.ndarray, norms: np.ndarray,
                        alpha: float, k: float) -> np.ndarray:
    """EXP3 update + Exp3.M capped projection on the host, as the authors' code does it
    (norms copied to numpy every step). Uses the cancelled form of the loss."""
    r = np.zeros_like(probs)
    r[mask] = norms
    ratio_sq = (r / probs) ** 2
    lhat = ratio_sq[mask].max() - ratio_sq
    w = np.where(mask, probs * np.exp(-alpha * lhat / probs), probs)
    n = w.size
    if k >= n:
        return np.ones_like(w)
    capped = np.zeros(n, dtype=bool)
    c = 0.0
    for _ in range(n + 1):
        free = w[~capped].sum()
        c = (k - capped.sum()) / free if free > 0 else 0.0
        new = ~capped & (c * w >= 1.0)
        if not new.any():
            break
        capped |= new
    return np.clip(np.where(capped, 1.0, c * w), 1e-8, 1.0)


def numpy_sample_mask(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    while True:
        mask = rng.random(probs.size) < probs
        if mask.any():
            return mask
