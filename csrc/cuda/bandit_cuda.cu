// The EXP3 update and mask sampling on CUDA. n is the number of parameter
// tensors (hundreds to ~10k), so each is one small kernel that keeps the
// bandit state on the device: no norms copied to the host, no sync.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGeneratorImpl.h>
#include <ATen/cuda/PhiloxUtils.cuh>
#include <torch/library.h>

#include <mutex>

#include "launch.cuh"
#include "mask_draws.h"
#include "slsam/bandit.h"

namespace slsam::cuda {
namespace {

// ------------------------------------------------------------ bandit_update_

// One thread runs the shared serial update of slsam/bandit.h: the same fp64
// operations in the same order as the CPU kernel, so for the same norms the
// results agree to the last bits (CUDA's exp is within 1 ulp, and nvcc may
// contract a*b+c into an FMA). Serial: a handful of passes over n fp64
// values on one GPU thread; expect tens of microseconds per thousand arms
// (not yet measured on a GPU). If a profile shows it, the next step is one
// block with the sums done as fixed-order block reductions.
//
// NOTE: the CPU kernel checks norms.numel() == mask.sum() on the host; here
// that count lives on the device, so the kernel checks it (a device-side
// assert, as ATen does for bad indices) instead of syncing.
__global__ void bandit_update_kernel(double* probs, const bool* mask, const float* norms,
                                     int64_t n, int64_t n_norms, ScalarArg found_inf,
                                     double alpha, double k, bool normalize, double* w,
                                     unsigned char* capped) {
  int64_t active = 0;
  for (int64_t i = 0; i < n; ++i) active += mask[i] ? 1 : 0;
  CUDA_KERNEL_ASSERT_MSG(active == n_norms,
                         "slsam::bandit_update_: norms must have one entry per active arm");
  if (active != n_norms) return;  // never read past norms
  if (found_inf.present && read_scalar(found_inf) != 0.0) return;
  bandit_update(probs, mask, norms, n, alpha, k, normalize, w, capped);
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
  at::Tensor w = at::empty({n}, probs.options());
  at::Tensor capped = at::empty({n}, probs.options().dtype(at::kByte));
  bandit_update_kernel<<<1, 1, 0, c10::cuda::getCurrentCUDAStream()>>>(
      probs.mutable_data_ptr<double>(), mask.const_data_ptr<bool>(),
      norms.const_data_ptr<float>(), n, norms.numel(), inf_arg, alpha, k, normalize,
      w.mutable_data_ptr<double>(), capped.mutable_data_ptr<unsigned char>());
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
