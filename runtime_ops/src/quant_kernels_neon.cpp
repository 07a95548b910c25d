// arm64 NEON versions of the quantised FFN primitives (quant_ffn.h, quant_decode.h): what phones run.
// Tiles: a 64-byte group of 16 lanes is four registers of 4 lanes, each met by a broadcast word; 4-bit codes
// stay unsigned (0..15 fits int8) and the zero point comes off per block, 8-bit codes become signed.
// Without the dotprod extension the 4-byte products go through vmull_s8 into int16 (at most 128 * 128)
// and pairwise adds into int32; quant_kernels_neon_dotprod.cpp compiles this file again with
// GLASS_NEON_DOTPROD, where sdot (vdotq_s32) does it in one instruction. quant_kernels() picks the
// dotprod build when the CPU reports it (HWCAP_ASIMDDP).
#if defined(__aarch64__)
#include <arm_neon.h>

#include <cstring>

#include "activation_vector.h"
#include "dense_tile.h"
#include "quant_decode.h"

#ifdef GLASS_NEON_DOTPROD
#define GLASS_NEON_NAME "neon-dotprod"
#define GLASS_NEON_TABLE neon_dotprod_kernels
#else
#define GLASS_NEON_NAME "neon"
#define GLASS_NEON_TABLE neon_kernels
#endif

namespace glass {
namespace {

// acc lane L += sum of a[4L + b] * b[4L + b] over b = 0..3: one int32 lane per 4-byte group.
inline int32x4_t dot_s8(int32x4_t acc, int8x16_t a, int8x16_t b) {
#ifdef GLASS_NEON_DOTPROD
  return vdotq_s32(acc, a, b);
#else
  const int32x4_t low = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));  // bytes 0-7, summed in pairs
  const int32x4_t high = vpaddlq_s16(vmull_high_s8(a, b));
  return vaddq_s32(acc, vpaddq_s32(low, high));
#endif
}

inline int8x16_t signed8(const uint8_t* codes) { return vreinterpretq_s8_u8(veorq_u8(vld1q_u8(codes), vdupq_n_u8(0x80))); }

// --- decode tiles (quant_decode.h) -----------------------------------------------------------

inline int8x16_t broadcast_word(const int8_t* p) {
  int32_t word;
  std::memcpy(&word, p, sizeof(word));
  return vreinterpretq_s8_s32(vdupq_n_s32(word));
}

inline int8x16_t low_nibbles(uint8x16_t bytes) { return vreinterpretq_s8_u8(vandq_u8(bytes, vdupq_n_u8(0x0F))); }
inline int8x16_t high_nibbles(uint8x16_t bytes) { return vreinterpretq_s8_u8(vshrq_n_u8(bytes, 4)); }

void gate_up_tiles_one(const GateUpTiles& pack, const PreparedX& x, int64_t t0, int64_t t1, float* gate, float* up) {
  const int64_t spb = pack.subs_per_block();
  for (int64_t t = t0; t < t1; ++t) {
    for (int half = 0; half < 2; ++half) {
      float32x4_t sums[4];  // lanes 0-3, 4-7, 8-11, 12-15
      for (auto& v : sums) v = vdupq_n_f32(0.0f);
      const uint8_t* block = pack.tile_start(t);
      for (int64_t g = 0; g < pack.blocks(); ++g, block += pack.block_bytes()) {
        int32x4_t acc[4];
        for (auto& v : acc) v = vdupq_n_s32(0);
        if (half == 0) prefetch_ahead(block, pack.block_bytes());
        for (int64_t s = g * spb; s < (g + 1) * spb; ++s) {
          const uint8_t* tile = pack.block_codes(block, s - g * spb, half);
          if (pack.bits == 4) {
            for (int p = 0; p < 4; ++p) {
              const int8x16_t even = broadcast_word(x.even.data() + s * 16 + 4 * p);
              const int8x16_t odd = broadcast_word(x.odd.data() + s * 16 + 4 * p);
              for (int q = 0; q < 4; ++q) {
                const uint8x16_t codes = vld1q_u8(tile + 64 * p + 16 * q);
                acc[q] = dot_s8(dot_s8(acc[q], low_nibbles(codes), even), high_nibbles(codes), odd);
              }
            }
          } else {
            for (int p = 0; p < 8; ++p) {
              const int8x16_t word = broadcast_word(x.natural.data() + s * 32 + 4 * p);
              for (int q = 0; q < 4; ++q) acc[q] = dot_s8(acc[q], signed8(tile + 64 * p + 16 * q), word);
            }
          }
        }
        // signed 8-bit codes need no zero-point correction
        const int32x4_t zero = vdupq_n_s32(pack.bits == 4 ? x.block_zero[g] : 0);
        const float x_scale = x.sub_scale[g * spb];
        const Half* scales = pack.block_scales(block, half);
        for (int q = 0; q < 4; ++q) {
          sums[q] = vfmaq_f32(sums[q], vcvtq_f32_s32(vsubq_s32(acc[q], zero)), vmulq_n_f32(load_halves(scales + 4 * q), x_scale));
        }
      }
      float* out = (half == 0 ? gate : up) + (t - t0) * kTileRows;
      for (int q = 0; q < 4; ++q) vst1q_f32(out + 4 * q, sums[q]);
    }
  }
}

// Neuron group J's coefficients (GroupCoefs::compute): 32 neurons are eight registers per block.
void group_coefs(const DecodePack& pack, int64_t J, const float* z, GroupCoefs& out) {
  const int64_t nb = pack.blocks();
  out.resize(nb);
  const int zp = zero_point(pack.bits);
  float32x4_t zs[8];
  for (int v = 0; v < 8; ++v) zs[v] = vld1q_f32(z + 4 * v);
  for (int64_t g = 0; g < nb; ++g) {
    const Half* s = pack.down_scales(J, g);
    float32x4_t c[8], amax = vdupq_n_f32(0.0f);
    for (int v = 0; v < 8; ++v) {
      c[v] = vmulq_f32(zs[v], load_halves(s + 4 * v));
      amax = vmaxq_f32(amax, vabsq_f32(c[v]));
    }
    const float block_max = vmaxvq_f32(amax);
    const float inverse = block_max != 0.0f ? 127.0f / block_max : 0.0f;
    int8_t* q = out.q.data() + g * kDownGroup;
    int32x4_t total = vdupq_n_s32(0);
    for (int v = 0; v < 8; v += 2) {
      // vcvtnq: round half to even, as nearbyint
      const int32x4_t a = vcvtnq_s32_f32(vmulq_n_f32(c[v], inverse)), b = vcvtnq_s32_f32(vmulq_n_f32(c[v + 1], inverse));
      total = vaddq_s32(total, vaddq_s32(a, b));
      vst1_s8(q + 4 * v, vqmovn_s16(vcombine_s16(vqmovn_s32(a), vqmovn_s32(b))));
    }
    out.scale[g] = block_max / 127.0f;
    out.zero[g] = zp * vaddvq_s32(total);
  }
}

void down_group(const DecodePack& pack, const GroupCoefs& coefs, int64_t J, float* acc) {
  for (int64_t w = 0; w < pack.windows(); ++w) {
    const int64_t g = w * kSubBlock / pack.block;
    const uint8_t* tile = pack.down_tile(w, J);
    const int8_t* q8 = coefs.q.data() + g * kDownGroup;
    prefetch_ahead(tile, kDownGroup * pack.row_sub_bytes());
    int32x4_t ints[2][4];  // 4-bit: [even / odd outputs][lanes]; 8-bit: [half][lanes]
    for (auto& set : ints) for (auto& v : set) v = vdupq_n_s32(0);
    for (int p = 0; p < 8; ++p) {
      const int8x16_t word = broadcast_word(q8 + 4 * p);
      for (int q = 0; q < 4; ++q) {
        if (pack.bits == 4) {
          const uint8x16_t codes = vld1q_u8(tile + 64 * p + 16 * q);
          ints[0][q] = dot_s8(ints[0][q], low_nibbles(codes), word);
          ints[1][q] = dot_s8(ints[1][q], high_nibbles(codes), word);
        } else {
          ints[0][q] = dot_s8(ints[0][q], signed8(tile + 128 * p + 16 * q), word);
          ints[1][q] = dot_s8(ints[1][q], signed8(tile + 128 * p + 64 + 16 * q), word);
        }
      }
    }
    const int32x4_t zero = vdupq_n_s32(pack.bits == 4 ? coefs.zero[g] : 0);  // signed 8-bit codes: none
    const float scale = coefs.scale[g];
    float* dst = acc + w * kSubBlock;
    for (int q = 0; q < 4; ++q) {
      const float32x4_t a = vmulq_n_f32(vcvtq_f32_s32(vsubq_s32(ints[0][q], zero)), scale);
      const float32x4_t b = vmulq_n_f32(vcvtq_f32_s32(vsubq_s32(ints[1][q], zero)), scale);
      if (pack.bits == 4) {  // lane l of set 0 / 1 is output 2 l / 2 l + 1: add them interleaved
        float32x4x2_t pair = vld2q_f32(dst + 8 * q);
        pair.val[0] = vaddq_f32(pair.val[0], a);
        pair.val[1] = vaddq_f32(pair.val[1], b);
        vst2q_f32(dst + 8 * q, pair);
      } else {
        vst1q_f32(dst + 4 * q, vaddq_f32(vld1q_f32(dst + 4 * q), a));
        vst1q_f32(dst + 16 + 4 * q, vaddq_f32(vld1q_f32(dst + 16 + 4 * q), b));
      }
    }
  }
}

}  // namespace

const QuantKernels* GLASS_NEON_TABLE() {
  static const QuantKernels table{GLASS_NEON_NAME, gate_up_tiles_each_token<gate_up_tiles_one>,
                                  group_coefs, down_group,
                                  madd_rows_tiled<4, 4, 4>, activate_product_lanes<4>};
  return &table;
}

}  // namespace glass
#endif
