"""Typed wrappers over the ``torch.ops.slsam.*`` operators.

Each wrapper calls the compiled kernel for the tensors' device when one is
registered (CPU always; CUDA when the extension was built with it), and the
plain-PyTorch twin in :mod:`slsam.reference` otherwise (:func:`_dispatch`).
Each operator's fake (meta) implementation, registered under its wrapper, lets
it run under ``torch.compile`` and ``torch.library.opcheck``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from slsam import (
    _C,  # noqa: F401  (loading the library registers the operators)
    _dtensor,
    reference,
)

_OPS = torch.ops.slsam
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA"}


def has_kernel(op: str, device: torch.device | str) -> bool:
    """Whether ``slsam::<op>`` has a compiled kernel for ``device``'s type."""
    key = _DISPATCH_KEYS.get(torch.device(device).type)
    return key is not None and getattr(_OPS, op).default.has_kernel_for_dispatch_key(key)


def _dispatch(op: str, device: torch.device, *args: Any, lists: Sequence[str] = ()) -> Any:
    """``slsam::<op>(*args)`` on its kernel for ``device``, else ``reference.<op>(*args)``.

    ``lists`` names the leading tensor-list arguments, so that the dispatcher's
    "no kernel for SparseCPU" becomes an error naming the sparse input.
    """
    if not has_kernel(op, device):
        return getattr(reference, op)(*args)
    try:
        return getattr(_OPS, op)(*args)
    except NotImplementedError as err:
        for name, ts in zip(lists, args, strict=False):
            for i, t in enumerate(ts or ()):
                if t is not None and t.layout != torch.strided:
                    raise ValueError(
                        f"slsam: {name}[{i}] has layout {t.layout}; SAM needs dense gradients "
                        "(e.g. nn.Embedding(sparse=False)) and dense parameters") from err
        raise


def _local(*lists: Sequence[Tensor]) -> list[list[Tensor]]:
    """The lists as plain lists, DTensors (FSDP2) replaced by their local shards."""
    if _dtensor.has_dtensor(lists[0]):
        return [_dtensor.local(ts) for ts in lists]
    return [list(ts) for ts in lists]


# ----------------------------------------------------------------- grad_norms


def grad_norms(
    grads: Sequence[Tensor],
    weights: Sequence[Tensor] | None = None,
    *,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-tensor L2 norms (fp32, ``[n]``) and the global L2 norm (``[]``; fp64 when
    every gradient is fp64, so that fp64 weights are perturbed in their precision, else
    fp32, where a norm beyond fp32's range reads as inf).

    With ``weights``, the norms of ``weights.abs() * grads`` (ASAM). An empty
    list gives empty norms and a zero global norm on ``device`` (default CPU).
    """
    if not len(grads):
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return torch.zeros(0, device=dev), torch.zeros((), device=dev)
    grads = list(grads)
    w = list(weights) if weights is not None else None
    if _dtensor.has_dtensor(grads):  # FSDP2: local shards, then one all-reduce
        local_w = _dtensor.local(w) if w is not None else None
        local_norms, _ = grad_norms(_dtensor.local(grads), local_w, device=device)
        return _dtensor.reduce_norms(local_norms, grads)
    return _dispatch("grad_norms", grads[0].device, grads, w, lists=("grads", "weights"))


@torch.library.register_fake("slsam::grad_norms")
def _grad_norms_fake(grads: list[Tensor], weights: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    g = grads[0]
    all_double = all(t.dtype == torch.float64 for t in grads)
    return (g.new_empty((len(grads),), dtype=torch.float32),
            g.new_empty((), dtype=torch.float64 if all_double else torch.float32))


# ------------------------------------------------------------------- perturb_


def perturb_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    backups: Sequence[Tensor],
    total_norm: Tensor,
    rho: float,
    adaptive: bool = False,
) -> None:
    """``backups = params; params += rho / (total_norm + 1e-12) * grads`` (ASAM: ``* params**2``).

    The scale is read from ``total_norm`` on the device, never synced to the
    host. A non-finite ``total_norm`` leaves ``params`` unchanged.
    """
    if not len(params):
        return
    ps, gs, bks = _local(params, grads, backups)
    _dispatch("perturb_", ps[0].device, ps, gs, bks, total_norm, rho, adaptive,
              lists=("params", "grads", "backups"))


@torch.library.register_fake("slsam::perturb_")
def _perturb_fake(params: list[Tensor], grads: list[Tensor], backups: list[Tensor],
                  total_norm: Tensor, rho: float, adaptive: bool = False) -> None:
    return None


# ------------------------------------------------------------------- restore_


def restore_(params: Sequence[Tensor], backups: Sequence[Tensor]) -> None:
    """``params = backups``, bit for bit."""
    if not len(params):
        return
    ps, bks = _local(params, backups)
    _dispatch("restore_", ps[0].device, ps, bks, lists=("params", "backups"))


@torch.library.register_fake("slsam::restore_")
def _restore_fake(params: list[Tensor], backups: list[Tensor]) -> None:
    return None


# ------------------------------------------------------------- restore_adamw_


def restore_adamw_(
    params: Sequence[Tensor],
    backups: Sequence[Tensor],
    grads: Sequence[Tensor],
    exp_avgs: Sequence[Tensor],
    exp_avg_sqs: Sequence[Tensor],
    steps: Sequence[Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    weight_decay: float,
    eps: float,
    grad_scale: Tensor | None = None,
    found_inf: Tensor | None = None,
) -> None:
    """Restore from ``backups`` and take one AdamW step, in one pass.

    ``grads`` are divided by ``grad_scale`` when given. When ``found_inf`` is
    non-zero, params are only restored; moments and steps stay as they were.
    """
    if not len(params):
        return
    ps, bks, gs, ms, vs = _local(params, backups, grads, exp_avgs, exp_avg_sqs)
    _dispatch("restore_adamw_", ps[0].device, ps, bks, gs, ms, vs, list(steps), float(lr),
              float(beta1), float(beta2), float(weight_decay), float(eps), grad_scale, found_inf,
              lists=("params", "backups", "grads"))


@torch.library.register_fake("slsam::restore_adamw_")
def _restore_adamw_fake(params: list[Tensor], backups: list[Tensor], grads: list[Tensor],
                        exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], steps: list[Tensor],
                        lr: float, beta1: float, beta2: float, weight_decay: float, eps: float,
                        grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> None:
    return None


# ------------------------------------------------------------- bandit_update_


def bandit_update_(
    probs: Tensor,
    mask: Tensor,
    norms: Tensor,
    found_inf: Tensor | None,
    alpha: float,
    k: float,
    normalize: bool = False,
) -> None:
    """EXP3 update of ``probs`` (fp64) from the active arms' norms, then the capped projection.

    ``norms`` (fp32) has one entry per true entry of ``mask``, in arm order.
    """
    _dispatch("bandit_update_", probs.device, probs, mask, norms, found_inf, float(alpha),
              float(k), normalize)


@torch.library.register_fake("slsam::bandit_update_")
def _bandit_update_fake(probs: Tensor, mask: Tensor, norms: Tensor, found_inf: Tensor | None,
                        alpha: float, k: float, normalize: bool = False) -> None:
    return None


# ---------------------------------------------------------------- sample_mask


def sample_mask(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A Bernoulli(``probs``) bool mask, resampled until at least one arm is active."""
    return _dispatch("sample_mask", probs.device, probs, generator)


@torch.library.register_fake("slsam::sample_mask")
def _sample_mask_fake(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return probs.new_empty(probs.shape, dtype=torch.bool)
