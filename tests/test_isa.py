"""The CPU kernels' two loop targets (AVX2 and the baseline x86-64 build, see
csrc/cpu/span_loops.h) give the same bits: both round every operation alike
(-ffp-contract=off, same association order). The baseline runs in a
subprocess with SLSAM_CPU_ISA=baseline, since the target is chosen once; so
does the AVX2 copy with streaming stores forced on for every list
(SLSAM_CPU_STREAM_BYTES=0; by default only lists larger than the caches use
them), with tensors that start off the vectors' alignment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from slsam import _C

SCRIPT = r"""
import sys
import torch
import slsam
from slsam import _C, ops

torch.manual_seed(0)
out = {"isa": _C.cpu_isa()}
# sizes: empty, tiny, around the 16-element step of the vector loops, odd,
# across the 1024-element block and the 65536 chunk
sizes = [0, 1, 7, 15, 16, 17, 33, 1023, 1025, 65537, 200003]

def unaligned(n, dtype):
    # a view one element into its buffer: streaming stores start after a head
    return torch.randn(n + 1, dtype=dtype)[1:]


for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
    xs = [torch.randn(n, dtype=dtype) if i % 2 else unaligned(n, dtype)
          for i, n in enumerate(sizes)]
    gs = [torch.randn(n, dtype=dtype) * 1e-2 for n in sizes]
    norms, total = ops.grad_norms(gs)
    wnorms, _ = ops.grad_norms(gs, xs)
    for adaptive in (False, True):
        ps = [x.clone() for x in xs]
        bks = [unaligned(n, dtype) for n in sizes]
        ops.perturb_(ps, gs, bks, total, 0.05, adaptive)
        out[f"{dtype}-perturb-{adaptive}"] = ps + bks
        ops.restore_(ps, bks)
        out[f"{dtype}-restore-{adaptive}"] = ps
    ps = [unaligned(n, dtype) for n in sizes]
    ms = [torch.randn(n, dtype=dtype) * 1e-3 for n in sizes]
    vs = [torch.rand(n, dtype=dtype) * 1e-4 for n in sizes]
    steps = [torch.tensor(3.0) for _ in sizes]
    ops.restore_adamw_(ps, xs, gs, ms, vs, steps, 1e-3, 0.9, 0.999, 0.01, 1e-8,
                       grad_scale=torch.tensor(2.0))
    out[f"{dtype}-norms"] = [norms, total, wnorms]
    out[f"{dtype}-adamw"] = ps + ms + vs
    # non-finite gradients: NaN and inf through every operand's conversion
    for g in gs:
        g[::5] = float("nan")
        g[1::7] = float("inf")
        g[2::11] = -float("inf")
    ops.restore_adamw_(ps, xs, gs, ms, vs, steps, 1e-3, 0.9, 0.999, 0.01, 1e-8)
    out[f"{dtype}-adamw-nonfinite"] = ps + ms + vs
torch.save(out, sys.argv[1])
"""


def run(path: Path, isa: str | None, stream_bytes: int | None = None) -> dict:
    env = dict(os.environ)
    env.pop("SLSAM_CPU_ISA", None)
    env.pop("SLSAM_CPU_STREAM_BYTES", None)
    if isa is not None:
        env["SLSAM_CPU_ISA"] = isa
    if stream_bytes is not None:
        env["SLSAM_CPU_STREAM_BYTES"] = str(stream_bytes)
    subprocess.run([sys.executable, "-c", SCRIPT, str(path)], check=True, env=env)
    return torch.load(path)


def test_cpu_isa_reports_a_known_target():
    assert _C.cpu_isa() in {"avx2", "baseline"}


@pytest.mark.skipif(_C.cpu_isa() != "avx2", reason="this CPU runs the baseline loops only")
@pytest.mark.parametrize("stream_bytes", [None, 0], ids=["default", "streaming stores"])
def test_avx2_and_baseline_loops_are_bit_identical(tmp_path: Path, stream_bytes: int | None):
    fast = run(tmp_path / "fast.pt", None, stream_bytes)
    base = run(tmp_path / "base.pt", "baseline")
    assert fast.pop("isa") == "avx2"
    assert base.pop("isa") == "baseline"
    assert fast.keys() == base.keys()
    for key in fast:
        for a, b in zip(fast[key], base[key], strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape, key
            assert torch.equal(a.view(-1).view(torch.uint8) if a.numel() else a,
                               b.view(-1).view(torch.uint8) if b.numel() else b), key
