// GLASS's selection of one layer's kept neurons from its local scores and the prior's ranks, in one pass
// where an exported graph runs three full-length top-k operators (ExecuTorch's portable topk: 4.4 ms of
// a 50-token prefill on 2 x86 cores). glass_ops/torch_ops.py select_kept_reference is the definition:
//   local rank r(i): 0 for the highest score, ties by the lower index (NaN above every number, as
//                    PyTorch's descending sort puts it);
//   key(i) = (local_weight r(i) + global_weight g(i)) m + r(i)   (distinct: r is a permutation);
//   kept: the k neurons with the smallest keys, in ascending neuron order.
// The caller checks g(i) in [0, m) (check_indices), so no key overflows.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

namespace glass {

// kept [k] of one layer; global_rank may be null (all zero). 0 < k <= m.
inline void select_kept_layer(const float* local, const int64_t* global_rank, int64_t m, int64_t local_weight,
                              int64_t global_weight, int64_t k, int64_t* kept) {
  thread_local std::vector<int64_t> order, keys;
  order.resize(static_cast<size_t>(m));
  keys.resize(static_cast<size_t>(m));
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [local](int64_t a, int64_t b) {
    const bool a_nan = std::isnan(local[a]), b_nan = std::isnan(local[b]);
    return a_nan != b_nan ? a_nan : local[a] > local[b];
  });
  for (int64_t rank = 0; rank < m; ++rank) {
    const int64_t i = order[rank];
    const int64_t fused = local_weight * rank + (global_rank == nullptr ? 0 : global_weight * global_rank[i]);
    keys[i] = fused * m + rank;
  }
  // The k-th smallest key, then every neuron at or below it, in index order (the keys are distinct).
  std::vector<int64_t>& sorted = order;
  sorted.assign(keys.begin(), keys.end());
  std::nth_element(sorted.begin(), sorted.begin() + (k - 1), sorted.end());
  const int64_t threshold = sorted[k - 1];
  int64_t n = 0;
  for (int64_t i = 0; i < m && n < k; ++i) {
    if (keys[i] <= threshold) kept[n++] = i;
  }
}

// kept [layers, k] from local [layers, m] and global_rank [layers, m] (or null), layers spread over the pool.
template <typename ParallelFor>
void select_kept(const float* local, const int64_t* global_rank, int64_t layers, int64_t m, int64_t local_weight,
                 int64_t global_weight, int64_t k, int64_t* kept, const ParallelFor& parallel_for) {
  parallel_for(layers, [&](int64_t begin, int64_t end) {
    for (int64_t layer = begin; layer < end; ++layer) {
      select_kept_layer(local + layer * m, global_rank == nullptr ? nullptr : global_rank + layer * m, m, local_weight,
                        global_weight, k, kept + layer * k);
    }
  });
}

}  // namespace glass
