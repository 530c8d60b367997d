// Multi-tensor bookkeeping: every tensor of a list is cut into fixed-size
// chunks, and kernels iterate over (tensor, chunk) pairs. Both the CPU
// kernels (one parallel_for over all chunks) and the CUDA launcher (one
// block per chunk) use this, so the partition — and therefore the order of
// every floating-point reduction — is independent of the thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "slsam/macros.h"

namespace slsam {

// Elements per chunk, on both devices: large enough to amortise a chunk's
// dispatch (CPU) or launch share (CUDA), small enough to balance a few dozen
// threads or fill a GPU. NOTE: fixed, so the partition, and with it the order of
// every reduction, never depends on the machine.
constexpr int64_t kChunk = 1 << 16;

// NOTE: 64-bit everywhere: tensors over 2^31 elements are legal.
SLSAM_HD inline int64_t num_chunks(int64_t numel, int64_t chunk_size) {
  return numel <= 0 ? 0 : (numel + chunk_size - 1) / chunk_size;
}

struct ChunkRef {
  int64_t tensor;  // index into the tensor list
  int64_t begin;   // first element of the chunk
  int64_t end;     // one past the last element
};

// All chunks of all tensors, tensors in list order, chunks in element order.
// Empty tensors contribute no chunks.
inline std::vector<ChunkRef> chunk_table(const std::vector<int64_t>& numels,
                                         int64_t chunk_size) {
  std::vector<ChunkRef> table;
  int64_t total = 0;
  for (int64_t n : numels) total += num_chunks(n, chunk_size);
  table.reserve(static_cast<size_t>(total));
  for (size_t t = 0; t < numels.size(); ++t) {
    for (int64_t b = 0; b < numels[t]; b += chunk_size) {
      const int64_t e = b + chunk_size < numels[t] ? b + chunk_size : numels[t];
      table.push_back({static_cast<int64_t>(t), b, e});
    }
  }
  return table;
}

// First chunk of every tensor in `table` (size numels.size() + 1): the chunks
// of tensor t are [first[t], first[t + 1]).
inline std::vector<int64_t> chunk_offsets(const std::vector<int64_t>& numels,
                                          int64_t chunk_size) {
  std::vector<int64_t> first(numels.size() + 1, 0);
  for (size_t t = 0; t < numels.size(); ++t) {
    first[t + 1] = first[t] + num_chunks(numels[t], chunk_size);
  }
  return first;
}

}  // namespace slsam
