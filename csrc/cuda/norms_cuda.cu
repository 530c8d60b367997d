// Per-tensor and global L2 norms of a tensor list on CUDA.
//
// NOTE: deterministic, with no float atomics, in three launches:
//   1. SumSquares (launch_chunks): each chunk's team (the block for a chunk of
//      a large tensor, one warp for a packed tensor) writes the chunk's sum of
//      squares (opmath accumulation: fp32 for fp32/bf16/fp16, fp64 for fp64;
//      a fixed thread->element map and a fixed block or warp tree) as one
//      fp64 partial;
//   2. tensor_sums_kernel: one warp per tensor adds its partials, lane l taking
//      chunks l, l + 32, ... in order, then a fixed butterfly; writes the fp64
//      sum and the fp32 norm;
//   3. total_kernel: one block adds the per-tensor sums in a fixed order.
// The bits depend only on the data (not on the GPU, alignment, stream, or the
// tensors a small one is packed with: its team and map follow from its own
// size), so the same input twice gives the same norms. They differ from the CPU
// kernel's in the last bits: the order of additions inside a chunk differs.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "launch.cuh"

namespace slsam::cuda {
namespace {

struct NormEntry {
  const void* g;
  const void* w;  // nullptr unless weighted (ASAM)
  int64_t partial_first;  // within the whole list (index into partials)
  int64_t numel;
};

// acc + v * v with two roundings, never one fused multiply-add, whatever the
// nvcc flags: the vector and scalar paths (and every GPU) then give the same
// bits by construction, not by ptxas making the same contraction choice twice.
__device__ inline float add_square(float acc, float v) {
  return __fadd_rn(acc, __fmul_rn(v, v));
}
__device__ inline double add_square(double acc, double v) {
  return __dadd_rn(acc, __dmul_rn(v, v));
}

// Pass 1: the chunk's sum of squares (of |w| * g when weighted) into its partial.
template <bool kWeighted>
struct SumSquares {
  using Entry = NormEntry;
  double* partials;

  template <typename scalar_t>
  __device__ void run(const ChunkOf<Entry>& ch) const {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* g = static_cast<const scalar_t*>(ch.e.g) + ch.begin;
    const scalar_t* w = kWeighted ? static_cast<const scalar_t*>(ch.e.w) + ch.begin : nullptr;
    constexpr int kN = kILP<scalar_t>;
    const bool vec = vec_ok(g) && (!kWeighted || vec_ok(w));
    acc_t acc[kN];
#pragma unroll
    for (int j = 0; j < kN; ++j) acc[j] = acc_t(0);
    for_each_group<scalar_t>(ch, vec, [&](int64_t i, auto full) {
      constexpr bool kVec = decltype(full)::value;
      scalar_t rg[kN];
      load<kVec>(rg, g, i, ch.n);
      if constexpr (kWeighted) {
        scalar_t rw[kN];
        load<kVec>(rw, w, i, ch.n);
#pragma unroll
        for (int j = 0; j < kN; ++j) {
          const acc_t wj = static_cast<acc_t>(rw[j]);
          const acc_t v = (wj < acc_t(0) ? -wj : wj) * static_cast<acc_t>(rg[j]);
          acc[j] = add_square(acc[j], v);
        }
      } else {
#pragma unroll
        for (int j = 0; j < kN; ++j) {
          const acc_t v = static_cast<acc_t>(rg[j]);
          acc[j] = add_square(acc[j], v);
        }
      }
    });
    acc_t s = pairwise_sum<kN>(acc);
    s = team_sum(ch, s);
    if (ch.thread == 0) partials[ch.e.partial_first + ch.local] = static_cast<double>(s);
  }
};

constexpr int kSumThreads = 256;  // 8 warps: 8 tensors per block

__global__ void __launch_bounds__(kSumThreads)
    tensor_sums_kernel(const int64_t* first, int64_t n, const double* partials, double* sums,
                       float* norms) {
  const int64_t t = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (t >= n) return;  // whole warps leave together
  double s = 0.0;
  for (int64_t c = first[t] + lane; c < first[t + 1]; c += 32) s += partials[c];
  s = warp_sum(s);
  if (lane == 0) {
    sums[t] = s;
    norms[t] = static_cast<float>(sqrt(s));
  }
}

constexpr int kTotalThreads = 512;

__global__ void __launch_bounds__(kTotalThreads)
    total_kernel(const double* sums, int64_t n, float* total, double* total64) {
  double s = 0.0;
  for (int64_t t = threadIdx.x; t < n; t += blockDim.x) s += sums[t];
  s = block_sum(s);
  if (threadIdx.x == 0) {
    if (total64 != nullptr) {
      *total64 = sqrt(s);
    } else {
      *total = static_cast<float>(sqrt(s));
    }
  }
}

std::tuple<at::Tensor, at::Tensor> grad_norms_cuda(at::TensorList grads,
                                                   const std::optional<at::TensorList>& weights) {
  const size_t n = grads.size();
  TORCH_CHECK(n > 0, "slsam: grad_norms needs at least one tensor");
  const at::Device device = grads[0].device();
  TORCH_CHECK(device.is_cuda(), "slsam: grads[0] is on ", device, "; expected a CUDA tensor");
  check_grad_norms_args(grads, weights);
  c10::cuda::CUDAGuard guard(device);
  auto stream = c10::cuda::getCurrentCUDAStream();

  // Dense operands (a non-dense gradient is copied, as on the CPU).
  std::vector<at::Tensor> gs, ws;
  gs.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    gs.push_back(grads[i].is_non_overlapping_and_dense() ? grads[i] : grads[i].contiguous());
    if (weights.has_value()) ws.push_back(as_layout_of((*weights)[i], gs.back()));
  }
  const bool weighted = weights.has_value();

  std::vector<int64_t> numels(n);
  for (size_t i = 0; i < n; ++i) numels[i] = gs[i].numel();
  const std::vector<int64_t> first = chunk_offsets(numels, kChunk);
  const int64_t total_chunks = first.back();

  const auto f32 = at::TensorOptions().dtype(at::kFloat).device(device);
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(device);
  at::Tensor partials = at::empty({total_chunks}, f64);
  at::Tensor sums = at::empty({static_cast<int64_t>(n)}, f64);
  at::Tensor norms = at::empty({static_cast<int64_t>(n)}, f32);
  // NOTE: the global norm of fp64 gradients stays fp64: it scales fp64 weights.
  bool all_double = true;
  for (size_t i = 0; i < n; ++i) all_double = all_double && gs[i].scalar_type() == at::kDouble;
  at::Tensor total = at::empty({}, all_double ? f64 : f32);

  DeviceTable table;
  const size_t first_offset = table.add(first);
  const auto entry = [&](size_t i) {
    return NormEntry{gs[i].const_data_ptr(), weighted ? ws[i].const_data_ptr() : nullptr,
                     first[i], 0};
  };
  double* partials_ptr = partials.mutable_data_ptr<double>();
  if (weighted) {
    launch_chunks(gs, device, table, entry,
                  SumSquares<true>{partials_ptr});
  } else {
    launch_chunks(gs, device, table, entry,
                  SumSquares<false>{partials_ptr});
  }
  const int64_t warps_per_block = kSumThreads / 32;
  const int64_t sum_blocks = (static_cast<int64_t>(n) + warps_per_block - 1) / warps_per_block;
  check_grid(sum_blocks);
  tensor_sums_kernel<<<static_cast<unsigned>(sum_blocks), kSumThreads, 0, stream>>>(
      table.at<int64_t>(first_offset), static_cast<int64_t>(n), partials.const_data_ptr<double>(),
      sums.mutable_data_ptr<double>(), norms.mutable_data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  total_kernel<<<1, kTotalThreads, 0, stream>>>(
      sums.const_data_ptr<double>(), static_cast<int64_t>(n),
      all_double ? nullptr : total.mutable_data_ptr<float>(),
      all_double ? total.mutable_data_ptr<double>() : nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {norms, total};
}

}  // namespace

TORCH_LIBRARY_IMPL(slsam, CUDA, m) { m.impl("grad_norms", &grad_norms_cuda); }

}  // namespace slsam::cuda
