// Randomised check of the gather_ffn core against a naive double-precision reference:
// random shapes, unsorted and duplicate indices, k = 1 and k = m, both activations, and
// out-of-range indices that must be refused. Built with -DGLASS_ASAN=ON in CI, so any
// out-of-bounds read in the kernel aborts the run. Prints "N passed, N failed".
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "gather_ffn.h"

namespace {

double reference_act(glass::Activation act, double g) {
  if (act == glass::Activation::SiLU) return g / (1.0 + std::exp(-g));
  return 0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g)));
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
