"""Behaviour of slsam.SLSAM and slsam.SAM on CPU (docs/design.md, "The API's rules")."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, tiny_mlp

import slsam
from slsam import _marks


def make_closure(model, opt, x, y, zero=True):
    def closure():
        if zero:
            opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def snapshot(model):
    return [p.detach().clone() for p in model.parameters()]


def assert_same(a, b):
    for x, y in zip(a, b, strict=False):
        assert torch.equal(x, y)


def train(model, opt, steps, seed=0):
    for i in range(steps):
        x, y = batch(seed + i)
        opt.step(make_closure(model, opt, x, y))


def test_lr_zero_leaves_weights_bit_identical(data):
    for base, kw in [(torch.optim.AdamW, dict(weight_decay=0.1)), (torch.optim.SGD, {})]:
        model = tiny_mlp()
        before = snapshot(model)
        opt = slsam.SLSAM(model.parameters(), base, rho=0.5, sparsity=0.5, lr=0.0, seed=0, **kw)
        train(model, opt, 5)
        assert_same(snapshot(model), before)


def test_inactive_tensors_untouched_and_gradless():
    model = tiny_mlp(depth=8)
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, sparsity=0.3, seed=1)
    params = list(model.parameters())
    for i in range(10):
        mask = opt.mask.tolist()
        before = snapshot(model)
        state_before = {id(p): copy.deepcopy(opt.state[p]) for p in params}
        x, y = batch(i)
        opt.step(make_closure(model, opt, x, y))
        after = snapshot(model)
        for p, on, b, a in zip(params, mask, before, after, strict=False):
            assert p.grad is None
            if not on:
                assert torch.equal(a, b)
                st = opt.state[p]
                assert st.keys() == state_before[id(p)].keys()
                for key in st:
                    assert torch.equal(st[key], state_before[id(p)][key])
            else:
                assert not torch.equal(a, b)


def test_requires_grad_and_mask_mark_follow_the_mask():
    """After every step each arm requires grad exactly when the mask has it on, and
    carries the masked mark exactly when it does not, also after arms were turned on by
    hand (a careless unfreeze) or inside dense()."""
    model = tiny_mlp(depth=8)
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, sparsity=0.3, seed=3)
    params = list(model.parameters())
    for i in range(8):
        if i % 3 == 1:
            for p in params:
                p.requires_grad_(True)
        if i % 3 == 2:
            with opt.dense():
                pass
        x, y = batch(i)
        opt.step(make_closure(model, opt, x, y))
        for p, on in zip(params, opt.mask.tolist(), strict=True):
            assert p.requires_grad == on
            assert getattr(p, _marks.MASKED, False) == (not on)


def test_active_count_and_probabilities():
    model = tiny_mlp(depth=12)  # 24 arms
    s = 0.25
    opt = slsam.SLSAM(model.parameters(), lr=1e-3, sparsity=s, seed=2)
    n = len(opt.arms)
    counts = []
    for i in range(150):
        counts.append(int(opt.mask.sum()))
        x, y = batch(i)
        opt.step(make_closure(model, opt, x, y))
        p = opt.probs
        assert abs(float(p.sum()) - s * n) <= 1e-9 * n + 1e-8 * n
        assert bool(((p >= 0) & (p <= 1)).all())
    assert min(counts) >= 1
    mean = sum(counts) / len(counts)
    # Bernoulli sums: std of the mean over 150 steps ~ sqrt(s(1-s)n/150) ~ 0.17
    assert abs(mean - s * n) < 1.0, (mean, s * n)


def test_mask_applied_as_requires_grad_before_first_forward():
    model = tiny_mlp()
    opt = slsam.SLSAM(model.parameters(), lr=1e-3, sparsity=0.5, seed=0)
    assert [p.requires_grad for p in model.parameters()] == opt.mask.tolist()
    x, y = batch(0)
    opt.step(make_closure(model, opt, x, y))
    assert [p.requires_grad for p in model.parameters()] == opt.mask.tolist()


def hand_sam(model, x, y, lr, rho):
    """x - lr * grad L(x + rho g / ||g||), by hand."""
    params = list(model.parameters())
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    with torch.no_grad():
        e = [rho * g / (norm + 1e-12) for g in grads]
        for p, ei in zip(params, e, strict=False):
            p.add_(ei)
    loss2 = F.cross_entropy(model(x), y)
    grads2 = torch.autograd.grad(loss2, params)
    with torch.no_grad():
        for p, ei, g2 in zip(params, e, grads2, strict=False):
            p.sub_(ei)
            p.sub_(lr * g2)


@pytest.mark.parametrize("which", ["slsam_dense", "sam"])
def test_dense_case_equals_sam_by_hand(which):
    lr, rho = 0.1, 0.05
    ref = tiny_mlp()
    model = tiny_mlp()
    if which == "sam":
        opt = slsam.SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    else:
        opt = slsam.SLSAM(model.parameters(), torch.optim.SGD, rho=rho, sparsity=1.0, lr=lr)
    for i in range(3):
        x, y = batch(i)
        hand_sam(ref, x, y, lr, rho)
        opt.step(make_closure(model, opt, x, y))
    for a, b in zip(model.parameters(), ref.parameters(), strict=False):
        # by hand: x + e - e; the optimizer restores x exactly, so ~1 ulp apart
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_sam_class_equals_slsam_sparsity_one():
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = slsam.SAM(m1.parameters(), rho=0.05, lr=1e-2)
    o2 = slsam.SLSAM(m2.parameters(), rho=0.05, sparsity=1.0, lr=1e-2)
    train(m1, o1, 4)
    train(m2, o2, 4)
    assert_same(snapshot(m1), snapshot(m2))


def test_two_call_style_is_bit_identical_to_closure():
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = slsam.SLSAM(m1.parameters(), lr=1e-2, sparsity=0.5, seed=5)
    o2 = slsam.SLSAM(m2.parameters(), lr=1e-2, sparsity=0.5, seed=5)
    for i in range(6):
        x, y = batch(i)
        o1.step(make_closure(m1, o1, x, y))
        F.cross_entropy(m2(x), y).backward()
        o2.first_step(zero_grad=True)
        F.cross_entropy(m2(x), y).backward()
        o2.second_step(zero_grad=True)
    assert_same(snapshot(m1), snapshot(m2))
    assert torch.equal(o1.probs, o2.probs)


@pytest.mark.parametrize("zero_in_closure", [True, False])
def test_first_backward_before_step_is_taken_as_first_pass(zero_in_closure):
    """davda54/sam style: loss.backward(); opt.step(closure, first_pass_done=True) — the
    closure runs once."""
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = slsam.SLSAM(m1.parameters(), lr=1e-2, sparsity=0.5, seed=5)
    o2 = slsam.SLSAM(m2.parameters(), lr=1e-2, sparsity=0.5, seed=5)
    for i in range(5):
        x, y = batch(i)
        o1.step(make_closure(m1, o1, x, y))
        calls = []
        closure = make_closure(m2, o2, x, y, zero=zero_in_closure)
        F.cross_entropy(m2(x), y).backward()
        o2.step(lambda c=closure, calls=calls: calls.append(1) or c(), first_pass_done=True)
        assert len(calls) == 1
    assert_same(snapshot(m1), snapshot(m2))


def test_closure_without_zero_grad_matches():
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = slsam.SLSAM(m1.parameters(), lr=1e-2, sparsity=0.5, seed=7)
    o2 = slsam.SLSAM(m2.parameters(), lr=1e-2, sparsity=0.5, seed=7)
    for i in range(5):
        x, y = batch(i)
        o1.step(make_closure(m1, o1, x, y))
        o2.step(make_closure(m2, o2, x, y, zero=False))
    assert_same(snapshot(m1), snapshot(m2))


def test_cancel_step_restores_weights_and_forgets_the_pass(data):
    x, y = data
    model = tiny_mlp()
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, rho=0.5, sparsity=0.5, seed=0)
    opt.cancel_step()  # nothing pending: nothing happens
    before = snapshot(model)
    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    assert opt.perturbed and any(not torch.equal(a, b) for a, b in zip(before, snapshot(model),
                                                                     strict=True))
    F.cross_entropy(model(x), y).backward()
    opt.cancel_step()
    assert not opt.perturbed
    assert_same(snapshot(model), before)
    assert all(p.grad is None for p in model.parameters())
    opt.step(make_closure(model, opt, x, y))  # the next step runs as usual
    assert opt.state


def test_fused_adamw_equals_generic_path():
    class PlainAdamW(torch.optim.AdamW):  # not exactly AdamW: takes the generic path
        pass

    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = slsam.SLSAM(m1.parameters(), lr=1e-2, weight_decay=0.05, sparsity=0.5, seed=3)
    o2 = slsam.SLSAM(m2.parameters(), PlainAdamW, lr=1e-2, weight_decay=0.05, sparsity=0.5,
                     seed=3)
    assert o1._update.name == "fused_adamw" and o2._update.name == "generic"
    train(m1, o1, 8)
    train(m2, o2, 8)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=False):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for p1, p2 in zip(m1.parameters(), m2.parameters(), strict=False):
        if o1.state[p1]:
            assert float(o1.state[p1]["step"]) == float(o2.state[p2]["step"])


def test_resume_from_state_dict_is_bit_identical():
    model = tiny_mlp()
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, sparsity=0.4, seed=11, weight_decay=0.01)
    train(model, opt, 4)
    ckpt_model = copy.deepcopy(model.state_dict())
    ckpt_opt = copy.deepcopy(opt.state_dict())
    train(model, opt, 5, seed=4)

    resumed = tiny_mlp(seed=123)
    resumed.load_state_dict(ckpt_model)
    opt2 = slsam.SLSAM(resumed.parameters(), lr=1e-2, sparsity=0.4, seed=999, weight_decay=0.01)
    opt2.load_state_dict(ckpt_opt)
    train(resumed, opt2, 5, seed=4)
    assert_same(snapshot(model), snapshot(resumed))
    assert torch.equal(opt.probs, opt2.probs) and torch.equal(opt.mask, opt2.mask)


def test_resume_through_torch_save(tmp_path):
    model = tiny_mlp()
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, sparsity=0.4, seed=1)
    train(model, opt, 3)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    m2 = tiny_mlp(seed=9)
    m2.load_state_dict(ck["model"])
    o2 = slsam.SLSAM(m2.parameters(), lr=1e-2, sparsity=0.4, seed=2)
    o2.load_state_dict(ck["opt"])
    train(model, opt, 3, seed=3)
    train(m2, o2, 3, seed=3)
    assert_same(snapshot(model), snapshot(m2))


def test_frozen_parameters_stay_frozen_and_are_not_arms():
    model = tiny_mlp()
    frozen = list(model.parameters())[:2]
    for p in frozen:
        p.requires_grad_(False)
    before = [p.clone() for p in frozen]
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, sparsity=0.5, seed=0)
    assert len(opt.arms) == len(list(model.parameters())) - 2
    assert all(all(p is not a for a in opt.arms) for p in frozen)
    train(model, opt, 5)
    with opt.dense():
        assert all(not p.requires_grad for p in frozen)
    for p, b in zip(frozen, before, strict=False):
        assert not p.requires_grad and torch.equal(p, b)


def test_always_active_group():
    model = tiny_mlp(depth=6)
    params = list(model.parameters())
    head = params[-2:]
    opt = slsam.SLSAM([{"params": params[:-2]}, {"params": head, "always_active": True}],
                      lr=1e-2, sparsity=0.2, seed=0)
    assert len(opt.arms) == len(params) - 2
    for i in range(6):
        before = [p.clone() for p in head]
        assert all(p.requires_grad for p in head)
        x, y = batch(i)
        opt.step(make_closure(model, opt, x, y))
        assert all(not torch.equal(p, b) for p, b in zip(head, before, strict=False))


def test_dense_context_manager():
    model = tiny_mlp()
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, sparsity=0.3, seed=0)
    mask = opt.mask.tolist()
    with opt.dense():
        assert all(p.requires_grad for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == mask


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(rho=-1.0), "rho"),
        (dict(sparsity=0.0), "sparsity"),
        (dict(sparsity=1.5), "sparsity"),
        (dict(sparsity=float("nan")), "sparsity"),
        (dict(alpha=-1e-3), "alpha"),
        (dict(p_min=-1e-3), "p_min"),
        (dict(rho=float("nan")), "rho"),
    ],
)
def test_invalid_arguments_raise_value_error(kwargs, name):
    model = tiny_mlp()
    before = [p.requires_grad for p in model.parameters()]
    with pytest.raises(ValueError, match=name):
        slsam.SLSAM(model.parameters(), **kwargs)
    assert [p.requires_grad for p in model.parameters()] == before


def test_base_optimizer_instance_is_refused():
    model = tiny_mlp()
    with pytest.raises(TypeError, match="base_optimizer"):
        slsam.SLSAM(model.parameters(), torch.optim.AdamW(model.parameters()))


def test_profiler_shows_slsam_ops():
    model = tiny_mlp()
    opt = slsam.SLSAM(model.parameters(), lr=1e-2, sparsity=0.5, seed=0)
    x, y = batch(0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step(make_closure(model, opt, x, y))
    names = {e.key for e in prof.key_averages()}
    for op in ("slsam::grad_norms", "slsam::perturb_", "slsam::restore_adamw_",
               "slsam::bandit_update_", "slsam::sample_mask"):
        assert op in names, f"{op} not in profile"


def test_lr_scheduler_drives_the_step():
    model = tiny_mlp()
    opt = slsam.SLSAM(model.parameters(), lr=1.0, sparsity=0.5, seed=0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    train(model, opt, 1)
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.5
    assert opt.param_groups[0]["lr"] == 0.5
