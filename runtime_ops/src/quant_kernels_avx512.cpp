// AVX-512 (F, BW, VL, DQ) + VNNI versions of the quantised FFN primitives (quant_ffn.h).
// Built with those instruction sets enabled for this file only; quant_kernels() picks it when the
// CPU has them. Four 32-value sub-blocks (4-bit) or two (8-bit) fill one 512-bit register; vpdpbusd
// multiplies the unsigned codes with the int8 activations and the zero point comes off per lane.
#if defined(__x86_64__)
#include <immintrin.h>

#include "quant_ffn.h"

namespace glass {
namespace {

// Which weight scale each 32-bit lane of one step needs: lane l covers sub-block s + l / lanes, whose
// block is (s + l / lanes) / subs_per_block (block sizes are powers of two). Shared by both rows.
struct LaneScaleIndex {
  __m512i index;       // into the scales loaded from the step's first block
  __mmask16 load_mask;  // the blocks the step spans
  int64_t first_block;
};

inline LaneScaleIndex lane_scale_index(int64_t s, int64_t here, int lanes, int64_t subs_per_block, int shift) {
  alignas(64) static const int32_t lane_sub4[16] = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3};
  alignas(64) static const int32_t lane_sub8[16] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
  const __m512i lane_sub = _mm512_load_si512(lanes == 4 ? lane_sub4 : lane_sub8);
  const int64_t offset = s % subs_per_block;
  LaneScaleIndex result;
  result.first_block = s / subs_per_block;
  result.index = _mm512_srli_epi32(_mm512_add_epi32(lane_sub, _mm512_set1_epi32(static_cast<int32_t>(offset))), shift);
  const int64_t spanned = (offset + here - 1) / subs_per_block + 1;
  result.load_mask = static_cast<__mmask16>((1u << spanned) - 1);
  return result;
}

inline __m512 lane_weight_scales(const float* scales, const LaneScaleIndex& at) {
  return _mm512_permutexvar_ps(at.index, _mm512_maskz_loadu_ps(at.load_mask, scales + at.first_block));
}

// N rows' dot products with one token, sharing every load of the prepared activations: per step,
// 64 bytes of each row (4 sub-blocks of 4-bit codes or 2 of 8-bit) meet the int8 activations in
// vpdpbusd; the zero point comes off per lane, then each lane is scaled by its blocks' scales.
template <int N, int BITS>
void dot_rows(const uint8_t* const* rows, const float* const* scales, const PreparedX& x, int64_t block, float* out) {
  constexpr int lanes = BITS == 4 ? 4 : 8;
  constexpr int64_t subs_per_step = 16 / lanes;
  constexpr int64_t bytes_per_sub = kSubBlock * BITS / 8;
  const int64_t subs_per_block = block / kSubBlock;
  const int shift = __builtin_ctzll(static_cast<unsigned long long>(subs_per_block));
  const __m512i low_mask = _mm512_set1_epi8(0x0F);
  __m512 acc[N];
  for (int r = 0; r < N; ++r) acc[r] = _mm512_setzero_ps();
  for (int64_t s = 0; s < x.n_sub; s += subs_per_step) {
    const int64_t here = std::min<int64_t>(subs_per_step, x.n_sub - s);
    const __mmask64 byte_mask = here == subs_per_step ? ~__mmask64{0} : ((__mmask64{1} << (here * bytes_per_sub)) - 1);
    const __mmask16 lane_mask = static_cast<__mmask16>((1u << (here * lanes)) - 1);
    const __m512 x_scale = _mm512_maskz_loadu_ps(lane_mask, x.lane_scale.data() + s * lanes);
    const __m512i zero_lanes = _mm512_maskz_loadu_epi32(lane_mask, x.lane_zero.data() + s * lanes);
    __m512i first, second;
    if constexpr (BITS == 4) {
      first = _mm512_maskz_loadu_epi8(byte_mask, x.even.data() + s * 16);
      second = _mm512_maskz_loadu_epi8(byte_mask, x.odd.data() + s * 16);
    } else {
      first = _mm512_maskz_loadu_epi8(byte_mask, x.natural.data() + s * 32);
      second = first;
    }
    const LaneScaleIndex at = lane_scale_index(s, here, lanes, subs_per_block, shift);
    for (int r = 0; r < N; ++r) {
      const __m512i codes = _mm512_maskz_loadu_epi8(byte_mask, rows[r] + s * bytes_per_sub);
      __m512i ints;
      if constexpr (BITS == 4) {
        ints = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(codes, low_mask), first);
        ints = _mm512_dpbusd_epi32(ints, _mm512_and_si512(_mm512_srli_epi16(codes, 4), low_mask), second);
      } else {
        ints = _mm512_dpbusd_epi32(_mm512_setzero_si512(), codes, first);
      }
      ints = _mm512_sub_epi32(ints, zero_lanes);
      const __m512 scale = _mm512_mul_ps(lane_weight_scales(scales[r], at), x_scale);
      acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints), scale, acc[r]);
    }
  }
  for (int r = 0; r < N; ++r) out[r] = _mm512_reduce_add_ps(acc[r]);
}

void dot(const uint8_t* const* rows, const float* const* scales, int n_rows, const PreparedX& x, int bits,
         int64_t block, float* out) {
  for (int r = 0; r < n_rows; r += 4) {
    const int here = std::min(4, n_rows - r);
    if (bits == 4) {
      here == 4 ? dot_rows<4, 4>(rows + r, scales + r, x, block, out + r)
                : dot_rows<2, 4>(rows + r, scales + r, x, block, out + r);
    } else {
      here == 4 ? dot_rows<4, 8>(rows + r, scales + r, x, block, out + r)
                : dot_rows<2, 8>(rows + r, scales + r, x, block, out + r);
    }
  }
}

// The 32 raw codes of one sub-block as floats, in code order (two registers of 16).
inline void widen_codes(const uint8_t* codes, int bits, __m512* first, __m512* second) {
  if (bits == 4) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
    const __m128i mask = _mm_set1_epi8(0x0F);
    *first = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(bytes, mask)));
    *second = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(bytes, 4), mask)));
  } else {
    *first = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes))));
    *second = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16))));
  }
}

void axpy2(const uint8_t* row_a, const float* scales_a, float coef_a, const uint8_t* row_b, const float* scales_b,
           float coef_b, float* acc, float* coef_sums, int64_t cols, int bits, int64_t block) {
  const int64_t bytes_per_sub = kSubBlock * bits / 8;
  for_each_block(scales_a, coef_a, row_b != nullptr ? scales_b : nullptr, coef_b, coef_sums, cols, block,
                 [&](int64_t s, float ca, float cb) {
    float* out = acc + s * kSubBlock;
    __m512 lo = _mm512_loadu_ps(out), hi = _mm512_loadu_ps(out + 16);
    __m512 first, second;
    widen_codes(row_a + s * bytes_per_sub, bits, &first, &second);
    lo = _mm512_fmadd_ps(first, _mm512_set1_ps(ca), lo);
    hi = _mm512_fmadd_ps(second, _mm512_set1_ps(ca), hi);
    if (row_b != nullptr) {
      widen_codes(row_b + s * bytes_per_sub, bits, &first, &second);
      lo = _mm512_fmadd_ps(first, _mm512_set1_ps(cb), lo);
      hi = _mm512_fmadd_ps(second, _mm512_set1_ps(cb), hi);
    }
    _mm512_storeu_ps(out, lo);
    _mm512_storeu_ps(out + 16, hi);
  });
}

}  // namespace

const QuantKernels* avx512vnni_kernels() {
  static const QuantKernels table{"avx512vnni", dot, axpy2};
  return &table;
}

}  // namespace glass
#endif
