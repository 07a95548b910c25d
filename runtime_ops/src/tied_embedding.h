// A tied embedding's two readers in ExecuTorch programs, so the program stores the table E [V, d] once
// (ONNX Runtime's stock GatherBlockQuantized and MatMulNBits already read one tensor; in an ExecuTorch
// program XNNPACK's LM head would keep a packed copy of its own):
//   linear_rows*:   the LM head, logits [T, V] = x [T, d] . E^T, fp32 or quantised rows (quant_ffn.h's
//                   format and accuracy levels: at Int8, x quantised per block as MatMulNBits does);
//   embedding_quant: the lookup of quantised rows by token id (fp32 tables use the stock embedding op).
// Semantics: glass_ops/torch_ops.py (linear_rows, linear_rows_q, embedding_q).
#pragma once

#include <array>

#include "quant_ffn.h"

namespace glass {

// logits [n_tokens, rows] = x [n_tokens, d] . w [rows, d]^T: two rows per pass over x (an odd last row
// is read twice and written once), four tokens per pass over the rows.
template <typename ParallelFor>
void linear_rows_f32(const float* x, int64_t n_tokens, int64_t d, const float* w, int64_t rows, float* out,
                     int64_t n_tasks, const ParallelFor& parallel_for) {
  constexpr int kBlock = 4;
  for_each_task((rows + 1) / 2, n_tasks, parallel_for, [&](int64_t, int64_t begin, int64_t end) {
    float a[kBlock], b[kBlock];
    for (int64_t p = begin; p < end; ++p) {
      const int64_t r = 2 * p;
      const float* first = w + r * d;
      const float* second = r + 1 < rows ? first + d : first;
      for (int64_t t0 = 0; t0 < n_tokens; t0 += kBlock) {
        const int64_t nt = std::min<int64_t>(kBlock, n_tokens - t0);
        const float* xt = x + t0 * d;
        switch (nt) {
          case 4: dot2_tokens<4>(xt, d, first, second, a, b); break;
          case 3: dot2_tokens<3>(xt, d, first, second, a, b); break;
          case 2: dot2_tokens<2>(xt, d, first, second, a, b); break;
          default: dot2(xt, first, second, d, a, b); break;
        }
        for (int64_t t = 0; t < nt; ++t) {
          out[(t0 + t) * rows + r] = a[t];
          if (r + 1 < rows) out[(t0 + t) * rows + r + 1] = b[t];
        }
      }
    }
  });
}

// Every row of a quantised table in gate/up tiles (quant_ffn.h), rows 2j and 2j + 1 standing as
// "neuron" j's gate and up rows, so the tiled int8 kernels of the FFN serve the LM head. Packed once
// per table and kept (the LM head meets every row at every step); an even row count is required.
class RowsPack : public GateUpTiles {
 public:
  RowsPack(const QuantRows& rows, int64_t n_rows) : source_(rows.codes), n_rows_(n_rows), sample_(sample(rows, n_rows)) {
    const int64_t pairs = n_rows / 2;
    std::vector<int64_t> idx(static_cast<size_t>(pairs));
    for (int64_t j = 0; j < pairs; ++j) idx[j] = j;
    assign(rows, idx.data(), pairs, (pairs + kTileRows - 1) / kTileRows * kTileRows);
  }

  // Same address, same row count and the sampled bytes unchanged (other weights at a reused address differ).
  bool holds(const QuantRows& rows, int64_t n_rows) const {
    return rows.codes == source_ && n_rows == n_rows_ && sample(rows, n_rows) == sample_;
  }

 private:
  // The first and last rows' samples.
  using Sample = std::array<uint8_t, 2 * kRowSampleSize>;
  static Sample sample(const QuantRows& rows, int64_t n_rows) {
    Sample bytes{};
    append_row_sample(rows, n_rows - 1, append_row_sample(rows, 0, bytes.data()));
    return bytes;
  }

  const uint8_t* source_;
  int64_t n_rows_;
  Sample sample_;
};

// The RowsPack of each table a program reads (ExecuTorch).
using RowsPackCache = PackCache<RowsPack, 16>;

// Tiles per kernel call (Int8): one token streams long runs; several tokens share passes of 2 tiles
// (64 rows, 18 KB of 4-bit codes at d = 576) that stay in L1 while every token meets them.
constexpr int64_t kRowsRunTiles = 64;
constexpr int64_t kRowsPassTiles = 2;

// logits [n_tokens, n_rows] = x . (the dequantised rows)^T. `pack`: RowsPack of rows (Int8 accuracy only).
template <typename ParallelFor>
void linear_rows_quant(const float* x, int64_t n_tokens, const QuantRows& rows, int64_t n_rows, const RowsPack* pack,
                       Accuracy accuracy, float* out, int64_t n_tasks, const ParallelFor& parallel_for) {
  if (accuracy == Accuracy::Int8) {
    const QuantKernels& kernels = quant_kernels();
    const std::vector<PreparedX> prepared = prepare_tokens(x, n_tokens, rows, accuracy);
    for_each_task(pack->tiles(), n_tasks, parallel_for, [&](int64_t, int64_t begin, int64_t end) {
      const int64_t step = n_tokens == 1 ? kRowsRunTiles : kRowsPassTiles;
      const int64_t tokens_a_call = kRowsRunTiles / step;  // what the buffers below hold
      float even[kTileRows * kRowsRunTiles], odd[kTileRows * kRowsRunTiles];
      for (int64_t t0 = begin; t0 < end; t0 += step) {
        const int64_t t1 = std::min(end, t0 + step), rows = (t1 - t0) * kTileRows;
        const int64_t first = t0 * kTileRows, count = std::min(rows, pack->k - first);
        for (int64_t n0 = 0; n0 < n_tokens; n0 += tokens_a_call) {
          const int64_t n = std::min(tokens_a_call, n_tokens - n0);
          kernels.gate_up_tiles(*pack, prepared.data() + n0, n, t0, t1, even, odd);
          for (int64_t t = 0; t < n; ++t) {
            float* logits = out + (n0 + t) * n_rows + 2 * first;
            for (int64_t j = 0; j < count; ++j) {
              logits[2 * j] = even[t * rows + j];
              logits[2 * j + 1] = odd[t * rows + j];
            }
          }
        }
      }
    });
    return;
  }
  // Float32 accuracy: the dequantised rows against the float x (not on the fast path).
  for_each_task(n_rows, n_tasks, parallel_for, [&](int64_t, int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      for (int64_t t = 0; t < n_tokens; ++t) {
        out[t * n_rows + r] = dot_float(rows.row(r), rows.row_scales(r), x + t * rows.cols, rows.cols, rows.bits, rows.block);
      }
    }
  });
}

// out [n, cols] = the dequantised rows ids (ids checked by the caller: check_indices).
inline void embedding_quant(const int64_t* ids, int64_t n, const QuantRows& rows, float* out) {
  for (int64_t i = 0; i < n; ++i) dequantize_cols(rows, ids[i], 0, rows.cols, out + i * rows.cols);
}

}  // namespace glass
