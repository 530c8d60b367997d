"""Writes tests/data/v010_checkpoint.pt: an SLSAM checkpoint in the state_dict format of
slsam 0.1.0 (run from that version's checkout), with the weights and
probabilities two further steps reach, for tests/test_checkpoint_compat.py.

    python tests/data/make_v010_checkpoint.py
"""

from __future__ import annotations

import copy
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # tests/: conftest
from conftest import batch, tiny_mlp  # noqa: E402

import slsam  # noqa: E402


def closure_for(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int):
    x, y = batch(seed)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def main() -> None:
    model = tiny_mlp(0)
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, weight_decay=0.05, rho=0.05, sparsity=0.5,
                      seed=3)
    for seed in range(3):
        opt.step(closure_for(model, opt, seed))
    saved = {"model": {k: v.clone() for k, v in model.state_dict().items()},
             "optimizer": copy.deepcopy(opt.state_dict())}  # state holds live tensors
    for seed in (3, 4):
        opt.step(closure_for(model, opt, seed))
    saved["after"] = {"model": model.state_dict(), "probs": opt.probs, "mask": opt.mask}
    torch.save(saved, pathlib.Path(__file__).with_name("v010_checkpoint.pt"))


if __name__ == "__main__":
    main()
