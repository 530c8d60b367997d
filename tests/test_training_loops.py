"""Real training loops: tied and duplicated parameters, masks the loss cannot use,
load_state_dict() against the constructor's settings, copies of a masked model,
gradients left at entry (GAN), fp16 loss scaling with AMP's clipping, memory-format
changes, gradual unfreezing, maximize=True, fp16 parameters, reentrant checkpointing."""

from __future__ import annotations

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import conv_model, conv_steps, loss_closure
from torch import nn

import slsam


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g)
    return x, (x[:, 0] > 0).long()


def closure_for(model: nn.Module, opt: torch.optim.Optimizer, seed: int):
    return loss_closure(model, opt, *batch(seed))  # this file's two-class batch


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


# ----- gradients left at entry (a GAN's generator step) are not the first pass -----


def gan() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8)), nn.Sequential(
        nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))


def disc_closure(gen: nn.Module, disc: nn.Module, z: torch.Tensor, real: torch.Tensor,
                 calls: list[int]):
    def closure() -> torch.Tensor:
        calls.append(1)
        disc.zero_grad()
        loss = (F.softplus(-disc(real)) + F.softplus(disc(gen(z).detach()))).mean()
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("base", [torch.optim.AdamW, torch.optim.SGD], ids=["adamw", "sgd"])
def test_gradients_left_by_another_backward_are_discarded_at_entry(base):
    """G's loss backpropagates through D and leaves gradients on D's tensors; D's
    step(closure) must run its own first pass, as if they were not there."""
    runs = []
    for leftover in (False, True):
        gen, disc = gan()
        d_opt = slsam.SLSAM(disc.parameters(), base, rho=0.05, sparsity=0.5, seed=0, lr=1e-2)
        for i in range(4):
            g = torch.Generator().manual_seed(i)
            z, real = torch.randn(16, 4, generator=g), torch.randn(16, 8, generator=g)
            if leftover:  # the generator's loss, through D (G's optimizer left out)
                (-disc(gen(z)).mean()).backward()
                assert any(p.grad is not None for p in d_opt._set.active)
            calls: list[int] = []
            d_opt.step(disc_closure(gen, disc, z, real, calls))
            assert len(calls) == 2
        runs.append([p.detach().clone() for p in disc.parameters()])
    for a, b in zip(*runs, strict=True):
        assert torch.equal(a, b)


def test_first_pass_done_takes_the_gradients_at_entry():
    """davda54/sam's convention, asked for: the gradients at entry are the first pass."""
    model = TwoHeads()
    opt = slsam.SLSAM(model.used.parameters(), torch.optim.SGD, rho=0.5, sparsity=1.0, lr=0.1)
    ref = copy.deepcopy(model)
    ref_opt = slsam.SLSAM(ref.used.parameters(), torch.optim.SGD, rho=0.5, sparsity=1.0, lr=0.1)
    x, y = batch(0)
    x2, y2 = batch(1)
    F.cross_entropy(model(x2), y2).backward()  # the first pass on another batch
    calls = []

    def closure() -> torch.Tensor:
        calls.append(1)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure, first_pass_done=True)
    assert len(calls) == 1
    F.cross_entropy(ref(x2), y2).backward()
    ref_opt.first_step()
    F.cross_entropy(ref(x), y).backward()
    ref_opt.second_step()
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)
    opt.step(closure, first_pass_done=True)  # no gradient at entry: both passes
    assert len(calls) == 3


# ----- fp16 loss scaling with AMP's clipping pattern (unscale_, then clip) -----


CLIP = 0.05


def amp_run(base, style: str, scaled: bool, steps: int = 4) -> list[torch.Tensor]:
    """SAM with clipping inside the closure; ``scaled``: through a GradScaler, with
    ``unscale_(opt)`` before the clip as AMP documents it. ``style``: clip (and
    unscale) in every pass, in the second pass only, or the two-call style with
    ``scaler.step(opt)``. The loss is small so that AdamW's eps matters."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    lr = 1e-2 if base is torch.optim.AdamW else 100.0  # SGD: a visible step from tiny grads
    opt = slsam.SLSAM(model.parameters(), base, rho=0.05, sparsity=0.5, seed=0, lr=lr)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, growth_interval=1000,
                                  enabled=scaled)

    def pass_(x: torch.Tensor, y: torch.Tensor, clip: bool) -> torch.Tensor:
        loss = F.cross_entropy(model(x), y) * 1e-4
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(opt)  # a no-op when the scaler is disabled
            torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP * 1e-4)
        return loss

    for i in range(steps):
        x, y = batch(i)
        if style == "two_call":
            pass_(x, y, True)
            opt.first_step(scaler=scaler)
            pass_(x, y, True)
            scaler.step(opt)
        else:
            def closure(x=x, y=y) -> torch.Tensor:
                opt.zero_grad()
                return pass_(x, y, style == "every_pass" or opt.perturbed)

            opt.step(closure, scaler=scaler)
        scaler.update()
        assert not opt.perturbed
    assert opt.skipped_steps == 0
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("style", ["every_pass", "second_pass_only", "two_call"])
@pytest.mark.parametrize("base", [torch.optim.AdamW, torch.optim.SGD], ids=["adamw", "sgd"])
def test_amp_unscale_and_clip_in_the_closure_equals_the_unscaled_run(base, style):
    scaled = amp_run(base, style, scaled=True)
    plain = amp_run(base, style, scaled=False)
    start = amp_run(base, style, scaled=False, steps=0)
    moved = max(float((p - p0).abs().max()) for p, p0 in zip(plain, start, strict=True))
    assert moved > 1e-4
    for s, p in zip(scaled, plain, strict=True):
        torch.testing.assert_close(s, p, rtol=0, atol=1e-4 * moved)


def test_amp_private_record_helpers_follow_the_installed_torch():
    """slsam/_amp.py reads and writes GradScaler's private per-optimizer record."""
    from slsam import _amp

    p = nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale(p.sum()).backward()
    assert float(_amp.loss_scale(scaler, opt)) == 4.0
    scaler.unscale_(opt)
    assert _amp.loss_scale(scaler, opt) is None and torch.equal(p.grad, torch.ones(3))
    _amp.allow_second_unscale(scaler, opt)
    p.grad.mul_(4.0)
    scaler.unscale_(opt)  # allowed again
    assert torch.equal(p.grad, torch.ones(3))
    _amp.record_step(scaler, opt, torch.ones((), dtype=torch.bool))
    scaler.update()  # reads the record: a non-finite step halves the scale
    assert scaler.get_scale() == 2.0
    assert _amp.loss_scale(torch.amp.GradScaler("cpu", enabled=False), opt) is None


def test_amp_unscale_in_the_closure_still_skips_a_non_finite_pass_and_backs_off():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    opt = slsam.SAM(model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = batch(0)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss * (float("inf") if opt.perturbed else 1.0)).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        return loss

    opt.step(closure, scaler=scaler)
    scaler.update()
    assert opt.skipped_steps == 1 and scaler.get_scale() == 2.0**15
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)


# ----- memory-layout changes after the state exists -----


def assert_same_run(model: nn.Module, ref: nn.Module) -> None:
    """Equal up to the summation order of the norms, which the memory format changes."""
    for p, r in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("when", ["model_moved_after_steps", "contiguous_checkpoint_resumed"])
def test_channels_last_after_the_state_exists_trains_like_contiguous(when, device):
    ref = conv_model(device)
    ref_opt = slsam.SAM(ref.parameters(), rho=0.05, lr=1e-2)
    conv_steps(ref, ref_opt, range(6))

    model = conv_model(device)
    opt = slsam.SAM(model.parameters(), rho=0.05, lr=1e-2)
    assert opt._update.name == "fused_adamw"
    conv_steps(model, opt, range(3))
    if when == "model_moved_after_steps":
        model.to(memory_format=torch.channels_last)
    else:
        sd = opt.state_dict()
        model_sd = model.state_dict()
        model = conv_model(device).to(memory_format=torch.channels_last)
        model.load_state_dict(model_sd)
        opt = slsam.SAM(model.parameters(), rho=0.05, lr=1e-2)
        opt.load_state_dict(sd)
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    conv_steps(model, opt, range(3, 6))
    assert_same_run(model, ref)
    state = opt.state[model[0].weight]
    assert state["exp_avg"].stride() == model[0].weight.stride()


# ----- the user's requires_grad wins: gradual unfreezing -----


class PlainAdamW(torch.optim.AdamW):
    """AdamW that is not exactly torch.optim.AdamW: SLSAM takes the generic path."""


@pytest.mark.parametrize("base", [torch.optim.AdamW, PlainAdamW, torch.optim.SGD],
                         ids=["fused_adamw", "generic_adamw", "sgd"])
def test_layer_frozen_at_construction_trains_once_unfrozen(base):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    body = model[0]
    body.requires_grad_(False)  # frozen before the optimizer exists
    opt = slsam.SLSAM(model.parameters(), base, rho=0.05, sparsity=0.5, seed=0, lr=1e-2)
    assert len(opt.arms) == 4
    w0 = body.weight.detach().clone()
    for i in range(3):
        opt.step(closure_for(model, opt, i))
    assert torch.equal(body.weight, w0)
    body.requires_grad_(True)  # gradual unfreezing
    for i in range(3, 6):
        before = body.weight.detach().clone()
        opt.step(closure_for(model, opt, i))
        assert not torch.equal(body.weight, before)  # every step, outside the bandit
        assert body.weight.requires_grad
    body.requires_grad_(False)  # frozen again: never updated
    w1 = body.weight.detach().clone()
    for i in range(6, 9):
        opt.step(closure_for(model, opt, i))
    assert torch.equal(body.weight, w1) and body.weight.grad is None


def test_unfrozen_layer_trains_alike_on_the_fused_and_the_generic_path():
    runs = []
    for base in (torch.optim.AdamW, PlainAdamW):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
        model[0].requires_grad_(False)
        opt = slsam.SLSAM(model.parameters(), base, rho=0.05, sparsity=0.5, seed=0, lr=1e-2)
        opt.step(closure_for(model, opt, 0))
        model[0].requires_grad_(True)
        for i in range(1, 5):
            opt.step(closure_for(model, opt, i))
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ----- maximize=True: the perturbation ascends the objective being minimised -----


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("base", [torch.optim.AdamW, torch.optim.SGD], ids=["adamw", "sgd"])
def test_maximizing_the_negated_loss_equals_minimising_the_loss(base, adaptive):
    runs = []
    for maximize in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
        opt = slsam.SLSAM(model.parameters(), base, rho=0.1, sparsity=0.5, seed=0, lr=1e-2,
                          adaptive=adaptive, maximize=maximize)
        sign = -1.0 if maximize else 1.0
        for i in range(4):
            x, y = batch(i)

            def closure(x=x, y=y, sign=sign, opt=opt, model=model) -> torch.Tensor:
                opt.zero_grad()
                loss = sign * F.cross_entropy(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ----- fp16 parameters keep fp32 moments -----


@pytest.mark.parametrize("grad", [1e-2, 1e-3])
def test_fp16_parameters_take_steps_of_lr_with_small_gradients(grad, device):
    """A constant gradient: AdamW's step is lr. In fp16 moments (1 - beta2) * g^2
    underflows and the step grew far beyond lr."""
    p = nn.Parameter(torch.zeros(64, dtype=torch.float16, device=device))
    lr, steps = 1e-4, 300
    opt = slsam.SAM([p], rho=1e-3, lr=lr, weight_decay=0.0)
    assert opt._update.name == "fused_adamw"
    c = torch.full((64,), -grad, dtype=torch.float16, device=device)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (p * c).sum()
        loss.backward()
        return loss

    moves = []
    for _ in range(steps):
        before = p.detach().float().clone()
        opt.step(closure)
        moves.append(float((p.detach().float() - before).mean()))
    late = sum(moves[-100:]) / 100
    assert 0.9 * lr < late < 1.1 * lr, late / lr  # fp16 rounding of x is within 5% here
    assert max(moves) < 1.5 * lr
    assert opt.state[p]["exp_avg_sq"].dtype == torch.float32


def test_fp16_parameters_resume_with_their_fp32_moments():
    """torch's load_state_dict casts the moments to the parameter's dtype; SLSAM keeps
    the saved fp32 moments of fp16 parameters."""
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(16).half())
    opt = slsam.SAM([p], rho=1e-3, lr=1e-3)
    closure = closure_fp16(p, opt)
    for _ in range(3):
        opt.step(closure)
    sd = copy.deepcopy(opt.state_dict())
    q = nn.Parameter(p.detach().clone())
    resumed = slsam.SAM([q], rho=1e-3, lr=1e-3)
    resumed.load_state_dict(sd)
    for key in ("exp_avg", "exp_avg_sq"):
        assert resumed.state[q][key].dtype == torch.float32
        assert torch.equal(resumed.state[q][key], opt.state[p][key])
    opt.step(closure)
    resumed.step(closure_fp16(q, resumed))
    assert torch.equal(p, q)


def closure_fp16(p: torch.Tensor, opt: torch.optim.Optimizer):
    w = torch.linspace(-1e-3, 1e-3, p.numel(), dtype=torch.float16)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = (p * w).sum() + (p.float() ** 2).sum() * 1e-4
        loss.backward()
        return loss

    return closure


# ----- reentrant activation checkpointing: gradless active tensors are reported -----


class Checkpointed(nn.Module):
    def __init__(self, use_reentrant: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.block = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.head = nn.Linear(8, 2)
        self.use_reentrant = use_reentrant

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.utils.checkpoint.checkpoint(self.block, x, use_reentrant=self.use_reentrant)
        return self.head(h)


def slsam_warnings(model: nn.Module, steps: int = 6, two_call: bool = False,
                   passes: int = 2) -> list[str]:
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, rho=0.05, sparsity=1.0, seed=0, passes=passes)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(steps):
            if two_call:
                x, y = batch(i)
                F.cross_entropy(model(x), y).backward()
                opt.first_step()
                F.cross_entropy(model(x), y).backward()
                opt.second_step()
            else:
                opt.step(closure_for(model, opt, i))
    assert not torch.nn.modules.module._global_forward_hooks  # the watch is closed
    return [str(w.message) for w in caught if str(w.message).startswith("SLSAM")]


@pytest.mark.parametrize("two_call, passes", [(False, 2), (True, 2), (False, 1)],
                         ids=["closure", "two_call", "one_pass"])
def test_reentrant_checkpoint_without_grad_input_warns_once(two_call, passes):
    # one-pass: the tensors left gradless by a step's pass are watched in the next one
    found = slsam_warnings(Checkpointed(use_reentrant=True), two_call=two_call, passes=passes)
    assert len(found) == 1
    assert "use_reentrant=False" in found[0] and "2 active tensor(s)" in found[0]


@pytest.mark.parametrize("passes", [2, 1], ids=["two_pass", "one_pass"])
def test_no_warning_for_non_reentrant_checkpoint_or_an_unused_head(passes):
    assert slsam_warnings(Checkpointed(use_reentrant=False), passes=passes) == []
    assert slsam_warnings(TwoHeads(), passes=passes) == []
