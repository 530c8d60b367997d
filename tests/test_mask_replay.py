"""The CUDA mask sampler's draws, replayed on the CPU.

tests/test_cuda.py checks the masks a GPU draws against a Python mirror of the
kernel's Philox stream (tests/philox_mirror.py). This test compiles the kernel's
own draw code (csrc/cuda/mask_draws.h: at::philox_engine is host and device
code) for the host, runs the kernel's block one thread after another, and checks
it against the same mirror: the mirror and the kernel's map of threads to arms
and values agree without a GPU. Compiling takes ~30-60 s, once per machine.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
import torch
from philox_mirror import MASK_THREADS, mirror_sample_mask

ROOT = Path(__file__).resolve().parents[1]

# Mirrors sample_mask_kernel: every thread draws its arms, then the block stops
# if any arm came out on (__syncthreads_or); after kMaxMaskDraws empty draws,
# fallback_arm.
REPLAY = r"""
#include <torch/extension.h>

#include <vector>

#include "mask_draws.h"
#include "slsam/bandit.h"  // fallback_arm, kMaxMaskDraws

torch::Tensor replay(torch::Tensor probs, int64_t seed, int64_t offset) {
  const int64_t n = probs.numel();
  torch::Tensor mask = torch::zeros({n}, torch::kBool);
  const double* p = probs.data_ptr<double>();
  bool* out = mask.data_ptr<bool>();
  std::vector<at::philox_engine> engines;
  for (int t = 0; t < slsam::kMaskThreads; ++t) {
    engines.push_back(slsam::mask_engine(static_cast<uint64_t>(seed), t,
                                         static_cast<uint64_t>(offset)));
  }
  for (int draw = 0; draw < slsam::kMaxMaskDraws; ++draw) {
    bool any = false;
    for (int t = 0; t < slsam::kMaskThreads; ++t) {
      any = slsam::draw_owned_arms(engines[t], p, n, t, out) || any;
    }
    if (any) return mask;
  }
  out[slsam::fallback_arm(p, n)] = true;
  return mask;
}
"""


@pytest.fixture(scope="module")
def replay():
    from torch.utils.cpp_extension import load_inline

    # NOTE: torch's build cache hashes the inline source, not the headers it
    # includes: name the module after them, so an edited header is rebuilt.
    headers = [ROOT / "csrc" / "cuda" / "mask_draws.h", ROOT / "csrc" / "include" / "slsam" / "bandit.h"]
    digest = hashlib.sha1(b"".join(h.read_bytes() for h in headers)).hexdigest()[:12]
    module = load_inline(
        f"slsam_mask_replay_{digest}", cpp_sources=REPLAY, functions=["replay"],
        extra_include_paths=[str(ROOT / "csrc" / "cuda"), str(ROOT / "csrc" / "include")],
        extra_cflags=["-O2"], verbose=False)
    return module.replay


def probs_for(n: int, p: float) -> torch.Tensor:
    probs = torch.full((n,), p, dtype=torch.float64)
    probs[::3] *= 2
    return probs


@pytest.mark.slow
@pytest.mark.parametrize("n, p", [(1, 0.5), (10, 0.02), (MASK_THREADS - 1, 0.2), (MASK_THREADS, 0.1),
                                  (MASK_THREADS + 1, 0.05), (600, 0.01), (1000, 0.3)])
@pytest.mark.parametrize("seed, offset", [(0, 0), (1234, 1), (1234, 2), (7, 3),
                                          ((1 << 40) + 7, 8004), (99, 123457)])
def test_kernel_draws_match_the_mirror(replay, n, p, seed, offset):
    probs = probs_for(n, p)
    assert replay(probs, seed, offset).tolist() == mirror_sample_mask(probs, seed, offset)


@pytest.mark.slow
@pytest.mark.parametrize("probs", [[0.0] * 5, [math.nan, 0.0, math.nan], [0.0, 1e-300, 0.0]],
                         ids=["zeros", "nan", "tiny"])
def test_empty_draws_fall_back_like_the_mirror(replay, probs):
    t = torch.tensor(probs, dtype=torch.float64)
    got = replay(t, 5, 0).tolist()
    assert got == mirror_sample_mask(t, 5, 0)
    assert sum(got) == 1


@pytest.mark.slow
def test_replay_is_a_bernoulli_sample(replay):
    # Not a tautology of the mirror: the replayed kernel's frequencies are p.
    probs = torch.tensor([0.1, 0.5, 0.9] * 100, dtype=torch.float64)
    trials = 200
    hits = sum(replay(probs, 11, 4 * 2 * 2 * 1000 * k).double() for k in range(trials))
    freq = hits.view(100, 3).sum(0) / (100 * trials)
    sigma = (probs[:3] * (1 - probs[:3]) / (100 * trials)).sqrt()
    assert ((freq - probs[:3]).abs() < 5 * sigma).all(), freq
