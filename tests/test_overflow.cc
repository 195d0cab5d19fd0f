// Accumulator bounds at their edges (docs/reliability.md lists every bound): the int8 GEMM reductions through
// Linear, the SGD's int64 sums with the largest values it can hold, softmax with extreme logits, and the
// ShiftQuant int8 carrier budget.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/engine/optim/optimizer.h"
#include "qtrain/engine/ops/softmax_ce.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"
#include "qtrain/quant/shiftquant.h"

namespace qtrain {
namespace {

using kernels::kMaxReduction;

TEST(Bounds, MaxReductionIsTheLargestThatFitsInt32) {
  // |a|, |b| ≤ 128 (int8): R·128·128 must stay below 2^31.
  EXPECT_LE(int64_t{kMaxReduction} * 128 * 128, int64_t{std::numeric_limits<int32_t>::max()});
  EXPECT_GT(int64_t{kMaxReduction + 1} * 128 * 128, int64_t{std::numeric_limits<int32_t>::max()});
}

TEST(Bounds, LinearRefusesReductionsBeyondTheBound) {
  LinearSpec s;
  s.in = kMaxReduction + 1;
  s.out = 1;
  EXPECT_THROW(Linear(s, 0, 0), UsageError);
  s.in = 1;
  s.signed_input = true;
  s.out = kMaxReduction + 1;  // the input-gradient GEMM reduces over the outputs
  EXPECT_THROW(Linear(s, 0, 0), UsageError);
  s.out = kMaxReduction;
  EXPECT_NO_THROW(Linear(s, 0, 0));
  // The weight-gradient GEMM reduces over the batch: it runs in chunks of at most kMaxReduction rows, each exact in
  // int32 and summed in int64, so a larger batch trains.
  s.out = 1;
  Linear lin(s, 0, 0);
  auto x = std::make_shared<Var>();
  x->value = Tensor(kMaxReduction + 1, 1, DType::kI8, 0);
  std::fill_n(x->value.data<int8_t>(), kMaxReduction + 1, int8_t{127});
  x->requires_grad = false;
  Tape tape;
  VarPtr y = lin.forward({nullptr, &tape, 0, 0}, x);
  y->grad = Tensor(kMaxReduction + 1, 1, DType::kI32, -20);
  std::fill_n(y->grad.data<int32_t>(), kMaxReduction + 1, 1 << 20);
  y->has_grad = true;
  EXPECT_NO_THROW(tape.backward());
  ASSERT_TRUE(lin.weight().has_grad);
  // dW = Σ_n dY·X = (kMaxReduction+1)·1·127 in real units (dY = 2^20·2^−20 = 1, X = 127).
  EXPECT_DOUBLE_EQ(lin.weight().grad.value(0), 127.0 * static_cast<double>(kMaxReduction + 1));
}

TEST(Bounds, LinearForwardAtTheFullReductionIsExact) {
  // in = kMaxReduction, every input and weight at the int8 extreme 127: the sum 131071·127·127 = 2114018431 is
  // within 2^31 and must come out exact (before the bias, which is zero here).
  LinearSpec s;
  s.in = kMaxReduction;
  s.out = 2;
  s.signed_input = true;
  Linear lin(s, 0, 0);
  for (int sign : {1, -1}) {
    int32_t* w = lin.weight().master.data<int32_t>();
    // 127·2^14 quantizes to exactly 127 (per-row covering exponent 14).
    for (std::size_t i = 0; i < lin.weight().master.size(); ++i) w[i] = (i < kMaxReduction ? sign : -sign) * (127 << 14);
    std::fill_n(lin.bias().master.data<int32_t>(), 2, 0);
    auto x = std::make_shared<Var>();
    x->value = Tensor(1, kMaxReduction, DType::kI8, 0);
    std::fill_n(x->value.data<int8_t>(), kMaxReduction, int8_t{127});
    const VarPtr y = lin.forward({nullptr, nullptr, 0, 0}, x);
    const int64_t expect = int64_t{kMaxReduction} * 127 * 127;
    EXPECT_EQ(y->value.data<int32_t>()[0], sign * expect);
    EXPECT_EQ(y->value.data<int32_t>()[1], -sign * expect);
  }
}

// A bias far coarser than the layer's output (bias exponent 200, output exponent about −20): the aligned bias
// saturates instead of overflowing a 64-bit shift (a fuzz finding: fuzz_model, tests/fuzz_corpus/model/
// regression-bias-shift-overflow), and the output saturates at the int32 limits.
TEST(Bounds, BiasFarCoarserThanTheOutputSaturates) {
  LinearSpec s;
  s.in = 4;
  s.out = 3;
  s.signed_input = true;
  Linear lin(s, 0, 0);
  lin.bias().master.set_exponent(200);
  int32_t* b = lin.bias().master.data<int32_t>();
  b[0] = 5;
  b[1] = -(1 << 30);
  b[2] = 0;
  auto x = std::make_shared<Var>();
  x->value = Tensor(2, 4, DType::kI8, -5);
  std::fill_n(x->value.data<int8_t>(), 8, int8_t{3});
  const VarPtr y = lin.forward({nullptr, nullptr, 0, 0}, x);
  for (std::size_t r = 0; r < 2; ++r) {
    EXPECT_EQ(y->value.data<int32_t>()[r * 3 + 0], std::numeric_limits<int32_t>::max());
    EXPECT_EQ(y->value.data<int32_t>()[r * 3 + 1], std::numeric_limits<int32_t>::min());
  }
  EXPECT_EQ(quant::shift_round_even_sat(5, -144), int64_t{1} << 62);
  EXPECT_EQ(quant::shift_round_even_sat(-5, -60), -(int64_t{1} << 62));
  EXPECT_EQ(quant::shift_round_even_sat(5, -59), int64_t{5} << 59);
  EXPECT_EQ(quant::shift_round_even_sat(5, 1), quant::shift_round_even(5, 1));
}

TEST(Bounds, SgdWithExtremeMomentumAndGradientStaysInRange) {
  // Momentum and weights at the largest magnitude the optimizer keeps (2^30), a gradient at the int32 extreme 2^15
  // times coarser than the master exponent: every int64 sum stays in range and the results stay within ±2^30.
  Param p;
  p.id = 1;
  p.master = Tensor(1, 4, DType::kI32, -20);
  Tensor momentum(1, 4, DType::kI32, -20);
  const int32_t big = 1 << 30;
  const int32_t w[4] = {big, -big, big, -big}, v[4] = {big, -big, -big, big};
  const int32_t g[4] = {std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min(),
                        std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min()};
  std::copy(w, w + 4, p.master.data<int32_t>());
  std::copy(v, v + 4, momentum.data<int32_t>());
  p.grad = Tensor(1, 4, DType::kI32, -5);
  std::copy(g, g + 4, p.grad.data<int32_t>());
  p.has_grad = true;
  Sgd sgd({0.9, 5e-4});
  sgd.load_state({{p.name, "momentum", momentum}}, {&p});
  sgd.step({&p}, 50.0, 0, 0);
  const Tensor& v1 = *sgd.momentum(p.name);
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_LE(std::abs(int64_t{p.master.data<int32_t>()[i]}), int64_t{big}) << i;
    EXPECT_LE(std::abs(int64_t{v1.data<int32_t>()[i]}), int64_t{big}) << i;
  }
  // The values are what the float formula gives, to the precision the exponents left.
  for (std::size_t i = 0; i < 4; ++i) {
    const double vf = 0.9 * std::ldexp(v[i], -20) + std::ldexp(g[i], -5) + 5e-4 * std::ldexp(w[i], -20);
    const double wf = std::ldexp(w[i], -20) - 50.0 * vf;
    EXPECT_NEAR(v1.value(i), vf, std::abs(vf) * 1e-6 + std::ldexp(1.0, v1.exponent())) << i;
    EXPECT_NEAR(p.master.value(i), wf, std::abs(wf) * 1e-4 + std::ldexp(1.0, p.master.exponent())) << i;
  }
}

TEST(Bounds, SoftmaxWithLogitsAtTheInt32ExtremesIsFinite) {
  auto z = std::make_shared<Var>();
  z->value = Tensor(2, 10, DType::kI32, 40);  // values up to 2^71: clamped to ±2^40 in Q16
  for (std::size_t i = 0; i < 20; ++i)
    z->value.data<int32_t>()[i] = i % 2 ? std::numeric_limits<int32_t>::max() : std::numeric_limits<int32_t>::min();
  z->requires_grad = true;
  Tape tape;
  const int32_t labels[2] = {0, 1};
  const LossResult r = softmax_cross_entropy({nullptr, &tape, 0, 0}, z, labels);
  EXPECT_TRUE(std::isfinite(r.loss));
  EXPECT_LE(r.loss, std::log(10.0 * std::ldexp(1.0, 30)) + 1e-9);  // ln(C·2^30): the largest loss possible
  ASSERT_TRUE(z->has_grad);
  for (std::size_t i = 0; i < 20; ++i) EXPECT_LE(std::abs(int64_t{z->grad.data<int32_t>()[i]}), int64_t{1} << 30);
}

TEST(Bounds, ShiftQuantCarrierBudget) {
  // (2^(b−1)−1)·2^(N_G−1) ≤ 127 for the largest allowed N_G, and one more group is refused.
  for (int b = 2; b <= 8; ++b) {
    const int g = quant::max_groups(b);
    EXPECT_LE(((1 << (b - 1)) - 1) << (g - 1), 127) << b;
    EXPECT_GT(((1 << (b - 1)) - 1) << g, 127) << b;
    EXPECT_NO_THROW(quant::validate({b, g}));
    EXPECT_THROW(quant::validate({b, g + 1}), UsageError);
  }
}

}  // namespace
}  // namespace qtrain
