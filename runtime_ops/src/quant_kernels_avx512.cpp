// AVX-512 (F, BW, VL, DQ) + VNNI versions of the quantised FFN primitives (quant_ffn.h,
// quant_decode.h). Built with those instruction sets enabled for this file only; quant_kernels() picks
// it when the CPU has them. vpdpbusd multiplies the unsigned codes with int8 activations (or int8 down
// coefficients) and the zero point comes off per lane. Row primitives: four 32-value sub-blocks (4-bit)
// or two (8-bit) fill one register. Decode tiles: one register is 16 rows (or outputs) x 4 bytes, met by
// one broadcast activation word.
#if defined(__x86_64__)
#include <immintrin.h>

#include <cstring>

#include "quant_decode.h"

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

// --- decode tiles (quant_decode.h) -----------------------------------------------------------

inline __m512i broadcast_word(const int8_t* p) {
  int32_t word;
  std::memcpy(&word, p, sizeof(word));
  return _mm512_set1_epi32(word);
}

void gate_up_tiles(const DecodePack& pack, const PreparedX& x, int64_t t0, int64_t t1, float* gate, float* up) {
  const int64_t spb = pack.subs_per_block();
  const __m512i low = _mm512_set1_epi8(0x0F);
  for (int64_t t = t0; t < t1; ++t) {
    __m512 sums[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t g = 0; g < pack.blocks(); ++g) {
      __m512i acc[2][2] = {{_mm512_setzero_si512(), _mm512_setzero_si512()},
                           {_mm512_setzero_si512(), _mm512_setzero_si512()}};  // [gate / up][two chains]
      for (int64_t s = g * spb; s < (g + 1) * spb; ++s) {
        const uint8_t* tiles[2] = {pack.gate_up_tile(t, 0, s), pack.gate_up_tile(t, 1, s)};
        for (const uint8_t* tile : tiles) prefetch_ahead(tile, kTileRows * pack.row_sub_bytes());
        if (pack.bits == 4) {
          for (int p = 0; p < 4; ++p) {
            const __m512i even = broadcast_word(x.even.data() + s * 16 + 4 * p);
            const __m512i odd = broadcast_word(x.odd.data() + s * 16 + 4 * p);
            for (int half = 0; half < 2; ++half) {
              const __m512i codes = _mm512_loadu_si512(tiles[half] + 64 * p);
              acc[half][0] = _mm512_dpbusd_epi32(acc[half][0], _mm512_and_si512(codes, low), even);
              acc[half][1] = _mm512_dpbusd_epi32(acc[half][1], _mm512_and_si512(_mm512_srli_epi16(codes, 4), low), odd);
            }
          }
        } else {
          for (int p = 0; p < 8; ++p) {
            const __m512i word = broadcast_word(x.natural.data() + s * 32 + 4 * p);
            for (int half = 0; half < 2; ++half) {
              acc[half][p & 1] = _mm512_dpbusd_epi32(acc[half][p & 1], _mm512_loadu_si512(tiles[half] + 64 * p), word);
            }
          }
        }
      }
      const __m512i zero = _mm512_set1_epi32(x.block_zero[g]);
      const __m512 x_scale = _mm512_set1_ps(x.sub_scale[g * spb]);
      for (int half = 0; half < 2; ++half) {
        const __m512i ints = _mm512_sub_epi32(_mm512_add_epi32(acc[half][0], acc[half][1]), zero);
        const __m512 scale = _mm512_mul_ps(_mm512_loadu_ps(pack.gate_up_scales(t, half, g)), x_scale);
        sums[half] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints), scale, sums[half]);
      }
    }
    _mm512_storeu_ps(gate + (t - t0) * kTileRows, sums[0]);
    _mm512_storeu_ps(up + (t - t0) * kTileRows, sums[1]);
  }
}

void down_group(const DecodePack& pack, const GroupCoefs& coefs, int64_t J, float* acc) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  // 4-bit: the low nibbles' lanes are the even outputs, the high nibbles' the odd ones
  const __m512i first_half = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i second_half = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  for (int64_t w = 0; w < pack.windows(); ++w) {
    const int64_t g = w * kSubBlock / pack.block;
    const uint8_t* tile = pack.down_tile(w, J);
    const int8_t* q = coefs.q.data() + g * kDownGroup;
    prefetch_ahead(tile, kDownGroup * pack.row_sub_bytes());
    __m512i ints[2][2] = {{_mm512_setzero_si512(), _mm512_setzero_si512()},
                          {_mm512_setzero_si512(), _mm512_setzero_si512()}};  // [lane set][two chains]
    for (int p = 0; p < 8; ++p) {
      const __m512i word = broadcast_word(q + 4 * p);
      if (pack.bits == 4) {
        const __m512i codes = _mm512_loadu_si512(tile + 64 * p);
        ints[0][p & 1] = _mm512_dpbusd_epi32(ints[0][p & 1], _mm512_and_si512(codes, low), word);
        ints[1][p & 1] = _mm512_dpbusd_epi32(ints[1][p & 1], _mm512_and_si512(_mm512_srli_epi16(codes, 4), low), word);
      } else {
        ints[0][p & 1] = _mm512_dpbusd_epi32(ints[0][p & 1], _mm512_loadu_si512(tile + 128 * p), word);
        ints[1][p & 1] = _mm512_dpbusd_epi32(ints[1][p & 1], _mm512_loadu_si512(tile + 128 * p + 64), word);
      }
    }
    const __m512i zero = _mm512_set1_epi32(coefs.zero[g]);
    const __m512 scale = _mm512_set1_ps(coefs.scale[g]);
    __m512 out[2];
    for (int set = 0; set < 2; ++set) {
      out[set] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(ints[set][0], ints[set][1]), zero)),
                               scale);
    }
    float* dst = acc + w * kSubBlock;
    if (pack.bits == 4) {
      const __m512 first = _mm512_permutex2var_ps(out[0], first_half, out[1]);
      out[1] = _mm512_permutex2var_ps(out[0], second_half, out[1]);
      out[0] = first;
    }
    _mm512_storeu_ps(dst, _mm512_add_ps(_mm512_loadu_ps(dst), out[0]));
    _mm512_storeu_ps(dst + 16, _mm512_add_ps(_mm512_loadu_ps(dst + 16), out[1]));
  }
}

}  // namespace

const QuantKernels* avx512vnni_kernels() {
  static const QuantKernels table{"avx512vnni", dot, axpy2, gate_up_tiles, down_group};
  return &table;
}

}  // namespace glass
#endif
