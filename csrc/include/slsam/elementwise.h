// Per-element math of the fused optimizer kernels, in fp32 (or the caller's
// accumulation type). Called by the CPU loops and the CUDA kernels alike.
#pragma once

#include <cmath>

#include "slsam/macros.h"

namespace slsam {

// NOTE: x - x is 0 for finite x and NaN for inf/NaN; portable to device code
// where std::isfinite is not.
template <typename T>
SLSAM_HD inline bool is_finite(T x) {
  return (x - x) == (x - x);
}

// Square root in T's own precision on host and device. NOTE: a bare sqrt(float)
// on the host can resolve to the C library's double sqrt, which makes the CPU
// kernels compute the rest of the expression in double (slower, and rounded
// differently from the CUDA kernels and torch.optim.AdamW).
template <typename T>
SLSAM_HD inline T sqrt_of(T x) {
#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
  return ::sqrt(x);
#else
  return std::sqrt(x);
#endif
}

// SAM / ASAM perturbation of one element: x + scale * g, or, in the adaptive
// (ASAM) form, x + scale * x^2 * g.
template <typename acc_t>
SLSAM_HD inline acc_t perturb_element(acc_t x, acc_t g, acc_t scale, bool adaptive) {
  return adaptive ? x + scale * x * x * g : x + scale * g;
}

// The eps of the perturbation's rho / (||g|| + eps) (slsam.reference.PERTURB_EPS).
constexpr double kPerturbEps = 1e-12;

// Scale of the perturbation, rho / (||g|| + eps), read from the device-side
// norm. A non-finite norm (NaN/inf gradients) gives 0: the weights are then
// not moved at all, and the step is skipped later by found_inf.
template <typename acc_t>
SLSAM_HD inline acc_t perturb_scale(acc_t total_norm, acc_t rho, acc_t eps) {
  return is_finite(total_norm) ? rho / (total_norm + eps) : acc_t(0);
}

// Whether a perturbation with this scale moves the weights. NOTE: with a zero scale
// (rho = 0, or the non-finite norm of a step that will be skipped) the kernels
// write x unchanged instead of x + 0 * g, which is NaN where g is +-inf or NaN:
// the second forward must run at the unperturbed, finite weights (whatever it
// writes, e.g. BatchNorm's running statistics, outlives the skipped step).
template <typename acc_t>
SLSAM_HD inline bool perturb_moves(acc_t scale) {
  return scale != acc_t(0) && is_finite(scale);
}

// AdamW's hyper-parameters as the kernels use them, formed in double on the
// host. NOTE: 1 - beta1, 1 - beta2 and 1 - lr * weight_decay are formed in
// double and rounded once, as torch.optim.AdamW's Python scalars are: formed in
// fp32 from fp32 beta2 = 0.999, 1 - beta2 is 0.00099998713, which biased every
// update by +6.6e-6 (relative) against torch.optim.AdamW.
struct AdamWHyper {
  double beta2;
  double eps;
  double lr;
  double beta1;            // for the bias correction 1 - beta1^step
  double one_minus_beta1;  // lerp weight of m
  double one_minus_beta2;
  double decay;            // 1 - lr * weight_decay
};

SLSAM_HD inline AdamWHyper adamw_hyper(double lr, double beta1, double beta2,
                                       double weight_decay, double eps) {
  AdamWHyper h;
  h.beta2 = beta2;
  h.eps = eps;
  h.lr = lr;
  h.beta1 = beta1;
  h.one_minus_beta1 = 1.0 - beta1;
  h.one_minus_beta2 = 1.0 - beta2;
  h.decay = 1.0 - lr * weight_decay;
  return h;
}

// The scalars of one AdamW step for one tensor, in acc_t (float for
// float/bf16/fp16 tensors, double for double); the bias corrections depend on
// the tensor's own step count (sparse updates: every tensor has its own count)
// and are formed in double.
template <typename acc_t>
struct AdamWScalars {
  acc_t decay;            // 1 - lr * weight_decay
  acc_t one_minus_beta1;
  acc_t beta2;
  acc_t one_minus_beta2;
  acc_t eps;
  acc_t step_size;        // lr / (1 - beta1^step)
  acc_t bias_corr2_sqrt;  // sqrt(1 - beta2^step)
};

template <typename acc_t>
SLSAM_HD inline AdamWScalars<acc_t> adamw_scalars(const AdamWHyper& h, double step) {
  AdamWScalars<acc_t> s;
  s.decay = static_cast<acc_t>(h.decay);
  s.one_minus_beta1 = static_cast<acc_t>(h.one_minus_beta1);
  s.beta2 = static_cast<acc_t>(h.beta2);
  s.one_minus_beta2 = static_cast<acc_t>(h.one_minus_beta2);
  s.eps = static_cast<acc_t>(h.eps);
  s.step_size = static_cast<acc_t>(h.lr / (1.0 - pow(h.beta1, step)));
  s.bias_corr2_sqrt = static_cast<acc_t>(sqrt(1.0 - pow(h.beta2, step)));
  return s;
}

// Restore + AdamW for one element. `x0` is the unperturbed weight (the
// backup): restoring and updating in one pass reads x0 once and writes x once
// instead of copying x0 into x and then reading x again.
// Same operation order as torch.optim.AdamW (decoupled decay, lerp for m).
template <typename acc_t>
SLSAM_HD inline acc_t restore_adamw_element(acc_t x0, acc_t g, acc_t& m, acc_t& v,
                                            const AdamWScalars<acc_t>& s) {
  const acc_t one(1);
  const acc_t x = x0 * s.decay;
  const acc_t w1 = s.one_minus_beta1;
  // torch's lerp: start + w * (end - start) for w < 0.5, else end - (end - start) * (1 - w)
  m = w1 < acc_t(0.5) ? m + w1 * (g - m) : g - (g - m) * (one - w1);
  v = s.beta2 * v + s.one_minus_beta2 * g * g;
  const acc_t denom = sqrt_of(v) / s.bias_corr2_sqrt + s.eps;
  return x - s.step_size * (m / denom);
}

}  // namespace slsam
