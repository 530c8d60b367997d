// The EXP3 (multiple plays, Exp3.M) bandit of SL-SAM: loss, weights and the
// capped projection back onto {p : sum p = k, 0 < p <= 1}. Double precision
// throughout: n is hundreds to thousands, and the loss spans many decades.
#pragma once

#include <cmath>
#include <cstdint>

#include "slsam/macros.h"

namespace slsam {

constexpr double kProbFloor = 1e-8;

// NOTE: host and device must round the bandit alike, and nvcc by default
// contracts a * b - c into one fused multiply-add (one rounding instead of
// two), which moves the centred loss of large raw norms by far more than an
// ulp of the result (max_sq_ratio - ratio^2 cancels). Device code therefore
// multiplies and subtracts with explicit round-to-nearest intrinsics, which
// nvcc never contracts; host compilers get plain operators (setup.py builds
// with -ffp-contract=off, and nvcc with -fmad=false for the rest).
SLSAM_HD inline double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

SLSAM_HD inline double sub_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

// Whole-mask Bernoulli draws the samplers (CPU and CUDA) try before taking
// fallback_arm; slsam.reference.MAX_DRAWS is the same bound.
constexpr int kMaxMaskDraws = 1000;

// Centred bandit loss of an active arm: l_i - min_j l_j with
// l_i = -(r_i/p_i)^2 + (L/p_min)^2. The (L/p_min)^2 term is the same for every
// active arm and cancels exactly, so we never form it: with L = 100 and
// p_min = 1e-3 it is 1e10 and would swamp the differences in any precision.
SLSAM_HD inline double centred_loss(double r, double p, double max_sq_ratio) {
  const double ratio = r / p;
  return sub_rn(max_sq_ratio, mul_rn(ratio, ratio));
}

// EXP3 weight of an active arm.
SLSAM_HD inline double exp3_weight(double p, double lhat, double alpha) {
  return p * exp(-alpha * lhat / p);
}

// Capped projection (Exp3.M): p_i = min(1, c * w_i) with sum_i p_i = k.
// Arms whose scaled weight reaches 1 are capped at 1 and c is recomputed over
// the others, until no new arm reaches 1; then p is clipped to [1e-8, 1].
// `capped` is scratch of n bytes. Serial (host / one device thread);
// converges in at most n + 1 rounds and usually in one or two.
SLSAM_HD inline void capped_projection(const double* w, int64_t n, double k,
                                       double* p, unsigned char* capped) {
  if (n <= 0) return;
  if (k >= static_cast<double>(n)) {
    for (int64_t i = 0; i < n; ++i) p[i] = 1.0;
    return;
  }
  for (int64_t i = 0; i < n; ++i) capped[i] = 0;
  int64_t n_capped = 0;
  double c = 0.0;
  for (int64_t round = 0; round <= n; ++round) {
    double free_sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      if (!capped[i]) free_sum += w[i];
    }
    c = free_sum > 0.0 ? (k - static_cast<double>(n_capped)) / free_sum : 0.0;
    bool changed = false;
    for (int64_t i = 0; i < n; ++i) {
      if (!capped[i] && c * w[i] >= 1.0) {
        capped[i] = 1;
        ++n_capped;
        changed = true;
      }
    }
    if (!changed) break;
  }
  for (int64_t i = 0; i < n; ++i) {
    const double q = capped[i] ? 1.0 : c * w[i];
    p[i] = q < kProbFloor ? kProbFloor : (q > 1.0 ? 1.0 : q);
  }
}

// The arm the mask sampler takes when every one of its bounded draws came out
// empty (zero or NaN probabilities, i.e. a corrupted state): the largest
// probability, first on ties, a NaN counting as -1 so that a valid arm wins over
// a corrupted one; arm 0 if all are NaN. The rule of slsam.reference.sample_mask
// (nan_to_num(nan=-1).argmax()); x != x is the NaN test portable to device code.
SLSAM_HD inline int64_t fallback_arm(const double* p, int64_t n) {
  int64_t best = 0;
  double best_p = p[0] != p[0] ? -1.0 : p[0];
  for (int64_t i = 1; i < n; ++i) {
    const double q = p[i] != p[i] ? -1.0 : p[i];
    if (q > best_p) {
      best = i;
      best_p = q;
    }
  }
  return best;
}

// One EXP3 update. `norms` holds r_i for the active arms (mask[i] true), in
// arm order. Inactive arms keep w_i = p_i. With `normalize`, r is divided by
// its mean over the active arms first, which makes the loss scale-free (the
// authors' loss grows with (r/p)^2 and collapses the distribution onto a few
// arms when gradient norms are large). No active arm: nothing to learn.
// `w` (n doubles) and `capped` (n bytes) are scratch.
SLSAM_HD inline void bandit_update(double* probs, const bool* mask, const float* norms,
                                   int64_t n, double alpha, double k, bool normalize,
                                   double* w, unsigned char* capped) {
  int64_t m = 0;
  double r_sum = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    if (mask[i]) r_sum += static_cast<double>(norms[m++]);
  }
  if (m == 0) return;
  const double r_div = (normalize && r_sum > 0.0) ? r_sum / static_cast<double>(m) : 1.0;
  double max_sq = 0.0;
  for (int64_t i = 0, j = 0; i < n; ++i) {
    if (!mask[i]) continue;
    const double ratio = static_cast<double>(norms[j++]) / r_div / probs[i];
    const double sq = mul_rn(ratio, ratio);
    max_sq = sq > max_sq ? sq : max_sq;
  }
  for (int64_t i = 0, j = 0; i < n; ++i) {
    if (mask[i]) {
      const double r = static_cast<double>(norms[j++]) / r_div;
      w[i] = exp3_weight(probs[i], centred_loss(r, probs[i], max_sq), alpha);
    } else {
      w[i] = probs[i];
    }
  }
  capped_projection(w, n, k, probs, capped);
}

}  // namespace slsam
