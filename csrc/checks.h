// Argument checks shared by the CPU and CUDA kernels. Messages name the
// argument and the fix, since they reach users through the optimizer.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>
#include <vector>

// The dtypes every kernel computes in, CPU and CUDA (what check_float_tensor
// lets through, less the float8 types, which the dispatch refuses).
#define SLSAM_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

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
inline bool has_layout_of(const at::Tensor& t, const at::Tensor& ref) {
  return t.strides() == ref.strides() && t.is_non_overlapping_and_dense();
}

inline at::Tensor as_layout_of(const at::Tensor& t, const at::Tensor& ref) {
  if (has_layout_of(t, ref)) return t;
  return at::empty_like(ref).copy_(t);
}

// ------------------------------------------- whole-operator argument checks
// Shared by the CPU and CUDA kernels of each operator, so both refuse the same
// inputs with the same messages. Checks only: layouts are fixed by the callers.

inline void check_params(at::TensorList params, size_t i) {
  check_float_tensor(params[i], "params", i);
  TORCH_CHECK(params[i].device() == params[0].device(), "slsam: params[", i, "] is on ",
              params[i].device(), " but params[0] is on ", params[0].device(),
              "; move them to one device");
  check_dense(params[i], "params", i);
}

inline void check_perturb_args(at::TensorList params, at::TensorList grads,
                               at::TensorList backups, const at::Tensor& total_norm) {
  check_same_length(grads.size(), params.size(), "grads", "params");
  check_same_length(backups.size(), params.size(), "backups", "params");
  TORCH_CHECK(total_norm.numel() == 1, "slsam: total_norm must have one element, got ",
              total_norm.numel());
  for (size_t i = 0; i < params.size(); ++i) {
    check_params(params, i);
    check_like(grads[i], params[i], "grads", "params", i);
    check_like(backups[i], params[i], "backups", "params", i);
    TORCH_CHECK(backups[i].strides() == params[i].strides(), "slsam: backups[", i,
                "] must have the strides of params[", i, "] (use torch.empty_like)");
    check_distinct(backups[i], params[i], "backups", "params", i);
    check_distinct(grads[i], params[i], "grads", "params", i);
  }
}

inline void check_restore_args(at::TensorList params, at::TensorList backups) {
  check_same_length(backups.size(), params.size(), "backups", "params");
  for (size_t i = 0; i < params.size(); ++i) {
    check_params(params, i);
    check_like(backups[i], params[i], "backups", "params", i);
  }
}

inline void check_restore_adamw_args(at::TensorList params, at::TensorList backups,
                                     at::TensorList grads, at::TensorList exp_avgs,
                                     at::TensorList exp_avg_sqs, at::TensorList steps) {
  const size_t n = params.size();
  check_same_length(backups.size(), n, "backups", "params");
  check_same_length(grads.size(), n, "grads", "params");
  check_same_length(exp_avgs.size(), n, "exp_avgs", "params");
  check_same_length(exp_avg_sqs.size(), n, "exp_avg_sqs", "params");
  check_same_length(steps.size(), n, "steps", "params");
  for (size_t i = 0; i < n; ++i) {
    check_params(params, i);
    check_like(backups[i], params[i], "backups", "params", i);
    check_like(grads[i], params[i], "grads", "params", i);
    check_like(exp_avgs[i], params[i], "exp_avgs", "params", i);
    check_like(exp_avg_sqs[i], params[i], "exp_avg_sqs", "params", i);
    TORCH_CHECK(exp_avgs[i].strides() == params[i].strides() &&
                    exp_avg_sqs[i].strides() == params[i].strides(),
                "slsam: exp_avgs[", i, "] and exp_avg_sqs[", i,
                "] must have the strides of params[", i, "] (use torch.zeros_like)");
    // NOTE: on the parameters' device: the CUDA kernel reads and increments
    // the counts on the GPU, so a CPU count would cost a sync per tensor.
    TORCH_CHECK(steps[i].defined() && steps[i].numel() == 1 &&
                    steps[i].device() == params[i].device(),
                "slsam: steps[", i, "] must be a one-element tensor on ", params[i].device(),
                " (got ", steps[i].defined() ? steps[i].device() : at::Device(at::kCPU), ")");
    TORCH_CHECK(steps[i].scalar_type() == at::kFloat || steps[i].scalar_type() == at::kDouble,
                "slsam: steps[", i, "] must be float32 or float64, got ",
                steps[i].scalar_type());
    check_distinct(backups[i], params[i], "backups", "params", i);
    check_distinct(grads[i], params[i], "grads", "params", i);
    check_distinct(exp_avgs[i], params[i], "exp_avgs", "params", i);
    check_distinct(exp_avg_sqs[i], params[i], "exp_avg_sqs", "params", i);
    check_distinct(exp_avg_sqs[i], exp_avgs[i], "exp_avg_sqs", "exp_avgs", i);
  }
}

inline void check_grad_norms_args(at::TensorList grads,
                                  const std::optional<at::TensorList>& weights) {
  for (size_t i = 0; i < grads.size(); ++i) {
    check_float_tensor(grads[i], "grads", i);
    TORCH_CHECK(grads[i].device() == grads[0].device(), "slsam: grads[", i, "] is on ",
                grads[i].device(), " but grads[0] is on ", grads[0].device(),
                "; move them to one device");
  }
  if (weights.has_value()) {
    check_same_length(weights->size(), grads.size(), "weights", "grads");
    for (size_t i = 0; i < grads.size(); ++i) {
      check_like((*weights)[i], grads[i], "weights", "grads", i);
    }
  }
}

inline void check_probs(const at::Tensor& probs) {
  TORCH_CHECK(probs.dim() == 1 && probs.scalar_type() == at::kDouble && probs.is_contiguous(),
              "slsam: probs must be a contiguous 1-D float64 tensor");
}

// NOTE: norms.numel() must equal the number of active arms; the CPU kernel
// checks that on the host, the CUDA kernel on the device (no sync).
inline void check_bandit_args(const at::Tensor& probs, const at::Tensor& mask,
                              const at::Tensor& norms) {
  check_probs(probs);
  TORCH_CHECK(mask.dim() == 1 && mask.scalar_type() == at::kBool && mask.is_contiguous() &&
                  mask.numel() == probs.numel(),
              "slsam: mask must be a contiguous bool tensor with one entry per arm (",
              probs.numel(), ")");
  TORCH_CHECK(norms.dim() == 1 && norms.scalar_type() == at::kFloat && norms.is_contiguous(),
              "slsam: norms must be a contiguous 1-D float32 tensor");
  TORCH_CHECK(norms.numel() <= probs.numel(), "slsam: norms has ", norms.numel(),
              " entries but there are only ", probs.numel(), " arms");
  TORCH_CHECK(mask.device() == probs.device() && norms.device() == probs.device(),
              "slsam: probs, mask and norms must be on one device (got ", probs.device(), ", ",
              mask.device(), ", ", norms.device(), ")");
}

}  // namespace slsam
