// Quantised GLASS decode: the FFN over one prompt's kept neurons, for every decode step.
//
// At the first decode step of a prompt the kept neurons' rows are repacked once (DecodePack) into
// tiles the SIMD kernels stream with one broadcast activation word per 4 bytes: every lane of a
// register is one row (gate/up) or one output (down), so no horizontal sums and no per-row scale
// shuffles, and the rows a step reads are contiguous (kept rows scattered through the full matrix
// defeat the hardware prefetchers). The pack costs about rho x the FFN's bytes of memory while the
// prompt is in use.
//
// Semantics, per token x (what glass_ops/torch_ops.py's norm_gather_ffn_q reference computes after its RMSNorm):
//   gate_j, up_j = dot products of the kept neuron j's rows with x (Int8 accuracy: x quantised per
//                  block as in quant_ffn.h; Float32: float x), z_j = act(gate_j) * up_j;
//   down, Int8 accuracy: per group J of 32 consecutive kept neurons (in idx order; the last group
//                  padded with zeros) and output block g, the coefficients c_j = z_j * s_{j,g} (s: the
//                  down rows' scales) are quantised to int8 like an activation block (t = amax / 127,
//                  q = round-half-even(c * 127 / amax)), and
//                  y_i = sum_J t_{J,g} * sum_{j in J} q_j * (u_{j,i} - Z),   g = i / block,
//                  an integer dot product over neurons, as MatMulNBits does over its K dimension;
//   down, Float32 accuracy: y_i = sum_j z_j * s_{j,g} * (u_{j,i} - Z).
//
// Pack layout (R = 32 * bits / 8 bytes, one row's 32-value sub-block; 4-byte words, one per lane):
//   gate/up tile t (kept neurons 16t..16t+15: their gate rows, half 0, or up rows, half 1), sub-block s:
//     16 R bytes; byte 64 p + 4 r + b = byte 4 p + b of row r's sub-block s, the row's own bytes (so a
//     repack copies words). 4-bit: low nibbles are elements 32s + 8p + 2b, high nibbles 8p + 2b + 1,
//     which meet PreparedX's even and odd words; 8-bit: element 32s + 4p + b, PreparedX's natural.
//   neuron group J x down window w (outputs 32w..32w+31), stored group by group: 32 R bytes; byte
//     ((p H + h) 16 + l) 4 + b = byte R w + 16 h + l of kept neuron 32J + 4p + b's down row, H = R / 16.
//     4-bit: lane l's low nibbles are output 32w + 2l, its high nibbles 32w + 2l + 1; 8-bit: lane l of
//     half h is output 32w + 16h + l. The 4 bytes of a lane are 4 neurons: one broadcast word of q per p.
// Storage order, the order a task reads it, so the pack is one forward stream: for each group J, its
// two gate/up tiles (each block by block: the block's gate and up sub-blocks, then their 16 + 16
// float16 scales), then its down scales (32 float16s a block), then its down windows.
//
// Work is split by neuron groups: each task takes whole groups of 32 kept neurons, computes their gate,
// up and z, their down coefficients and their share of y into a private buffer, so one parallel_for
// (one wake-up of the pool) covers the whole op; the shares are summed at the end.
#pragma once

#include <algorithm>
#include <array>
#include <memory>
#include <vector>

#include "quant_ffn.h"

namespace glass {

constexpr int64_t kDownGroup = 32;  // kept neurons per int8 group of down coefficients
// The kernels stream the pack in its storage order; as they start each block, window or group's scales
// they prefetch the bytes that lie this far further on, into L2 (the L1 hardware prefetcher takes it
// from there), which keeps the stream from DRAM flowing. 2 KB into L1 was 18 % faster than none once
// the packs of all layers outgrow the caches (Xeon, 48 MiB L3); 8 KB into L2 was another 15-20 % faster
// than that when every pack comes from DRAM (EPYC, 32 MiB L3; 4 KB into L1: 5 %). Since the pack became
// one stream, 4, 8 and 16 KB measure alike, and prefetching each task's first 8 KB gains nothing.
constexpr int64_t kPrefetchDistance = 8192;
constexpr int kPrefetchLocality = 2;  // __builtin_prefetch's: 2 = L2 (x86 prefetcht1, arm64 PLDL2KEEP)

// Prefetch the `bytes` that lie kPrefetchDistance bytes after p (prefetches never fault).
// (always_inline: GCC may drop an out-of-line function made only of prefetches.)
__attribute__((always_inline)) inline void prefetch_ahead(const uint8_t* p, int64_t bytes) {
  for (int64_t i = 0; i < bytes; i += 64) __builtin_prefetch(p + kPrefetchDistance + i, 0, kPrefetchLocality);
}

class DecodePack : public GateUpTiles {
 public:
  DecodePack(const QuantRows& gate_up, const QuantRows& down, const int64_t* idx, int64_t k)
      : source_gate_up_(gate_up.codes), source_down_(down.codes), indices_(idx, idx + k),
        samples_(sample(gate_up, down, idx, k)) {
    const int64_t nb = down.blocks(), R = kSubBlock * down.bits / 8, H = R / 16;
    down_scale_bytes_ = nb * kDownGroup * static_cast<int64_t>(sizeof(Half));
    assign(gate_up, idx, k, (k + kDownGroup - 1) / kDownGroup * kDownGroup, kDownGroup / kTileRows,
           down_scale_bytes_ + down.cols / kSubBlock * kDownGroup * R);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t J = j / kDownGroup, p = (j % kDownGroup) / 4, b = j % 4;
      const uint8_t* row = down.row(idx[j]);
      for (int64_t w = 0; w < windows(); ++w) {
        uint8_t* tile = mutable_bytes(down_tile(w, J));
        for (int64_t h = 0; h < H; ++h) {
          for (int64_t l = 0; l < 16; ++l) tile[((p * H + h) * 16 + l) * 4 + b] = row[R * w + 16 * h + l];
        }
      }
      const float* scales = down.row_scales(idx[j]);
      for (int64_t g = 0; g < nb; ++g) {
        const Half scale = static_cast<Half>(scales[g]);
        std::memcpy(mutable_bytes(down_scales(J, g) + j % kDownGroup), &scale, sizeof(scale));
      }
    }
  }

  // Whether this pack is the kept set idx of these weights: same addresses, same indices, and a few
  // sampled source rows unchanged (other weights at a reused address differ there).
  bool holds(const QuantRows& gate_up, const QuantRows& down, const int64_t* idx, int64_t count) const {
    return gate_up.codes == source_gate_up_ && down.codes == source_down_ && count == k &&
           std::equal(indices_.begin(), indices_.end(), idx) && sample(gate_up, down, idx, count) == samples_;
  }

  int64_t groups() const { return k_pad / kDownGroup; }
  int64_t windows() const { return d / kSubBlock; }

  // Group J's down scales, then its down windows: the bytes after its two gate/up tiles.
  const uint8_t* down_start(int64_t J) const { return unit_extra(J); }
  int64_t down_scale_bytes() const { return down_scale_bytes_; }
  // 32 R bytes: window w of neuron group J's down rows.
  const uint8_t* down_tile(int64_t w, int64_t J) const {
    return down_start(J) + down_scale_bytes_ + w * kDownGroup * row_sub_bytes();
  }
  // 32 float16s: the down scales s_{j,g} of group J's neurons; block g + 1's follow.
  const Half* down_scales(int64_t J, int64_t g) const {
    return reinterpret_cast<const Half*>(down_start(J)) + g * kDownGroup;
  }

  // The code of output i of neuron j of group J (portable paths).
  int down_code(int64_t J, int64_t j, int64_t i) const {
    const int64_t within = i % kSubBlock, H = row_sub_bytes() / 16;
    const int64_t h = bits == 4 ? 0 : within / 16, l = bits == 4 ? within / 2 : within % 16;
    const uint8_t value = down_tile(i / kSubBlock, J)[(((j / 4) * H + h) * 16 + l) * 4 + j % 4];
    return bits == 8 ? value : (within & 1) ? value >> 4 : value & 0x0F;
  }

 private:
  // A fingerprint of the source rows: the first bytes and scale of the first and last kept neuron's gate,
  // up and down rows. Small on purpose: it is read at every decode step, from memory the step has not
  // touched yet (reading whole rows cost ExecuTorch's op about 5 us a call, a tenth of it).
  using Sample = std::array<uint8_t, 2 * 3 * kRowSampleSize>;
  static Sample sample(const QuantRows& gate_up, const QuantRows& down, const int64_t* idx, int64_t k) {
    Sample bytes{};
    if (k == 0) return bytes;
    uint8_t* at = bytes.data();
    for (const int64_t j : {idx[0], idx[k - 1]}) {
      at = append_row_sample(gate_up, 2 * j, at);
      at = append_row_sample(gate_up, 2 * j + 1, at);
      at = append_row_sample(down, j, at);
    }
    return bytes;
  }

  const uint8_t* source_gate_up_;
  const uint8_t* source_down_;
  std::vector<int64_t> indices_;
  Sample samples_;
  int64_t down_scale_bytes_ = 0;
};

// The DecodePack of each FFN's current kept set (ExecuTorch), replaced when the kept set changes.
using DecodePackCache = PackCache<DecodePack, 512>;

// One neuron group's int8 down coefficients for one token (Int8 accuracy), per output block g.
struct GroupCoefs {
  std::vector<int8_t> q;      // [blocks][32]
  std::vector<float> scale;   // [blocks]: t = amax / 127
  std::vector<int32_t> zero;  // [blocks]: Z * sum(q), for kernels that multiply unsigned codes
  std::vector<float> scales;  // [blocks][32]: the group's down scales as floats (scratch)

  void resize(int64_t blocks) {
    q.resize(static_cast<size_t>(blocks * kDownGroup));
    scale.resize(static_cast<size_t>(blocks));
    zero.resize(static_cast<size_t>(blocks));
  }

  // The definition (the scalar variant; QuantKernels::group_coefs gives the same bits). z: the group's 32
  // activations (0 for padding neurons).
  void compute(const DecodePack& pack, int64_t J, const float* z) {
    const int64_t nb = pack.blocks();
    resize(nb);
    const int zp = zero_point(pack.bits);
    scales.resize(static_cast<size_t>(nb * kDownGroup));
    halves_to_floats(pack.down_scales(J, 0), nb * kDownGroup, scales.data());
    float c[kDownGroup];
    for (int64_t g = 0; g < nb; ++g) {
      const float* s = scales.data() + g * kDownGroup;
#pragma omp simd
      for (int64_t j = 0; j < kDownGroup; ++j) c[j] = z[j] * s[j];
      int8_t* out = q.data() + g * kDownGroup;
      scale[g] = quantize_block_int8(c, kDownGroup, out);
      int32_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < kDownGroup; ++j) sum += out[j];
      zero[g] = zp * sum;
    }
  }
};

// --- portable versions: the scalar variant (the reference) and the Float32-accuracy path --------

// gate[16 (t - t0) + r], up[...]: rows r of tiles [t0, t1).
inline void gate_up_tiles_scalar(const GateUpTiles& pack, const PreparedX& x, int64_t t0, int64_t t1, float* gate,
                                 float* up) {
  const int z = zero_point(pack.bits);
  const int64_t spb = pack.subs_per_block();
  for (int64_t t = t0; t < t1; ++t) {
    for (int half = 0; half < 2; ++half) {
      for (int64_t r = 0; r < kTileRows; ++r) {
        float acc = 0.0f;
        for (int64_t g = 0; g < pack.blocks(); ++g) {
          int32_t sum = 0;
          for (int64_t i = g * pack.block; i < (g + 1) * pack.block; ++i) {
            sum += (pack.gate_up_code(t, half, r, i) - z) * x.quantized(i, pack.bits);
          }
          const float scale = static_cast<float>(pack.gate_up_scales(t, half, g)[r]) * x.sub_scale[g * spb];
          acc += static_cast<float>(sum) * scale;
        }
        (half == 0 ? gate : up)[(t - t0) * kTileRows + r] = acc;
      }
    }
  }
}

// acc[0, d) += group J's share of the down projection.
inline void down_group_scalar(const DecodePack& pack, const GroupCoefs& coefs, int64_t J, float* acc) {
  const int z = zero_point(pack.bits);
  for (int64_t i = 0; i < pack.d; ++i) {
    const int64_t g = i / pack.block;
    const int8_t* q = coefs.q.data() + g * kDownGroup;
    int32_t sum = 0;
    for (int64_t j = 0; j < kDownGroup; ++j) sum += q[j] * (pack.down_code(J, j, i) - z);
    acc[i] += coefs.scale[g] * static_cast<float>(sum);
  }
}

inline void gate_up_tiles_float(const GateUpTiles& pack, const float* x, int64_t t0, int64_t t1, float* gate, float* up) {
  const int z = zero_point(pack.bits);
  for (int64_t t = t0; t < t1; ++t) {
    for (int half = 0; half < 2; ++half) {
      for (int64_t r = 0; r < kTileRows; ++r) {
        float acc = 0.0f;
        for (int64_t g = 0; g < pack.blocks(); ++g) {
          float part = 0.0f;
          for (int64_t i = g * pack.block; i < (g + 1) * pack.block; ++i) {
            part += x[i] * static_cast<float>(pack.gate_up_code(t, half, r, i) - z);
          }
          acc += part * static_cast<float>(pack.gate_up_scales(t, half, g)[r]);
        }
        (half == 0 ? gate : up)[(t - t0) * kTileRows + r] = acc;
      }
    }
  }
}

// Float32 accuracy: acc[0, d) += sum over group J's neurons of z_j * s_{j,g} * (u_{j,i} - Z).
inline void down_group_float(const DecodePack& pack, const float* z_group, int64_t J, float* acc) {
  const int z = zero_point(pack.bits);
  for (int64_t i = 0; i < pack.d; ++i) {
    const Half* s = pack.down_scales(J, i / pack.block);
    float sum = 0.0f;
    for (int64_t j = 0; j < kDownGroup; ++j) {
      sum += z_group[j] * static_cast<float>(s[j]) * static_cast<float>(pack.down_code(J, j, i) - z);
    }
    acc[i] += sum;
  }
}

inline void group_coefs_scalar(const DecodePack& pack, int64_t J, const float* z, GroupCoefs& out) {
  out.compute(pack, J, z);
}

inline const QuantKernels& scalar_kernels() {
  static const QuantKernels table{"scalar", gate_up_tiles_each_token<gate_up_tiles_scalar>, group_coefs_scalar,
                                  down_group_scalar, madd_rows_scalar, activate_product_scalar};
  return table;
}

// Decode: y [n_tokens, d] = the FFN of x over the pack's kept neurons (semantics above), split into at
// most n_tasks tasks of whole neuron groups on the caller's pool.
template <typename ParallelFor>
void gather_ffn_quant(const float* x, int64_t n_tokens, const DecodePack& pack, Activation act, Accuracy accuracy,
                      float* y, int64_t n_tasks, const ParallelFor& parallel_for) {
  const QuantKernels& kernels = quant_kernels();
  const bool int8 = accuracy == Accuracy::Int8;
  const int64_t tasks = std::max<int64_t>(1, std::min(n_tasks, pack.groups())), d = pack.d;
  std::vector<float> partial(static_cast<size_t>(tasks * d));
  PreparedX prepared;
  for (int64_t t = 0; t < n_tokens; ++t) {
    const float* xt = x + t * d;
    if (int8) prepare_x(xt, d, pack.bits, pack.block, accuracy, prepared);
    std::fill(partial.begin(), partial.end(), 0.0f);
    for_each_task(pack.groups(), tasks, parallel_for, [&](int64_t task, int64_t begin, int64_t end) {
      float gate[kDownGroup], up[kDownGroup], z[kDownGroup];
      thread_local GroupCoefs coefs;  // each pool thread keeps its buffers from call to call
      float* acc = partial.data() + task * d;
      for (int64_t J = begin; J < end; ++J) {
        const int64_t tiles = kDownGroup / kTileRows;
        if (int8) {
          kernels.gate_up_tiles(pack, &prepared, 1, J * tiles, (J + 1) * tiles, gate, up);
        } else {
          gate_up_tiles_float(pack, xt, J * tiles, (J + 1) * tiles, gate, up);
        }
        kernels.activate_product(act, gate, up, z, kDownGroup);
        for (int64_t j = pack.k - J * kDownGroup; j < kDownGroup; ++j) z[j] = 0.0f;  // padding neurons
        if (int8) {
          prefetch_ahead(pack.down_start(J), pack.down_scale_bytes());
          kernels.group_coefs(pack, J, z, coefs);
          kernels.down_group(pack, coefs, J, acc);
        } else {
          down_group_float(pack, z, J, acc);
        }
      }
    });
    reduce_partials(partial, tasks, d, y + t * d);
  }
}

}  // namespace glass
