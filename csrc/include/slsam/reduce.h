// Sum of squares with a fixed association order (8 independent accumulators,
// then a fixed tree), so the result depends only on the data, never on how
// many threads ran.
#pragma once

#include <cstdint>

namespace slsam {

// `value(i)` gives element i already converted to acc_t.
template <typename acc_t, typename Value>
inline acc_t sum_squares(int64_t n, Value value) {
  constexpr int kLanes = 8;
  acc_t acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      const acc_t v = value(i + l);
      acc[l] += v * v;
    }
  }
  for (int l = 0; i < n; ++i, ++l) {
    const acc_t v = value(i);
    acc[l] += v * v;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

}  // namespace slsam
