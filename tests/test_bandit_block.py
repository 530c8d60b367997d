"""The CUDA kernel's EXP3 update (one block of 256 threads), replayed on the CPU.

csrc/include/slsam/bandit_block.h writes the update once over a Block policy;
the CUDA kernel runs it with the threads of a block, and HostBlock replays the
same 256 threads one after another, with the same thread -> element map and the
same reduction tree. This test compiles that header for the host and checks the
block update against the serial update (the CPU kernel, ops.bandit_update_ on
CPU tensors) and slsam.reference, without a GPU. Compiling takes ~30 s, once
per machine.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from slsam import ops, reference

ROOT = Path(__file__).resolve().parents[1]

BLOCK = r"""
#include <torch/extension.h>

#include <vector>

#include "slsam/bandit_block.h"

// Returns false when the norm count does not match the mask (nothing written).
bool block_update(torch::Tensor probs, torch::Tensor mask, torch::Tensor norms, double alpha,
                  double k, bool normalize) {
  const int64_t n = probs.numel();
  std::vector<double> w(static_cast<size_t>(n));
  std::vector<int64_t> slot(static_cast<size_t>(n));
  std::vector<unsigned char> capped(static_cast<size_t>(n));
  slsam::HostBlock block;
  return slsam::bandit_update_block(block, probs.data_ptr<double>(), mask.data_ptr<bool>(),
                                    norms.data_ptr<float>(), n, norms.numel(), alpha, k,
                                    normalize, w.data(), slot.data(), capped.data());
}
"""


@pytest.fixture(scope="module")
def block_update():
    from torch.utils.cpp_extension import load_inline

    # NOTE: torch's build cache hashes the inline source, not the headers it
    # includes: name the module after them, so an edited header is rebuilt.
    include = ROOT / "csrc" / "include" / "slsam"
    headers = [include / "bandit_block.h", include / "bandit.h", include / "macros.h"]
    digest = hashlib.sha1(b"".join(h.read_bytes() for h in headers)).hexdigest()[:12]
    module = load_inline(
        f"slsam_bandit_block_{digest}", cpp_sources=BLOCK, functions=["block_update"],
        extra_include_paths=[str(ROOT / "csrc" / "include")],
        extra_cflags=["-O2", "-ffp-contract=off"], verbose=False)
    return module.block_update


def bandit_case(n: int, seed: int = 0, frac: float = 0.3, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    probs = torch.rand(n, generator=g, dtype=torch.float64) * 0.8 + 0.05
    mask = torch.rand(n, generator=g) < frac
    mask[0] = True
    norms = (torch.rand(int(mask.sum()), generator=g) * scale).float()
    return probs, mask, norms


def run(fn, probs, mask, norms, k, normalize, alpha=1e-3):
    p = probs.clone()
    fn(p, mask, norms, None, alpha, k, normalize)
    return p


# n around the block size (255, 256, 257: threads with no arm, with one, with
# two), 10k arms (40 per thread), large raw norms (the loss cancels: the FMA case).
CASES = {"1": (1, 1.0), "7": (7, 1.0), "255": (255, 1.0), "256": (256, 1.0), "257": (257, 1.0),
         "300-large-norms": (300, 300.0), "1000-huge-norms": (1000, 1e4), "10k": (10000, 1.0)}


@pytest.mark.slow
@pytest.mark.parametrize("normalize", [False, True], ids=["raw", "normalized"])
@pytest.mark.parametrize("case", list(CASES))
def test_block_update_matches_serial_and_reference(block_update, case, normalize):
    n, scale = CASES[case]
    probs, mask, norms = bandit_case(n, scale=scale)
    k = max(1.0, 0.2 * n)
    serial = run(ops.bandit_update_, probs, mask, norms, k, normalize)
    blocked = probs.clone()
    assert block_update(blocked, mask, norms, 1e-3, k, normalize)
    # The same per-arm operations; only the sums' association order differs.
    torch.testing.assert_close(blocked, serial, rtol=1e-12, atol=1e-300)
    ref = run(reference.bandit_update_, probs, mask, norms, k, normalize)
    torch.testing.assert_close(blocked, ref, rtol=1e-10, atol=1e-300)
    assert abs(float(blocked.sum()) - min(k, n)) < 1e-6 * n
    again = probs.clone()
    block_update(again, mask, norms, 1e-3, k, normalize)
    assert torch.equal(again, blocked)


@pytest.mark.slow
def test_block_capping_rounds_match_serial(block_update):
    # Weights spread over decades, so the projection caps arms over several rounds.
    n = 600
    probs = torch.logspace(-6, 0, n, dtype=torch.float64)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[::2] = True
    norms = torch.linspace(0.0, 1.0, int(mask.sum())).float()
    for k in (1.0, 50.0, 299.0, 599.0, 600.0, 700.0):
        serial = run(ops.bandit_update_, probs, mask, norms, k, False)
        blocked = probs.clone()
        assert block_update(blocked, mask, norms, 1e-3, k, False)
        torch.testing.assert_close(blocked, serial, rtol=1e-12, atol=1e-300)
        assert int((blocked == 1.0).sum()) == int((serial == 1.0).sum())


@pytest.mark.slow
def test_block_edge_cases(block_update):
    n = 300
    probs, mask, norms = bandit_case(n)
    # No active arm: nothing changes.
    p = probs.clone()
    assert block_update(p, torch.zeros(n, dtype=torch.bool), torch.zeros(0), 1e-3, 60.0, False)
    assert torch.equal(p, probs)
    # Wrong norm count: refused, nothing written.
    p = probs.clone()
    assert not block_update(p, mask, norms[:-1], 1e-3, 60.0, False)
    assert torch.equal(p, probs)
    # NaN and zero norms: the serial kernel's result (a NaN never wins the max).
    bad = norms.clone()
    bad[1] = float("nan")
    bad[2] = 0.0
    for normalize in (False, True):
        serial = run(ops.bandit_update_, probs, mask, bad, 60.0, normalize)
        blocked = probs.clone()
        assert block_update(blocked, mask, bad, 1e-3, 60.0, normalize)
        torch.testing.assert_close(blocked, serial, rtol=1e-12, atol=1e-300, equal_nan=True)
