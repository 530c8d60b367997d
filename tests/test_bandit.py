"""The EXP3 update, the capped projection and mask sampling against slsam.reference; the
Bandit class that holds their state."""

from __future__ import annotations

import pytest
import torch

from slsam import ops, reference
from slsam.bandit import Bandit


def authors_bandit_weights(probs: torch.Tensor, mask: torch.Tensor, norms: torch.Tensor,
                           alpha: float, p_min: float) -> torch.Tensor:
    """The authors' literal loss, l = -(r/p)^2 + (L/p_min)^2, centred by its min.

    Kept to show why the kernels use the cancelled form: in fp64 this agrees
    with ``reference.bandit_weights`` only while (L/p_min)^2 is small enough
    for the subtraction to keep the differences.
    """
    p = probs.double()
    r = torch.zeros_like(p)
    r[mask] = norms.double()
    big_l = r[mask].max()
    loss = -((r / p) ** 2) + (big_l / p_min) ** 2
    lhat = loss - loss[mask].min()
    return torch.where(mask, p * torch.exp(-alpha * lhat / p), p)


def case(n, active, seed=0, norm_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, generator=g, dtype=torch.float64) * 0.5 + 0.05
    probs = reference.capped_projection(probs, 0.3 * n)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:active]] = True
    norms = (torch.rand(active, generator=g) * norm_scale).float()
    return probs, mask, norms


def update(fn, probs, mask, norms, k, normalize=False, found_inf=None, alpha=1e-3):
    p = probs.clone()
    fn(p, mask, norms, found_inf, alpha, k, normalize)
    return p


CASES = {
    "typical": dict(n=105, active=21),
    "single_active": dict(n=50, active=1),
    "all_active": dict(n=30, active=30),
    "many_arms": dict(n=5000, active=1000),
    "big_norms": dict(n=105, active=21, norm_scale=1e3),
}


@pytest.mark.parametrize("normalize", [False, True], ids=["authors", "normalized"])
@pytest.mark.parametrize("name", list(CASES))
def test_bandit_update_matches_reference(name, normalize):
    probs, mask, norms = case(**CASES[name])
    k = 0.3 * probs.numel()
    out = update(ops.bandit_update_, probs, mask, norms, k, normalize)
    ref = update(reference.bandit_update_, probs, mask, norms, k, normalize)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-15)
    # sum = k, up to the 1e-8 floor that arms whose weight underflowed are clipped to
    assert abs(float(out.sum()) - k) <= 1e-8 * probs.numel() + 1e-9 * k
    assert bool(((out >= 1e-8) & (out <= 1.0)).all())


def test_ties_and_zero_norms():
    probs = torch.full((10,), 0.3, dtype=torch.float64)
    mask = torch.tensor([True] * 4 + [False] * 6)
    k = 3.0
    tied = torch.full((4,), 2.0)
    out = update(ops.bandit_update_, probs, mask, tied, k)
    torch.testing.assert_close(out, update(reference.bandit_update_, probs, mask, tied, k))
    torch.testing.assert_close(out, probs, rtol=1e-14, atol=0)  # equal ratios: lhat = 0 for all
    zeros = torch.zeros(4)
    out = update(ops.bandit_update_, probs, mask, zeros, k)
    torch.testing.assert_close(out, probs, rtol=1e-14, atol=0)


def test_bigger_gradient_gains_probability():
    probs = torch.full((6,), 0.5, dtype=torch.float64)
    mask = torch.tensor([True, True, True, False, False, False])
    out = update(ops.bandit_update_, probs, mask, torch.tensor([1.0, 5.0, 3.0]), 3.0, alpha=1e-2)
    assert out[1] > out[2] > out[0]
    assert out[1] > 0.5 and out[0] < 0.5
    torch.testing.assert_close(out[3:], out[3:].mean().expand(3))  # inactive: rescaled alike


def test_found_inf_skips_update():
    probs, mask, norms = case(40, 8)
    out = update(ops.bandit_update_, probs, mask, norms, 12.0, found_inf=torch.tensor(True))
    assert torch.equal(out, probs)


def test_norm_count_mismatch_is_refused():
    probs, mask, norms = case(40, 8)
    with pytest.raises(RuntimeError, match="active arms"):
        update(ops.bandit_update_, probs, mask, norms[:5], 12.0)


def test_cancelled_loss_equals_authors_form_in_fp64():
    """The kernel drops (L/p_min)^2, which cancels; with moderate norms the literal
    authors' form agrees in fp64, so the cancellation changes nothing but rounding."""
    probs, mask, norms = case(105, 21, norm_scale=1e-2)
    a = reference.bandit_weights(probs, mask, norms, 1e-3)
    b = authors_bandit_weights(probs, mask, norms, 1e-3, p_min=1e-3)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=0)


@pytest.mark.parametrize("k", [0.5, 1.0, 3.7, 10.0, 19.0, 20.0])
def test_capped_projection_properties(k):
    w = torch.rand(20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    w[3] = 50.0  # forces a cap
    p = reference.capped_projection(w, k)
    assert float(p.sum()) == pytest.approx(min(k, 20.0), rel=1e-12)
    assert bool((p <= 1.0).all())
    free = p < 1.0
    if int(free.sum()) > 1:  # uncapped arms stay proportional to w
        ratio = p[free] / w[free]
        torch.testing.assert_close(ratio, ratio[0].expand_as(ratio))


def test_sample_mask_reproducible_and_never_empty():
    probs = torch.full((100,), 0.2, dtype=torch.float64)
    a = ops.sample_mask(probs, torch.Generator().manual_seed(3))
    b = ops.sample_mask(probs, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    tiny = torch.full((3,), 1e-6, dtype=torch.float64)  # empty draws are the rule here
    for s in range(20):
        assert int(ops.sample_mask(tiny, torch.Generator().manual_seed(s)).sum()) >= 1


def test_sample_mask_frequencies():
    probs = torch.linspace(0.05, 0.95, 10, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    counts = torch.stack([ops.sample_mask(probs, gen) for _ in range(4000)]).double().mean(0)
    # 4000 Bernoulli draws: std <= 0.008; resampling of empty draws is negligible here
    torch.testing.assert_close(counts, probs, rtol=0, atol=0.035)


def test_sample_mask_matches_reference_stream():
    """Same generator, same draws: the kernel consumes the CPU generator like torch.rand."""
    probs = torch.rand(257, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a = ops.sample_mask(probs, torch.Generator().manual_seed(9))
    b = reference.sample_mask(probs, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_sample_mask_nan_probs_terminates():
    probs = torch.full((5,), float("nan"), dtype=torch.float64)
    m = ops.sample_mask(probs, torch.Generator().manual_seed(0))
    assert int(m.sum()) == 1


# ----- slsam.bandit.Bandit: the state around the kernels -----


def make_bandit(n=40, sparsity=0.3, seed=5, **kw):
    args = dict(alpha=1e-3, p_min=1e-3, normalize_loss=False) | kw
    return Bandit(n, sparsity, seed=seed, device=torch.device("cpu"), **args)


def test_bandit_starts_uniform_at_the_sparsity():
    b = make_bandit(40, 0.3)
    assert b.n == 40 and b.k == pytest.approx(12.0) and b.sparse
    assert b.probs.dtype == torch.float64 and torch.equal(b.probs, torch.full((40,), 0.3,
                                                                              dtype=torch.float64))
    assert not make_bandit(10, 1.0).sparse


def test_bandit_sample_is_the_kernel_on_its_generator():
    b = make_bandit(seed=7)
    expected = ops.sample_mask(b.probs, torch.Generator().manual_seed(7))
    assert torch.equal(b.sample(), expected)


def test_dense_bandit_samples_every_arm_without_drawing():
    b = make_bandit(10, 1.0, seed=3)
    state = b.generator.get_state()
    assert bool(b.sample().all()) and torch.equal(b.generator.get_state(), state)
    probs = b.probs.clone()
    b.update(torch.ones(10, dtype=torch.bool), torch.rand(10), None)
    assert torch.equal(b.probs, probs)  # nothing to learn


@pytest.mark.parametrize("normalize", [False, True])
def test_bandit_update_is_the_reference_update(normalize):
    b = make_bandit(normalize_loss=normalize)
    mask = b.sample()
    norms = torch.rand(int(mask.sum()), generator=torch.Generator().manual_seed(1))
    expected = update(reference.bandit_update_, b.probs, mask, norms, b.k, normalize)
    b.update(mask, norms, None)
    torch.testing.assert_close(b.probs, expected, rtol=1e-12, atol=1e-15)
    before = b.probs.clone()
    b.update(mask, norms, torch.tensor(True))
    assert torch.equal(b.probs, before)


def test_bandit_seed_none_follows_torch_manual_seed():
    torch.manual_seed(0)
    a = make_bandit(seed=None).sample()
    torch.manual_seed(0)
    assert torch.equal(make_bandit(seed=None).sample(), a)


def test_bandit_state_dict_round_trip_continues_the_draws():
    a = make_bandit(seed=1)
    for _ in range(3):
        m = a.sample()
        a.update(m, torch.rand(int(m.sum())), None)
    mask = a.sample()
    sd = {**a.state_dict(), "mask": mask}
    b = make_bandit(seed=2)
    b.load_state_dict(sd)
    assert torch.equal(b.probs, a.probs)
    assert torch.equal(b.sample(), a.sample())
    assert {"probs", "generator", "sparsity", "alpha", "p_min", "normalize_loss"} <= set(sd)


@pytest.mark.parametrize("bad", ["size", "nan", "zero", "mask_size"])
def test_bandit_refuses_bad_state_and_keeps_its_own(bad):
    b = make_bandit(20)
    sd = {**make_bandit(20).state_dict(), "mask": torch.ones(20, dtype=torch.bool)}
    if bad == "size":
        sd = {**make_bandit(21).state_dict(), "mask": torch.ones(21, dtype=torch.bool)}
    elif bad == "nan":
        sd["probs"][0] = float("nan")
    elif bad == "zero":
        sd["probs"][0] = 0.0
    else:
        sd["mask"] = torch.ones(3, dtype=torch.bool)
    probs, gen = b.probs.clone(), b.generator.get_state()
    with pytest.raises(ValueError, match="arms|corrupted"):
        b.load_state_dict(sd)
    assert torch.equal(b.probs, probs) and torch.equal(b.generator.get_state(), gen)
