// arm64 NEON versions of the quantised FFN primitives (quant_ffn.h): what phones run.
// Codes become signed int8 (u - Z) so no zero-point correction is needed. Without the dotprod
// extension the products go through vmull/vmlal_s8 into int16 (at most 2 * 128 * 127 a lane) and
// vpadal into int32; quant_kernels_neon_dotprod.cpp compiles this file again with
// GLASS_NEON_DOTPROD, where sdot (vdotq_s32) does it in one instruction. quant_kernels() picks the
// dotprod build when the CPU reports it (HWCAP_ASIMDDP).
#if defined(__aarch64__)
#include <arm_neon.h>

#include "quant_ffn.h"

#ifdef GLASS_NEON_DOTPROD
#define GLASS_NEON_NAME "neon-dotprod"
#define GLASS_NEON_TABLE neon_dotprod_kernels
#else
#define GLASS_NEON_NAME "neon"
#define GLASS_NEON_TABLE neon_kernels
#endif

namespace glass {
namespace {

// acc += sum over 4-byte groups of a[i] * b[i], one int32 lane per group.
inline int32x4_t dot_s8(int32x4_t acc, int8x16_t a, int8x16_t b) {
#ifdef GLASS_NEON_DOTPROD
  return vdotq_s32(acc, a, b);
#else
  int16x8_t pairs = vmull_s8(vget_low_s8(a), vget_low_s8(b));
  pairs = vmlal_s8(pairs, vget_high_s8(a), vget_high_s8(b));
  return vpadalq_s16(acc, pairs);
#endif
}

// The codes of one 4-bit sub-block as int8 (u - 8): low nibbles (even elements) and high (odd).
inline void unpack4(const uint8_t* codes, int8x16_t* lo, int8x16_t* hi) {
  const uint8x16_t bytes = vld1q_u8(codes);
  const uint8x16_t eight = vdupq_n_u8(8);
  *lo = vreinterpretq_s8_u8(vsubq_u8(vandq_u8(bytes, vdupq_n_u8(0x0F)), eight));
  *hi = vreinterpretq_s8_u8(vsubq_u8(vshrq_n_u8(bytes, 4), eight));
}

inline int8x16_t signed8(const uint8_t* codes) { return vreinterpretq_s8_u8(veorq_u8(vld1q_u8(codes), vdupq_n_u8(0x80))); }

float dot(const uint8_t* row, const float* scales, const PreparedX& x, int bits, int64_t subs_per_block) {
  float32x4_t acc = vdupq_n_f32(0.0f);
  for (int64_t s = 0; s < x.n_sub; ++s) {
    int32x4_t lanes = vdupq_n_s32(0);
    if (bits == 4) {
      int8x16_t lo, hi;
      unpack4(row + s * 16, &lo, &hi);
      lanes = dot_s8(lanes, lo, vld1q_s8(x.even.data() + s * 16));
      lanes = dot_s8(lanes, hi, vld1q_s8(x.odd.data() + s * 16));
    } else {
      lanes = dot_s8(lanes, signed8(row + s * 32), vld1q_s8(x.natural.data() + s * 32));
      lanes = dot_s8(lanes, signed8(row + s * 32 + 16), vld1q_s8(x.natural.data() + s * 32 + 16));
    }
    acc = vfmaq_n_f32(acc, vcvtq_f32_s32(lanes), scales[s / subs_per_block] * x.sub_scale[s]);
  }
  return vaddvq_f32(acc);
}

void dot2(const uint8_t* row_a, const float* scales_a, const uint8_t* row_b, const float* scales_b, const PreparedX& x,
          int bits, int64_t block, float* a, float* b) {
  const int64_t subs_per_block = block / kSubBlock;
  *a = dot(row_a, scales_a, x, bits, subs_per_block);
  *b = dot(row_b, scales_b, x, bits, subs_per_block);
}

// acc[0, 16) += c * u for 16 raw codes.
inline void fma16(uint8x16_t u, float32x4_t c, float* acc) {
  const uint16x8_t low = vmovl_u8(vget_low_u8(u)), high = vmovl_u8(vget_high_u8(u));
  const uint32x4_t parts[4] = {vmovl_u16(vget_low_u16(low)), vmovl_u16(vget_high_u16(low)),
                               vmovl_u16(vget_low_u16(high)), vmovl_u16(vget_high_u16(high))};
  for (int p = 0; p < 4; ++p) vst1q_f32(acc + 4 * p, vfmaq_f32(vld1q_f32(acc + 4 * p), vcvtq_f32_u32(parts[p]), c));
}

// One row's sub-block s: raw codes in code order (4-bit: low nibbles, then high nibbles).
inline void axpy_sub(const uint8_t* codes, int bits, float32x4_t c, float* acc) {
  if (bits == 4) {
    const uint8x16_t bytes = vld1q_u8(codes);
    fma16(vandq_u8(bytes, vdupq_n_u8(0x0F)), c, acc);
    fma16(vshrq_n_u8(bytes, 4), c, acc + 16);
  } else {
    fma16(vld1q_u8(codes), c, acc);
    fma16(vld1q_u8(codes + 16), c, acc + 16);
  }
}

void axpy2(const uint8_t* row_a, const float* scales_a, float coef_a, const uint8_t* row_b, const float* scales_b,
           float coef_b, float* acc, float* coef_sums, int64_t cols, int bits, int64_t block) {
  const int64_t bytes_per_sub = kSubBlock * bits / 8;
  for_each_block(scales_a, coef_a, row_b != nullptr ? scales_b : nullptr, coef_b, coef_sums, cols, block,
                 [&](int64_t s, float ca, float cb) {
    axpy_sub(row_a + s * bytes_per_sub, bits, vdupq_n_f32(ca), acc + s * kSubBlock);
    if (row_b != nullptr) axpy_sub(row_b + s * bytes_per_sub, bits, vdupq_n_f32(cb), acc + s * kSubBlock);
  });
}

void dot(const uint8_t* const* rows, const float* const* scales, int n_rows, const PreparedX& x, int bits,
         int64_t block, float* out) {
  for (int r = 0; r < n_rows; r += 2) dot2(rows[r], scales[r], rows[r + 1], scales[r + 1], x, bits, block, out + r, out + r + 1);
}

}  // namespace

const QuantKernels* GLASS_NEON_TABLE() {
  static const QuantKernels table{GLASS_NEON_NAME, dot, axpy2};
  return &table;
}

}  // namespace glass
#endif
