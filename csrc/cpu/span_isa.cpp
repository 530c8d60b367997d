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

}  // namespace

SpanIsa span_isa() {
  static const SpanIsa isa = detect();
  return isa;
}

const char* span_isa_name() { return span_isa() == SpanIsa::kAvx2 ? "avx2" : "baseline"; }

}  // namespace slsam::cpu
