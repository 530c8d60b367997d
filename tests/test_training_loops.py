"""Real training loops: tied and duplicated parameters, masks the loss cannot use,
load_state_dict() against the constructor's settings, copies of a masked model."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import slsam


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g)
    return x, (x[:, 0] > 0).long()


def closure_for(model: nn.Module, opt: torch.optim.Optimizer, seed: int):
    x, y = batch(seed)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


class Tied(nn.Module):
    """Encoder and decoder share one weight (one Parameter, as nn.Module tying does)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.enc = nn.Linear(8, 8)
        self.dec = nn.Linear(8, 8)
        self.dec.weight = self.enc.weight
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.dec(torch.tanh(self.enc(x)))))


# ----- tied and duplicated parameters -----


@pytest.mark.parametrize("base", [torch.optim.AdamW, torch.optim.SGD], ids=["adamw", "sgd"])
def test_parameter_listed_twice_is_perturbed_and_updated_once(base):
    runs = []
    for listing in ("once", "twice"):
        model = Tied()
        ps = list(model.parameters())  # the tied weight once
        if listing == "twice":  # e.g. collected per module by hand
            ps = [model.enc.weight, model.enc.bias, model.dec.weight, model.dec.bias,
                  *model.head.parameters()]
        opt = slsam.SAM(ps, base, rho=0.05, lr=1e-2)
        assert len(opt.arms) == 5
        for i in range(4):
            opt.step(closure_for(model, opt, i))
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs, strict=False):
        assert torch.equal(a, b)


def test_distinct_parameters_sharing_memory_are_refused():
    torch.manual_seed(0)
    lin = nn.Linear(8, 8)
    alias = nn.Parameter(lin.weight.data)  # another Parameter on the same memory
    other = nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[0\].*share memory"):
        slsam.SLSAM([lin.weight, lin.bias, other, alias])
    part = nn.Parameter(lin.weight.data[2:5])  # an overlapping view
    with pytest.raises(ValueError, match="share memory"):
        slsam.SLSAM([{"params": [lin.weight]}, {"params": [part]}])
    assert lin.weight.requires_grad and part.requires_grad
    flat = torch.zeros(20)  # views of one buffer that do not overlap are fine
    a, b = nn.Parameter(flat[:10]), nn.Parameter(flat[10:])
    slsam.SLSAM([a, b], sparsity=0.5)


# ----- a mask the loss cannot use never blocks the run -----


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.used = nn.Linear(8, 2)
        self.unused = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_mask_of_only_unused_tensors_is_drawn_again():
    model = TwoHeads()
    opt = slsam.SLSAM(model.parameters(), sparsity=0.5, seed=0, lr=1e-2)
    unused = [id(p) for p in model.unused.parameters()]
    only_unused = torch.tensor([id(p) in unused for p in opt.arms])
    used_before = [p.detach().clone() for p in model.used.parameters()]
    unused_before = [p.detach().clone() for p in model.unused.parameters()]
    for i in range(6):
        opt._set_mask(only_unused.clone())  # the draw that used to block every step
        opt.step(closure_for(model, opt, i))
        assert not opt.perturbed
    assert any(not torch.equal(p, b) for p, b in zip(model.used.parameters(), used_before, strict=False))
    for p, b in zip(model.unused.parameters(), unused_before, strict=False):
        assert torch.equal(p, b)
    assert opt.skipped_steps == 0


def test_loss_using_no_parameter_still_raises_and_changes_nothing():
    model = TwoHeads()
    opt = slsam.SLSAM(model.parameters(), sparsity=0.5, seed=0, lr=1e-2)
    mask, gen = opt.mask, opt._bandit.generator.get_state()
    x, _ = batch(0)

    def closure() -> torch.Tensor:
        loss = x.sum()  # no parameter at all: the closure's own error
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="does not require grad"):
        opt.step(closure)
    assert torch.equal(opt.mask, mask) and torch.equal(opt._bandit.generator.get_state(), gen)
    assert [p.requires_grad for p in opt.arms] == mask.tolist()


# ----- load_state_dict keeps the constructor's settings -----


def test_load_state_dict_keeps_the_constructors_sparsity_alpha_and_normalize_loss():
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(4)], nn.Linear(8, 2))
    old = slsam.SLSAM(model.parameters(), sparsity=0.2, alpha=1e-3, p_min=1e-3, seed=0)
    for i in range(2):
        old.step(closure_for(model, old, i))
    sd = old.state_dict()
    new = slsam.SLSAM(model.parameters(), sparsity=0.6, alpha=1e-2, p_min=1e-2, seed=1,
                      normalize_loss=True)
    new.load_state_dict(sd)
    assert (new.sparsity, new.alpha, new.p_min, new.normalize_loss) == (0.6, 1e-2, 1e-2, True)
    assert torch.equal(new.probs, old.probs)  # the bandit state is the saved one
    for i in range(3):
        new.step(closure_for(model, new, 10 + i))
    assert abs(float(new.probs.sum()) - 0.6 * len(new.arms)) < 1e-9  # at the new sparsity
    dense = slsam.SAM(model.parameters())
    dense.load_state_dict(sd)  # a sparse checkpoint into a dense optimizer: every arm
    assert bool(dense.mask.all())
    assert all(p.requires_grad for p in model.parameters())


# ----- copies of a model an SLSAM has masked -----


@pytest.mark.parametrize("how", ["deepcopy", "deepcopy_twice", "pickle"])
def test_optimizer_on_a_copied_model_trains_every_arm(how):
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Linear(8, 8) for _ in range(4)], nn.Linear(8, 2))
    frozen = model[0].bias
    frozen.requires_grad_(False)  # frozen by the user before construction: stays frozen
    opt = slsam.SLSAM(model.parameters(), sparsity=0.3, seed=0, lr=1e-2)
    for i in range(3):
        opt.step(closure_for(model, opt, i))
    assert not all(p.requires_grad for p in opt.arms)  # some masked off now
    if how == "pickle":
        copied = pickle.loads(pickle.dumps(model))
    else:
        copied = copy.deepcopy(model)
        if how == "deepcopy_twice":
            copied = copy.deepcopy(copied)
    opt2 = slsam.SLSAM(copied.parameters(), sparsity=0.3, seed=0, lr=1e-2)
    assert len(opt2.arms) == len(opt.arms) == 9
    assert not copied[0].bias.requires_grad
    with opt2.dense():
        assert all(p.requires_grad for p in opt2.arms)
    before = [p.detach().clone() for p in opt2.arms]
    for i in range(30):
        opt2.step(closure_for(copied, opt2, 10 + i))
    assert all(not torch.equal(p.detach(), b) for p, b in zip(opt2.arms, before, strict=False))
