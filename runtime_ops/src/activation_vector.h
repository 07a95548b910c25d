// The FFN's activation product z = act(gate) * up over many neurons, vectorised: the quantised kernels'
// QuantKernels::activate_product. Written once with GCC vector types (as dense_tile.h) and instantiated
// by each SIMD variant's file, so it compiles to that file's instruction set.
//
// std::exp is a scalar library call (2.7 us of a 768-neuron decode call, a quarter of a 50-token
// prefill's gate/up work on SmolLM2); here e^x is computed in plain arithmetic: Cody-Waite range
// reduction x = n ln 2 + r and Cephes' degree-6 polynomial for e^r, within 2 ulp of std::exp over
// [-87.3, 88.3]; below it e^x is e^-87.3 (1 + e^x is 1 either way), above it infinity, as std::exp's
// overflow (so act(g) of a very negative g is -0, not g / 2^127). GELU's tanh form is written as
// 0.5 g (1 + tanh y) = g / (1 + e^-2y), which has no cancellation. check_activation in
// tests/quant_ffn_fuzz.cpp holds every variant to float64 over the whole float range.
#pragma once

#include <cstdint>
#include <cstring>

#include "dense_tile.h"
#include "gather_ffn.h"

namespace glass {

// The int32 lanes beside dense_tile.h's FloatVector<LANES> (e^x builds 2^n in them).
template <int LANES>
struct IntVector {
  typedef int32_t type __attribute__((vector_size(LANES * sizeof(int32_t))));
};

template <typename F>
inline F splat(float value) {
  return F{} + value;
}

template <typename F, typename I>
inline F exp_lanes(F x_in) {
  const F lo = splat<F>(-87.3f), hi = splat<F>(88.3f);
  F x = x_in < lo ? lo : x_in;
  x = x > hi ? hi : x;
  // n = x / ln 2 rounded to nearest (adding and removing 1.5 * 2^23 drops the fraction bits)
  const F round = splat<F>(12582912.0f);
  const F n = (x * 1.44269504088896341f + round) - round;
  const F r = x - n * 0.693359375f - n * -2.12194440e-4f;  // ln 2 in two parts: n * the first is exact
  F p = splat<F>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const F e_r = p * r * r + r + 1.0f;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;  // 2^n, n in [-126, 127]
  F two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  const F inf = splat<F>(__builtin_inff());
  return x_in > hi ? inf : e_r * two_n;  // overflow to infinity, as std::exp: act(-huge) = -0
}

template <typename F, typename I>
inline F activation_lanes(Activation act, F g) {
  if (act == Activation::SiLU) return g / (1.0f + exp_lanes<F, I>(-g));
  const float kAlpha = 0.7978845608028654f;  // sqrt(2 / pi), as glass::activate
  const F y = kAlpha * (g + 0.044715f * g * g * g);
  return g / (1.0f + exp_lanes<F, I>(-2.0f * y));
}

// z[i] = act(gate[i]) * up[i], i < n.
template <int LANES>
void activate_product_lanes(Activation act, const float* gate, const float* up, float* z, int64_t n) {
  using F = typename FloatVector<LANES>::type;
  using I = typename IntVector<LANES>::type;
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES) {
    store_vector(z + i, activation_lanes<F, I>(act, load_vector<F>(gate + i)) * load_vector<F>(up + i));
  }
  if (i == n) return;
  F g{}, u{}, out;  // the tail in one padded vector
  std::memcpy(&g, gate + i, (n - i) * sizeof(float));
  std::memcpy(&u, up + i, (n - i) * sizeof(float));
  out = activation_lanes<F, I>(act, g) * u;
  std::memcpy(z + i, &out, (n - i) * sizeof(float));
}

}  // namespace glass
