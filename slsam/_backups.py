"""Where a step keeps its weight backups.

NOTE: on CPU a fresh ``torch.empty_like`` per step is freshly mapped memory
for large tensors (glibc serves them with mmap), so the perturb kernel that
first writes it pays a page fault per 4 KiB: measured ~35 ms a step on
MiniLM, 20-30% of the optimizer-side time. The pool keeps one byte buffer,
as large as the largest set of backups so far, and hands out views of it
laid out like the parameters. CUDA's caching allocator already reuses
memory, so there the backups are plain ``empty_like``.
"""

from __future__ import annotations

import torch
from torch import Tensor

_ALIGN = 64  # bytes: every view starts on a cache line (and a vector load)


def _dense(t: Tensor) -> bool:
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


class BackupPool:
    """Backups of the active tensors, in one reused buffer."""

    def __init__(self, reuse: bool) -> None:
        self.reuse = reuse
        self._buffer: Tensor | None = None

    @property
    def nbytes(self) -> int:
        """Bytes the pool holds between steps (0 without reuse)."""
        return 0 if self._buffer is None else self._buffer.numel()

    def take(self, params: list[Tensor]) -> list[Tensor]:
        """Uninitialised tensors with the shapes, dtypes and strides of ``params``,
        valid until the next ``take``."""
        # Subclasses (DTensor under FSDP2) keep their own empty_like, and so do
        # non-dense tensors, which the kernels then refuse with a clear error.
        if not self.reuse or not params or any(
                type(p) not in (Tensor, torch.nn.Parameter) or not _dense(p)
                for p in params):
            return [torch.empty_like(p) for p in params]
        offsets, total = [], 0
        for p in params:
            offsets.append(total)
            total += -(-p.numel() * p.element_size() // _ALIGN) * _ALIGN
        if self._buffer is None or self._buffer.numel() < total:
            self._buffer = None  # free the old buffer before the new one is allocated
            self._buffer = torch.empty(total, dtype=torch.uint8, device=params[0].device)
        out = []
        for p, off in zip(params, offsets):
            raw = self._buffer[off: off + p.numel() * p.element_size()]
            out.append(raw.view(p.dtype).as_strided(p.shape, p.stride()))
        return out

    def release(self) -> None:
        self._buffer = None
