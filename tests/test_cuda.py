"""The CUDA kernels against slsam.reference and the CPU kernels.

Every test here needs a GPU and an extension built with the CUDA kernels
(SLSAM_BUILD_CUDA=1, see .ci/cuda_compile.sh); without them the whole module
is skipped. Tolerances follow tests/conftest.py: a kernel's error against an
fp64 truth must stay within twice the plain reference's error in the same
precision (plus one rounding of the output).
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import DTYPE_IDS, DTYPES, assert_within_ref_error, batch, tiny_mlp
from philox_mirror import M32, MASK_THREADS, MAX_DRAWS, mirror_sample_mask, philox4x32_10

import slsam
from slsam import ops, reference

CUDA_OK = torch.cuda.is_available() and ops.has_kernel("grad_norms", "cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA_OK, reason="needs a CUDA GPU and slsam built with CUDA kernels"),
]

DEV = "cuda"
CHUNK = 1 << 16  # csrc/cuda/launch.cuh kChunk

SIZES = {
    "empty_tensor": [(0,), (3, 0)],
    "one": [(1,)],
    "odd": [(1023,), (CHUNK + 1,), (3, 5, 7)],  # CHUNK + 1 crosses a block boundary
    "mixed_empty": [(5,), (0,), (17, 3)],
    "many": [(int(s),) for s in torch.randint(1, 60, (1200,),
                                              generator=torch.Generator().manual_seed(0))],
    "large": [(1 << 21, 3)],
}


def make(shapes, dtype, seed=0, scale=1.0, device=DEV):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(s, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)
            for s in shapes]


def f64(ts):
    return [t.double() for t in ts]


def cpu(ts):
    return [t.cpu() for t in ts]


def misaligned(t: torch.Tensor) -> torch.Tensor:
    """The same values at storage offset 1 (data pointer off the vector alignment)."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    out = buf[1:].view(t.shape)
    out.copy_(t)
    return out


# ----------------------------------------------------------------- grad_norms


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sizes", list(SIZES), ids=list(SIZES))
def test_grad_norms_matches_reference_and_cpu(dtype, sizes):
    grads = make(SIZES[sizes], dtype)
    norms, total = ops.grad_norms(grads)
    assert norms.device.type == "cuda" and total.device.type == "cuda"
    assert norms.dtype == torch.float32 and norms.shape == (len(grads),) and total.shape == ()
    ref = reference.grad_norms(grads)
    truth = reference.grad_norms(f64(grads))
    assert_within_ref_error([norms, total], list(ref), list(truth), torch.float32)
    cpu_out = ops.grad_norms(cpu(grads))
    assert_within_ref_error([norms.cpu(), total.cpu()], list(cpu_out),
                            [truth[0].cpu(), truth[1].cpu()], torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_grad_norms_adaptive_matches_reference(dtype):
    grads = make(SIZES["odd"] + SIZES["mixed_empty"], dtype, 1)
    weights = make(SIZES["odd"] + SIZES["mixed_empty"], dtype, 2)
    out = ops.grad_norms(grads, weights)
    ref = reference.grad_norms(grads, weights)
    truth = reference.grad_norms(f64(grads), f64(weights))
    assert_within_ref_error(list(out), list(ref), list(truth), torch.float32)


def test_grad_norms_fp64():
    grads = make(SIZES["odd"], torch.float64)
    norms, total = ops.grad_norms(grads)
    ref_norms, ref_total = reference.grad_norms(grads)
    torch.testing.assert_close(norms, ref_norms, rtol=1e-6, atol=0)
    torch.testing.assert_close(total, ref_total, rtol=1e-6, atol=0)


def test_grad_norms_mixed_dtypes_in_one_list():
    """One launch per dtype; norms must land at their own list positions."""
    shapes = SIZES["many"][:400] + [(CHUNK * 3 + 5,)]
    dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    grads = [t.to(dtypes[i % 4]) for i, t in enumerate(make(shapes, torch.float64, 3))]
    norms, total = ops.grad_norms(grads)
    truth = [t.cpu() for t in reference.grad_norms(f64(grads))]
    # Within twice the CPU kernel's own error (the summation orders differ).
    assert_within_ref_error([norms.cpu(), total.cpu()], list(ops.grad_norms(cpu(grads))), truth,
                            torch.float32)
    ref = reference.grad_norms(grads)
    assert_within_ref_error([norms.cpu(), total.cpu()], [t.cpu() for t in ref], truth,
                            torch.float32)


def test_grad_norms_deterministic_and_alignment_independent():
    grads = make(SIZES["large"] + SIZES["many"] + SIZES["odd"], torch.float32, 4)
    a = ops.grad_norms(grads)
    b = ops.grad_norms(grads)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), "same input, different bits"
    # Same values at storage offset 1: the scalar path sums in the same order.
    c = ops.grad_norms([misaligned(g) for g in grads])
    assert torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]), "bits depend on alignment"
    # On another stream, with other work in flight.
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        d = ops.grad_norms(grads)
    s.synchronize()
    assert torch.equal(a[0], d[0]) and torch.equal(a[1], d[1])


def test_grad_norms_non_dense_and_channels_last():
    base = torch.randn(64, 40, device=DEV)
    strided = base[:, ::2]  # not dense: copied, as on the CPU
    cl = torch.randn(4, 3, 5, 6, device=DEV).to(memory_format=torch.channels_last)
    norms, _ = ops.grad_norms([strided, cl])
    ref, _ = reference.grad_norms([strided, cl])
    torch.testing.assert_close(norms, ref, rtol=2e-6, atol=0)


def test_grad_norms_nonfinite_propagates():
    g = [torch.randn(100, device=DEV), torch.tensor([1.0, float("inf")], device=DEV)]
    norms, total = ops.grad_norms(g)
    assert math.isfinite(float(norms[0])) and math.isinf(float(norms[1]))
    assert not math.isfinite(float(total))


# -------------------------------------------------------------------- perturb


@pytest.mark.parametrize("adaptive", [False, True], ids=["sam", "asam"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sizes", list(SIZES), ids=list(SIZES))
def test_perturb_matches_reference_and_cpu(dtype, sizes, adaptive):
    params, grads = make(SIZES[sizes], dtype, 1), make(SIZES[sizes], dtype, 2)
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
    cpu_out, _ = run(ops.perturb_, cpu(params), cpu(grads), total.cpu())
    assert_within_ref_error(cpu(out), cpu_out, cpu(truth), dtype)


def test_perturb_reads_norm_on_device_or_cpu_and_fp64():
    params, grads = make([(1000,), (7, 9)], torch.float64, 1), make([(1000,), (7, 9)],
                                                                    torch.float64, 2)
    outs = []
    for norm in (torch.tensor(3.0, device=DEV), torch.tensor(3.0, dtype=torch.float64),
                 torch.tensor(3.0, device=DEV, dtype=torch.float16)):
        ps = [p.clone() for p in params]
        ops.perturb_(ps, grads, [torch.empty_like(p) for p in ps], norm, 0.05)
        outs.append(ps)
    ref = [p.clone() for p in params]
    reference.perturb_(ref, grads, [torch.empty_like(p) for p in ref], torch.tensor(3.0), 0.05)
    for out in outs:
        for a, b in zip(out, ref, strict=False):
            torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_perturb_nonfinite_norm_moves_nothing():
    params, grads = make([(10,), (3, 4)], torch.float32, 1), make([(10,), (3, 4)], torch.float32, 2)
    before = [p.clone() for p in params]
    for bad in (float("nan"), float("inf")):
        ops.perturb_(params, grads, [torch.empty_like(p) for p in params],
                     torch.tensor(bad, device=DEV), 0.05)
        for p, b in zip(params, before, strict=False):
            assert torch.equal(p, b)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_perturb_layouts_give_the_same_bits(dtype):
    """channels_last params with grads in either layout, and misaligned storage."""
    p = torch.randn(8, 3, 5, 7, device=DEV).to(dtype).to(memory_format=torch.channels_last)
    g_cl = torch.randn(8, 3, 5, 7, device=DEV).to(dtype).to(memory_format=torch.channels_last)
    total = torch.tensor(2.5, device=DEV)
    outs = []
    for g in (g_cl, g_cl.contiguous()):
        q, bk = p.clone(), torch.empty_like(p)
        ops.perturb_([q], [g], [bk], total, 0.1)
        assert torch.equal(bk, p)
        outs.append(q)
    assert torch.equal(outs[0], outs[1])
    flat_p, flat_g = p.contiguous().view(-1), g_cl.contiguous().view(-1)
    aligned, bk = flat_p.clone(), torch.empty_like(flat_p)
    ops.perturb_([aligned], [flat_g], [bk], total, 0.1)
    mp, mbk = misaligned(flat_p), misaligned(torch.empty_like(flat_p))
    ops.perturb_([mp], [misaligned(flat_g)], [mbk], total, 0.1)
    assert torch.equal(mp, aligned) and torch.equal(mbk, flat_p)
    assert torch.equal(outs[0].contiguous().view(-1), aligned)


# -------------------------------------------------------------------- restore


@pytest.mark.parametrize("dtype", DTYPES + [torch.float64], ids=DTYPE_IDS + ["fp64"])
@pytest.mark.parametrize("sizes", list(SIZES), ids=list(SIZES))
def test_restore_is_exact(dtype, sizes):
    params, backups = make(SIZES[sizes], dtype, 1), make(SIZES[sizes], dtype, 2)
    ops.restore_(params, backups)
    for p, b in zip(params, backups, strict=False):
        assert torch.equal(p, b)


def test_restore_exact_for_nan_payloads_misaligned_and_channels_last():
    bits = torch.tensor([0x7FC00001, 0x7F800001, -1, 0x00000001], dtype=torch.int32)
    odd = bits.view(torch.float32).repeat(1000).to(DEV)  # NaN payloads, a denormal
    p = torch.zeros_like(odd)
    ops.restore_([p], [odd])
    assert torch.equal(p.view(torch.int32), odd.view(torch.int32))
    b = misaligned(torch.randn(CHUNK + 3, device=DEV, dtype=torch.float16))
    q = misaligned(torch.zeros_like(b))
    ops.restore_([q], [b])
    assert torch.equal(q, b)
    cl = torch.randn(2, 3, 4, 5, device=DEV).to(memory_format=torch.channels_last)
    dst = torch.zeros_like(cl)
    ops.restore_([dst], [cl.contiguous()])  # other strides: copied to the param's layout
    assert torch.equal(dst, cl)


# -------------------------------------------------------------- restore_adamw


def adamw_inputs(shapes, dtype, seed=0):
    params = make(shapes, dtype, seed)
    backups = make(shapes, dtype, seed + 1)
    grads = make(shapes, dtype, seed + 2)
    m = make(shapes, dtype, seed + 3, 0.1)
    v = [t.abs() for t in make(shapes, dtype, seed + 4, 0.01)]
    steps = [torch.tensor(float(i % 7), device=DEV) for i in range(len(shapes))]
    return params, backups, grads, m, v, steps


HYPER = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.01, eps=1e-8)


def run_adamw(fn, inputs, cast=None, device=None, **kw):
    def conv(t):
        t = t.clone() if cast is None else t.to(cast)
        return t.to(device) if device is not None else t

    ins = [[conv(t) for t in group] for group in inputs]
    ins[5] = [s.clone() if device is None else s.to(device) for s in inputs[5]]
    fn(*ins, **HYPER, **kw)
    return ins


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("sizes", list(SIZES), ids=list(SIZES))
def test_restore_adamw_matches_reference_and_cpu(dtype, sizes):
    inputs = adamw_inputs(SIZES[sizes], dtype)
    out = run_adamw(ops.restore_adamw_, inputs)
    ref = run_adamw(reference.restore_adamw_, inputs)
    truth = run_adamw(reference.restore_adamw_, inputs, torch.float64)
    on_cpu = run_adamw(ops.restore_adamw_, inputs, device="cpu")
    for i in (0, 3, 4):  # params, exp_avgs, exp_avg_sqs
        assert_within_ref_error(out[i], ref[i], truth[i], dtype)
        assert_within_ref_error(cpu(out[i]), on_cpu[i], cpu(truth[i]), dtype)
    for s_out, s_in in zip(out[5], inputs[5], strict=False):
        assert s_out.device.type == "cuda" and float(s_out) == float(s_in) + 1


def test_restore_adamw_fp32_equals_torch_adamw():
    shapes = [(33, 17), (5,), (1000,), (CHUNK + 7,)]
    params, backups, grads, *_ = adamw_inputs(shapes, torch.float32)
    ref = [torch.nn.Parameter(b.clone()) for b in backups]
    opt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.01, foreach=False)
    ms = [torch.zeros_like(p) for p in params]
    vs = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0, device=DEV) for _ in params]
    for it in range(3):
        for p, g in zip(ref, grads, strict=False):
            p.grad = g * (it + 1)
        opt.step()
        ops.restore_adamw_(params, backups, [g * (it + 1) for g in grads], ms, vs, steps,
                           **HYPER)
        backups = [p.clone() for p in params]
    for p, r in zip(params, ref, strict=False):
        torch.testing.assert_close(p, r.detach(), rtol=2e-6, atol=1e-7)
    assert all(float(s) == 3.0 for s in steps)


@pytest.mark.parametrize("where", ["cuda", "cpu"])
@pytest.mark.parametrize("flag", [torch.tensor(True), torch.tensor(1.0), torch.tensor(float("inf"))],
                         ids=["bool", "float", "inf"])
def test_restore_adamw_found_inf_only_restores(where, flag):
    inputs = adamw_inputs([(10,), (4, 4), (0,), (CHUNK + 1,)], torch.float32)
    out = run_adamw(ops.restore_adamw_, inputs, found_inf=flag.to(where))
    for p, b in zip(out[0], inputs[1], strict=False):
        assert torch.equal(p, b)
    for i in (3, 4, 5):
        for a, b in zip(out[i], inputs[i], strict=False):
            assert torch.equal(a, b), "state changed on a skipped step"


def test_restore_adamw_found_inf_zero_steps():
    inputs = adamw_inputs([(10,), (0,)], torch.float32)
    a = run_adamw(ops.restore_adamw_, inputs)
    b = run_adamw(ops.restore_adamw_, inputs, found_inf=torch.tensor(False, device=DEV))
    for x, y in zip(a[0] + a[5], b[0] + b[5], strict=False):
        assert torch.equal(x, y)
    assert float(b[5][1]) == float(inputs[5][1]) + 1, "an empty tensor's step must advance"


def test_restore_adamw_grad_scale_unscales_on_device():
    inputs = adamw_inputs([(10,), (4, 4)], torch.float32)
    scaled = list(inputs)
    scaled[2] = [g * 1024 for g in inputs[2]]
    a = run_adamw(ops.restore_adamw_, inputs)
    for scale in (torch.tensor(1024.0, device=DEV), torch.tensor(1024.0)):
        b = run_adamw(ops.restore_adamw_, scaled, grad_scale=scale)
        for x, y in zip(a[0], b[0], strict=False):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_restore_adamw_fp64_steps_and_misaligned():
    inputs = list(adamw_inputs([(CHUNK + 5,), (77,)], torch.float32))
    inputs[5] = [s.double() for s in inputs[5]]
    a = run_adamw(ops.restore_adamw_, inputs)
    assert all(s.dtype == torch.float64 and float(s) == float(s0) + 1
               for s, s0 in zip(a[5], inputs[5], strict=False))
    # The same values at storage offset 1 (run_adamw would clone them aligned).
    mis = [[misaligned(t) for t in group] for group in inputs[:5]]
    ops.restore_adamw_(*mis, [s.clone() for s in inputs[5]], **HYPER)
    for i in (0, 3, 4):
        for x, y in zip(a[i], mis[i], strict=False):
            assert torch.equal(x, y), "results depend on alignment"


def test_restore_adamw_refuses_steps_on_the_host():
    inputs = list(adamw_inputs([(10,)], torch.float32))
    inputs[5] = [torch.tensor(0.0)]
    with pytest.raises(RuntimeError, match="steps"):
        ops.restore_adamw_(*inputs, **HYPER)


# --------------------------------------------------------------------- bandit


def bandit_case(n, seed=0, frac=0.3, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, generator=g, dtype=torch.float64) * 0.8 + 0.05
    mask = torch.rand(n, generator=g) < frac
    mask[0] = True
    norms = torch.rand(int(mask.sum()), generator=g) * scale
    return probs, mask, norms


@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
@pytest.mark.parametrize("n, scale", [(1, 1.0), (7, 1.0), (300, 1.0), (300, 300.0), (10000, 1.0)],
                         ids=["1", "7", "300", "300-large-norms", "10k"])
def test_bandit_update_matches_cpu_and_reference(n, scale, normalize):
    probs, mask, norms = bandit_case(n, scale=scale)
    k = max(1.0, 0.2 * n)
    on_cpu = probs.clone()
    ops.bandit_update_(on_cpu, mask, norms, None, 1e-3, k, normalize)
    on_gpu = probs.to(DEV)
    ops.bandit_update_(on_gpu, mask.to(DEV), norms.to(DEV), None, 1e-3, k, normalize)
    # The same serial fp64 code; CUDA's exp and FMA contraction may move last bits.
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-12, atol=1e-300)
    ref = probs.clone()
    reference.bandit_update_(ref, mask, norms, None, 1e-3, k, normalize)
    torch.testing.assert_close(on_gpu.cpu(), ref, rtol=1e-10, atol=1e-300)
    assert abs(float(on_gpu.sum()) - min(k, n)) < 1e-6 * n


@pytest.mark.parametrize("where", ["cuda", "cpu"])
def test_bandit_update_skipped_on_found_inf(where):
    probs, mask, norms = bandit_case(50)
    p = probs.to(DEV)
    ops.bandit_update_(p, mask.to(DEV), norms.to(DEV), torch.tensor(True, device=where), 1e-3, 10.0)
    assert torch.equal(p.cpu(), probs)
    ops.bandit_update_(p, mask.to(DEV), norms.to(DEV), torch.tensor(0.0, device=where), 1e-3, 10.0)
    assert not torch.equal(p.cpu(), probs)


def test_bandit_update_no_active_arm_is_a_no_op():
    probs = torch.full((5,), 0.4, dtype=torch.float64, device=DEV)
    ops.bandit_update_(probs, torch.zeros(5, dtype=torch.bool, device=DEV),
                       torch.zeros(0, device=DEV), None, 1e-3, 2.0)
    assert torch.equal(probs, torch.full_like(probs, 0.4))


# ---------------------------------------------------------------- sample_mask

def test_philox_mirror_known_answers():
    # Random123's known-answer vectors for Philox4x32-10.
    assert philox4x32_10((0, 0, 0, 0), (0, 0)) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    assert philox4x32_10((M32, M32, M32, M32), (M32, M32)) == (
        0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)


@pytest.mark.parametrize("n, p", [(1, 0.5), (10, 0.02), (300, 0.2), (600, 0.05)])
def test_sample_mask_matches_philox_mirror(n, p):
    g = torch.Generator(device=DEV).manual_seed(1234)
    probs = torch.full((n,), p, dtype=torch.float64, device=DEV)
    probs[::3] *= 2
    for _ in range(3):
        seed, offset = g.initial_seed(), g.get_offset()
        mask = ops.sample_mask(probs, g)
        assert mask.dtype == torch.bool and mask.device.type == "cuda"
        assert mask.tolist() == mirror_sample_mask(probs, seed, offset)
        per_draw = 2 * ((n + MASK_THREADS - 1) // MASK_THREADS)
        assert g.get_offset() == offset + (MAX_DRAWS * per_draw + 3) // 4 * 4


def test_sample_mask_reproducible():
    probs = torch.rand(1000, dtype=torch.float64, device=DEV)
    a = [ops.sample_mask(probs, torch.Generator(device=DEV).manual_seed(7)) for _ in range(2)]
    assert torch.equal(a[0], a[1])
    g1, g2 = torch.Generator(device=DEV).manual_seed(7), torch.Generator(device=DEV).manual_seed(7)
    seq1 = [ops.sample_mask(probs, g1) for _ in range(5)]
    seq2 = [ops.sample_mask(probs, g2) for _ in range(5)]
    assert all(torch.equal(x, y) for x, y in zip(seq1, seq2, strict=False))
    assert not all(torch.equal(seq1[0], x) for x in seq1[1:]), "the generator did not advance"
    other = ops.sample_mask(probs, torch.Generator(device=DEV).manual_seed(8))
    assert not torch.equal(other, seq1[0])
    torch.cuda.manual_seed(3)
    d1 = ops.sample_mask(probs)
    torch.cuda.manual_seed(3)
    assert torch.equal(d1, ops.sample_mask(probs))  # the default CUDA generator


def test_sample_mask_frequencies():
    n = 10000
    probs = torch.full((n,), 0.3, dtype=torch.float64)
    probs[:100] = 1.0
    probs[100:200] = 1e-8
    g = torch.Generator(device=DEV).manual_seed(0)
    counts = torch.zeros(n, dtype=torch.float64, device=DEV)
    trials = 50
    for _ in range(trials):
        counts += ops.sample_mask(probs.to(DEV), g).double()
    counts = counts.cpu()
    assert torch.all(counts[:100] == trials), "p = 1 must always be drawn"
    assert counts[100:200].sum() == 0
    rest = counts[200:]
    mean = float(rest.mean()) / trials
    sigma = math.sqrt(0.3 * 0.7 / (rest.numel() * trials))
    assert abs(mean - 0.3) < 6 * sigma


def test_sample_mask_fallback_is_the_cpu_kernels():
    nan = float("nan")
    for probs in ([0.0] * 5, [0.0, nan, 0.0], [nan, 1e-300, 0.0], [nan, nan], [0.0, 0.0, -1.0]):
        p = torch.tensor(probs, dtype=torch.float64)
        expect = ops.sample_mask(p, torch.Generator().manual_seed(0))
        got = ops.sample_mask(p.to(DEV), torch.Generator(device=DEV).manual_seed(0))
        assert int(got.sum()) == 1 and torch.equal(got.cpu(), expect), probs


def test_sample_mask_empty_and_bad_generator():
    assert ops.sample_mask(torch.zeros(0, dtype=torch.float64, device=DEV)).shape == (0,)
    with pytest.raises(RuntimeError):
        ops.sample_mask(torch.full((4,), 0.5, dtype=torch.float64, device=DEV),
                        torch.Generator().manual_seed(0))


# ------------------------------------------------------------------ big sizes


def _free_bytes():
    free, _ = torch.cuda.mem_get_info()
    return free


@pytest.mark.slow
def test_tensor_over_2_pow_31_elements():
    n = (1 << 31) + 3
    if _free_bytes() < 3 * 2 * n + (2 << 30):
        pytest.skip("not enough free GPU memory for three 4 GiB tensors")
    g = torch.full((n,), 0.5, dtype=torch.float16, device=DEV)
    g[-1] = 64.0
    norms, total = ops.grad_norms([g])
    expect = math.sqrt((n - 1) * 0.25 + 64.0**2)
    assert float(norms[0]) == pytest.approx(expect, rel=1e-6)
    assert float(total) == pytest.approx(expect, rel=1e-6)
    x = torch.zeros(n, dtype=torch.float16, device=DEV)
    x[-1] = 1.0
    bk = torch.empty_like(x)
    ops.perturb_([x], [g], [bk], torch.tensor(1.0, device=DEV), 1.0)
    assert float(bk[-1]) == 1.0 and float(bk[0]) == 0.0
    assert float(x[-1]) == 65.0 and float(x[(1 << 31) + 1]) == 0.5 and float(x[0]) == 0.5
    del g
    ops.restore_([x], [bk])
    assert float(x[-1]) == 1.0 and float(x[1 << 31]) == 0.0


# ------------------------------------------------------ the optimizer on CUDA


def _model_and_closure(seed=0):
    model = tiny_mlp(seed).to(DEV)
    x, y = batch(seed)
    x, y = x.to(DEV), y.to(DEV)

    def closure():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return model, closure, (x, y)


def _syncs(fn):
    """Runs fn under torch.cuda's sync debug mode; returns the sync warnings."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message) for w in rec if "synchroniz" in str(w.message)]


def test_slsam_step_syncs_only_to_read_the_mask():
    model, closure, _ = _model_and_closure()
    opt = slsam.SLSAM(model.parameters(), torch.optim.AdamW, lr=1e-3, sparsity=0.5, seed=0)
    for _ in range(2):  # warm-up: optimizer state, allocator, lazy CUDA init
        opt.step(closure)
    syncs = _syncs(lambda: opt.step(closure))
    assert len(syncs) == 1, f"expected one sync (the mask read), got {len(syncs)}: {syncs}"


def test_first_step_and_kernels_never_sync():
    model, closure, _ = _model_and_closure()
    opt = slsam.SLSAM(model.parameters(), torch.optim.AdamW, lr=1e-3, sparsity=0.5, seed=0)
    opt.step(closure)
    closure()
    grad_scale = torch.tensor(1.0, device=DEV)  # torch.tensor(..., device=cuda) itself syncs
    generator = torch.Generator(device=DEV).manual_seed(0)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.first_step()
        grads = [p.detach().clone() for p in model.parameters()]
        norms, total = ops.grad_norms(grads)
        ps = [p.detach().clone() for p in model.parameters()]
        bks = [torch.empty_like(p) for p in ps]
        ops.perturb_(ps, grads, bks, total, 0.05)
        ops.restore_(ps, bks)
        states = [(torch.zeros_like(p), torch.zeros_like(p), torch.zeros((), device=DEV))
                  for p in ps]
        ops.restore_adamw_(ps, bks, grads, [s[0] for s in states], [s[1] for s in states],
                           [s[2] for s in states], 1e-3, 0.9, 0.999, 0.01, 1e-8,
                           grad_scale, ~torch.isfinite(total))
        probs = torch.full((len(ps),), 0.5, dtype=torch.float64, device=DEV)
        mask = torch.ones(len(ps), dtype=torch.bool, device=DEV)
        ops.bandit_update_(probs, mask, norms, ~torch.isfinite(total), 1e-3, 2.0)
        ops.sample_mask(probs, generator)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    closure()
    opt.second_step()


def test_dense_sam_step_never_syncs():
    model, closure, _ = _model_and_closure()
    opt = slsam.SAM(model.parameters(), torch.optim.AdamW, lr=1e-3)
    opt.step(closure)
    syncs = _syncs(lambda: opt.step(closure))
    assert not syncs, f"SAM's step synced: {syncs}"


def test_sam_steps_match_on_cpu_and_cuda():
    cpu_model = tiny_mlp(0)
    gpu_model = tiny_mlp(0).to(DEV)
    x, y = batch(0)
    models = {"cpu": (cpu_model, x, y), DEV: (gpu_model, x.to(DEV), y.to(DEV))}
    opts = {k: slsam.SAM(m.parameters(), torch.optim.AdamW, lr=1e-2, weight_decay=0.01)
            for k, (m, _, _) in models.items()}
    for _ in range(3):
        for k, (m, xx, yy) in models.items():
            def closure(m=m, xx=xx, yy=yy):
                loss = torch.nn.functional.cross_entropy(m(xx), yy)
                loss.backward()
                return loss
            opts[k].step(closure)
    for a, b in zip(cpu_model.parameters(), gpu_model.parameters(), strict=False):
        # Matmuls and reductions round differently on the two devices; a broken
        # kernel is off by a whole step (lr = 1e-2).
        torch.testing.assert_close(b.detach().cpu(), a.detach(), rtol=1e-3, atol=1e-4)


# -------------------------------------------------------------------- opcheck

OPCHECK_CASES = {
    "grad_norms": lambda: (torch.ops.slsam.grad_norms.default,
                           ([torch.randn(5, device=DEV), torch.randn(2, 3, device=DEV)],)),
    "grad_norms_weights": lambda: (torch.ops.slsam.grad_norms.default,
                                   ([torch.randn(5, device=DEV)], [torch.randn(5, device=DEV)])),
    "perturb_": lambda: (torch.ops.slsam.perturb_.default,
                         ([torch.randn(5, device=DEV)], [torch.randn(5, device=DEV)],
                          [torch.empty(5, device=DEV)], torch.tensor(2.0, device=DEV), 0.05,
                          False)),
    "restore_": lambda: (torch.ops.slsam.restore_.default,
                         ([torch.randn(5, device=DEV)], [torch.randn(5, device=DEV)])),
    "restore_adamw_": lambda: (
        torch.ops.slsam.restore_adamw_.default,
        ([torch.randn(5, device=DEV)], [torch.randn(5, device=DEV)], [torch.randn(5, device=DEV)],
         [torch.zeros(5, device=DEV)], [torch.zeros(5, device=DEV)],
         [torch.tensor(0.0, device=DEV)], 1e-3, 0.9, 0.999, 0.01, 1e-8, None, None)),
    "bandit_update_": lambda: (
        torch.ops.slsam.bandit_update_.default,
        (torch.full((6,), 0.5, dtype=torch.float64, device=DEV),
         torch.tensor([True, False, True, False, True, False], device=DEV),
         torch.rand(3, device=DEV), None, 1e-3, 3.0, False)),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES))
def test_opcheck_cuda(case):
    op, args = OPCHECK_CASES[case]()
    torch.library.opcheck(op, args)


def test_opcheck_sample_mask_cuda():
    probs = torch.full((10,), 0.3, dtype=torch.float64, device=DEV)
    torch.library.opcheck(torch.ops.slsam.sample_mask.default,
                          (probs, torch.Generator(device=DEV).manual_seed(0)),
                          test_utils=("test_schema", "test_autograd_registration",
                                      "test_faketensor"))


def test_mixed_devices_are_refused():
    p = torch.randn(5, device=DEV)
    with pytest.raises(RuntimeError, match="device"):
        ops.perturb_([p, torch.randn(3)], [torch.randn(5, device=DEV), torch.randn(3)],
                     [torch.empty(5, device=DEV), torch.empty(3)], torch.tensor(1.0), 0.1)
    with pytest.raises(RuntimeError, match="device"):
        ops.restore_([p], [torch.randn(5)])


def test_aliased_operands_are_refused():
    p = torch.randn(8, device=DEV)
    before = p.clone()
    with pytest.raises(RuntimeError, match="same memory"):
        ops.perturb_([p], [torch.randn(8, device=DEV)], [p], torch.tensor(1.0, device=DEV), 0.1)
    m = torch.zeros(8, device=DEV)
    with pytest.raises(RuntimeError, match="same memory"):
        ops.restore_adamw_([p], [torch.randn(8, device=DEV)], [torch.randn(8, device=DEV)], [m],
                           [m], [torch.tensor(0.0, device=DEV)], **HYPER)
    assert torch.equal(p, before)
