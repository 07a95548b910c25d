// ONNX Runtime kernels for the glass ops (glass_ops/onnx_ops.py), through ORT's lite custom-op API:
//   GatherFFN  (x [..., d], w_gate_up [m, 2, d], w_down_t [m, d], idx [k]; activation)      fp32 decode
//   GatherFFNQ (x, gate_up codes [2m, d/g, g*b/8], gate_up scales [2m, d/g], down codes [m, ...],
//               down scales [m, d/g], idx [k]; activation, bits, block_size, accuracy_level)  quantised decode
//   FFNDownQ   (z [..., m], down codes, down scales; bits, block_size)          quantised dense down projection
// Registered by SessionOptions.register_custom_ops_library; they replace the model-local function
// fallbacks. Need only ORT's headers (C API version 21, accepted by every newer runtime).
// Every shape, dtype and index is checked; a bad one returns an error status from Run.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#include <onnxruntime_lite_custom_op.h>
#undef ORT_API_MANUAL_INIT

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "gather_ffn.h"
#include "quant_decode.h"

namespace glass_ort {

// ORT's intra-op thread pool, so the FFN shares threads with the rest of the graph.
struct OrtFor {
  OrtKernelContext* context;

  template <typename F>
  void operator()(int64_t n, const F& f) const {
    Ort::KernelContext(context).ParallelFor(
        [](void* body, size_t task) { (*static_cast<const F*>(body))(static_cast<int64_t>(task), static_cast<int64_t>(task) + 1); },
        static_cast<size_t>(n), 0, const_cast<F*>(&f));
  }
};

constexpr int64_t kMaxTasks = 8;

Ort::Status invalid(const std::string& message) { return Ort::Status(message.c_str(), ORT_INVALID_ARGUMENT); }

struct GatherFFN {
  GatherFFN(const OrtApi*, const OrtKernelInfo* info) {
    activation_ = Ort::ConstKernelInfo(info).GetAttribute<int64_t>("activation");
  }

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<float>& x,
                      const Ort::Custom::Tensor<float>& w_gate_up, const Ort::Custom::Tensor<float>& w_down_t,
                      const Ort::Custom::Tensor<int64_t>& idx, Ort::Custom::Tensor<float>& y) {
    if (!glass::valid_activation(activation_)) return invalid("glass.GatherFFN: activation must be 0 (silu) or 1 (gelu_tanh)");
    const auto& gu = w_gate_up.Shape();
    const auto& dn = w_down_t.Shape();
    const auto& xs = x.Shape();
    if (gu.size() != 3 || gu[1] != 2 || dn.size() != 2 || xs.empty() || idx.Shape().size() != 1) {
      return invalid("glass.GatherFFN: expected x [..., d], w_gate_up [m, 2, d], w_down_t [m, d], idx [k]");
    }
    const int64_t m = gu[0], d = gu[2], k = idx.Shape()[0];
    if (dn[0] != m || dn[1] != d || xs.back() != d) {
      return invalid("glass.GatherFFN: x, w_gate_up and w_down_t disagree on m or d");
    }
    const int64_t* indices = idx.Data();
    const std::string bad = glass::check_indices(indices, k, m);
    if (!bad.empty()) return invalid(bad);
    const int64_t tokens = d == 0 ? 0 : x.NumberOfElement() / d;
    float* out = y.Allocate(xs);
    glass::gather_ffn_f32(x.Data(), tokens, d, w_gate_up.Data(), w_down_t.Data(), indices, k,
                          static_cast<glass::Activation>(activation_), out,
                          glass::task_count_for(k, kMaxTasks, tokens * d), OrtFor{context});
    return Ort::Status{nullptr};
  }

  int64_t activation_ = -1;
};

// Quantised rows [rows, blocks, blob] uint8 + scales [rows, blocks] float as glass::QuantRows, or a message.
std::string quant_rows(const Ort::Custom::Tensor<uint8_t>& codes, const Ort::Custom::Tensor<float>& scales,
                       int64_t rows, int64_t bits, int64_t block, glass::QuantRows* out) {
  const auto& cs = codes.Shape();
  const auto& ss = scales.Shape();
  if (cs.size() != 3 || cs[0] != rows) return "codes must be [rows, blocks, block * bits / 8]";
  const int64_t cols = cs[1] * block;
  const std::string layout = glass::check_quant_layout(bits, block, cols);
  if (!layout.empty()) return layout;
  if (cs[2] != block * bits / 8) return "the codes' last dimension does not match block_size and bits";
  if (scales.NumberOfElement() != rows * cs[1] || ss.empty() || ss[0] != rows) return "scales must be [rows, blocks]";
  *out = glass::QuantRows{codes.Data(), scales.Data(), cols, static_cast<int>(bits), block};
  return "";
}

struct QuantAttributes {
  int64_t bits = 0, block = 0, accuracy = 0;

  explicit QuantAttributes(const OrtKernelInfo* info) {
    Ort::ConstKernelInfo kernel_info(info);
    bits = kernel_info.GetAttribute<int64_t>("bits");
    block = kernel_info.GetAttribute<int64_t>("block_size");
    try {
      accuracy = kernel_info.GetAttribute<int64_t>("accuracy_level");
    } catch (const Ort::Exception&) {
      accuracy = 4;  // FFNDownQ has none: it multiplies float activations
    }
  }
};

struct GatherFFNQ {
  GatherFFNQ(const OrtApi*, const OrtKernelInfo* info) : attrs_(info) {
    activation_ = Ort::ConstKernelInfo(info).GetAttribute<int64_t>("activation");
  }

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<float>& x,
                      const Ort::Custom::Tensor<uint8_t>& gate_up, const Ort::Custom::Tensor<float>& gate_up_scales,
                      const Ort::Custom::Tensor<uint8_t>& down, const Ort::Custom::Tensor<float>& down_scales,
                      const Ort::Custom::Tensor<int64_t>& idx, Ort::Custom::Tensor<float>& y) {
    if (!glass::valid_activation(activation_)) return invalid("glass.GatherFFNQ: activation must be 0 (silu) or 1 (gelu_tanh)");
    if (!glass::valid_accuracy(attrs_.accuracy)) return invalid("glass.GatherFFNQ: accuracy_level must be 1 or 4");
    const auto& xs = x.Shape();
    if (xs.empty() || idx.Shape().size() != 1 || gate_up.Shape().size() != 3 || gate_up.Shape()[0] % 2 != 0) {
      return invalid("glass.GatherFFNQ: expected x [..., d], gate_up [2m, blocks, blob], idx [k]");
    }
    const int64_t m = gate_up.Shape()[0] / 2;
    glass::QuantRows gu, dn;
    std::string bad = quant_rows(gate_up, gate_up_scales, 2 * m, attrs_.bits, attrs_.block, &gu);
    if (bad.empty()) bad = quant_rows(down, down_scales, m, attrs_.bits, attrs_.block, &dn);
    if (!bad.empty()) return invalid("glass.GatherFFNQ: " + bad);
    const int64_t d = gu.cols, k = idx.Shape()[0];
    if (dn.cols != d || xs.back() != d) return invalid("glass.GatherFFNQ: x, gate_up and down disagree on d");
    const int64_t* indices = idx.Data();
    bad = glass::check_indices(indices, k, m);
    if (!bad.empty()) return invalid(bad);
    const int64_t tokens = x.NumberOfElement() / d;
    std::shared_ptr<const glass::DecodePack> pack;
    {  // this prompt's kept rows, repacked once (Run may be called from several threads)
      std::lock_guard<std::mutex> lock(mutex_);
      if (pack_ == nullptr || !pack_->holds(gu, dn, indices, k)) pack_ = std::make_shared<glass::DecodePack>(gu, dn, indices, k);
      pack = pack_;
    }
    float* out = y.Allocate(xs);
    glass::gather_ffn_quant(x.Data(), tokens, *pack, static_cast<glass::Activation>(activation_),
                            static_cast<glass::Accuracy>(attrs_.accuracy), out,
                            glass::task_count_for(k, kMaxTasks, tokens * d), OrtFor{context});
    return Ort::Status{nullptr};
  }

  QuantAttributes attrs_;
  int64_t activation_ = -1;
  std::mutex mutex_;
  std::shared_ptr<const glass::DecodePack> pack_;
};

struct FFNDownQ {
  FFNDownQ(const OrtApi*, const OrtKernelInfo* info) : attrs_(info) {}

  Ort::Status Compute(OrtKernelContext* context, const Ort::Custom::Tensor<float>& z,
                      const Ort::Custom::Tensor<uint8_t>& down, const Ort::Custom::Tensor<float>& down_scales,
                      Ort::Custom::Tensor<float>& y) {
    const auto& zs = z.Shape();
    if (zs.empty() || down.Shape().size() != 3) return invalid("glass.FFNDownQ: expected z [..., m], down [m, blocks, blob]");
    const int64_t m = down.Shape()[0];
    glass::QuantRows dn;
    const std::string bad = quant_rows(down, down_scales, m, attrs_.bits, attrs_.block, &dn);
    if (!bad.empty()) return invalid("glass.FFNDownQ: " + bad);
    if (zs.back() != m) return invalid("glass.FFNDownQ: z and down disagree on m");
    std::vector<int64_t> out_shape(zs.begin(), zs.end());
    out_shape.back() = dn.cols;
    const int64_t tokens = z.NumberOfElement() / std::max<int64_t>(m, 1);
    float* out = y.Allocate(out_shape);
    glass::ffn_down_quant(z.Data(), tokens, m, dn, out, glass::task_count_for(m, kMaxTasks, tokens * dn.cols),
                          OrtFor{context});
    return Ort::Status{nullptr};
  }

  QuantAttributes attrs_;
};

}  // namespace glass_ort

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                           const OrtApiBase* api_base) {
  Ort::InitApi(api_base->GetApi(ORT_API_VERSION));
  // One domain and op for the process: ORT keeps pointers to them for as long as sessions live.
  static Ort::CustomOpDomain domain{"glass"};
  static std::unique_ptr<Ort::Custom::OrtLiteCustomOp> ops[] = {
      std::unique_ptr<Ort::Custom::OrtLiteCustomOp>{
          Ort::Custom::CreateLiteCustomOp<glass_ort::GatherFFN>("GatherFFN", "CPUExecutionProvider")},
      std::unique_ptr<Ort::Custom::OrtLiteCustomOp>{
          Ort::Custom::CreateLiteCustomOp<glass_ort::GatherFFNQ>("GatherFFNQ", "CPUExecutionProvider")},
      std::unique_ptr<Ort::Custom::OrtLiteCustomOp>{
          Ort::Custom::CreateLiteCustomOp<glass_ort::FFNDownQ>("FFNDownQ", "CPUExecutionProvider")}};
  static std::once_flag added;
  std::call_once(added, [] {
    for (auto& op : ops) domain.Add(op.get());
  });
  try {
    Ort::UnownedSessionOptions(options).Add(domain);
  } catch (const Ort::Exception& e) {
    return Ort::Status(e).release();
  }
  return nullptr;
}
