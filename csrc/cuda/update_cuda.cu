// Fused perturb, restore and restore + AdamW on CUDA: one launch per dtype in
// the list (launch_chunks, launch.cuh), the per-element math shared with the
// CPU kernels (slsam/elementwise.h). Scalars that live on the device (total
// norm, grad_scale, found_inf, steps) are read by the kernels, never by the host.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>
#include <vector>

#include "launch.cuh"
#include "slsam/elementwise.h"

namespace slsam::cuda {
namespace {

// A bit-exact copy of a chunk: elements moved as unsigned words of their size.
template <size_t kBytes>
struct WordOf;
template <>
struct WordOf<2> {
  using type = uint16_t;
};
template <>
struct WordOf<4> {
  using type = uint32_t;
};
template <>
struct WordOf<8> {
  using type = uint64_t;
};

template <typename scalar_t, typename Entry>
__device__ inline void copy_chunk(void* dst_base, const void* src_base,
                                  const ChunkOf<Entry>& ch) {
  using word_t = typename WordOf<sizeof(scalar_t)>::type;
  word_t* dst = static_cast<word_t*>(dst_base) + ch.begin;
  const word_t* src = static_cast<const word_t*>(src_base) + ch.begin;
  const bool vec = vec_ok(dst) && vec_ok(src);
  for_each_group<word_t>(ch, vec, [&](int64_t i, auto full) {
    constexpr bool kVec = decltype(full)::value;
    word_t r[kILP<word_t>];
    load<kVec>(r, src, i, ch.n);
    store<kVec>(dst, r, i, ch.n);
  });
}

// ------------------------------------------------------------------ perturb

struct PerturbEntry {
  void* x;
  const void* g;
  void* backup;
  int64_t numel;
};

struct Perturb {
  using Entry = PerturbEntry;
  ScalarArg total_norm;
  double rho;
  bool adaptive;

  template <typename scalar_t>
  __device__ void run(const ChunkOf<Entry>& ch) const {
    using acc_t = at::opmath_type<scalar_t>;
    // In fp64, then rounded once, as the CPU kernel does; in every thread
    // (launch_chunks: no block barrier), with the same bits in each.
    const auto scale = static_cast<acc_t>(
        perturb_scale<double>(read_scalar(total_norm), rho, kPerturbEps));
    const bool moves = perturb_moves(scale);  // false: x stays bit for bit
    scalar_t* x = static_cast<scalar_t*>(ch.e.x) + ch.begin;
    const scalar_t* g = static_cast<const scalar_t*>(ch.e.g) + ch.begin;
    scalar_t* bk = static_cast<scalar_t*>(ch.e.backup) + ch.begin;
    constexpr int kN = kILP<scalar_t>;
    const bool vec = vec_ok(x) && vec_ok(g) && vec_ok(bk);
    for_each_group<scalar_t>(ch, vec, [&](int64_t i, auto full) {
      constexpr bool kVec = decltype(full)::value;
      scalar_t rx[kN], rg[kN], out[kN];
      load<kVec>(rx, x, i, ch.n);
      store<kVec>(bk, rx, i, ch.n);
      if (!moves) return;  // this group only: the backup is written, x is left alone
      load<kVec>(rg, g, i, ch.n);
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        out[j] = static_cast<scalar_t>(perturb_element<acc_t>(
            static_cast<acc_t>(rx[j]), static_cast<acc_t>(rg[j]), scale, adaptive));
      }
      store<kVec>(x, out, i, ch.n);
    });
  }
};

void perturb_cuda(at::TensorList params, at::TensorList grads, at::TensorList backups,
                  const at::Tensor& total_norm, double rho, bool adaptive) {
  const size_t n = params.size();
  check_perturb_args(params, grads, backups, total_norm);
  if (n == 0) return;
  const at::Device device = params[0].device();
  TORCH_CHECK(device.is_cuda(), "slsam: params[0] is on ", device, "; expected a CUDA tensor");
  std::vector<at::Tensor> gs;
  gs.reserve(n);
  c10::cuda::CUDAGuard guard(device);
  for (size_t i = 0; i < n; ++i) gs.push_back(as_layout_of(grads[i], params[i]));
  at::Tensor keep;
  const ScalarArg norm = scalar_arg(total_norm, device, "total_norm", keep);
  launch_chunks(
      params, device,
      [&](size_t i) {
        return PerturbEntry{params[i].data_ptr(), gs[i].const_data_ptr(), backups[i].data_ptr(),
                            0};
      },
      Perturb{norm, rho, adaptive});
}

// ------------------------------------------------------------------ restore

struct CopyEntry {
  void* dst;
  const void* src;
  int64_t numel;
};

struct Copy {
  using Entry = CopyEntry;

  template <typename scalar_t>
  __device__ void run(const ChunkOf<Entry>& ch) const {
    copy_chunk<scalar_t>(ch.e.dst, ch.e.src, ch);
  }
};

void restore_cuda(at::TensorList params, at::TensorList backups) {
  const size_t n = params.size();
  check_restore_args(params, backups);
  if (n == 0) return;
  const at::Device device = params[0].device();
  TORCH_CHECK(device.is_cuda(), "slsam: params[0] is on ", device, "; expected a CUDA tensor");
  c10::cuda::CUDAGuard guard(device);
  std::vector<at::Tensor> bks;
  bks.reserve(n);
  for (size_t i = 0; i < n; ++i) bks.push_back(as_layout_of(backups[i], params[i]));
  launch_chunks(
      params, device,
      [&](size_t i) { return CopyEntry{params[i].data_ptr(), bks[i].const_data_ptr(), 0}; },
      Copy{});
}

// ------------------------------------------------------------ restore_adamw

struct AdamWEntry {
  void* x;
  const void* x0;
  const void* g;
  void* m;
  void* v;
  const void* step;
  int64_t step_is_double;
  int64_t numel;
};

__device__ inline double read_step(const void* p, int64_t is_double) {
  return is_double ? *static_cast<const double*>(p)
                   : static_cast<double>(*static_cast<const float*>(p));
}

// The step counts are read here and incremented afterwards by
// increment_steps_kernel (stream order keeps the read before the write).
struct RestoreAdamW {
  using Entry = AdamWEntry;
  AdamWHyper h;
  ScalarArg grad_scale;
  ScalarArg found_inf;

  template <typename scalar_t>
  __device__ void run(const ChunkOf<Entry>& ch) const {
    using acc_t = at::opmath_type<scalar_t>;
    // Per-chunk scalars in every thread (launch_chunks: no block barrier),
    // with the same bits in each; the reads are broadcasts.
    if (found_inf.present && read_scalar(found_inf) != 0.0) {
      // Only the restore; moments and steps stay as they were.
      copy_chunk<scalar_t>(ch.e.x, ch.e.x0, ch);
      return;
    }
    const double step = read_step(ch.e.step, ch.e.step_is_double) + 1.0;
    const AdamWScalars<acc_t> sc = adamw_scalars<acc_t>(h, step);
    const auto unscale =
        static_cast<acc_t>(grad_scale.present ? 1.0 / read_scalar(grad_scale) : 1.0);
    scalar_t* x = static_cast<scalar_t*>(ch.e.x) + ch.begin;
    const scalar_t* x0 = static_cast<const scalar_t*>(ch.e.x0) + ch.begin;
    const scalar_t* g = static_cast<const scalar_t*>(ch.e.g) + ch.begin;
    scalar_t* m = static_cast<scalar_t*>(ch.e.m) + ch.begin;
    scalar_t* v = static_cast<scalar_t*>(ch.e.v) + ch.begin;
    constexpr int kN = kILP<scalar_t>;
    const bool vec = vec_ok(x) && vec_ok(x0) && vec_ok(g) && vec_ok(m) && vec_ok(v);
    for_each_group<scalar_t>(ch, vec, [&](int64_t i, auto full) {
      constexpr bool kVec = decltype(full)::value;
      scalar_t rx0[kN], rg[kN], rm[kN], rv[kN], rx[kN];
      load<kVec>(rx0, x0, i, ch.n);
      load<kVec>(rg, g, i, ch.n);
      load<kVec>(rm, m, i, ch.n);
      load<kVec>(rv, v, i, ch.n);
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        acc_t mj = static_cast<acc_t>(rm[j]);
        acc_t vj = static_cast<acc_t>(rv[j]);
        const acc_t xj = restore_adamw_element<acc_t>(
            static_cast<acc_t>(rx0[j]), static_cast<acc_t>(rg[j]) * unscale, mj, vj, sc);
        rm[j] = static_cast<scalar_t>(mj);
        rv[j] = static_cast<scalar_t>(vj);
        rx[j] = static_cast<scalar_t>(xj);
      }
      store<kVec>(m, rm, i, ch.n);
      store<kVec>(v, rv, i, ch.n);
      store<kVec>(x, rx, i, ch.n);
    });
  }
};

struct StepRef {
  void* ptr;
  int64_t is_double;
};

// steps[i] += 1 for every tensor of the list (empty ones too, as on the CPU),
// unless found_inf is set.
__global__ void increment_steps_kernel(const StepRef* steps, int64_t n, ScalarArg found_inf) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  if (found_inf.present && read_scalar(found_inf) != 0.0) return;
  const StepRef s = steps[i];
  if (s.is_double) {
    *static_cast<double*>(s.ptr) += 1.0;
  } else {
    // (float)((double)step + 1) == step + 1.0f: both round the exact sum once.
    *static_cast<float*>(s.ptr) += 1.0f;
  }
}

void restore_adamw_cuda(at::TensorList params, at::TensorList backups, at::TensorList grads,
                        at::TensorList exp_avgs, at::TensorList exp_avg_sqs,
                        at::TensorList steps, double lr, double beta1, double beta2,
                        double weight_decay, double eps,
                        const std::optional<at::Tensor>& grad_scale,
                        const std::optional<at::Tensor>& found_inf) {
  const size_t n = params.size();
  check_restore_adamw_args(params, backups, grads, exp_avgs, exp_avg_sqs, steps);
  if (n == 0) return;
  const at::Device device = params[0].device();
  TORCH_CHECK(device.is_cuda(), "slsam: params[0] is on ", device, "; expected a CUDA tensor");
  c10::cuda::CUDAGuard guard(device);
  std::vector<at::Tensor> bks, gs;
  bks.reserve(n);
  gs.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    bks.push_back(as_layout_of(backups[i], params[i]));
    gs.push_back(as_layout_of(grads[i], params[i]));
  }
  at::Tensor keep_scale, keep_inf;
  const ScalarArg scale_arg = scalar_arg(grad_scale, device, "grad_scale", keep_scale);
  const ScalarArg inf_arg = scalar_arg(found_inf, device, "found_inf", keep_inf);

  DeviceTable table;
  std::vector<StepRef> step_refs(n);
  for (size_t i = 0; i < n; ++i) {
    step_refs[i] = StepRef{steps[i].data_ptr(), steps[i].scalar_type() == at::kDouble};
  }
  const size_t steps_offset = table.add(step_refs);
  launch_chunks(
      params, device, table,
      [&](size_t i) {
        return AdamWEntry{params[i].data_ptr(),      bks[i].const_data_ptr(),
                          gs[i].const_data_ptr(),    exp_avgs[i].data_ptr(),
                          exp_avg_sqs[i].data_ptr(), steps[i].const_data_ptr(),
                          steps[i].scalar_type() == at::kDouble, 0};
      },
      RestoreAdamW{adamw_hyper(lr, beta1, beta2, weight_decay, eps), scale_arg, inf_arg});
  constexpr int kStepThreads = 256;
  const auto step_blocks = static_cast<unsigned>((n + kStepThreads - 1) / kStepThreads);
  increment_steps_kernel<<<step_blocks, kStepThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      table.at<StepRef>(steps_offset), static_cast<int64_t>(n), inf_arg);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(slsam, CUDA, m) {
  m.impl("perturb_", &perturb_cuda);
  m.impl("restore_", &restore_cuda);
  m.impl("restore_adamw_", &restore_adamw_cuda);
}

}  // namespace slsam::cuda
