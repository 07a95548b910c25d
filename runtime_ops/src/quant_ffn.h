// Quantised GLASS FFN compute core, shared by the ONNX Runtime and ExecuTorch kernels: the weight
// format, the prepared activations, the gate/up tiles, the primitives and the dense prefill ops. The
// sparse decode op, over the kept neurons repacked into tiles, is in quant_decode.h.
//
// Weights keep the neuron-contiguous layout of the fp32 ops, each row quantised along d in blocks,
// exactly as ONNX Runtime's MatMulNBits stores a weight B [N, K] (so MatMulNBits can read the
// gate/up rows directly):
//   gate_up: rows 2m (row 2i = gate of neuron i, row 2i + 1 = its up row), cols d
//   down:    rows m  (row i = column i of W_down),                         cols d
// Row r, block g holds `block` codes u and one scale s; the weight is s * (u - Z), with the
// implicit zero point Z = 8 (4-bit: two codes a byte, element 2j in the low nibble of byte j) or
// Z = 128 (8-bit: one code a byte). Scales are float16 values in float32 tensors (the exporter's
// quantiser rounds them so, and MatMulNBits reads the same tensors); every kernel reads a scale as
// float16 (scale_value), and the tiles hold them as float16, a tenth of the bytes a decode streams.
//
// Accuracy (MatMulNBits' accuracy_level):
//   Int8 (4):    x is quantised per block as MLAS's CompInt8 path does (scale = amax / 127,
//                q = round-half-even(x * (127 / amax))); gate and up are integer dot products.
//   Float32 (1): x stays float; codes are dequantised on the fly.
// The dense down projection (prefill) multiplies the float activation z by the dequantised rows
// (madd_rows over rows dequantised once per call); the sparse decode's down projection is defined in
// quant_decode.h.
//
// SIMD variants (x86-64 AVX2 and AVX-512 VNNI, arm64 NEON and NEON dotprod) implement the primitives
// of QuantKernels and are chosen at run time (quant_kernels()); the scalar versions are the portable
// fallback and the reference the fuzz test holds them to.
#pragma once

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#include "gather_ffn.h"

namespace glass {

constexpr int64_t kSubBlock = 32;  // SIMD granularity: every block size is a multiple of it

enum class Accuracy : int64_t { Float32 = 1, Int8 = 4 };

// IEEE binary16 storage (F16C converts on x86-64; arm64 converts natively, where GCC 12's C++ spells it __fp16)
#if defined(__aarch64__)
using Half = __fp16;
#else
using Half = _Float16;
#endif

// A stored scale as the kernels read it: rounded to float16 (exact for exported weights).
inline float scale_value(float s) { return static_cast<float>(static_cast<Half>(s)); }

// One register of float16 scales as floats, where the translation unit's ISA converts them: 8 (F16C)
// or 4 (arm64) lanes. The SIMD variants load their gate/up scales with it.
#if defined(__F16C__)
inline __m256 load_halves(const Half* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
constexpr int64_t kHalfLanes = 8;
#elif defined(__aarch64__)
inline float32x4_t load_halves(const Half* p) { return vcvt_f32_f16(vld1_f16(reinterpret_cast<const float16_t*>(p))); }
constexpr int64_t kHalfLanes = 4;
#endif

// dst[0, n) = src[0, n) as floats, n a multiple of 8 (vectorised where the TU's ISA has a conversion).
inline void halves_to_floats(const Half* src, int64_t n, float* dst) {
#if defined(__F16C__)
  for (int64_t i = 0; i < n; i += kHalfLanes) _mm256_storeu_ps(dst + i, load_halves(src + i));
#elif defined(__aarch64__)
  for (int64_t i = 0; i < n; i += kHalfLanes) vst1q_f32(dst + i, load_halves(src + i));
#else
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<float>(src[i]);
#endif
}

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
  std::vector<float> sub_scale;   // the activation scale of each sub-block's block
  std::vector<int32_t> block_zero;  // Z * (sum of q over each block): the zero point's share of a block's dot

  // The int8 value of element i.
  int quantized(int64_t i, int bits) const {
    if (bits == 8) return natural[i];
    const int64_t s = i / kSubBlock, within = i % kSubBlock;
    return (within & 1) ? odd[s * 16 + within / 2] : even[s * 16 + within / 2];
  }
};

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
  if (bits == 4) {
    out.even.assign(static_cast<size_t>(padded * 16), 0);
    out.odd.assign(static_cast<size_t>(padded * 16), 0);
    for (int64_t s = 0; s < n_sub; ++s) {
      for (int j = 0; j < 16; ++j) {
        out.even[s * 16 + j] = q[s * 32 + 2 * j];
        out.odd[s * 16 + j] = q[s * 32 + 2 * j + 1];
      }
    }
  } else {
    out.natural = q;
  }
}

// A byte buffer aligned to cache lines, so a tile's 64-byte loads never straddle two.
class AlignedBytes {
 public:
  void assign(size_t n, uint8_t value) {
    if (n > capacity_) {
      data_.reset(static_cast<uint8_t*>(::operator new[](n, std::align_val_t(kAlignment))));
      capacity_ = n;
    }
    std::memset(data_.get(), value, n);
  }
  uint8_t* data() { return data_.get(); }
  const uint8_t* data() const { return data_.get(); }

 private:
  static constexpr size_t kAlignment = 64;
  struct Free {
    void operator()(uint8_t* p) const { ::operator delete[](p, std::align_val_t(kAlignment)); }
  };
  std::unique_ptr<uint8_t[], Free> data_;
  size_t capacity_ = 0;
};

constexpr int64_t kTileRows = 16;  // lanes of a tile: gate/up rows, or down outputs per half-window

// The gate and up rows of k neurons idx repacked into tiles of 16 rows (layout: quant_decode.h), padded
// with zero rows to k_pad (a multiple of 16), so one SIMD register covers 16 rows with no horizontal
// sums. The sparse decode packs a prompt's kept neurons once (DecodePack); the dense prefill packs
// every neuron, a few tiles at a time, each met by every token while it sits in L1 (ffn_up_quant).
//
// A tile is one run of bytes in the order the kernels read it, block after block: each block's
// sub-blocks (gate rows, then up rows), then its 16 gate and 16 up scales (float16). Tiles come in
// units of `unit_tiles`, each unit followed by `unit_extra` bytes a subclass fills (DecodePack: its
// neuron group's down rows), so a kernel walking the pack reads one forward stream, which software
// and hardware prefetchers keep ahead of it (separate arrays for codes and scales were 4-6 streams a
// thread; one stream made the decode FFN 15-20 % faster from DRAM, docs/quantization.md).
class GateUpTiles {
 public:
  // Rebuilds in place (the buffer is reused).
  void assign(const QuantRows& gate_up, const int64_t* idx, int64_t count, int64_t padded, int64_t unit_tiles = 1,
              int64_t unit_extra = 0) {
    k = count;
    k_pad = padded;
    d = gate_up.cols;
    block = gate_up.block;
    bits = gate_up.bits;
    unit_tiles_ = unit_tiles;
    unit_bytes_ = unit_tiles * tile_bytes() + unit_extra;
    const int64_t R = row_sub_bytes(), spb = subs_per_block(), nb = blocks();
    bytes_.assign(static_cast<size_t>((tiles() + unit_tiles - 1) / unit_tiles * unit_bytes_), 0);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t r = j % kTileRows;
      const uint8_t* tile = tile_start(j / kTileRows);
      for (int half = 0; half < 2; ++half) {
        const uint8_t* row = gate_up.row(2 * idx[j] + half);
        const float* scales = gate_up.row_scales(2 * idx[j] + half);
        for (int64_t g = 0; g < nb; ++g) {
          const uint8_t* block = tile + g * block_bytes();
          for (int64_t i = 0; i < spb; ++i) {
            uint8_t* codes = mutable_bytes(block_codes(block, i, half));
            const uint8_t* source = row + (g * spb + i) * R;
            for (int64_t p = 0; p < R / 4; ++p) std::copy_n(source + 4 * p, 4, codes + 64 * p + 4 * r);
          }
          const Half scale = static_cast<Half>(scales[g]);
          std::memcpy(mutable_bytes(block_scales(block, half) + r), &scale, sizeof(scale));
        }
      }
    }
  }

  int64_t k = 0, k_pad = 0, d = 0, block = 32;
  int bits = 4;

  int64_t row_sub_bytes() const { return kSubBlock * bits / 8; }
  int64_t blocks() const { return d / block; }
  int64_t tiles() const { return k_pad / kTileRows; }
  int64_t subs_per_block() const { return block / kSubBlock; }
  // One block of a tile: its codes (both halves), then its scales.
  int64_t block_code_bytes() const { return subs_per_block() * 2 * kTileRows * row_sub_bytes(); }
  int64_t block_bytes() const { return block_code_bytes() + 2 * kTileRows * static_cast<int64_t>(sizeof(Half)); }
  int64_t tile_bytes() const { return blocks() * block_bytes(); }

  // Tile t, blocks() blocks of block_bytes() (the kernels step from block to block, no division).
  const uint8_t* tile_start(int64_t t) const {
    return bytes_.data() + (t / unit_tiles_) * unit_bytes_ + (t % unit_tiles_) * tile_bytes();
  }
  const uint8_t* block_start(int64_t t, int64_t g) const { return tile_start(t) + g * block_bytes(); }
  // 16 R bytes of a block: its sub-block i's gate (half 0) or up (half 1) rows.
  const uint8_t* block_codes(const uint8_t* block, int64_t i, int half) const {
    return block + (i * 2 + half) * kTileRows * row_sub_bytes();
  }
  // 16 float16s of a block: its gate (half 0) or up (half 1) rows' scales.
  const Half* block_scales(const uint8_t* block, int half) const {
    return reinterpret_cast<const Half*>(block + block_code_bytes()) + half * kTileRows;
  }
  // The same by tile and index (portable paths, packing): sub-block s of tile t's gate or up rows,
  // and the scales of its block g.
  const uint8_t* gate_up_tile(int64_t t, int half, int64_t s) const {
    const int64_t spb = subs_per_block(), g = s / spb;
    return block_codes(block_start(t, g), s - g * spb, half);
  }
  const Half* gate_up_scales(int64_t t, int half, int64_t g) const { return block_scales(block_start(t, g), half); }
  // The code of element i of row r of tile t, half (portable paths).
  int gate_up_code(int64_t t, int half, int64_t r, int64_t i) const {
    const int64_t within = i % kSubBlock, byte = bits == 4 ? within / 2 : within;
    const uint8_t value = gate_up_tile(t, half, i / kSubBlock)[64 * (byte / 4) + 4 * r + byte % 4];
    return bits == 8 ? value : (within & 1) ? value >> 4 : value & 0x0F;
  }

 protected:
  // The unit_extra bytes after unit u's tiles.
  const uint8_t* unit_extra(int64_t u) const { return bytes_.data() + u * unit_bytes_ + unit_tiles_ * tile_bytes(); }
  uint8_t* mutable_bytes(const void* p) { return bytes_.data() + (static_cast<const uint8_t*>(p) - bytes_.data()); }

 private:
  int64_t unit_tiles_ = 1, unit_bytes_ = 0;
  AlignedBytes bytes_;
};

// --- packs kept between calls (a DecodePack per kept set, a RowsPack per tied table) ---------------

// A pack's fingerprint of its source: a few rows' first bytes and first scale, read at every call (so
// small), enough to tell other weights at a reused address from the packed ones.
constexpr int64_t kSampleBytes = 16;
constexpr size_t kRowSampleSize = kSampleBytes + sizeof(float);

// Writes row r's sample at `at`; returns the end.
inline uint8_t* append_row_sample(const QuantRows& rows, int64_t r, uint8_t* at) {
  at = std::copy_n(rows.row(r), std::min<int64_t>(kSampleBytes, rows.row_bytes()), at);
  return std::copy_n(reinterpret_cast<const uint8_t*>(rows.row_scales(r)), sizeof(float), at);
}

// The Pack of each weight a program's kernels are called with, for runtimes whose kernels keep no state
// of their own (ExecuTorch): one entry per weight, keyed by the address of its first argument's codes,
// rebuilt from get()'s arguments when Pack::holds(arguments) says they are no longer what it packed.
template <typename Pack, size_t kMaxEntries>
class PackCache {
 public:
  template <typename... Rest>
  std::shared_ptr<const Pack> get(const QuantRows& rows, const Rest&... rest) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (entries_.size() > kMaxEntries) entries_.clear();  // programs came and went: start over
    auto& entry = entries_[rows.codes];
    if (entry == nullptr || !entry->holds(rows, rest...)) entry = std::make_shared<const Pack>(rows, rest...);
    return entry;
  }

 private:
  std::mutex mutex_;
  std::unordered_map<const uint8_t*, std::shared_ptr<const Pack>> entries_;
};

class DecodePack;  // quant_decode.h
struct GroupCoefs;

// The primitives every SIMD variant implements.
struct QuantKernels {
  const char* name;
  // Int8 accuracy: gate . x_n and up . x_n of tokens x[0, n_tokens) and the neurons of tiles [t0, t1),
  // into gate[16 (t1 - t0) n + 16 (t - t0) + r] and up[...]: the sparse decode's kept neurons
  // (quant_decode.h; one token), the dense prefill's all (several tokens share each pass over a tile).
  // Each token's values are the same bits however many tokens a call takes.
  void (*gate_up_tiles)(const GateUpTiles& pack, const PreparedX* x, int64_t n_tokens, int64_t t0, int64_t t1,
                        float* gate, float* up);
  // Neuron group J's int8 down coefficients from its 32 activations z: GroupCoefs::compute's values,
  // bit for bit (the same float products, block maxima and round-half-even conversion).
  void (*group_coefs)(const DecodePack& pack, int64_t J, const float* z, GroupCoefs& out);
  // acc[0, d) += neuron group J's share of the down projection, from its int8 coefficients.
  void (*down_group)(const DecodePack& pack, const GroupCoefs& coefs, int64_t J, float* acc);
  // Dense prefill's down projection over dequantised rows (dense_tile.h), width a multiple of 32:
  // y[t * y_stride + c] += sum over r < n_rows of z[t * z_stride + r] * rows[r * width + c].
  void (*madd_rows)(const float* z, int64_t z_stride, int64_t n_tokens, const float* rows, int64_t n_rows,
                    int64_t width, float* y, int64_t y_stride);
  // z[i] = act(gate[i]) * up[i], i < n (activation_vector.h; the scalar variant: glass::activate).
  void (*activate_product)(Activation act, const float* gate, const float* up, float* z, int64_t n);
};

// QuantKernels::gate_up_tiles from a kernel of one token: token after token.
using GateUpTilesOfOne = void (*)(const GateUpTiles& pack, const PreparedX& x, int64_t t0, int64_t t1, float* gate,
                                  float* up);
template <GateUpTilesOfOne kernel>
void gate_up_tiles_each_token(const GateUpTiles& pack, const PreparedX* x, int64_t n_tokens, int64_t t0, int64_t t1,
                              float* gate, float* up) {
  const int64_t stride = (t1 - t0) * kTileRows;
  for (int64_t n = 0; n < n_tokens; ++n) kernel(pack, x[n], t0, t1, gate + n * stride, up + n * stride);
}

// --- portable scalar versions (the reference) ---------------------------------------------

inline void activate_product_scalar(Activation act, const float* gate, const float* up, float* z, int64_t n) {
  for (int64_t i = 0; i < n; ++i) z[i] = activate(act, gate[i]) * up[i];
}

inline int code_at(const uint8_t* row, int bits, int64_t i) {
  if (bits == 8) return row[i];
  const uint8_t byte = row[i >> 1];
  return (i & 1) ? (byte >> 4) : (byte & 0x0F);
}

inline void madd_rows_scalar(const float* z, int64_t z_stride, int64_t n_tokens, const float* rows, int64_t n_rows,
                             int64_t width, float* y, int64_t y_stride) {
  for (int64_t t = 0; t < n_tokens; ++t) {
    for (int64_t r = 0; r < n_rows; ++r) {
      for (int64_t c = 0; c < width; ++c) y[t * y_stride + c] += z[t * z_stride + r] * rows[r * width + c];
    }
  }
}

// Float32 accuracy: the dequantised row dotted with the float x (not on the int8 fast path).
inline float dot_float(const uint8_t* row, const float* scales, const float* x, int64_t cols, int bits,
                       int64_t block) {
  const int z = zero_point(bits);
  float acc = 0.0f;
  for (int64_t g = 0; g < cols / block; ++g) {
    float part = 0.0f;
    for (int64_t i = g * block; i < (g + 1) * block; ++i) part += x[i] * static_cast<float>(code_at(row, bits, i) - z);
    acc += part * scale_value(scales[g]);
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

inline std::vector<PreparedX> prepare_tokens(const float* x, int64_t n_tokens, const QuantRows& rows,
                                             Accuracy accuracy) {
  std::vector<PreparedX> prepared(static_cast<size_t>(n_tokens));
  for (int64_t t = 0; t < n_tokens; ++t) prepare_x(x + t * rows.cols, rows.cols, rows.bits, rows.block, accuracy, prepared[t]);
  return prepared;
}

// Neurons the dense prefill packs at a time (ffn_up_quant): their tiles (18 KB of 4-bit codes for
// SmolLM2's d = 576) stay in L1 while every token meets them, up to kPrefillTokens tokens a kernel call.
constexpr int64_t kPrefillTileNeurons = 32;
constexpr int64_t kPrefillTokens = 32;

// Dense prefill, first half: z [n_tokens, m] = act(x . gate_i) * (x . up_i) for every neuron.
template <typename ParallelFor>
void ffn_up_quant(const float* x, int64_t n_tokens, const QuantRows& gate_up, int64_t m, Activation act,
                  Accuracy accuracy, float* z, int64_t n_tasks, const ParallelFor& parallel_for) {
  if (accuracy == Accuracy::Int8) {
    const QuantKernels& kernels = quant_kernels();
    const std::vector<PreparedX> prepared = prepare_tokens(x, n_tokens, gate_up, accuracy);
    // In tiles, as the decode: a row-at-a-time kernel unpacked every row again for every token and
    // summed lanes horizontally (2x slower over a 50-token prompt).
    const int64_t chunks = (m + kPrefillTileNeurons - 1) / kPrefillTileNeurons;
    for_each_task(chunks, n_tasks, parallel_for, [&](int64_t, int64_t begin, int64_t end) {
      GateUpTiles tiles;
      int64_t idx[kPrefillTileNeurons];
      float gate[kPrefillTokens * kPrefillTileNeurons], up[kPrefillTokens * kPrefillTileNeurons];
      for (int64_t c = begin; c < end; ++c) {
        const int64_t first = c * kPrefillTileNeurons, count = std::min(kPrefillTileNeurons, m - first);
        for (int64_t j = 0; j < count; ++j) idx[j] = first + j;
        tiles.assign(gate_up, idx, count, (count + kTileRows - 1) / kTileRows * kTileRows);
        const int64_t rows = tiles.tiles() * kTileRows;
        for (int64_t t0 = 0; t0 < n_tokens; t0 += kPrefillTokens) {
          const int64_t n = std::min(kPrefillTokens, n_tokens - t0);
          kernels.gate_up_tiles(tiles, prepared.data() + t0, n, 0, tiles.tiles(), gate, up);
          for (int64_t t = 0; t < n; ++t) {
            kernels.activate_product(act, gate + t * rows, up + t * rows, z + (t0 + t) * m + first, count);
          }
        }
      }
    });
    return;
  }
  // Float32 accuracy: the dequantised rows against the float x (not on the fast path).
  for_each_task(m, n_tasks, parallel_for, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t t = 0; t < n_tokens; ++t) {
        const float* xt = x + t * gate_up.cols;
        const float g = dot_float(gate_up.row(2 * i), gate_up.row_scales(2 * i), xt, gate_up.cols, gate_up.bits, gate_up.block);
        const float u = dot_float(gate_up.row(2 * i + 1), gate_up.row_scales(2 * i + 1), xt, gate_up.cols, gate_up.bits,
                                  gate_up.block);
        z[t * m + i] = activate(act, g) * u;
      }
    }
  });
}

// Columns [c0, c1) of row r as floats, out[i - c0] = scale * (u_i - Z); c0 and c1 multiples of 32.
// (Sub-block by sub-block with one scale, so the compiler vectorises it.)
inline void dequantize_cols(const QuantRows& rows, int64_t r, int64_t c0, int64_t c1, float* out) {
  const uint8_t* codes = rows.row(r);
  const float* scales = rows.row_scales(r);
  const float z = static_cast<float>(zero_point(rows.bits));
  for (int64_t s = c0; s < c1; s += kSubBlock) {
    const float scale = scale_value(scales[s / rows.block]);
    float* o = out + (s - c0);
    if (rows.bits == 4) {
      const uint8_t* bytes = codes + s / 2;
#pragma omp simd
      for (int j = 0; j < 16; ++j) {
        o[2 * j] = scale * (static_cast<float>(bytes[j] & 0x0F) - z);
        o[2 * j + 1] = scale * (static_cast<float>(bytes[j] >> 4) - z);
      }
    } else {
      const uint8_t* bytes = codes + s;
#pragma omp simd
      for (int j = 0; j < 32; ++j) o[j] = scale * (static_cast<float>(bytes[j]) - z);
    }
  }
}

// Rows dequantised per pass of the micro-kernel: 64 x (a task's columns) floats stay in L2.
constexpr int64_t kDownChunkRows = 64;

// Dense second half: y [n_tokens, d] = z [n_tokens, m] . dequantised down rows (a prefill; decode
// never calls this). Each row is decoded once into floats and madd_rows adds every token's share
// with float multiply-adds. Tasks split the output columns (in sub-blocks), so each writes its own
// part of y: no partial sums.
template <typename ParallelFor>
void ffn_down_quant(const float* z, int64_t n_tokens, int64_t m, const QuantRows& down, float* y, int64_t n_tasks,
                    const ParallelFor& parallel_for) {
  const QuantKernels& kernels = quant_kernels();
  const int64_t d = down.cols;
  std::fill_n(y, n_tokens * d, 0.0f);
  for_each_task(d / kSubBlock, n_tasks, parallel_for, [&](int64_t, int64_t begin, int64_t end) {
    if (begin == end) return;
    const int64_t c0 = begin * kSubBlock, width = (end - begin) * kSubBlock;
    std::vector<float> rows(static_cast<size_t>(kDownChunkRows * width));
    for (int64_t r0 = 0; r0 < m; r0 += kDownChunkRows) {
      const int64_t n = std::min(kDownChunkRows, m - r0);
      for (int64_t r = 0; r < n; ++r) dequantize_cols(down, r0 + r, c0, c0 + width, rows.data() + r * width);
      kernels.madd_rows(z + r0, m, n_tokens, rows.data(), n, width, y + c0, d);
    }
  });
}

}  // namespace glass
