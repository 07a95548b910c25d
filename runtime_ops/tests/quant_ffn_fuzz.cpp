// Randomised check of the quantised FFN core (quant_ffn.h) against a float64 reference on the
// dequantised weights, for every kernel variant this CPU runs (scalar, AVX2, AVX-512 VNNI; NEON and
// NEON dotprod on arm64, where CI runs it under qemu): random shapes, 4- and 8-bit codes, every block
// size, both accuracies, unsorted and duplicate indices, k = 1 and k = m. With Int8 accuracy the
// reference uses the int8-quantised activations, so the tolerance is float rounding only.
// Built with -DGLASS_ASAN=ON in CI: buffers are exact-size, any read past them aborts the run.
// Prints "N passed, N failed" per variant; exits 1 on any failure.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "quant_ffn.h"

namespace {

double act_ref(glass::Activation act, double g) {
  if (act == glass::Activation::SiLU) return g / (1.0 + std::exp(-g));
  return 0.5 * g * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g)));
}

struct Case {
  int64_t d, m, tokens, block;
  int bits;
  glass::Accuracy accuracy;
  glass::Activation act;
  std::vector<uint8_t> gu_codes, dn_codes;
  std::vector<float> gu_scales, dn_scales, x;
  std::vector<int64_t> idx;
};

Case random_case(std::mt19937_64& rng, int c) {
  Case k;
  const int64_t blocks[] = {32, 64, 128, 256};
  k.block = blocks[rng() % (c % 3 == 0 ? 4 : 2)];
  k.d = k.block * (1 + rng() % (k.block >= 128 ? 3 : 7));  // odd and even sub-block counts
  k.m = 1 + rng() % 40;
  k.tokens = 1 + rng() % 5;
  k.bits = (c & 1) ? 8 : 4;
  k.accuracy = (c % 5 == 4) ? glass::Accuracy::Float32 : glass::Accuracy::Int8;
  k.act = static_cast<glass::Activation>((c >> 1) & 1);
  const int64_t row_bytes = k.d * k.bits / 8;
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  k.gu_codes.resize(2 * k.m * row_bytes);
  k.dn_codes.resize(k.m * row_bytes);
  for (auto& v : k.gu_codes) v = static_cast<uint8_t>(byte(rng));
  for (auto& v : k.dn_codes) v = static_cast<uint8_t>(byte(rng));
  const float unit = (k.bits == 4 ? 0.25f : 0.016f) / std::sqrt(static_cast<float>(k.d));
  k.gu_scales.resize(2 * k.m * (k.d / k.block));
  k.dn_scales.resize(k.m * (k.d / k.block));
  for (auto& v : k.gu_scales) v = unit * normal(rng);  // negative scales occur in real data too
  for (auto& v : k.dn_scales) v = unit * normal(rng);
  k.x.resize(k.tokens * k.d);
  for (auto& v : k.x) v = normal(rng);
  if (rng() % 4 == 0) std::fill(k.x.begin(), k.x.begin() + k.block, 0.0f);  // an all-zero block: scale 0
  int64_t count;
  switch (c % 4) {
    case 0: count = 1; break;
    case 1: count = k.m; break;
    default: count = 1 + rng() % (2 * k.m);  // may exceed m: duplicates
  }
  k.idx.resize(count);
  for (auto& v : k.idx) v = static_cast<int64_t>(rng() % k.m);
  return k;
}

double weight(const std::vector<uint8_t>& codes, const std::vector<float>& scales, const Case& k, int64_t row,
              int64_t i) {
  const int64_t row_bytes = k.d * k.bits / 8;
  const int code = glass::code_at(codes.data() + row * row_bytes, k.bits, i);
  return double(scales[row * (k.d / k.block) + i / k.block]) * (code - glass::zero_point(k.bits));
}

// What the kernels see of x: the int8-quantised values (Int8 accuracy) or x itself.
std::vector<double> seen_x(const Case& k, int64_t t) {
  std::vector<double> out(k.d);
  for (int64_t g = 0; g < k.d / k.block; ++g) {
    std::vector<int8_t> q(k.block);
    const float* xb = k.x.data() + t * k.d + g * k.block;
    const float scale = glass::quantize_block_int8(xb, k.block, q.data());
    for (int64_t i = 0; i < k.block; ++i) {
      out[g * k.block + i] = k.accuracy == glass::Accuracy::Int8 ? double(q[i]) * scale : double(xb[i]);
    }
  }
  return out;
}

bool close(double got, double want, double scale) { return std::fabs(got - want) <= 1e-4 * scale + 1e-5; }

// Returns "" or what failed.
std::string check(const Case& k) {
  glass::QuantRows gu{k.gu_codes.data(), k.gu_scales.data(), k.d, k.bits, k.block};
  glass::QuantRows dn{k.dn_codes.data(), k.dn_scales.data(), k.d, k.bits, k.block};
  const int64_t kk = static_cast<int64_t>(k.idx.size());
  std::vector<float> y(k.tokens * k.d), z(k.tokens * k.m), y2(k.tokens * k.d);
  glass::gather_ffn_quant(k.x.data(), k.tokens, gu, dn, k.idx.data(), kk, k.act, k.accuracy, y.data(), 1 + kk % 3,
                          glass::SerialFor{});
  glass::ffn_up_quant(k.x.data(), k.tokens, gu, k.m, k.act, k.accuracy, z.data(), 2, glass::SerialFor{});
  glass::ffn_down_quant(z.data(), k.tokens, k.m, dn, y2.data(), 3, glass::SerialFor{});
  for (int64_t t = 0; t < k.tokens; ++t) {
    const std::vector<double> xs = seen_x(k, t);
    std::vector<double> zr(k.m), yr(k.d, 0.0), yd(k.d, 0.0);
    double magnitude = 1.0;
    for (int64_t n = 0; n < k.m; ++n) {
      double g = 0, u = 0, scale = 0;
      for (int64_t i = 0; i < k.d; ++i) {
        g += weight(k.gu_codes, k.gu_scales, k, 2 * n, i) * xs[i];
        u += weight(k.gu_codes, k.gu_scales, k, 2 * n + 1, i) * xs[i];
        scale += std::fabs(weight(k.gu_codes, k.gu_scales, k, 2 * n, i) * xs[i]);
      }
      zr[n] = act_ref(k.act, g) * u;
      if (!close(z[t * k.m + n], zr[n], std::max(1.0, scale * (1 + std::fabs(u))))) {
        return "ffn_up z[" + std::to_string(t) + "," + std::to_string(n) + "] " + std::to_string(z[t * k.m + n]) +
               " want " + std::to_string(zr[n]);
      }
      magnitude = std::max(magnitude, std::fabs(zr[n]));
    }
    for (int64_t j : k.idx) {
      for (int64_t i = 0; i < k.d; ++i) yr[i] += zr[j] * weight(k.dn_codes, k.dn_scales, k, j, i);
    }
    for (int64_t n = 0; n < k.m; ++n) {
      for (int64_t i = 0; i < k.d; ++i) yd[i] += double(z[t * k.m + n]) * weight(k.dn_codes, k.dn_scales, k, n, i);
    }
    const double tol_scale = magnitude * std::sqrt(double(kk + k.m)) * 4;
    for (int64_t i = 0; i < k.d; ++i) {
      if (!close(y[t * k.d + i], yr[i], tol_scale)) {
        return "gather y[" + std::to_string(i) + "] " + std::to_string(y[t * k.d + i]) + " want " + std::to_string(yr[i]);
      }
      if (!close(y2[t * k.d + i], yd[i], tol_scale)) {
        return "ffn_down y[" + std::to_string(i) + "] " + std::to_string(y2[t * k.d + i]) + " want " + std::to_string(yd[i]);
      }
    }
  }
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  const int cases = argc > 1 ? std::atoi(argv[1]) : 200;
  int total_failed = 0, variants = 0;
  for (const char* name : {"scalar", "avx2", "avx512vnni", "neon", "neon-dotprod"}) {
    if (glass::quant_kernels_named(name) == nullptr) continue;
    glass::set_quant_kernels_for_testing(glass::quant_kernels_named(name));
    ++variants;
    std::mt19937_64 rng(99);
    int passed = 0, failed = 0;
    for (int c = 0; c < cases; ++c) {
      const Case k = random_case(rng, c);
      const std::string error = check(k);
      if (error.empty()) {
        ++passed;
      } else {
        ++failed;
        if (failed <= 5) {
          std::printf("[%s] case %d (d=%lld m=%lld T=%lld bits=%d block=%lld acc=%lld): %s\n", name, c,
                      (long long)k.d, (long long)k.m, (long long)k.tokens, k.bits, (long long)k.block,
                      (long long)k.accuracy, error.c_str());
        }
      }
    }
    std::printf("%s: %d passed, %d failed\n", name, passed, failed);
    total_failed += failed;
  }
  std::printf("%d variants, %d failed\n", variants, total_failed);
  return total_failed == 0 ? 0 : 1;
}
