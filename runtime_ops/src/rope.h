// transformers' rotary embedding of one batch row, x cos + rotate_half(x) sin over the whole head
// (rotate_half(x) = [-x2, x1] for the halves x1, x2): one kernel call for a tensor's heads and tokens,
// where ExecuTorch would run about eight small XNNPACK operators (glass_ops/torch_ops.py
// rope_reference is the definition).
#pragma once

#include <cstdint>

namespace glass {

// x, out [heads, tokens, head_dim] (one batch row); cos, sin [tokens, head_dim]; head_dim even.
inline void rotate_half_rope(const float* x, int64_t heads, int64_t tokens, int64_t head_dim, const float* cos,
                             const float* sin, float* out) {
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t t = 0; t < tokens; ++t) {
      const float *xr = x + (h * tokens + t) * head_dim, *c = cos + t * head_dim, *s = sin + t * head_dim;
      float* o = out + (h * tokens + t) * head_dim;
#pragma omp simd
      for (int64_t i = 0; i < half; ++i) {
        o[i] = xr[i] * c[i] - xr[i + half] * s[i];
        o[i + half] = xr[i + half] * c[i + half] + xr[i] * s[i + half];
      }
    }
  }
}

}  // namespace glass
