// The random draws of the CUDA mask sampler (cuda/bandit_cuda.cu), host- and
// device-callable so that tests/test_mask_replay.py can replay the kernel's
// exact stream on the CPU (at::philox_engine is the same code on both sides)
// and compare it with the Python Philox mirror the GPU test uses.
//
// One block of kMaskThreads threads; thread t owns arms t, t + kMaskThreads,
// ... and draws their uniforms from its own Philox4x32-10 subsequence
// (subsequence t of the generator's seed, starting at the generator's offset
// in 32-bit values), two values per arm: u = (hi << 21 | lo >> 11) * 2^-53 in
// [0, 1), 53 random bits as for fp64 uniforms.
#pragma once

#include <ATen/core/PhiloxRNGEngine.h>
#include <c10/macros/Macros.h>

#include <cstdint>

namespace slsam {

constexpr int kMaskThreads = 256;

// 32-bit values one thread consumes per draw, at most.
C10_HOST_DEVICE inline int64_t mask_values_per_draw(int64_t n) {
  return 2 * ((n + kMaskThreads - 1) / kMaskThreads);
}

// Thread `thread`'s engine for a generator state (seed, offset); `offset`
// counts 32-bit values, as curand_init's does.
C10_HOST_DEVICE inline at::philox_engine mask_engine(uint64_t seed, uint64_t thread,
                                                     uint64_t offset) {
  at::philox_engine engine(seed, thread, offset / 4);
  for (uint64_t skip = 0; skip < offset % 4; ++skip) engine();
  return engine;
}

// One Bernoulli draw of the arms `thread` owns; true if any came out on.
C10_HOST_DEVICE inline bool draw_owned_arms(at::philox_engine& engine, const double* probs,
                                            int64_t n, int64_t thread, bool* out) {
  bool any = false;
  for (int64_t i = thread; i < n; i += kMaskThreads) {
    const uint64_t hi = engine();
    const uint64_t lo = engine();
    const double u = static_cast<double>((hi << 21) | (lo >> 11)) * 0x1p-53;
    const bool on = u < probs[i];
    out[i] = on;
    any = any || on;
  }
  return any;
}

}  // namespace slsam
