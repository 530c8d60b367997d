"""A Python mirror of the CUDA mask sampler's random stream (csrc/cuda/mask_draws.h):
Philox4x32-10 as at::philox_engine computes it, and the kernel's map of threads to
arms and values. tests/test_cuda.py checks the GPU's masks against it;
tests/test_mask_replay.py checks the kernel's draw code, compiled for the host,
against it."""

from __future__ import annotations

import math

import torch

M32 = 0xFFFFFFFF
MASK_THREADS = 256  # csrc/cuda/mask_draws.h kMaskThreads
MAX_DRAWS = 1000  # kMaxMaskDraws (csrc/include/slsam/bandit.h)


def philox4x32_10(ctr: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, int, int, int]:
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c3 ^ k1) & M32, \
            p0 & M32
    return c0, c1, c2, c3


class PhiloxStream:
    """at::philox_engine(seed, subsequence, offset / 4), then offset % 4 values skipped."""

    def __init__(self, seed, subsequence, offset):
        self.key = (seed & M32, (seed >> 32) & M32)
        self.counter = (subsequence << 64) + offset // 4
        self.out, self.state = None, 0
        for _ in range(offset % 4):
            self()

    def __call__(self):
        if self.state == 0:
            c = self.counter
            self.out = philox4x32_10(((c) & M32, (c >> 32) & M32, (c >> 64) & M32,
                                      (c >> 96) & M32), self.key)
            self.counter = (c + 1) % (1 << 128)
        v = self.out[self.state]
        self.state = (self.state + 1) & 3
        return v


def mirror_sample_mask(probs: torch.Tensor, seed: int, offset: int) -> list[bool]:
    """The CUDA kernel's draws, in Python."""
    p = probs.tolist()
    n = len(p)
    streams = [PhiloxStream(seed, t, offset) for t in range(min(n, MASK_THREADS))]
    for _ in range(MAX_DRAWS):
        mask = [False] * n
        for t, stream in enumerate(streams):
            for i in range(t, n, MASK_THREADS):
                hi, lo = stream(), stream()
                mask[i] = ((hi << 21) | (lo >> 11)) * 2.0**-53 < p[i]
        if any(mask):
            return mask
    q = [-1.0 if math.isnan(x) else x for x in p]  # slsam::fallback_arm
    best = q.index(max(q))
    return [i == best for i in range(n)]
