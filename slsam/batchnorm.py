"""BatchNorm running statistics under SAM's two forward passes.

The second forward runs at the perturbed weights on the same batch; letting it
update BatchNorm's running mean/var would count every batch twice, once at a
point the model never takes. Freeze the statistics for that pass:

    def closure():
        opt.zero_grad()
        with slsam.running_stats_frozen(model, enabled=opt.perturbed):
            loss = loss_fn(model(x), y)
        loss.backward()
        return loss
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

_BN = (nn.modules.batchnorm._BatchNorm,)


def _bn_modules(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


def disable_running_stats(model: nn.Module) -> None:
    """Stop BatchNorm layers from updating running stats (davda54/sam's helper)."""
    for m in _bn_modules(model):
        if not hasattr(m, "_slsam_momentum"):
            m._slsam_momentum = m.momentum  # type: ignore[attr-defined]
            m._slsam_tracked = m.num_batches_tracked.clone()  # type: ignore[attr-defined]
        m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch: unchanged


def enable_running_stats(model: nn.Module) -> None:
    """Undo :func:`disable_running_stats`."""
    for m in _bn_modules(model):
        if hasattr(m, "_slsam_momentum"):
            m.momentum = m._slsam_momentum  # type: ignore[attr-defined]
            with torch.no_grad():  # momentum=None layers count batches: undo the frozen ones
                m.num_batches_tracked.copy_(m._slsam_tracked)  # type: ignore[attr-defined]
            del m._slsam_momentum, m._slsam_tracked  # type: ignore[attr-defined]


@contextlib.contextmanager
def running_stats_frozen(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """BatchNorm running statistics are left exactly as they were inside the block."""
    if not enabled:
        yield
        return
    disable_running_stats(model)
    try:
        yield
    finally:
        enable_running_stats(model)
