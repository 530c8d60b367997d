"""Every operator's kernel against slsam.reference, over dtypes, sizes and layouts.

Each test takes the ``device`` fixture (tests/conftest.py): it runs on the CPU
kernels always and on the CUDA kernels where a GPU and a CUDA build are
present (skipped otherwise). On CUDA the results are also compared with the
CPU kernels'. Tolerances: a kernel's error against an fp64 truth must stay
within twice the plain reference's error in the same precision (plus one
rounding of the output), see ``assert_within_ref_error``.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    CHUNK,
    DTYPE_IDS,
    DTYPES,
    HYPER,
    SIZES,
    adamw_inputs,
    assert_within_ref_error,
    cpu,
    f64,
    make,
    misaligned,
    offsets_off_16_bytes,
    run_adamw,
)

from slsam import ops, reference

# ----------------------------------------------------------------- grad_norms


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sizes", list(SIZES), ids=list(SIZES))
def test_grad_norms_matches_reference(device, dtype, sizes):
    grads = make(SIZES[sizes], dtype, device=device)
    norms, total = ops.grad_norms(grads)
    assert norms.device.type == device and total.device.type == device
    assert norms.dtype == torch.float32 and norms.shape == (len(grads),) and total.shape == ()
    ref = reference.grad_norms(grads)
    truth = reference.grad_norms(f64(grads))
    assert_within_ref_error([norms, total], list(ref), list(truth), torch.float32)
    if device != "cpu":
        assert_within_ref_error([norms.cpu(), total.cpu()], list(ops.grad_norms(cpu(grads))),
                                cpu(truth), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_grad_norms_adaptive_matches_reference(device, dtype):
    shapes = SIZES["odd"] + SIZES["mixed_empty"]
    grads = make(shapes, dtype, 1, device=device)
    weights = make(shapes, dtype, 2, device=device)
    out = ops.grad_norms(grads, weights)
    ref = reference.grad_norms(grads, weights)
    truth = reference.grad_norms(f64(grads), f64(weights))
    assert_within_ref_error(list(out), list(ref), list(truth), torch.float32)


def test_grad_norms_fp64(device):
    grads = make(SIZES["odd"], torch.float64, device=device)
    norms, total = ops.grad_norms(grads)
    ref_norms, ref_total = reference.grad_norms(grads)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-6, atol=0)
    torch.testing.assert_close(total, ref_total, rtol=1e-6, atol=0)


def test_grad_norms_mixed_dtypes_in_one_list(device):
    """CUDA: one launch per dtype; norms must land at their own list positions."""
    shapes = SIZES["many"][:400] + [(CHUNK * 3 + 5,)]
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    grads = [t.to(dtypes[i % 4]) for i, t in enumerate(make(shapes, torch.float64, 3, device=device))]
    norms, total = ops.grad_norms(grads)
    truth = cpu(reference.grad_norms(f64(grads)))
    ref = reference.grad_norms(grads)
    assert_within_ref_error([norms.cpu(), total.cpu()], cpu(ref), truth, torch.float32)
    if device != "cpu":  # within twice the CPU kernel's own error (summation orders differ)
        assert_within_ref_error([norms.cpu(), total.cpu()], list(ops.grad_norms(cpu(grads))),
                                truth, torch.float32)


def test_grad_norms_empty_list_and_thread_count_independent():
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


def test_grad_norms_non_dense_and_channels_last(device):
    base = torch.randn(64, 40, device=device)
    strided = base[:, ::2]  # not dense: copied
    cl = torch.randn(4, 3, 5, 6, device=device).to(memory_format=torch.channels_last)
    norms, _ = ops.grad_norms([strided, cl])
    ref, _ = reference.grad_norms([strided, cl])
    torch.testing.assert_close(norms, ref, rtol=2e-6, atol=0)
    n1, _ = ops.grad_norms([cl])
    n2, _ = ops.grad_norms([cl.contiguous()])
    torch.testing.assert_close(n1, n2)


def test_grad_norms_weighted_with_unlike_layouts(device):
    """ASAM's |w| * g where the gradient is not dense (summed from a copy) or the weights
    are laid out unlike the gradient (copied to its layout)."""
    strided = torch.randn(64, 40, device=device)[:, ::2]
    w_strided = torch.randn(64, 20, device=device)
    cl = torch.randn(4, 3, 5, 6, device=device).to(memory_format=torch.channels_last)
    w_cl = torch.randn(4, 3, 5, 6, device=device)
    grads, weights = [strided, cl, w_strided], [w_strided, w_cl, strided]
    norms, total = ops.grad_norms(grads, weights)
    ref, ref_total = reference.grad_norms(grads, weights)
    torch.testing.assert_close(norms, ref, rtol=2e-6, atol=0)
    torch.testing.assert_close(total, ref_total, rtol=2e-6, atol=0)


def test_grad_norms_nonfinite_propagates(device):
    g = [torch.randn(100, device=device), torch.tensor([1.0, float("inf")], device=device)]
    norms, total = ops.grad_norms(g)
    assert math.isfinite(float(norms[0])) and math.isinf(float(norms[1]))
    assert not math.isfinite(float(total))


# ------------------------------------------------------------------- perturb_


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sizes", list(SIZES), ids=list(SIZES))
def test_perturb_matches_reference(device, dtype, sizes, adaptive):
    params = make(SIZES[sizes], dtype, 1, device=device)
    grads = make(SIZES[sizes], dtype, 2, device=device)
    _, total = reference.grad_norms(f64(grads))
    rho = 0.05

    def run(fn, ps, gs, norm):
        ps = [p.clone() for p in ps]
        bks = [torch.empty_like(p) for p in ps]
        fn(ps, gs, bks, norm, rho, adaptive)
        return ps, bks

    out, out_bk = run(ops.perturb_, params, grads, total)
    for b, p in zip(out_bk, params, strict=False):
        assert torch.equal(b, p), "backup is not an exact copy"
    ref, _ = run(reference.perturb_, params, grads, total)
    truth, _ = run(reference.perturb_, f64(params), f64(grads), total)
    assert_within_ref_error(out, ref, truth, dtype)
    if device != "cpu":
        cpu_out, _ = run(ops.perturb_, cpu(params), cpu(grads), total.cpu())
        assert_within_ref_error(cpu(out), cpu_out, cpu(truth), dtype)


def test_perturb_reads_norm_on_device_or_cpu_and_fp64(device):
    shapes = [(1000,), (7, 9)]
    params = make(shapes, torch.float64, 1, device=device)
    grads = make(shapes, torch.float64, 2, device=device)
    outs = []
    for norm in (torch.tensor(3.0, device=device), torch.tensor(3.0, dtype=torch.float64),
                 torch.tensor(3.0, device=device, dtype=torch.float16)):
        ps = [p.clone() for p in params]
        ops.perturb_(ps, grads, [torch.empty_like(p) for p in ps], norm, 0.05)
        outs.append(ps)
    ref = [p.clone() for p in params]
    reference.perturb_(ref, grads, [torch.empty_like(p) for p in ref], torch.tensor(3.0), 0.05)
    for out in outs:
        for a, b in zip(out, ref, strict=False):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_perturb_nonfinite_norm_moves_nothing(device):
    shapes = [(10,), (3, 4)]
    params = make(shapes, torch.float32, 1, device=device)
    grads = make(shapes, torch.float32, 2, device=device)
    before = [p.clone() for p in params]
    for bad in (float("nan"), float("inf")):
        ops.perturb_(params, grads, [torch.empty_like(p) for p in params],
                     torch.tensor(bad, device=device), 0.05)
        for p, b in zip(params, before, strict=False):
            assert torch.equal(p, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_perturb_layouts_give_the_same_bits(device, dtype):
    """channels_last params with grads in either layout, and misaligned storage."""
    p = torch.randn(8, 3, 5, 7, device=device).to(dtype).to(memory_format=torch.channels_last)
    g_cl = torch.randn(8, 3, 5, 7, device=device).to(dtype).to(memory_format=torch.channels_last)
    total = torch.tensor(2.5, device=device)
    outs = []
    for g in (g_cl, g_cl.contiguous()):
        q, bk = p.clone(), torch.empty_like(p)
        ops.perturb_([q], [g], [bk], total, 0.1)
        assert torch.equal(bk, p)
        outs.append(q)
    assert torch.equal(outs[0], outs[1])
    ref = p.clone()
    reference.perturb_([ref], [g_cl], [torch.empty_like(p)], total, 0.1)
    torch.testing.assert_close(outs[0], ref)
    flat_p, flat_g = p.contiguous().view(-1), g_cl.contiguous().view(-1)
    aligned, bk = flat_p.clone(), torch.empty_like(flat_p)
    ops.perturb_([aligned], [flat_g], [bk], total, 0.1)
    for offset in offsets_off_16_bytes(dtype):
        mp, mbk = misaligned(flat_p, offset), misaligned(torch.empty_like(flat_p), offset)
        ops.perturb_([mp], [misaligned(flat_g, offset)], [mbk], total, 0.1)
        assert torch.equal(mp, aligned) and torch.equal(mbk, flat_p), offset
    assert torch.equal(outs[0].contiguous().view(-1), aligned)


# ------------------------------------------------------------------- restore_


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=DTYPE_IDS + ["fp64"])
@pytest.mark.parametrize("sizes", list(SIZES), ids=list(SIZES))
def test_restore_is_exact(device, dtype, sizes):
    params = make(SIZES[sizes], dtype, 1, device=device)
    backups = make(SIZES[sizes], dtype, 2, device=device)
    ops.restore_(params, backups)
    for p, b in zip(params, backups, strict=False):
        assert torch.equal(p, b)


def test_restore_exact_for_nan_payloads_misaligned_and_channels_last(device):
    bits = torch.tensor([0x7FC00001, 0x7F800001, -1, 0x00000001], dtype=torch.int32)
    odd = bits.view(torch.float32).repeat(1000).to(device)  # NaN payloads, a denormal
    p = torch.zeros_like(odd)
    ops.restore_([p], [odd])
    assert torch.equal(p.view(torch.int32), odd.view(torch.int32))
    b = misaligned(torch.randn(CHUNK + 3, device=device, dtype=torch.float16))
    q = misaligned(torch.zeros_like(b))
    ops.restore_([q], [b])
    assert torch.equal(q, b)
    cl = torch.randn(2, 3, 4, 5, device=device).to(memory_format=torch.channels_last)
    dst = torch.zeros_like(cl)
    ops.restore_([dst], [cl.contiguous()])  # other strides: copied to the param's layout
    assert torch.equal(dst, cl)


# ------------------------------------------------------------- restore_adamw_


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sizes", list(SIZES), ids=list(SIZES))
def test_restore_adamw_matches_reference(device, dtype, sizes):
    inputs = adamw_inputs(SIZES[sizes], dtype, device=device)
    out = run_adamw(ops.restore_adamw_, inputs)
    ref = run_adamw(reference.restore_adamw_, inputs)
    truth = run_adamw(reference.restore_adamw_, inputs, torch.float64)
    on_cpu = run_adamw(ops.restore_adamw_, inputs, device="cpu") if device != "cpu" else None
    for i in (0, 3, 4):  # params, exp_avgs, exp_avg_sqs
        assert_within_ref_error(out[i], ref[i], truth[i], dtype)
        if on_cpu is not None:
            assert_within_ref_error(cpu(out[i]), on_cpu[i], cpu(truth[i]), dtype)
    for s_out, s_in in zip(out[5], inputs[5], strict=False):
        assert s_out.device.type == device and float(s_out) == float(s_in) + 1


def test_restore_adamw_fp32_equals_torch_adamw(device):
    """Fused restore+AdamW equals copying the backup back, then torch.optim.AdamW."""
    shapes = [(33, 17), (5,), (1000,), (CHUNK + 7,)]
    params, backups, grads, *_ = adamw_inputs(shapes, torch.float32, device=device)
    ref = [torch.nn.Parameter(b.clone()) for b in backups]
    opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.01, foreach=False)
    ms = [torch.zeros_like(p) for p in params]
    vs = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0, device=device) for _ in params]
    for it in range(3):
        for p, g in zip(ref, grads, strict=False):
            p.grad = g * (it + 1)
        opt.step()
        ops.restore_adamw_(params, backups, [g * (it + 1) for g in grads], ms, vs, steps,
                           **HYPER)
        backups = [p.clone() for p in params]
    for p, r in zip(params, ref, strict=False):
        if device == "cpu":
            # torch rounds in another order (addcdiv: (value * m) / denom): a few ulp apart
            ulp = torch.finfo(torch.float32).eps * float(r.detach().abs().max())
            torch.testing.assert_close(p, r.detach(), rtol=0, atol=4 * ulp)
        else:
            torch.testing.assert_close(p, r.detach(), rtol=2e-6, atol=1e-7)
    assert all(float(s) == 3.0 for s in steps)


@pytest.mark.parametrize("where", ["device", "cpu"])
@pytest.mark.parametrize("flag", [True, 1.0, float("inf")], ids=["bool", "float", "inf"])
def test_restore_adamw_found_inf_only_restores(device, where, flag):
    inputs = adamw_inputs([(10,), (4, 4), (0,), (CHUNK + 1,)], torch.float32, device=device)
    found_inf = torch.tensor(flag, device=device if where == "device" else "cpu")
    out = run_adamw(ops.restore_adamw_, inputs, found_inf=found_inf)
    for p, b in zip(out[0], inputs[1], strict=False):
        assert torch.equal(p, b)
    for i in (3, 4, 5):
        for a, b in zip(out[i], inputs[i], strict=False):
            assert torch.equal(a, b), "state changed on a skipped step"


def test_restore_adamw_found_inf_zero_steps(device):
    inputs = adamw_inputs([(10,), (0,)], torch.float32, device=device)
    a = run_adamw(ops.restore_adamw_, inputs)
    b = run_adamw(ops.restore_adamw_, inputs, found_inf=torch.tensor(False, device=device))
    for x, y in zip(a[0] + a[5], b[0] + b[5], strict=False):
        assert torch.equal(x, y)
    assert float(b[5][1]) == float(inputs[5][1]) + 1, "an empty tensor's step must advance"


def test_restore_adamw_grad_scale_unscales(device):
    inputs = adamw_inputs([(10,), (4, 4)], torch.float32, device=device)
    scaled = list(inputs)
    scaled[2] = [g * 1024 for g in inputs[2]]
    a = run_adamw(ops.restore_adamw_, inputs)
    for scale in (torch.tensor(1024.0, device=device), torch.tensor(1024.0)):
        b = run_adamw(ops.restore_adamw_, scaled, grad_scale=scale)
        for x, y in zip(a[0], b[0], strict=False):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_restore_adamw_fp64_steps_and_misaligned(device):
    inputs = list(adamw_inputs([(CHUNK + 5,), (77,)], torch.float32, device=device))
    inputs[5] = [s.double() for s in inputs[5]]
    a = run_adamw(ops.restore_adamw_, inputs)
    assert all(s.dtype == torch.float64 and float(s) == float(s0) + 1
               for s, s0 in zip(a[5], inputs[5], strict=False))
    # The same values off the vector alignment (run_adamw would clone them aligned).
    for offset in offsets_off_16_bytes(torch.float32):
        mis = [[misaligned(t, offset) for t in group] for group in inputs[:5]]
        ops.restore_adamw_(*mis, [s.clone() for s in inputs[5]], **HYPER)
        for i in (0, 3, 4):
            for x, y in zip(a[i], mis[i], strict=False):
                assert torch.equal(x, y), f"results depend on alignment (offset {offset})"


# ------------------------------------------------------- refused arguments


def test_non_dense_param_is_refused_clearly(device):
    view = torch.randn(10, 10, device=device)[:, ::2]
    with pytest.raises(RuntimeError, match="not dense"):
        ops.perturb_([view], [torch.randn(10, 5, device=device)],
                     [torch.empty(10, 5, device=device)], torch.tensor(1.0, device=device), 0.1)


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
def test_bad_grads_are_refused(device, bad, match):
    p = torch.randn(5, device=device)
    before = p.clone()
    with pytest.raises((RuntimeError, ValueError), match=match):
        ops.perturb_([p], [bad().to(device)], [torch.empty_like(p)],
                     torch.tensor(1.0, device=device), 0.1)
    assert torch.equal(p, before)


def test_list_length_mismatch_is_refused(device):
    with pytest.raises(RuntimeError, match="backups has 1 tensors but params has 2"):
        ops.restore_([torch.randn(2, device=device), torch.randn(3, device=device)],
                     [torch.randn(2, device=device)])


def test_aliased_operands_are_refused(device):
    p = torch.randn(8, device=device)
    before = p.clone()
    with pytest.raises(RuntimeError, match="same memory"):
        ops.perturb_([p], [torch.randn(8, device=device)], [p], torch.tensor(1.0, device=device),
                     0.1)
    m = torch.zeros(8, device=device)
    with pytest.raises(RuntimeError, match="same memory"):
        ops.restore_adamw_([p], [torch.randn(8, device=device)], [torch.randn(8, device=device)],
                           [m], [m], [torch.tensor(0.0, device=device)], **HYPER)
    assert torch.equal(p, before)


@pytest.mark.parametrize(
    "step, match",
    [
        (torch.tensor(0, dtype=torch.int64), r"steps\[0\] must be float32 or float64"),
        (torch.zeros(2), r"steps\[0\] must be a one-element tensor"),
    ],
    ids=["int64", "two-elements"],
)
def test_bad_step_counts_are_refused(device, step, match):
    # The same check runs in the CPU and the CUDA kernel (csrc/checks.h).
    p = torch.randn(8, device=device)
    m, v = torch.zeros(8, device=device), torch.zeros(8, device=device)
    before = p.clone()
    with pytest.raises(RuntimeError, match=match):
        ops.restore_adamw_([p], [torch.randn(8, device=device)], [torch.randn(8, device=device)],
                           [m], [v], [step.to(device)], **HYPER)
    assert torch.equal(p, before) and not m.any() and not v.any()


# ----- opcheck: schemas, fake implementations, aot dispatch -----


def _r(device, *shape):
    return torch.randn(*shape, device=device)


def _z(device, *shape):
    return torch.zeros(*shape, device=device)


# case -> (lambda device: (op overload, args))
OPCHECK_CASES = {
    "grad_norms": lambda d: (torch.ops.slsam.grad_norms.default, ([_r(d, 5), _r(d, 2, 3)],)),
    "grad_norms_weights": lambda d: (torch.ops.slsam.grad_norms.default, ([_r(d, 5)], [_r(d, 5)])),
    "perturb_": lambda d: (torch.ops.slsam.perturb_.default,
                           ([_r(d, 5), _r(d, 3)], [_r(d, 5), _r(d, 3)], [_z(d, 5), _z(d, 3)],
                            torch.tensor(2.0, device=d), 0.05, False)),
    "restore_": lambda d: (torch.ops.slsam.restore_.default, ([_r(d, 5)], [_r(d, 5)])),
    "restore_adamw_": lambda d: (
        torch.ops.slsam.restore_adamw_.default,
        ([_r(d, 5)], [_r(d, 5)], [_r(d, 5)], [_z(d, 5)], [_z(d, 5)], [torch.tensor(0.0, device=d)],
         1e-3, 0.9, 0.999, 0.01, 1e-8, None, None)),
    "bandit_update_": lambda d: (
        torch.ops.slsam.bandit_update_.default,
        (torch.full((6,), 0.5, dtype=torch.float64, device=d),
         torch.tensor([True, False, True, False, True, False], device=d),
         torch.rand(3, device=d), None, 1e-3, 3.0, False)),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck(device, case):
    op, args = OPCHECK_CASES[case](device)
    torch.library.opcheck(op, args)


def test_opcheck_sample_mask(device):
    # Random: eager and traced runs draw different masks, so skip the output
    # comparison of the aot_dispatch tests; the schema and fake are still checked.
    probs = torch.full((10,), 0.3, dtype=torch.float64, device=device)
    torch.library.opcheck(torch.ops.slsam.sample_mask.default,
                          (probs, torch.Generator(device=device).manual_seed(0)),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


def test_ops_compile_with_fullgraph(device):
    @torch.compile(fullgraph=True, backend="aot_eager")
    def norms(gs):
        return torch.ops.slsam.grad_norms(gs)

    gs = [torch.randn(7, device=device), torch.randn(3, 3, device=device)]
    n1, t1 = norms(gs)
    n2, t2 = ops.grad_norms(gs)
    assert torch.equal(n1, n2) and torch.equal(t1, t2)


# -------------------------------------- what every device must handle alike


def test_restore_adamw_fp64_matches_reference(device):
    inputs = adamw_inputs(SIZES["odd"] + SIZES["mixed_empty"], torch.float64, device=device)
    out = run_adamw(ops.restore_adamw_, inputs)
    ref = run_adamw(reference.restore_adamw_, inputs)
    for i in (0, 3, 4):
        for o, r in zip(out[i], ref[i], strict=False):
            assert o.dtype == torch.float64
            torch.testing.assert_close(o, r, rtol=1e-13, atol=1e-15)


def _mixed_dtype_inputs(device):
    """adamw_inputs over 40 tensors cycling through the four dtypes (one launch each on CUDA)."""
    shapes = SIZES["many"][:36] + [(CHUNK + 3,), (7, 5), (0,), (CHUNK * 2,)]
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    inputs = adamw_inputs(shapes, torch.float64, seed=5, device=device)
    cast = [[t.to(dtypes[i % 4]) for i, t in enumerate(group)] for group in inputs[:5]]
    return [*cast, inputs[5]]


def test_perturb_and_restore_adamw_mixed_dtypes_in_one_list(device):
    """Every tensor's result equals the same op on a list of its dtype alone."""
    inputs = _mixed_dtype_inputs(device)
    params, _, grads, *_ = inputs
    total = torch.tensor(3.0, device=device)
    mixed = [p.clone() for p in params]
    ops.perturb_(mixed, grads, [torch.empty_like(p) for p in mixed], total, 0.05)
    out = run_adamw(ops.restore_adamw_, inputs)
    for i in range(len(params)):
        alone = [params[i].clone()]
        ops.perturb_(alone, [grads[i]], [torch.empty_like(params[i])], total, 0.05)
        assert torch.equal(mixed[i], alone[0]), i
        single = run_adamw(ops.restore_adamw_, [[g[i]] for g in inputs])
        for k in (0, 3, 4, 5):
            assert torch.equal(out[k][i], single[k][0]), (i, k)


def test_partially_aligned_lists_give_the_same_bits(device):
    """Aligned and misaligned tensors in one list, and aligned with misaligned operands of one
    tensor: each tensor takes its own path, with the same results."""
    inputs = list(adamw_inputs([(CHUNK + 9,), (1000,), (77,), (CHUNK,)], torch.float32, 3,
                               device=device))
    expect = run_adamw(ops.restore_adamw_, inputs)
    # tensor 0 all aligned, 1 all off by 8 bytes, 2 off by one element, 3 only its grad off
    layouts = [(0, 0, 0, 0, 0), (2, 2, 2, 2, 2), (1, 1, 1, 1, 1), (0, 0, 1, 0, 0)]
    mixed = [[misaligned(t, layouts[i][k]) if layouts[i][k] else t.clone()
              for i, t in enumerate(group)] for k, group in enumerate(inputs[:5])]
    ops.restore_adamw_(*mixed, [s.clone() for s in inputs[5]], **HYPER)
    for k in (0, 3, 4):
        for x, y in zip(expect[k], mixed[k], strict=False):
            assert torch.equal(x, y)
    grads = inputs[2]
    assert all(torch.equal(a, b) for a, b in zip(
        ops.grad_norms(grads), ops.grad_norms([misaligned(g, 2) if i % 2 else g
                                               for i, g in enumerate(grads)]), strict=False))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nonfinite_gradients_in_every_op(device, bad):
    """A NaN or inf in g reaches the same elements as in slsam.reference, and only those."""
    shapes = [(CHUNK + 5,), (300,)]
    inputs = list(adamw_inputs(shapes, torch.float32, 7, device=device))
    for g in inputs[2]:
        g[3] = bad
        g[-1] = -bad
    grads = inputs[2]
    norms, total = ops.grad_norms(grads)
    ref_norms, ref_total = reference.grad_norms(grads)
    torch.testing.assert_close(norms, ref_norms, equal_nan=True)
    assert not math.isfinite(float(total)) and not math.isfinite(float(ref_total))
    # perturb_ with a finite norm: the bad elements' weights become non-finite like the reference's.
    finite = torch.tensor(2.0, device=device)
    out = [p.clone() for p in inputs[0]]
    ref = [p.clone() for p in inputs[0]]
    bks = [torch.empty_like(p) for p in out]
    ops.perturb_(out, grads, bks, finite, 0.05)
    reference.perturb_(ref, grads, [torch.empty_like(p) for p in ref], finite, 0.05)
    for o, r, p, b in zip(out, ref, inputs[0], bks, strict=False):
        torch.testing.assert_close(o, r, equal_nan=True)
        assert torch.equal(b, p)
    # restore_: copies whatever the backups hold
    dst = [torch.zeros_like(g) for g in grads]
    ops.restore_(dst, grads)
    assert all(torch.equal(d.view(torch.int32), g.view(torch.int32))
               for d, g in zip(dst, grads, strict=False))
    # restore_adamw_: moments and weights as in the reference
    got = run_adamw(ops.restore_adamw_, inputs)
    want = run_adamw(reference.restore_adamw_, inputs)
    for k in (0, 3, 4):
        for x, y in zip(got[k], want[k], strict=False):
            torch.testing.assert_close(x, y, equal_nan=True)
            assert bool(torch.isfinite(x[:3]).all()) and not bool(torch.isfinite(x[3]))


@pytest.mark.parametrize("flag_dtype", [torch.int64, torch.int32, torch.float16, torch.bfloat16],
                         ids=["int64", "int32", "fp16", "bf16"])
def test_found_inf_of_any_dtype(device, flag_dtype):
    """GradScaler's found_inf is fp32, but any one-element tensor is read by its value."""
    inputs = adamw_inputs([(10,), (CHUNK + 1,)], torch.float32, device=device)
    probs = torch.full((4,), 0.5, dtype=torch.float64, device=device)
    mask = torch.tensor([True, False, True, True], device=device)
    norms = torch.tensor([1.0, 2.0, 3.0], device=device)
    ran = run_adamw(ops.restore_adamw_, inputs)
    for value, skips in ((1, True), (0, False)):
        flag = torch.tensor(value, device=device).to(flag_dtype)
        out = run_adamw(ops.restore_adamw_, inputs, found_inf=flag)
        expect = inputs if skips else ran
        for k in (3, 4, 5):
            assert all(torch.equal(a, b) for a, b in zip(out[k], expect[k], strict=False)), (value, k)
        p = probs.clone()
        ops.bandit_update_(p, mask, norms, flag, 1e-3, 2.0)
        assert torch.equal(p, probs) == skips
