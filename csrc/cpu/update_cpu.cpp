// Fused perturb, restore and restore + AdamW on CPU.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../checks.h"
#include "cpu_loops.h"
#include "span_loops.h"
#include "slsam/elementwise.h"

namespace slsam::cpu {
namespace {

// Reads a one-element CPU tensor as double (no dispatcher round trip: this runs
// once per tensor per step).
double scalar_of(const at::Tensor& t) {
  TORCH_CHECK(t.numel() == 1 && t.device().is_cpu(), "slsam: expected a one-element CPU tensor");
  double out = 0.0;
  AT_DISPATCH_ALL_TYPES_AND3(at::kBool, at::kHalf, at::kBFloat16, t.scalar_type(), "scalar_of",
                             [&] { out = static_cast<double>(*t.const_data_ptr<scalar_t>()); });
  return out;
}

// A step count (float32 or float64, check_restore_adamw_args) as double.
double step_of(const at::Tensor& t) {
  return t.scalar_type() == at::kDouble ? *t.const_data_ptr<double>()
                                        : static_cast<double>(*t.const_data_ptr<float>());
}

void perturb_cpu(at::TensorList params, at::TensorList grads, at::TensorList backups,
                 const at::Tensor& total_norm, double rho, bool adaptive) {
  check_perturb_args(params, grads, backups, total_norm);
  std::vector<at::Tensor> keep;
  const auto gs = const_ptrs_like(grads, params, keep);
  const auto xs = data_ptrs(params), bks = data_ptrs(backups);
  const double scale = perturb_scale<double>(scalar_of(total_norm), rho, kPerturbEps);
  const bool stream = stream_stores(4 * bytes_of(params));  // read x, g; write backup, x
  with_span_isa([&](auto isa) {
    for_each_chunk(params, [&](int64_t t, int64_t b, int64_t e) {
      SLSAM_DISPATCH_FLOATING(params[t].scalar_type(), "perturb_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        decltype(isa)::perturb_span(static_cast<scalar_t*>(xs[t]) + b,
                                    static_cast<scalar_t*>(bks[t]) + b,
                                    static_cast<const scalar_t*>(gs[t]) + b,
                                    static_cast<acc_t>(scale), adaptive, stream, e - b);
      });
    });
  });
}

// x = backup for every tensor, `bks` laid out like `params`.
void restore_spans(at::TensorList params, const std::vector<const void*>& bks) {
  const auto xs = data_ptrs(params);
  const bool stream = stream_stores(2 * bytes_of(params));  // read backup; write x
  with_span_isa([&](auto isa) {
    for_each_chunk(params, [&](int64_t t, int64_t b, int64_t e) {
      const int64_t item = params[t].element_size();
      decltype(isa)::restore_span(static_cast<char*>(xs[t]) + b * item,
                                  static_cast<const char*>(bks[t]) + b * item, stream,
                                  (e - b) * item);
    });
  });
}

void restore_cpu(at::TensorList params, at::TensorList backups) {
  check_restore_args(params, backups);
  std::vector<at::Tensor> keep;
  restore_spans(params, const_ptrs_like(backups, params, keep));
}

void restore_adamw_cpu(at::TensorList params, at::TensorList backups, at::TensorList grads,
                       at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                       at::TensorList steps, double lr, double beta1, double beta2,
                       double weight_decay, double eps,
                       const std::optional<at::Tensor>& grad_scale,
                       const std::optional<at::Tensor>& found_inf) {
  const size_t n = params.size();
  check_restore_adamw_args(params, backups, grads, exp_avgs, exp_avg_sqs, steps);
  std::vector<at::Tensor> keep;
  const auto bks = const_ptrs_like(backups, params, keep);
  const auto gs = const_ptrs_like(grads, params, keep);
  const bool skip = found_inf.has_value() && scalar_of(*found_inf) != 0.0;
  if (skip) {
    restore_spans(params, bks);
    return;
  }
  const auto xs = data_ptrs(params), ms = data_ptrs(exp_avgs), vs = data_ptrs(exp_avg_sqs);
  const double inv_scale = grad_scale.has_value() ? 1.0 / scalar_of(*grad_scale) : 1.0;
  const AdamWHyper hyper = adamw_hyper(lr, beta1, beta2, weight_decay, eps);
  std::vector<double> next_step(n);
  for (size_t i = 0; i < n; ++i) next_step[i] = step_of(steps[i]) + 1.0;
  // read x0, g, m, v; write x, m, v
  const bool stream = stream_stores(7 * bytes_of(params));
  with_span_isa([&](auto isa) {
    for_each_chunk(params, [&](int64_t t, int64_t b, int64_t e) {
      SLSAM_DISPATCH_FLOATING(params[t].scalar_type(), "restore_adamw_cpu", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        const auto s = adamw_scalars<acc_t>(hyper, next_step[t]);
        decltype(isa)::restore_adamw_span(
            static_cast<scalar_t*>(xs[t]) + b, static_cast<const scalar_t*>(bks[t]) + b,
            static_cast<const scalar_t*>(gs[t]) + b, static_cast<scalar_t*>(ms[t]) + b,
            static_cast<scalar_t*>(vs[t]) + b, s, static_cast<acc_t>(inv_scale), stream, e - b);
      });
    });
  });
  for (size_t i = 0; i < n; ++i) {
    if (steps[i].scalar_type() == at::kDouble) {
      *steps[i].data_ptr<double>() = next_step[i];
    } else {
      *steps[i].data_ptr<float>() = static_cast<float>(next_step[i]);
    }
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(slsam, CPU, m) {
  m.impl("perturb_", &perturb_cpu);
  m.impl("restore_", &restore_cpu);
  m.impl("restore_adamw_", &restore_adamw_cpu);
}

}  // namespace slsam::cpu
