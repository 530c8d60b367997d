"""A checkpoint written by slsam 0.1.0 (tests/data/make_v010_checkpoint.py) loads and
continues exactly as that version continued it."""

from __future__ import annotations

import pathlib

import torch
from conftest import batch, tiny_mlp

import slsam

CHECKPOINT = pathlib.Path(__file__).with_name("data") / "v010_checkpoint.pt"


def test_v010_checkpoint_loads_and_continues_bit_for_bit():
    saved = torch.load(CHECKPOINT, weights_only=False)
    model = tiny_mlp(0)
    model.load_state_dict(saved["model"])
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, weight_decay=0.05, rho=0.05, sparsity=0.5,
                      seed=99)
    opt.load_state_dict(saved["optimizer"])
    assert torch.equal(opt.probs, saved["optimizer"]["slsam"]["probs"])
    assert torch.equal(opt.mask, saved["optimizer"]["slsam"]["mask"])
    for seed in (3, 4):
        x, y = batch(seed)

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    after = saved["after"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, after["model"][k]), k
    assert torch.equal(opt.probs, after["probs"])
    assert torch.equal(opt.mask, after["mask"])
    # the format stays the one 0.1.0 wrote
    assert set(opt.state_dict()["slsam"]) == set(saved["optimizer"]["slsam"])
