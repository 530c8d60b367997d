"""What only the CUDA kernels have: streams, CUDA graphs, a second GPU, device-side
scalars, the Philox mask sampler, >2^31-element tensors and >65,535-tensor lists,
and the optimizer's host syncs on a GPU (with and without a GradScaler).

The operator tests shared with the CPU kernels are in tests/test_ops.py (they
run on every device present). Every test here needs a GPU and an extension
built with the CUDA kernels (SLSAM_BUILD_CUDA=1, see .ci/cuda_compile.sh);
without them the whole module is skipped.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from conftest import (
    CHUNK,
    HYPER,
    NEEDS_CUDA,
    SIZES,
    adamw_inputs,
    batch,
    make,
    misaligned,
    run_adamw,
    tiny_mlp,
)
from philox_mirror import M32, MASK_THREADS, MAX_DRAWS, mirror_sample_mask, philox4x32_10

import slsam
from slsam import ops, reference

pytestmark = NEEDS_CUDA

DEV = "cuda"


# ----------------------------------------------------------------- grad_norms


def test_grad_norms_deterministic_and_alignment_independent():
    grads = make(SIZES["large"] + SIZES["many"] + SIZES["odd"], torch.float32, 4, device=DEV)
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


def test_grad_norms_of_a_tensor_do_not_depend_on_its_neighbours():
    # Tensors of up to 4096 elements are packed, up to 32 to a block, one warp each
    # (slsam::plan_blocks): a tensor's summation order follows from its own size only.
    sizes = [(1,), (384,), (4095,), (4096,), (4097,), (CHUNK + 1,), (7, 9), *SIZES["many"][:200]]
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        grads = make(sizes, dtype, 5, device=DEV)
        norms, _ = ops.grad_norms(grads)
        for i, g in enumerate(grads[:8]):
            alone, _ = ops.grad_norms([g])
            assert torch.equal(norms[i], alone[0]), (dtype, sizes[i])
        reverse, _ = ops.grad_norms(grads[::-1])
        assert torch.equal(reverse.flip(0), norms), dtype
        # Packed tensors misaligned: the same bits on the scalar path.
        moved, _ = ops.grad_norms([misaligned(g) for g in grads])
        assert torch.equal(moved, norms), dtype


# -------------------------------------------------------------- restore_adamw


def test_restore_adamw_refuses_steps_on_the_host():
    inputs = list(adamw_inputs([(10,)], torch.float32, device=DEV))
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
@pytest.mark.parametrize("n, scale", [(1, 1.0), (7, 1.0), (255, 1.0), (256, 1.0), (257, 1.0),
                                      (300, 1.0), (300, 300.0), (1000, 1e4), (10000, 1.0)],
                         ids=["1", "7", "255", "256", "257", "300", "300-large-norms",
                              "1000-huge-norms", "10k"])
def test_bandit_update_matches_cpu_and_reference(n, scale, normalize):
    probs, mask, norms = bandit_case(n, scale=scale)
    k = max(1.0, 0.2 * n)
    on_cpu = probs.clone()
    ops.bandit_update_(on_cpu, mask, norms, None, 1e-3, k, normalize)
    on_gpu = probs.to(DEV)
    ops.bandit_update_(on_gpu, mask.to(DEV), norms.to(DEV), None, 1e-3, k, normalize)
    # The same fp64 operations per arm, no FMA on either side (large raw norms
    # make the loss cancel, where a contracted FMA would show); only the sums'
    # order (a block tree on CUDA, a loop on the CPU) and CUDA's exp differ.
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, rtol=1e-12, atol=1e-300)
    again = probs.to(DEV)
    ops.bandit_update_(again, mask.to(DEV), norms.to(DEV), None, 1e-3, k, normalize)
    assert torch.equal(again, on_gpu), "same input, different bits"
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


def test_sample_mask_fallback_with_more_arms_than_threads():
    # n > 256: the fallback scans arms that other threads drew.
    n = 3 * MASK_THREADS + 5
    for fill, best in ((0.0, 700), (float("nan"), 300)):
        p = torch.full((n,), fill, dtype=torch.float64)
        p[best] = 1e-300  # draws as 0, but the largest probability
        p[best + 1] = 1e-300  # a tie: the first wins
        got = ops.sample_mask(p.to(DEV), torch.Generator(device=DEV).manual_seed(0)).cpu()
        assert got.nonzero().flatten().tolist() == [best]
        assert torch.equal(got, ops.sample_mask(p, torch.Generator().manual_seed(0)))


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


# ------------------------------------------------------------ refused inputs


def test_mixed_devices_are_refused():
    p = torch.randn(5, device=DEV)
    with pytest.raises(RuntimeError, match="device"):
        ops.perturb_([p, torch.randn(3)], [torch.randn(5, device=DEV), torch.randn(3)],
                     [torch.empty(5, device=DEV), torch.empty(3)], torch.tensor(1.0), 0.1)
    with pytest.raises(RuntimeError, match="device"):
        ops.restore_([p], [torch.randn(5)])


# ------------------------------------------------- streams, graphs, devices


def _every_op(device, seed=0):
    """Runs every operator once on fresh inputs; returns everything they wrote."""
    inputs = adamw_inputs([(CHUNK + 5,), (300,), (7, 9)], torch.float32, seed, device=device)
    params, _, grads, *_ = inputs
    norms, total = ops.grad_norms(grads)
    perturbed = [p.clone() for p in params]
    bks = [torch.empty_like(p) for p in params]
    ops.perturb_(perturbed, grads, bks, total, 0.05)
    ops.restore_(perturbed, bks)
    adamw = run_adamw(ops.restore_adamw_, inputs)
    probs = torch.full((3,), 0.5, dtype=torch.float64, device=device)
    ops.bandit_update_(probs, torch.ones(3, dtype=torch.bool, device=device), norms, None,
                       1e-3, 2.0)
    mask = ops.sample_mask(probs, torch.Generator(device=device).manual_seed(seed))
    return [norms, total, *perturbed, *bks, *adamw[0], *adamw[3], *adamw[4], *adamw[5],
            probs, mask]


def test_every_op_on_a_non_default_stream():
    expect = _every_op(DEV)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        torch.cuda._sleep(1_000_000)  # keep the stream busy so ordering bugs show
        got = _every_op(DEV)
    s.synchronize()
    for a, b in zip(expect, got, strict=True):
        assert torch.equal(a, b)


def test_cuda_graph_capture_is_refused_clearly():
    grads = make([(1000,), (10,)], torch.float32, device=DEV)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up outside the capture, as torch.cuda.graph requires
        ops.grad_norms(grads)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph"):
        with torch.cuda.graph(graph):
            ops.grad_norms(grads)
    # The eager ops still work afterwards.
    norms, _ = ops.grad_norms(grads)
    torch.testing.assert_close(norms, reference.grad_norms(grads)[0])


def test_cuda_graph_capture_of_a_step_is_refused_clearly():
    model, closure, _ = _model_and_closure()
    opt = slsam.SLSAM(model.parameters(), torch.optim.AdamW, lr=1e-3, sparsity=0.5, seed=0)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            opt.step(closure)
    torch.cuda.current_stream().wait_stream(s)
    closure()  # the first pass's gradients, outside the capture
    before = [p.detach().clone() for p in model.parameters()]
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError, match="CUDA graph"):
        with torch.cuda.graph(graph):
            opt.first_step()
    # Refused before anything was written.
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_tensors_on_the_second_gpu():
    # The current device stays cuda:0: the kernels must run on the tensors' device.
    assert torch.cuda.current_device() == 0
    expect = [t.cpu() for t in _every_op(DEV)]
    got = _every_op("cuda:1")
    assert all(t.device == torch.device("cuda:1") for t in got)
    for a, b in zip(expect, got, strict=True):
        assert torch.equal(a, b.cpu())


@pytest.mark.slow
def test_more_than_65535_tensors_in_one_list():
    # More blocks than a grid's y/z limit and than one 16-bit index: every tensor's own result.
    n = 70_000
    grads = [torch.full((1 + i % 3,), float(1 + i % 5), device=DEV) for i in range(n)]
    norms, total = ops.grad_norms(grads)
    expect = torch.tensor([(1 + i % 5) * math.sqrt(1 + i % 3) for i in range(n)])
    torch.testing.assert_close(norms.cpu(), expect, rtol=1e-6, atol=0)
    torch.testing.assert_close(float(total), float(expect.double().norm()), rtol=1e-6, atol=0)
    params = [torch.zeros_like(g) for g in grads]
    bks = [torch.empty_like(p) for p in params]
    ops.perturb_(params, grads, bks, torch.tensor(1.0, device=DEV), 1.0)
    assert torch.equal(torch.cat(params), torch.cat(grads))
    ops.restore_(params, bks)
    assert not bool(torch.cat(params).any())
    steps = [torch.zeros((), device=DEV) for _ in range(n)]
    ops.restore_adamw_(params, bks, grads, [torch.zeros_like(p) for p in params],
                       [torch.zeros_like(p) for p in params], steps, **HYPER)
    assert bool((torch.stack(steps) == 1).all())
    probs = torch.full((n,), 0.5, dtype=torch.float64, device=DEV)
    ops.bandit_update_(probs, torch.ones(n, dtype=torch.bool, device=DEV), norms, None, 1e-3,
                       n / 2)
    assert abs(float(probs.sum()) - n / 2) < 1e-6 * n


# ------------------------------------------------------------ host syncs


def test_slsam_step_with_grad_scaler_syncs_only_to_read_the_mask():
    model, _, (x, y) = _model_and_closure()
    opt = slsam.SLSAM(model.parameters(), torch.optim.AdamW, lr=1e-3, sparsity=0.5, seed=0)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)

    def closure():
        loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        return loss

    def step():
        opt.step(closure, scaler=scaler)
        scaler.update()

    for _ in range(2):
        step()
    syncs = _syncs(step)
    assert len(syncs) == 1, f"expected one sync (the mask read), got {len(syncs)}: {syncs}"
