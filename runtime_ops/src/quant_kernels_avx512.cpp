// AVX-512 (F, BW, VL, DQ) + VNNI versions of the quantised FFN primitives (quant_ffn.h,
// quant_decode.h). Built with those instruction sets enabled for this file only; quant_kernels() picks
// it when the CPU has them. vpdpbusd multiplies the unsigned codes with int8 activations (or int8 down
// coefficients) and the zero point comes off per lane. Tiles: one register is 16 rows (or outputs) x 4
// bytes, met by one broadcast activation word.
#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "activation_vector.h"
#include "dense_tile.h"
#include "quant_decode.h"

namespace glass {
namespace {

// --- decode tiles (quant_decode.h) -----------------------------------------------------------

// 16 float16 scales as floats (one zmm; quant_ffn.h's load_halves fills a ymm).
inline __m512 load_halves16(const Half* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }

inline __m512i broadcast_word(const int8_t* p) {
  int32_t word;
  std::memcpy(&word, p, sizeof(word));
  return _mm512_set1_epi32(word);
}

// 4-bit codes: the low nibbles are masked, the high ones kept in place (16 u, no shift); vpdpbusd
// does not saturate, so their dot products are exactly 16 times the codes' and shift back per block.
// NT tokens at a time: each code register (and its masking, and the block's scales) serves NT tokens.
template <int NT>
void gate_up_tile_tokens(const GateUpTiles& pack, const PreparedX* x, int64_t t, float* gate, float* up,
                         int64_t stride) {
  const int64_t spb = pack.subs_per_block();
  const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8(static_cast<char>(0xF0));
  __m512 sums[NT][2];
  for (auto& token : sums) token[0] = token[1] = _mm512_setzero_ps();
  const uint8_t* block = pack.tile_start(t);
  for (int64_t g = 0; g < pack.blocks(); ++g, block += pack.block_bytes()) {
    __m512i acc[NT][2][2];  // [token][gate / up][4-bit: low, high nibbles; 8-bit: two chains]
    for (auto& token : acc) {
      for (auto& half : token) half[0] = half[1] = _mm512_setzero_si512();
    }
    prefetch_ahead(block, pack.block_bytes());
    for (int64_t s = g * spb; s < (g + 1) * spb; ++s) {
      const uint8_t* tiles[2] = {pack.block_codes(block, s - g * spb, 0), pack.block_codes(block, s - g * spb, 1)};
      if (pack.bits == 4) {
        for (int p = 0; p < 4; ++p) {
          __m512i codes[2][2];  // [half][low, high]
          for (int half = 0; half < 2; ++half) {
            const __m512i bytes = _mm512_loadu_si512(tiles[half] + 64 * p);
            codes[half][0] = _mm512_and_si512(bytes, low);
            codes[half][1] = _mm512_and_si512(bytes, high);
          }
          for (int n = 0; n < NT; ++n) {
            const __m512i even = broadcast_word(x[n].even.data() + s * 16 + 4 * p);
            const __m512i odd = broadcast_word(x[n].odd.data() + s * 16 + 4 * p);
            for (int half = 0; half < 2; ++half) {
              acc[n][half][0] = _mm512_dpbusd_epi32(acc[n][half][0], codes[half][0], even);
              acc[n][half][1] = _mm512_dpbusd_epi32(acc[n][half][1], codes[half][1], odd);
            }
          }
        }
      } else {
        for (int p = 0; p < 8; ++p) {
          const __m512i codes[2] = {_mm512_loadu_si512(tiles[0] + 64 * p), _mm512_loadu_si512(tiles[1] + 64 * p)};
          for (int n = 0; n < NT; ++n) {
            const __m512i word = broadcast_word(x[n].natural.data() + s * 32 + 4 * p);
            for (int half = 0; half < 2; ++half) {
              acc[n][half][p & 1] = _mm512_dpbusd_epi32(acc[n][half][p & 1], codes[half], word);
            }
          }
        }
      }
    }
    const __m512 scales[2] = {load_halves16(pack.block_scales(block, 0)), load_halves16(pack.block_scales(block, 1))};
    for (int n = 0; n < NT; ++n) {
      const __m512i zero = _mm512_set1_epi32(x[n].block_zero[g]);
      const __m512 x_scale = _mm512_set1_ps(x[n].sub_scale[g * spb]);
      for (int half = 0; half < 2; ++half) {
        const __m512i second = pack.bits == 4 ? _mm512_srai_epi32(acc[n][half][1], 4) : acc[n][half][1];
        const __m512i ints = _mm512_sub_epi32(_mm512_add_epi32(acc[n][half][0], second), zero);
        sums[n][half] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(ints), _mm512_mul_ps(scales[half], x_scale), sums[n][half]);
      }
    }
  }
  for (int n = 0; n < NT; ++n) {
    _mm512_storeu_ps(gate + n * stride, sums[n][0]);
    _mm512_storeu_ps(up + n * stride, sums[n][1]);
  }
}

// Up to 4 tokens per pass over a tile.
void gate_up_tiles(const GateUpTiles& pack, const PreparedX* x, int64_t n_tokens, int64_t t0, int64_t t1, float* gate,
                   float* up) {
  const int64_t stride = (t1 - t0) * kTileRows;
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t row = (t - t0) * kTileRows;
    for (int64_t n = 0; n < n_tokens; n += 4) {
      const PreparedX* xs = x + n;
      float* g = gate + n * stride + row;
      float* u = up + n * stride + row;
      switch (std::min<int64_t>(4, n_tokens - n)) {
        case 4: gate_up_tile_tokens<4>(pack, xs, t, g, u, stride); break;
        case 3: gate_up_tile_tokens<3>(pack, xs, t, g, u, stride); break;
        case 2: gate_up_tile_tokens<2>(pack, xs, t, g, u, stride); break;
        default: gate_up_tile_tokens<1>(pack, xs, t, g, u, stride); break;
      }
    }
  }
}

// Neuron group J's coefficients (GroupCoefs::compute): 32 neurons are two registers per block.
void group_coefs(const DecodePack& pack, int64_t J, const float* z, GroupCoefs& out) {
  const int64_t nb = pack.blocks();
  out.resize(nb);
  const int zp = zero_point(pack.bits);
  const __m512 z0 = _mm512_loadu_ps(z), z1 = _mm512_loadu_ps(z + 16);
  for (int64_t g = 0; g < nb; ++g) {
    const Half* s = pack.down_scales(J, g);
    const __m512 c0 = _mm512_mul_ps(z0, load_halves16(s)), c1 = _mm512_mul_ps(z1, load_halves16(s + 16));
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(c0), _mm512_abs_ps(c1)));
    const __m512 inverse = _mm512_set1_ps(amax != 0.0f ? 127.0f / amax : 0.0f);
    // the default rounding mode: half to even, as nearbyint
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(c0, inverse));
    const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(c1, inverse));
    int8_t* q = out.q.data() + g * kDownGroup;
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q), _mm512_cvtsepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), _mm512_cvtsepi32_epi8(q1));
    out.scale[g] = amax / 127.0f;
    out.zero[g] = zp * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
  }
}

// 4-bit: the high nibbles stay in place, as in gate_up_tiles.
void down_group(const DecodePack& pack, const GroupCoefs& coefs, int64_t J, float* acc) {
  const __m512i low = _mm512_set1_epi8(0x0F), high = _mm512_set1_epi8(static_cast<char>(0xF0));
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
        ints[1][p & 1] = _mm512_dpbusd_epi32(ints[1][p & 1], _mm512_and_si512(codes, high), word);
      } else {
        ints[0][p & 1] = _mm512_dpbusd_epi32(ints[0][p & 1], _mm512_loadu_si512(tile + 128 * p), word);
        ints[1][p & 1] = _mm512_dpbusd_epi32(ints[1][p & 1], _mm512_loadu_si512(tile + 128 * p + 64), word);
      }
    }
    const __m512i zero = _mm512_set1_epi32(coefs.zero[g]);
    const __m512 scale = _mm512_set1_ps(coefs.scale[g]);
    __m512 out[2];
    for (int set = 0; set < 2; ++set) {
      __m512i sum = _mm512_add_epi32(ints[set][0], ints[set][1]);
      if (pack.bits == 4 && set == 1) sum = _mm512_srai_epi32(sum, 4);
      out[set] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(sum, zero)), scale);
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
  static const QuantKernels table{"avx512vnni", gate_up_tiles, group_coefs, down_group,
                                  madd_rows_tiled<16, 4, 4>, activate_product_lanes<16>};
  return &table;
}

}  // namespace glass
#endif
