// The CUDA multi-tensor launcher shared by every slsam CUDA kernel.
//
// A tensor list is cut into chunks of kChunk elements (slsam/chunks.h). Per
// launch (one per dtype present in the list) the host builds a block plan
// (slsam::plan_blocks, slsam/launch_map.h): a tensor over pack_max (4096)
// elements gets one block per chunk, and the smaller ones are packed, up to
// 32 tensors and kChunk elements per block, one warp per tensor. The host
// packs one small POD record per non-empty tensor (data pointers, numel) and
// one 12-byte record per block (its first tensor record, how many are packed,
// its chunk) into a byte table and copies it to the device once per call
// (pinned buffer from the caching host allocator, cudaMemcpyAsync on the
// current stream: no host sync). A block reads its own record: O(1), no
// search; the table is O(tensors + blocks) bytes. launch_chunks (at the end)
// does all of that; an op supplies its record type and a per-chunk functor.
//
// Rules kept here (csrc/README.md): 64-bit sizes and offsets; empty tensors
// have no record and no block; no float atomics (reductions have a fixed
// order: see team_sum); memory only from the caching allocators; everything
// on the current stream (see DeviceTable::upload for what that covers).
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "../checks.h"
#include "slsam/chunks.h"
#include "slsam/launch_map.h"

namespace slsam::cuda {

// The launch shape of the chunk kernels (slsam/launch_map.h; kChunk, in
// slsam/chunks.h, is shared with the CPU kernels).
constexpr LaunchShape kShape{};
constexpr int kThreads = static_cast<int>(kShape.threads);  // threads per block
static_assert(kShape.warp == 32 && kThreads % 32 == 0 && kThreads > 32 && kThreads <= 1024,
              "team_sum tells a block from a warp by its size, and needs whole warps");
// Contiguous elements per thread per iteration: one 16-byte vector for every
// dtype (4 fp32, 8 bf16/fp16, 2 fp64), the widest load and store a thread can
// issue as one instruction.
template <typename T>
constexpr int kILP = static_cast<int>(16 / sizeof(T));

// ---------------------------------------------------------------- host side

// A byte table of POD records, uploaded to the device in one async copy.
class DeviceTable {
 public:
  // Appends `count` records, 16-byte aligned; returns their byte offset.
  template <typename T>
  size_t add(const T* data, size_t count) {
    static_assert(std::is_trivially_copyable<T>::value, "records must be POD");
    const size_t offset = (bytes_.size() + 15) / 16 * 16;
    bytes_.resize(offset + count * sizeof(T));
    if (count) std::memcpy(bytes_.data() + offset, data, count * sizeof(T));
    return offset;
  }
  template <typename T>
  size_t add(const std::vector<T>& v) {
    return add(v.data(), v.size());
  }

  // Pinned staging buffer + non_blocking copy: cudaMemcpyAsync on the current
  // stream, and the host block is recycled only after the copy has run.
  //
  // NOTE: safe on any current stream without record_stream: the device
  // buffer is allocated (with the caller's CUDAGuard set) on the current
  // stream of the tensors' device, and only that stream uses it: the copy
  // and every launch of the op run there. Freed when the op returns, it goes
  // back to that stream's pool, so the next allocation that reuses it is
  // ordered after these kernels; the same holds for the op's other scratch
  // (grad_norms' partials, converted scalars, dense copies of operands). The
  // pinned block carries an event recorded on the same stream.
  //
  // NOTE: refused while the stream is being captured into a CUDA graph: a
  // replay would copy from a host block the caching allocator has since
  // handed to another call (stale pointers, wrong tensors), so capture fails
  // here with a clear error instead of replaying garbage later.
  void upload(const at::Device& device) {
    if (bytes_.empty()) return;
    TORCH_CHECK(c10::cuda::currentStreamCaptureStatusMayInitCtx() == c10::cuda::CaptureStatus::None,
                "slsam: the multi-tensor kernels (grad_norms, perturb_, restore_, restore_adamw_) "
                "cannot be captured in a CUDA graph: each call uploads the tensor list's pointers "
                "from a host buffer that a replay would not refresh. Run the optimizer step "
                "outside torch.cuda.graph (with torch.compile, not in mode=\"reduce-overhead\" "
                "or \"max-autotune\" for the step)");
    const auto size = static_cast<int64_t>(bytes_.size());
    at::Tensor host = at::empty({size}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    std::memcpy(host.data_ptr(), bytes_.data(), bytes_.size());
    device_ = at::empty({size}, at::TensorOptions().dtype(at::kByte).device(device));
    device_.copy_(host, /*non_blocking=*/true);
  }

  template <typename T>
  const T* at(size_t offset) const {
    return reinterpret_cast<const T*>(static_cast<const uint8_t*>(device_.const_data_ptr()) +
                                      offset);
  }

 private:
  std::vector<uint8_t> bytes_;
  at::Tensor device_;  // kept alive until the op returns; later reuse is stream-ordered
};

// One launch: the non-empty tensors of one dtype, in list order.
struct Group {
  at::ScalarType dtype;
  std::vector<size_t> members;  // indices into the tensor list
  int64_t chunks = 0;           // an upper bound of the plan's blocks
  BlockPlan plan;               // over members: plan.order indexes `members`
  size_t entries_offset = 0;    // where this group's records are in the op's DeviceTable
  size_t blocks_offset = 0;     // and its plan.blocks
};

inline std::vector<Group> group_by_dtype(at::TensorList tensors) {
  std::vector<Group> groups;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const int64_t numel = tensors[i].numel();
    if (numel == 0) continue;
    Group* g = nullptr;
    for (auto& h : groups) {
      if (h.dtype == tensors[i].scalar_type()) g = &h;
    }
    if (g == nullptr) {
      groups.push_back(Group{tensors[i].scalar_type(), {}, 0, {}, 0, 0});
      g = &groups.back();
    }
    g->members.push_back(i);
    g->chunks += num_chunks(numel, kShape.chunk);
  }
  // Packing only merges blocks: the plan has at most `chunks` blocks, so its
  // 32-bit fields (slsam::BlockWork) and the grid size hold.
  for (const auto& g : groups) {
    TORCH_CHECK(g.chunks <= std::numeric_limits<int32_t>::max(),
                "slsam: tensor list too large for one launch (", g.chunks, " chunks)");
  }
  return groups;
}

// A one-element operand (norm, grad_scale, found_inf) read inside the kernel:
// from device memory when it lives on the GPU (never synced to the host), or
// passed by value when it is a CPU tensor (reading it costs no sync).
struct ScalarArg {
  const void* ptr;  // device pointer, or nullptr: use `value`
  int kind;         // 0 bool, 1 float, 2 double
  bool present;     // false for an absent optional
  double value;
};

// `keep` holds a converted copy, if any, alive until the launch.
inline ScalarArg scalar_arg(const std::optional<at::Tensor>& t, const at::Device& device,
                            const char* name, at::Tensor& keep) {
  ScalarArg a{nullptr, 0, false, 0.0};
  if (!t.has_value() || !t->defined()) return a;
  TORCH_CHECK(t->numel() == 1, "slsam: ", name, " must have one element, got ", t->numel());
  a.present = true;
  if (t->device().is_cpu()) {
    a.value = t->item<double>();  // a CPU read: no device sync
    return a;
  }
  TORCH_CHECK(t->device() == device, "slsam: ", name, " is on ", t->device(),
              " but the parameters are on ", device);
  keep = *t;
  const auto st = keep.scalar_type();
  if (st != at::kBool && st != at::kFloat && st != at::kDouble) keep = keep.to(at::kDouble);
  a.kind = keep.scalar_type() == at::kBool ? 0 : (keep.scalar_type() == at::kFloat ? 1 : 2);
  a.ptr = keep.const_data_ptr();
  return a;
}

inline void check_grid(int64_t blocks) {
  TORCH_CHECK(blocks > 0 && blocks <= std::numeric_limits<int32_t>::max(),
              "slsam: bad grid size ", blocks);
}

// -------------------------------------------------------------- device side

#if defined(__CUDACC__)

__device__ inline double read_scalar(const ScalarArg& a) {
  if (a.ptr == nullptr) return a.value;
  switch (a.kind) {
    case 0: return *static_cast<const bool*>(a.ptr) ? 1.0 : 0.0;
    case 1: return static_cast<double>(*static_cast<const float*>(a.ptr));
    default: return *static_cast<const double*>(a.ptr);
  }
}

// One piece of a block's work (slsam::Work) with its record: a chunk of one
// tensor, walked by a team of `threads` threads (the whole block for a chunk
// of a large tensor, one warp for a packed tensor) in which this thread is
// number `thread`. slsam/launch_map.h holds the map, shared with the
// host-side replay in tests/cpp/test_math.cpp.
template <typename Entry>
struct ChunkOf {
  Entry e;
  int64_t local;    // chunk index within its tensor
  int64_t begin;    // first element
  int64_t n;        // elements in the chunk (<= kChunk)
  int64_t thread;   // this thread's index in the team
  int64_t threads;  // kThreads or 32
};

// A pointer allows the vector path when it is 16-byte aligned. Chunks start
// at multiples of kChunk elements, so a chunk is aligned iff its tensor's data
// pointer is; a view at any other offset (1 element, or 8 bytes) takes the
// scalar path, with the same element-to-thread map and the same per-element
// code, and so the same results: nvcc builds with -fmad=false (setup.py), so
// no multiply-add is contracted on one path and not on the other.
__device__ inline bool vec_ok(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

// This thread's groups of kILP<T> elements of its team's chunk (slsam::for_each_group).
template <typename T, typename Entry, typename Body>
__device__ inline void for_each_group(const ChunkOf<Entry>& ch, bool vec, Body&& body) {
  slsam::for_each_group<kILP<T>>(ch.n, vec, ch.thread, ch.threads, static_cast<Body&&>(body));
}

// kILP<T> consecutive elements starting at i; with kVec false, reads past n
// give T(0) and writes past n are dropped.
template <bool kVec, typename T>
__device__ inline void load(T (&r)[kILP<T>], const T* p, int64_t i, int64_t n) {
  if constexpr (kVec) {
    const uint4 u = *reinterpret_cast<const uint4*>(p + i);
    memcpy(r, &u, sizeof(u));
  } else {
#pragma unroll
    for (int j = 0; j < kILP<T>; ++j) r[j] = i + j < n ? p[i + j] : T(0);
  }
}

// NOTE: the vector load and store move a native uint4: with a plain
// aggregate of kILP<T> elements nvcc may split the access into narrower ones.
// The store goes through __stwb (st.global.wb, the default write-back policy),
// always one 16-byte store.
template <bool kVec, typename T>
__device__ inline void store(T* p, const T (&r)[kILP<T>], int64_t i, int64_t n) {
  static_assert(sizeof(T) * kILP<T> == sizeof(uint4), "one 16-byte vector per group");
  if constexpr (kVec) {
    uint4 u;
    memcpy(&u, r, sizeof(u));
    __stwb(reinterpret_cast<uint4*>(p + i), u);
  } else {
#pragma unroll
    for (int j = 0; j < kILP<T>; ++j) {
      if (i + j < n) p[i + j] = r[j];
    }
  }
}

// Sum of the kILP<T> per-lane accumulators as a fixed pairwise tree
// ((a0 + a1) + (a2 + a3)) + ...: short dependency chains, and the order does
// not depend on the vector path.
template <int N, typename T>
__device__ inline T pairwise_sum(const T* a) {
  if constexpr (N == 1) {
    return a[0];
  } else {
    return pairwise_sum<N / 2>(a) + pairwise_sum<N - N / 2>(a + N / 2);
  }
}

// Sum over a warp with a fixed butterfly: every lane ends with the same bits.
template <typename T>
__device__ inline T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Deterministic block sum (blockDim.x a multiple of 32, <= 1024): warps in a
// fixed butterfly, then warp 0 over the warp sums. The result is valid in
// thread 0. Contains __syncthreads: call from all threads of the block, once
// per kernel (the warp sums' shared buffer is not reset between calls).
template <typename T>
__device__ inline T block_sum(T v) {
  __shared__ T warp_sums[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    const int n_warps = static_cast<int>(blockDim.x >> 5);
    v = lane < n_warps ? warp_sums[lane] : T(0);
    v = warp_sum(v);
  }
  return v;
}

// Deterministic sum over the team of a chunk (a block, or a warp for a
// packed tensor), valid in team thread 0. A tensor's team depends only on its
// size, so its reduction order does not depend on what it is packed with.
// Call from every thread of the team.
template <typename T, typename Entry>
__device__ inline T team_sum(const ChunkOf<Entry>& ch, T v) {
  return ch.threads == kThreads ? block_sum(v) : warp_sum(v);
}

// ------------------------------------------------------------- the launcher

// The kernel of every chunk op: each block reads its plan record and runs
// body on each piece of its work (slsam::for_each_work).
template <typename scalar_t, typename Body>
__global__ void __launch_bounds__(kThreads)
    chunk_kernel(const typename Body::Entry* entries, const BlockWork* blocks, Body body) {
  using Entry = typename Body::Entry;
  const BlockWork b = blocks[blockIdx.x];
  // LaunchShape{} is kShape: device code cannot read a host constexpr object.
  for_each_work(
      b, threadIdx.x, LaunchShape{}, [&](int64_t r) { return entries[r].numel; },
      [&](const Work& w) {
        const ChunkOf<Entry> ch{entries[w.record], w.span.local, w.span.begin,
                                w.span.n,          w.thread,     w.threads};
        body.template run<scalar_t>(ch);
      });
}

// One multi-tensor operation over `tensors`: one record (Body::Entry) per
// non-empty tensor, grouped by dtype, a block plan per group
// (slsam::plan_blocks), records and plans appended to `table` after the
// records the op put there itself, one upload, then one grid per dtype
// group, each block calling body.run<scalar_t>(ChunkOf<Entry>) for each piece
// of its work. make_entry(i) fills the record's pointers for tensors[i];
// numel is set here. `table` stays the caller's, so launches after this one
// can read the op's own records from the same upload.
//
// Body: a trivially copyable struct (it is a kernel argument) with
//   using Entry = ...;  // POD record with an `int64_t numel`
//   template <typename scalar_t> __device__ void run(const ChunkOf<Entry>&) const;
// run is called by every thread of the chunk's team (ch.threads threads: the
// block, or one warp of it), each team of a block on its own chunk; it may
// reduce over the team (team_sum) but must not use __syncthreads, and must
// compute per-chunk scalars in every thread (identical bits in each).
template <typename Body, typename MakeEntry>
void launch_chunks(at::TensorList tensors, const at::Device& device, DeviceTable& table,
                   MakeEntry&& make_entry, const Body& body) {
  using Entry = typename Body::Entry;
  static_assert(std::is_trivially_copyable<Body>::value, "Body is a kernel argument");
  auto groups = group_by_dtype(tensors);
  for (auto& g : groups) {
    std::vector<int64_t> numels;
    numels.reserve(g.members.size());
    for (size_t m : g.members) numels.push_back(tensors[m].numel());
    g.plan = plan_blocks(numels, kShape);
    std::vector<Entry> entries;
    entries.reserve(g.plan.order.size());
    for (int64_t k : g.plan.order) {
      const size_t m = g.members[static_cast<size_t>(k)];
      Entry e = make_entry(m);
      e.numel = tensors[m].numel();
      entries.push_back(e);
    }
    g.entries_offset = table.add(entries);
    g.blocks_offset = table.add(g.plan.blocks);
  }
  table.upload(device);
  auto stream = c10::cuda::getCurrentCUDAStream();
  for (const auto& g : groups) {
    const auto blocks = static_cast<int64_t>(g.plan.blocks.size());
    check_grid(blocks);
    const auto* entries = table.at<Entry>(g.entries_offset);
    const auto* plan = table.at<BlockWork>(g.blocks_offset);
    SLSAM_DISPATCH_FLOATING(g.dtype, "slsam_launch_chunks", [&] {
      chunk_kernel<scalar_t, Body><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
          entries, plan, body);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

// launch_chunks for an op that uploads nothing else.
template <typename Body, typename MakeEntry>
void launch_chunks(at::TensorList tensors, const at::Device& device, MakeEntry&& make_entry,
                   const Body& body) {
  DeviceTable table;
  launch_chunks(tensors, device, table, static_cast<MakeEntry&&>(make_entry), body);
}

#endif  // __CUDACC__

}  // namespace slsam::cuda
