// Unit tests of the torch-free kernel math in csrc/include/slsam (run by ctest).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <vector>

#include "slsam/bandit.h"
#include "slsam/bandit_block.h"
#include "slsam/chunks.h"
#include "slsam/elementwise.h"
#include "slsam/launch_map.h"
#include "slsam/reduce.h"

static int failures = 0;
#define CHECK(cond)                                                   \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                     \
    }                                                                 \
  } while (0)

static bool near(double a, double b, double tol) { return std::fabs(a - b) <= tol; }

static void test_chunks() {
  const std::vector<int64_t> numels = {0, 5, 10, 0, 1, (int64_t{1} << 32) + 3};
  const int64_t chunk = 4;
  const auto table = slsam::chunk_table({0, 5, 10, 0, 1}, chunk);
  CHECK(table.size() == 2 + 3 + 1);
  CHECK(table[0].tensor == 1 && table[0].begin == 0 && table[0].end == 4);
  CHECK(table[1].tensor == 1 && table[1].begin == 4 && table[1].end == 5);
  CHECK(table[4].tensor == 2 && table[4].end == 10);
  CHECK(table[5].tensor == 4 && table[5].end == 1);
  const auto first = slsam::chunk_offsets(numels, chunk);
  CHECK(first[1] == 0 && first[2] == 2 && first[3] == 5 && first[4] == 5 && first[5] == 6);
  // 64-bit sizes: a tensor of 2^32 + 3 elements has 2^30 + 1 chunks of 4.
  CHECK(slsam::num_chunks(numels[5], chunk) == (int64_t{1} << 30) + 1);
  CHECK(slsam::num_chunks(0, chunk) == 0);
}

static void test_sum_squares() {
  std::vector<float> x(10007);
  double exact = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    x[i] = static_cast<float>(std::sin(0.1 * static_cast<double>(i)));
    exact += static_cast<double>(x[i]) * x[i];
  }
  auto value = [&](int64_t i) { return x[static_cast<size_t>(i)]; };
  const double a = slsam::sum_squares<float>(static_cast<int64_t>(x.size()), value);
  const double b = slsam::sum_squares<float>(static_cast<int64_t>(x.size()), value);
  CHECK(a == b);
  CHECK(near(a, exact, 1e-6 * exact));
  CHECK(slsam::sum_squares<float>(0, value) == 0.0);
}

static void test_perturb() {
  CHECK(slsam::perturb_element<float>(1.0f, 2.0f, 0.5f, false) == 2.0f);
  CHECK(slsam::perturb_element<float>(2.0f, 1.0f, 0.5f, true) == 4.0f);  // 2 + 0.5*4*1
  CHECK(slsam::perturb_scale<double>(2.0, 0.1, 0.0) == 0.05);
  const double inf = std::numeric_limits<double>::infinity();
  CHECK(slsam::perturb_scale<double>(inf, 0.1, 1e-12) == 0.0);
  CHECK(slsam::perturb_scale<double>(std::nan(""), 0.1, 1e-12) == 0.0);
  CHECK(!slsam::perturb_moves(0.0f) && !slsam::perturb_moves(std::numeric_limits<float>::infinity()));
  CHECK(!slsam::perturb_moves(std::nanf("")) && slsam::perturb_moves(1e-30f));
}

static void test_adamw() {
  // One step from m = v = 0, step 1: m = (1-b1) g, v = (1-b2) g^2, and the
  // bias-corrected update is lr * g / (|g| + eps') ~ lr * sign(g).
  const auto s = slsam::adamw_scalars<double>(slsam::adamw_hyper(0.1, 0.9, 0.999, 0.0, 1e-8), 1.0);
  double m = 0.0, v = 0.0;
  const double x = slsam::restore_adamw_element<double>(1.0, 2.0, m, v, s);
  CHECK(near(m, 0.2, 1e-15));
  CHECK(near(v, 0.004, 1e-15));
  CHECK(near(x, 1.0 - 0.1 * 2.0 / (2.0 + 1e-8), 1e-12));
  // Decoupled weight decay with a zero gradient: x0 * (1 - lr * wd).
  const auto d = slsam::adamw_scalars<double>(slsam::adamw_hyper(0.1, 0.9, 0.999, 0.5, 1e-8), 3.0);
  double m2 = 0.0, v2 = 0.0;
  CHECK(near(slsam::restore_adamw_element<double>(2.0, 0.0, m2, v2, d), 2.0 * 0.95, 1e-15));
  // fp32: 1 - beta2, 1 - beta1 and 1 - lr * wd rounded once from double, as torch's
  // Python scalars are (not 1.0f - 0.999f = 0.00099998713f).
  const auto f = slsam::adamw_scalars<float>(slsam::adamw_hyper(1e-3, 0.9, 0.999, 0.01, 1e-8), 1.0);
  CHECK(f.one_minus_beta2 == static_cast<float>(1.0 - 0.999));
  CHECK(f.one_minus_beta1 == static_cast<float>(1.0 - 0.9));
  CHECK(f.decay == static_cast<float>(1.0 - 1e-3 * 0.01));
}

static double sum(const std::vector<double>& p) {
  double s = 0.0;
  for (double v : p) s += v;
  return s;
}

static void test_capped_projection() {
  std::vector<double> w = {10.0, 1.0, 1.0, 1.0, 1.0};
  std::vector<double> p(5);
  std::vector<unsigned char> scratch(5);
  slsam::capped_projection(w.data(), 5, 2.0, p.data(), scratch.data());
  CHECK(p[0] == 1.0);  // capped
  CHECK(near(p[1], 0.25, 1e-15) && near(p[4], 0.25, 1e-15));
  CHECK(near(sum(p), 2.0, 1e-12));
  slsam::capped_projection(w.data(), 5, 5.0, p.data(), scratch.data());
  for (double v : p) CHECK(v == 1.0);
  // A cascade of caps: capping the first raises the scale enough to cap the second.
  std::vector<double> w2 = {100.0, 30.0, 1.0, 1.0, 1.0, 1.0};
  std::vector<double> p2(6);
  std::vector<unsigned char> s2(6);
  slsam::capped_projection(w2.data(), 6, 3.0, p2.data(), s2.data());
  CHECK(p2[0] == 1.0 && p2[1] == 1.0 && near(p2[2], 0.25, 1e-15));
  CHECK(near(sum(p2), 3.0, 1e-12));
}

static void test_bandit_update() {
  // Ties: equal r/p for all active arms gives lhat = 0, probabilities unchanged.
  std::vector<double> p = {0.4, 0.4, 0.4, 0.4, 0.4};
  const bool mask[5] = {true, false, true, false, true};
  const float norms[3] = {2.0f, 2.0f, 2.0f};
  std::vector<double> w(5);
  std::vector<unsigned char> capped(5);
  slsam::bandit_update(p.data(), mask, norms, 5, 1e-3, 2.0, false, w.data(), capped.data());
  for (double v : p) CHECK(near(v, 0.4, 1e-15));
  // The arm with the largest r/p gains probability, the others lose some.
  const float uneven[3] = {1.0f, 4.0f, 2.0f};
  slsam::bandit_update(p.data(), mask, uneven, 5, 1e-2, 2.0, false, w.data(), capped.data());
  CHECK(p[2] > 0.4 && p[0] < 0.4 && p[4] < 0.4 && p[0] < p[4]);
  CHECK(near(sum(p), 2.0, 1e-12));
  // Normalised loss is scale-free: norms x1000 give the same update.
  std::vector<double> a(5, 0.4), b(5, 0.4);
  const float big[3] = {1000.0f, 4000.0f, 2000.0f};
  slsam::bandit_update(a.data(), mask, uneven, 5, 1e-2, 2.0, true, w.data(), capped.data());
  slsam::bandit_update(b.data(), mask, big, 5, 1e-2, 2.0, true, w.data(), capped.data());
  for (int i = 0; i < 5; ++i) CHECK(near(a[static_cast<size_t>(i)], b[static_cast<size_t>(i)], 1e-12));
  // No active arm: nothing changes.
  const bool none[5] = {false, false, false, false, false};
  std::vector<double> c(5, 0.4);
  slsam::bandit_update(c.data(), none, norms, 5, 1e-2, 2.0, false, w.data(), capped.data());
  for (double v : c) CHECK(v == 0.4);
}

// The CUDA kernel's block update (replayed by HostBlock) against the serial
// update: the same per-arm operations, sums associated differently.
static void test_bandit_update_block() {
  for (int64_t n : {1, 7, 255, 256, 257, 1000, 5000}) {
    for (bool normalize : {false, true}) {
      std::vector<double> serial(static_cast<size_t>(n)), blocked;
      std::vector<unsigned char> mask_bytes(static_cast<size_t>(n));
      std::vector<float> norms;
      for (int64_t i = 0; i < n; ++i) {
        serial[static_cast<size_t>(i)] = 0.05 + 0.8 * std::fmod(0.618034 * static_cast<double>(i), 1.0);
        mask_bytes[static_cast<size_t>(i)] = (i % 3 == 0) ? 1 : 0;
        if (i % 3 == 0) norms.push_back(static_cast<float>(300.0 * std::fmod(0.754877 * i, 1.0)));
      }
      const bool* mask = reinterpret_cast<const bool*>(mask_bytes.data());
      blocked = serial;
      const double k = n < 5 ? 1.0 : 0.2 * static_cast<double>(n);
      std::vector<double> w(static_cast<size_t>(n));
      std::vector<int64_t> slot(static_cast<size_t>(n));
      std::vector<unsigned char> capped(static_cast<size_t>(n));
      slsam::bandit_update(serial.data(), mask, norms.data(), n, 1e-3, k, normalize, w.data(),
                           capped.data());
      slsam::HostBlock block;
      CHECK(slsam::bandit_update_block(block, blocked.data(), mask, norms.data(), n,
                                       static_cast<int64_t>(norms.size()), 1e-3, k, normalize,
                                       w.data(), slot.data(), capped.data()));
      for (int64_t i = 0; i < n; ++i) {
        const double a = serial[static_cast<size_t>(i)], b = blocked[static_cast<size_t>(i)];
        CHECK(near(a, b, 1e-12 * std::fabs(a) + 1e-300));
      }
      // A wrong norm count is refused before anything is written.
      std::vector<double> before = blocked;
      CHECK(!slsam::bandit_update_block(block, blocked.data(), mask, norms.data(), n,
                                        static_cast<int64_t>(norms.size()) + 1, 1e-3, k,
                                        normalize, w.data(), slot.data(), capped.data()));
      CHECK(before == blocked);
    }
  }
}

static void test_fallback_arm() {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double a[4] = {0.1, 0.3, 0.3, 0.2};
  CHECK(slsam::fallback_arm(a, 4) == 1);  // largest, first on ties
  const double b[3] = {nan, 1e-300, 0.0};
  CHECK(slsam::fallback_arm(b, 3) == 1);  // a valid arm beats a NaN, even in arm 0
  const double c[3] = {0.0, nan, 0.0};
  CHECK(slsam::fallback_arm(c, 3) == 0);
  const double d[2] = {nan, nan};
  CHECK(slsam::fallback_arm(d, 2) == 0);
  const double e[1] = {nan};
  CHECK(slsam::fallback_arm(e, 1) == 0);
}

// The launcher's map before block plans, kept as the oracle for chunks of
// unpacked tensors: one block per chunk of every non-empty tensor in list
// order, a block finding its tensor by binary search over first chunks.
struct OldEntry {
  int64_t tensor;
  int64_t chunk_first;
};

static std::vector<OldEntry> old_entries(const std::vector<int64_t>& numels, int64_t chunk) {
  std::vector<OldEntry> entries;
  int64_t next = 0;
  for (size_t t = 0; t < numels.size(); ++t) {
    if (numels[t] == 0) continue;
    entries.push_back({static_cast<int64_t>(t), next});
    next += slsam::num_chunks(numels[t], chunk);
  }
  return entries;
}

static int64_t old_find_entry(const std::vector<OldEntry>& entries, int64_t chunk) {
  int64_t lo = 0, hi = static_cast<int64_t>(entries.size()) - 1;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (entries[static_cast<size_t>(mid)].chunk_first <= chunk) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Where an element is handled: block, team size, thread in the team, and the
// element's chunk within its tensor.
struct Visit {
  int64_t block = -1;
  int64_t threads = 0;
  int64_t thread = -1;
  int64_t local = -1;
};

// Structural checks of one plan: records, block capacity, the blocks of
// unpacked tensors against the old binary search, one grad_norms partial per
// chunk.
static void check_plan(const std::vector<int64_t>& numels, const slsam::LaunchShape& shape,
                       const slsam::BlockPlan& plan) {
  const auto n = numels.size();
  // Every non-empty tensor has exactly one record: the unpacked ones first,
  // then the packed ones, each in list order.
  std::vector<int64_t> want;
  for (bool packed : {false, true}) {
    for (size_t t = 0; t < n; ++t) {
      if (numels[t] > 0 && slsam::is_packed(numels[t], shape) == packed) {
        want.push_back(static_cast<int64_t>(t));
      }
    }
  }
  CHECK(plan.order == want);
  int64_t old_blocks = 0;
  for (int64_t v : numels) old_blocks += slsam::num_chunks(v, shape.chunk);
  CHECK(static_cast<int64_t>(plan.blocks.size()) <= old_blocks);

  const auto old = old_entries(numels, shape.chunk);
  const auto partial_first = slsam::chunk_offsets(numels, shape.chunk);
  std::vector<int> partials(static_cast<size_t>(partial_first.back()), 0);
  std::vector<int64_t> next_chunk(n, 0);
  int64_t next_record = 0;  // packed records are consecutive, block after block
  bool packed_seen = false;
  for (const slsam::BlockWork& b : plan.blocks) {
    CHECK(b.record >= 0 && static_cast<size_t>(b.record) < plan.order.size());
    if (b.packed == 0) {
      CHECK(!packed_seen);  // unpacked blocks first
      const int64_t t = plan.order[static_cast<size_t>(b.record)];
      const int64_t numel = numels[static_cast<size_t>(t)];
      CHECK(!slsam::is_packed(numel, shape));
      // Chunks of a tensor in order, each once.
      CHECK(b.chunk == next_chunk[static_cast<size_t>(t)]);
      ++next_chunk[static_cast<size_t>(t)];
      // O(1) lookup == the old binary search over all records.
      int64_t old_first = -1;
      for (const OldEntry& e : old) {
        if (e.tensor == t) old_first = e.chunk_first;
      }
      const int64_t global = old_first + b.chunk;
      const OldEntry& found = old[static_cast<size_t>(old_find_entry(old, global))];
      CHECK(found.tensor == t && global - found.chunk_first == b.chunk);
      ++partials[static_cast<size_t>(partial_first[static_cast<size_t>(t)] + b.chunk)];
    } else {
      packed_seen = true;
      if (next_record == 0) next_record = b.record;
      CHECK(b.record == next_record);
      next_record += b.packed;
      CHECK(b.packed >= 1 && b.packed <= shape.pack_tensors);
      int64_t elements = 0;
      for (int64_t j = 0; j < b.packed; ++j) {
        const int64_t t = plan.order[static_cast<size_t>(b.record + j)];
        const int64_t numel = numels[static_cast<size_t>(t)];
        CHECK(slsam::is_packed(numel, shape) && numel > 0);
        elements += numel;
        ++next_chunk[static_cast<size_t>(t)];
        ++partials[static_cast<size_t>(partial_first[static_cast<size_t>(t)])];
      }
      CHECK(elements <= shape.chunk);  // the block capacity
    }
  }
  if (packed_seen) CHECK(next_record == static_cast<int64_t>(plan.order.size()));
  for (size_t t = 0; t < n; ++t) {
    CHECK(next_chunk[t] == slsam::num_chunks(numels[t], shape.chunk));
  }
  // grad_norms: each tensor's partials are chunk_offsets' slots, each chunk's
  // written by exactly one team, so tensor_sums_kernel adds them in chunk order.
  for (int v : partials) CHECK(v == 1);
}

// Replays a whole grid on the host: every thread of every block runs
// for_each_work and walks its groups. Each element of each tensor must be
// visited exactly once, by the same thread whether or not the vector path is
// on, vector groups must be whole, and every thread of a team must see the
// same pieces of work. Returns where each element was handled.
template <int kILP>
static std::vector<std::vector<Visit>> replay_grid(const std::vector<int64_t>& numels,
                                                   const slsam::LaunchShape& shape) {
  const auto plan = slsam::plan_blocks(numels, shape);
  check_plan(numels, shape, plan);
  const auto numel_of = [&](int64_t r) {
    return numels[static_cast<size_t>(plan.order[static_cast<size_t>(r)])];
  };
  std::vector<std::vector<Visit>> where(numels.size());
  for (bool vec : {false, true}) {
    std::vector<std::vector<Visit>> seen(numels.size());
    for (size_t t = 0; t < numels.size(); ++t) seen[t].resize(static_cast<size_t>(numels[t]));
    for (size_t block = 0; block < plan.blocks.size(); ++block) {
      // Per thread: its pieces (record, local chunk, team size, thread in team).
      std::vector<std::vector<std::vector<int64_t>>> pieces(static_cast<size_t>(shape.threads));
      for (int64_t th = 0; th < shape.threads; ++th) {
        slsam::for_each_work(plan.blocks[block], th, shape, numel_of, [&](const slsam::Work& w) {
          pieces[static_cast<size_t>(th)].push_back(
              {w.record, w.span.local, w.threads, w.thread});
          const auto& s = w.span;
          const int64_t t = plan.order[static_cast<size_t>(w.record)];
          CHECK(s.local >= 0 && s.n > 0 && s.n <= shape.chunk && s.begin + s.n <= numel_of(w.record));
          CHECK(w.thread == th % w.threads);
          slsam::for_each_group<kILP>(s.n, vec, w.thread, w.threads, [&](int64_t i, auto full) {
            constexpr bool kVec = decltype(full)::value;
            CHECK(!kVec || vec);
            CHECK(!kVec || i + kILP <= s.n);
            for (int j = 0; j < kILP && i + j < s.n; ++j) {
              Visit& v = seen[static_cast<size_t>(t)][static_cast<size_t>(s.begin + i + j)];
              CHECK(v.block == -1);  // visited once
              v = Visit{static_cast<int64_t>(block), w.threads, w.thread, s.local};
            }
          });
        });
      }
      // A team's threads get the same pieces in the same order.
      for (int64_t th = 0; th < shape.threads; ++th) {
        for (const auto& p : pieces[static_cast<size_t>(th)]) {
          const int64_t lead = th - p[3];
          CHECK(lead >= 0);
          bool same = false;
          for (const auto& q : pieces[static_cast<size_t>(lead)]) {
            same = same || (q[0] == p[0] && q[1] == p[1] && q[2] == p[2] && q[3] == 0);
          }
          CHECK(same);
        }
      }
    }
    for (size_t t = 0; t < numels.size(); ++t) {
      for (size_t k = 0; k < seen[t].size(); ++k) {
        const Visit& v = seen[t][k];
        CHECK(v.block >= 0);  // visited
        // The owner of element k: thread (k mod chunk) / kILP of its team,
        // the team being the block for an unpacked tensor, a warp for a
        // packed one; the same on both paths.
        const auto el = static_cast<int64_t>(k);
        const int64_t team = slsam::is_packed(numels[t], shape) ? shape.warp : shape.threads;
        CHECK(v.threads == team && v.local == el / shape.chunk);
        CHECK(v.thread == (el % shape.chunk) / kILP % team);
        if (vec) {
          const Visit& u = where[t][k];
          CHECK(u.block == v.block && u.thread == v.thread && u.threads == v.threads);
        }
      }
    }
    where = std::move(seen);
  }
  return where;
}

// A tensor's team and element map (so its reduction order) do not depend on
// the tensors it is planned with: replayed alone, it is handled alike.
template <int kILP>
static void check_neighbour_free(const std::vector<int64_t>& numels,
                                 const std::vector<std::vector<Visit>>& where,
                                 const slsam::LaunchShape& shape) {
  for (size_t t = 0; t < numels.size(); ++t) {
    if (numels[t] == 0) continue;
    const auto alone = replay_grid<kILP>({numels[t]}, shape);
    for (size_t k = 0; k < alone[0].size(); ++k) {
      const Visit& a = alone[0][k];
      const Visit& b = where[t][k];
      CHECK(a.threads == b.threads && a.thread == b.thread && a.local == b.local);
    }
  }
}

static void test_launch_map() {
  // A small shape, so partial groups, partial chunks, full and overfull
  // packed blocks, empty and one-element tensors all occur: chunks of 64,
  // blocks of 8 threads, warps of 2, packing up to 16 elements, 8 per block.
  slsam::LaunchShape small;
  small.chunk = 64;
  small.threads = 8;
  small.warp = 2;
  small.pack_max = 16;
  small.pack_tensors = 8;
  const std::vector<int64_t> mixed = {0, 1, 3, 4, 5, 15, 16, 17, 63, 64, 65, 3 * 64 + 7,
                                      0, 2, 0, 16, 16, 16, 16, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  const auto where = replay_grid<4>(mixed, small);
  check_neighbour_free<4>(mixed, where, small);
  replay_grid<4>({0}, small);
  replay_grid<4>({}, small);
  replay_grid<2>({1, 2, 3, 129, 16, 16, 16, 16, 1}, small);
  {
    // Capacity: four 16-element tensors fill a block's 64 elements, the
    // fifth opens the next; eight 1-element tensors fill one by count.
    const auto plan = slsam::plan_blocks({16, 16, 16, 16, 16, 1, 1, 1, 1, 1, 1, 1, 1}, small);
    CHECK(plan.blocks.size() == 3);
    CHECK(plan.blocks[0].packed == 4 && plan.blocks[1].packed == 8 &&
          plan.blocks[2].packed == 1);
  }

  // The real launch shape: 64Ki-element chunks, 512 threads, 4 elements each.
  const slsam::LaunchShape real;
  CHECK(real.pack_max == 4096 && real.pack_tensors == 32);
  const std::vector<int64_t> sizes = {1,     384,   4095,  4096,  4097, 65535, 65536,
                                      65537, 0,     7,     3 * 65536 + 1001, 2048, 2048};
  const auto where_real = replay_grid<4>(sizes, real);
  check_neighbour_free<4>(sizes, where_real, real);
  replay_grid<8>(sizes, real);  // bf16/fp16
  replay_grid<2>(sizes, real);  // fp64
  {
    const auto plan = slsam::plan_blocks(sizes, real);
    // 4097, 65535, 65536: 1 chunk each; 65537: 2; 3 * 65536 + 1001: 4; then
    // 1 + 384 + 4095 + 4096 + 7 + 2048 + 2048 elements in one packed block.
    CHECK(plan.blocks.size() == 3 + 2 + 4 + 1);
    CHECK(plan.blocks.back().packed == 7);
  }

  // 70,000 tensors (over the 65,535 a 16-bit index would hold), mostly tiny:
  // packed 32 to a block, in a few thousand blocks instead of 70,000.
  std::vector<int64_t> many;
  for (int i = 0; i < 70000; ++i) many.push_back(i % 7 == 0 ? 0 : 1 + (i * 37) % 300);
  many[12345] = 3 * 65536 + 5;
  many[54321] = 4097;
  replay_grid<4>(many, real);
  {
    const auto plan = slsam::plan_blocks(many, real);
    CHECK(plan.order.size() == 60000);  // the 10,000 empty ones have no record
    CHECK(plan.blocks.size() < 70000 / 16);
  }

  // 64-bit sizes: a tensor of 2^31 + 5 elements (too large to replay element
  // by element). Its last chunk starts at element 2^31 and holds 5; chunk
  // indices stay 32-bit.
  const int64_t big = (int64_t{1} << 31) + 5;
  const std::vector<int64_t> huge = {10, 0, big, 3};
  const auto plan = slsam::plan_blocks(huge, real);
  check_plan(huge, real, plan);
  CHECK(plan.blocks.size() == 32769 + 1);
  CHECK(plan.order.size() == 3 && plan.order[0] == 2);
  const slsam::BlockWork last = plan.blocks[32768];
  CHECK(last.packed == 0 && last.record == 0 && last.chunk == 32768);
  const auto numel_of = [&](int64_t r) { return huge[static_cast<size_t>(plan.order[static_cast<size_t>(r)])]; };
  int pieces = 0;
  slsam::for_each_work(last, 511, real, numel_of, [&](const slsam::Work& w) {
    ++pieces;
    CHECK(w.span.local == 32768 && w.span.begin == (int64_t{1} << 31) && w.span.n == 5);
    CHECK(w.thread == 511 && w.threads == 512);
  });
  CHECK(pieces == 1);
  const slsam::BlockWork first = plan.blocks[0];
  slsam::for_each_work(first, 0, real, numel_of, [&](const slsam::Work& w) {
    CHECK(w.span.begin == 0 && w.span.n == real.chunk);
  });
  // The packed block (10 and 3 elements): warps 0 and 1, nothing for warp 2.
  const slsam::BlockWork packed = plan.blocks.back();
  CHECK(packed.packed == 2 && packed.record == 1);
  for (int64_t th : {0, 31, 32, 63, 64, 511}) {
    int count = 0;
    slsam::for_each_work(packed, th, real, numel_of, [&](const slsam::Work& w) {
      ++count;
      CHECK(w.record == 1 + th / 32 && w.threads == 32 && w.thread == th % 32);
    });
    CHECK(count == (th < 64 ? 1 : 0));
  }
}

int main() {
  test_chunks();
  test_launch_map();
  test_fallback_arm();
  test_sum_squares();
  test_perturb();
  test_adamw();
  test_capped_projection();
  test_bandit_update();
  test_bandit_update_block();
  if (failures) {
    std::fprintf(stderr, "%d check(s) failed\n", failures);
    return EXIT_FAILURE;
  }
  std::printf("all math tests passed\n");
  return EXIT_SUCCESS;
}
