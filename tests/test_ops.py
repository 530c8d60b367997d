"""Every operator's CPU kernel against slsam.reference, over dtypes, sizes and layouts."""

from __future__ import annotations

import pytest
import torch
from conftest import DTYPE_IDS, DTYPES, assert_within_ref_error

from slsam import ops, reference

SIZES = {
    "empty_tensor": [(0,), (3, 0)],
    "one": [(1,)],
    "odd": [(1023,), (65537,), (3, 5, 7)],  # 65537 crosses a kernel chunk boundary
    "mixed_empty": [(5,), (0,), (17, 3)],
    "many": [(int(s),) for s in torch.randint(1, 60, (1000,), generator=torch.Generator().manual_seed(0))],
    "large": [(1 << 21, 3)],
}


def make(shapes, dtype, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g, dtype=torch.float64) * scale).to(dtype) for s in shapes]


def f64(ts):
    return [t.double() for t in ts]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sizes", list(SIZES), ids=list(SIZES))
def test_grad_norms_matches_reference(dtype, sizes):
    grads = make(SIZES[sizes], dtype)
    norms, total = ops.grad_norms(grads)
    ref_norms, ref_total = reference.grad_norms(grads)
    true_norms, true_total = reference.grad_norms(f64(grads))
    assert norms.dtype == torch.float32 and norms.shape == (len(grads),) and total.shape == ()
    assert_within_ref_error([norms, total], [ref_norms, ref_total], [true_norms, true_total],
                            torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_grad_norms_adaptive_matches_reference(dtype):
    grads = make(SIZES["odd"], dtype, 1)
    weights = make(SIZES["odd"], dtype, 2)
    out = ops.grad_norms(grads, weights)
    ref = reference.grad_norms(grads, weights)
    truth = reference.grad_norms(f64(grads), f64(weights))
    assert_within_ref_error(list(out), list(ref), list(truth), torch.float32)


def test_grad_norms_empty_list_and_determinism():
    norms, total = ops.grad_norms([])
    assert norms.shape == (0,) and float(total) == 0.0
    grads = make(SIZES["large"] + SIZES["many"], torch.float32)
    a = ops.grad_norms(grads)
    for threads in (1, 2):
        prev = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            b = ops.grad_norms(grads)
        finally:
            torch.set_num_threads(prev)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "norms depend on threads"


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sizes", list(SIZES), ids=list(SIZES))
def test_perturb_matches_reference(dtype, sizes, adaptive):
    params, grads = make(SIZES[sizes], dtype, 1), make(SIZES[sizes], dtype, 2)
    _, total = reference.grad_norms(f64(grads))
    rho = 0.05

    def run(fn, ps, gs):
        ps = [p.clone() for p in ps]
        bks = [torch.empty_like(p) for p in ps]
        fn(ps, gs, bks, total, rho, adaptive)
        return ps, bks

    out, out_bk = run(ops.perturb_, params, grads)
    ref, _ = run(reference.perturb_, params, grads)
    truth, _ = run(reference.perturb_, f64(params), f64(grads))
    for b, p in zip(out_bk, params, strict=False):
        assert torch.equal(b, p), "backup is not an exact copy"
    assert_within_ref_error(out, ref, truth, dtype)


def test_perturb_nonfinite_norm_moves_nothing():
    params, grads = make([(10,), (3, 4)], torch.float32, 1), make([(10,), (3, 4)], torch.float32, 2)
    before = [p.clone() for p in params]
    for bad in (float("nan"), float("inf")):
        ops.perturb_(params, grads, [torch.empty_like(p) for p in params], torch.tensor(bad), 0.05)
        for p, b in zip(params, before, strict=False):
            assert torch.equal(p, b)


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=DTYPE_IDS + ["fp64"])
@pytest.mark.parametrize("sizes", list(SIZES), ids=list(SIZES))
def test_restore_is_exact(dtype, sizes):
    params, backups = make(SIZES[sizes], dtype, 1), make(SIZES[sizes], dtype, 2)
    ops.restore_(params, backups)
    for p, b in zip(params, backups, strict=False):
        assert torch.equal(p, b)


def adamw_inputs(shapes, dtype, seed=0):
    params = make(shapes, dtype, seed)
    backups = make(shapes, dtype, seed + 1)
    grads = make(shapes, dtype, seed + 2)
    m = make(shapes, dtype, seed + 3, 0.1)
    v = [t.abs() for t in make(shapes, dtype, seed + 4, 0.01)]
    steps = [torch.tensor(float(i % 7)) for i in range(len(shapes))]
    return params, backups, grads, m, v, steps


HYPER = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8)


def run_adamw(fn, inputs, cast=None, **kw):
    ins = [[t.clone() if cast is None else t.to(cast) for t in group] for group in inputs]
    ins[5] = [s.clone() for s in inputs[5]]
    fn(*ins, **HYPER, **kw)
    return ins


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sizes", list(SIZES), ids=list(SIZES))
def test_restore_adamw_matches_reference(dtype, sizes):
    inputs = adamw_inputs(SIZES[sizes], dtype)
    out = run_adamw(ops.restore_adamw_, inputs)
    ref = run_adamw(reference.restore_adamw_, inputs)
    truth = run_adamw(reference.restore_adamw_, inputs, torch.float64)
    for i in (0, 3, 4):  # params, exp_avgs, exp_avg_sqs
        assert_within_ref_error(out[i], ref[i], truth[i], dtype)
    for s_out, s_in in zip(out[5], inputs[5], strict=False):
        assert float(s_out) == float(s_in) + 1


def test_restore_adamw_fp32_equals_torch_adamw():
    """Fused restore+AdamW equals copying the backup back, then torch.optim.AdamW."""
    shapes = [(33, 17), (5,), (1000,)]
    params, backups, grads, *_ = adamw_inputs(shapes, torch.float32)
    ref = [torch.nn.Parameter(b.clone()) for b in backups]
    opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.01, foreach=False)
    ms = [torch.zeros_like(p) for p in params]
    vs = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    for it in range(3):
        for p, g in zip(ref, grads, strict=False):
            p.grad = g * (it + 1)
        opt.step()
        ops.restore_adamw_(params, backups, [g * (it + 1) for g in grads], ms, vs, steps,
                           **HYPER)
        backups = [p.clone() for p in params]
    # torch rounds in another order (addcdiv: (value * m) / denom): a few ulp apart
    for p, r in zip(params, ref, strict=False):
        ulp = torch.finfo(torch.float32).eps * float(r.detach().abs().max())
        torch.testing.assert_close(p, r.detach(), rtol=0, atol=4 * ulp)


def test_restore_adamw_found_inf_only_restores():
    inputs = adamw_inputs([(10,), (4, 4)], torch.float32)
    out = run_adamw(ops.restore_adamw_, inputs, found_inf=torch.tensor(True))
    for p, b in zip(out[0], inputs[1], strict=False):
        assert torch.equal(p, b)
    for i in (3, 4, 5):
        for a, b in zip(out[i], inputs[i], strict=False):
            assert torch.equal(a, b), "state changed on a skipped step"


def test_restore_adamw_grad_scale_unscales():
    inputs = adamw_inputs([(10,), (4, 4)], torch.float32)
    scaled = list(inputs)
    scaled[2] = [g * 1024 for g in inputs[2]]
    a = run_adamw(ops.restore_adamw_, inputs)
    b = run_adamw(ops.restore_adamw_, scaled, grad_scale=torch.tensor(1024.0))
    for x, y in zip(a[0], b[0], strict=False):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


# ----- layouts -----


def test_channels_last_and_mismatched_strides():
    p = torch.randn(4, 3, 5, 6).to(memory_format=torch.channels_last)
    g_cl = torch.randn(4, 3, 5, 6).to(memory_format=torch.channels_last)
    g_contig = g_cl.contiguous()  # same values, other strides
    _, total = ops.grad_norms([g_cl])
    outs = []
    for g in (g_cl, g_contig):
        q, bk = p.clone(), torch.empty_like(p)
        ops.perturb_([q], [g], [bk], total, 0.1)
        outs.append(q)
        assert torch.equal(bk, p)
    ref = p.clone()
    reference.perturb_([ref], [g_cl], [torch.empty_like(p)], total, 0.1)
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0], ref)
    n1, _ = ops.grad_norms([g_cl])
    n2, _ = ops.grad_norms([g_contig])
    torch.testing.assert_close(n1, n2)


def test_non_dense_param_is_refused_clearly():
    base = torch.randn(10, 10)
    view = base[:, ::2]
    with pytest.raises(RuntimeError, match="not dense"):
        ops.perturb_([view], [torch.randn(10, 5)], [torch.empty(10, 5)], torch.tensor(1.0), 0.1)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda: torch.randn(6), "shape"),
        (lambda: torch.randn(5, dtype=torch.float64), "dtype"),
        (lambda: torch.randn(5).to_sparse(), "sparse"),
        (lambda: torch.randn(5, dtype=torch.complex64), "dtype"),
    ],
    ids=["shape", "dtype", "sparse", "complex"],
)
def test_bad_grads_are_refused(bad, match):
    p = torch.randn(5)
    before = p.clone()
    with pytest.raises((RuntimeError, ValueError), match=match):
        ops.perturb_([p], [bad()], [torch.empty_like(p)], torch.tensor(1.0), 0.1)
    assert torch.equal(p, before)


def test_list_length_mismatch_is_refused():
    with pytest.raises(RuntimeError, match="backups has 1 tensors but params has 2"):
        ops.restore_([torch.randn(2), torch.randn(3)], [torch.randn(2)])


# ----- opcheck: schemas, fake implementations, aot dispatch -----

OPCHECK_CASES = {
    "grad_norms": lambda: (torch.ops.slsam.grad_norms.default, ([torch.randn(5), torch.randn(2, 3)],)),
    "grad_norms_weights": lambda: (torch.ops.slsam.grad_norms.default,
                                   ([torch.randn(5)], [torch.randn(5)])),
    "perturb_": lambda: (torch.ops.slsam.perturb_.default,
                         ([torch.randn(5), torch.randn(3)], [torch.randn(5), torch.randn(3)],
                          [torch.empty(5), torch.empty(3)], torch.tensor(2.0), 0.05, False)),
    "restore_": lambda: (torch.ops.slsam.restore_.default, ([torch.randn(5)], [torch.randn(5)])),
    "restore_adamw_": lambda: (
        torch.ops.slsam.restore_adamw_.default,
        ([torch.randn(5)], [torch.randn(5)], [torch.randn(5)], [torch.zeros(5)],
         [torch.zeros(5)], [torch.tensor(0.0)], 1e-3, 0.9, 0.999, 0.01, 1e-8, None, None)),
    "bandit_update_": lambda: (
        torch.ops.slsam.bandit_update_.default,
        (torch.full((6,), 0.5, dtype=torch.float64),
         torch.tensor([True, False, True, False, True, False]), torch.rand(3), None, 1e-3, 3.0,
         False)),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck(case):
    op, args = OPCHECK_CASES[case]()
    torch.library.opcheck(op, args)


def test_opcheck_sample_mask():
    # Random: eager and traced runs draw different masks, so skip the output
    # comparison of the aot_dispatch tests; the schema and fake are still checked.
    probs = torch.full((10,), 0.3, dtype=torch.float64)
    torch.library.opcheck(torch.ops.slsam.sample_mask.default,
                          (probs, torch.Generator().manual_seed(0)),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


def test_ops_compile_with_fullgraph():
    @torch.compile(fullgraph=True, backend="aot_eager")
    def norms(gs):
        return torch.ops.slsam.grad_norms(gs)

    gs = [torch.randn(7), torch.randn(3, 3)]
    n1, t1 = norms(gs)
    n2, t2 = ops.grad_norms(gs)
    assert torch.equal(n1, n2) and torch.equal(t1, t2)


def test_aliased_operands_are_refused():
    p = torch.randn(8)
    before = p.clone()
    with pytest.raises(RuntimeError, match="same memory"):
        ops.perturb_([p], [torch.randn(8)], [p], torch.tensor(1.0), 0.1)
    m = torch.zeros(8)
    with pytest.raises(RuntimeError, match="same memory"):
        ops.restore_adamw_([p], [torch.randn(8)], [torch.randn(8)], [m], [m], [torch.tensor(0.0)],
                           **HYPER)
    assert torch.equal(p, before)


@pytest.mark.parametrize(
    "step, match",
    [
        (torch.tensor(0, dtype=torch.int64), r"steps\[0\] must be float32 or float64"),
        (torch.zeros(2), r"steps\[0\] must be a one-element tensor"),
    ],
    ids=["int64", "two-elements"],
)
def test_bad_step_counts_are_refused(step, match):
    # The same check runs in the CPU and the CUDA kernel (csrc/checks.h).
    p = torch.randn(8)
    m, v = torch.zeros(8), torch.zeros(8)
    before = p.clone()
    with pytest.raises(RuntimeError, match=match):
        ops.restore_adamw_([p], [torch.randn(8)], [torch.randn(8)], [m], [v], [step], **HYPER)
    assert torch.equal(p, before) and not m.any() and not v.any()
