"""Property-based tests (hypothesis) of every operator against slsam.reference.

Random tensor counts, shapes (empty, one element, across a 65536-element kernel
chunk), dtypes (one per list or mixed), layouts (contiguous, transposed, channels_last
parameters; strided, non-dense gradients), rho, hyper-parameters, sparsity and
probabilities. Tolerances: the kernel's error against an fp64 truth must be within
2x the plain reference's error in the same precision (conftest.assert_within_ref_error).

Deterministic by default (``derandomize``), so CI is reproducible; explore with
``SLSAM_HYPOTHESIS_RANDOM=1 SLSAM_HYPOTHESIS_EXAMPLES=1000 pytest tests/test_properties.py``.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
from conftest import assert_within_ref_error
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from slsam import ops, reference

SETTINGS = settings(
    max_examples=int(os.environ.get("SLSAM_HYPOTHESIS_EXAMPLES", "40")),
    deadline=None,
    derandomize=os.environ.get("SLSAM_HYPOTHESIS_RANDOM") != "1",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
CHUNK = 1 << 16  # csrc/cpu/cpu_loops.h kChunk

# ----- strategies -----


@st.composite
def shapes(draw):
    if draw(st.integers(0, 24)) == 0:  # now and then across a kernel chunk boundary
        return (CHUNK + draw(st.integers(1, 257)),)
    return tuple(draw(st.lists(st.integers(0, 9), max_size=4)))


@st.composite
def tensor_lists(draw, max_tensors=6, param_layouts=("contiguous", "transposed", "channels_last")):
    """Specs of a list: per tensor (shape, dtype, param layout, grad layout)."""
    n = draw(st.integers(1, max_tensors))
    mixed = draw(st.booleans())
    common = draw(st.sampled_from(FLOAT_DTYPES))
    out = []
    for _ in range(n):
        dtype = draw(st.sampled_from(FLOAT_DTYPES)) if mixed else common
        out.append((draw(shapes()), dtype, draw(st.sampled_from(param_layouts)),
                    draw(st.sampled_from(["contiguous", "transposed", "channels_last", "strided"]))))
    return out


def relayout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout."""
    if layout == "transposed" and t.dim() >= 2:
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)  # dense, permuted strides
    if layout == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided" and t.dim() >= 1:  # not dense: every other element of a buffer
        big = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        big[..., ::2] = t
        return big[..., ::2]
    return t


def values(shape, dtype, gen, scale=1.0, layout="contiguous", positive=False):
    t = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    if positive:
        t = t.abs()
    return relayout(t.to(dtype), layout)


def f64(ts):
    return [t.double() for t in ts]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits, so NaN payloads compare equal to themselves."""
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(ints[t.element_size()])


SCALES = st.sampled_from([1e-3, 1.0, 1e2])


def check_close(out, ref, truth, dtype):
    """assert_within_ref_error; for fp64 outputs, where no higher-precision truth exists
    here (the "truth" is the reference itself, whose association and FMA use -- torch.lerp
    -- differ from the kernel's), within 8 ulp of the largest value instead."""
    if dtype != torch.float64:
        assert_within_ref_error(out, ref, truth, dtype)
        return
    if truth.numel():
        ulp = torch.finfo(torch.float64).eps * float(truth.abs().max())
        torch.testing.assert_close(out, truth, rtol=0, atol=8 * ulp + 1e-300, equal_nan=True)

# ----- grad_norms -----


@SETTINGS
@given(specs=tensor_lists(), seed=st.integers(0, 2**31), scale=SCALES, weighted=st.booleans())
def test_grad_norms(specs, seed, scale, weighted):
    g = torch.Generator().manual_seed(seed)
    grads = [values(s, dt, g, scale, gl) for s, dt, _, gl in specs]
    weights = [values(s, dt, g, 1.0, pl) for s, dt, pl, _ in specs] if weighted else None
    norms, total = ops.grad_norms(grads, weights)
    assert norms.dtype == torch.float32 and norms.shape == (len(grads),) and total.shape == ()
    ref = reference.grad_norms(grads, weights)
    truth = reference.grad_norms(f64(grads), f64(weights) if weighted else None)
    assert_within_ref_error([norms, total], list(ref), list(truth), torch.float32)
    assert bool((norms >= 0).all())


# ----- perturb_ -----


@SETTINGS
@given(specs=tensor_lists(), seed=st.integers(0, 2**31), scale=SCALES,
       rho=st.floats(1e-4, 2.0), adaptive=st.booleans(),
       total_kind=st.sampled_from(["norm", "norm", "norm", "nan", "inf", "zero"]))
def test_perturb(specs, seed, scale, rho, adaptive, total_kind):
    g = torch.Generator().manual_seed(seed)
    params = [values(s, dt, g, 1.0, pl) for s, dt, pl, _ in specs]
    grads = [values(s, dt, g, scale, gl) for s, dt, _, gl in specs]
    if total_kind == "norm":
        total = reference.grad_norms(f64(grads), f64(params) if adaptive else None)[1]
    else:
        total = torch.tensor({"nan": math.nan, "inf": math.inf, "zero": 0.0}[total_kind])

    def run(fn, ps, gs):
        ps = [p.clone() for p in ps]  # clone keeps the (dense) strides
        bks = [torch.empty_like(p) for p in ps]
        fn(ps, gs, bks, total, rho, adaptive)
        return ps, bks

    out, out_bk = run(ops.perturb_, params, grads)
    for p, o, b in zip(params, out, out_bk, strict=False):
        assert torch.equal(bits(b), bits(p)), "backup is not an exact copy"
        assert o.stride() == p.stride()
    if total_kind in ("nan", "inf"):  # a non-finite norm moves nothing
        for p, o in zip(params, out, strict=False):
            assert torch.equal(bits(o), bits(p))
        return
    ref, _ = run(reference.perturb_, params, grads)
    truth, _ = run(reference.perturb_, f64(params), f64(grads))
    for o, r, t, (_, dt, _, _) in zip(out, ref, truth, specs, strict=False):
        check_close(o, r, t, dt)


# ----- restore_ -----


@SETTINGS
@given(specs=tensor_lists(), seed=st.integers(0, 2**31), raw_bits=st.booleans())
def test_restore_is_bit_exact(specs, seed, raw_bits):
    g = torch.Generator().manual_seed(seed)
    params = [values(s, dt, g, 1.0, pl) for s, dt, pl, _ in specs]
    if raw_bits:  # any bit pattern: NaN payloads, infinities, denormals
        ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}
        backups = []
        for (s, dt, _, gl), p in zip(specs, params, strict=False):
            it = ints[p.element_size()]
            info = torch.iinfo(it)
            r = torch.randint(info.min, info.max, s, generator=g, dtype=torch.int64).to(it)
            backups.append(relayout(r.view(dt), gl))
    else:
        backups = [values(s, dt, g, 1.0, gl) for s, dt, _, gl in specs]
    ops.restore_(params, backups)
    for p, b in zip(params, backups, strict=False):
        assert torch.equal(bits(p), bits(b))


# ----- restore_adamw_ -----


@SETTINGS
@given(specs=tensor_lists(max_tensors=4), seed=st.integers(0, 2**31), scale=SCALES,
       lr=st.sampled_from([0.0, 1e-4, 1e-2, 0.1]), beta1=st.sampled_from([0.0, 0.5, 0.9, 0.99]),
       beta2=st.sampled_from([0.9, 0.99, 0.999, 0.9999]),
       weight_decay=st.sampled_from([0.0, 0.01, 0.1]), eps=st.sampled_from([1e-8, 1e-6]),
       grad_scale=st.sampled_from([None, 1.0, 1024.0, 2.0**-4]),
       found_inf=st.sampled_from([None, 0.0, 0.0, 1.0]), data=st.data())
def test_restore_adamw(specs, seed, scale, lr, beta1, beta2, weight_decay, eps, grad_scale,
                       found_inf, data):
    g = torch.Generator().manual_seed(seed)
    params, backups, grads, ms, vs = [], [], [], [], []
    for s, dt, pl, gl in specs:
        p = values(s, dt, g, 1.0, pl)
        params.append(p)
        backups.append(values(s, dt, g, 1.0, data.draw(st.sampled_from(["contiguous", "strided"]))))
        grads.append(values(s, dt, g, scale * (grad_scale or 1.0), gl))
        # moments must have the parameter's strides (the optimizer uses zeros_like)
        ms.append(torch.zeros_like(p).copy_(values(s, dt, g, 0.1 * scale)))
        vs.append(torch.zeros_like(p).copy_(values(s, dt, g, 0.01 * scale**2, positive=True)))
    # finite inputs only (fp16 grads carrying a loss scale overflow: GradScaler's found_inf case)
    assume(all(bool(torch.isfinite(t).all()) for t in grads))
    steps = [torch.tensor(float(data.draw(st.integers(0, 50)))) for _ in specs]
    kw = dict(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay, eps=eps,
              grad_scale=None if grad_scale is None else torch.tensor(grad_scale),
              found_inf=None if found_inf is None else torch.tensor(found_inf))
    inputs = [params, backups, grads, ms, vs, steps]

    def run(fn, cast=None):
        ins = [[t.clone() if cast is None else t.to(cast) for t in group] for group in inputs]
        ins[5] = [s.clone() for s in steps]
        fn(*ins, **kw)
        return ins

    out = run(ops.restore_adamw_)
    if found_inf:  # only the restore: state untouched
        for p, b in zip(out[0], backups, strict=False):
            assert torch.equal(bits(p), bits(b))
        for i in (3, 4, 5):
            for a, b in zip(out[i], inputs[i], strict=False):
                assert torch.equal(a, b)
        return
    ref = run(reference.restore_adamw_)
    truth = run(reference.restore_adamw_, torch.float64)
    for i in (0, 3, 4):  # params, exp_avgs, exp_avg_sqs
        for o, r, t, x, (_, dt, _, _) in zip(out[i], ref[i], truth[i], inputs[i], specs, strict=False):
            assert o.dtype == dt and o.stride() == x.stride()
            check_close(o, r, t, dt)
    for s_out, s_in in zip(out[5], steps, strict=False):
        assert float(s_out) == float(s_in) + 1


# ----- bandit_update_ -----


@st.composite
def bandit_cases(draw, max_arms=300):
    n = draw(st.integers(1, max_arms))
    seed = draw(st.integers(0, 2**31))
    g = torch.Generator().manual_seed(seed)
    s = draw(st.sampled_from([0.05, 0.2, 0.5, 0.9]))
    spread = draw(st.sampled_from([0.0, 1.0, 4.0, 12.0]))  # 12: caps and floors
    w = torch.exp(torch.randn(n, generator=g, dtype=torch.float64) * spread)
    k = s * n
    probs = reference.capped_projection(w, k)
    active = draw(st.integers(0, n))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:active]] = True
    exponent = draw(st.floats(-6.0, 4.0))  # norms ~ 10^exponent: 1e-6 .. 1e4
    norms = (torch.rand(active, generator=g, dtype=torch.float64) * 10**exponent).float()
    if active and draw(st.integers(0, 9)) == 0:
        norms[0] = 0.0
    return probs, mask, norms, k


def bandit(fn, probs, mask, norms, k, alpha=1e-3, normalize=False, found_inf=None):
    p = probs.clone()
    fn(p, mask, norms, found_inf, alpha, k, normalize)
    return p


@SETTINGS
@given(case=bandit_cases(), alpha=st.sampled_from([1e-4, 1e-3, 1e-2, 0.1]),
       normalize=st.booleans(), found_inf=st.sampled_from([None, 0.0, 1.0]))
def test_bandit_update(case, alpha, normalize, found_inf):
    probs, mask, norms, k = case
    fi = None if found_inf is None else torch.tensor(found_inf)
    out = bandit(ops.bandit_update_, probs, mask, norms, k, alpha, normalize, fi)
    if found_inf or not bool(mask.any()):
        assert torch.equal(out, probs)
        return
    ref = bandit(reference.bandit_update_, probs, mask, norms, k, alpha, normalize, fi)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-300)
    n = probs.numel()
    assert bool(((out >= reference.PROB_FLOOR) & (out <= 1.0)).all())
    floored = out <= reference.PROB_FLOOR
    if not bool(floored.any()):  # nothing clipped: the projection keeps sum = k exactly
        assert abs(float(out.sum()) - k) <= 1e-9 * k
    else:  # the floor adds at most 1e-8 per arm
        assert float(out.sum()) <= k + 1e-8 * n + 1e-9 * k
    # inactive arms keep w = p: those left free (not capped, not floored) are all
    # rescaled by the same constant
    free = ~mask & (out < 1.0) & ~floored & (probs > reference.PROB_FLOOR)
    if int(free.sum()) > 1:
        ratio = out[free] / probs[free]
        torch.testing.assert_close(ratio, ratio[0].expand_as(ratio), rtol=1e-12, atol=0)


@SETTINGS
@given(case=bandit_cases(), e=st.integers(-20, 13))
def test_normalized_loss_is_scale_free(case, e):
    """normalize=True: scaling every norm by 2^e (exact in fp32) changes nothing, bit for bit,
    over 1e-6 .. 1e4."""
    probs, mask, norms, k = case
    norms = norms.clamp_min(1e-3) if norms.numel() else norms  # no fp32 denormals at 2^-20
    scaled = norms * 2.0**e
    a = bandit(ops.bandit_update_, probs, mask, norms, k, 1e-2, True)
    b = bandit(ops.bandit_update_, probs, mask, scaled, k, 1e-2, True)
    assert torch.equal(a, b)


@SETTINGS
@given(case=bandit_cases(), exponent=st.floats(-2.0, 1.0), alpha=st.sampled_from([1e-3, 1e-2]))
def test_normalized_loss_has_the_authors_direction(case, exponent, alpha):
    """At moderate scales the normalised update is the authors' update with alpha divided by
    mean(r)^2: the log-weight changes log(w/p) of the active arms are exactly proportional,
    so both rank the arms the same way."""
    probs, mask, norms, k = case
    if int(mask.sum()) < 2:
        return
    norms = (norms / norms.double().mean().clamp_min(1e-30).float() * 10**exponent).float()
    mean = float(norms.double().mean())
    if mean == 0:
        return
    w_auth = reference.bandit_weights(probs, mask, norms, alpha)
    w_norm = reference.bandit_weights(probs, mask, norms, alpha, normalize=True)
    la = torch.log(w_auth[mask] / probs[mask])
    ln = torch.log(w_norm[mask] / probs[mask])
    if not bool(torch.isfinite(la).all() and torch.isfinite(ln).all()):
        return  # exp underflowed: outside "moderate"
    torch.testing.assert_close(ln * mean**2, la, rtol=1e-9, atol=1e-300)
    order = torch.argsort(ln)  # the same ranking, up to ties within rounding
    assert bool((la[order].diff() >= -1e-9 * float(la.abs().max())).all())


def simulate(scale, normalize, alpha=1e-3, steps=300, n=105, s=0.2, seed=0):
    """The bandit through the kernels, on norms r_i = scale * b_i * noise with fixed per-arm
    factors b_i ~ logN(0, 1) and noise ~ logN(0, 0.3): benchmarks/bandit_scale.py's model.
    Returns the final p, the mean number of starved arms (p < 1e-3) over the second half,
    and the Spearman correlation of p with b."""
    g = torch.Generator().manual_seed(seed)
    base = torch.exp(torch.randn(n, generator=g, dtype=torch.float64))
    probs = torch.full((n,), s, dtype=torch.float64)
    starved = []
    for t in range(steps):
        mask = ops.sample_mask(probs, g)
        noise = torch.exp(0.3 * torch.randn(n, generator=g, dtype=torch.float64))
        norms = (scale * base * noise)[mask].float()
        ops.bandit_update_(probs, mask, norms, None, alpha, s * n, normalize)
        assert abs(float(probs.sum()) - s * n) <= 1e-8 * n  # the projection keeps sum = k
        if t >= steps // 2:
            starved.append(int((probs < 1e-3).sum()))
    ranks = torch.stack([probs.argsort().argsort().double(), base.argsort().argsort().double()])
    return probs, sum(starved) / len(starved), float(torch.corrcoef(ranks)[0, 1])


def test_authors_loss_collapses_at_large_norms_and_normalize_does_not():
    """benchmarks/bandit_scale.py measures 1e-6 .. 1e4 (results/bandit_scale.png); here the
    ends, at powers of two so that scaling is exact in fp32. The authors' loss at norms ~1e4
    (2^13) is a winner-take-all lottery: each step sends the sampled arms but one to the 1e-8
    floor; over half the arms are starved (p < 1e-3) and p no longer follows the norms. At
    ~1e-6 (2^-20) it learns nothing (p stays uniform). normalize_loss runs the same
    trajectory, bit for bit, at both scales, with fewer than half the arms starved; with a
    smaller alpha it stays in the authors' best regime (no arm starved, p follows the norms)."""
    n = 105
    big, tiny = 2.0**13, 2.0**-20
    p_auth, starved_auth, rho_auth = simulate(big, normalize=False)
    assert starved_auth >= n / 2 and rho_auth < 0.2
    p_inert, starved_inert, _ = simulate(tiny, normalize=False)
    torch.testing.assert_close(p_inert, torch.full_like(p_inert, 0.2), rtol=1e-6, atol=0)
    p_norm, starved_norm, _ = simulate(big, normalize=True)
    assert starved_norm < n / 2
    assert torch.equal(simulate(tiny, normalize=True)[0], p_norm), "normalize_loss is not scale-free"
    p_small, starved_small, rho_small = simulate(big, normalize=True, alpha=1e-5)
    assert starved_small == 0 and rho_small > 0.5
    assert torch.equal(simulate(tiny, normalize=True, alpha=1e-5)[0], p_small)


# ----- sample_mask -----


@st.composite
def prob_vectors(draw, max_arms=300):
    n = draw(st.integers(0, max_arms))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    kind = draw(st.sampled_from(["uniform", "uniform", "tiny", "zeros_ones", "nan", "all_nan"]))
    p = torch.rand(n, generator=g, dtype=torch.float64)
    if kind == "tiny":  # empty draws are the rule: exercises the resampling
        p = p * 1e-4
    elif kind == "zeros_ones":
        p = torch.where(p < 0.5, torch.zeros_like(p), torch.where(p < 0.8, torch.ones_like(p), p))
    elif kind == "nan" and n:
        p[torch.randint(0, n, (max(1, n // 3),), generator=g)] = math.nan
        p = torch.where(torch.isnan(p), p, p * 1e-9)
    elif kind == "all_nan":
        p = torch.full((n,), math.nan, dtype=torch.float64)
    return p


@SETTINGS
@given(probs=prob_vectors(), seed=st.integers(0, 2**31))
def test_sample_mask(probs, seed):
    a = ops.sample_mask(probs, torch.Generator().manual_seed(seed))
    b = reference.sample_mask(probs, torch.Generator().manual_seed(seed))
    assert a.dtype == torch.bool and a.shape == probs.shape
    assert torch.equal(a, b), "kernel and reference drew different masks from one stream"
    if probs.numel() == 0:
        return
    assert int(a.sum()) >= 1
    assert bool(a[probs == 1.0].all())
    if bool(a[probs == 0.0].any()) or bool(a[torch.isnan(probs)].any()):
        assert int(a.sum()) == 1  # only through the fallback arm


@pytest.mark.parametrize("n", [1, 7, 300])
def test_sample_mask_stream_continues(n):
    """Consecutive calls on one generator: kernel and reference stay in step."""
    probs = torch.rand(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64) * 0.3
    ga, gb = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for _ in range(20):
        assert torch.equal(ops.sample_mask(probs, ga), reference.sample_mask(probs, gb))
    assert torch.equal(ga.get_state(), gb.get_state())


# ----- determinism and resume -----

DET_BASES = {
    "adamw_fused": (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.05)),
    "sgd_momentum": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "rmsprop": (torch.optim.RMSprop, dict(lr=1e-3, momentum=0.5)),
}


def _train_setup(cfg, model_seed=0):
    from conftest import tiny_mlp

    model = tiny_mlp(seed=model_seed, depth=5)
    params = list(model.parameters())
    groups = ([{"params": params[:-2]}, {"params": params[-2:], "always_active": True}]
              if cfg["always_active"] else [{"params": params}])
    cls, kw = DET_BASES[cfg["base"]]
    opt_kw = dict(sparsity=cfg["sparsity"], normalize_loss=cfg["normalize"],
                  adaptive=cfg["adaptive"], mask_mode=cfg["mask_mode"], **kw)
    return model, groups, cls, opt_kw


def _steps(model, opt, start, stop):
    import torch.nn.functional as F
    from conftest import batch

    for i in range(start, stop):
        x, y = batch(i % 4)

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)


DET_CONFIGS = st.fixed_dictionaries(dict(
    base=st.sampled_from(list(DET_BASES)), sparsity=st.sampled_from([0.2, 0.5, 1.0]),
    always_active=st.booleans(), normalize=st.booleans(), adaptive=st.booleans(),
    mask_mode=st.sampled_from(["requires_grad", "grad"])))


@settings(SETTINGS, max_examples=min(SETTINGS.max_examples, 15))
@given(cfg=DET_CONFIGS, seed=st.integers(0, 2**31), stop=st.integers(0, 5),
       through_file=st.booleans())
def test_same_seed_same_bits_and_resume_equals_not_stopping(cfg, seed, stop, through_file):
    """Two runs with one seed are bit-identical, and a run checkpointed after ``stop``
    steps and resumed in a fresh model and optimizer (other init, other seed) equals the
    run that never stopped: weights, base-optimizer state, probabilities, mask, generator."""
    import copy
    import io

    import slsam

    total = 6
    runs = []
    for _ in range(2):
        model, groups, cls, kw = _train_setup(cfg)
        opt = slsam.SLSAM(groups, cls, seed=seed, **kw)
        _steps(model, opt, 0, total)
        runs.append((model, opt))
    (m1, o1), (m2, o2) = runs
    for a, b in zip(m1.parameters(), m2.parameters(), strict=False):
        assert torch.equal(a, b)
    assert torch.equal(o1.probs, o2.probs) and torch.equal(o1.mask, o2.mask)

    model, groups, cls, kw = _train_setup(cfg)
    opt = slsam.SLSAM(groups, cls, seed=seed, **kw)
    _steps(model, opt, 0, stop)
    ck = {"model": copy.deepcopy(model.state_dict()), "opt": opt.state_dict()}
    if through_file:
        buf = io.BytesIO()
        torch.save(ck, buf)
        buf.seek(0)
        ck = torch.load(buf, weights_only=True)
    else:
        ck = copy.deepcopy(ck)
    del model, opt
    model, groups, cls, kw = _train_setup(cfg, model_seed=99)
    model.load_state_dict(ck["model"])
    opt = slsam.SLSAM(groups, cls, seed=seed + 1, **kw)
    opt.load_state_dict(ck["opt"])
    _steps(model, opt, stop, total)
    for a, b in zip(m1.parameters(), model.parameters(), strict=False):
        assert torch.equal(a, b), "resumed run differs"
    assert torch.equal(o1.probs, opt.probs) and torch.equal(o1.mask, opt.mask)
    assert torch.equal(o1._bandit.generator.get_state(), opt._bandit.generator.get_state())
    for p1, p2 in zip(m1.parameters(), model.parameters(), strict=False):
        s1, s2 = o1.state.get(p1, {}), opt.state.get(p2, {})
        assert s1.keys() == s2.keys()
        for key in s1:
            if isinstance(s1[key], torch.Tensor):
                assert torch.equal(s1[key].cpu(), s2[key].cpu()), key


def test_global_seed_makes_unseeded_runs_reproducible():
    import slsam

    out = []
    for _ in range(2):
        torch.manual_seed(1234)
        cfg = dict(base="sgd_momentum", sparsity=0.2, always_active=True, normalize=False,
                   adaptive=False, mask_mode="requires_grad")
        model, groups, cls, kw = _train_setup(cfg)
        opt = slsam.SLSAM(groups, cls, **kw)  # seed=None: drawn from torch's global RNG
        _steps(model, opt, 0, 4)
        out.append(([p.detach().clone() for p in model.parameters()], opt.probs))
    assert all(torch.equal(a, b) for a, b in zip(out[0][0], out[1][0], strict=False))
    assert torch.equal(out[0][1], out[1][1])
