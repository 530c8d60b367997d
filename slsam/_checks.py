"""SLSAM's argument checks: each raises an error naming the argument and the fix,
before anything is written."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from slsam._marks import trainable

RHO_FIX = "use rho >= 0, e.g. rho=0.05 (rho=0 is the base optimizer alone)"


def check_range(name: str, value: float, low: float, high: float, *, low_open: bool,
                fix: str) -> None:
    # NOTE: finite only: rho = inf or alpha = inf would turn every step into a skipped
    # one (inf perturbation) or the probabilities into NaN (inf * 0 in the EXP3 weight).
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        lo = "(" if low_open else "["
        hi = "]" if math.isfinite(high) else ")"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {value!r}; {fix}")


def check_arguments(*, mask_mode: str, rho: float, sparsity: float, alpha: float, p_min: float,
                    base_optimizer: Any) -> None:
    """The constructor's scalar arguments and the base optimizer class."""
    if mask_mode not in ("requires_grad", "grad"):
        raise ValueError(f"mask_mode must be 'requires_grad' or 'grad', got {mask_mode!r}")
    check_range("rho", rho, 0.0, math.inf, low_open=False, fix=RHO_FIX)
    check_range("sparsity", sparsity, 0.0, 1.0, low_open=True,
                fix="it is the expected fraction of active tensors, e.g. 0.2")
    check_range("alpha", alpha, 0.0, math.inf, low_open=False, fix="use e.g. alpha=1e-3")
    check_range("p_min", p_min, 0.0, 1.0, low_open=True, fix="use e.g. p_min=1e-3")
    if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
        raise TypeError(
            f"base_optimizer must be an optimizer class such as torch.optim.AdamW, got "
            f"{base_optimizer!r}; pass the class and its arguments as keywords, "
            "e.g. SLSAM(params, torch.optim.SGD, lr=0.1)")


def check_group_rhos(groups: list[dict[str, Any]]) -> None:
    """Every group's rho (a group may set its own, or an LR-style schedule may change it)."""
    for i, g in enumerate(groups):
        check_range(f"param_groups[{i}]['rho']", g.get("rho"), 0.0, math.inf, low_open=False,
                    fix=RHO_FIX)


def check_params(groups: list[dict[str, Any]]) -> torch.device:
    """The trainable parameters: one device with data, no shared memory, floating point.
    Returns the device."""
    params = [p for g in groups for p in g["params"] if trainable(p)]
    devices = {p.device for p in params}
    if len(devices) > 1:
        raise ValueError(
            f"params are on several devices ({sorted(map(str, devices))}); SLSAM needs one "
            "device per optimizer: move the model with model.to(device) first")
    device = devices.pop() if devices else torch.device("cpu")
    if device.type == "meta":
        raise ValueError("params are on the meta device (no data); materialise the model first "
                         "(e.g. model.to_empty(device='cpu') and initialise it), then create "
                         "the optimizer")
    check_no_shared_memory(groups)
    not_float = sorted({str(p.dtype) for p in params if not p.is_floating_point()})
    if not_float:
        raise TypeError(f"SLSAM supports float32/float64/bfloat16/float16 parameters, got "
                        f"{not_float}; freeze those tensors (requires_grad_(False)) or leave "
                        "them out of the optimizer")
    return device


def check_no_shared_memory(groups: list[dict[str, Any]]) -> None:
    """Refuse distinct parameters whose memory overlaps (tied weights as two Parameters).

    NOTE: each would be backed up, perturbed and updated on its own, so the shared
    weights would move twice and the restore of one would undo the other's step.
    Views of one buffer that do not overlap are fine.
    """
    spans = []
    for gi, g in enumerate(groups):
        for k, p in enumerate(g["params"]):
            if (not trainable(p) or p.numel() == 0 or p.layout != torch.strided
                    or p.device.type == "meta"):
                continue
            try:
                base = p.untyped_storage().data_ptr()
            except (RuntimeError, NotImplementedError):  # no plain storage (e.g. DTensor)
                continue
            size = p.element_size()
            start = base + p.storage_offset() * size
            extent = sum((n - 1) * st for n, st in zip(p.shape, p.stride(), strict=False)) + 1
            spans.append((start, start + extent * size, f"param_groups[{gi}]['params'][{k}]",
                          tuple(p.shape)))
    spans.sort()
    for (_, e0, n0, sh0), (s1, _, n1, sh1) in zip(spans, spans[1:], strict=False):
        if s1 < e0:
            raise ValueError(
                f"{n0} (shape {sh0}) and {n1} (shape {sh1}) share memory: SLSAM would perturb "
                "and update it twice per step. Tie weights by assigning one Parameter to both "
                "modules (e.g. decoder.weight = encoder.weight), which is then listed once")


def check_grads(params: list[Tensor], device: torch.device) -> list[Tensor | None]:
    """Refuse, before anything is written, gradients the kernels would refuse midway
    (sparse, unlike their parameter, on another device), in one pass. Returns the
    gradients (``None`` where a parameter has none), read once.

    NOTE: the callers take their gradient lists from here rather than reading ``p.grad``
    again: at thousands of tensors each pass over them costs milliseconds (every read
    misses the cache once the step's data has streamed through it).
    """
    strided = torch.strided
    grads: list[Tensor | None] = []
    append = grads.append
    for p in params:
        g = p.grad
        append(g)
        if g is None:
            continue
        if g.layout is not strided:
            raise ValueError("SLSAM got a sparse gradient; SAM needs dense gradients "
                             "(use nn.Embedding(sparse=False))")
        if g.dtype is not p.dtype or g.shape != p.shape:
            raise ValueError(
                f"a gradient has shape {tuple(g.shape)} and dtype {g.dtype} but its parameter "
                f"has shape {tuple(p.shape)} and dtype {p.dtype}; gradients must match their "
                "parameters (do not assign p.grad.data; use p.grad = torch.zeros_like(p))")
        if g.device != device and g.numel():
            raise ValueError(f"a gradient is on {g.device} but the parameters are on "
                             f"{device}; keep model and gradients on one device")
    return grads
