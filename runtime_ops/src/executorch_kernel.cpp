// ExecuTorch kernels for the glass ops, registered with EXECUTORCH_LIBRARY:
//   glass::gather_ffn.out  decode FFN over the kept neurons
//   glass::ffn_up.out      dense prefill, first half: z = act(x W_gate^T) * (x W_up^T)
//   glass::ffn_down.out    dense prefill, second half: y = z W_down^T (w_down_t [m, d])
//   glass::norm_gather_ffn_q.out, glass::ffn_up_q.out, glass::ffn_down_q.out: the same over quantised
//                          rows (quant_ffn.h, quant_decode.h; semantics in glass_ops/torch_ops.py), the
//                          decode FFN with its RMSNorm folded in (rms_norm.h) and reading its layer's row of
//                          the kept indices; glass::residual_norm_gather_ffn_q.out adds the layer's residual x
//   glass::rms_norm.out    transformers' RMSNorm (rms_norm.h), every norm of an ExecuTorch program's graphs
//   glass::normalised_square_sum.out  the prefill's float64 local statistic of one layer
//   glass::linear_rows.out, glass::linear_rows_q.out, glass::embedding_q.out: a tied embedding's LM head
//                          and (quantised) lookup over the one stored table (tied_embedding.h)
//   glass::rope.out        transformers' rotary embedding of the queries or keys (rope.h)
//   glass::select_kept.out the prefill's kept neurons of every layer from local scores and prior ranks
//                          (select_kept.h)
// Each family reads the same neuron-contiguous tensors, so a program stores them once.
// Every shape, dtype and index is checked; a bad one fails the method with a message.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include <cmath>
#include <string>
#include <vector>

#include "gather_ffn.h"
#include "quant_decode.h"
#include "rms_norm.h"
#include "rope.h"
#include "select_kept.h"
#include "tied_embedding.h"

namespace glass_et {

using executorch::aten::ScalarType;
using executorch::aten::SizesType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;
using executorch::runtime::tensor_is_contiguous;

// ExecuTorch's own thread pool (the pthreadpool XNNPACK uses), so the FFN shares threads
// with the delegated parts of the graph instead of competing with them.
struct ExecuTorchFor {
  template <typename F>
  void operator()(int64_t n, const F& f) const {
    executorch::extension::parallel_for(0, n, 1, f);
  }
};

// Tasks per call: enough to balance the big cores of a phone, each with a private output buffer.
constexpr int64_t kMaxTasks = 8;

bool float_and_contiguous(std::initializer_list<const Tensor*> tensors) {
  for (const Tensor* t : tensors) {
    if (t->scalar_type() != ScalarType::Float || !tensor_is_contiguous(*t)) return false;
  }
  return true;
}

// out gets the input's shape with the last dimension replaced by `last`.
Error resize_last_dim(const Tensor& input, int64_t last, Tensor& out) {
  std::vector<SizesType> sizes(input.sizes().begin(), input.sizes().end());
  sizes.back() = static_cast<SizesType>(last);
  return executorch::runtime::resize_tensor(out, {sizes.data(), sizes.size()});
}

#define GLASS_CHECK(cond, ...) ET_KERNEL_CHECK_MSG(ctx, cond, InvalidArgument, out, __VA_ARGS__)

Tensor& gather_ffn_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& w_gate_up, const Tensor& w_down_t,
                       const Tensor& idx, int64_t activation, Tensor& out) {
  GLASS_CHECK(float_and_contiguous({&x, &w_gate_up, &w_down_t, &out}),
              "glass::gather_ffn: x, weights and out must be contiguous float32");
  GLASS_CHECK(idx.scalar_type() == ScalarType::Long && idx.dim() == 1 && tensor_is_contiguous(idx),
              "glass::gather_ffn: idx must be a contiguous int64 [k]");
  GLASS_CHECK(glass::valid_activation(activation), "glass::gather_ffn: activation must be 0 (silu) or 1 (gelu_tanh)");
  GLASS_CHECK(w_gate_up.dim() == 3 && w_gate_up.size(1) == 2 && w_down_t.dim() == 2 && x.dim() >= 1,
              "glass::gather_ffn: expected w_gate_up [m, 2, d], w_down_t [m, d], x [..., d]");
  const int64_t m = w_gate_up.size(0), d = w_gate_up.size(2), k = idx.size(0), tokens = x.numel() / d;
  GLASS_CHECK(w_down_t.size(0) == m && w_down_t.size(1) == d && x.size(x.dim() - 1) == d,
              "glass::gather_ffn: x, w_gate_up and w_down_t disagree on m or d");
  GLASS_CHECK(resize_last_dim(x, d, out) == Error::Ok, "glass::gather_ffn: cannot resize out");
  const int64_t* indices = idx.const_data_ptr<int64_t>();
  const std::string bad = glass::check_indices(indices, k, m);
  GLASS_CHECK(bad.empty(), "%s", bad.c_str());
  glass::gather_ffn_f32(x.const_data_ptr<float>(), tokens, d, w_gate_up.const_data_ptr<float>(),
                        w_down_t.const_data_ptr<float>(), indices, k, static_cast<glass::Activation>(activation),
                        out.mutable_data_ptr<float>(), glass::task_count_for(k, kMaxTasks, tokens * d),
                        ExecuTorchFor{});
  return out;
}

Tensor& ffn_up_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& w_gate_up, int64_t activation,
                   Tensor& out) {
  GLASS_CHECK(float_and_contiguous({&x, &w_gate_up, &out}), "glass::ffn_up: x, w_gate_up and out must be contiguous float32");
  GLASS_CHECK(glass::valid_activation(activation), "glass::ffn_up: activation must be 0 (silu) or 1 (gelu_tanh)");
  GLASS_CHECK(w_gate_up.dim() == 3 && w_gate_up.size(1) == 2 && x.dim() >= 1 && x.size(x.dim() - 1) == w_gate_up.size(2),
              "glass::ffn_up: expected w_gate_up [m, 2, d] and x [..., d]");
  const int64_t m = w_gate_up.size(0), d = w_gate_up.size(2);
  GLASS_CHECK(resize_last_dim(x, m, out) == Error::Ok, "glass::ffn_up: cannot resize out");
  glass::ffn_up_f32(x.const_data_ptr<float>(), x.numel() / d, d, w_gate_up.const_data_ptr<float>(), m,
                    static_cast<glass::Activation>(activation), out.mutable_data_ptr<float>(),
                    glass::task_count_for(m, kMaxTasks, 0), ExecuTorchFor{});
  return out;
}

Tensor& ffn_down_out(KernelRuntimeContext& ctx, const Tensor& z, const Tensor& w_down_t, Tensor& out) {
  GLASS_CHECK(float_and_contiguous({&z, &w_down_t, &out}), "glass::ffn_down: z, w_down_t and out must be contiguous float32");
  GLASS_CHECK(w_down_t.dim() == 2 && z.dim() >= 1 && z.size(z.dim() - 1) == w_down_t.size(0),
              "glass::ffn_down: expected w_down_t [m, d] and z [..., m]");
  const int64_t m = w_down_t.size(0), d = w_down_t.size(1), tokens = z.numel() / m;
  GLASS_CHECK(resize_last_dim(z, d, out) == Error::Ok, "glass::ffn_down: cannot resize out");
  glass::ffn_down_f32(z.const_data_ptr<float>(), tokens, m, w_down_t.const_data_ptr<float>(), d,
                      out.mutable_data_ptr<float>(), glass::task_count_for(m, kMaxTasks, tokens * d), ExecuTorchFor{});
  return out;
}

// Quantised rows: codes uint8 [rows, blocks, blob], scales float [rows, blocks].
bool quant_rows(const Tensor& codes, const Tensor& scales, int64_t bits, int64_t block, glass::QuantRows* out,
                std::string* error) {
  if (codes.scalar_type() != ScalarType::Byte || scales.scalar_type() != ScalarType::Float || codes.dim() != 3 ||
      !tensor_is_contiguous(codes) || !tensor_is_contiguous(scales) || scales.numel() != codes.size(0) * codes.size(1)) {
    *error = "codes must be contiguous uint8 [rows, blocks, blob] and scales float [rows, blocks]";
    return false;
  }
  *error = glass::check_quant_layout(bits, block, codes.size(1) * block);
  if (error->empty() && codes.size(2) != block * bits / 8) *error = "the codes' last dimension does not match block_size and bits";
  if (!error->empty()) return false;
  *out = glass::QuantRows{codes.const_data_ptr<uint8_t>(), scales.const_data_ptr<float>(), codes.size(1) * block,
                          static_cast<int>(bits), block};
  return true;
}

glass::DecodePackCache& decode_pack_cache() {
  static glass::DecodePackCache cache;
  return cache;
}

// The decode FFN of a layer over its kept neurons, from the residual stream x: y = FFN(rms_norm(x) * w)
// over row `layer` of indices [layers, k] (prefill's whole output, so the program selects no rows itself);
// with `residual`, y = x + FFN(...) (glass::residual_norm_gather_ffn_q: the layer's residual add as well).
Tensor& norm_gather_ffn_q(KernelRuntimeContext& ctx, const char* op, bool residual, const Tensor& x,
                          const Tensor& norm_weight, double norm_eps, const Tensor& gate_up, const Tensor& gate_up_scales,
                          const Tensor& down, const Tensor& down_scales, const Tensor& indices, int64_t layer,
                          int64_t activation, int64_t bits, int64_t block_size, int64_t accuracy_level, Tensor& out) {
  GLASS_CHECK(float_and_contiguous({&x, &norm_weight, &out}), "%s: x, norm_weight and out must be contiguous float32", op);
  GLASS_CHECK(indices.scalar_type() == ScalarType::Long && indices.dim() == 2 && tensor_is_contiguous(indices),
              "%s: indices must be a contiguous int64 [layers, k]", op);
  GLASS_CHECK(layer >= 0 && layer < indices.size(0), "%s: layer %lld is out of range [0, %lld)", op,
              static_cast<long long>(layer), static_cast<long long>(indices.size(0)));
  GLASS_CHECK(std::isfinite(norm_eps) && norm_eps >= 0, "%s: norm_eps must be finite and >= 0", op);
  GLASS_CHECK(glass::valid_activation(activation) && glass::valid_accuracy(accuracy_level),
              "%s: activation must be 0 or 1 and accuracy_level 1 or 4", op);
  GLASS_CHECK(gate_up.dim() == 3 && gate_up.size(0) % 2 == 0, "%s: gate_up must be [2m, blocks, blob]", op);
  const int64_t m = gate_up.size(0) / 2;
  glass::QuantRows gu, dn;
  std::string error;
  GLASS_CHECK(quant_rows(gate_up, gate_up_scales, bits, block_size, &gu, &error) &&
                  quant_rows(down, down_scales, bits, block_size, &dn, &error),
              "%s: %s", op, error.c_str());
  const int64_t d = gu.cols, k = indices.size(1);
  GLASS_CHECK(down.size(0) == m && dn.cols == d && x.dim() >= 1 && x.size(x.dim() - 1) == d &&
                  norm_weight.dim() == 1 && norm_weight.size(0) == d,
              "%s: x, norm_weight, gate_up and down disagree on m or d", op);
  GLASS_CHECK(resize_last_dim(x, d, out) == Error::Ok, "%s: cannot resize out", op);
  const int64_t* kept = indices.const_data_ptr<int64_t>() + layer * k;
  const std::string bad = glass::check_indices(kept, k, m, (std::string(op) + ": index").c_str());
  GLASS_CHECK(bad.empty(), "%s", bad.c_str());
  const int64_t tokens = x.numel() / d;
  thread_local std::vector<float> normed;  // the caller's thread normalises; the pool runs the FFN
  normed.resize(static_cast<size_t>(tokens * d));
  glass::rms_norm(x.const_data_ptr<float>(), tokens, d, norm_weight.const_data_ptr<float>(),
                  static_cast<float>(norm_eps), normed.data());
  const auto pack = decode_pack_cache().get(gu, dn, kept, k);
  float* y = out.mutable_data_ptr<float>();
  glass::gather_ffn_quant(normed.data(), tokens, *pack, static_cast<glass::Activation>(activation),
                          static_cast<glass::Accuracy>(accuracy_level), y,
                          glass::task_count_for(k, kMaxTasks, tokens * d), ExecuTorchFor{});
  if (residual) {
    const float* xs = x.const_data_ptr<float>();
    for (int64_t i = 0; i < tokens * d; ++i) y[i] = xs[i] + y[i];
  }
  return out;
}

Tensor& norm_gather_ffn_q_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& norm_weight, double norm_eps,
                              const Tensor& gate_up, const Tensor& gate_up_scales, const Tensor& down,
                              const Tensor& down_scales, const Tensor& indices, int64_t layer, int64_t activation,
                              int64_t bits, int64_t block_size, int64_t accuracy_level, Tensor& out) {
  return norm_gather_ffn_q(ctx, "glass::norm_gather_ffn_q", false, x, norm_weight, norm_eps, gate_up, gate_up_scales,
                           down, down_scales, indices, layer, activation, bits, block_size, accuracy_level, out);
}

Tensor& residual_norm_gather_ffn_q_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& norm_weight,
                                       double norm_eps, const Tensor& gate_up, const Tensor& gate_up_scales,
                                       const Tensor& down, const Tensor& down_scales, const Tensor& indices,
                                       int64_t layer, int64_t activation, int64_t bits, int64_t block_size,
                                       int64_t accuracy_level, Tensor& out) {
  return norm_gather_ffn_q(ctx, "glass::residual_norm_gather_ffn_q", true, x, norm_weight, norm_eps, gate_up,
                           gate_up_scales, down, down_scales, indices, layer, activation, bits, block_size,
                           accuracy_level, out);
}

// out = rms_norm(x) * weight over the last dimension (rms_norm.h; x [..., d], weight [d] with any offset folded in).
Tensor& rms_norm_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& weight, double eps, Tensor& out) {
  GLASS_CHECK(float_and_contiguous({&x, &weight, &out}), "glass::rms_norm: x, weight and out must be contiguous float32");
  GLASS_CHECK(x.dim() >= 1 && weight.dim() == 1 && x.size(x.dim() - 1) == weight.size(0),
              "glass::rms_norm: expected x [..., d] and weight [d]");
  GLASS_CHECK(std::isfinite(eps) && eps >= 0, "glass::rms_norm: eps must be finite and >= 0");
  GLASS_CHECK(executorch::runtime::resize_tensor(out, x.sizes()) == Error::Ok, "glass::rms_norm: cannot resize out");
  const int64_t d = weight.size(0);
  glass::rms_norm(x.const_data_ptr<float>(), d == 0 ? 0 : x.numel() / d, d, weight.const_data_ptr<float>(),
                  static_cast<float>(eps), out.mutable_data_ptr<float>());
  return out;
}

Tensor& ffn_up_q_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& gate_up, const Tensor& gate_up_scales,
                     int64_t activation, int64_t bits, int64_t block_size, int64_t accuracy_level, Tensor& out) {
  GLASS_CHECK(float_and_contiguous({&x, &out}), "glass::ffn_up_q: x and out must be contiguous float32");
  GLASS_CHECK(glass::valid_activation(activation) && glass::valid_accuracy(accuracy_level),
              "glass::ffn_up_q: activation must be 0 or 1 and accuracy_level 1 or 4");
  GLASS_CHECK(gate_up.dim() == 3 && gate_up.size(0) % 2 == 0, "glass::ffn_up_q: gate_up must be [2m, blocks, blob]");
  glass::QuantRows gu;
  std::string error;
  GLASS_CHECK(quant_rows(gate_up, gate_up_scales, bits, block_size, &gu, &error), "glass::ffn_up_q: %s", error.c_str());
  GLASS_CHECK(x.dim() >= 1 && x.size(x.dim() - 1) == gu.cols, "glass::ffn_up_q: x and gate_up disagree on d");
  const int64_t m = gate_up.size(0) / 2;
  GLASS_CHECK(resize_last_dim(x, m, out) == Error::Ok, "glass::ffn_up_q: cannot resize out");
  glass::ffn_up_quant(x.const_data_ptr<float>(), x.numel() / gu.cols, gu, m, static_cast<glass::Activation>(activation),
                      static_cast<glass::Accuracy>(accuracy_level), out.mutable_data_ptr<float>(),
                      glass::task_count_for(m, kMaxTasks, 0), ExecuTorchFor{});
  return out;
}

Tensor& ffn_down_q_out(KernelRuntimeContext& ctx, const Tensor& z, const Tensor& down, const Tensor& down_scales,
                       int64_t bits, int64_t block_size, Tensor& out) {
  GLASS_CHECK(float_and_contiguous({&z, &out}), "glass::ffn_down_q: z and out must be contiguous float32");
  glass::QuantRows dn;
  std::string error;
  GLASS_CHECK(quant_rows(down, down_scales, bits, block_size, &dn, &error), "glass::ffn_down_q: %s", error.c_str());
  const int64_t m = down.size(0);
  GLASS_CHECK(z.dim() >= 1 && z.size(z.dim() - 1) == m, "glass::ffn_down_q: z and down disagree on m");
  GLASS_CHECK(resize_last_dim(z, dn.cols, out) == Error::Ok, "glass::ffn_down_q: cannot resize out");
  const int64_t tokens = z.numel() / std::max<int64_t>(m, 1);
  glass::ffn_down_quant(z.const_data_ptr<float>(), tokens, m, dn, out.mutable_data_ptr<float>(),
                        glass::task_count_for(m, kMaxTasks, tokens * dn.cols), ExecuTorchFor{});
  return out;
}

// out [m] float64 = sum_t (z_t / ||z_t||)^2 over the rows of z [T, m] float32, in float64, a zero row
// contributing zero: GLASS's local statistic, defined by glass_ops/torch_ops.py normalised_square_sum.
Tensor& normalised_square_sum_out(KernelRuntimeContext& ctx, const Tensor& z, Tensor& out) {
  GLASS_CHECK(z.scalar_type() == ScalarType::Float && z.dim() == 2 && tensor_is_contiguous(z),
              "glass::normalised_square_sum: z must be a contiguous float32 [T, m]");
  GLASS_CHECK(out.scalar_type() == ScalarType::Double, "glass::normalised_square_sum: out must be float64");
  const int64_t tokens = z.size(0), m = z.size(1);
  const SizesType size = static_cast<SizesType>(m);
  GLASS_CHECK(executorch::runtime::resize_tensor(out, {&size, 1}) == Error::Ok,
              "glass::normalised_square_sum: cannot resize out");
  double* sums = out.mutable_data_ptr<double>();
  std::fill(sums, sums + m, 0.0);
  const float* rows = z.const_data_ptr<float>();
  for (int64_t t = 0; t < tokens; ++t) {
    const float* row = rows + t * m;
    double square = 0.0;
    for (int64_t j = 0; j < m; ++j) square += static_cast<double>(row[j]) * row[j];
    const double norm = std::sqrt(square);
    if (norm == 0.0) continue;
    for (int64_t j = 0; j < m; ++j) {
      const double normed = row[j] / norm;
      sums[j] += normed * normed;
    }
  }
  return out;
}

Tensor& linear_rows_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& weight, Tensor& out) {
  GLASS_CHECK(float_and_contiguous({&x, &weight, &out}), "glass::linear_rows: x, weight and out must be contiguous float32");
  GLASS_CHECK(weight.dim() == 2 && x.dim() >= 1 && x.size(x.dim() - 1) == weight.size(1),
              "glass::linear_rows: expected weight [rows, d] and x [..., d]");
  const int64_t rows = weight.size(0), d = weight.size(1);
  GLASS_CHECK(resize_last_dim(x, rows, out) == Error::Ok, "glass::linear_rows: cannot resize out");
  glass::linear_rows_f32(x.const_data_ptr<float>(), x.numel() / d, d, weight.const_data_ptr<float>(), rows,
                         out.mutable_data_ptr<float>(), glass::task_count_for((rows + 1) / 2, kMaxTasks, 0),
                         ExecuTorchFor{});
  return out;
}

glass::RowsPackCache& rows_pack_cache() {
  static glass::RowsPackCache cache;
  return cache;
}

Tensor& linear_rows_q_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& codes, const Tensor& scales,
                          int64_t bits, int64_t block_size, int64_t accuracy_level, Tensor& out) {
  GLASS_CHECK(float_and_contiguous({&x, &out}), "glass::linear_rows_q: x and out must be contiguous float32");
  GLASS_CHECK(glass::valid_accuracy(accuracy_level), "glass::linear_rows_q: accuracy_level must be 1 or 4");
  glass::QuantRows rows;
  std::string error;
  GLASS_CHECK(quant_rows(codes, scales, bits, block_size, &rows, &error), "glass::linear_rows_q: %s", error.c_str());
  const int64_t n_rows = codes.size(0);
  GLASS_CHECK(n_rows % 2 == 0, "glass::linear_rows_q: the row count must be even (rows are tiled in pairs)");
  GLASS_CHECK(x.dim() >= 1 && x.size(x.dim() - 1) == rows.cols, "glass::linear_rows_q: x and codes disagree on d");
  GLASS_CHECK(resize_last_dim(x, n_rows, out) == Error::Ok, "glass::linear_rows_q: cannot resize out");
  const auto accuracy = static_cast<glass::Accuracy>(accuracy_level);
  const auto pack = accuracy == glass::Accuracy::Int8 ? rows_pack_cache().get(rows, n_rows) : nullptr;
  const int64_t work = pack ? pack->tiles() : n_rows;
  glass::linear_rows_quant(x.const_data_ptr<float>(), x.numel() / rows.cols, rows, n_rows, pack.get(), accuracy,
                           out.mutable_data_ptr<float>(), glass::task_count_for(work, kMaxTasks, 0), ExecuTorchFor{});
  return out;
}

Tensor& embedding_q_out(KernelRuntimeContext& ctx, const Tensor& ids, const Tensor& codes, const Tensor& scales,
                        int64_t bits, int64_t block_size, Tensor& out) {
  GLASS_CHECK(ids.scalar_type() == ScalarType::Long && tensor_is_contiguous(ids),
              "glass::embedding_q: ids must be contiguous int64");
  GLASS_CHECK(out.scalar_type() == ScalarType::Float && tensor_is_contiguous(out),
              "glass::embedding_q: out must be contiguous float32");
  glass::QuantRows rows;
  std::string error;
  GLASS_CHECK(quant_rows(codes, scales, bits, block_size, &rows, &error), "glass::embedding_q: %s", error.c_str());
  std::vector<SizesType> sizes(ids.sizes().begin(), ids.sizes().end());
  sizes.push_back(static_cast<SizesType>(rows.cols));
  GLASS_CHECK(executorch::runtime::resize_tensor(out, {sizes.data(), sizes.size()}) == Error::Ok,
              "glass::embedding_q: cannot resize out");
  const int64_t* token_ids = ids.const_data_ptr<int64_t>();
  const std::string bad = glass::check_indices(token_ids, ids.numel(), codes.size(0), "glass::embedding_q: token id");
  GLASS_CHECK(bad.empty(), "%s", bad.c_str());
  glass::embedding_quant(token_ids, ids.numel(), rows, out.mutable_data_ptr<float>());
  return out;
}

// x [batch, heads, tokens, head_dim]; cos, sin [batch, tokens, head_dim]; out like x.
Tensor& rope_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& cos, const Tensor& sin, Tensor& out) {
  GLASS_CHECK(float_and_contiguous({&x, &cos, &sin, &out}), "glass::rope: x, cos, sin and out must be contiguous float32");
  GLASS_CHECK(x.dim() == 4 && cos.dim() == 3 && executorch::runtime::tensors_have_same_shape(cos, sin) &&
                  cos.size(0) == x.size(0) && cos.size(1) == x.size(2) && cos.size(2) == x.size(3) && x.size(3) % 2 == 0,
              "glass::rope: expected x [batch, heads, tokens, head_dim] (head_dim even) and cos, sin [batch, tokens, head_dim]");
  GLASS_CHECK(executorch::runtime::resize_tensor(out, x.sizes()) == Error::Ok, "glass::rope: cannot resize out");
  const int64_t heads = x.size(1), tokens = x.size(2), head_dim = x.size(3), row = heads * tokens * head_dim;
  for (int64_t b = 0; b < x.size(0); ++b) {
    glass::rotate_half_rope(x.const_data_ptr<float>() + b * row, heads, tokens, head_dim,
                            cos.const_data_ptr<float>() + b * tokens * head_dim,
                            sin.const_data_ptr<float>() + b * tokens * head_dim, out.mutable_data_ptr<float>() + b * row);
  }
  return out;
}

// out [layers, k] int64: each layer's kept neurons, ascending, from local [layers, m] float32 and the prior's
// ranks global_rank [layers, m] int64 (absent: all zero) fused with integer weights (select_kept.h).
Tensor& select_kept_out(KernelRuntimeContext& ctx, const Tensor& local, const executorch::aten::optional<Tensor>& global_rank,
                        int64_t local_weight, int64_t global_weight, int64_t k, Tensor& out) {
  constexpr int64_t kLimit = int64_t{1} << 20;  // weights and m below it keep every key under 2^61
  GLASS_CHECK(float_and_contiguous({&local}) && local.dim() == 2, "glass::select_kept: local must be a contiguous float32 [layers, m]");
  const int64_t layers = local.size(0), m = local.size(1);
  GLASS_CHECK(m < kLimit && local_weight >= 0 && local_weight < kLimit && global_weight >= 0 && global_weight < kLimit,
              "glass::select_kept: m, local_weight and global_weight must lie in [0, 2^20)");
  GLASS_CHECK(k >= 1 && k <= m, "glass::select_kept: k %lld is out of range [1, %lld]", static_cast<long long>(k),
              static_cast<long long>(m));
  const int64_t* ranks = nullptr;
  if (global_rank.has_value()) {
    const Tensor& g = global_rank.value();
    GLASS_CHECK(g.scalar_type() == ScalarType::Long && tensor_is_contiguous(g) &&
                    executorch::runtime::tensors_have_same_shape(g, local),
                "glass::select_kept: global_rank must be a contiguous int64 tensor of local's shape");
    ranks = g.const_data_ptr<int64_t>();
    const std::string bad = glass::check_indices(ranks, g.numel(), m, "glass::select_kept: global rank");
    GLASS_CHECK(bad.empty(), "%s", bad.c_str());
  }
  GLASS_CHECK(out.scalar_type() == ScalarType::Long && tensor_is_contiguous(out),
              "glass::select_kept: out must be a contiguous int64 tensor");
  const SizesType sizes[2] = {static_cast<SizesType>(layers), static_cast<SizesType>(k)};
  GLASS_CHECK(executorch::runtime::resize_tensor(out, {sizes, 2}) == Error::Ok, "glass::select_kept: cannot resize out");
  glass::select_kept(local.const_data_ptr<float>(), ranks, layers, m, local_weight, global_weight, k,
                     out.mutable_data_ptr<int64_t>(), ExecuTorchFor{});
  return out;
}

#undef GLASS_CHECK

}  // namespace glass_et

EXECUTORCH_LIBRARY(glass, "gather_ffn.out", glass_et::gather_ffn_out);
EXECUTORCH_LIBRARY(glass, "ffn_up.out", glass_et::ffn_up_out);
EXECUTORCH_LIBRARY(glass, "ffn_down.out", glass_et::ffn_down_out);
EXECUTORCH_LIBRARY(glass, "norm_gather_ffn_q.out", glass_et::norm_gather_ffn_q_out);
EXECUTORCH_LIBRARY(glass, "residual_norm_gather_ffn_q.out", glass_et::residual_norm_gather_ffn_q_out);
EXECUTORCH_LIBRARY(glass, "rms_norm.out", glass_et::rms_norm_out);
EXECUTORCH_LIBRARY(glass, "ffn_up_q.out", glass_et::ffn_up_q_out);
EXECUTORCH_LIBRARY(glass, "ffn_down_q.out", glass_et::ffn_down_q_out);
EXECUTORCH_LIBRARY(glass, "normalised_square_sum.out", glass_et::normalised_square_sum_out);
EXECUTORCH_LIBRARY(glass, "linear_rows.out", glass_et::linear_rows_out);
EXECUTORCH_LIBRARY(glass, "linear_rows_q.out", glass_et::linear_rows_q_out);
EXECUTORCH_LIBRARY(glass, "embedding_q.out", glass_et::embedding_q_out);
EXECUTORCH_LIBRARY(glass, "rope.out", glass_et::rope_out);
EXECUTORCH_LIBRARY(glass, "select_kept.out", glass_et::select_kept_out);
