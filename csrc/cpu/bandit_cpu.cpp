// The EXP3 update and mask sampling on CPU: n is hundreds to thousands of
// arms, so these are serial loops over the shared math in slsam/bandit.h.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/DistributionsHelper.h>
#include <torch/library.h>

#include <mutex>
#include <vector>

#include "../checks.h"
#include "slsam/bandit.h"

namespace slsam::cpu {
namespace {

void bandit_update_cpu(const at::Tensor& probs, const at::Tensor& mask, const at::Tensor& norms,
                       const std::optional<at::Tensor>& found_inf, double alpha, double k,
                       bool normalize) {
  check_bandit_args(probs, mask, norms);
  const int64_t n = probs.numel();
  const int64_t active = mask.sum().item<int64_t>();
  TORCH_CHECK(norms.numel() == active, "slsam: norms has ", norms.numel(),
              " entries but mask has ", active, " active arms");
  if (found_inf.has_value() && found_inf->item<double>() != 0.0) return;
  std::vector<double> w(static_cast<size_t>(n));
  std::vector<unsigned char> capped(static_cast<size_t>(n));
  bandit_update(probs.data_ptr<double>(), mask.const_data_ptr<bool>(),
                norms.const_data_ptr<float>(), n, alpha, k, normalize, w.data(), capped.data());
}

// NOTE: bounded resampling. With valid probabilities an empty draw has
// probability prod(1 - p_i), tiny for any real model; after kMaxMaskDraws empty
// draws (e.g. NaN probabilities) the arm with the largest probability is
// taken (fallback_arm: NaN counts as -1, as in slsam.reference), so a
// corrupted state can never hang the optimizer.

at::Tensor sample_mask_cpu(const at::Tensor& probs, std::optional<at::Generator> generator) {
  check_probs(probs);
  const int64_t n = probs.numel();
  at::Tensor mask = at::zeros({n}, probs.options().dtype(at::kBool));
  if (n == 0) return mask;
  const double* p = probs.const_data_ptr<double>();
  bool* out = mask.data_ptr<bool>();
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(
      generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  at::uniform_real_distribution<double> uniform(0.0, 1.0);
  for (int draw = 0; draw < kMaxMaskDraws; ++draw) {
    bool any = false;
    for (int64_t i = 0; i < n; ++i) {
      out[i] = uniform(gen) < p[i];
      any = any || out[i];
    }
    if (any) return mask;
  }
  out[fallback_arm(p, n)] = true;
  return mask;
}

}  // namespace

TORCH_LIBRARY_IMPL(slsam, CPU, m) {
  m.impl("bandit_update_", &bandit_update_cpu);
  m.impl("sample_mask", &sample_mask_cpu);
}

}  // namespace slsam::cpu
