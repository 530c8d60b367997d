// Run-time choice of the CPU span loops' target (see span_loops.h).
#include <cstdlib>
#include <cstring>

#include "span_loops.h"

namespace slsam::cpu {
namespace {

SpanIsa detect() {
  const char* env = std::getenv("SLSAM_CPU_ISA");
  if (env != nullptr && std::strcmp(env, "baseline") == 0) return SpanIsa::kBaseline;
#if SLSAM_HAVE_AVX2_SPANS
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c")) {
    return SpanIsa::kAvx2;
  }
#endif
  return SpanIsa::kBaseline;
}

// NOTE: a fixed size rather than the cache size the OS reports, which virtual
// machines often get wrong; 32 MiB is the last-level cache of common
// server parts (one AMD CCD, a mid-size Xeon).
constexpr int64_t kStreamBytes = int64_t{32} << 20;

int64_t stream_threshold() {
  const char* env = std::getenv("SLSAM_CPU_STREAM_BYTES");
  return env != nullptr ? std::strtoll(env, nullptr, 10) : kStreamBytes;
}

}  // namespace

bool stream_stores(int64_t bytes) {
  static const int64_t threshold = stream_threshold();
  return bytes >= threshold;
}

SpanIsa span_isa() {
  static const SpanIsa isa = detect();
  return isa;
}

const char* span_isa_name() { return span_isa() == SpanIsa::kAvx2 ? "avx2" : "baseline"; }

}  // namespace slsam::cpu
