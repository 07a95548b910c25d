// glass::gather_ffn compute core, shared by the ExecuTorch kernel and any other runtime glue.
//
//   y[t] = sum_j act(x[t] . gate[idx_j]) * (x[t] . up[idx_j]) * down_t[idx_j]
//
// Weights are neuron-contiguous: w_gate_up is [m, 2, d] (the gate row then the up row of
// neuron i, one contiguous 2*d run) and w_down_t is [m, d] (row i = column i of W_down).
// A kept neuron therefore costs three contiguous reads of d floats and nothing else.
//
// Runtime agnostic: raw pointers in, an error message out. Kept neurons are split into tasks
// run on the caller's thread pool; each task accumulates into its own y buffer, summed at the end.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

namespace glass {

enum class Activation : int64_t { SiLU = 0, GeluTanh = 1 };

inline bool valid_activation(int64_t code) { return code == 0 || code == 1; }

// Returns "" when every index is in [0, m), else a message naming the first bad one ("<what> 7 at position 2
// is out of range [0, 4)").
inline std::string check_indices(const int64_t* idx, int64_t k, int64_t m, const char* what = "glass::gather_ffn: index") {
  for (int64_t j = 0; j < k; ++j) {
    if (idx[j] < 0 || idx[j] >= m) {
      char buf[200];
      std::snprintf(buf, sizeof(buf), "%s %lld at position %lld is out of range [0, %lld)", what,
                    static_cast<long long>(idx[j]), static_cast<long long>(j), static_cast<long long>(m));
      return buf;
    }
  }
  return "";
}

inline float activate(Activation act, float g) {
  if (act == Activation::SiLU) return g / (1.0f + std::exp(-g));
  // GELU, tanh approximation (gelu_pytorch_tanh)
  const float kAlpha = 0.7978845608028654f;  // sqrt(2 / pi)
  return 0.5f * g * (1.0f + std::tanh(kAlpha * (g + 0.044715f * g * g * g)));
}

// Kept neurons are scattered: the hardware prefetcher stops at every jump between rows. The
// loops below therefore fetch a later neuron's rows into L2 while they compute this one's,
// two 64-byte lines per 32 floats, spread evenly through the loop. (One burst of prefetches
// per neuron measured slower than none: it fills the line-fill buffers the loads need.)
// `next_*` may be null (no prefetch); prefetches never fault, and stay inside the rows.
inline void prefetch_block(const float* row, int64_t i) {
  __builtin_prefetch(row + i, 0, 2);
  __builtin_prefetch(row + i + 16, 0, 2);
}

// Two dot products with one read of a: 32 independent lanes hide the FMA latency.
inline void dot2(const float* a, const float* b, const float* c, int64_t d, float* ab, float* ac,
                 const float* next_b = nullptr, const float* next_c = nullptr) {
  constexpr int kLanes = 32;
  float acc_b[kLanes] = {0}, acc_c[kLanes] = {0};
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes) {
    if (next_b != nullptr) {
      prefetch_block(next_b, i);
      prefetch_block(next_c, i);
    }
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) {
      acc_b[l] += a[i + l] * b[i + l];
      acc_c[l] += a[i + l] * c[i + l];
    }
  }
  float sb = 0.0f, sc = 0.0f;
  for (; i < d; ++i) {
    sb += a[i] * b[i];
    sc += a[i] * c[i];
  }
  for (int l = 0; l < kLanes; ++l) {
    sb += acc_b[l];
    sc += acc_c[l];
  }
  *ab = sb;
  *ac = sc;
}

inline void axpy(float alpha, const float* x, float* y, int64_t d, const float* next_x = nullptr) {
  constexpr int kBlock = 32;
  int64_t i = 0;
  for (; i + kBlock <= d; i += kBlock) {
    if (next_x != nullptr) prefetch_block(next_x, i);
#pragma omp simd
    for (int l = 0; l < kBlock; ++l) y[i + l] += alpha * x[i + l];
  }
  for (; i < d; ++i) y[i] += alpha * x[i];
}

// Runs f(begin, end) over [0, n) on the calling thread: the fallback "thread pool".
struct SerialFor {
  template <typename F>
  void operator()(int64_t n, const F& f) const { f(0, n); }
};

#ifdef _OPENMP
// OpenMP-backed parallel_for, for builds outside a runtime that owns a thread pool.
struct OpenMPFor {
  template <typename F>
  void operator()(int64_t n, const F& f) const {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < n; ++i) f(i, i + 1);
  }
};
#endif

// Splits neurons [0, k) into n_tasks contiguous ranges and runs body(task, begin, end) on the pool.
template <typename ParallelFor, typename Body>
void for_each_task(int64_t k, int64_t n_tasks, const ParallelFor& parallel_for, const Body& body) {
  parallel_for(n_tasks, [&](int64_t task_begin, int64_t task_end) {
    for (int64_t task = task_begin; task < task_end; ++task) body(task, k * task / n_tasks, k * (task + 1) / n_tasks);
  });
}

// Sums the n_tasks partial buffers of `size` floats into out.
// (Buffer by buffer, so the adds vectorise: summing each element across the buffers in turn did not,
// and cost ExecuTorch's 8-task decode op on SmolLM2 about 1 us of its 18-20.)
inline void reduce_partials(const std::vector<float>& partial, int64_t n_tasks, int64_t size, float* out) {
  std::copy(partial.begin(), partial.begin() + size, out);
  for (int64_t task = 1; task < n_tasks; ++task) {
    const float* part = partial.data() + task * size;
#pragma omp simd
    for (int64_t i = 0; i < size; ++i) out[i] += part[i];
  }
}

// gather_ffn: x [n_tokens, d] -> y [n_tokens, d] (overwritten) over the k neurons idx.
// Indices must have been checked. parallel_for(n, f) must call f(begin, end) on disjoint
// ranges covering [0, n); the runtime's own thread pool goes here so the kernel shares
// threads with the rest of the graph.
template <typename ParallelFor>
void gather_ffn_f32(const float* x, int64_t n_tokens, int64_t d, const float* w_gate_up, const float* w_down_t,
                    const int64_t* idx, int64_t k, Activation act, float* y, int64_t n_tasks,
                    const ParallelFor& parallel_for) {
  const int64_t out_size = n_tokens * d;
  std::vector<float> partial(static_cast<size_t>(n_tasks * out_size), 0.0f);
  for_each_task(k, n_tasks, parallel_for, [&](int64_t task, int64_t begin, int64_t end) {
    float* acc = partial.data() + task * out_size;
    for (int64_t j = begin; j < end; ++j) {
      const float* gate = w_gate_up + idx[j] * 2 * d;
      const float* up = gate + d;
      const float* down = w_down_t + idx[j] * d;
      // The rows of the neuron two ahead are fetched during the first token's pass over this
      // one (two ahead measured faster than one for rows of 1-2k floats).
      const int64_t next = j + 2 < end ? idx[j + 2] : idx[end - 1];
      const float* next_gate = w_gate_up + next * 2 * d;
      for (int64_t t = 0; t < n_tokens; ++t) {
        const bool first = t == 0;
        float g, u;
        dot2(x + t * d, gate, up, d, &g, &u, first ? next_gate : nullptr, next_gate + d);
        axpy(activate(act, g) * u, down, acc + t * d, d, first ? w_down_t + next * d : nullptr);
      }
    }
  });
  reduce_partials(partial, n_tasks, out_size, y);
}

// Both dot products of NT tokens' rows x[t] (stride d) with b and c: each loaded chunk of b and
// c serves NT tokens, so the prefill is not bound by loads (8 lanes x NT x 2 accumulators).
template <int NT>
inline void dot2_tokens(const float* x, int64_t d, const float* b, const float* c, float* out_b, float* out_c) {
  constexpr int kLanes = 8;
  float acc_b[NT][kLanes] = {}, acc_c[NT][kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= d; i += kLanes) {
    for (int t = 0; t < NT; ++t) {
      const float* xt = x + t * d + i;
#pragma omp simd
      for (int l = 0; l < kLanes; ++l) {
        acc_b[t][l] += xt[l] * b[i + l];
        acc_c[t][l] += xt[l] * c[i + l];
      }
    }
  }
  for (int t = 0; t < NT; ++t) {
    float sb = 0.0f, sc = 0.0f;
    for (int64_t j = i; j < d; ++j) {
      sb += x[t * d + j] * b[j];
      sc += x[t * d + j] * c[j];
    }
    for (int l = 0; l < kLanes; ++l) {
      sb += acc_b[t][l];
      sc += acc_c[t][l];
    }
    out_b[t] = sb;
    out_c[t] = sc;
  }
}

// ffn_up: z[t, i] = act(x_t . gate_i) * (x_t . up_i) for every neuron, z [n_tokens, m].
// The dense prefill's first half; it reads the same w_gate_up as gather_ffn.
template <typename ParallelFor>
void ffn_up_f32(const float* x, int64_t n_tokens, int64_t d, const float* w_gate_up, int64_t m, Activation act,
                float* z, int64_t n_tasks, const ParallelFor& parallel_for) {
  constexpr int kBlock = 4;
  for_each_task(m, n_tasks, parallel_for, [&](int64_t, int64_t begin, int64_t end) {
    float g[kBlock], u[kBlock];
    for (int64_t i = begin; i < end; ++i) {
      const float* gate = w_gate_up + i * 2 * d;
      for (int64_t t0 = 0; t0 < n_tokens; t0 += kBlock) {
        const int64_t nt = std::min<int64_t>(kBlock, n_tokens - t0);
        const float* xt = x + t0 * d;
        switch (nt) {
          case 4: dot2_tokens<4>(xt, d, gate, gate + d, g, u); break;
          case 3: dot2_tokens<3>(xt, d, gate, gate + d, g, u); break;
          case 2: dot2_tokens<2>(xt, d, gate, gate + d, g, u); break;
          default: dot2(xt, gate, gate + d, d, g, u); break;
        }
        for (int64_t t = 0; t < nt; ++t) z[(t0 + t) * m + i] = activate(act, g[t]) * u[t];
      }
    }
  });
}

// y += a[0] x[0] + ... + a[3] x[3] over rows x[j] = rows + j * d: one load and store of y per
// four rows, so the dense prefill's second half is not bound by stores.
inline void axpy4(const float* a, const float* rows, int64_t d, float* y) {
  const float* x0 = rows;
  const float* x1 = rows + d;
  const float* x2 = rows + 2 * d;
  const float* x3 = rows + 3 * d;
#pragma omp simd
  for (int64_t i = 0; i < d; ++i) y[i] += a[0] * x0[i] + a[1] * x1[i] + a[2] * x2[i] + a[3] * x3[i];
}

// ffn_down: y [n_tokens, d] = z [n_tokens, m] . w_down_t [m, d] (y overwritten).
template <typename ParallelFor>
void ffn_down_f32(const float* z, int64_t n_tokens, int64_t m, const float* w_down_t, int64_t d, float* y,
                  int64_t n_tasks, const ParallelFor& parallel_for) {
  const int64_t out_size = n_tokens * d;
  std::vector<float> partial(static_cast<size_t>(n_tasks * out_size), 0.0f);
  for_each_task(m, n_tasks, parallel_for, [&](int64_t task, int64_t begin, int64_t end) {
    float* acc = partial.data() + task * out_size;
    int64_t i = begin;
    for (; i + 4 <= end; i += 4) {  // four neurons' rows (contiguous in w_down_t) per pass over y
      for (int64_t t = 0; t < n_tokens; ++t) {
        const float a[4] = {z[t * m + i], z[t * m + i + 1], z[t * m + i + 2], z[t * m + i + 3]};
        axpy4(a, w_down_t + i * d, d, acc + t * d);
      }
    }
    for (; i < end; ++i) {
      for (int64_t t = 0; t < n_tokens; ++t) axpy(z[t * m + i], w_down_t + i * d, acc + t * d, d);
    }
  });
  reduce_partials(partial, n_tasks, out_size, y);
}

// Tasks for a call whose per-task buffers hold `per_task_floats`: at most max_tasks, at least
// 16 neurons each, and no more than 64 MiB of buffers in all.
inline int64_t task_count_for(int64_t neurons, int64_t max_tasks, int64_t per_task_floats) {
  const int64_t memory_cap = std::max<int64_t>(1, (int64_t(16) << 20) / std::max<int64_t>(1, per_task_floats));
  return std::max<int64_t>(1, std::min<int64_t>({max_tasks, neurons / 16, memory_cap}));
}

}  // namespace glass
