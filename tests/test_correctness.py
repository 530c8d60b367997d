"""Correctness against the peers and torch.optim: non-finite first passes, rho = 0,
mixed adaptive groups, frozen tensors across load_state_dict, copies and pickles of
the optimizer, AdamW's scalars, fp64 norms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slsam
from slsam import ops, reference

# ----- a non-finite first pass leaves the weights alone for the second forward -----


def bn_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))


def bn_batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g)
    return x, (x[:, 0] > 0).long()


@pytest.mark.parametrize("value", [float("inf"), -float("inf"), float("nan")],
                         ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("freeze", ["none", "running_stats_frozen", "disable_enable"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("base", [torch.optim.AdamW, torch.optim.SGD], ids=["adamw", "sgd"])
def test_nonfinite_first_pass_leaves_weights_for_the_second_forward(base, adaptive, freeze,
                                                                     value):
    model = bn_model()
    opt = slsam.SAM(model.parameters(), base, rho=0.05, adaptive=adaptive, lr=1e-2)
    x, y = bn_batch()
    bn = model[1]
    before = [p.detach().clone() for p in model.parameters()]
    seen: list[list[torch.Tensor]] = []

    def forward() -> torch.Tensor:
        if freeze == "running_stats_frozen":
            with slsam.running_stats_frozen(model, enabled=opt.perturbed):
                return F.cross_entropy(model(x), y)
        if freeze == "disable_enable" and opt.perturbed:
            slsam.disable_running_stats(model)
            try:
                return F.cross_entropy(model(x), y)
            finally:
                slsam.enable_running_stats(model)
        return F.cross_entropy(model(x), y)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        seen.append([p.detach().clone() for p in model.parameters()])
        loss = forward()
        loss.backward()
        if not opt.perturbed:  # first pass: one bad gradient element
            model[0].weight.grad[0, 0] = value
        return loss

    opt.step(closure)
    assert opt.skipped_steps == 1
    for a, b in zip(seen[1], before):  # the second forward ran at the unperturbed weights
        assert torch.equal(a, b)
    for a, b in zip(model.parameters(), before):
        assert torch.equal(a.detach(), b)
    assert bool(torch.isfinite(bn.running_mean).all()) and bool(torch.isfinite(bn.running_var).all())
    # and training goes on from there
    opt.step(lambda: (opt.zero_grad(), (loss := forward()).backward(), loss)[2])
    assert opt.skipped_steps == 1
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64],
                         ids=["fp32", "bf16", "fp16", "fp64"])
def test_perturb_with_nonfinite_gradient_and_norm_writes_params_unchanged(dtype, adaptive, value):
    g = torch.Generator().manual_seed(0)
    shapes = [(70000,), (3, 5), (0,), (1,)]
    params = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    grads = [torch.randn(s, generator=g).to(dtype) for s in shapes]
    grads[0][12345] = value
    grads[1][1, 2] = value
    total = torch.tensor(value)
    for fn in (ops.perturb_, reference.perturb_):
        ps = [p.clone() for p in params]
        bks = [torch.empty_like(p) for p in ps]
        fn(ps, grads, bks, total, 0.05, adaptive)
        for p, q, b in zip(ps, params, bks):
            assert torch.equal(p.view(torch.uint8), q.view(torch.uint8)), fn
            assert torch.equal(b.view(torch.uint8), q.view(torch.uint8)), fn
