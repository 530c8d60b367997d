"""SLSAM(scale_lr=True): the bandit's groups take lr / sparsity, exactly the per-group recipe
the fine-tuning comparison measured (README, "When to use SL-SAM, and the recipe")."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import Net, closure_for

import slsam


def body_and_head(model: Net) -> tuple[list[torch.nn.Parameter], list[torch.nn.Parameter]]:
    head = list(model.head.parameters())
    body = [p for n, p in model.named_parameters() if not n.startswith("head")]
    return body, head


@pytest.mark.parametrize("base", [torch.optim.AdamW, torch.optim.SGD])
def test_scale_lr_equals_the_per_group_recipe_bit_for_bit(base):
    s, lr = 0.25, 1e-2
    model, recipe_model = Net(0), Net(0)
    body, head = body_and_head(model)
    opt = slsam.SLSAM([{"params": body}, {"params": head, "always_active": True}], base,
                      sparsity=s, seed=3, lr=lr, scale_lr=True)
    rbody, rhead = body_and_head(recipe_model)
    recipe = slsam.SLSAM([{"params": rbody, "lr": lr / s},
                          {"params": rhead, "always_active": True}], base,
                         sparsity=s, seed=3, lr=lr)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda i: 1.0 / (1 + i)) for o in (opt, recipe)]
    for seed in range(5):
        opt.step(closure_for(model, opt, seed))
        recipe.step(closure_for(recipe_model, recipe, seed))
        for sch in scheds:
            sch.step()
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in recipe.param_groups]
    for p, q in zip(model.parameters(), recipe_model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_scale_lr_scales_only_the_bandits_groups():
    model = Net(0)
    body, head = body_and_head(model)
    opt = slsam.SLSAM([{"params": body}, {"params": head, "always_active": True, "lr": 0.5}],
                      sparsity=0.2, lr=0.1, scale_lr=True)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)  # 0.1 / 0.2
    assert opt.param_groups[1]["lr"] == 0.5
    assert opt.defaults["lr"] == 0.1
    dense = slsam.SAM(Net(0).parameters(), lr=0.1)
    assert dense.param_groups[0]["lr"] == 0.1


def test_scale_lr_off_by_default_and_not_applied_twice_on_resume():
    model = Net(0)
    opt = slsam.SLSAM(model.parameters(), sparsity=0.5, lr=0.1, seed=0)
    assert opt.param_groups[0]["lr"] == 0.1
    scaled = slsam.SLSAM(model.parameters(), sparsity=0.5, lr=0.1, seed=0, scale_lr=True)
    scaled.step(closure_for(model, scaled, 0))
    resumed = slsam.SLSAM(copy.deepcopy(model).parameters(), sparsity=0.5, lr=0.1, seed=0,
                          scale_lr=True)
    resumed.load_state_dict(copy.deepcopy(scaled.state_dict()))
    assert resumed.param_groups[0]["lr"] == pytest.approx(0.2)


def test_scale_lr_bad_input_names_the_argument():
    with pytest.raises(TypeError, match="scale_lr must be True or False"):
        slsam.SLSAM(Net(0).parameters(), scale_lr="yes")  # type: ignore[arg-type]

    class NoLR(torch.optim.Optimizer):
        def __init__(self, params, **kw):
            super().__init__(params, {})

        def step(self, closure=None):  # pragma: no cover - never reached
            return None

    with pytest.raises(ValueError, match=r"scale_lr=True needs a learning rate 'lr' in "
                                         r"param_groups\[0\]"):
        slsam.SLSAM(Net(0).parameters(), NoLR, scale_lr=True)
