// Argument checks shared by the CPU and CUDA kernels. Messages name the
// argument and the fix, since they reach users through the optimizer.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace slsam {

inline void check_float_tensor(const at::Tensor& t, const char* name, size_t i) {
  TORCH_CHECK(t.defined(), "slsam: ", name, "[", i, "] is undefined (None)");
  TORCH_CHECK(t.layout() == at::kStrided, "slsam: ", name, "[", i,
              "] is sparse; SAM needs dense gradients (use a dense embedding, "
              "e.g. nn.Embedding(sparse=False))");
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "slsam: ", name, "[", i,
              "] has dtype ", t.scalar_type(),
              "; only float32, float64, bfloat16 and float16 are supported");
}

// `t` must be usable as a flat span with the same element order as `ref`.
inline void check_like(const at::Tensor& t, const at::Tensor& ref, const char* name,
                       const char* ref_name, size_t i) {
  check_float_tensor(t, name, i);
  TORCH_CHECK(t.device() == ref.device(), "slsam: ", name, "[", i, "] is on ", t.device(),
              " but ", ref_name, "[", i, "] is on ", ref.device(),
              "; move them to one device");
  TORCH_CHECK(t.sizes() == ref.sizes(), "slsam: ", name, "[", i, "] has shape ", t.sizes(),
              " but ", ref_name, "[", i, "] has shape ", ref.sizes());
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "slsam: ", name, "[", i, "] has dtype ",
              t.scalar_type(), " but ", ref_name, "[", i, "] has dtype ", ref.scalar_type(),
              "; cast it to the parameter's dtype");
}

// Tensors the kernels write into must be dense (non-overlapping, no gaps) so
// they can be treated as a flat span, e.g. contiguous or channels_last.
inline void check_dense(const at::Tensor& t, const char* name, size_t i) {
  TORCH_CHECK(t.is_non_overlapping_and_dense(), "slsam: ", name, "[", i,
              "] is not dense (a strided view?); make the parameter contiguous, "
              "e.g. p.data = p.data.contiguous()");
}

// The kernels write one operand while reading another element by element;
// they must be different memory (restrict-qualified loops).
inline void check_distinct(const at::Tensor& a, const at::Tensor& b, const char* a_name,
                           const char* b_name, size_t i) {
  TORCH_CHECK(a.numel() == 0 || a.data_ptr() != b.data_ptr(), "slsam: ", a_name, "[", i,
              "] and ", b_name, "[", i, "] are the same memory; pass separate tensors");
}

inline void check_same_length(size_t n, size_t m, const char* name, const char* ref_name) {
  TORCH_CHECK(n == m, "slsam: ", name, " has ", n, " tensors but ", ref_name, " has ", m);
}

// A read-only operand laid out like `ref` (same strides), so both can be
// walked as flat spans in the same order. Copies only when layouts differ.
inline at::Tensor as_layout_of(const at::Tensor& t, const at::Tensor& ref) {
  if (t.strides() == ref.strides() && t.is_non_overlapping_and_dense()) return t;
  return at::empty_like(ref).copy_(t);
}

}  // namespace slsam
