"""Lightning manual optimization with SLSAM."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import lightning_slsam  # noqa: E402


@pytest.mark.slow
def test_lightning_manual_optimization_trains():
    model = lightning_slsam.main(max_epochs=4)
    opt = model.optimizers().optimizer
    assert not opt.perturbed and opt.skipped_steps == 0
    x, y = next(iter(lightning_slsam.make_data(seed=1)))
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean()
    assert acc > 0.6
    steps = [float(s["step"]) for s in opt.state.values()]
    assert steps and max(steps) < 4 * 8  # sparse: no tensor updated every one of the 32 steps
