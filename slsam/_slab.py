"""Tensors laid out like parameters, side by side in one buffer.

The backup pool (``_backups``) and the AdamW moments (``_adamw_state``) both place
views of one byte buffer, each with a parameter's shape and strides, one after the
other in list order, every view starting on a cache line. A kernel walking the list
then reads that operand as one stream instead of one short stream per tensor.
"""

from __future__ import annotations

import torch
from torch import Tensor

ALIGN = 64  # bytes: every view starts on a cache line (and a vector load)


def dense(t: Tensor) -> bool:
    """Non-overlapping and without gaps (contiguous, channels_last, ...)."""
    if t.is_contiguous() or t.numel() == 0:
        return True
    expected = 1
    for d in sorted(range(t.dim()), key=lambda d: t.stride(d)):
        if t.size(d) == 1:
            continue
        if t.stride(d) != expected:
            return False
        expected *= t.size(d)
    return True


def placeable(p: Tensor) -> bool:
    """Whether a view of a buffer can stand in for ``p``: a plain dense tensor.

    Subclasses (DTensor under FSDP2) keep their own ``empty_like``, and so do
    non-dense tensors, which the kernels then refuse with a clear error.
    """
    return type(p) in (Tensor, torch.nn.Parameter) and dense(p)


def layout(params: list[Tensor], dtypes: list[torch.dtype]) -> tuple[dict[int, int], int]:
    """Where each of ``params``' views (in ``dtypes``) starts in a buffer that holds them
    side by side, each padded to :data:`ALIGN` (byte offset by ``id`` of the parameter),
    and the buffer's size."""
    offsets, total = {}, 0
    for p, dtype in zip(params, dtypes, strict=True):
        offsets[id(p)] = total
        total += -(-p.numel() * dtype.itemsize // ALIGN) * ALIGN
    return offsets, total


def view_like(buffer: Tensor, offset: int, p: Tensor, dtype: torch.dtype) -> Tensor:
    """The ``dtype`` view of ``buffer`` (uint8) at ``offset`` with ``p``'s shape and strides."""
    raw = buffer[offset: offset + p.numel() * dtype.itemsize]
    return raw.view(dtype).as_strided(p.shape, p.stride())
