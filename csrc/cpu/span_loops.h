// The per-span CPU loops (span_loops.inc), compiled for two targets: the
// baseline of the build and, on x86-64, AVX2 + FMA + F16C. `span_isa()` picks
// the best one the running CPU has, once; SLSAM_CPU_ISA=baseline forces the
// baseline (tests compare the two bit for bit).
// NOTE: a target region instead of -march flags: the wheel keeps running on
// any x86-64 while the loops use 256-bit vectors where the CPU has them, as
// torch's own CPU kernels do with their per-ISA builds.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "slsam/chunks.h"
#include "slsam/elementwise.h"
#include "slsam/reduce.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define SLSAM_HAVE_AVX2_SPANS 1
#else
#define SLSAM_HAVE_AVX2_SPANS 0
#endif

namespace slsam::cpu {

// NOTE: span_loops.inc is one source compiled twice into this translation
// unit: included once here for the build's baseline target, and once below
// inside a GCC/clang target region (AVX2 + FMA + F16C). Each copy lands in
// its own namespace (baseline::Spans, avx2::Spans), so the same loops exist as
// two sets of machine code side by side; with_span_isa() picks one per process.
// That is why the .inc has no include guard and no includes of its own, and
// why SLSAM_SPAN_F16C / SLSAM_SPAN_NS are (re)defined around each include.
namespace baseline {
#define SLSAM_SPAN_F16C 0
#define SLSAM_SPAN_NS baseline
#include "span_loops.inc"
#undef SLSAM_SPAN_NS
#undef SLSAM_SPAN_F16C
}  // namespace baseline

#if SLSAM_HAVE_AVX2_SPANS
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
namespace avx2 {
#define SLSAM_SPAN_F16C 1
#define SLSAM_SPAN_NS avx2
#include "span_loops.inc"
#undef SLSAM_SPAN_NS
#undef SLSAM_SPAN_F16C
}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

enum class SpanIsa { kBaseline, kAvx2 };

// The loops' target for this process: AVX2 when the CPU has AVX2, FMA and
// F16C and SLSAM_CPU_ISA is not "baseline".
SpanIsa span_isa();
const char* span_isa_name();

// Whether an operator that moves `bytes` (all its reads and writes over the
// whole list) writes its write-only operands (perturb_'s backups, the
// params of restore_ and restore_adamw_) with streaming stores. They skip the
// read of every destination line before it is written and leave the caches to
// the other operands, but the data are then not in cache afterwards: worth it
// only where they could not have stayed there anyway, i.e. above the
// last-level cache (kStreamBytes; SLSAM_CPU_STREAM_BYTES overrides it, read
// once).
bool stream_stores(int64_t bytes);

// Calls fn(spans) with the Spans type of the selected target, e.g.
//   with_span_isa([&](auto isa) { decltype(isa)::perturb_span(...); });
template <typename Fn>
void with_span_isa(Fn&& fn) {
#if SLSAM_HAVE_AVX2_SPANS
  if (span_isa() == SpanIsa::kAvx2) return fn(avx2::Spans{});
#endif
  fn(baseline::Spans{});
}

}  // namespace slsam::cpu
