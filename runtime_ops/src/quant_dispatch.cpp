// Picks the quantised FFN kernels for this CPU once, at first use.
#include <cstdlib>
#include <cstring>

#include "quant_decode.h"

#if defined(__aarch64__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace glass {

#if defined(__x86_64__)
const QuantKernels* avx512vnni_kernels();
const QuantKernels* avx2_kernels();
#endif
#if defined(__aarch64__)
const QuantKernels* neon_kernels();
const QuantKernels* neon_dotprod_kernels();
#endif

const QuantKernels* quant_kernels_named(const char* name) {
  if (std::strcmp(name, "scalar") == 0) return &scalar_kernels();
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (std::strcmp(name, "avx512vnni") == 0 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")) {
    return avx512vnni_kernels();
  }
  if (std::strcmp(name, "avx2") == 0 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    return avx2_kernels();
  }
#endif
#if defined(__aarch64__)
  if (std::strcmp(name, "neon") == 0) return neon_kernels();
  if (std::strcmp(name, "neon-dotprod") == 0 && (getauxval(AT_HWCAP) & HWCAP_ASIMDDP)) return neon_dotprod_kernels();
#endif
  return nullptr;
}

namespace {
const QuantKernels* forced_for_testing = nullptr;
}

void set_quant_kernels_for_testing(const QuantKernels* kernels) { forced_for_testing = kernels; }

const QuantKernels& quant_kernels() {
  if (forced_for_testing != nullptr) return *forced_for_testing;
  static const QuantKernels* chosen = [] {
    const char* forced = std::getenv("GLASS_QUANT_KERNELS");
    if (forced != nullptr && *forced != '\0') {
      if (const QuantKernels* kernels = quant_kernels_named(forced)) return kernels;
      std::fprintf(stderr, "glass: GLASS_QUANT_KERNELS=%s is not available on this CPU; using the best one\n", forced);
    }
    for (const char* name : {"avx512vnni", "avx2", "neon-dotprod", "neon"}) {
      if (const QuantKernels* kernels = quant_kernels_named(name)) return kernels;
    }
    return &scalar_kernels();
  }();
  return *chosen;
}

}  // namespace glass

// For runners that report which kernels run (Python reads it with ctypes).
extern "C" __attribute__((visibility("default"))) const char* glass_quant_kernels_name() {
  return glass::quant_kernels().name;
}
