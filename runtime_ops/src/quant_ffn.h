// Quantised GLASS FFN compute core, shared by the ONNX Runtime and ExecuTorch kernels: the weight
// format, the prepared activations, the row primitives and the dense prefill ops. The sparse decode
// op, over the kept neurons repacked into tiles, is in quant_decode.h.
//
// Weights keep the neuron-contiguous layout of the fp32 ops, each row quantised along d in blocks,
// exactly as ONNX Runtime's MatMulNBits stores a weight B [N, K] (so MatMulNBits can read the
// gate/up rows directly):
//   gate_up: rows 2m (row 2i = gate of neuron i, row 2i + 1 = its up row), cols d
//   down:    rows m  (row i = column i of W_down),                         cols d
// Row r, block g holds `block` codes u and one float scale s; the weight is s * (u - Z), with the
// implicit zero point Z = 8 (4-bit: two codes a byte, element 2j in the low nibble of byte j) or
// Z = 128 (8-bit: one code a byte).
//
// Accuracy (MatMulNBits' accuracy_level):
//   Int8 (4):    x is quantised per block as MLAS's CompInt8 path does (scale = amax / 127,
//                q = round-half-even(x * (127 / amax))); gate and up are integer dot products.
//   Float32 (1): x stays float; codes are dequantised on the fly.
// The dense down projection (prefill) multiplies the float activation z by the dequantised rows; the
// sparse decode's down projection is defined in quant_decode.h.
//
// SIMD variants (x86-64 AVX2 and AVX-512 VNNI, arm64 NEON and NEON dotprod) implement the primitives
// of QuantKernels and are chosen at run time (quant_kernels()); the scalar versions are the portable
// fallback and the reference the fuzz test holds them to.
#pragma once

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "gather_ffn.h"

namespace glass {

constexpr int64_t kSubBlock = 32;  // SIMD granularity: every block size is a multiple of it

enum class Accuracy : int64_t { Float32 = 1, Int8 = 4 };

inline bool valid_accuracy(int64_t level) { return level == 1 || level == 4; }

inline int zero_point(int bits) { return bits == 4 ? 8 : 128; }

// Rows of quantised codes with one scale per block.
struct QuantRows {
  const uint8_t* codes = nullptr;  // [rows, cols * bits / 8]
  const float* scales = nullptr;   // [rows, cols / block]
  int64_t cols = 0;
  int bits = 4;
  int64_t block = 32;

  int64_t row_bytes() const { return cols * bits / 8; }
  int64_t blocks() const { return cols / block; }
  const uint8_t* row(int64_t r) const { return codes + r * row_bytes(); }
  const float* row_scales(int64_t r) const { return scales + r * blocks(); }
};

// "" when (bits, block, cols) is a layout the kernels take, else what is wrong.
inline std::string check_quant_layout(int64_t bits, int64_t block, int64_t cols) {
  char buf[200];
  if (bits != 4 && bits != 8) {
    std::snprintf(buf, sizeof(buf), "bits must be 4 or 8, got %lld", static_cast<long long>(bits));
    return buf;
  }
  if (block != 32 && block != 64 && block != 128 && block != 256) {
    std::snprintf(buf, sizeof(buf), "block size must be 32, 64, 128 or 256, got %lld", static_cast<long long>(block));
    return buf;
  }
  if (cols <= 0 || cols % block != 0) {
    std::snprintf(buf, sizeof(buf), "the hidden size %lld is not a multiple of the block size %lld",
                  static_cast<long long>(cols), static_cast<long long>(block));
    return buf;
  }
  return "";
}

// One token's activations, prepared once per call for every row it meets.
struct PreparedX {
  const float* x = nullptr;  // the float values (Float32 accuracy)
  int64_t n_sub = 0;         // 32-value sub-blocks
  // Int8 accuracy. 4-bit weights: even[s*16 + j] = q[32 s + 2 j], odd[...] = q[32 s + 2 j + 1]
  // (they meet the low and the high nibbles); 8-bit weights: natural[32 s + j] = q[32 s + j].
  std::vector<int8_t> even, odd, natural;
  // x86 kernels multiply unsigned codes u with q and subtract Z * (sum of q) per 32-bit lane, each
  // lane covering 4 bytes of every operand: 4 lanes a sub-block (4-bit), 8 lanes (8-bit).
  std::vector<int32_t> lane_zero;
  std::vector<float> lane_scale;  // the activation scale of each lane's block
  std::vector<float> sub_scale;   // the activation scale of each sub-block's block
  std::vector<int32_t> block_zero;  // Z * (sum of q over each block): the zero point's share of a block's dot

  // The int8 value of element i.
  int quantized(int64_t i, int bits) const {
    if (bits == 8) return natural[i];
    const int64_t s = i / kSubBlock, within = i % kSubBlock;
    return (within & 1) ? odd[s * 16 + within / 2] : even[s * 16 + within / 2];
  }
};

inline int lanes_per_sub(int bits) { return bits == 4 ? 4 : 8; }

// MLAS CompInt8 quantisation of one block: scale = amax / 127, q = nearbyint(x * (127 / amax)).
// (Written to vectorise: the decode runs it for every group of down coefficients of every token.)
inline float quantize_block_int8(const float* x, int64_t n, int8_t* q) {
  float amax = 0.0f;
#pragma omp simd reduction(max : amax)
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(x[i]));
  const float inverse = amax != 0.0f ? 127.0f / amax : 0.0f;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) q[i] = static_cast<int8_t>(std::nearbyint(x[i] * inverse));
  return amax / 127.0f;
}

// Prepares one token's x for the dot kernels. Arrays are zero-padded to a multiple of 4
// sub-blocks, so full-width SIMD loads past the last sub-block read zeros.
inline void prepare_x(const float* x, int64_t cols, int bits, int64_t block, Accuracy accuracy, PreparedX& out) {
  out.x = x;
  out.n_sub = cols / kSubBlock;
  if (accuracy != Accuracy::Int8) return;
  const int64_t n_sub = out.n_sub;
  const int64_t padded = (n_sub + 3) / 4 * 4;
  const int lanes = lanes_per_sub(bits);
  const int z = zero_point(bits);
  std::vector<int8_t> q(static_cast<size_t>(padded * kSubBlock), 0);
  out.sub_scale.assign(static_cast<size_t>(padded), 0.0f);
  out.block_zero.assign(static_cast<size_t>(cols / block), 0);
  for (int64_t g = 0; g < cols / block; ++g) {
    const float scale = quantize_block_int8(x + g * block, block, q.data() + g * block);
    for (int64_t s = g * block / kSubBlock; s < (g + 1) * block / kSubBlock; ++s) out.sub_scale[s] = scale;
    int32_t sum = 0;
    for (int64_t i = g * block; i < (g + 1) * block; ++i) sum += q[i];
    out.block_zero[g] = z * sum;
  }
  out.lane_zero.assign(static_cast<size_t>(padded * lanes), 0);
  out.lane_scale.assign(static_cast<size_t>(padded * lanes), 0.0f);
  if (bits == 4) {
    out.even.assign(static_cast<size_t>(padded * 16), 0);
    out.odd.assign(static_cast<size_t>(padded * 16), 0);
    for (int64_t s = 0; s < n_sub; ++s) {
      for (int j = 0; j < 16; ++j) {
        out.even[s * 16 + j] = q[s * 32 + 2 * j];
        out.odd[s * 16 + j] = q[s * 32 + 2 * j + 1];
      }
      for (int l = 0; l < 4; ++l) {
        int32_t sum = 0;
        for (int j = 4 * l; j < 4 * l + 4; ++j) sum += out.even[s * 16 + j] + out.odd[s * 16 + j];
        out.lane_zero[s * 4 + l] = z * sum;
      }
    }
  } else {
    out.natural = q;
    for (int64_t s = 0; s < n_sub; ++s) {
      for (int l = 0; l < 8; ++l) {
        int32_t sum = 0;
        for (int j = 4 * l; j < 4 * l + 4; ++j) sum += q[s * 32 + j];
        out.lane_zero[s * 8 + l] = z * sum;
      }
    }
  }
  for (int64_t s = 0; s < n_sub; ++s) {
    for (int l = 0; l < lanes; ++l) out.lane_scale[s * lanes + l] = out.sub_scale[s];
  }
}

class DecodePack;  // quant_decode.h
struct GroupCoefs;

// The primitives every SIMD variant implements.
struct QuantKernels {
  const char* name;
  // Int8 accuracy: out[r] = rows[r] . x for n_rows = 2 or 4 rows (the gate and up rows of one or two
  // neurons), every load of x shared by all of them.
  void (*dot)(const uint8_t* const* rows, const float* const* scales, int n_rows, const PreparedX& x, int bits,
              int64_t block, float* out);
  // Down projection, two rows at once (row_b may be null): acc += coef_a * s_a * u_a + coef_b * s_b * u_b
  // over the raw codes u, in code order (see DownAccumulator), and coef_sums[g] += the coefficients
  // of block g, from which finish_down takes the zero points off once.
  void (*axpy2)(const uint8_t* row_a, const float* scales_a, float coef_a, const uint8_t* row_b,
                const float* scales_b, float coef_b, float* acc, float* coef_sums, int64_t cols, int bits,
                int64_t block);
  // Sparse decode, Int8 accuracy (quant_decode.h): gate . x and up . x of the kept neurons of tiles
  // [t0, t1), into gate[16 (t - t0) + r] and up[...].
  void (*gate_up_tiles)(const DecodePack& pack, const PreparedX& x, int64_t t0, int64_t t1, float* gate, float* up);
  // acc[0, d) += neuron group J's share of the down projection, from its int8 coefficients.
  void (*down_group)(const DecodePack& pack, const GroupCoefs& coefs, int64_t J, float* acc);
};

// --- portable scalar versions (the reference) ---------------------------------------------

inline int code_at(const uint8_t* row, int bits, int64_t i) {
  if (bits == 8) return row[i];
  const uint8_t byte = row[i >> 1];
  return (i & 1) ? (byte >> 4) : (byte & 0x0F);
}

inline float dot_int8_scalar(const uint8_t* row, const float* scales, const PreparedX& x, int bits, int64_t block) {
  const int z = zero_point(bits);
  const int64_t subs_per_block = block / kSubBlock;
  float acc = 0.0f;
  for (int64_t g = 0; g < x.n_sub / subs_per_block; ++g) {
    int32_t sum = 0;
    for (int64_t s = g * subs_per_block; s < (g + 1) * subs_per_block; ++s) {
      if (bits == 4) {
        for (int j = 0; j < 16; ++j) {
          const uint8_t byte = row[s * 16 + j];
          sum += ((byte & 0x0F) - z) * x.even[s * 16 + j] + ((byte >> 4) - z) * x.odd[s * 16 + j];
        }
      } else {
        for (int j = 0; j < 32; ++j) sum += (row[s * 32 + j] - z) * x.natural[s * 32 + j];
      }
    }
    acc += static_cast<float>(sum) * (scales[g] * x.sub_scale[g * subs_per_block]);
  }
  return acc;
}

inline void dot_scalar(const uint8_t* const* rows, const float* const* scales, int n_rows, const PreparedX& x, int bits,
                       int64_t block, float* out) {
  for (int r = 0; r < n_rows; ++r) out[r] = dot_int8_scalar(rows[r], scales[r], x, bits, block);
}

// Position of element i inside the code-order accumulator: 4-bit codes hold, per 32-value
// sub-block, the 16 even elements (low nibbles) then the 16 odd ones (high nibbles), so the kernels
// widen nibbles without interleaving them; 8-bit codes keep element order.
inline int64_t code_position(int64_t i, int bits) {
  if (bits == 8) return i;
  const int64_t within = i % kSubBlock;
  return i - within + (within & 1) * 16 + within / 2;
}

// The outer loop every axpy2 shares: per block, the two rows' coefficients (coef x scale) added to
// coef_sums; then sub(s, c_a, c_b) adds one 32-value sub-block s of both rows into the accumulator.
template <typename Sub>
inline void for_each_block(const float* scales_a, float coef_a, const float* scales_b, float coef_b, float* coef_sums,
                           int64_t cols, int64_t block, const Sub& sub) {
  const int64_t subs_per_block = block / kSubBlock;
  for (int64_t g = 0; g < cols / block; ++g) {
    const float ca = coef_a * scales_a[g];
    const float cb = scales_b != nullptr ? coef_b * scales_b[g] : 0.0f;
    coef_sums[g] += ca + cb;
    for (int64_t s = g * subs_per_block; s < (g + 1) * subs_per_block; ++s) sub(s, ca, cb);
  }
}

inline void axpy2_scalar(const uint8_t* row_a, const float* scales_a, float coef_a, const uint8_t* row_b,
                         const float* scales_b, float coef_b, float* acc, float* coef_sums, int64_t cols, int bits,
                         int64_t block) {
  for_each_block(scales_a, coef_a, row_b != nullptr ? scales_b : nullptr, coef_b, coef_sums, cols, block,
                 [&](int64_t s, float ca, float cb) {
    for (int64_t i = s * kSubBlock; i < (s + 1) * kSubBlock; ++i) {
      acc[code_position(i, bits)] += ca * static_cast<float>(code_at(row_a, bits, i));
      if (row_b != nullptr) acc[code_position(i, bits)] += cb * static_cast<float>(code_at(row_b, bits, i));
    }
  });
}

// Float32 accuracy: the dequantised row dotted with the float x (not on the int8 fast path).
inline float dot_float(const uint8_t* row, const float* scales, const float* x, int64_t cols, int bits,
                       int64_t block) {
  const int z = zero_point(bits);
  float acc = 0.0f;
  for (int64_t g = 0; g < cols / block; ++g) {
    float part = 0.0f;
    for (int64_t i = g * block; i < (g + 1) * block; ++i) part += x[i] * static_cast<float>(code_at(row, bits, i) - z);
    acc += part * scales[g];
  }
  return acc;
}

// The fastest variant this CPU runs (GLASS_QUANT_KERNELS=<name> forces one, for tests).
const QuantKernels& quant_kernels();
// A variant by name ("scalar", "avx2", "avx512vnni", "neon", "neon-dotprod"), or null when this
// build or CPU lacks it.
const QuantKernels* quant_kernels_named(const char* name);
// Test drivers run every variant in one process (null: back to the automatic choice).
void set_quant_kernels_for_testing(const QuantKernels* kernels);

// --- the ops ---------------------------------------------------------------------------------

// gate . x and up . x of `count` (1 or 2) neurons for one token: out = {g0, u0, g1, u1}.
inline void gate_up_dot(const QuantKernels& kernels, const QuantRows& gate_up, const int64_t* neurons, int count,
                        const PreparedX& x, Accuracy accuracy, float* out) {
  const uint8_t* rows[4];
  const float* scales[4];
  for (int n = 0; n < count; ++n) {
    for (int half = 0; half < 2; ++half) {
      rows[2 * n + half] = gate_up.row(2 * neurons[n] + half);
      scales[2 * n + half] = gate_up.row_scales(2 * neurons[n] + half);
    }
  }
  if (accuracy == Accuracy::Int8) {
    kernels.dot(rows, scales, 2 * count, x, gate_up.bits, gate_up.block, out);
  } else {
    for (int r = 0; r < 2 * count; ++r) out[r] = dot_float(rows[r], scales[r], x.x, gate_up.cols, gate_up.bits, gate_up.block);
  }
}

inline std::vector<PreparedX> prepare_tokens(const float* x, int64_t n_tokens, const QuantRows& rows,
                                             Accuracy accuracy) {
  std::vector<PreparedX> prepared(static_cast<size_t>(n_tokens));
  for (int64_t t = 0; t < n_tokens; ++t) prepare_x(x + t * rows.cols, rows.cols, rows.bits, rows.block, accuracy, prepared[t]);
  return prepared;
}

// Per-task down-projection sums for n_tokens tokens, in code order, 64-byte aligned for the SIMD
// kernels; finish_down() adds the tasks up, takes the zero points off and restores element order.
class DownAccumulator {
 public:
  DownAccumulator(int64_t n_tasks, int64_t n_tokens, int64_t cols, int64_t blocks)
      : n_tasks_(n_tasks), n_tokens_(n_tokens), cols_(cols), blocks_(blocks),
        storage_(static_cast<size_t>(n_tasks * n_tokens * (cols + blocks) + 16), 0.0f) {
    const auto address = reinterpret_cast<uintptr_t>(storage_.data());
    base_ = storage_.data() + ((64 - address % 64) % 64) / sizeof(float);
  }
  float* acc(int64_t task, int64_t token) { return base_ + (task * n_tokens_ + token) * cols_; }
  float* coef_sums(int64_t task, int64_t token) {
    return base_ + n_tasks_ * n_tokens_ * cols_ + (task * n_tokens_ + token) * blocks_;
  }

  void finish(int bits, int64_t block, float* y) {
    const float z = static_cast<float>(zero_point(bits));
    for (int64_t t = 0; t < n_tokens_; ++t) {
      for (int64_t i = 0; i < cols_; ++i) {
        const int64_t position = code_position(i, bits);
        float sum = 0.0f, coefs = 0.0f;
        for (int64_t task = 0; task < n_tasks_; ++task) {
          sum += acc(task, t)[position];
          coefs += coef_sums(task, t)[i / block];
        }
        y[t * cols_ + i] = sum - z * coefs;
      }
    }
  }

 private:
  int64_t n_tasks_, n_tokens_, cols_, blocks_;
  std::vector<float> storage_;
  float* base_;
};

// Dense prefill, first half: z [n_tokens, m] = act(x . gate_i) * (x . up_i) for every neuron.
template <typename ParallelFor>
void ffn_up_quant(const float* x, int64_t n_tokens, const QuantRows& gate_up, int64_t m, Activation act,
                  Accuracy accuracy, float* z, int64_t n_tasks, const ParallelFor& parallel_for) {
  const QuantKernels& kernels = quant_kernels();
  const std::vector<PreparedX> prepared = prepare_tokens(x, n_tokens, gate_up, accuracy);
  for_each_task(m, n_tasks, parallel_for, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i += 2) {
      const int count = i + 1 < end ? 2 : 1;
      const int64_t neurons[2] = {i, i + count - 1};
      for (int64_t t = 0; t < n_tokens; ++t) {
        float gu[4];
        gate_up_dot(kernels, gate_up, neurons, count, prepared[t], accuracy, gu);
        for (int n = 0; n < count; ++n) z[t * m + i + n] = activate(act, gu[2 * n]) * gu[2 * n + 1];
      }
    }
  });
}

// Row r as floats: out[i] = scale * (u_i - Z).
inline void dequantize_row(const QuantRows& rows, int64_t r, float* out) {
  const int z = zero_point(rows.bits);
  const uint8_t* codes = rows.row(r);
  const float* scales = rows.row_scales(r);
  for (int64_t i = 0; i < rows.cols; ++i) out[i] = scales[i / rows.block] * static_cast<float>(code_at(codes, rows.bits, i) - z);
}

// From this many tokens on (prefill), ffn_down_quant decodes each row once into floats and adds every
// token's share with float multiply-adds, instead of decoding the codes again for every token.
constexpr int64_t kDequantizeOnceTokens = 4;

// Dense second half: y [n_tokens, d] = z [n_tokens, m] . dequantised down rows.
template <typename ParallelFor>
void ffn_down_quant(const float* z, int64_t n_tokens, int64_t m, const QuantRows& down, float* y, int64_t n_tasks,
                    const ParallelFor& parallel_for) {
  if (n_tokens >= kDequantizeOnceTokens) {
    const int64_t d = down.cols, out_size = n_tokens * d;
    std::vector<float> partial(static_cast<size_t>(n_tasks * out_size), 0.0f);
    for_each_task(m, n_tasks, parallel_for, [&](int64_t task, int64_t begin, int64_t end) {
      std::vector<float> rows(static_cast<size_t>(4 * d), 0.0f);  // four neurons' rows per pass over y (axpy4)
      float* acc = partial.data() + task * out_size;
      for (int64_t i = begin; i < end; i += 4) {
        const int64_t count = std::min<int64_t>(4, end - i);
        for (int64_t r = 0; r < 4; ++r) {
          if (r < count) {
            dequantize_row(down, i + r, rows.data() + r * d);
          } else {
            std::fill_n(rows.data() + r * d, d, 0.0f);
          }
        }
        for (int64_t t = 0; t < n_tokens; ++t) {
          float a[4] = {0.0f, 0.0f, 0.0f, 0.0f};
          for (int64_t r = 0; r < count; ++r) a[r] = z[t * m + i + r];
          axpy4(a, rows.data(), d, acc + t * d);
        }
      }
    });
    reduce_partials(partial, n_tasks, out_size, y);
    return;
  }
  const QuantKernels& kernels = quant_kernels();
  DownAccumulator sums(n_tasks, n_tokens, down.cols, down.blocks());
  for_each_task(m, n_tasks, parallel_for, [&](int64_t task, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; i += 2) {
      const bool pair = i + 1 < end;
      for (int64_t t = 0; t < n_tokens; ++t) {
        kernels.axpy2(down.row(i), down.row_scales(i), z[t * m + i], pair ? down.row(i + 1) : nullptr,
                      pair ? down.row_scales(i + 1) : nullptr, pair ? z[t * m + i + 1] : 0.0f, sums.acc(task, t),
                      sums.coef_sums(task, t), down.cols, down.bits, down.block);
      }
    }
  });
  sums.finish(down.bits, down.block, y);
}

}  // namespace glass
