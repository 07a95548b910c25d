// AVX2 + FMA versions of the quantised FFN primitives (quant_ffn.h, quant_decode.h), for x86-64 CPUs
// without AVX-512 VNNI. Built with -mavx2 -mfma for this file only; quant_kernels() picks it at run time.
// 4-bit: vpmaddubsw (unsigned codes x int8 activations; a pair sums to at most 2 * 15 * 127, no
// saturation) and the zero point off per lane. 8-bit: the codes made signed (u ^ 0x80 = u - 128) and
// the sign trick (|w| x sign(q, w): |-128| is 128 unsigned, and q never is -128), every pair below
// 2 * 128 * 127. Row primitives: two 32-value sub-blocks (4-bit) or one (8-bit) a 256-bit step. Decode
// tiles: a 64-byte group of 16 lanes is two registers of 8 lanes, each met by a broadcast word.
#if defined(__x86_64__)
#include <immintrin.h>

#include <cstring>

#include "quant_decode.h"

namespace glass {
namespace {

inline __m256i sum_pairs_to_lanes(__m256i pairs16) { return _mm256_madd_epi16(pairs16, _mm256_set1_epi16(1)); }

// The weight scale of each of the 8 lanes of a 4-bit step over sub-blocks s, s + 1 (`here` of them).
inline __m256 lane_weight_scales4(const float* scales, int64_t s, int64_t here, int64_t subs_per_block) {
  const int64_t first_block = s / subs_per_block;
  const int64_t offset = s % subs_per_block;
  const int64_t spanned = (offset + here - 1) / subs_per_block + 1;  // 1 or 2
  const __m256i load_mask = _mm256_setr_epi32(-1, spanned > 1 ? -1 : 0, 0, 0, 0, 0, 0, 0);
  const __m256 loaded = _mm256_maskload_ps(scales + first_block, load_mask);
  const int32_t second = static_cast<int32_t>((offset + 1) / subs_per_block);
  const __m256i index = _mm256_setr_epi32(0, 0, 0, 0, second, second, second, second);
  return _mm256_permutevar8x32_ps(loaded, index);
}

float dot4(const uint8_t* row, const float* scales, const PreparedX& x, int64_t subs_per_block, const __m256* x_scales) {
  const __m256i low_mask = _mm256_set1_epi8(0x0F);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t s = 0, step = 0; s < x.n_sub; s += 2, ++step) {
    const int64_t here = std::min<int64_t>(2, x.n_sub - s);
    __m256i codes;
    if (here == 2) {
      codes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + s * 16));
    } else {  // the last odd sub-block: zero codes meet the zero padding of the prepared activations
      codes = _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + s * 16)));
    }
    const __m256i lo = _mm256_and_si256(codes, low_mask);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(codes, 4), low_mask);
    const __m256i even = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.even.data() + s * 16));
    const __m256i odd = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.odd.data() + s * 16));
    const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, even), _mm256_maddubs_epi16(hi, odd));
    __m256i lanes = _mm256_sub_epi32(sum_pairs_to_lanes(pairs),
                                     _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.lane_zero.data() + s * 4)));
    if (here == 1) lanes = _mm256_blend_epi32(lanes, _mm256_setzero_si256(), 0xF0);
    const __m256 scale = _mm256_mul_ps(lane_weight_scales4(scales, s, here, subs_per_block), x_scales[step]);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(lanes), scale, acc);
  }
  const __m128 sum4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  const __m128 sum2 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
  return _mm_cvtss_f32(_mm_add_ss(sum2, _mm_shuffle_ps(sum2, sum2, 1)));
}

float dot8(const uint8_t* row, const float* scales, const PreparedX& x, int64_t subs_per_block) {
  const __m256i offset = _mm256_set1_epi8(static_cast<char>(0x80));
  __m256 acc = _mm256_setzero_ps();
  for (int64_t s = 0; s < x.n_sub; ++s) {
    const __m256i w = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + s * 32)), offset);
    const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x.natural.data() + s * 32));
    const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(q, w));
    const __m256 scale = _mm256_set1_ps(scales[s / subs_per_block] * x.sub_scale[s]);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sum_pairs_to_lanes(pairs)), scale, acc);
  }
  const __m128 sum4 = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  const __m128 sum2 = _mm_add_ps(sum4, _mm_movehl_ps(sum4, sum4));
  return _mm_cvtss_f32(_mm_add_ss(sum2, _mm_shuffle_ps(sum2, sum2, 1)));
}

void dot2(const uint8_t* row_a, const float* scales_a, const uint8_t* row_b, const float* scales_b, const PreparedX& x,
          int bits, int64_t block, float* a, float* b) {
  const int64_t subs_per_block = block / kSubBlock;
  if (bits == 8) {
    *a = dot8(row_a, scales_a, x, subs_per_block);
    *b = dot8(row_b, scales_b, x, subs_per_block);
    return;
  }
  // The activation scales of each step's 8 lanes, shared by both rows.
  const int64_t steps = (x.n_sub + 1) / 2;
  constexpr int64_t kMaxSteps = 64;  // hidden sizes up to 4096
  __m256 x_scales_stack[kMaxSteps];
  std::vector<float> x_scales_heap;
  __m256* x_scales = x_scales_stack;
  if (steps > kMaxSteps) {
    x_scales_heap.resize(static_cast<size_t>(steps * 8 + 8));
    x_scales = reinterpret_cast<__m256*>((reinterpret_cast<uintptr_t>(x_scales_heap.data()) + 31) & ~uintptr_t{31});
  }
  for (int64_t step = 0; step < steps; ++step) {
    const float s0 = x.sub_scale[2 * step];
    const float s1 = 2 * step + 1 < x.n_sub ? x.sub_scale[2 * step + 1] : 0.0f;
    x_scales[step] = _mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1);
  }
  *a = dot4(row_a, scales_a, x, subs_per_block, x_scales);
  *b = dot4(row_b, scales_b, x, subs_per_block, x_scales);
}

// The 32 raw codes of one sub-block as floats, in code order (four registers of 8).
inline void widen_codes(const uint8_t* codes, int bits, __m256* out) {
  __m128i first, second;
  if (bits == 4) {
    const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
    const __m128i mask = _mm_set1_epi8(0x0F);
    first = _mm_and_si128(bytes, mask);
    second = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
  } else {
    first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes));
    second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + 16));
  }
  out[0] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(first));
  out[1] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(first, 8)));
  out[2] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(second));
  out[3] = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(second, 8)));
}

void axpy2(const uint8_t* row_a, const float* scales_a, float coef_a, const uint8_t* row_b, const float* scales_b,
           float coef_b, float* acc, float* coef_sums, int64_t cols, int bits, int64_t block) {
  const int64_t bytes_per_sub = kSubBlock * bits / 8;
  for_each_block(scales_a, coef_a, row_b != nullptr ? scales_b : nullptr, coef_b, coef_sums, cols, block,
                 [&](int64_t s, float ca, float cb) {
    float* out = acc + s * kSubBlock;
    __m256 a[4], b[4];
    widen_codes(row_a + s * bytes_per_sub, bits, a);
    if (row_b != nullptr) widen_codes(row_b + s * bytes_per_sub, bits, b);
    for (int p = 0; p < 4; ++p) {
      __m256 sum = _mm256_fmadd_ps(a[p], _mm256_set1_ps(ca), _mm256_loadu_ps(out + 8 * p));
      if (row_b != nullptr) sum = _mm256_fmadd_ps(b[p], _mm256_set1_ps(cb), sum);
      _mm256_storeu_ps(out + 8 * p, sum);
    }
  });
}

void dot(const uint8_t* const* rows, const float* const* scales, int n_rows, const PreparedX& x, int bits,
         int64_t block, float* out) {
  for (int r = 0; r < n_rows; r += 2) dot2(rows[r], scales[r], rows[r + 1], scales[r + 1], x, bits, block, out + r, out + r + 1);
}

// --- decode tiles (quant_decode.h) -----------------------------------------------------------

inline __m256i broadcast_word(const int8_t* p) {
  int32_t word;
  std::memcpy(&word, p, sizeof(word));
  return _mm256_set1_epi32(word);
}

// Per 32-bit lane: the sum of its 4 bytes' products. 4-bit: unsigned codes x the signed word;
// 8-bit: the codes made signed and the sign trick.
inline __m256i lane_dot4(__m256i codes, __m256i word) { return sum_pairs_to_lanes(_mm256_maddubs_epi16(codes, word)); }

inline __m256i lane_dot8(__m256i codes, __m256i word) {
  const __m256i w = _mm256_xor_si256(codes, _mm256_set1_epi8(static_cast<char>(0x80)));
  return sum_pairs_to_lanes(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(word, w)));
}

inline __m256i load256(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }

void gate_up_tiles(const DecodePack& pack, const PreparedX& x, int64_t t0, int64_t t1, float* gate, float* up) {
  const int64_t spb = pack.subs_per_block();
  const __m256i low = _mm256_set1_epi8(0x0F);
  for (int64_t t = t0; t < t1; ++t) {
    __m256 sums[2][2];  // [gate / up][lanes 0-7, 8-15]
    for (auto& half : sums) half[0] = half[1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < pack.blocks(); ++g) {
      __m256i acc[2][2];
      for (auto& half : acc) half[0] = half[1] = _mm256_setzero_si256();
      for (int64_t s = g * spb; s < (g + 1) * spb; ++s) {
        for (int half = 0; half < 2; ++half) {
          const uint8_t* tile = pack.gate_up_tile(t, half, s);
          prefetch_ahead(tile, kTileRows * pack.row_sub_bytes());
          for (int lanes = 0; lanes < 2; ++lanes) {
            if (pack.bits == 4) {
              for (int p = 0; p < 4; ++p) {
                const __m256i codes = load256(tile + 64 * p + 32 * lanes);
                const __m256i even = broadcast_word(x.even.data() + s * 16 + 4 * p);
                const __m256i odd = broadcast_word(x.odd.data() + s * 16 + 4 * p);
                acc[half][lanes] = _mm256_add_epi32(acc[half][lanes], lane_dot4(_mm256_and_si256(codes, low), even));
                acc[half][lanes] = _mm256_add_epi32(
                    acc[half][lanes], lane_dot4(_mm256_and_si256(_mm256_srli_epi16(codes, 4), low), odd));
              }
            } else {
              for (int p = 0; p < 8; ++p) {
                const __m256i word = broadcast_word(x.natural.data() + s * 32 + 4 * p);
                acc[half][lanes] = _mm256_add_epi32(acc[half][lanes], lane_dot8(load256(tile + 64 * p + 32 * lanes), word));
              }
            }
          }
        }
      }
      // signed 8-bit codes need no zero-point correction
      const __m256i zero = _mm256_set1_epi32(pack.bits == 4 ? x.block_zero[g] : 0);
      const __m256 x_scale = _mm256_set1_ps(x.sub_scale[g * spb]);
      for (int half = 0; half < 2; ++half) {
        for (int lanes = 0; lanes < 2; ++lanes) {
          const __m256 scale = _mm256_mul_ps(_mm256_loadu_ps(pack.gate_up_scales(t, half, g) + 8 * lanes), x_scale);
          sums[half][lanes] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(acc[half][lanes], zero)), scale,
                                              sums[half][lanes]);
        }
      }
    }
    for (int lanes = 0; lanes < 2; ++lanes) {
      _mm256_storeu_ps(gate + (t - t0) * kTileRows + 8 * lanes, sums[0][lanes]);
      _mm256_storeu_ps(up + (t - t0) * kTileRows + 8 * lanes, sums[1][lanes]);
    }
  }
}

void down_group(const DecodePack& pack, const GroupCoefs& coefs, int64_t J, float* acc) {
  const __m256i low = _mm256_set1_epi8(0x0F);
  for (int64_t w = 0; w < pack.windows(); ++w) {
    const int64_t g = w * kSubBlock / pack.block;
    const uint8_t* tile = pack.down_tile(w, J);
    const int8_t* q = coefs.q.data() + g * kDownGroup;
    prefetch_ahead(tile, kDownGroup * pack.row_sub_bytes());
    __m256i ints[2][2];  // 4-bit: [even / odd outputs][lanes]; 8-bit: [half][lanes]
    for (auto& set : ints) set[0] = set[1] = _mm256_setzero_si256();
    for (int p = 0; p < 8; ++p) {
      const __m256i word = broadcast_word(q + 4 * p);
      for (int lanes = 0; lanes < 2; ++lanes) {
        if (pack.bits == 4) {
          const __m256i codes = load256(tile + 64 * p + 32 * lanes);
          ints[0][lanes] = _mm256_add_epi32(ints[0][lanes], lane_dot4(_mm256_and_si256(codes, low), word));
          ints[1][lanes] = _mm256_add_epi32(ints[1][lanes],
                                            lane_dot4(_mm256_and_si256(_mm256_srli_epi16(codes, 4), low), word));
        } else {
          for (int half = 0; half < 2; ++half) {
            ints[half][lanes] = _mm256_add_epi32(ints[half][lanes],
                                                 lane_dot8(load256(tile + 128 * p + 64 * half + 32 * lanes), word));
          }
        }
      }
    }
    const __m256i zero = _mm256_set1_epi32(pack.bits == 4 ? coefs.zero[g] : 0);  // signed 8-bit codes: none
    const __m256 scale = _mm256_set1_ps(coefs.scale[g]);
    __m256 out[2][2];
    for (int set = 0; set < 2; ++set) {
      for (int lanes = 0; lanes < 2; ++lanes) {
        out[set][lanes] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(ints[set][lanes], zero)), scale);
      }
    }
    float* dst = acc + w * kSubBlock;
    for (int lanes = 0; lanes < 2; ++lanes) {
      __m256 first, second;
      float* at_first = dst + 16 * lanes;
      float* at_second = dst + 16 * lanes + 8;
      if (pack.bits == 4) {  // interleave even and odd outputs: lane l of set 0 / 1 is output 2 l / 2 l + 1
        const __m256 a = _mm256_unpacklo_ps(out[0][lanes], out[1][lanes]);
        const __m256 b = _mm256_unpackhi_ps(out[0][lanes], out[1][lanes]);
        first = _mm256_permute2f128_ps(a, b, 0x20);
        second = _mm256_permute2f128_ps(a, b, 0x31);
      } else {
        first = out[0][lanes];
        second = out[1][lanes];
        at_first = dst + 8 * lanes;
        at_second = dst + 16 + 8 * lanes;
      }
      _mm256_storeu_ps(at_first, _mm256_add_ps(_mm256_loadu_ps(at_first), first));
      _mm256_storeu_ps(at_second, _mm256_add_ps(_mm256_loadu_ps(at_second), second));
    }
  }
}

}  // namespace

const QuantKernels* avx2_kernels() {
  static const QuantKernels table{"avx2", dot, axpy2, gate_up_tiles, down_group};
  return &table;
}

}  // namespace glass
#endif
