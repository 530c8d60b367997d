"""Correctness against the peers and torch.optim: non-finite first passes, rho = 0,
mixed adaptive groups, frozen tensors across load_state_dict, copies and pickles of
the optimizer, AdamW's scalars, fp64 norms."""

from __future__ import annotations

import copy
import pickle

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
    for a, b in zip(seen[1], before, strict=False):  # the second forward ran at the unperturbed weights
        assert torch.equal(a, b)
    for a, b in zip(model.parameters(), before, strict=False):
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
        for p, q, b in zip(ps, params, bks, strict=False):
            assert torch.equal(p.view(torch.uint8), q.view(torch.uint8)), fn
            assert torch.equal(b.view(torch.uint8), q.view(torch.uint8)), fn


# ----- rho = 0 is the base optimizer alone; a negative rho is refused at the step -----


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         nn.Linear(16, 3))


def mlp_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def closure_for(model: nn.Module, opt: torch.optim.Optimizer, seed: int):
    x, y = mlp_batch(seed)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("base", ["sgd", "adamw"])
def test_rho_zero_equals_the_base_optimizer_alone(base, adaptive):
    cls, kw = {"sgd": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3)),
               "adamw": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05))}[base]
    model, ref = mlp(), mlp()
    opt = slsam.SAM(model.parameters(), cls, rho=0.0, adaptive=adaptive, **kw)
    ref_opt = cls(ref.parameters(), **kw)
    for i in range(5):
        opt.step(closure_for(model, opt, i))
        ref_opt.step(closure_for(ref, ref_opt, i))
    for p, q in zip(model.parameters(), ref.parameters(), strict=False):
        if base == "sgd":  # the same path: restore (exact), then SGD's own step
            assert torch.equal(p, q)
        else:  # fused AdamW rounds in another order than torch's: a few ulp
            torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_rho_zero_is_accepted_by_both_classes():
    assert slsam.SLSAM(mlp().parameters(), rho=0.0).rho == 0.0
    assert slsam.SAM(mlp().parameters(), rho=0.0).rho == 0.0


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf")])
@pytest.mark.parametrize("style", ["closure", "first_pass_given", "two_call"])
def test_bad_rho_set_through_param_groups_is_refused_at_the_step(style, bad):
    model = mlp()
    opt = slsam.SLSAM(model.parameters(), rho=0.05, sparsity=0.5, seed=0, lr=1e-2)
    opt.step(closure_for(model, opt, 0))
    opt.param_groups[0]["rho"] = bad
    weights = [p.detach().clone() for p in model.parameters()]
    state = {k: {n: t.clone() for n, t in v.items()} for k, v in opt.state.items()}
    probs, mask = opt.probs, opt.mask
    closure = closure_for(model, opt, 1)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['rho'\]"):
        if style == "closure":
            opt.step(closure)
        elif style == "first_pass_given":
            closure()
            opt.step(closure, first_pass_done=True)
        else:
            closure()
            opt.first_step()
    assert not opt.perturbed
    for p, w in zip(model.parameters(), weights, strict=False):
        assert torch.equal(p.detach(), w)
    assert state.keys() == opt.state.keys()
    for k, v in state.items():
        for n, t in v.items():
            assert torch.equal(opt.state[k][n], t)
    assert torch.equal(opt.probs, probs) and torch.equal(opt.mask, mask)
    opt.param_groups[0]["rho"] = 0.05  # fixed: training goes on
    opt.step(closure_for(model, opt, 2))


def test_bad_rho_of_a_group_refused_at_construction():
    model = mlp()
    ps = list(model.parameters())
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['rho'\]"):
        slsam.SLSAM([{"params": ps[:2]}, {"params": ps[2:], "rho": -1.0}])
    assert all(p.requires_grad for p in ps)


# ----- mixed adaptive flags: |w| weights only the adaptive groups' tensors -----


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_mixed_adaptive_groups_perturb_like_the_hand_computation(dtype):
    model = mlp().to(dtype)
    ps = list(model.parameters())
    rho = 0.05
    opt = slsam.SAM([{"params": ps[:2], "adaptive": True}, {"params": ps[2:4]},
                     {"params": ps[4:], "adaptive": True, "rho": 0.1}],
                    torch.optim.SGD, rho=rho, lr=0.0)
    x, y = mlp_batch(0)
    x = x.to(dtype)
    F.cross_entropy(model(x), y).backward()
    w = [p.detach().double().clone() for p in ps]
    g = [p.grad.double().clone() for p in ps]
    adaptive = [True, True, False, False, True, True]
    rhos = [rho] * 4 + [0.1] * 2
    sq = sum(((wi.abs() * gi) if a else gi).square().sum() for wi, gi, a in zip(w, g, adaptive, strict=False))
    norm = float(sq.sqrt())
    expect = [wi + r / (norm + 1e-12) * (wi * wi * gi if a else gi)
              for wi, gi, a, r in zip(w, g, adaptive, rhos, strict=False)]
    opt.first_step()
    tol = dict(rtol=0, atol=1e-13) if dtype == torch.float64 else dict(rtol=2e-6, atol=1e-7)
    for p, e in zip(ps, expect, strict=False):
        torch.testing.assert_close(p.detach().double(), e, **tol)
    opt.second_step()
    for p, wi in zip(ps, w, strict=False):  # lr = 0: back exactly
        assert torch.equal(p.detach().double(), wi)


# ----- tensors the user froze after construction stay frozen -----


@pytest.mark.parametrize("mask_mode", ["requires_grad", "grad"])
def test_load_state_dict_keeps_tensors_frozen_after_construction(mask_mode):
    model = mlp()
    opt = slsam.SLSAM(model.parameters(), sparsity=0.5, seed=0, mask_mode=mask_mode, lr=1e-2)
    for i in range(3):
        opt.step(closure_for(model, opt, i))
    sd = opt.state_dict()
    with opt.dense():  # every arm has requires_grad here, so each freeze is seen
        frozen = [model[2].weight, model[2].bias]
        for p in frozen:
            p.requires_grad_(False)
    before = [p.detach().clone() for p in frozen]
    opt.load_state_dict(sd)
    assert not any(p.requires_grad for p in frozen)
    with opt.dense():
        assert not any(p.requires_grad for p in frozen)
    for i in range(6):
        opt.step(closure_for(model, opt, 10 + i))
        assert not any(p.requires_grad for p in frozen)
        opt.load_state_dict(opt.state_dict())
        assert not any(p.requires_grad for p in frozen)
    for p, b in zip(frozen, before, strict=False):
        assert torch.equal(p.detach(), b)
    others = [p for p in opt.arms if all(p is not q for q in frozen)]
    if mask_mode == "requires_grad":
        assert [p.requires_grad for p in others] == [
            on for p, on in zip(opt.arms, opt.mask.tolist(), strict=False) if all(p is not q for q in frozen)]
    for p in frozen:  # unfrozen by the user: an arm again
        p.requires_grad_(True)
    for i in range(20):
        opt.step(closure_for(model, opt, 30 + i))
    assert any(not torch.equal(p.detach(), b) for p, b in zip(frozen, before, strict=False))


def test_active_arm_frozen_between_steps_stays_frozen():
    model = mlp()
    opt = slsam.SLSAM(model.parameters(), sparsity=0.5, seed=1, lr=1e-2)
    opt.step(closure_for(model, opt, 0))
    active = [p for p, on in zip(opt.arms, opt.mask.tolist(), strict=False) if on]
    victim = active[0]
    victim.requires_grad_(False)
    before = victim.detach().clone()
    sd = opt.state_dict()
    sd["slsam"]["mask"] = torch.ones_like(sd["slsam"]["mask"])
    opt.load_state_dict(sd)
    assert not victim.requires_grad
    for i in range(10):
        opt.step(closure_for(model, opt, 1 + i))
        assert not victim.requires_grad
    assert torch.equal(victim.detach(), before)


# ----- copies and pickles step exactly like the original -----


def _roundtrip(obj, how: str):
    if how == "deepcopy":
        return copy.deepcopy(obj)
    return pickle.loads(pickle.dumps(obj))


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("cls", ["SLSAM", "SAM", "SLSAM_sgd"])
def test_copied_model_and_optimizer_step_like_the_original(cls, how):
    model = mlp()
    if cls == "SLSAM":
        opt = slsam.SLSAM(model.parameters(), sparsity=0.4, seed=3, lr=1e-2)
    elif cls == "SAM":
        opt = slsam.SAM(model.parameters(), lr=1e-2)
    else:
        opt = slsam.SLSAM(model.parameters(), torch.optim.SGD, sparsity=0.4, seed=3, lr=0.1,
                          momentum=0.9)
    for i in range(3):
        opt.step(closure_for(model, opt, i))
    model2, opt2 = _roundtrip((model, opt), how)
    assert opt2.arms[0] is next(iter(model2.parameters()))
    for i in range(5):
        opt.step(closure_for(model, opt, 10 + i))
        opt2.step(closure_for(model2, opt2, 10 + i))
        assert torch.equal(opt.probs, opt2.probs) and torch.equal(opt.mask, opt2.mask)
        for p, q in zip(model.parameters(), model2.parameters(), strict=False):
            assert torch.equal(p, q) and p.requires_grad == q.requires_grad
    assert opt2.skipped_steps == opt.skipped_steps


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copy_between_first_and_second_step(how):
    model = mlp()
    opt = slsam.SLSAM(model.parameters(), sparsity=0.5, seed=0, lr=1e-2)
    opt.step(closure_for(model, opt, 0))
    closure_for(model, opt, 1)()
    opt.first_step()
    model2, opt2 = _roundtrip((model, opt), how)
    assert opt2.perturbed
    for m, o in ((model, opt), (model2, opt2)):
        closure_for(m, o, 1)()
        o.second_step()
    for p, q in zip(model.parameters(), model2.parameters(), strict=False):
        assert torch.equal(p, q)
    opt.step(closure_for(model, opt, 2))
    opt2.step(closure_for(model2, opt2, 2))
    for p, q in zip(model.parameters(), model2.parameters(), strict=False):
        assert torch.equal(p, q)


def test_copied_optimizer_alone_steps():
    """A copy of the optimizer alone holds copies of the parameters, as torch's do."""
    model = mlp()
    opt = slsam.SLSAM(model.parameters(), sparsity=0.5, seed=0, lr=1e-2)
    opt.step(closure_for(model, opt, 0))
    opt2 = copy.deepcopy(opt)
    assert all(p is not q for p, q in zip(opt.arms, opt2.arms, strict=False))
    model2 = mlp()
    for dst, src in zip(model2.parameters(), opt2.arms, strict=False):  # put the copies in a model
        dst.data = src.data
    for m, o in ((model, opt), (model2, opt2)):
        x, y = mlp_batch(5)

        def closure(m=m, o=o, x=x, y=y) -> torch.Tensor:
            o.zero_grad()
            out = torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()],
                                                          o.arms, strict=False)), (x,))
            loss = F.cross_entropy(out, y)
            loss.backward()
            return loss

        o.step(closure)
    for p, q in zip(opt.arms, opt2.arms, strict=False):
        assert torch.equal(p, q)


# ----- the fused AdamW update is unbiased against torch.optim.AdamW -----


def _adamw_updates(step_fn, n: int = 200_000, steps: int = 3) -> list[torch.Tensor]:
    """Updates x_t - x_{t-1} from fresh state at x0 = 0 (where the update is rounded
    once, so a bias shows in the median), fp64 for comparison."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(n, generator=g) for _ in range(steps)]
    return step_fn(grads)


HYPER = dict(lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8)


def _torch_adamw(dtype: torch.dtype):
    def run(grads: list[torch.Tensor]) -> list[torch.Tensor]:
        p = nn.Parameter(torch.zeros(grads[0].numel(), dtype=dtype))
        opt = torch.optim.AdamW([p], lr=HYPER["lr"], betas=(HYPER["beta1"], HYPER["beta2"]),
                                weight_decay=HYPER["weight_decay"], eps=HYPER["eps"],
                                foreach=False)
        out = []
        for gr in grads:
            before = p.detach().double().clone()
            p.grad = gr.to(dtype)
            opt.step()
            out.append(p.detach().double() - before)
        return out
    return run


def _slsam_adamw(fn):
    def run(grads: list[torch.Tensor]) -> list[torch.Tensor]:
        n = grads[0].numel()
        p, m, v, steps = torch.zeros(n), torch.zeros(n), torch.zeros(n), [torch.tensor(0.0)]
        out = []
        for gr in grads:
            backup = p.clone()
            fn([p], [backup], [gr], [m], [v], steps, **HYPER)
            out.append(p.double() - backup.double())
        return out
    return run


def _median_rel_err(updates: list[torch.Tensor], truth: list[torch.Tensor]) -> list[float]:
    return [float(((u - t) / t.abs()).median()) for u, t in zip(updates, truth, strict=False)]


@pytest.mark.parametrize("impl", ["kernel", "reference"])
def test_fused_adamw_update_is_unbiased_against_torch_adamw(impl):
    """The fp32 update's median relative error against an fp64 torch.optim.AdamW is at
    the level of torch's own fp32 AdamW (~1e-9 here), not the +6.6e-6 of 1 - beta2
    formed in fp32."""
    truth = _adamw_updates(_torch_adamw(torch.float64))
    torch_err = _median_rel_err(_adamw_updates(_torch_adamw(torch.float32)), truth)
    fn = ops.restore_adamw_ if impl == "kernel" else reference.restore_adamw_
    ours = _median_rel_err(_adamw_updates(_slsam_adamw(fn)), truth)
    for o, t in zip(ours, torch_err, strict=False):
        assert abs(o) <= abs(t) + 2e-7, (ours, torch_err)


def test_adamw_moments_match_fp64_torch_after_one_step():
    g = torch.randn(10_000, generator=torch.Generator().manual_seed(1))
    p, m, v, steps = torch.zeros_like(g), torch.zeros_like(g), torch.zeros_like(g), [torch.tensor(0.0)]
    ops.restore_adamw_([p], [torch.zeros_like(g)], [g], [m], [v], steps, **HYPER)
    # torch: m = lerp(0, g, 1 - beta1), v = (1 - beta2) * g * g with the scalars from doubles
    assert torch.equal(m, torch.lerp(torch.zeros_like(g), g, 1 - HYPER["beta1"]))
    assert torch.equal(v, torch.zeros_like(g).mul(HYPER["beta2"]).addcmul(g, g, value=1 - HYPER["beta2"]))


# ----- fp64 parameters are perturbed with an fp64 global norm -----


def test_grad_norms_total_is_fp64_for_fp64_gradients():
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(s, generator=g, dtype=torch.float64) for s in [(70000,), (3, 5), (0,)]]
    for fn in (ops.grad_norms, reference.grad_norms):
        norms, total = fn(grads)
        assert norms.dtype == torch.float32 and total.dtype == torch.float64
        exact = torch.cat([t.flatten() for t in grads]).square().sum().sqrt()
        assert abs(float(total) - float(exact)) <= 1e-14 * float(exact)
    weights = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in grads]
    assert ops.grad_norms(grads, weights)[1].dtype == torch.float64
    mixed = grads[:1] + [grads[1].float()]
    assert ops.grad_norms(mixed)[1].dtype == torch.float32
    assert reference.grad_norms(mixed)[1].dtype == torch.float32
    assert ops.grad_norms([t.float() for t in grads])[1].dtype == torch.float32


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("sparsity", [1.0, 0.5])
def test_fp64_parameters_are_perturbed_in_fp64(sparsity, adaptive):
    model = mlp().double()
    ps = list(model.parameters())
    rho = 0.05
    opt = slsam.SLSAM(model.parameters(), torch.optim.SGD, rho=rho, sparsity=sparsity, seed=0,
                      adaptive=adaptive, lr=0.0)
    x, y = mlp_batch(0)
    F.cross_entropy(model(x.double()), y).backward()
    active = [p for p in ps if p.grad is not None]
    w = [p.detach().clone() for p in active]
    g = [p.grad.clone() for p in active]
    sq = sum(((wi.abs() * gi) if adaptive else gi).square().sum() for wi, gi in zip(w, g, strict=False))
    scale = rho / (sq.sqrt() + 1e-12)
    expect = [wi + scale * (wi * wi * gi if adaptive else gi) for wi, gi in zip(w, g, strict=False)]
    opt.first_step()
    for p, e in zip(active, expect, strict=False):
        torch.testing.assert_close(p.detach(), e, rtol=0, atol=4e-16 * float(e.abs().max()))
    opt.second_step()
