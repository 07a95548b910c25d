// The float micro-kernel of the quantised dense prefill's down projection (quant_ffn.h,
// ffn_down_quant): y[t, c] += sum_r z[t, r] * rows[r, c] over a chunk of dequantised rows.
//
// Written once with GCC vector types and instantiated by each SIMD variant's file, so it compiles to
// that file's instruction set (AVX-512: 16 lanes, AVX2: 8, NEON: 4). A tile of TT tokens x NV
// vectors of columns stays in registers over the whole chunk of rows: every row load serves TT
// tokens and every broadcast NV vectors, so the loop is bound by multiply-adds, not by loads.
#pragma once

#include <cstdint>
#include <cstring>

namespace glass {

template <int LANES>
struct FloatVector {
  typedef float type __attribute__((vector_size(LANES * sizeof(float))));
};

template <typename V>
inline V load_vector(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V>
inline void store_vector(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// One tile: tokens [0, TT) of z and y (already offset), NV vectors of columns from `col`.
template <int LANES, int TT, int NV>
inline void madd_tile(const float* z, int64_t z_stride, const float* rows, int64_t n_rows, int64_t width, int64_t col,
                      float* y, int64_t y_stride) {
  using V = typename FloatVector<LANES>::type;
  V acc[TT][NV];
#pragma GCC unroll 4
  for (int t = 0; t < TT; ++t) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[t][v] = load_vector<V>(y + t * y_stride + col + v * LANES);
  }
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* row = rows + r * width + col;
    V w[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) w[v] = load_vector<V>(row + v * LANES);
#pragma GCC unroll 4
    for (int t = 0; t < TT; ++t) {
      const float coef = z[t * z_stride + r];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[t][v] += coef * w[v];
    }
  }
#pragma GCC unroll 4
  for (int t = 0; t < TT; ++t) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) store_vector(y + t * y_stride + col + v * LANES, acc[t][v]);
  }
}

// One tile of TOKENS tokens over columns [0, width): NV vectors at a time, then
// single vectors for the rest (width is a multiple of 32, hence of LANES).
template <int LANES, int NV, int TOKENS>
inline void madd_token_tile(const float* z, int64_t z_stride, const float* rows, int64_t n_rows, int64_t width,
                            float* y, int64_t y_stride) {
  int64_t col = 0;
  for (; col + NV * LANES <= width; col += NV * LANES) {
    madd_tile<LANES, TOKENS, NV>(z, z_stride, rows, n_rows, width, col, y, y_stride);
  }
  for (; col < width; col += LANES) madd_tile<LANES, TOKENS, 1>(z, z_stride, rows, n_rows, width, col, y, y_stride);
}

template <int LANES, int TT, int NV>
void madd_rows_tiled(const float* z, int64_t z_stride, int64_t n_tokens, const float* rows, int64_t n_rows,
                     int64_t width, float* y, int64_t y_stride) {
  static_assert(TT == 4, "the token tail below is written for tiles of 4 tokens");
  int64_t t = 0;
  for (; t + TT <= n_tokens; t += TT) {
    madd_token_tile<LANES, NV, TT>(z + t * z_stride, z_stride, rows, n_rows, width, y + t * y_stride, y_stride);
  }
  const float* zt = z + t * z_stride;
  float* yt = y + t * y_stride;
  switch (n_tokens - t) {
    case 3: madd_token_tile<LANES, NV, 3>(zt, z_stride, rows, n_rows, width, yt, y_stride); break;
    case 2: madd_token_tile<LANES, NV, 2>(zt, z_stride, rows, n_rows, width, yt, y_stride); break;
    case 1: madd_token_tile<LANES, NV, 1>(zt, z_stride, rows, n_rows, width, yt, y_stride); break;
    default: break;
  }
}

}  // namespace glass
