// Sum of squares with a fixed association order, so the result depends only
// on the data, never on how many threads ran.
#pragma once

#include <cstdint>

namespace slsam {

// Elements summed per block of sum_squares; the CPU span loops
// (csrc/cpu/span_loops.inc) convert and sum in blocks of the same size, so they
// keep its association order.
constexpr int64_t kBlock = 1024;

// NOTE: two-level (cascade) summation. Within a block of kBlock elements, 8
// independent acc_t lanes (vectorisable, ~kBlock/8 terms each, so fp32 lanes
// lose almost nothing); blocks are then added in double. Error stays at the
// level of torch's own pairwise sum while the inner loop runs at SIMD speed.
// `value(i)` gives element i already converted to acc_t.
template <typename acc_t, typename Value>
inline double sum_squares(int64_t n, Value value) {
  constexpr int kLanes = 8;
  double total = 0.0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = b + kBlock < n ? b + kBlock : n;
    acc_t acc[kLanes] = {};
    int64_t i = b;
    for (; i + kLanes <= e; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) {
        const acc_t v = value(i + l);
        acc[l] += v * v;
      }
    }
    for (int l = 0; i < e; ++i, ++l) {
      const acc_t v = value(i);
      acc[l] += v * v;
    }
    total += static_cast<double>(((acc[0] + acc[1]) + (acc[2] + acc[3])) +
                                 ((acc[4] + acc[5]) + (acc[6] + acc[7])));
  }
  return total;
}

}  // namespace slsam
