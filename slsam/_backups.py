"""Where a step keeps its weight backups.

NOTE: on CPU a fresh ``torch.empty_like`` of a large tensor is freshly mapped
memory (glibc serves allocations over its mmap threshold, 128 KiB by default,
with mmap), so the perturb kernel that first writes it pays a page fault per
4 KiB: a fifth to a third of the optimizer-side time on MiniLM (benchmarks/README.md).
The pool keeps one byte buffer, as large as the largest set of large backups
so far, and hands out views of it laid out like the parameters. Small tensors
come from the heap, which reuses them without faults, and a view costs more
than their ``empty_like``. The views of the last call are kept: SAM (and any
step with the same active set) reuses them as they are. CUDA's caching
allocator already reuses memory, so there the backups are plain
``empty_like``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from slsam import _slab

_MIN_BYTES = 128 * 1024  # below this, empty_like (see the note above)


def _poolable(p: Tensor) -> bool:
    return _slab.placeable(p) and p.numel() * p.element_size() >= _MIN_BYTES


class BackupPool:
    """Backups of the active tensors, the large ones in one reused buffer."""

    def __init__(self, reuse: bool) -> None:
        self.reuse = reuse
        self._buffer: Tensor | None = None
        self._last: tuple[list[tuple[Tensor, torch.dtype, torch.Size, tuple[int, ...]]],
                          list[Tensor]] | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of the reused buffer (0 without reuse)."""
        return 0 if self._buffer is None else self._buffer.numel()

    @property
    def held_bytes(self) -> int:
        """Bytes held now: the buffer plus the last call's backups outside it."""
        small = 0 if self._last is None else sum(
            b.numel() * b.element_size() for b in self._last[1] if b._base is None)
        return self.nbytes + small

    def take(self, params: list[Tensor]) -> list[Tensor]:
        """Uninitialised tensors with the shapes, dtypes and strides of ``params``,
        valid until the next ``take``."""
        if not self.reuse or not params:
            return [torch.empty_like(p) for p in params]
        if self._last is not None and self._same_layouts(params):
            return list(self._last[1])
        big = [p for p in params if _poolable(p)]
        offsets, total = _slab.layout(big, [p.dtype for p in big])
        if total and (self._buffer is None or self._buffer.numel() < total):
            self._last = None
            self._buffer = None  # free the old buffer before the new one is allocated
            self._buffer = torch.empty(total, dtype=torch.uint8, device=params[0].device)
        out = []
        for p in params:
            off = offsets.get(id(p))
            if off is None:
                out.append(torch.empty_like(p))
                continue
            assert self._buffer is not None
            out.append(_slab.view_like(self._buffer, off, p, p.dtype))
        self._last = ([(p, p.dtype, p.shape, p.stride()) for p in params], out)
        return list(out)

    def _same_layouts(self, params: list[Tensor]) -> bool:
        """The last call's tensors, with the same dtypes, shapes and strides.

        NOTE: compares against the layouts saved on the last miss instead of
        building a key per call: a key over 10,000 tensors costs tens of ms a step
        (benchmarks/README.md), mostly because the 10,000 shape tuples it retains set
        off the garbage collector; shapes that die at once cost next to nothing.
        """
        assert self._last is not None
        last = self._last[0]
        return len(last) == len(params) and all(
            p is q and p.dtype is d and p.shape == s and p.stride() == st
            for p, (q, d, s, st) in zip(params, last, strict=False))
