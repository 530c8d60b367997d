"""Faults and bad input never corrupt the weights (README, "Guarantees").

Non-finite gradients in either pass, exceptions inside the closure, misuse of the
API and inputs the kernels refuse: after each, the weights, the base optimizer's
state and the bandit are exactly as before, and the optimizer can go on. Also the
inputs it must handle (unused parameters, empty, channels_last, mixed dtypes, one
tensor, 10,000 tensors).
"""

from __future__ import annotations

import copy
import signal
import time
import types

import pytest
import torch
import torch.nn.functional as F
from conftest import batch, tiny_mlp

import slsam

# ----- helpers -----


def snapshot(model_or_params):
    ps = model_or_params.parameters() if isinstance(model_or_params, torch.nn.Module) else model_or_params
    return [p.detach().clone() for p in ps]


def assert_same(a, b):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        assert x.dtype == y.dtype and x.shape == y.shape, i
        assert torch.equal(x, y), f"tensor {i} changed"


def state_copy(opt):
    return {id(p): copy.deepcopy(opt.state[p]) for g in opt.param_groups for p in g["params"]
            if p in opt.state}


def assert_state_unchanged(opt, before):
    """The base optimizer's state is as it was. The fused AdamW path may have created
    zero state (step 0, zero moments) for a tensor that had none, which is what AdamW
    starts from: equal as far as any later step can tell."""
    for g in opt.param_groups:
        for p in g["params"]:
            now = opt.state.get(p, {}) if p in opt.state else {}
            was = before.get(id(p), {})
            if not was:
                for key, v in now.items():
                    assert float(v.abs().max()) == 0.0 if v.numel() else True, key
                continue
            assert now.keys() == was.keys()
            for key in was:
                a, b = now[key], was[key]
                if isinstance(a, torch.Tensor):
                    assert torch.equal(a, b), f"state {key} changed"
                else:
                    assert a == b, key


def make_closure(model, opt, x, y, zero=True, hook=None):
    """A closure of PyTorch's convention; ``hook(call_index)`` runs after each backward."""
    calls = [0]

    def closure():
        calls[0] += 1
        if zero:
            opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if hook is not None:
            hook(calls[0])
        return loss

    closure.calls = calls
    return closure


def warm_up(model, opt, steps=4):
    for i in range(steps):
        x, y = batch(100 + i)
        opt.step(make_closure(model, opt, x, y))


BASES = {
    "adamw_fused": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05)),
    "sgd_momentum": (torch.optim.SGD, dict(lr=1e-1, momentum=0.9, weight_decay=1e-3)),
}


def make_opt(base="adamw_fused", sparsity=0.5, always_active=False, seed=0, depth=4, **kw):
    model = tiny_mlp(depth=depth)
    cls, base_kw = BASES[base]
    params = list(model.parameters())
    if always_active:
        groups = [{"params": params[:-2]}, {"params": params[-2:], "always_active": True}]
    else:
        groups = params
    opt = slsam.SLSAM(groups, cls, sparsity=sparsity, seed=seed, **base_kw, **kw)
    assert opt._fused == (base == "adamw_fused")
    return model, opt


class Frozen:
    """Everything a fault must leave alone."""

    def __init__(self, model, opt):
        self.model, self.opt = model, opt
        self.weights = snapshot(model)
        self.state = state_copy(opt)
        self.probs = opt.probs
        self.skipped = opt.skipped_steps

    def check(self, skipped_more=0):
        assert_same(snapshot(self.model), self.weights)
        assert_state_unchanged(self.opt, self.state)
        assert torch.equal(self.opt.probs, self.probs), "bandit probabilities changed"
        assert self.opt.skipped_steps == self.skipped + skipped_more
        assert not self.opt.perturbed
        assert all(p.grad is None for p in self.model.parameters())


# ----- non-finite gradients -----


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["first", "second", "both"])
@pytest.mark.parametrize("which", ["arm", "always_active"])
@pytest.mark.parametrize("base", list(BASES))
def test_nonfinite_gradient_skips_step(base, which, where, value):
    model, opt = make_opt(base, always_active=True)
    warm_up(model, opt)
    frozen = Frozen(model, opt)
    if which == "arm":
        target = opt._active_arms[0]
    else:
        target = opt._always[0]
    passes = {"first": {1}, "second": {2}, "both": {1, 2}}[where]

    def inject(call):
        if call in passes:
            target.grad.view(-1)[0] = value  # one element of one tensor

    x, y = batch(0)
    closure = make_closure(model, opt, x, y, hook=inject)
    opt.step(closure)
    assert closure.calls[0] == 2
    frozen.check(skipped_more=1)
    # and the optimizer goes on
    before = snapshot(model)
    x, y = batch(1)
    opt.step(make_closure(model, opt, x, y))
    assert opt.skipped_steps == frozen.skipped + 1
    assert any(not torch.equal(a, b) for a, b in zip(snapshot(model), before, strict=False))


@pytest.mark.parametrize("base", list(BASES))
def test_nan_loss_skips_step_in_two_call_style(base):
    model, opt = make_opt(base)
    warm_up(model, opt)
    frozen = Frozen(model, opt)
    x, y = batch(0)
    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    (F.cross_entropy(model(x), y) * float("nan")).backward()  # NaN in the second pass only
    opt.second_step()
    frozen.check(skipped_more=1)


def test_generic_path_does_not_call_base_step_on_skip():
    calls = []

    class CountingSGD(torch.optim.SGD):
        def step(self, closure=None):
            calls.append(1)
            return super().step(closure)

    model = tiny_mlp()
    opt = slsam.SLSAM(model.parameters(), CountingSGD, lr=0.1, momentum=0.9, sparsity=0.5, seed=0)
    x, y = batch(0)
    opt.step(make_closure(model, opt, x, y))
    assert len(calls) == 1
    opt.step(make_closure(model, opt, x, y, hook=lambda c: opt._active[0].grad.fill_(float("nan"))))
    assert len(calls) == 1 and opt.skipped_steps == 1


def test_overflowing_norm_with_adaptive_skips_instead_of_nan_probs():
    """Found by this suite: with adaptive=True the skip decision used only the weighted
    norm |x|*g; a finite gradient whose squares overflow fp32 (|g| > ~1.8e19) gave an inf
    plain norm, which reached the bandit and turned the probabilities into NaN."""
    lin = torch.nn.Linear(3, 3)
    ps = list(lin.parameters())
    opt = slsam.SLSAM(ps, torch.optim.SGD, lr=0.1, sparsity=0.5, adaptive=True, seed=0)
    opt._set_mask(torch.ones(2, dtype=torch.bool))
    with torch.no_grad():
        ps[0].zero_()  # |x| * g = 0: the adaptive norm stays finite
    ps[0].grad = torch.full_like(ps[0], 1e20)
    ps[1].grad = torch.ones_like(ps[1])
    frozen = Frozen(lin, opt)

    def second():
        for p in ps:
            p.grad = torch.ones_like(p)
        return torch.zeros(())

    opt.step(second, first_pass_done=True)
    frozen.check(skipped_more=1)
    assert bool(torch.isfinite(opt.probs).all())


def _alarm(seconds):
    def handler(signum, frame):
        raise TimeoutError("the optimizer hung")

    signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)


@pytest.mark.parametrize("bad", [float("nan"), 0.0], ids=["nan", "zero"])
def test_corrupted_probabilities_never_hang_the_sampler(bad):
    """ops.sample_mask gives up after 1000 empty draws and takes the argmax: through the
    optimizer, a corrupted bandit still steps (on one arm) instead of looping forever."""
    model, opt = make_opt("adamw_fused", depth=6)
    opt._probs.fill_(bad)
    _alarm(60)
    try:
        for i in range(3):
            x, y = batch(i)
            opt.step(make_closure(model, opt, x, y))
            assert int(opt.mask.sum()) >= 1
            assert [p.requires_grad for p in opt.arms] == opt.mask.tolist()
    finally:
        signal.alarm(0)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("bad", [float("nan"), 0.0, 1.5, -0.1])
def test_load_state_dict_refuses_corrupted_bandit_state(bad):
    model, opt = make_opt("adamw_fused")
    warm_up(model, opt, 2)
    sd = opt.state_dict()
    sd["slsam"]["probs"] = sd["slsam"]["probs"].clone()
    sd["slsam"]["probs"][0] = bad
    frozen = Frozen(model, opt)
    with pytest.raises(ValueError, match="corrupted"):
        opt.load_state_dict(sd)
    frozen.check()


# ----- exceptions inside the closure -----


class Boom(RuntimeError):
    pass


def faulty_closure(model, opt, x, y, fault):
    calls = [0]

    def closure():
        calls[0] += 1
        opt.zero_grad()
        if fault == "second_forward" and calls[0] == 2:
            raise Boom("in the second forward")
        if fault == "first_forward" and calls[0] == 1:
            raise Boom("in the first forward")
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if fault == "after_first_backward" and calls[0] == 1:
            raise Boom("after the first backward")
        if fault == "after_second_backward" and calls[0] == 2:
            raise Boom("after the second backward")
        return loss

    return closure


def run_with_fault(fault, base="adamw_fused", batches=(0, 1, 2, 3, 4), fail_batch=2):
    """Train over ``batches``; at ``fail_batch`` the closure raises as ``fault`` says, the
    exception is caught and that batch dropped."""
    model, opt = make_opt(base, always_active=True)
    for i in batches:
        x, y = batch(i)
        if i != fail_batch or fault is None:
            opt.step(make_closure(model, opt, x, y))
            continue
        frozen = Frozen(model, opt)
        with pytest.raises(Boom):
            opt.step(faulty_closure(model, opt, x, y, fault))
        frozen.check()
    return snapshot(model), opt.probs


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("fault", ["first_forward", "after_first_backward", "second_forward",
                                   "after_second_backward"])
def test_closure_exception_restores_and_training_goes_on(fault, base):
    """The weights are back at the unperturbed point before the exception propagates, and a
    run that dropped the failing batch equals a run that never saw it, bit for bit."""
    got_w, got_p = run_with_fault(fault, base)
    ref_w, ref_p = run_with_fault(None, base, batches=(0, 1, 3, 4))
    assert_same(got_w, ref_w)
    assert torch.equal(got_p, ref_p)


def test_keyboard_interrupt_in_second_pass_restores():
    model, opt = make_opt("adamw_fused")
    warm_up(model, opt, 2)
    frozen = Frozen(model, opt)
    x, y = batch(0)

    def hook(call):
        if call == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        opt.step(make_closure(model, opt, x, y, hook=hook))
    frozen.check()


@pytest.mark.parametrize("base", list(BASES))
def test_two_call_style_recovery_after_own_second_pass_fails(base):
    """Two-call style: the user's own second forward raises between first_step() and
    second_step(). zero_grad() + second_step() restores x exactly and updates nothing
    (no gradients); only the bandit learns from the (valid) first pass."""
    model, opt = make_opt(base)
    warm_up(model, opt, 2)
    frozen = Frozen(model, opt)
    x, y = batch(0)
    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    assert opt.perturbed
    assert any(not torch.equal(a, b) for a, b in zip(snapshot(model), frozen.weights, strict=False))
    opt.zero_grad()
    opt.second_step()
    assert_same(snapshot(model), frozen.weights)
    assert_state_unchanged(opt, frozen.state)


# ----- misuse -----


def test_second_step_before_first_step():
    model, opt = make_opt()
    frozen = Frozen(model, opt)
    with pytest.raises(RuntimeError, match="call first_step"):
        opt.second_step()
    frozen.check()


def test_step_without_closure():
    model, opt = make_opt()
    frozen = Frozen(model, opt)
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
    frozen.check()


@pytest.mark.parametrize("ret", [None, 1.0, "loss"], ids=["none", "float", "str"])
@pytest.mark.parametrize("when", [1, 2])
def test_closure_returning_non_tensor(ret, when):
    model, opt = make_opt("sgd_momentum")
    warm_up(model, opt, 2)
    frozen = Frozen(model, opt)
    x, y = batch(0)
    good = make_closure(model, opt, x, y)
    calls = [0]

    def closure():
        calls[0] += 1
        loss = good()
        return ret if calls[0] == when else loss

    with pytest.raises(TypeError, match="return loss"):
        opt.step(closure)
    frozen.check()
    opt.step(make_closure(model, opt, x, y))  # goes on


def test_first_step_twice():
    model, opt = make_opt()
    x, y = batch(0)
    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    perturbed = snapshot(model)
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match="call second_step"):
        opt.first_step()
    assert_same(snapshot(model), perturbed)  # the failing call moved nothing
    with pytest.raises(RuntimeError, match="second_step"):
        opt.step(make_closure(model, opt, x, y))
    assert_same(snapshot(model), perturbed)
    opt.second_step()  # the step completes normally
    assert not opt.perturbed


@pytest.mark.parametrize(
    "kwargs, name",
    [(dict(rho=float("inf")), "rho"), (dict(alpha=float("inf")), "alpha"),
     (dict(sparsity=float("inf")), "sparsity"), (dict(rho=-float("inf")), "rho")],
)
def test_infinite_hyperparameters_refused(kwargs, name):
    with pytest.raises(ValueError, match=name):
        slsam.SLSAM(tiny_mlp().parameters(), **kwargs)


# ----- inputs refused with a clear error -----


class EmbedModel(torch.nn.Module):
    def __init__(self, sparse):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(20, 8, sparse=sparse)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, idx):
        return self.head(self.emb(idx).mean(1))


def test_sparse_embedding_gradient_refused():
    model = EmbedModel(sparse=True)
    opt = slsam.SLSAM(model.parameters(), torch.optim.SGD, lr=0.1, sparsity=1.0)
    frozen = Frozen(model, opt)
    idx = torch.randint(0, 20, (4, 5), generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(idx), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match=r"sparse.*Embedding\(sparse=False\)"):
        opt.step(closure)
    frozen.check()


def test_sparse_gradient_in_second_pass_restores():
    model = EmbedModel(sparse=False)
    opt = slsam.SLSAM(model.parameters(), torch.optim.SGD, lr=0.1, sparsity=1.0)
    frozen = Frozen(model, opt)
    idx = torch.randint(0, 20, (4, 5), generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0])
    F.cross_entropy(model(idx), y).backward()
    opt.first_step()
    F.cross_entropy(model(idx), y).backward()
    model.emb.weight.grad = model.emb.weight.grad.to_sparse()
    with pytest.raises(ValueError, match="sparse"):
        opt.second_step()
    frozen.check()


def test_complex_parameters_refused_at_construction():
    real = torch.nn.Parameter(torch.randn(3))
    cplx = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"complex64.*requires_grad_\(False\)"):
        slsam.SLSAM([real, cplx], lr=0.1)
    assert real.requires_grad and cplx.requires_grad


def test_parameters_on_several_devices_refused():
    """Only a CPU here: the device check is exercised with the 'meta' device."""
    a = torch.nn.Parameter(torch.randn(3))
    b = torch.nn.Parameter(torch.empty(3, device="meta"))
    with pytest.raises(ValueError, match="several devices"):
        slsam.SLSAM([a, b], lr=0.1)
    with pytest.raises(ValueError, match="meta device"):
        slsam.SLSAM([b], lr=0.1)
    assert a.requires_grad and b.requires_grad


def test_gradient_on_another_device_refused():
    """torch itself refuses ``p.grad = <tensor on another device>`` (and the .data
    trick), so the optimizer's own check is reached only through a stub device type;
    the kernels check devices too (``check_like``)."""
    p = torch.nn.Parameter(torch.randn(5))
    with pytest.raises(RuntimeError, match="device"):
        p.grad = torch.randn(5, device="meta")
    opt = slsam.SLSAM([p], lr=0.1, sparsity=1.0)
    stub = types.SimpleNamespace(grad=torch.randn(5, device="meta"), dtype=p.dtype, shape=p.shape)
    with pytest.raises(ValueError, match="one device"):
        opt._check_grads([stub])


@pytest.mark.parametrize("bad", ["shape", "dtype"])
@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("when", ["first", "second"])
def test_gradient_unlike_its_parameter_refused(bad, base, when):
    """``p.grad = t`` checks shape and dtype, ``p.grad.data = t`` does not. The refusal
    comes before anything is written, also when the bad tensor is in the last group (the
    kernels would otherwise refuse it after perturbing the earlier groups)."""
    model, opt = make_opt(base, sparsity=1.0, always_active=True)
    warm_up(model, opt, 2)
    frozen = Frozen(model, opt)
    x, y = batch(0)
    target = list(model.parameters())[-1]  # in the last (always-active) group

    def spoil():
        if bad == "shape":
            target.grad.data = torch.randn(target.numel() + 1)
        else:
            target.grad.data = target.grad.data.double()

    F.cross_entropy(model(x), y).backward()
    if when == "first":
        spoil()
        with pytest.raises(ValueError, match=f"{bad}.*must match their parameters"):
            opt.first_step()
        opt.zero_grad()
    else:
        opt.first_step()
        F.cross_entropy(model(x), y).backward()
        spoil()
        with pytest.raises(ValueError, match=f"{bad}.*must match their parameters"):
            opt.second_step()
    frozen.check()


def test_non_dense_parameter_in_a_later_group_rolls_back():
    """A kernel refusal in group 2 must undo group 1's perturbation."""
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 4))
    view = torch.nn.Parameter(torch.randn(4, 8)[:, ::2])  # non-dense storage
    assert not view.is_contiguous()
    opt = slsam.SLSAM([{"params": [a]}, {"params": [view]}], lr=0.1, sparsity=1.0)
    before = snapshot([a, view])
    (a.sum() + view.square().sum()).backward()
    with pytest.raises(RuntimeError, match="not dense"):
        opt.first_step()
    assert_same(snapshot([a, view]), before)
    assert not opt.perturbed


def test_grad_dtype_override_refused():
    """torch >= 2.10 lets a bf16 parameter accept fp32 gradients (``p.grad_dtype``); the
    kernels need the parameter's dtype."""
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.bfloat16))
    if not hasattr(p, "grad_dtype"):
        pytest.skip("no grad_dtype in this torch")
    p.grad_dtype = torch.float32
    opt = slsam.SLSAM([p], lr=0.1, sparsity=1.0)
    before = p.detach().clone()
    p.grad = torch.randn(5)
    with pytest.raises(ValueError, match="dtype"):
        opt.step(lambda: torch.zeros(()), first_pass_done=True)
    assert torch.equal(p, before)


# ----- inputs that must work -----


class Unused(torch.nn.Module):
    """``b`` is used in no pass, ``c`` only in the first (unperturbed) pass."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Linear(8, 3)
        self.b = torch.nn.Linear(8, 3)
        self.c = torch.nn.Linear(8, 3)
        self.perturbed = lambda: False

    def forward(self, x):
        out = self.a(x)
        return out if self.perturbed() else out + 0.1 * self.c(x)


@pytest.mark.parametrize("base", list(BASES))
def test_active_tensor_without_gradient(base):
    model = Unused()
    cls, kw = BASES[base]
    opt = slsam.SLSAM(model.parameters(), cls, sparsity=1.0, **kw)
    model.perturbed = lambda: opt.perturbed
    b0, c0, a0 = snapshot(model.b), snapshot(model.c), snapshot(model.a)
    for i in range(3):
        x, y = batch(i)
        opt.step(make_closure(model, opt, x, y))
    assert_same(snapshot(model.b), b0)
    # c has a first-pass gradient (so it is perturbed) but none in the second: restored
    # exactly, never updated
    assert_same(snapshot(model.c), c0)
    assert all(not torch.equal(p, q) for p, q in zip(snapshot(model.a), a0, strict=False))
    for p in [*model.b.parameters(), *model.c.parameters()]:
        assert not opt.state.get(p) or float(opt.state[p].get("step", torch.zeros(()))) == 0


@pytest.mark.parametrize("base", list(BASES))
def test_empty_parameters(base):
    model = tiny_mlp()
    empties = [torch.nn.Parameter(torch.empty(0)), torch.nn.Parameter(torch.empty(3, 0))]
    cls, kw = BASES[base]
    params = list(model.parameters())
    opt = slsam.SLSAM([{"params": params + empties[:1]},
                       {"params": empties[1:], "always_active": True}], cls, sparsity=0.5,
                      seed=0, **kw)
    for i in range(6):
        x, y = batch(i)

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y) + sum(e.sum() for e in empties if e.requires_grad)
            loss.backward()
            return loss

        opt.step(closure)
    assert opt.skipped_steps == 0
    assert all(e.shape in ((0,), (3, 0)) for e in empties)
    assert all(bool(torch.isfinite(p).all()) for p in params)


def conv_net(channels_last):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 3))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


@pytest.mark.parametrize("base", list(BASES))
def test_channels_last_conv_parameters(base):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 8, 8, generator=g)
    y = torch.randint(0, 3, (6,), generator=g)
    results = []
    for cl in (False, True):
        net = conv_net(cl)
        cls, kw = BASES[base]
        opt = slsam.SLSAM(net.parameters(), cls, sparsity=1.0, rho=0.05, **kw)
        xin = x.to(memory_format=torch.channels_last) if cl else x
        for _ in range(3):
            opt.step(make_closure(net, opt, xin, y))
        if cl:
            w = net[0].weight
            assert w.is_contiguous(memory_format=torch.channels_last)
            for v in opt.state[w].values():
                if isinstance(v, torch.Tensor) and v.dim() == 4:
                    assert v.is_contiguous(memory_format=torch.channels_last)
        results.append(snapshot(net))
    for a, b in zip(*results, strict=False):  # the conv backward may round differently per layout
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class MixedNet(torch.nn.Module):
    def __init__(self, dtypes=(torch.float32, torch.bfloat16, torch.float16)):
        super().__init__()
        torch.manual_seed(0)
        self.dtypes = dtypes
        self.l1 = torch.nn.Linear(8, 16).to(dtypes[0])
        self.l2 = torch.nn.Linear(16, 16).to(dtypes[1])
        self.l3 = torch.nn.Linear(16, 3).to(dtypes[2])

    def forward(self, x):
        h = torch.tanh(self.l1(x.to(self.dtypes[0])))
        h = torch.tanh(self.l2(h.to(self.dtypes[1])))
        return self.l3(h.to(self.dtypes[2])).float()


def test_mixed_precision_parameter_list():
    """fp32, bf16 and fp16 tensors in one list: the fused AdamW kernel dispatches per
    tensor and computes in fp32. (torch's own AdamW on fp16 tensors overflows on this
    model -- eps = 1e-8 rounds to 0 in fp16 -- so the comparison with the generic path is
    on fp32 + bf16; the fp16 tensors are checked for a finite, moving update.)"""

    class PlainAdamW(torch.optim.AdamW):
        pass

    net = MixedNet()
    opt = slsam.SLSAM(net.parameters(), lr=1e-2, sparsity=1.0)
    before = snapshot(net)
    for i in range(5):
        x, y = batch(i)
        opt.step(make_closure(net, opt, x, y))
    assert opt.skipped_steps == 0
    for p, b in zip(net.parameters(), before, strict=False):
        # fp16 tensors keep fp32 moments (tests/test_training_loops.py says why)
        want = torch.float32 if p.dtype == torch.float16 else p.dtype
        assert opt.state[p]["exp_avg"].dtype == want
        assert bool(torch.isfinite(p).all()) and not torch.equal(p, b)

    dts = (torch.float32, torch.bfloat16, torch.bfloat16)
    outs = []
    for cls in (torch.optim.AdamW, PlainAdamW):
        net = MixedNet(dts)
        opt = slsam.SLSAM(net.parameters(), cls, lr=1e-2, sparsity=1.0, foreach=False)
        x, y = batch(0)  # one step: later steps would compare chaotic trajectories
        opt.step(make_closure(net, opt, x, y))
        assert opt.skipped_steps == 0
        outs.append(list(net.parameters()))
    for a, b in zip(*outs, strict=False):
        # torch's AdamW rounds every intermediate to the tensor's dtype, the kernel once:
        # a few ulp of the largest weight
        ulp = torch.finfo(a.dtype).eps * float(b.detach().abs().max())
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=4 * ulp)


def test_mixed_precision_sparse_sgd_runs():
    net = MixedNet()
    before = snapshot(net)
    opt = slsam.SLSAM(net.parameters(), torch.optim.SGD, lr=0.0, momentum=0.9, sparsity=0.5, seed=1)
    for i in range(5):
        x, y = batch(i)
        opt.step(make_closure(net, opt, x, y))
    assert_same(snapshot(net), before)  # lr = 0: exact restore in every dtype


def test_single_tensor():
    w = torch.nn.Parameter(torch.randn(8, 3, generator=torch.Generator().manual_seed(0)))
    opt = slsam.SLSAM([w], lr=1e-2, sparsity=0.2, seed=0)
    x, y = batch(0)
    for _ in range(5):
        assert opt.mask.tolist() == [True]  # never empty: the one arm is always drawn
        before = w.detach().clone()

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(x @ w, y)
            loss.backward()
            return loss

        opt.step(closure)
        assert not torch.equal(w, before)
        assert float(opt.probs[0]) == pytest.approx(0.2, abs=1e-12)


def test_ten_thousand_tensors():
    n = 10_000
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(2, generator=g)) for _ in range(n)]
    targets = torch.randn(n * 2, generator=g)
    opt = slsam.SLSAM(params, torch.optim.AdamW, lr=1e-2, sparsity=0.2, seed=0)

    def closure():
        loss = (torch.cat([p.view(-1) for p in params]) - targets).square().sum()
        loss.backward()
        return loss

    t0 = time.perf_counter()
    for _ in range(3):
        mask = opt.mask
        before = snapshot(params)
        opt.step(closure)
        after = snapshot(params)
        for on, a, b in zip(mask.tolist(), after, before, strict=False):
            assert torch.equal(a, b) != on
        assert abs(float(opt.probs.sum()) - 0.2 * n) <= 1e-8 * n
    assert time.perf_counter() - t0 < 60
    assert [p.requires_grad for p in params] == opt.mask.tolist()


@pytest.mark.parametrize("base", list(BASES))
def test_stale_gradients_of_inactive_tensors_are_not_applied(base):
    """Found by the fuzz test: gradients left on inactive tensors (a backward inside
    dense(), no zero_grad() before the next step) reached a generic base optimizer's
    step(), which updated the inactive tensors with them -- every step, since nothing
    cleared them. Now inactive tensors hold no gradient during a step."""
    model, opt = make_opt(base, sparsity=0.3, depth=6)
    for i in range(3):
        x, y = batch(i)
        with opt.dense():
            F.cross_entropy(model(x), y).backward()  # e.g. a saliency probe
        mask, before = opt.mask.tolist(), snapshot(model)
        F.cross_entropy(model(x), y).backward()  # davda style, without zero_grad()
        opt.step(make_closure(model, opt, x, y, zero=False), first_pass_done=True)
        for on, p, b in zip(mask, model.parameters(), before, strict=False):
            if not on:
                assert torch.equal(p, b), "an inactive tensor was updated"
        assert all(p.grad is None for p in model.parameters())


def test_optimizer_rebuilt_on_masked_parameters_keeps_every_arm():
    """Found by the fuzz test: an SLSAM built on parameters another SLSAM had masked (e.g.
    re-created in the same process) took the inactive ones for frozen tensors, so they
    would never train. Parameters the user froze stay frozen."""
    model = tiny_mlp(depth=6)
    frozen = list(model.parameters())[0]
    frozen.requires_grad_(False)
    first = slsam.SLSAM(model.parameters(), sparsity=0.2, seed=0)
    assert not all(p.requires_grad for p in first.arms)  # some masked off
    second = slsam.SLSAM(model.parameters(), sparsity=0.2, seed=1)
    assert len(second.arms) == len(first.arms) == len(list(model.parameters())) - 1
    assert [p.requires_grad for p in second.arms] == second.mask.tolist()
    assert not frozen.requires_grad
    second.load_state_dict(first.state_dict())  # the round trip that failed
    assert torch.equal(second.mask, first.mask)
    head = list(model.parameters())[-2:]
    third = slsam.SLSAM([{"params": list(model.parameters())[1:-2]},
                         {"params": head, "always_active": True}], sparsity=0.2, seed=2)
    assert all(p.requires_grad for p in head) and len(third.arms) == len(first.arms) - 2


def test_all_arms_frozen_or_always_active():
    """No arms at all (everything always active): no bandit, SAM on the group."""
    model = tiny_mlp()
    opt = slsam.SLSAM([{"params": model.parameters(), "always_active": True}], lr=1e-2,
                      sparsity=0.2)
    assert opt.arms == [] and opt.probs.numel() == 0
    before = snapshot(model)
    x, y = batch(0)
    opt.step(make_closure(model, opt, x, y))
    assert all(not torch.equal(a, b) for a, b in zip(snapshot(model), before, strict=False))
