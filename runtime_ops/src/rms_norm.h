// transformers' RMSNorm: glass::rms_norm, and the norm folded into glass::norm_gather_ffn_q, so an
// ExecuTorch program runs no separate norm operators (it ran each as a portable mean between two XNNPACK
// delegate calls: about 6 us a layer on 2 x86 cores). glass_ops/torch_ops.py rms_norm is the definition.
#pragma once

#include <cmath>
#include <cstdint>

namespace glass {

// out[t] = x[t] * (1 / sqrt(mean(x[t]^2) + eps)) * weight, in float32 as transformers computes it; weight
// has any offset (Gemma's 1 + w) folded in. x, out [tokens, d].
inline void rms_norm(const float* x, int64_t tokens, int64_t d, const float* weight, float eps, float* out) {
  for (int64_t t = 0; t < tokens; ++t) {
    const float* xt = x + t * d;
    float* ot = out + t * d;
    float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < d; ++i) sum += xt[i] * xt[i];
    const float r = 1.0f / std::sqrt(sum / static_cast<float>(d) + eps);
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) ot[i] = xt[i] * r * weight[i];
  }
}

}  // namespace glass
