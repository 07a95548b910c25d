// Randomised check of the quantised FFN core (quant_ffn.h, quant_decode.h) against float64 references
// on the dequantised weights, for every kernel variant this CPU runs (scalar, AVX2, AVX-512 VNNI; NEON
// and NEON dotprod on arm64, where CI runs it under qemu): random shapes, 4- and 8-bit codes, every
// block size, both accuracies, unsorted and duplicate indices, k = 1 and k = m.
//   prefill (ffn_up_quant, ffn_down_quant): against the float64 FFN on the activations the kernels see;
//   decode, Float32 accuracy: gather_ffn_quant against the float64 FFN over the kept neurons;
//   decode, Int8 accuracy, stage by stage: the gate/up tiles against float64 dot products, each variant's
//     down coefficients against GroupCoefs::compute bit for bit (and at exact rounding ties), the down
//     windows against float64 sums of the very int8 coefficients they get, the whole op
//     (several tasks) against those stages, and against the float64 FFN within the bound that the
//     coefficients' rounding (half a step each) allows;
//   a tied embedding (tied_embedding.h), the gate/up rows standing as its table: the LM head
//     (linear_rows_quant, RowsPack) against float64 dot products, the lookup against the weights exactly.
// Built with -DGLASS_ASAN=ON in CI: buffers are exact-size, any read past them aborts the run.
// Prints "N passed, N failed" per variant; exits 1 on any failure.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "quant_decode.h"
#include "tied_embedding.h"

namespace {

// (GELU's 0.5 g (1 + tanh y) as g / (1 + e^-2y): the same function, without the cancellation for negative g.)
double act_ref(glass::Activation act, double g) {
  if (act == glass::Activation::SiLU) return g / (1.0 + std::exp(-g));
  return g / (1.0 + std::exp(-2.0 * std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g)));
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
  k.tokens = 1 + rng() % 11;  // 4+ tokens: the prefill micro-kernel, its token tiles and tails
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
  // scales are read as float16 (the random ones here are not float16 values: every kernel must round them alike)
  return double(glass::scale_value(scales[row * (k.d / k.block) + i / k.block])) * (code - glass::zero_point(k.bits));
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

// "" when a variant's coefficients are GroupCoefs::compute's, bit for bit.
std::string coefs_differ(const glass::GroupCoefs& want, const glass::GroupCoefs& got) {
  for (size_t i = 0; i < want.q.size(); ++i) {
    if (got.q.size() != want.q.size() || got.q[i] != want.q[i]) return "q[" + std::to_string(i) + "] differs";
  }
  for (size_t g = 0; g < want.scale.size(); ++g) {
    if (got.scale.size() != want.scale.size() || got.scale[g] != want.scale[g] || got.zero[g] != want.zero[g]) {
      return "scale or zero of block " + std::to_string(g) + " differs";
    }
  }
  return "";
}

std::string mismatch(const char* what, int64_t t, int64_t i, double got, double want) {
  return std::string(what) + "[" + std::to_string(t) + "," + std::to_string(i) + "] " + std::to_string(got) + " want " +
         std::to_string(want);
}

// The prefill ops against the float64 FFN over all neurons; z_ref gets the reference z.
std::string check_prefill(const Case& k, const glass::QuantRows& gu, const glass::QuantRows& dn,
                          std::vector<std::vector<double>>& z_ref) {
  std::vector<float> z(k.tokens * k.m), y(k.tokens * k.d);
  glass::ffn_up_quant(k.x.data(), k.tokens, gu, k.m, k.act, k.accuracy, z.data(), 2, glass::SerialFor{});
  glass::ffn_down_quant(z.data(), k.tokens, k.m, dn, y.data(), 3, glass::SerialFor{});
  z_ref.assign(k.tokens, std::vector<double>(k.m));
  for (int64_t t = 0; t < k.tokens; ++t) {
    const std::vector<double> xs = seen_x(k, t);
    double magnitude = 1.0;
    for (int64_t n = 0; n < k.m; ++n) {
      double g = 0, u = 0, scale = 0;
      for (int64_t i = 0; i < k.d; ++i) {
        g += weight(k.gu_codes, k.gu_scales, k, 2 * n, i) * xs[i];
        u += weight(k.gu_codes, k.gu_scales, k, 2 * n + 1, i) * xs[i];
        scale += std::fabs(weight(k.gu_codes, k.gu_scales, k, 2 * n, i) * xs[i]);
      }
      z_ref[t][n] = act_ref(k.act, g) * u;
      if (!close(z[t * k.m + n], z_ref[t][n], std::max(1.0, scale * (1 + std::fabs(u))))) {
        return mismatch("ffn_up z", t, n, z[t * k.m + n], z_ref[t][n]);
      }
      magnitude = std::max(magnitude, std::fabs(z_ref[t][n]));
    }
    for (int64_t i = 0; i < k.d; ++i) {
      double want = 0;
      for (int64_t n = 0; n < k.m; ++n) want += double(z[t * k.m + n]) * weight(k.dn_codes, k.dn_scales, k, n, i);
      if (!close(y[t * k.d + i], want, magnitude * std::sqrt(double(k.m)) * 4)) return mismatch("ffn_down y", t, i, y[t * k.d + i], want);
    }
  }
  return "";
}

// Sparse decode (quant_decode.h) over the kept neurons idx.
// The pack is one forward stream in the order a task reads it (what the kernels' prefetches rely on):
// each group's gate/up tiles block by block (codes, then scales), its down scales, its down windows.
std::string check_stream_order(const glass::DecodePack& pack) {
  const uint8_t* at = pack.block_start(0, 0);
  const int64_t codes = glass::kTileRows * pack.row_sub_bytes(), scales = glass::kTileRows * sizeof(glass::Half);
  auto next = [&at](const void* p, int64_t bytes) {
    if (static_cast<const uint8_t*>(p) != at) return false;
    at += bytes;
    return true;
  };
  for (int64_t J = 0; J < pack.groups(); ++J) {
    for (int64_t t = J * glass::kDownGroup / glass::kTileRows; t < (J + 1) * glass::kDownGroup / glass::kTileRows; ++t) {
      for (int64_t g = 0; g < pack.blocks(); ++g) {
        if (pack.block_start(t, g) != at) return "gate/up block out of stream order";
        for (int64_t s = g * pack.subs_per_block(); s < (g + 1) * pack.subs_per_block(); ++s) {
          if (!next(pack.gate_up_tile(t, 0, s), codes) || !next(pack.gate_up_tile(t, 1, s), codes)) {
            return "gate/up codes out of stream order";
          }
        }
        if (!next(pack.gate_up_scales(t, 0, g), scales) || !next(pack.gate_up_scales(t, 1, g), scales)) {
          return "gate/up scales out of stream order";
        }
      }
    }
    if (pack.down_start(J) != at) return "down scales out of stream order";
    for (int64_t g = 0; g < pack.blocks(); ++g) {
      if (!next(pack.down_scales(J, g), glass::kDownGroup * sizeof(glass::Half))) return "down scales out of stream order";
    }
    for (int64_t w = 0; w < pack.windows(); ++w) {
      if (!next(pack.down_tile(w, J), glass::kDownGroup * pack.row_sub_bytes())) return "down windows out of stream order";
    }
  }
  return "";
}

std::string check_decode(const Case& k, const glass::QuantRows& gu, const glass::QuantRows& dn,
                         const std::vector<std::vector<double>>& z_ref) {
  const int64_t kk = static_cast<int64_t>(k.idx.size());
  const glass::DecodePack pack(gu, dn, k.idx.data(), kk);
  if (!pack.holds(gu, dn, k.idx.data(), kk)) return "a fresh pack does not hold its own kept set";
  const std::string order = check_stream_order(pack);
  if (!order.empty()) return order;
  if (k.accuracy == glass::Accuracy::Int8) {  // all tokens in one gate/up call: each token's bits as alone
    std::vector<glass::PreparedX> xs(k.tokens);
    for (int64_t t = 0; t < k.tokens; ++t) glass::prepare_x(k.x.data() + t * k.d, k.d, k.bits, k.block, k.accuracy, xs[t]);
    const int64_t rows = pack.tiles() * glass::kTileRows;
    std::vector<float> gate(k.tokens * rows), up(k.tokens * rows), gate_one(rows), up_one(rows);
    const glass::QuantKernels& kernels = glass::quant_kernels();
    kernels.gate_up_tiles(pack, xs.data(), k.tokens, 0, pack.tiles(), gate.data(), up.data());
    for (int64_t t = 0; t < k.tokens; ++t) {
      kernels.gate_up_tiles(pack, &xs[t], 1, 0, pack.tiles(), gate_one.data(), up_one.data());
      for (int64_t j = 0; j < rows; ++j) {
        if (gate[t * rows + j] != gate_one[j]) return mismatch("gate, tokens together vs alone", t, j, gate[t * rows + j], gate_one[j]);
        if (up[t * rows + j] != up_one[j]) return mismatch("up, tokens together vs alone", t, j, up[t * rows + j], up_one[j]);
      }
    }
  }
  std::vector<float> y(k.tokens * k.d);
  glass::gather_ffn_quant(k.x.data(), k.tokens, pack, k.act, k.accuracy, y.data(), 1 + kk % 3, glass::SerialFor{});
  const glass::QuantKernels& kernels = glass::quant_kernels();
  const int zp = glass::zero_point(k.bits);
  for (int64_t t = 0; t < k.tokens; ++t) {
    double magnitude = 1.0;
    for (int64_t j : k.idx) magnitude = std::max(magnitude, std::fabs(z_ref[t][j]));
    const double tolerance = magnitude * std::sqrt(double(kk)) * 4;
    const float* yt = y.data() + t * k.d;
    if (k.accuracy == glass::Accuracy::Float32) {
      for (int64_t i = 0; i < k.d; ++i) {
        double want = 0;
        for (int64_t j : k.idx) want += z_ref[t][j] * weight(k.dn_codes, k.dn_scales, k, j, i);
        if (!close(yt[i], want, tolerance)) return mismatch("decode (float) y", t, i, yt[i], want);
      }
      continue;
    }
    // gate/up tiles against float64 dot products with the int8 activations
    glass::PreparedX x;
    glass::prepare_x(k.x.data() + t * k.d, k.d, k.bits, k.block, k.accuracy, x);
    std::vector<float> gate(pack.k_pad), up(pack.k_pad), z(pack.k_pad, 0.0f), y_staged(k.d, 0.0f);
    kernels.gate_up_tiles(pack, &x, 1, 0, pack.tiles(), gate.data(), up.data());
    const std::vector<double> xs = seen_x(k, t);
    for (int64_t j = 0; j < kk; ++j) {
      double g = 0, u = 0, scale = 0;
      for (int64_t i = 0; i < k.d; ++i) {
        g += weight(k.gu_codes, k.gu_scales, k, 2 * k.idx[j], i) * xs[i];
        u += weight(k.gu_codes, k.gu_scales, k, 2 * k.idx[j] + 1, i) * xs[i];
        scale += std::fabs(weight(k.gu_codes, k.gu_scales, k, 2 * k.idx[j], i) * xs[i]);
      }
      if (!close(gate[j], g, std::max(1.0, scale))) return mismatch("decode gate", t, j, gate[j], g);
      if (!close(up[j], u, std::max(1.0, scale))) return mismatch("decode up", t, j, up[j], u);
    }
    kernels.activate_product(k.act, gate.data(), up.data(), z.data(), kk);  // as the op computes them
    // each group's down share against float64 sums of its own int8 coefficients
    std::vector<double> want(k.d, 0.0), rounding(k.d, 0.0);
    for (int64_t J = 0; J < pack.groups(); ++J) {
      glass::GroupCoefs coefs, variant;
      coefs.compute(pack, J, z.data() + J * glass::kDownGroup);
      kernels.group_coefs(pack, J, z.data() + J * glass::kDownGroup, variant);
      const std::string differs = coefs_differ(coefs, variant);
      if (!differs.empty()) return "decode coefficients: " + differs;
      kernels.down_group(pack, coefs, J, y_staged.data());
      for (int64_t i = 0; i < k.d; ++i) {
        const int64_t g = i / k.block;
        for (int64_t jj = 0; jj < glass::kDownGroup && J * glass::kDownGroup + jj < kk; ++jj) {
          const int64_t j = J * glass::kDownGroup + jj;
          const int code = glass::code_at(k.dn_codes.data() + k.idx[j] * (k.d * k.bits / 8), k.bits, i);
          want[i] += double(coefs.scale[g]) * coefs.q[g * glass::kDownGroup + jj] * (code - zp);
          rounding[i] += 0.5 * coefs.scale[g] * std::abs(code - zp);
        }
      }
    }
    for (int64_t i = 0; i < k.d; ++i) {
      if (!close(y_staged[i], want[i], tolerance)) return mismatch("decode down", t, i, y_staged[i], want[i]);
      if (std::fabs(yt[i] - y_staged[i]) > 1e-5 * (std::fabs(want[i]) + tolerance * 1e-2)) {
        return mismatch("decode (tasks) vs its stages", t, i, yt[i], y_staged[i]);
      }
      // and the whole against the FFN itself, within the coefficients' rounding
      double exact = 0;
      for (int64_t j = 0; j < kk; ++j) exact += double(z[j]) * weight(k.dn_codes, k.dn_scales, k, k.idx[j], i);
      if (std::fabs(yt[i] - exact) > rounding[i] * 1.0001 + 1e-4 * tolerance + 1e-5) {
        return mismatch("decode y vs the float FFN", t, i, yt[i], exact);
      }
    }
  }
  return "";
}

// The variant's activation against float64 over the whole float range: within relative 1e-6 (about 8 ulp)
// times 1 + |a|, a the argument of its exponential (-g, or GELU's -2y, itself a rounded float: e^a turns
// its rounding into a relative error of |a| ulp), or twice the scalar definition's own error
// (glass::activate's tanh-GELU cancels for negative g); the saturated tails, where the exact values
// underflow, within 1e-36; and in a run shorter than a vector.
std::string check_activation(std::mt19937_64& rng) {
  std::vector<float> gate = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-3f, -1e-3f, 0.5f, -0.5f, 3.0f, -3.0f, 9.0f, -9.0f,
                             40.0f, -40.0f, 87.0f, -87.0f, 89.0f, -89.0f, 200.0f, -200.0f, 3e38f, -3e38f};
  std::uniform_real_distribution<float> wide(-30.0f, 30.0f);
  for (int i = 0; i < 977; ++i) gate.push_back(wide(rng));
  const std::vector<float> ones(gate.size(), 1.0f);
  std::vector<float> z(gate.size());
  const glass::QuantKernels& kernels = glass::quant_kernels();
  for (const glass::Activation act : {glass::Activation::SiLU, glass::Activation::GeluTanh}) {
    for (const int64_t n : {int64_t(gate.size()), int64_t(5)}) {
      kernels.activate_product(act, gate.data(), ones.data(), z.data(), n);
      for (int64_t i = 0; i < n; ++i) {
        const double g = gate[i], want = act_ref(act, g), scalar_error = std::fabs(glass::activate(act, gate[i]) - want);
        const double argument = act == glass::Activation::SiLU ? g : 2 * std::sqrt(2.0 / M_PI) * (g + 0.044715 * g * g * g);
        const double relative = 1e-6 * (1 + std::min(std::fabs(argument), 100.0));
        if (std::fabs(z[i] - want) > std::max(relative * std::fabs(want), 2 * scalar_error) + 1e-36) {
          return mismatch(act == glass::Activation::SiLU ? "silu" : "gelu_tanh", 0, i, z[i], want);
        }
      }
    }
  }
  return "";
}

// Coefficients at exact rounding ties (down scales 1, amax 127: c * 127 / amax = c) round half to even, as
// nearbyint does, in every variant; and an all-zero group is all zeros.
std::string check_coefficient_ties() {
  const int64_t d = 64, m = 32, block = 32;
  std::vector<uint8_t> gu_codes(2 * m * d / 2, 0x88), dn_codes(m * d / 2, 0x88);
  std::vector<float> gu_scales(2 * m * (d / block), 1.0f), dn_scales(m * (d / block), 1.0f);
  const glass::QuantRows gu{gu_codes.data(), gu_scales.data(), d, 4, block}, dn{dn_codes.data(), dn_scales.data(), d, 4, block};
  std::vector<int64_t> idx(m);
  for (int64_t j = 0; j < m; ++j) idx[j] = j;
  const glass::DecodePack pack(gu, dn, idx.data(), m);
  std::vector<float> z(glass::kDownGroup);
  for (int64_t j = 0; j < glass::kDownGroup; ++j) z[j] = (j % 2 ? -1.0f : 1.0f) * (static_cast<float>(j / 2) + 0.5f);
  z[31] = 127.0f;
  for (const bool zeros : {false, true}) {
    if (zeros) std::fill(z.begin(), z.end(), 0.0f);
    glass::GroupCoefs want, got;
    want.compute(pack, 0, z.data());
    glass::quant_kernels().group_coefs(pack, 0, z.data(), got);
    const std::string differs = coefs_differ(want, got);
    if (!differs.empty()) return std::string(zeros ? "zero group: " : "ties: ") + differs;
    if (!zeros && (want.q[0] != 0 || want.q[2] != 2 || want.q[1] != 0 || want.q[3] != -2)) {
      return "ties: the definition does not round half to even";
    }
  }
  return "";
}

// Returns "" or what failed.
// The 2m gate/up rows as a tied embedding table: LM head logits and the lookup of every row.
std::string check_tied_table(const Case& k, const glass::QuantRows& table) {
  const int64_t rows = 2 * k.m;
  std::shared_ptr<const glass::RowsPack> pack;
  if (k.accuracy == glass::Accuracy::Int8) {
    pack = std::make_shared<const glass::RowsPack>(table, rows);
    if (!pack->holds(table, rows)) return "a fresh rows pack does not hold its own table";
  }
  std::vector<float> logits(k.tokens * rows);
  glass::linear_rows_quant(k.x.data(), k.tokens, table, rows, pack.get(), k.accuracy, logits.data(), 1 + k.m % 3,
                           glass::SerialFor{});
  for (int64_t t = 0; t < k.tokens; ++t) {
    const std::vector<double> xs = seen_x(k, t);
    for (int64_t r = 0; r < rows; ++r) {
      double want = 0, scale = 0;
      for (int64_t i = 0; i < k.d; ++i) {
        want += weight(k.gu_codes, k.gu_scales, k, r, i) * xs[i];
        scale += std::fabs(weight(k.gu_codes, k.gu_scales, k, r, i) * xs[i]);
      }
      if (!close(logits[t * rows + r], want, std::max(1.0, scale))) return mismatch("linear_rows logits", t, r, logits[t * rows + r], want);
    }
  }
  std::vector<int64_t> ids(rows);
  for (int64_t r = 0; r < rows; ++r) ids[r] = rows - 1 - r;
  if (!glass::check_indices(ids.data(), rows, rows, "token id").empty()) return "valid token ids refused";
  const int64_t bad[] = {rows, -1};
  for (const int64_t id : bad) {
    if (glass::check_indices(&id, 1, rows, "token id").empty()) return "token id " + std::to_string(id) + " accepted";
  }
  std::vector<float> embedded(rows * k.d);
  glass::embedding_quant(ids.data(), rows, table, embedded.data());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < k.d; ++i) {
      if (embedded[r * k.d + i] != static_cast<float>(weight(k.gu_codes, k.gu_scales, k, ids[r], i))) {
        return mismatch("embedding_q", r, i, embedded[r * k.d + i], weight(k.gu_codes, k.gu_scales, k, ids[r], i));
      }
    }
  }
  return "";
}

std::string check(const Case& k) {
  glass::QuantRows gu{k.gu_codes.data(), k.gu_scales.data(), k.d, k.bits, k.block};
  glass::QuantRows dn{k.dn_codes.data(), k.dn_scales.data(), k.d, k.bits, k.block};
  std::vector<std::vector<double>> z_ref;
  std::string error = check_prefill(k, gu, dn, z_ref);
  if (error.empty()) error = check_decode(k, gu, dn, z_ref);
  return error.empty() ? check_tied_table(k, gu) : error;
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
    for (const std::string& error : {check_coefficient_ties(), check_activation(rng)}) {
      if (error.empty()) continue;
      ++failed;
      std::printf("[%s] %s\n", name, error.c_str());
    }
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
