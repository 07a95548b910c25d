// ExecuTorch kernel for glass::gather_ffn.out, registered with EXECUTORCH_LIBRARY.
// Every shape, dtype and index is checked; a bad one fails the method with a message.
#include <executorch/extension/kernel_util/make_boxed_from_unboxed_functor.h>
#include <executorch/runtime/core/exec_aten/util/tensor_util.h>
#include <executorch/runtime/kernel/kernel_includes.h>
#include <executorch/runtime/kernel/thread_parallel_interface.h>

#include "gather_ffn.h"

namespace glass_et {

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

using executorch::aten::ScalarType;
using executorch::aten::Tensor;
using executorch::runtime::Error;
using executorch::runtime::KernelRuntimeContext;

Tensor& gather_ffn_out(KernelRuntimeContext& ctx, const Tensor& x, const Tensor& w_gate_up, const Tensor& w_down_t,
                       const Tensor& idx, int64_t activation, Tensor& out) {
  ET_KERNEL_CHECK_MSG(ctx, x.scalar_type() == ScalarType::Float && w_gate_up.scalar_type() == ScalarType::Float &&
                               w_down_t.scalar_type() == ScalarType::Float && out.scalar_type() == ScalarType::Float,
                      InvalidArgument, out, "glass::gather_ffn: x, weights and out must be float32");
  ET_KERNEL_CHECK_MSG(ctx, idx.scalar_type() == ScalarType::Long, InvalidArgument, out,
                      "glass::gather_ffn: idx must be int64");
  ET_KERNEL_CHECK_MSG(ctx, glass::valid_activation(activation), InvalidArgument, out,
                      "glass::gather_ffn: activation must be 0 (silu) or 1 (gelu_tanh), got %lld",
                      static_cast<long long>(activation));
  ET_KERNEL_CHECK_MSG(ctx, w_gate_up.dim() == 3 && w_gate_up.size(1) == 2 && w_down_t.dim() == 2 && idx.dim() == 1 &&
                               x.dim() >= 1,
                      InvalidArgument, out,
                      "glass::gather_ffn: expected w_gate_up [m, 2, d], w_down_t [m, d], idx [k], x [..., d]");
  const int64_t m = w_gate_up.size(0), d = w_gate_up.size(2), k = idx.size(0);
  ET_KERNEL_CHECK_MSG(ctx, w_down_t.size(0) == m && w_down_t.size(1) == d && x.size(x.dim() - 1) == d,
                      InvalidArgument, out, "glass::gather_ffn: x, w_gate_up and w_down_t disagree on m or d");
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::tensor_is_contiguous(x) &&
                               executorch::runtime::tensor_is_contiguous(w_gate_up) &&
                               executorch::runtime::tensor_is_contiguous(w_down_t) &&
                               executorch::runtime::tensor_is_contiguous(idx),
                      InvalidArgument, out, "glass::gather_ffn: inputs must be contiguous");
  ET_KERNEL_CHECK_MSG(ctx, executorch::runtime::resize_tensor(out, x.sizes()) == Error::Ok, InvalidArgument, out,
                      "glass::gather_ffn: cannot resize out to the shape of x");
  const int64_t* indices = idx.const_data_ptr<int64_t>();
  const std::string bad = glass::check_indices(indices, k, m);
  ET_KERNEL_CHECK_MSG(ctx, bad.empty(), InvalidArgument, out, "%s", bad.c_str());
  glass::gather_ffn_f32(x.const_data_ptr<float>(), x.numel() / d, d, w_gate_up.const_data_ptr<float>(),
                        w_down_t.const_data_ptr<float>(), indices, k, static_cast<glass::Activation>(activation),
                        out.mutable_data_ptr<float>(), glass::task_count(k, kMaxTasks), ExecuTorchFor{});
  return out;
}

}  // namespace glass_et

EXECUTORCH_LIBRARY(glass, "gather_ffn.out", glass_et::gather_ffn_out);
