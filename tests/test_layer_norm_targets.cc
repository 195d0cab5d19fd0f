// The L1 layer norm (qtrain/engine/layers/norm.h) end to end on every SIMD target: y, dx, dγ and dβ (integers and
// exponents) hashed and compared with digests recorded from the all-scalar backward, so the SIMD row kernels
// (qtrain/kernels/layer_norm_rows.h) can never change a bit. Rows of 1..768 features; per-tensor, per-row and
// per-column input exponents; INT32_MIN/INT32_MAX, constant (zero-spread) and one-hot rows; gradients of 31 bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <ios>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/layers/norm.h"
#include "target_test_util.h"

namespace qtrain {
namespace {

constexpr int32_t kMin = std::numeric_limits<int32_t>::min(), kMax = std::numeric_limits<int32_t>::max();

// FNV-1a over a tensor's shape, exponents and integers.
void mix(uint64_t& h, uint64_t v) {
  for (int i = 0; i < 8; ++i) {
    h ^= (v >> (8 * i)) & 0xFF;
    h *= 0x100000001b3ull;
  }
}
void mix(uint64_t& h, const Tensor& t) {
  mix(h, t.rows());
  mix(h, t.cols());
  mix(h, static_cast<uint64_t>(t.axis()));
  for (std::size_t r = 0; r < t.rows(); ++r)
    for (std::size_t c = 0; c < t.cols(); ++c) {
      if (t.axis() != ScaleAxis::kTensor || (r == 0 && c == 0)) mix(h, static_cast<uint64_t>(t.exponent_at(r, c)));
      mix(h, static_cast<uint64_t>(static_cast<uint32_t>(t.data<int32_t>()[r * t.cols() + c])));
    }
}

struct Case {
  std::size_t rows, features;
  ScaleAxis axis;
};

// Random rows of different spans, with constant, one-hot and extreme rows among them.
Tensor make_x(const Case& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Tensor x(c.rows, c.features, DType::kI32, -16);
  int32_t* p = x.data<int32_t>();
  for (std::size_t r = 0; r < c.rows; ++r) {
    int32_t* row = p + r * c.features;
    const int bits = 4 + static_cast<int>(r % 28);
    for (std::size_t j = 0; j < c.features; ++j) row[j] = static_cast<int32_t>(rng() % (1u << bits)) - (1 << (bits - 1));
    switch (r % 7) {
      case 1:
        for (std::size_t j = 0; j < c.features; ++j) row[j] = -777;  // zero spread
        break;
      case 3:
        for (std::size_t j = 0; j < c.features; ++j) row[j] = 0;
        row[r % c.features] = kMax;  // one-hot
        break;
      case 5:
        for (std::size_t j = 0; j < c.features; ++j) row[j] = j % 2 == 0 ? kMin : kMax;
        if (c.features > 2) row[2] = kernels::random_i32(rng);
        break;
      default:
        break;
    }
  }
  if (c.axis == ScaleAxis::kRow) {
    std::vector<int> e(c.rows);
    for (std::size_t r = 0; r < c.rows; ++r) e[r] = -20 + static_cast<int>(r % 9);
    x.set_exponents(ScaleAxis::kRow, e);
  } else if (c.axis == ScaleAxis::kCol) {
    std::vector<int> e(c.features);
    for (std::size_t j = 0; j < c.features; ++j) e[j] = -18 + static_cast<int>(j % 5);
    x.set_exponents(ScaleAxis::kCol, e);
  }
  return x;
}

Tensor make_dy(const Case& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Tensor g(c.rows, c.features, DType::kI32, -30);
  for (std::size_t i = 0; i < g.size(); ++i) {
    const int bits = static_cast<int>(rng() % 32);
    g.data<int32_t>()[i] = i % 97 == 0 ? kernels::random_i32(rng)
                                       : static_cast<int32_t>(static_cast<int64_t>(rng() % (1ull << bits)) -
                                                              (int64_t{1} << bits) / 2);
  }
  if (c.rows > 2) std::fill(g.data<int32_t>() + c.features, g.data<int32_t>() + 2 * c.features, 0);  // a zero row
  return g;
}

uint64_t run_digest(const Case& c, uint64_t seed) {
  L1LayerNorm ln(c.features, 3);
  std::mt19937_64 rng(seed + 1);
  for (std::size_t j = 0; j < c.features; ++j) {
    ln.gamma().master.data<int32_t>()[j] = static_cast<int32_t>(rng() % (1u << 26)) - (1 << 25);
    ln.beta().master.data<int32_t>()[j] = static_cast<int32_t>(rng() % (1u << 26)) - (1 << 25);
  }
  auto x = std::make_shared<Var>();
  x->value = make_x(c, seed);
  x->requires_grad = true;
  Tape tape;
  VarPtr y = ln.forward({nullptr, &tape, 0, 0}, x);
  y->grad = make_dy(c, seed + 2);
  y->has_grad = true;
  tape.backward();
  uint64_t h = 0xcbf29ce484222325ull;
  for (const Tensor* t : {&y->value, &x->grad, &ln.gamma().grad, &ln.beta().grad}) mix(h, *t);
  return h;
}

struct Golden {
  Case c;
  uint64_t digest;
};

// Recorded with the scalar backward (before its SIMD kernels), on every target.
const Golden kGolden[] = {
    {{9, 1, ScaleAxis::kTensor}, 0xdc78889aae36aff1ull},   {{9, 7, ScaleAxis::kTensor}, 0xd2f78d187762805bull},
    {{30, 16, ScaleAxis::kRow}, 0x663e6903c037d7cfull},    {{30, 63, ScaleAxis::kCol}, 0x39015b487fa837ceull},
    {{70, 64, ScaleAxis::kTensor}, 0x427763198c6bab7dull}, {{70, 64, ScaleAxis::kRow}, 0x1ff1a0fae9bf2192ull},
    {{70, 64, ScaleAxis::kCol}, 0xcfe8258361f28c62ull},    {{21, 65, ScaleAxis::kTensor}, 0xbdcf3cbaf78f7000ull},
    {{14, 768, ScaleAxis::kCol}, 0x590fe09ffa559eebull},   {{14, 768, ScaleAxis::kTensor}, 0x566127c77bd4eed4ull},
};

class LayerNormTargets : public kernels::PerTargetTest {};

TEST_P(LayerNormTargets, OutputsMatchTheScalarDigests) {
  for (const Golden& g : kGolden) {
    const uint64_t d = run_digest(g.c, 1000 + g.c.rows * 7 + g.c.features);
    EXPECT_EQ(d, g.digest) << g.c.rows << "x" << g.c.features << " axis " << static_cast<int>(g.c.axis) << ": 0x"
                           << std::hex << d;
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, LayerNormTargets, ::testing::ValuesIn(kernels::target_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
}  // namespace qtrain
