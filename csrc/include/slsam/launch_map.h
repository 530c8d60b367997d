// The index map of the CUDA multi-tensor launcher (csrc/cuda/launch.cuh): the
// host's block plan (which tensors and chunks each block of a launch works
// on), and, given a block's plan record and a thread index, which tensor,
// chunk and elements that thread visits. Torch-free and host-callable, so
// tests/cpp/test_math.cpp builds plans and replays whole grids on the CPU:
// every element of every tensor visited exactly once, packing within the
// block capacity, the same owner on the vector and scalar paths.
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "slsam/chunks.h"
#include "slsam/macros.h"

namespace slsam {

// The launch shape. The kernels use the defaults (launch.cuh); the host tests
// also replay smaller shapes, where partial groups, chunks and packed blocks
// are cheap to enumerate.
struct LaunchShape {
  int64_t chunk = kChunk;  // elements per chunk of a large tensor
  int64_t threads = 512;   // threads per block
  int64_t warp = 32;       // threads per warp: the team of a packed tensor
  // A tensor of at most pack_max elements is "packed": one warp handles it
  // whole, and up to pack_tensors of them (with at most `chunk` elements in
  // all) share a block. NOTE: pack_max = chunk / (threads / warp) keeps a
  // warp's work on one packed tensor within its share of a full chunk; the
  // cap of two packed tensors per warp bounds a packed block at twice a full
  // chunk's per-warp work while 1-element tensors still go 32 to a block.
  int64_t pack_max = kChunk / (512 / 32);
  int64_t pack_tensors = 2 * (512 / 32);
};

SLSAM_HD inline bool is_packed(int64_t numel, const LaunchShape& shape) {
  return numel <= shape.pack_max;
}

// One block of a launch. `record` indexes the launch's per-tensor records
// (BlockPlan::order). packed == 0: the whole block works on chunk `chunk` of
// record `record` (a tensor over pack_max elements). packed > 0: records
// record .. record + packed - 1 are packed tensors, whole (one chunk each),
// packed tensor j taken by warp j % (threads / warp).
// NOTE: 32-bit fields: a launch has at most INT32_MAX blocks (the grid's
// limit, checked by the launcher before planning), and so at most that many
// records and chunks per tensor; element offsets are formed in 64 bits.
struct BlockWork {
  int32_t record;
  int32_t packed;
  int32_t chunk;
};

struct BlockPlan {
  std::vector<int64_t> order;     // record r describes tensor order[r] of the list planned
  std::vector<BlockWork> blocks;  // one per block of the grid
};

// The plan of one launch over tensors of these sizes (list order). Empty
// tensors get no record and no block. Tensors over pack_max elements come
// first, in list order, one block per chunk; then the packed tensors, in list
// order, filled greedily into blocks of at most pack_tensors tensors and
// `chunk` elements. A tensor's chunks, its element-to-thread map and so its
// reduction order depend only on its own size, never on its neighbours.
// O(1) per block, O(tensors + blocks) in all.
inline BlockPlan plan_blocks(const std::vector<int64_t>& numels,
                             const LaunchShape& shape = LaunchShape{}) {
  BlockPlan plan;
  for (size_t t = 0; t < numels.size(); ++t) {
    if (numels[t] <= 0 || is_packed(numels[t], shape)) continue;
    const auto record = static_cast<int32_t>(plan.order.size());
    plan.order.push_back(static_cast<int64_t>(t));
    const int64_t chunks = num_chunks(numels[t], shape.chunk);
    for (int64_t c = 0; c < chunks; ++c) {
      plan.blocks.push_back(BlockWork{record, 0, static_cast<int32_t>(c)});
    }
  }
  int64_t filled = 0;  // elements in the open packed block
  for (size_t t = 0; t < numels.size(); ++t) {
    if (numels[t] <= 0 || !is_packed(numels[t], shape)) continue;
    BlockWork* open = plan.blocks.empty() || plan.blocks.back().packed == 0
                          ? nullptr
                          : &plan.blocks.back();
    if (open == nullptr || open->packed == shape.pack_tensors ||
        filled + numels[t] > shape.chunk) {
      plan.blocks.push_back(BlockWork{static_cast<int32_t>(plan.order.size()), 0, 0});
      open = &plan.blocks.back();
      filled = 0;
    }
    plan.order.push_back(static_cast<int64_t>(t));
    ++open->packed;
    filled += numels[t];
  }
  return plan;
}

struct ChunkSpan {
  int64_t local;  // chunk index within its tensor
  int64_t begin;  // first element
  int64_t n;      // elements in the chunk (<= chunk_size)
};

// NOTE: 64-bit throughout: chunk `local` of a tensor over 2^31 elements
// begins past INT32_MAX.
SLSAM_HD inline ChunkSpan chunk_span(int64_t numel, int64_t local, int64_t chunk_size) {
  ChunkSpan s;
  s.local = local;
  s.begin = local * chunk_size;
  const int64_t rest = numel - s.begin;
  s.n = rest < chunk_size ? rest : chunk_size;
  return s;
}

// One piece of a block's work for one thread: a chunk of one record, walked
// by a team of `threads` threads (the whole block, or one warp) in which this
// thread is number `thread`.
struct Work {
  int64_t record;
  ChunkSpan span;
  int64_t thread;
  int64_t threads;
};

// Calls f(Work) for each piece of block `b`'s work that thread `thread` takes
// part in; numel_of(r) is record r's element count. Every thread of a team
// gets the same pieces in the same order, so a team may reduce over its
// threads (a block reduction for a whole-block team, a warp one for a warp).
template <typename NumelOf, typename F>
SLSAM_HD inline void for_each_work(const BlockWork& b, int64_t thread, const LaunchShape& shape,
                                   NumelOf&& numel_of, F&& f) {
  if (b.packed == 0) {
    f(Work{b.record, chunk_span(numel_of(b.record), b.chunk, shape.chunk), thread,
           shape.threads});
    return;
  }
  const int64_t warps = shape.threads / shape.warp;
  for (int64_t j = thread / shape.warp; j < b.packed; j += warps) {
    const int64_t r = b.record + j;
    f(Work{r, chunk_span(numel_of(r), 0, shape.chunk), thread % shape.warp, shape.warp});
  }
}

// The per-thread loop over a chunk of n elements: thread t of `threads` takes
// the groups of kILP elements starting at t * kILP, (t + threads) * kILP, ...,
// calling body(i, kVec) with kVec a std::bool_constant. With `vec` (every
// pointer aligned), whole groups run the vector path (kVec true) and only a
// chunk's last, partial group the guarded scalar one; the element-to-thread
// map and each thread's order are the same either way, so results do not
// depend on alignment (given no multiply-add contraction on either path:
// nvcc -fmad=false, host -ffp-contract=off). Two separate loops (rather than a branch per access)
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
