"""Mixed precision, torch.compile, gradient accumulation and clipping, BatchNorm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, tiny_mlp

import slsam


def closure_for(model, opt, x, y, scaler=None, micro=1, clip=None):
    def closure():
        opt.zero_grad()
        total = torch.zeros(())
        for xs, ys in zip(x.chunk(micro), y.chunk(micro), strict=False):
            loss = F.cross_entropy(model(xs), ys) / micro
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total = total + loss.detach()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        return total

    return closure


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_close_all(a, b, **kw):
    for x, y in zip(a, b, strict=False):
        torch.testing.assert_close(x, y, **kw)


# ----- mixed precision -----


def test_bf16_autocast_trains():
    model = tiny_mlp()
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, sparsity=0.5, seed=0)
    first = None
    for i in range(30):
        x, y = batch(i % 4)

        def closure(x=x, y=y):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        first = float(loss) if first is None else first
    assert float(loss) < first
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("base", ["adamw", "sgd"])
def test_grad_scaler_equals_unscaled_run(base):
    """A power-of-two loss scale is exact: the scaled run equals the plain one."""
    kind = (torch.optim.AdamW, dict(lr=1e-2)) if base == "adamw" else (torch.optim.SGD, dict(lr=0.1))
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = slsam.SLSAM(m1.parameters(), kind[0], sparsity=0.5, seed=1, **kind[1])
    o2 = slsam.SLSAM(m2.parameters(), kind[0], sparsity=0.5, seed=1, **kind[1])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
    for i in range(5):
        x, y = batch(i)
        o1.step(closure_for(m1, o1, x, y))
        o2.step(closure_for(m2, o2, x, y, scaler=scaler), scaler=scaler)
        scaler.update()
    assert_close_all(params_of(m1), params_of(m2), rtol=1e-5, atol=1e-7)
    assert torch.equal(o1.mask, o2.mask)
    torch.testing.assert_close(o1.probs, o2.probs, rtol=1e-6, atol=0)


def test_grad_scaler_inf_skips_step_and_backs_off():
    model = tiny_mlp()
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, sparsity=0.5, seed=1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x, y = batch(0)
    probs = opt.probs
    before = params_of(model)
    arm = opt.arms[int(opt.mask.nonzero()[0])]

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if opt.perturbed:  # overflow in the second pass only
            arm.grad[0] = float("inf")
        return loss

    opt.step(closure, scaler=scaler)
    scaler.update()
    for a, b in zip(params_of(model), before, strict=False):
        assert torch.equal(a, b)
    assert torch.equal(opt.probs, probs)
    assert opt.skipped_steps == 1
    assert scaler.get_scale() == 2.0**9
    assert all(not s for s in opt.state.values()) or all(
        float(s["step"]) == 0 for s in opt.state.values())


def test_grad_scaler_step_protocol_two_call_style():
    """scaler.step(opt) after first_step(): the optimizer takes grad_scale/found_inf."""
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = slsam.SLSAM(m1.parameters(), lr=1e-2, sparsity=0.5, seed=4)
    o2 = slsam.SLSAM(m2.parameters(), lr=1e-2, sparsity=0.5, seed=4)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for i in range(4):
        x, y = batch(i)
        o1.step(closure_for(m1, o1, x, y))
        scaler.scale(F.cross_entropy(m2(x), y)).backward()
        o2.first_step(scaler=scaler)
        scaler.scale(F.cross_entropy(m2(x), y)).backward()
        scaler.step(o2)
        scaler.update()
        assert not o2.perturbed
    assert_close_all(params_of(m1), params_of(m2), rtol=1e-5, atol=1e-7)


# ----- gradient accumulation and clipping -----


def test_accumulation_in_closure_equals_full_batch():
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = slsam.SLSAM(m1.parameters(), lr=1e-2, sparsity=0.5, seed=2)
    o2 = slsam.SLSAM(m2.parameters(), lr=1e-2, sparsity=0.5, seed=2)
    for i in range(4):
        x, y = batch(i)
        o1.step(closure_for(m1, o1, x, y))
        o2.step(closure_for(m2, o2, x, y, micro=4))
    assert_close_all(params_of(m1), params_of(m2), rtol=1e-4, atol=1e-6)


def test_clipping_in_closure_bounds_the_update():
    model = tiny_mlp()
    lr, max_norm = 0.5, 1e-3
    opt = slsam.SLSAM(model.parameters(), torch.optim.SGD, lr=lr, sparsity=0.5, seed=0)
    before = params_of(model)
    x, y = batch(0)
    opt.step(closure_for(model, opt, x, y, clip=max_norm))
    delta = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(a - b)
                     for a, b in zip(params_of(model), before, strict=False)]))
    assert 0 < float(delta) <= lr * max_norm * (1 + 1e-5)


# ----- BatchNorm -----


def test_running_stats_updated_once_per_step():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.ReLU(), torch.nn.Linear(16, 3))
    twin = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16),
                               torch.nn.ReLU(), torch.nn.Linear(16, 3))
    twin.load_state_dict(model.state_dict())
    opt = slsam.SAM(model.parameters(), lr=1e-2)
    x, y = batch(0)
    twin(x)  # one forward at the unperturbed weights

    def closure():
        opt.zero_grad()
        with slsam.running_stats_frozen(model, enabled=opt.perturbed):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    bn, ref = model[1], twin[1]
    assert torch.equal(bn.running_mean, ref.running_mean)
    assert torch.equal(bn.running_var, ref.running_var)
    assert int(bn.num_batches_tracked) == 1
    assert bn.momentum == 0.1


# ----- torch.compile -----


class CountingBackend:
    def __init__(self):
        self.compiles = 0

    def __call__(self, gm, example_inputs):
        self.compiles += 1
        from torch._dynamo.backends.common import aot_autograd
        from torch._functorch.aot_autograd import make_boxed_func

        return aot_autograd(fw_compiler=lambda g, _: make_boxed_func(g.forward))(gm, example_inputs)


@pytest.mark.parametrize("mask_mode", ["grad", "requires_grad"])
def test_compiled_model_matches_eager(mask_mode):
    torch.compiler.reset()
    steps = 8
    eager, compiled_src = tiny_mlp(), tiny_mlp()
    o1 = slsam.SLSAM(eager.parameters(), lr=1e-2, sparsity=0.3, seed=3, mask_mode=mask_mode)
    o2 = slsam.SLSAM(compiled_src.parameters(), lr=1e-2, sparsity=0.3, seed=3, mask_mode=mask_mode)
    backend = CountingBackend()
    compiled = torch.compile(compiled_src, backend=backend)
    masks = set()
    for i in range(steps):
        x, y = batch(i)
        masks.add(tuple(o2.mask.tolist()))
        o1.step(closure_for(eager, o1, x, y))
        o2.step(closure_for(compiled, o2, x, y))
    assert_close_all(params_of(eager), params_of(compiled_src), rtol=1e-5, atol=1e-6)
    if mask_mode == "grad":
        assert backend.compiles == 1, backend.compiles  # one graph, whatever the mask
    else:  # requires_grad flips are guarded on: at most one graph per distinct mask
        assert 1 <= backend.compiles <= len(masks) + 1


def test_grad_mask_mode_equals_requires_grad_mode_in_eager():
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = slsam.SLSAM(m1.parameters(), lr=1e-2, sparsity=0.3, seed=8)
    o2 = slsam.SLSAM(m2.parameters(), lr=1e-2, sparsity=0.3, seed=8, mask_mode="grad")
    for i in range(6):
        x, y = batch(i)
        o1.step(closure_for(m1, o1, x, y))
        o2.step(closure_for(m2, o2, x, y))
        assert all(p.requires_grad for p in m2.parameters())
        assert all(p.grad is None for p in m2.parameters())
    for a, b in zip(params_of(m1), params_of(m2), strict=False):
        assert torch.equal(a, b)
