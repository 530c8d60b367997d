"""The math of every slsam operator in plain PyTorch.

This module is the oracle the kernels are tested against, and the fallback
where no kernel exists (e.g. CUDA tensors with a CPU-only build). Each
function has the signature and the semantics of the operator of the same name
in ``slsam.ops``; the in-place ones end in ``_``. Low-precision tensors are
computed in fp32 ("opmath") and rounded once, like the kernels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

PERTURB_EPS = 1e-12  # slsam::kPerturbEps (csrc/include/slsam/elementwise.h)
PROB_FLOOR = 1e-8
MAX_DRAWS = 1000


def _opmath(t: Tensor) -> Tensor:
    return t.double() if t.dtype == torch.float64 else t.float()


def grad_norms(
    grads: Sequence[Tensor], weights: Sequence[Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """Per-tensor L2 norms (fp32, [n]) and the global norm ([], fp64 when every grad is
    fp64, else fp32)."""
    device = grads[0].device if len(grads) else torch.device("cpu")
    if not len(grads):
        return torch.zeros(0, device=device), torch.zeros((), device=device)
    sq = []
    for i, g in enumerate(grads):
        x = _opmath(g)
        if weights is not None:
            x = _opmath(weights[i]).abs() * x
        sq.append(x.double().square().sum() if x.dtype == torch.float64 else x.square().sum())
    sq_t = torch.stack([s.double() for s in sq])
    total = sq_t.sum().sqrt()
    all_double = all(g.dtype == torch.float64 for g in grads)
    return sq_t.sqrt().float(), total if all_double else total.float()


def perturb_scale(total_norm: Tensor, rho: float) -> Tensor:
    """rho / (||g|| + eps) as a 0-dim float64 tensor; 0 if the norm is not finite."""
    t = total_norm.double().reshape(())
    return torch.where(torch.isfinite(t), rho / (t + PERTURB_EPS), torch.zeros_like(t))


def perturb_(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    backups: Sequence[Tensor],
    total_norm: Tensor,
    rho: float,
    adaptive: bool = False,
) -> None:
    """backups = params; params += rho/(||g|| + 1e-12) * g (* params^2 if adaptive).

    A zero or non-finite scale (rho = 0, a non-finite norm) leaves params as they are,
    also where g is not finite (x + 0 * inf would be NaN).
    """
    scale = perturb_scale(total_norm, rho)
    for p, g, b in zip(params, grads, backups, strict=False):
        b.copy_(p)
        x = _opmath(p)
        s = scale.to(x.dtype)
        moves = (s != 0) & torch.isfinite(s)
        # NOTE: the kernels' association, ((s * x) * x) * g: x + step can cancel, and
        # another order then shows as several ulp of the result
        step = s * x * x * g.to(x.dtype) if adaptive else s * g.to(x.dtype)
        p.copy_(torch.where(moves, x + step, x))


def restore_(params: Sequence[Tensor], backups: Sequence[Tensor]) -> None:
    for p, b in zip(params, backups, strict=False):
        p.copy_(b)


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
    """params = AdamW(backups, grads); exp_avgs, exp_avg_sqs, steps updated.

    When found_inf is non-zero only the restore happens (state untouched).
    """
    if found_inf is not None and bool(found_inf.reshape(()) != 0):
        restore_(params, backups)
        return
    for p, x0, g, m, v, st in zip(params, backups, grads, exp_avgs, exp_avg_sqs, steps, strict=False):
        step = float(st) + 1.0
        x = _opmath(x0)
        gg = _opmath(g)
        if grad_scale is not None:
            gg = gg * (1.0 / grad_scale.double().reshape(())).to(gg.dtype)
        mm, vv = _opmath(m), _opmath(v)
        dt = x.dtype

        def c(v_: float, dt: torch.dtype = dt) -> Tensor:  # scalars rounded like the kernel
            return torch.tensor(v_, dtype=dt)

        # NOTE: 1 - lr*wd, 1 - beta1, 1 - beta2 formed in double, rounded once (as torch)
        x = x * c(1.0 - lr * weight_decay)
        # NOTE: torch's lerp formula written out: torch.lerp's vector path fuses it into an
        # FMA, which the kernels (-ffp-contract=off, the same bits on every ISA) do not
        w1 = c(1.0 - beta1)
        mm = mm + w1 * (gg - mm) if float(w1) < 0.5 else gg - (gg - mm) * (c(1.0) - w1)
        vv = c(beta2) * vv + c(1.0 - beta2) * gg * gg
        step_size = c(lr / (1.0 - beta1**step))
        bc2_sqrt = c(math.sqrt(1.0 - beta2**step))
        denom = vv.sqrt() / bc2_sqrt + c(eps)
        x = x - step_size * (mm / denom)
        m.copy_(mm)
        v.copy_(vv)
        p.copy_(x)
        st.fill_(step)


def bandit_weights(
    probs: Tensor, mask: Tensor, norms: Tensor, alpha: float, normalize: bool = False
) -> Tensor:
    """EXP3 weights w (fp64 [n]): p*exp(-alpha*lhat/p) for active arms, p otherwise."""
    p = probs.double()
    r = torch.zeros_like(p)
    r[mask] = norms.double()
    if normalize and int(mask.sum()) > 0:
        mean = r[mask].mean()
        if float(mean) > 0:
            r = r / mean
    ratio_sq = (r / p) ** 2
    max_sq = ratio_sq[mask].max()
    lhat = max_sq - ratio_sq
    return torch.where(mask, p * torch.exp(-alpha * lhat / p), p)


def capped_projection(w: Tensor, k: float) -> Tensor:
    """Exp3.M: p = min(1, c*w) with sum p = k, then clipped to [1e-8, 1]."""
    w = w.double()
    n = w.numel()
    if k >= n:
        return torch.ones_like(w)
    capped = torch.zeros(n, dtype=torch.bool, device=w.device)
    c = torch.zeros((), dtype=torch.float64, device=w.device)
    for _ in range(n + 1):
        free_sum = w[~capped].sum()
        c = (k - capped.sum().double()) / free_sum if float(free_sum) > 0 else torch.zeros_like(free_sum)
        new = ~capped & (c * w >= 1.0)
        if not bool(new.any()):
            break
        capped |= new
    return torch.where(capped, torch.ones_like(w), c * w).clamp(PROB_FLOOR, 1.0)


def bandit_update_(
    probs: Tensor,
    mask: Tensor,
    norms: Tensor,
    found_inf: Tensor | None,
    alpha: float,
    k: float,
    normalize: bool = False,
) -> None:
    """One EXP3 update of ``probs`` in place (skipped when found_inf != 0)."""
    if norms.numel() != int(mask.sum()):
        raise ValueError(
            f"norms has {norms.numel()} entries but mask has {int(mask.sum())} active arms"
        )
    if found_inf is not None and bool(found_inf.reshape(()) != 0):
        return
    if norms.numel() == 0:
        return
    probs.copy_(capped_projection(bandit_weights(probs, mask, norms, alpha, normalize), k))


def sample_mask(probs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Bernoulli(probs) mask, resampled until not empty (bounded; then argmax)."""
    n = probs.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=probs.device)
    for _ in range(MAX_DRAWS):
        u = torch.rand(n, dtype=torch.float64, device=probs.device, generator=generator)
        mask = u < probs
        if bool(mask.any()):
            return mask
    mask = torch.zeros(n, dtype=torch.bool, device=probs.device)
    mask[int(torch.nan_to_num(probs, nan=-1.0).argmax())] = True
    return mask
