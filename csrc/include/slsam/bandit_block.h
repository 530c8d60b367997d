// The EXP3 update of slsam/bandit.h as one block of kBanditThreads threads:
// the sums and the max are block reductions, the active arms' slots in
// `norms` an exclusive scan, the capped projection's rounds block-wide passes.
//
// The update is written once, over a Block policy, so that the host can run
// the very code the GPU runs:
//   - DeviceBlock (csrc/cuda/bandit_cuda.cu): the threads of a CUDA block,
//     shared memory and __syncthreads;
//   - HostBlock (below): the same kBanditThreads "threads" replayed one after
//     another, with the same thread -> element map and the same reduction
//     tree, so its results are the device's bit for bit (up to CUDA's exp,
//     within 1 ulp of the host's). tests/test_bandit_block.py compiles it for
//     the host and checks it against the serial update and slsam.reference.
//
// A Block provides, each called by every thread with the same arguments:
//   each(n, fn)                fn(i) for every i in [0, n), i by thread i % T;
//   reduce(n, init, fn, op)    thread t folds fn(t), fn(t + T), ... with op from
//                              init, then a fixed pairwise tree over the T
//                              partials (t += t + T/2, then T/4, ...); every
//                              thread gets the result, which depends only on
//                              the data;
//   exclusive_scan(n, flag, out)  out[i] = #{j < i : flag(j)}; returns the count.
// Everything between these calls is the same in every thread (it only uses
// their results), and each call ends with a barrier, so a thread may read in
// one call what another wrote in an earlier one.
#pragma once

#include <cstdint>

#include "slsam/bandit.h"
#include "slsam/macros.h"

namespace slsam {

constexpr int kBanditThreads = 256;

template <typename T>
struct MaxOp {
  // NaN never wins (x > acc is false): the serial update's max, NaN ignored.
  SLSAM_HD T operator()(T acc, T x) const { return x > acc ? x : acc; }
};

template <typename T>
struct AddOp {
  SLSAM_HD T operator()(T acc, T x) const { return acc + x; }
};

// Capped projection (Exp3.M) of slsam/bandit.h, block-wide: each round is one
// sum over the free arms and one count of the arms that reach 1.
template <typename Block>
SLSAM_HD inline void capped_projection_block(Block& b, const double* w, int64_t n, double k,
                                             double* p, unsigned char* capped) {
  if (n <= 0) return;
  if (k >= static_cast<double>(n)) {
    b.each(n, [&](int64_t i) { p[i] = 1.0; });
    return;
  }
  b.each(n, [&](int64_t i) { capped[i] = 0; });
  int64_t n_capped = 0;
  double c = 0.0;
  for (int64_t round = 0; round <= n; ++round) {
    // A capped arm adds +0.0: the same sum as skipping it.
    const double free_sum = b.reduce(
        n, 0.0, [&](int64_t i) { return capped[i] ? 0.0 : w[i]; }, AddOp<double>{});
    c = free_sum > 0.0 ? (k - static_cast<double>(n_capped)) / free_sum : 0.0;
    const int64_t newly = b.reduce(
        n, int64_t{0},
        [&](int64_t i) -> int64_t {
          if (capped[i] || !(c * w[i] >= 1.0)) return 0;
          capped[i] = 1;
          return 1;
        },
        AddOp<int64_t>{});
    if (newly == 0) break;
    n_capped += newly;
  }
  b.each(n, [&](int64_t i) {
    const double q = capped[i] ? 1.0 : c * w[i];
    p[i] = q < kProbFloor ? kProbFloor : (q > 1.0 ? 1.0 : q);
  });
}

// One EXP3 update (slsam::bandit_update's math; see there). Returns false,
// having written nothing, when norms does not hold one entry per active arm
// (n_norms != mask.sum()). Scratch: w (n doubles), slot (n int64), capped (n bytes).
template <typename Block>
SLSAM_HD inline bool bandit_update_block(Block& b, double* probs, const bool* mask,
                                         const float* norms, int64_t n, int64_t n_norms,
                                         double alpha, double k, bool normalize, double* w,
                                         int64_t* slot, unsigned char* capped) {
  const int64_t m = b.exclusive_scan(n, [&](int64_t i) { return mask[i]; }, slot);
  if (m != n_norms) return false;
  if (m == 0) return true;  // no active arm: nothing to learn
  const double r_sum = b.reduce(
      m, 0.0, [&](int64_t j) { return static_cast<double>(norms[j]); }, AddOp<double>{});
  const double r_div = (normalize && r_sum > 0.0) ? r_sum / static_cast<double>(m) : 1.0;
  const double max_sq = b.reduce(
      n, 0.0,
      [&](int64_t i) {
        if (!mask[i]) return 0.0;
        const double ratio = static_cast<double>(norms[slot[i]]) / r_div / probs[i];
        return mul_rn(ratio, ratio);
      },
      MaxOp<double>{});
  b.each(n, [&](int64_t i) {
    if (mask[i]) {
      const double r = static_cast<double>(norms[slot[i]]) / r_div;
      w[i] = exp3_weight(probs[i], centred_loss(r, probs[i], max_sq), alpha);
    } else {
      w[i] = probs[i];
    }
  });
  capped_projection_block(b, w, n, k, probs, capped);
  return true;
}

// The block replayed on the host, one thread after another (tests only).
struct HostBlock {
  static constexpr int kThreads = kBanditThreads;

  template <typename Fn>
  void each(int64_t n, Fn&& fn) {
    for (int64_t i = 0; i < n; ++i) fn(i);
  }

  template <typename T, typename Fn, typename Op>
  T reduce(int64_t n, T init, Fn&& fn, Op op) {
    T s[kThreads];
    for (int t = 0; t < kThreads; ++t) {
      T v = init;
      for (int64_t i = t; i < n; i += kThreads) v = op(v, fn(i));
      s[t] = v;
    }
    for (int half = kThreads / 2; half > 0; half >>= 1) {
      for (int t = 0; t < half; ++t) s[t] = op(s[t], s[t + half]);
    }
    return s[0];
  }

  template <typename Flag>
  int64_t exclusive_scan(int64_t n, Flag&& flag, int64_t* out) {
    int64_t count = 0;
    for (int64_t i = 0; i < n; ++i) {
      out[i] = count;
      count += flag(i) ? 1 : 0;
    }
    return count;
  }
};

}  // namespace slsam
