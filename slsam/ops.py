"""Typed wrappers over the ``torch.ops.slsam.*`` operators.

Each wrapper calls the compiled kernel for the tensors' device when one is
registered (CPU always; CUDA when the extension was built with it), and the
plain-PyTorch twin in :mod:`slsam.reference` otherwise. The fake (meta)
implementations registered here let the operators run under ``torch.compile``
and ``torch.library.opcheck``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from slsam import (
    _C,  # noqa: F401  (loading the library registers the operators)
    _dtensor,
    reference,
)

_OPS = torch.ops.slsam


def has_kernel(op: str, device: torch.device | str) -> bool:
    """Whether ``slsam::<op>`` has a compiled kernel for ``device``'s type."""
    key = {"cpu": "CPU", "cuda": "CUDA"}.get(torch.device(device).type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"slsam::{op}", key)


def _explain(err: NotImplementedError, **lists: Sequence[Tensor] | None) -> Exception:
    """Turn the dispatcher's "no kernel for SparseCPU" into an error naming the input."""
    for name, ts in lists.items():
        for i, t in enumerate(ts or ()):
            if t is not None and t.layout != torch.strided:
                return ValueError(
                    f"slsam: {name}[{i}] has layout {t.layout}; SAM needs dense gradients "
                    "(e.g. nn.Embedding(sparse=False)) and dense parameters")
    return err


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
    if has_kernel("grad_norms", grads[0].device):
        try:
            return _OPS.grad_norms(grads, w)
        except NotImplementedError as e:
            raise _explain(e, grads=grads, weights=w) from e
    return reference.grad_norms(grads, w)


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
    if _dtensor.has_dtensor(params):
        params, grads, backups = (_dtensor.local(ts) for ts in (params, grads, backups))
    if has_kernel("perturb_", params[0].device):
        try:
            _OPS.perturb_(list(params), list(grads), list(backups), total_norm, rho, adaptive)
        except NotImplementedError as e:
            raise _explain(e, params=params, grads=grads, backups=backups) from e
    else:
        reference.perturb_(params, grads, backups, total_norm, rho, adaptive)


def restore_(params: Sequence[Tensor], backups: Sequence[Tensor]) -> None:
    """``params = backups``, bit for bit."""
    if not len(params):
        return
    if _dtensor.has_dtensor(params):
        params, backups = _dtensor.local(params), _dtensor.local(backups)
    if has_kernel("restore_", params[0].device):
        _OPS.restore_(list(params), list(backups))
    else:
        reference.restore_(params, backups)


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
    if _dtensor.has_dtensor(params):
        params, backups, grads, exp_avgs, exp_avg_sqs = (
            _dtensor.local(ts) for ts in (params, backups, grads, exp_avgs, exp_avg_sqs))
    args = (list(params), list(backups), list(grads), list(exp_avgs), list(exp_avg_sqs),
            list(steps), float(lr), float(beta1), float(beta2), float(weight_decay), float(eps),
            grad_scale, found_inf)
    if has_kernel("restore_adamw_", params[0].device):
        try:
            _OPS.restore_adamw_(*args)
        except NotImplementedError as e:
            raise _explain(e, params=params, backups=backups, grads=grads) from e
    else:
        reference.restore_adamw_(*args)


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
    if has_kernel("bandit_update_", probs.device):
        _OPS.bandit_update_(probs, mask, norms, found_inf, float(alpha), float(k), normalize)
    else:
        reference.bandit_update_(probs, mask, norms, found_inf, alpha, k, normalize)


def sample_mask(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A Bernoulli(``probs``) bool mask, resampled until at least one arm is active."""
    if has_kernel("sample_mask", probs.device):
        return _OPS.sample_mask(probs, generator)
    return reference.sample_mask(probs, generator)


# --- fake implementations: shapes and dtypes only, for torch.compile / opcheck ---


@torch.library.register_fake("slsam::grad_norms")
def _grad_norms_fake(grads: list[Tensor], weights: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
    g = grads[0]
    all_double = all(t.dtype == torch.float64 for t in grads)
    return (g.new_empty((len(grads),), dtype=torch.float32),
            g.new_empty((), dtype=torch.float64 if all_double else torch.float32))


@torch.library.register_fake("slsam::perturb_")
def _perturb_fake(params: list[Tensor], grads: list[Tensor], backups: list[Tensor],
                  total_norm: Tensor, rho: float, adaptive: bool = False) -> None:
    return None


@torch.library.register_fake("slsam::restore_")
def _restore_fake(params: list[Tensor], backups: list[Tensor]) -> None:
    return None


@torch.library.register_fake("slsam::restore_adamw_")
def _restore_adamw_fake(params: list[Tensor], backups: list[Tensor], grads: list[Tensor],
                        exp_avgs: list[Tensor], exp_avg_sqs: list[Tensor], steps: list[Tensor],
                        lr: float, beta1: float, beta2: float, weight_decay: float, eps: float,
                        grad_scale: Tensor | None = None, found_inf: Tensor | None = None) -> None:
    return None


@torch.library.register_fake("slsam::bandit_update_")
def _bandit_update_fake(probs: Tensor, mask: Tensor, norms: Tensor, found_inf: Tensor | None,
                        alpha: float, k: float, normalize: bool = False) -> None:
    return None


@torch.library.register_fake("slsam::sample_mask")
def _sample_mask_fake(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    return probs.new_empty(probs.shape, dtype=torch.bool)
