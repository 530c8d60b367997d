"""The AdamW state the fused restore + update kernel reads, laid out as it needs.

The kernel (``slsam::restore_adamw_``) walks a parameter and its moments with one
set of strides, so the moments must have the parameter's. ``torch.optim.AdamW``
copes with any strides, and so must SLSAM: a model moved to another memory format
after the state exists (``model.to(memory_format=torch.channels_last)``), or a
contiguous checkpoint loaded into a channels_last model, leaves moments laid out
unlike their parameter; they are re-laid (copied once) at the next update.

fp16 parameters keep fp32 moments: in fp16 storage exp_avg_sq = (1 - beta2) * g^2
underflows for small gradients (|g| below ~1e-2 reaches fp16's subnormals), and
m / (sqrt(v) + eps) then grows far beyond 1, so the step grows far beyond lr. The
kernel takes moments of the parameter's dtype, so those parameters are updated
through fp32 copies, rounded to fp16 once as the kernel itself rounds.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from slsam import _slab, ops

_MOMENTS = ("exp_avg", "exp_avg_sq")


def moment_dtype(p: Tensor) -> torch.dtype:
    return torch.float32 if p.dtype == torch.float16 else p.dtype


def new_states(state: dict[Tensor, dict[str, Any]], params: list[Tensor]) -> None:
    """AdamW state, as ``torch.optim.AdamW(fused=True)`` keeps it (the step on the
    device), for ``params``, which have none yet.

    NOTE: the moments of plain dense parameters are views of one zeroed buffer per
    moment, side by side in list order (``_slab``): the fused kernel then reads each
    moment as one stream, which at thousands of small tensors is measurably faster
    than one short stream per tensor from the heap (benchmarks/README.md). A view keeps
    its whole buffer alive, as one parameter's moment saved alone would save it.
    """
    placed = [p for p in params if _slab.placeable(p)]
    offsets, total = _slab.layout(placed, [moment_dtype(p) for p in placed])
    buffers = [torch.zeros(total, dtype=torch.uint8, device=placed[0].device)
               for _ in _MOMENTS] if placed else []
    for p in params:
        entry = state[p]
        entry["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
        dtype = moment_dtype(p)
        off = offsets.get(id(p))
        for k, key in enumerate(_MOMENTS):
            entry[key] = (_slab.view_like(buffers[k], off, p, dtype) if off is not None else
                          torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format))


def relaid(entry: dict[str, Any], p: Tensor) -> dict[str, Any]:
    """``entry`` (the base optimizer's state for ``p``) with the step on ``p``'s device
    and the moments in ``p``'s strides and moment dtype."""
    if entry["step"].device != p.device:
        entry["step"] = entry["step"].to(p.device)
    dtype = moment_dtype(p)
    for key in _MOMENTS:
        t = entry[key]
        if (t.stride() != p.stride() or t.dtype != dtype) and t.shape == p.shape:
            copy = torch.empty_like(p, dtype=dtype, memory_format=torch.preserve_format)
            copy.copy_(t)
            entry[key] = copy
    return entry


class Moments(NamedTuple):
    """The kernel's state lists for some parameters, and which of them have wider moments."""

    exp_avgs: list[Tensor]
    exp_avg_sqs: list[Tensor]
    steps: list[Tensor]
    wide: list[int]


def adamw_states(state: dict[Tensor, dict[str, Any]], params: list[Tensor]) -> Moments:
    """The state of each of ``params`` (``state``: the base optimizer's), made
    (:func:`new_states`) or re-laid (:func:`relaid`) where needed, as lists.

    NOTE: one loop, and for an entry already laid out as its parameter (every step but
    the first) only the reads that tell so: at thousands of tensors a step's Python
    bookkeeping costs more than its kernels.
    """
    ms: list[Tensor] = []
    vs: list[Tensor] = []
    steps: list[Tensor] = []
    wide: list[int] = []
    fresh: list[int] = []
    half = torch.float16
    device = params[0].device if params else None  # one device per optimizer (checked)
    for i, p in enumerate(params):
        entry = state[p]
        if not entry:
            fresh.append(i)
            ms.append(p)  # placeholders, filled once every new state is made
            vs.append(p)
            steps.append(p)
            continue
        m, v, step = entry["exp_avg"], entry["exp_avg_sq"], entry["step"]
        dtype = p.dtype
        if dtype is not half and m.dtype is dtype and v.dtype is dtype:
            stride = p.stride()
            if m.stride() == stride and v.stride() == stride and step.device == device:
                ms.append(m)
                vs.append(v)
                steps.append(step)
                continue
        entry = relaid(entry, p)
        ms.append(entry["exp_avg"])
        vs.append(entry["exp_avg_sq"])
        steps.append(entry["step"])
        if entry["exp_avg"].dtype != p.dtype:
            wide.append(i)
    if fresh:
        new_states(state, [params[i] for i in fresh])
        for i in fresh:
            entry = state[params[i]]
            ms[i], vs[i], steps[i] = entry["exp_avg"], entry["exp_avg_sq"], entry["step"]
            if entry["exp_avg"].dtype != params[i].dtype:
                wide.append(i)
        wide.sort()
    return Moments(ms, vs, steps, wide)


def restore_adamw_(params: list[Tensor], backups: list[Tensor], grads: list[Tensor],
                   moments: Moments, *hyper: Any) -> None:
    """``ops.restore_adamw_``, also for parameters whose moments are wider (fp16 with fp32
    moments): those through fp32 copies of parameter, backup and gradient."""
    exp_avgs, exp_avg_sqs, steps, wide = moments
    lists = (params, backups, grads, exp_avgs, exp_avg_sqs, steps)
    if not wide:
        ops.restore_adamw_(*lists, *hyper)
        return
    wide_set = set(wide)
    same = [i for i in range(len(params)) if i not in wide_set]
    if same:
        ops.restore_adamw_(*([ts[i] for i in same] for ts in lists), *hyper)
    outs = [torch.empty_like(params[i], dtype=exp_avgs[i].dtype) for i in wide]
    ops.restore_adamw_(outs, [backups[i].to(exp_avgs[i].dtype) for i in wide],
                       [grads[i].to(exp_avgs[i].dtype) for i in wide],
                       [exp_avgs[i] for i in wide], [exp_avg_sqs[i] for i in wide],
                       [steps[i] for i in wide], *hyper)
    for i, out in zip(wide, outs, strict=True):
        params[i].copy_(out)


def keep_saved_wide_moments(state: dict[Tensor, dict[str, Any]], groups: list[dict[str, Any]],
                            saved: dict[str, Any]) -> None:
    """After torch's ``load_state_dict``, which casts the moments to their parameter's
    dtype: the fp32 moments saved for fp16 parameters, as saved."""
    ids = [i for g in saved["param_groups"] for i in g["params"]]
    params = [p for g in groups for p in g["params"]]
    for i, p in zip(ids, params, strict=False):
        entry = saved["state"].get(i)
        if moment_dtype(p) == p.dtype or not entry or p not in state:
            continue
        for key in _MOMENTS:
            t = entry.get(key)
            if isinstance(t, Tensor) and t.shape == p.shape:
                state[p][key] = t.to(device=p.device, dtype=moment_dtype(p), copy=True)
