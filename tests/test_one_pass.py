"""One-pass SL-SAM (``SLSAM(..., passes=1)``, slsam/_one_pass.py) against a plain-PyTorch
one-pass reference on the same masks; one closure call per step; the bandit learns from
that call's gradients; skipped steps; state_dict round trip; refused arguments."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    Net,
    assert_resume_is_bit_identical,
    assert_within_ref_error,
    batch,
    closure_for,
    tiny_mlp,
)
from torch import Tensor, nn

import slsam
from slsam import reference

LR, WD, BETAS, EPS, RHO = 1e-2, 0.01, (0.9, 0.999), 1e-8, 0.05


def one_pass(model: nn.Module, base=torch.optim.AdamW, sparsity: float = 0.5, seed: int = 3,
             **kw) -> slsam.SLSAM:
    """SLSAM(passes=1) over the body, the last layer always active."""
    body, head = list(model.parameters())[:-2], list(model.parameters())[-2:]
    kw = {"lr": LR, "weight_decay": WD, "rho": RHO, **kw}
    return slsam.SLSAM([{"params": body}, {"params": head, "always_active": True}], base,
                       sparsity=sparsity, seed=seed, passes=1, **kw)


def stepped(base=torch.optim.AdamW, steps: int = 3) -> tuple[nn.Module, slsam.SLSAM]:
    """A tiny MLP and its one-pass optimizer after ``steps`` steps."""
    model = tiny_mlp()
    opt = one_pass(model, base)
    for i in range(steps):
        opt.step(counting_closure(model, *batch(i), []))
    return model, opt


def counting_closure(model: nn.Module, x: Tensor, y: Tensor, calls: list[list[Tensor]]):
    """Zero, forward, backward; records the weights each call ran at."""
    def closure() -> Tensor:
        calls.append([p.detach().clone() for p in model.parameters()])
        model.zero_grad()
        loss = F.cross_entropy(model(x.to(next(model.parameters()).dtype)), y)
        loss.backward()
        return loss

    return closure


# ----- the plain-PyTorch one-pass reference -----


def _opmath(t: Tensor) -> Tensor:
    return t.double() if t.dtype == torch.float64 else t.float()


def ref_adamw_(p: Tensor, g: Tensor, st: dict) -> None:
    """AdamW on one tensor, computed in opmath, stored in the tensor's dtype."""
    st["t"] += 1
    t = st["t"]
    x, gg, m, v = _opmath(p), _opmath(g), _opmath(st["m"]), _opmath(st["v"])
    x = x * (1 - LR * WD)
    m = BETAS[0] * m + (1 - BETAS[0]) * gg
    v = BETAS[1] * v + (1 - BETAS[1]) * gg * gg
    denom = v.sqrt() / math.sqrt(1 - BETAS[1] ** t) + EPS
    x = x - LR / (1 - BETAS[0] ** t) * (m / denom)
    st["m"].copy_(m)
    st["v"].copy_(v)
    p.copy_(x)


def ref_one_pass_step(model: nn.Module, n_arms: int, mask: list[bool], state: dict,
                      x: Tensor, y: Tensor) -> list[Tensor]:
    """One step by hand: the active tensors with a first moment m move to
    x - rho m / ||m|| (norm over them), one forward/backward there, back to x, AdamW
    with that gradient. Returns the active arms' gradient norms (the bandit's input)."""
    params = list(model.parameters())
    arms, always = params[:n_arms], params[n_arms:]
    active = [p for p, on in zip(arms, mask, strict=True) if on] + always
    x0 = [p.detach().clone() for p in active]
    moving = [p for p in active if id(p) in state]
    norm = math.sqrt(sum(float(state[id(p)]["m"].double().square().sum()) for p in moving))
    with torch.no_grad():
        for p in moving:
            s = torch.tensor(-RHO / (norm + 1e-12), dtype=torch.float64).to(_opmath(p).dtype)
            p.copy_(_opmath(p) + s * _opmath(state[id(p)]["m"]))
    loss = F.cross_entropy(model(x.to(params[0].dtype)), y)
    grads = torch.autograd.grad(loss, active, allow_unused=True)
    with torch.no_grad():
        for p, p0, g in zip(active, x0, grads, strict=True):
            p.copy_(p0)
            if g is not None:
                st = state.setdefault(id(p), dict(m=torch.zeros_like(p), v=torch.zeros_like(p),
                                                  t=0))
                ref_adamw_(p, g, st)
    n_active_arms = sum(mask)
    return [_opmath(g).norm() for g in grads[:n_active_arms]]


# ----- against the reference -----


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_matches_the_plain_pytorch_reference_on_the_same_masks(dtype):
    steps = 6
    model = tiny_mlp().to(dtype)
    ref_model, truth_model = copy.deepcopy(model), copy.deepcopy(model).double()
    opt = one_pass(model)
    n_arms = len(opt.arms)
    ref_state: dict = {}
    truth_state: dict = {}
    for i in range(steps):
        x, y = batch(i)
        mask = opt.mask.tolist()
        calls: list[list[Tensor]] = []
        opt.step(counting_closure(model, x, y, calls))
        assert len(calls) == 1
        ref_one_pass_step(ref_model, n_arms, mask, ref_state, x, y)
        ref_one_pass_step(truth_model, n_arms, mask, truth_state, x, y)
    assert opt.skipped_steps == 0
    out, ref, truth = (list(m.parameters()) for m in (model, ref_model, truth_model))
    moved = [not torch.equal(a, b) for a, b in zip(out, tiny_mlp().to(dtype).parameters(),
                                                   strict=True)]
    assert sum(moved) >= len(out) - 2, "most tensors should have been updated in 6 steps"
    assert_within_ref_error([p.detach() for p in out], [p.detach() for p in ref],
                            [p.detach() for p in truth], dtype)
    for p, q in zip(out, ref, strict=True):  # the moments too
        if id(q) in ref_state:
            assert float(opt.state[p]["step"]) == ref_state[id(q)]["t"]
            torch.testing.assert_close(_opmath(opt.state[p]["exp_avg"]),
                                       _opmath(ref_state[id(q)]["m"]),
                                       **({} if dtype == torch.float32 else dict(rtol=0.05,
                                                                                 atol=1e-3)))
        else:
            assert not opt.state[p]


def test_the_one_pass_runs_at_x_minus_rho_m_over_norm_m_and_weights_are_clean_after():
    model = tiny_mlp()
    opt = one_pass(model, sparsity=0.5)
    params = list(model.parameters())
    for i in range(5):
        x, y = batch(i)
        before = [p.detach().clone() for p in params]
        active = set(opt.mask.nonzero().flatten().tolist()) | {len(opt.arms), len(opt.arms) + 1}
        ms = {k: opt.state[p]["exp_avg"].clone() for k, p in enumerate(params)
              if k in active and opt.state[p]}
        if i == 0:
            assert not ms  # first step: no first moment, no perturbation
        norm = math.sqrt(sum(float(m.double().square().sum()) for m in ms.values()))
        calls: list[list[Tensor]] = []
        opt.step(counting_closure(model, x, y, calls))
        assert len(calls) == 1
        for k, (seen, x0) in enumerate(zip(calls[0], before, strict=True)):
            if k in ms:
                expect = x0 - RHO / (float(norm) + 1e-12) * ms[k]
                torch.testing.assert_close(seen, expect, rtol=1e-6, atol=1e-7)
                assert not torch.equal(seen, x0)
            else:
                assert torch.equal(seen, x0)
        for k, (p, x0) in enumerate(zip(params, before, strict=True)):
            if k not in active:  # inactive: untouched; no gradient left anywhere
                assert torch.equal(p.detach(), x0)
            assert p.grad is None


def test_the_bandit_learns_from_the_one_pass_gradient_norms():
    model = tiny_mlp(depth=6)
    opt = one_pass(model, sparsity=0.4)
    n = len(opt.arms)
    for i in range(6):
        x, y = batch(i)
        probs, mask = opt.probs, opt.mask
        norms: list[Tensor] = []

        def closure(x=x, y=y, norms=norms, mask=mask) -> Tensor:
            model.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            norms.extend(p.grad.norm() for p, on in zip(opt.arms, mask.tolist(), strict=True)
                         if on)
            return loss

        opt.step(closure)
        expect = probs.clone()
        reference.bandit_update_(expect, mask, torch.stack(norms), None, opt.alpha,
                                 opt.sparsity * n)
        torch.testing.assert_close(opt.probs, expect, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(opt.probs, torch.full_like(opt.probs, 0.4))


def test_adam_generic_path_equals_fused_adamw_path():
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1 = one_pass(m1, torch.optim.AdamW, weight_decay=0.0)
    o2 = one_pass(m2, torch.optim.Adam, weight_decay=0.0)
    assert (o1._update.name, o2._update.name) == ("fused_adamw", "generic")
    for i in range(8):
        x, y = batch(i)
        o1.step(counting_closure(m1, x, y, []))
        o2.step(counting_closure(m2, x, y, []))
        assert torch.equal(o1.mask, o2.mask)
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_grad_scaler_gives_the_unscaled_step():
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1, o2 = one_pass(m1), one_pass(m2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    for i in range(4):
        x, y = batch(i)
        o1.step(counting_closure(m1, x, y, []))

        def closure(x=x, y=y) -> Tensor:
            m2.zero_grad()
            loss = F.cross_entropy(m2(x), y)
            scaler.scale(loss).backward()
            return loss

        o2.step(closure, scaler=scaler)
        scaler.update()
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(o1.probs, o2.probs)


# ----- skipped steps and failures leave everything as it was -----


def full_state(model: nn.Module, opt: slsam.SLSAM) -> list[Tensor]:
    """Weights, probabilities and optimizer state; a state of zeros at step 0 (which the
    fused path lays out for a newly active tensor, skipped step or not) counts as none."""
    out = [p.detach().clone() for p in model.parameters()] + [opt.probs]
    for p in model.parameters():
        st = opt.state[p]
        if st and not (float(st["step"]) == 0 and not st["exp_avg"].any()
                       and not st["exp_avg_sq"].any()):
            out += [t.clone() for t in st.values() if isinstance(t, Tensor)]
    return out


@pytest.mark.parametrize("base", [torch.optim.AdamW, torch.optim.Adam], ids=["adamw", "adam"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")], ids=["inf", "nan"])
def test_nonfinite_gradient_skips_the_step_and_keeps_weights_and_state(base, value):
    model, opt = stepped(base)
    before = full_state(model, opt)
    x, y = batch(9)

    def closure() -> Tensor:
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        model[-1].weight.grad[0, 0] = value  # the always-active head: in every step
        return loss

    opt.step(closure)
    assert opt.skipped_steps == 1
    for a, b in zip(full_state(model, opt), before, strict=True):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in model.parameters())
    x, y = batch(10)
    opt.step(counting_closure(model, x, y, []))  # and training goes on
    assert opt.skipped_steps == 1
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


def test_a_failing_closure_restores_the_weights():
    model, opt = stepped()
    before = full_state(model, opt)

    def closure() -> Tensor:
        F.cross_entropy(model(batch(0)[0]), batch(0)[1]).backward()
        raise KeyError("data loader failed")

    with pytest.raises(KeyError):
        opt.step(closure)
    for a, b in zip(full_state(model, opt), before, strict=True):
        assert torch.equal(a, b)
    assert all(p.grad is None for p in model.parameters())


class WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(8, 3)
        self.unused = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.used(x)


def test_a_mask_of_unused_tensors_is_redrawn_and_its_perturbation_undone():
    torch.manual_seed(0)
    model = WithUnused()
    opt = slsam.SLSAM(model.parameters(), sparsity=0.25, seed=0, passes=1, lr=LR)
    arms = opt.arms
    for p in model.unused.parameters():  # a first moment, so that they would move
        opt.state[p].update(step=torch.tensor(1.0), exp_avg=torch.ones_like(p),
                            exp_avg_sq=torch.ones_like(p))
    unused = [p.detach().clone() for p in model.unused.parameters()]
    opt._set_mask(torch.tensor([id(p) in {id(q) for q in model.unused.parameters()}
                                for p in arms]))
    x, y = batch(0)
    opt.step(counting_closure(model, x, y, []))
    for p, p0 in zip(model.unused.parameters(), unused, strict=True):
        assert torch.equal(p.detach(), p0)


# ----- state_dict -----


def test_state_dict_round_trip_resumes_bit_identically():
    model = tiny_mlp()
    assert_resume_is_bit_identical(model, one_pass(model), lambda m: one_pass(m, seed=99))


# ----- arguments -----


@pytest.mark.parametrize("passes", [0, 3, True, 1.5, "1", None])
def test_passes_must_be_one_or_two(passes):
    with pytest.raises(ValueError, match="passes must be 1 or 2"):
        slsam.SLSAM(tiny_mlp().parameters(), passes=passes)


@pytest.mark.parametrize("base", [torch.optim.SGD, torch.optim.RMSprop, torch.optim.Adagrad])
def test_one_pass_refuses_a_base_optimizer_without_a_first_moment(base):
    with pytest.raises(TypeError, match="first moment.*AdamW"):
        slsam.SLSAM(tiny_mlp().parameters(), base, passes=1, lr=0.1)


@pytest.mark.parametrize("kw, match", [(dict(adaptive=True), "adaptive"),
                                       (dict(maximize=True), "maximize")])
def test_one_pass_refuses_group_options_it_cannot_honour(kw, match):
    with pytest.raises(ValueError, match=match):
        slsam.SLSAM(tiny_mlp().parameters(), passes=1, **kw)
    # also when a group is changed later: refused before anything moves
    assert_step_refused(match, lambda model, opt: opt.param_groups[0].update(kw))


def test_first_pass_done_is_refused_with_nothing_changed():
    def backward_at_x(model: nn.Module, opt: slsam.SLSAM) -> None:
        F.cross_entropy(model(batch(1)[0]), batch(1)[1]).backward()

    assert_step_refused("first_pass_done", backward_at_x, first_pass_done=True)


def assert_step_refused(match: str, change, **step_kw) -> None:
    """After a step and ``change(model, opt)``, ``step(closure, **step_kw)`` raises
    ValueError(match) without calling the closure or changing anything."""
    model, opt = stepped(steps=1)
    x, y = batch(0)
    before = full_state(model, opt)
    change(model, opt)
    calls: list[list[Tensor]] = []
    with pytest.raises(ValueError, match=match):
        opt.step(counting_closure(model, x, y, calls), **step_kw)
    assert not calls
    for a, b in zip(full_state(model, opt), before, strict=True):
        assert torch.equal(a, b)


def test_one_pass_needs_step_with_a_closure():
    model = tiny_mlp()
    opt = one_pass(model)
    F.cross_entropy(model(batch(0)[0]), batch(0)[1]).backward()
    with pytest.raises(RuntimeError, match=r"passes=1.*step\(closure\)"):
        opt.first_step()
    with pytest.raises(RuntimeError, match=r"passes=1.*step\(closure\)"):
        opt.second_step()
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()
    assert not opt.perturbed


def test_two_passes_stay_the_default():
    opt = slsam.SLSAM(tiny_mlp().parameters())
    assert opt.passes == 2


def test_mask_mode_grad_gives_the_same_steps():
    m1, m2 = tiny_mlp(), tiny_mlp()
    o1, o2 = one_pass(m1), one_pass(m2, mask_mode="grad")
    for i in range(5):
        x, y = batch(i)
        o1.step(counting_closure(m1, x, y, []))
        o2.step(counting_closure(m2, x, y, []))
    for a, b in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(o1.probs, o2.probs)


def test_dense_one_pass_updates_every_tensor_every_step():
    model = tiny_mlp()
    opt = slsam.SLSAM(model.parameters(), sparsity=1.0, passes=1, lr=LR, rho=RHO)
    for i in range(3):
        x, y = batch(i)
        opt.step(counting_closure(model, x, y, []))
    assert all(float(opt.state[p]["step"]) == 3 for p in model.parameters())


def test_fp16_parameters_move_along_their_fp32_moments():
    model = tiny_mlp().half()
    opt = one_pass(model, sparsity=1.0)
    params = list(model.parameters())
    x, y = batch(0)
    opt.step(counting_closure(model, x, y, []))
    assert all(opt.state[p]["exp_avg"].dtype == torch.float32 for p in params)
    before = [p.detach().clone() for p in params]
    ms = [opt.state[p]["exp_avg"].clone() for p in params]
    norm = math.sqrt(sum(float(m.double().square().sum()) for m in ms))
    calls: list[list[Tensor]] = []
    opt.step(counting_closure(model, *batch(1), calls))
    for seen, x0, m in zip(calls[0], before, ms, strict=True):
        expect = (x0.float() - RHO / norm * m).half()
        torch.testing.assert_close(seen, expect, rtol=2e-3, atol=1e-4)
    assert opt.skipped_steps == 0


# ----- arm groups -----


def test_arm_groups_move_and_update_as_a_whole_and_the_bandit_reads_group_norms():
    model = Net(0)
    opt = slsam.SLSAM(model.parameters(), lr=LR, rho=RHO, sparsity=0.4, seed=1, passes=1,
                      arm_groups=slsam.arms.by_block(model))
    assert opt.probs.numel() == 2 + 4 + 2
    params = list(model.parameters())
    for i in range(8):
        on_arms, probs = opt.mask.tolist(), opt.probs
        for arm, on in zip(opt.arm_groups, on_arms, strict=True):
            assert all(p.requires_grad == on for p in arm)
        before = {id(p): p.detach().clone() for p in params}
        moments = {id(p): opt.state[p]["exp_avg"].clone() for p in params if opt.state[p]}
        seen: list[dict[int, Tensor]] = []
        norms: list[Tensor] = []

        def closure(i=i, seen=seen, norms=norms, on_arms=on_arms) -> Tensor:
            seen.append({id(p): p.detach().clone() for p in params})
            loss = closure_for(model, opt, i)()
            norms.extend(torch.cat([p.grad.flatten() for p in arm]).norm()
                         for arm, on in zip(opt.arm_groups, on_arms, strict=True) if on)
            return loss

        opt.step(closure)
        assert len(seen) == 1
        for arm, on in zip(opt.arm_groups, on_arms, strict=True):
            for p in arm:
                moved = not torch.equal(seen[0][id(p)], before[id(p)])
                assert moved == (on and id(p) in moments)  # at x + e: active, with a moment
                # inactive arms untouched; active ones updated
                assert torch.equal(p.detach(), before[id(p)]) != on
        expect = probs.clone()
        reference.bandit_update_(expect, torch.tensor(on_arms), torch.stack(norms), None,
                                 opt.alpha, opt.sparsity * 8)
        torch.testing.assert_close(opt.probs, expect, rtol=1e-6, atol=1e-9)

