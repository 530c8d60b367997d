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

// NOTE: the kernels read each tensor's data pointer once per call into these
// tables, not per chunk: data_ptr<T>() checks the dtype and the storage on
// every call, and copying the at::Tensor handles (as_layout_of) costs two
// atomic reference-count updates per tensor, which is most of what a list of
// thousands of tiny tensors costs in C++.

inline std::vector<void*> data_ptrs(at::TensorList tensors) {
  std::vector<void*> ptrs;
  ptrs.reserve(tensors.size());
  for (const auto& t : tensors) ptrs.push_back(t.data_ptr());
  return ptrs;
}

// The data of read-only `t` laid out like `ref` (as_layout_of): `t`'s own where
// the layouts agree, else a copy's, which `keep` holds.
inline const void* const_ptr_like(const at::Tensor& t, const at::Tensor& ref,
                                  std::vector<at::Tensor>& keep) {
  if (has_layout_of(t, ref)) return t.const_data_ptr();
  keep.push_back(as_layout_of(t, ref));
  return keep.back().const_data_ptr();
}

// const_ptr_like for every tensors[i], laid out like refs[i].
inline std::vector<const void*> const_ptrs_like(at::TensorList tensors, at::TensorList refs,
                                                std::vector<at::Tensor>& keep) {
  std::vector<const void*> ptrs;
  ptrs.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    ptrs.push_back(const_ptr_like(tensors[i], refs[i], keep));
  }
  return ptrs;
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
