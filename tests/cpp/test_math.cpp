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

// A launcher record as csrc/cuda/launch.cuh builds them: one per non-empty
// tensor, with the index of its first chunk within the launch.
struct Entry {
  int64_t tensor;
  int64_t numel;
  int64_t chunk_first;
};

static std::vector<Entry> entries_of(const std::vector<int64_t>& numels, int64_t chunk,
                                     int64_t* chunks) {
  std::vector<Entry> entries;
  int64_t next = 0;
  for (size_t t = 0; t < numels.size(); ++t) {
    if (numels[t] == 0) continue;
    entries.push_back({static_cast<int64_t>(t), numels[t], next});
    next += slsam::num_chunks(numels[t], chunk);
  }
  *chunks = next;
  return entries;
}

// Replays a whole grid on the host: every block locates its chunk, every
// thread walks its groups; each element of each tensor must be visited
// exactly once, by the same thread whether or not the vector path is on, and
// vector groups must be whole.
template <int kILP>
static void replay_grid(const std::vector<int64_t>& numels, int64_t chunk, int64_t threads) {
  int64_t chunks = 0;
  const auto entries = entries_of(numels, chunk, &chunks);
  for (bool vec : {false, true}) {
    std::vector<std::vector<int>> visits(numels.size());
    std::vector<std::vector<int64_t>> owner(numels.size());
    for (size_t t = 0; t < numels.size(); ++t) {
      visits[t].assign(static_cast<size_t>(numels[t]), 0);
      owner[t].assign(static_cast<size_t>(numels[t]), -1);
    }
    for (int64_t block = 0; block < chunks; ++block) {
      const Entry& e = entries[static_cast<size_t>(
          slsam::find_entry(entries.data(), static_cast<int64_t>(entries.size()), block))];
      const auto s = slsam::chunk_span(e.numel, e.chunk_first, block, chunk);
      CHECK(s.local >= 0 && s.n > 0 && s.n <= chunk && s.begin + s.n <= e.numel);
      for (int64_t th = 0; th < threads; ++th) {
        slsam::for_each_group<kILP>(s.n, vec, th, threads, [&](int64_t i, auto full) {
          constexpr bool kVec = decltype(full)::value;
          CHECK(!kVec || vec);
          CHECK(!kVec || i + kILP <= s.n);
          for (int j = 0; j < kILP && i + j < s.n; ++j) {
            const auto k = static_cast<size_t>(s.begin + i + j);
            ++visits[static_cast<size_t>(e.tensor)][k];
            auto& o = owner[static_cast<size_t>(e.tensor)][k];
            CHECK(o == -1);
            o = block * threads + th;
          }
        });
      }
    }
    std::vector<int64_t> first(numels.size(), 0);
    for (const Entry& e : entries) first[static_cast<size_t>(e.tensor)] = e.chunk_first;
    for (size_t t = 0; t < numels.size(); ++t) {
      for (size_t k = 0; k < visits[t].size(); ++k) CHECK(visits[t][k] == 1);
      // The owner of element k: thread (k mod chunk) / kILP mod threads of
      // the block of its chunk, on both paths.
      for (size_t k = 0; k < owner[t].size(); ++k) {
        const auto el = static_cast<int64_t>(k);
        const int64_t block = first[t] + el / chunk;
        const int64_t th = (el % chunk) / kILP % threads;
        CHECK(owner[t][k] == block * threads + th);
      }
    }
  }
}

static void test_launch_map() {
  // Small chunks and blocks, so partial groups, partial chunks, empty tensors
  // and one-element tensors all occur.
  replay_grid<4>({0, 1, 3, 4, 5, 63, 64, 65, 3 * 64 + 7, 0, 2, 0}, 64, 8);
  replay_grid<4>({0}, 64, 8);
  replay_grid<2>({1, 2, 3, 129}, 32, 4);
  // The real launch shape: 64Ki-element chunks, 512 threads, 4 elements each.
  replay_grid<4>({1, 65535, 65536, 65537, 3 * 65536 + 1001}, int64_t{1} << 16, 512);
  // Thousands of tensors: find_entry over many records.
  std::vector<int64_t> many;
  for (int i = 0; i < 3000; ++i) many.push_back(i % 7 == 0 ? 0 : 1 + (i * 37) % 300);
  replay_grid<4>(many, 128, 16);

  // 64-bit sizes: a tensor of 2^31 + 5 elements after a small one. Its last
  // chunk starts at element 2^31 and holds 5; block indices stay 32-bit.
  const int64_t chunk = int64_t{1} << 16;
  const int64_t big = (int64_t{1} << 31) + 5;
  int64_t chunks = 0;
  const auto entries = entries_of({10, 0, big, 3}, chunk, &chunks);
  CHECK(chunks == 1 + 32769 + 1);
  const int64_t last_of_big = 1 + 32768;
  CHECK(slsam::find_entry(entries.data(), 3, last_of_big) == 1);
  CHECK(slsam::find_entry(entries.data(), 3, last_of_big + 1) == 2);
  CHECK(slsam::find_entry(entries.data(), 3, 0) == 0);
  const auto s = slsam::chunk_span(big, 1, last_of_big, chunk);
  CHECK(s.local == 32768 && s.begin == (int64_t{1} << 31) && s.n == 5);
  const auto s0 = slsam::chunk_span(big, 1, 1, chunk);
  CHECK(s0.begin == 0 && s0.n == chunk);
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
