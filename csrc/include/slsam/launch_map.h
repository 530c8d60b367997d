// The index map of the CUDA multi-tensor launcher (csrc/cuda/launch.cuh):
// which tensor and chunk a block works on, and which elements of that chunk a
// thread visits. Torch-free and host-callable, with the block and thread
// indices passed in, so tests/cpp/test_math.cpp can replay a whole grid on the
// CPU and check that every element is visited exactly once.
#pragma once

#include <cstdint>
#include <type_traits>

#include "slsam/macros.h"

namespace slsam {

// Index of the record whose chunks contain `chunk`: the last one with
// chunk_first <= chunk. Records are sorted by chunk_first and every record
// owns at least one chunk (empty tensors get no record).
template <typename Entry>
SLSAM_HD inline int64_t find_entry(const Entry* entries, int64_t n, int64_t chunk) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (entries[mid].chunk_first <= chunk) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

struct ChunkSpan {
  int64_t local;  // chunk index within its tensor
  int64_t begin;  // first element
  int64_t n;      // elements in the chunk (<= chunk_size)
};

// NOTE: 64-bit throughout: chunk `local` of a tensor over 2^31 elements
// begins past INT32_MAX.
SLSAM_HD inline ChunkSpan chunk_span(int64_t numel, int64_t chunk_first, int64_t chunk,
                                     int64_t chunk_size) {
  ChunkSpan s;
  s.local = chunk - chunk_first;
  s.begin = s.local * chunk_size;
  const int64_t rest = numel - s.begin;
  s.n = rest < chunk_size ? rest : chunk_size;
  return s;
}

// The per-thread loop over a chunk of n elements: thread t of `threads` takes
// the groups of kILP elements starting at t * kILP, (t + threads) * kILP, ...,
// calling body(i, kVec) with kVec a std::bool_constant. With `vec` (every
// pointer aligned), whole groups run the vector path (kVec true) and only a
// chunk's last, partial group the guarded scalar one; the element-to-thread
// map and each thread's order are the same either way, so results do not
// depend on alignment. Two separate loops (rather than a branch per access)
// keep the compiler from merging the paths back into scalar accesses.
template <int kILP, typename Body>
SLSAM_HD inline void for_each_group(int64_t n, bool vec, int64_t thread, int64_t threads,
                                    Body&& body) {
  const int64_t step = threads * kILP;
  int64_t i = thread * kILP;
  if (vec) {
    for (; i + kILP <= n; i += step) body(i, std::true_type{});
  }
  for (; i < n; i += step) body(i, std::false_type{});
}

}  // namespace slsam
