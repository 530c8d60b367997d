#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <utility>
#include <vector>

#include "../checks.h"
#include "cpu_loops.h"
#include "span_loops.h"

namespace slsam::cpu {
namespace {

// NOTE: deterministic two-pass reduction. Pass 1 writes one partial sum of
// squares per chunk (fixed chunk boundaries); pass 2 adds each tensor's
// partials in chunk order. The bits depend only on the data.
std::tuple<at::Tensor, at::Tensor> grad_norms_cpu(at::TensorList grads,
                                                  const std::optional<at::TensorList>& weights) {
  const size_t n = grads.size();
  check_grad_norms_args(grads, weights);
  // NOTE: a non-dense gradient (a strided view) is summed from a contiguous
  // copy, kept in `keep` with any weights copied to its layout.
  std::vector<at::Tensor> keep;
  std::vector<const void*> gs(n), ws;
  std::vector<int64_t> numels(n);
  if (weights.has_value()) ws.resize(n);
  for (size_t i = 0; i < n; ++i) {
    at::Tensor dense;  // set only for a non-dense gradient
    if (!grads[i].is_non_overlapping_and_dense()) dense = grads[i].contiguous();
    const at::Tensor& g = dense.defined() ? dense : grads[i];
    gs[i] = g.const_data_ptr();
    numels[i] = g.numel();
    if (weights.has_value()) ws[i] = const_ptr_like((*weights)[i], g, keep);
    if (dense.defined()) keep.push_back(std::move(dense));
  }

  const auto table = chunk_table(numels, kChunk);
  const auto first = chunk_offsets(numels, kChunk);
  std::vector<double> partial(table.size());
  with_span_isa([&](auto isa) {
    at::parallel_for(0, static_cast<int64_t>(table.size()), 1, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        const auto& ch = table[c];
        SLSAM_DISPATCH_FLOATING(grads[ch.tensor].scalar_type(), "grad_norms_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const scalar_t* w =
              ws.empty() ? nullptr : static_cast<const scalar_t*>(ws[ch.tensor]) + ch.begin;
          partial[c] = decltype(isa)::template sum_squares_span<scalar_t, acc_t>(
              static_cast<const scalar_t*>(gs[ch.tensor]) + ch.begin, w, ch.end - ch.begin);
        });
      }
    });
  });

  auto opts = at::TensorOptions().dtype(at::kFloat).device(at::kCPU);
  // NOTE: the global norm of fp64 gradients stays fp64: it scales fp64 weights.
  bool all_double = n > 0;
  for (size_t i = 0; i < n; ++i) all_double = all_double && grads[i].scalar_type() == at::kDouble;
  at::Tensor norms = at::empty({static_cast<int64_t>(n)}, opts);
  float* np = norms.data_ptr<float>();
  double total = 0.0;
  for (size_t t = 0; t < n; ++t) {
    double s = 0.0;
    for (int64_t c = first[t]; c < first[t + 1]; ++c) s += partial[c];
    np[t] = static_cast<float>(std::sqrt(s));
    total += s;
  }
  return {norms, at::scalar_tensor(std::sqrt(total), opts.dtype(all_double ? at::kDouble
                                                                            : at::kFloat))};
}

}  // namespace

TORCH_LIBRARY_IMPL(slsam, CPU, m) { m.impl("grad_norms", &grad_norms_cpu); }

}  // namespace slsam::cpu
