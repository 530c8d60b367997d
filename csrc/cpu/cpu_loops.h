// CPU multi-tensor loop: one at::parallel_for over the chunk table of a
// tensor list (see include/slsam/chunks.h), so a list of thousands of small
// tensors is one parallel region, not thousands.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <vector>

#include "../checks.h"
#include "slsam/chunks.h"

namespace slsam::cpu {

inline std::vector<int64_t> numels_of(at::TensorList tensors) {
  std::vector<int64_t> numels;
  numels.reserve(tensors.size());
  for (const auto& t : tensors) numels.push_back(t.numel());
  return numels;
}

// Bytes of all the tensors of a list.
inline int64_t bytes_of(at::TensorList tensors) {
  int64_t bytes = 0;
  for (const auto& t : tensors) bytes += t.numel() * static_cast<int64_t>(t.element_size());
  return bytes;
}

// Calls fn(tensor_index, begin, end) for every chunk, in parallel.
template <typename Fn>
void for_each_chunk(at::TensorList tensors, Fn fn) {
  const auto table = chunk_table(numels_of(tensors), kChunk);
  at::parallel_for(0, static_cast<int64_t>(table.size()), 1, [&](int64_t b, int64_t e) {
    for (int64_t c = b; c < e; ++c) fn(table[c].tensor, table[c].begin, table[c].end);
  });
}

}  // namespace slsam::cpu
