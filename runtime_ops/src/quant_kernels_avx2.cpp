// AVX2 + FMA versions of the quantised FFN primitives (quant_ffn.h, quant_decode.h), for x86-64 CPUs
// without AVX-512 VNNI. Built with -mavx2 -mfma for this file only; quant_kernels() picks it at run time.
// 4-bit: vpmaddubsw (unsigned codes x int8 activations; a pair sums to at most 2 * 15 * 127, no
// saturation) and the zero point off per lane. 8-bit: the codes made signed (u ^ 0x80 = u - 128) and
// the sign trick (|w| x sign(q, w): |-128| is 128 unsigned, and q never is -128), every pair below
// 2 * 128 * 127. Tiles: a 64-byte group of 16 lanes is two registers of 8 lanes, each met by a
// broadcast word.
#if defined(__x86_64__)
#include <immintrin.h>

#include <cstring>

#include "activation_vector.h"
#include "dense_tile.h"
#include "quant_decode.h"

namespace glass {
namespace {

inline __m256i sum_pairs_to_lanes(__m256i pairs16) { return _mm256_madd_epi16(pairs16, _mm256_set1_epi16(1)); }

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

void gate_up_tiles_one(const GateUpTiles& pack, const PreparedX& x, int64_t t0, int64_t t1, float* gate, float* up) {
  const int64_t spb = pack.subs_per_block();
  const __m256i low = _mm256_set1_epi8(0x0F);
  for (int64_t t = t0; t < t1; ++t) {
    __m256 sums[2][2];  // [gate / up][lanes 0-7, 8-15]
    for (auto& half : sums) half[0] = half[1] = _mm256_setzero_ps();
    const uint8_t* block = pack.tile_start(t);
    for (int64_t g = 0; g < pack.blocks(); ++g, block += pack.block_bytes()) {
      __m256i acc[2][2];
      for (auto& half : acc) half[0] = half[1] = _mm256_setzero_si256();
      prefetch_ahead(block, pack.block_bytes());
      for (int64_t s = g * spb; s < (g + 1) * spb; ++s) {
        for (int half = 0; half < 2; ++half) {
          const uint8_t* tile = pack.block_codes(block, s - g * spb, half);
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
          const __m256 scale = _mm256_mul_ps(load_halves(pack.block_scales(block, half) + 8 * lanes), x_scale);
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

// Neuron group J's coefficients (GroupCoefs::compute): 32 neurons are four registers per block.
void group_coefs(const DecodePack& pack, int64_t J, const float* z, GroupCoefs& out) {
  const int64_t nb = pack.blocks();
  out.resize(nb);
  const int zp = zero_point(pack.bits);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  __m256 zs[4];
  for (int v = 0; v < 4; ++v) zs[v] = _mm256_loadu_ps(z + 8 * v);
  for (int64_t g = 0; g < nb; ++g) {
    const Half* s = pack.down_scales(J, g);
    __m256 c[4], amax = _mm256_setzero_ps();
    for (int v = 0; v < 4; ++v) {
      c[v] = _mm256_mul_ps(zs[v], load_halves(s + 8 * v));
      amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, c[v]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    const float block_max = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
    const __m256 inverse = _mm256_set1_ps(block_max != 0.0f ? 127.0f / block_max : 0.0f);
    __m256i q[4];  // the default rounding mode: half to even, as nearbyint
    for (int v = 0; v < 4; ++v) q[v] = _mm256_cvtps_epi32(_mm256_mul_ps(c[v], inverse));
    // int32 -> int8 (values within +-127): pack pairs of registers, then restore the lane order
    const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[0], q[1]), 0xD8);
    const __m256i words2 = _mm256_permute4x64_epi64(_mm256_packs_epi32(q[2], q[3]), 0xD8);
    const __m256i bytes = _mm256_permute4x64_epi64(_mm256_packs_epi16(words, words2), 0xD8);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.q.data() + g * kDownGroup), bytes);
    __m256i total = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(total), _mm256_extracti128_si256(total, 1));
    t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
    t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
    out.scale[g] = block_max / 127.0f;
    out.zero[g] = zp * _mm_cvtsi128_si32(t4);
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
  static const QuantKernels table{"avx2", gate_up_tiles_each_token<gate_up_tiles_one>,
                                  group_coefs, down_group,
                                  madd_rows_tiled<8, 4, 3>, activate_product_lanes<8>};
  return &table;
}

}  // namespace glass
#endif
