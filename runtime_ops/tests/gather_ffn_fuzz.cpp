// Randomised check of the gather_ffn core against a naive double-precision reference:
// random shapes, unsorted and duplicate indices, k = 1 and k = m, both activations, and
// out-of-range indices that must be refused; and of the selection core (select_kept.h) against a
// naive counting rank, on scores with ties and NaNs. Built with -DGLASS_ASAN=ON in CI, so any
// out-of-bounds read in the kernel aborts the run. Prints "N passed, N failed".
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "gather_ffn.h"
#include "select_kept.h"

namespace {

double reference_act(glass::Activation act, double g) {
  if (act == glass::Activation::SiLU) return g / (1.0 + std::exp(-g));
  return 0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g)));
}

// select_kept's definition, naively: rank by counting, keys, the k smallest in index order.
std::vector<int64_t> naive_kept(const float* local, const int64_t* global_rank, int64_t m, int64_t local_weight,
                                int64_t global_weight, int64_t k) {
  std::vector<int64_t> keys(m), order(m);
  for (int64_t i = 0; i < m; ++i) {
    int64_t rank = 0;
    for (int64_t j = 0; j < m; ++j) {
      const bool above = std::isnan(local[j]) ? !std::isnan(local[i]) || j < i
                                              : !std::isnan(local[i]) && (local[j] > local[i] || (local[j] == local[i] && j < i));
      rank += above;
    }
    keys[i] = (local_weight * rank + global_weight * global_rank[i]) * m + rank;
  }
  std::iota(order.begin(), order.end(), int64_t{0});
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

// One random selection case: layers of m scores with ties and NaNs, prior ranks, a lambda.
bool selection_case(std::mt19937_64& rng, int64_t m, int c) {
  const int64_t layers = 1 + rng() % 3, k = 1 + rng() % m, local_weight = rng() % 1001;
  std::vector<float> local(layers * m);
  std::vector<int64_t> global(layers * m), kept(layers * k);
  for (auto& v : local) v = static_cast<float>(rng() % 5) / 4.0f;  // many ties, zeros too
  if (c % 3 == 0) local[rng() % local.size()] = NAN;
  for (int64_t l = 0; l < layers; ++l) {
    std::iota(global.begin() + l * m, global.begin() + (l + 1) * m, int64_t{0});
    std::shuffle(global.begin() + l * m, global.begin() + (l + 1) * m, rng);
  }
  if (c % 2 == 0) {
    glass::select_kept(local.data(), global.data(), layers, m, local_weight, 1000 - local_weight, k, kept.data(),
                       glass::OpenMPFor{});
  } else {
    glass::select_kept(local.data(), global.data(), layers, m, local_weight, 1000 - local_weight, k, kept.data(),
                       glass::SerialFor{});
  }
  bool ok = glass::check_indices(global.data(), global.size(), m, "global rank").empty();
  for (int64_t l = 0; l < layers; ++l) {
    const auto want = naive_kept(local.data() + l * m, global.data() + l * m, m, local_weight, 1000 - local_weight, k);
    ok = ok && std::equal(want.begin(), want.end(), kept.begin() + l * k);
  }
  for (int64_t bad : {m, int64_t(-1)}) {  // prior ranks outside [0, m) are refused
    std::vector<int64_t> wrong = global;
    wrong[rng() % wrong.size()] = bad;
    ok = ok && !glass::check_indices(wrong.data(), wrong.size(), m, "global rank").empty();
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const int cases = argc > 1 ? std::atoi(argv[1]) : 300;
  std::mt19937_64 rng(1234);
  int passed = 0, failed = 0;
  for (int c = 0; c < cases; ++c) {
    const int64_t d = 1 + rng() % 70, m = 1 + rng() % 90, tokens = 1 + rng() % 9;  // covers the 4-token blocks of ffn_up and their remainders
    int64_t k;
    switch (c % 4) {
      case 0: k = 1; break;
      case 1: k = m; break;
      default: k = 1 + rng() % (2 * m);  // may exceed m: duplicates
    }
    std::normal_distribution<float> normal(0.0f, 1.0f);
    // Exact-size buffers: ASan catches any read past them.
    std::vector<float> x(tokens * d), gu(m * 2 * d), dt(m * d), y(tokens * d);
    for (auto& v : x) v = normal(rng);
    for (auto& v : gu) v = normal(rng);
    for (auto& v : dt) v = normal(rng);
    std::vector<int64_t> idx(k);
    for (auto& v : idx) v = static_cast<int64_t>(rng() % m);
    const auto act = static_cast<glass::Activation>(c % 2);

    bool ok = glass::check_indices(idx.data(), k, m).empty();
    const int64_t tasks = 1 + c % 5;  // more tasks than neurons is allowed too
    if (c % 2 == 0) {
      glass::gather_ffn_f32(x.data(), tokens, d, gu.data(), dt.data(), idx.data(), k, act, y.data(), tasks,
                            glass::OpenMPFor{});
    } else {
      glass::gather_ffn_f32(x.data(), tokens, d, gu.data(), dt.data(), idx.data(), k, act, y.data(), tasks,
                            glass::SerialFor{});
    }
    for (int64_t t = 0; t < tokens && ok; ++t) {
      for (int64_t i = 0; i < d; ++i) {
        double want = 0.0;
        for (int64_t j = 0; j < k; ++j) {
          double g = 0.0, u = 0.0;
          for (int64_t e = 0; e < d; ++e) {
            g += double(x[t * d + e]) * gu[idx[j] * 2 * d + e];
            u += double(x[t * d + e]) * gu[idx[j] * 2 * d + d + e];
          }
          want += reference_act(act, g) * u * dt[idx[j] * d + i];
        }
        if (std::fabs(want - y[t * d + i]) > 1e-3 * (1.0 + std::fabs(want))) ok = false;
      }
    }
    // Bad indices must be refused, never read.
    for (int64_t bad : {m, m + 7, int64_t(-1), -(int64_t(1) << 40)}) {
      std::vector<int64_t> wrong = idx;
      wrong[rng() % k] = bad;
      if (glass::check_indices(wrong.data(), k, m).empty()) ok = false;
    }
    // Dense prefill halves: ffn_up then ffn_down equal gather_ffn over all neurons in order.
    std::vector<int64_t> all(m);
    for (int64_t i = 0; i < m; ++i) all[i] = i;
    std::vector<float> z(tokens * m), y_dense(tokens * d), y_all(tokens * d);
    glass::ffn_up_f32(x.data(), tokens, d, gu.data(), m, act, z.data(), tasks, glass::OpenMPFor{});
    glass::ffn_down_f32(z.data(), tokens, m, dt.data(), d, y_dense.data(), tasks, glass::OpenMPFor{});
    glass::gather_ffn_f32(x.data(), tokens, d, gu.data(), dt.data(), all.data(), m, act, y_all.data(), 1,
                          glass::SerialFor{});
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t i = 0; i < m; ++i) {
        double g = 0.0, u = 0.0;
        for (int64_t e = 0; e < d; ++e) {
          g += double(x[t * d + e]) * gu[i * 2 * d + e];
          u += double(x[t * d + e]) * gu[i * 2 * d + d + e];
        }
        const double want = reference_act(act, g) * u;
        if (std::fabs(want - z[t * m + i]) > 1e-3 * (1.0 + std::fabs(want))) ok = false;
      }
    }
    for (int64_t i = 0; i < tokens * d; ++i) {
      if (std::fabs(y_dense[i] - y_all[i]) > 1e-3f * (1.0f + std::fabs(y_all[i]))) ok = false;
    }
    ok = ok && selection_case(rng, m, c);
    if (ok) {
      ++passed;
    } else {
      ++failed;
      std::printf("case %d failed (d=%lld m=%lld k=%lld tokens=%lld)\n", c, (long long)d, (long long)m,
                  (long long)k, (long long)tokens);
    }
  }
  std::printf("%d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
