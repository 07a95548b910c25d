// ONNX Runtime kernel for glass.GatherFFN (the op onnx_ops.py emits), through ORT's lite
// custom-op API:  y = GatherFFN(x [..., d], w_gate_up [m, 2, d], w_down_t [m, d], idx [k]; activation).
// Registered by SessionOptions.register_custom_ops_library; it replaces the model-local function
// fallback. Needs only ORT's headers (C API version 21, accepted by every newer runtime).
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

}  // namespace glass_ort

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                                           const OrtApiBase* api_base) {
  Ort::InitApi(api_base->GetApi(ORT_API_VERSION));
  // One domain and op for the process: ORT keeps pointers to them for as long as sessions live.
  static Ort::CustomOpDomain domain{"glass"};
  static std::unique_ptr<Ort::Custom::OrtLiteCustomOp> op{
      Ort::Custom::CreateLiteCustomOp<glass_ort::GatherFFN>("GatherFFN", "CPUExecutionProvider")};
  static std::once_flag added;
  std::call_once(added, [] { domain.Add(op.get()); });
  try {
    Ort::UnownedSessionOptions(options).Add(domain);
  } catch (const Ort::Exception& e) {
    return Ort::Status(e).release();
  }
  return nullptr;
}
