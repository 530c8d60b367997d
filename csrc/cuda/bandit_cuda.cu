// The EXP3 update and mask sampling on CUDA. n is the number of parameter
// tensors (hundreds to ~10k), so each is one block of one kernel that keeps
// the bandit state on the device: no norms copied to the host, no sync.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <torch/library.h>

#include <mutex>
#include <type_traits>

#include "launch.cuh"
#include "mask_draws.h"
#include "slsam/bandit.h"
#include "slsam/bandit_block.h"

namespace slsam::cuda {
namespace {

// ------------------------------------------------------------ bandit_update_

// The threads of one block as the Block policy of slsam/bandit_block.h (which
// describes the contract): element i belongs to thread i % kBanditThreads, the
// reductions are a fixed pairwise tree in shared memory (the tree HostBlock
// replays on the host), the scan gives each thread a contiguous run of arms.
struct DeviceBlock {
  static constexpr int kThreads = kBanditThreads;
  double* s_double;  // shared, kThreads each
  int64_t* s_int;

  template <typename T>
  __device__ T* scratch() {
    static_assert(std::is_same_v<T, double> || std::is_same_v<T, int64_t>, "double or int64_t");
    if constexpr (std::is_same_v<T, double>) {
      return s_double;
    } else {
      return s_int;
    }
  }

  template <typename Fn>
  __device__ void each(int64_t n, Fn&& fn) {
    for (int64_t i = threadIdx.x; i < n; i += kThreads) fn(i);
    __syncthreads();
  }

  template <typename T, typename Fn, typename Op>
  __device__ T reduce(int64_t n, T init, Fn&& fn, Op op) {
    T* s = scratch<T>();
    T v = init;
    for (int64_t i = threadIdx.x; i < n; i += kThreads) v = op(v, fn(i));
    s[threadIdx.x] = v;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half >>= 1) {
      if (static_cast<int>(threadIdx.x) < half) s[threadIdx.x] = op(s[threadIdx.x], s[threadIdx.x + half]);
      __syncthreads();
    }
    const T result = s[0];
    __syncthreads();  // everyone has read s[0] before the next call writes s
    return result;
  }

  template <typename Flag>
  __device__ int64_t exclusive_scan(int64_t n, Flag&& flag, int64_t* out) {
    const int t = static_cast<int>(threadIdx.x);
    const int64_t per = (n + kThreads - 1) / kThreads;
    const int64_t begin = per * t < n ? per * t : n;
    const int64_t end = begin + per < n ? begin + per : n;
    int64_t own = 0;
    for (int64_t i = begin; i < end; ++i) own += flag(i) ? 1 : 0;
    s_int[t] = own;
    __syncthreads();
    // Hillis-Steele inclusive scan of the per-thread counts.
    for (int d = 1; d < kThreads; d <<= 1) {
      const int64_t add = t >= d ? s_int[t - d] : 0;
      __syncthreads();
      s_int[t] += add;
      __syncthreads();
    }
    int64_t next = s_int[t] - own;
    for (int64_t i = begin; i < end; ++i) {
      out[i] = next;
      next += flag(i) ? 1 : 0;
    }
    const int64_t count = s_int[kThreads - 1];
    __syncthreads();
    return count;
  }
};

// One block runs slsam::bandit_update_block; the CPU kernel runs the serial
// slsam::bandit_update. The same fp64 operations per arm (no FMA contraction:
// slsam/bandit.h's NOTE); the sums differ only in association order (a fixed
// tree here, a loop there), so CPU and CUDA agree to ~1e-15 relative, and each
// device gives the same bits on every run.
//
// NOTE: the CPU kernel checks norms.numel() == mask.sum() on the host; here
// that count lives on the device, so the kernel checks it (a device-side
// assert, as ATen does for bad indices) instead of syncing.
__global__ void __launch_bounds__(kBanditThreads)
    bandit_update_kernel(double* probs, const bool* mask, const float* norms, int64_t n,
                         int64_t n_norms, ScalarArg found_inf, double alpha, double k,
                         bool normalize, double* w, int64_t* slot, unsigned char* capped) {
  __shared__ double s_double[kBanditThreads];
  __shared__ int64_t s_int[kBanditThreads];
  DeviceBlock block{s_double, s_int};
  if (found_inf.present && read_scalar(found_inf) != 0.0) {
    // Still check the count: a caller's bug must not hide behind a skipped step.
    const int64_t active = block.exclusive_scan(n, [&](int64_t i) { return mask[i]; }, slot);
    CUDA_KERNEL_ASSERT_MSG(active == n_norms,
                           "slsam::bandit_update_: norms must have one entry per active arm");
    return;
  }
  const bool counts_match = bandit_update_block(block, probs, mask, norms, n, n_norms, alpha,
                                                k, normalize, w, slot, capped);
  CUDA_KERNEL_ASSERT_MSG(counts_match,
                         "slsam::bandit_update_: norms must have one entry per active arm");
}

void bandit_update_cuda(const at::Tensor& probs, const at::Tensor& mask, const at::Tensor& norms,
                        const std::optional<at::Tensor>& found_inf, double alpha, double k,
                        bool normalize) {
  check_bandit_args(probs, mask, norms);
  TORCH_CHECK(probs.is_cuda(), "slsam: probs is on ", probs.device(), "; expected CUDA");
  const int64_t n = probs.numel();
  if (n == 0) return;
  c10::cuda::CUDAGuard guard(probs.device());
  at::Tensor keep;
  const ScalarArg inf_arg = scalar_arg(found_inf, probs.device(), "found_inf", keep);
  // One scratch buffer: w (n doubles), slot (n int64), capped (n bytes).
  at::Tensor scratch = at::empty({17 * n}, probs.options().dtype(at::kByte));
  auto* base = scratch.mutable_data_ptr<uint8_t>();
  bandit_update_kernel<<<1, kBanditThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      probs.mutable_data_ptr<double>(), mask.const_data_ptr<bool>(),
      norms.const_data_ptr<float>(), n, norms.numel(), inf_arg, alpha, k, normalize,
      reinterpret_cast<double*>(base), reinterpret_cast<int64_t*>(base + 8 * n),
      reinterpret_cast<unsigned char*>(base + 16 * n));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// --------------------------------------------------------------- sample_mask

// NOTE: bounded resampling, as on the CPU: up to kMaxMaskDraws Bernoulli draws
// of the whole mask until one is non-empty, then the arm with the largest
// probability (slsam::fallback_arm, shared with the CPU: first on ties, NaN
// counting as -1, as in slsam.reference). The draws themselves (which thread
// owns which arm, which Philox values it uses) are in mask_draws.h, shared
// with the host replay in tests/test_mask_replay.py. at::philox_engine is the
// header-only Philox of ATen (no cuRAND, whose headers the CUDA toolkit here
// lacks). The generator's offset advances by the worst case (kMaxMaskDraws
// draws), so the next call never reuses numbers, and a CUDA graph capture
// works through PhiloxCudaState as in ATen's kernels.
__global__ void __launch_bounds__(kMaskThreads)
    sample_mask_kernel(const double* probs, int64_t n, bool* out, at::PhiloxCudaState philox) {
  const auto seeds = at::cuda::philox::unpack(philox);
  at::philox_engine engine = mask_engine(std::get<0>(seeds), threadIdx.x, std::get<1>(seeds));
  for (int draw = 0; draw < kMaxMaskDraws; ++draw) {
    const bool any = draw_owned_arms(engine, probs, n, threadIdx.x, out);
    if (__syncthreads_or(any ? 1 : 0)) return;
  }
  if (threadIdx.x == 0) {  // every draw was empty (e.g. NaN probabilities)
    out[fallback_arm(probs, n)] = true;
  }
}

at::Tensor sample_mask_cuda(const at::Tensor& probs, std::optional<at::Generator> generator) {
  check_probs(probs);
  TORCH_CHECK(probs.is_cuda(), "slsam: probs is on ", probs.device(), "; expected CUDA");
  const int64_t n = probs.numel();
  c10::cuda::CUDAGuard guard(probs.device());
  at::Tensor mask = at::empty({n}, probs.options().dtype(at::kBool));
  if (n == 0) return mask;
  auto* gen = at::get_generator_or_default<at::CUDAGeneratorImpl>(
      generator, at::cuda::detail::getDefaultCUDAGenerator(probs.device().index()));
  at::PhiloxCudaState rng;
  {
    // See ATen's Note [Acquire lock when using random generators].
    std::lock_guard<std::mutex> lock(gen->mutex_);
    rng = gen->philox_cuda_state(
        static_cast<uint64_t>(kMaxMaskDraws * mask_values_per_draw(n)));
  }
  sample_mask_kernel<<<1, kMaskThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      probs.const_data_ptr<double>(), n, mask.mutable_data_ptr<bool>(), rng);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(slsam, CUDA, m) {
  m.impl("bandit_update_", &bandit_update_cuda);
  m.impl("sample_mask", &sample_mask_cuda);
}

}  // namespace slsam::cuda
