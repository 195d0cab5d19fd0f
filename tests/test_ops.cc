// Gradient checks: every op's integer forward and backward against the float formula it implements.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/engine/optim/optimizer.h"
#include "qtrain/engine/core/profile.h"
#include "qtrain/engine/ops/qgemm_op.h"
#include "qtrain/engine/ops/relu.h"
#include "qtrain/engine/optim/schedule.h"
#include "qtrain/engine/ops/softmax_ce.h"
#include "qtrain/kernels/sgd_update.h"
#include "qtrain/kernels/thread_pool.h"
#include "qtrain/quant/pow2.h"
#include "qtrain/quant/rng.h"
#include "qtrain/quant/shiftquant.h"
#include "tests/op_test_util.h"

namespace qtrain {
namespace {

double deq(const Tensor& t, std::size_t r, std::size_t c) {
  const double q = t.dtype() == DType::kI8 ? t.data<int8_t>()[r * t.cols() + c] : t.data<int32_t>()[r * t.cols() + c];
  return std::ldexp(q, t.exponent_at(r, c));
}

// Float reference of what Linear quantizes: X to one exponent (nearest-even), W per row (nearest-even).
struct LinearRef {
  std::vector<double> xq, wq;
  int ex;
};
LinearRef reference_quantization(Linear& lin, const Tensor& x) {
  const auto& s = lin.spec();
  LinearRef r;
  std::vector<int8_t> q(x.size());
  const auto& e = x.exponents();
  r.ex = quant::quantize_to_tensor(x.data<int32_t>(), x.rows(), x.cols(), e.data(), e.size(),
                                   {s.signed_input ? quant::signed_range(s.act_bits) : quant::unsigned_range(s.act_bits)},
                                   q.data());
  for (auto v : q) r.xq.push_back(std::ldexp(double(v), r.ex));
  std::vector<int8_t> wq(s.out * s.in);
  std::vector<int> ew(s.out);
  quant::quantize_per_row(lin.weight().master.data<int32_t>(), s.out, s.in, lin.weight().master.exponent(),
                          {quant::signed_range(s.weight_bits)}, wq.data(), ew.data());
  for (std::size_t i = 0; i < wq.size(); ++i) r.wq.push_back(std::ldexp(double(wq[i]), ew[i / s.in]));
  return r;
}

class LinearGrad : public ::testing::TestWithParam<std::tuple<int, int, bool>> {};

TEST_P(LinearGrad, ForwardAndBackwardMatchFloatFormula) {
  const auto [wbits, gbits, is_signed] = GetParam();
  LinearSpec spec;
  spec.in = 37;
  spec.out = 11;
  spec.weight_bits = wbits;
  spec.act_bits = wbits;
  spec.grad_bits = gbits;
  spec.groups = quant::max_groups(gbits);
  spec.signed_input = is_signed;
  Linear lin(spec, 3, 17);
  const std::size_t n = 9;
  Tensor xt = random_i32(n, spec.in, 100000, -20, 1);
  if (!is_signed)
    for (std::size_t i = 0; i < xt.size(); ++i) xt.data<int32_t>()[i] = std::abs(xt.data<int32_t>()[i]);
  auto x = var(xt);
  Tape tape;
  const StepContext ctx{nullptr, &tape, 5, 7};
  VarPtr y = lin.forward(ctx, x);
  const LinearRef ref = reference_quantization(lin, xt);

  // Forward: y = Q(x)·Q(W)ᵀ + b; exact but for the bias, rounded to the output's exponent.
  for (std::size_t r = 0; r < n; ++r)
    for (std::size_t c = 0; c < spec.out; ++c) {
      double want = std::ldexp(double(lin.bias().master.data<int32_t>()[c]), lin.bias().master.exponent());
      for (std::size_t k = 0; k < spec.in; ++k) want += ref.xq[r * spec.in + k] * ref.wq[c * spec.in + k];
      EXPECT_NEAR(deq(y->value, r, c), want, std::ldexp(0.5, y->value.exponent_at(r, c))) << r << "," << c;
    }

  // Backward with a known dY.
  y->grad = random_i32(n, spec.out, 1 << 20, -26, 2);
  y->has_grad = true;
  tape.backward();
  quant::ShiftQuantized g;
  quant::shiftquant(y->grad.data<int32_t>(), n, spec.out, y->grad.exponent(), {gbits, spec.groups},
                    ctx.rounding_rng(3, kOutputGradSlot), &g);
  std::vector<double> gq(n * spec.out);
  for (std::size_t i = 0; i < gq.size(); ++i) gq[i] = std::ldexp(double(g.q[i]), g.channel_exponent(i % spec.out));
  // dx = Q_g(dy)·Q(W): exact when the weight rows' exponents span no more than the int8 headroom; otherwise the
  // weights of the small rows were rounded to the common exponent — bound that rounding.
  ASSERT_TRUE(x->has_grad);
  std::vector<int> ew(spec.out);
  int emax = -1000;
  for (std::size_t c = 0; c < spec.out; ++c) {
    double m = 0;
    for (std::size_t k = 0; k < spec.in; ++k) m = std::max(m, std::abs(ref.wq[c * spec.in + k]));
    emax = std::max(emax, static_cast<int>(std::ceil(std::log2(m))));
  }
  for (std::size_t r = 0; r < n; ++r)
    for (std::size_t k = 0; k < spec.in; ++k) {
      double want = 0, tol = 0;
      for (std::size_t c = 0; c < spec.out; ++c) {
        want += gq[r * spec.out + c] * ref.wq[c * spec.in + k];
        tol += std::abs(gq[r * spec.out + c]) * std::ldexp(0.5, emax - 7 - quant::int8_headroom(quant::signed_range(wbits).hi) + 1);
      }
      EXPECT_NEAR(deq(x->grad, r, k), want, tol + 1e-300) << r << "," << k;
    }
  // dW = Q_g(dy)ᵀ·Q(x), exact.
  ASSERT_TRUE(lin.weight().has_grad);
  for (std::size_t c = 0; c < spec.out; ++c)
    for (std::size_t k = 0; k < spec.in; ++k) {
      double want = 0;
      for (std::size_t r = 0; r < n; ++r) want += gq[r * spec.out + c] * ref.xq[r * spec.in + k];
      ASSERT_EQ(deq(lin.weight().grad, c, k), want) << c << "," << k;
    }
  // db = Σ dy, exact.
  for (std::size_t c = 0; c < spec.out; ++c) {
    double want = 0;
    for (std::size_t r = 0; r < n; ++r) want += deq(y->grad, r, c);
    ASSERT_EQ(deq(lin.bias().grad, 0, c), want);
  }
}

INSTANTIATE_TEST_SUITE_P(Bits, LinearGrad,
                         ::testing::Values(std::make_tuple(8, 8, true), std::make_tuple(4, 4, false),
                                           std::make_tuple(4, 4, true), std::make_tuple(6, 6, false),
                                           std::make_tuple(2, 4, false)));

TEST(Linear, GradientApproximatesUnquantizedFloatGradient) {
  // At 8 bits the integer gradient is close to the float gradient of the unquantized layer.
  LinearSpec spec{64, 32, 8, 8, 8, 1, true, true};
  Linear lin(spec, 0, 1);
  Tensor xt = random_i32(16, 64, 1 << 16, -16, 3);
  auto x = var(xt);
  Tape tape;
  VarPtr y = lin.forward({nullptr, &tape, 0, 0}, x);
  y->grad = random_i32(16, 32, 1 << 16, -20, 4);
  y->has_grad = true;
  tape.backward();
  double err = 0, norm = 0;
  for (std::size_t r = 0; r < 16; ++r)
    for (std::size_t k = 0; k < 64; ++k) {
      double want = 0;
      for (std::size_t c = 0; c < 32; ++c)
        want += deq(y->grad, r, c) * deq(lin.weight().master, c, k);
      err += std::pow(deq(x->grad, r, k) - want, 2);
      norm += want * want;
    }
  EXPECT_LT(std::sqrt(err / norm), 0.03);
}

TEST(Tensor, RecycledBuffersAreZeroedWhenAskedAndKeepNoStaleHints) {
  // Large buffers are recycled (tensor.h): a zero-filled tensor of a recycled size is still all zeros.
  const std::size_t rows = 257, cols = 129;  // > 64 KiB of int32
  for (int round = 0; round < 3; ++round) {
    {
      Tensor dirty = Tensor::uninitialized(rows, cols, DType::kI32);
      int32_t* p = dirty.data<int32_t>();
      for (std::size_t i = 0; i < dirty.size(); ++i) p[i] = static_cast<int32_t>(i) | 1;
      dirty.set_nonnegative_max(7);
    }
    const Tensor clean(rows, cols, DType::kI32);
    for (std::size_t i = 0; i < clean.size(); ++i) ASSERT_EQ(clean.data<int32_t>()[i], 0) << i;
    EXPECT_FALSE(clean.nonnegative_max().has_value());
    const Tensor fresh = Tensor::uninitialized(rows, cols, DType::kI32);
    EXPECT_FALSE(fresh.nonnegative_max().has_value());
  }
}

// A Var's quantized copy is made once per setting and reused by the next consumer with the same one.
TEST(QGemmOp, QuantizedInputIsReusedPerSetting) {
  auto x = std::make_shared<Var>();
  x->value = Tensor(6, 4, DType::kI32, -10);
  for (std::size_t i = 0; i < 24; ++i) x->value.data<int32_t>()[i] = static_cast<int32_t>(i * 37 % 200) - 50;
  QGemmConfig c4;
  c4.act_bits = 4;
  c4.signed_input = true;
  QGemmConfig c8 = c4;
  c8.act_bits = 8;
  const QGemmOp a(c4), b(c4), c(c8);
  const auto qa = a.quantize_input(*x);
  EXPECT_EQ(b.quantize_input(*x), qa);  // same setting: the same tensor
  const auto qc = c.quantize_input(*x);
  EXPECT_NE(qc, qa);
  const Tensor direct = c.quantize_input(x->value);
  EXPECT_EQ(qc->exponent(), direct.exponent());
  for (std::size_t i = 0; i < 24; ++i) EXPECT_EQ(qc->data<int8_t>()[i], direct.data<int8_t>()[i]) << i;
}

// The activation quantizer on the step's pool gives the single-thread result for every input form it takes: int32
// with one exponent (with and without a known maximum), per-column exponents, int8 (widened), column groups.
TEST(QGemmOp, QuantizedInputIsIdenticalOnThePool) {
  kernels::ThreadPool two(2, kernels::ThreadPool::Split::kAlways), three(3, kernels::ThreadPool::Split::kAlways);
  const std::size_t rows = 700, cols = 48;
  Tensor plain = random_i32(rows, cols, 1 << 20, -16, 21);
  Tensor per_col = plain;
  std::vector<int> e(cols);
  for (std::size_t c = 0; c < cols; ++c) e[c] = -18 + static_cast<int>(c % 4);
  per_col.set_exponents(ScaleAxis::kCol, e);
  Tensor small = Tensor::uninitialized(rows, cols, DType::kI8);
  for (std::size_t i = 0; i < small.size(); ++i)
    small.data<int8_t>()[i] = static_cast<int8_t>(plain.data<int32_t>()[i] >> 13);
  small.set_exponent(-7);
  // Non-negative with its maximum known (a ReLU output).
  auto x = var(plain);
  Relu relu;
  Tape tape;
  const Tensor nonneg = relu.forward({nullptr, &tape, 0, 0}, x)->value;
  ASSERT_TRUE(nonneg.nonnegative_max().has_value());
  for (const Tensor* t : std::vector<const Tensor*>{&plain, &per_col, &small, &nonneg}) {
    for (const int bits : {4, 8}) {
      for (const bool is_signed : {true, false}) {
        for (const quant::ScaleRule rule : {quant::ScaleRule::kCover, quant::ScaleRule::kMinError}) {
          for (const int groups : {1, 3}) {
            // Column groups take one input exponent and fit the carrier only below 8 bits.
            const quant::IntRange range = is_signed ? quant::signed_range(bits) : quant::unsigned_range(bits);
            if (groups > 1 && (t == &per_col || groups > quant::max_column_groups(range))) continue;
            const Tensor ref = quantize_activation(*t, bits, is_signed, rule, groups);
            for (kernels::ThreadPool* pool : {&two, &three}) {
              const Tensor q = quantize_activation(*t, bits, is_signed, rule, groups, pool);
              ASSERT_EQ(q.exponent(), ref.exponent()) << t->describe() << " bits " << bits << " groups " << groups;
              for (std::size_t i = 0; i < q.size(); ++i)
                ASSERT_EQ(q.data<int8_t>()[i], ref.data<int8_t>()[i]) << t->describe() << " element " << i;
            }
          }
        }
      }
    }
  }
  // Through QGemmOp on a Var.
  QGemmConfig cfg;
  cfg.act_bits = 4;
  cfg.act_groups = 2;
  cfg.scale = quant::ScaleRule::kMinError;
  const QGemmOp op(cfg);
  const Tensor ref = op.quantize_input(nonneg);
  auto v = var(nonneg);
  const auto q = op.quantize_input(*v, &three);
  ASSERT_EQ(q->exponent(), ref.exponent());
  for (std::size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(q->data<int8_t>()[i], ref.data<int8_t>()[i]) << i;
}

TEST(Relu, ForwardAndBackward) {
  Tensor xt = random_i32(5, 7, 1000, -3, 9);
  auto x = var(xt);
  Tape tape;
  Relu relu;
  VarPtr y = relu.forward({nullptr, &tape, 0, 0}, x);
  // The output's maximum is known for free (the activation quantizer then skips its max pass).
  int32_t mx = 0;
  for (std::size_t i = 0; i < xt.size(); ++i) mx = std::max(mx, xt.data<int32_t>()[i]);
  ASSERT_TRUE(y->value.nonnegative_max().has_value());
  EXPECT_EQ(*y->value.nonnegative_max(), static_cast<uint64_t>(mx));
  const Tensor q_hint = quantize_activation(y->value, 4, false);
  Tensor plain = y->value;
  plain.data<int32_t>();  // a mutable access drops the hint
  ASSERT_FALSE(plain.nonnegative_max().has_value());
  const Tensor q_plain = quantize_activation(plain, 4, false);
  EXPECT_EQ(q_hint.exponent(), q_plain.exponent());
  for (std::size_t i = 0; i < xt.size(); ++i) EXPECT_EQ(q_hint.data<int8_t>()[i], q_plain.data<int8_t>()[i]);
  y->grad = random_i32(5, 7, 1000, -9, 10);
  y->has_grad = true;
  y->retain_grad = true;  // kept for the comparison below
  tape.backward();
  for (std::size_t i = 0; i < xt.size(); ++i) {
    const int32_t xi = xt.data<int32_t>()[i];
    EXPECT_EQ(y->value.data<int32_t>()[i], std::max(xi, 0));
    EXPECT_EQ(x->grad.data<int32_t>()[i], xi > 0 ? y->grad.data<int32_t>()[i] : 0);
  }
  EXPECT_EQ(x->grad.exponent(), -9);

  // Without retain_grad the op consumes its output's gradient (masked in place and moved to x): same result.
  auto x2 = var(xt);
  VarPtr y2 = relu.forward({nullptr, &tape, 0, 0}, x2);
  y2->grad = y->grad;
  y2->has_grad = true;
  tape.backward();
  EXPECT_FALSE(y2->has_grad);
  EXPECT_TRUE(y2->grad.empty());
  ASSERT_EQ(x2->grad.exponent(), -9);
  for (std::size_t i = 0; i < xt.size(); ++i) EXPECT_EQ(x2->grad.data<int32_t>()[i], x->grad.data<int32_t>()[i]);
}

TEST(SoftmaxCrossEntropy, MatchesFloatFormula) {
  for (std::size_t batch : {std::size_t{1}, std::size_t{10}, std::size_t{64}}) {
    const std::size_t classes = 10;
    Tensor zt = random_i32(batch, classes, 1 << 14, -12, batch);
    std::vector<int> e_col(classes);
    for (std::size_t c = 0; c < classes; ++c) e_col[c] = -12 + static_cast<int>(c % 3) - 1;
    zt.set_exponents(ScaleAxis::kCol, e_col);
    auto z = var(zt);
    std::vector<int32_t> labels(batch);
    for (std::size_t r = 0; r < batch; ++r) labels[r] = static_cast<int32_t>((r * 7) % classes);
    Tape tape;
    const LossResult res = softmax_cross_entropy({nullptr, &tape, 0, 0}, z, labels.data());
    double loss = 0;
    std::size_t correct = 0;
    for (std::size_t r = 0; r < batch; ++r) {
      std::vector<double> v(classes), p(classes);
      for (std::size_t c = 0; c < classes; ++c) v[c] = deq(zt, r, c);
      const double m = *std::max_element(v.begin(), v.end());
      double s = 0;
      for (std::size_t c = 0; c < classes; ++c) s += std::exp(v[c] - m);
      for (std::size_t c = 0; c < classes; ++c) p[c] = std::exp(v[c] - m) / s;
      loss -= std::log(p[labels[r]]);
      if (std::max_element(v.begin(), v.end()) - v.begin() == labels[r]) ++correct;
      for (std::size_t c = 0; c < classes; ++c) {
        const double want = (p[c] - (static_cast<int32_t>(c) == labels[r] ? 1.0 : 0.0)) / static_cast<double>(batch);
        EXPECT_NEAR(deq(z->grad, r, c), want, 2e-5 / static_cast<double>(batch)) << batch << " " << r << " " << c;
      }
    }
    EXPECT_NEAR(res.loss, loss / static_cast<double>(batch), 1e-4);
    EXPECT_EQ(res.correct, correct);
  }
}

TEST(SoftmaxCrossEntropy, ExtremeLogitsStayFinite) {
  Tensor zt(2, 3, DType::kI32, 0);
  int32_t* d = zt.data<int32_t>();
  d[0] = 2000000000; d[1] = -2000000000; d[2] = 0;  // enormous spread
  d[3] = 5; d[4] = 5; d[5] = 5;                      // ties
  auto z = var(zt);
  const std::vector<int32_t> labels{1, 2};
  Tape tape;
  const LossResult res = softmax_cross_entropy({nullptr, &tape, 0, 0}, z, labels.data());
  EXPECT_TRUE(std::isfinite(res.loss));
  EXPECT_NEAR(deq(z->grad, 1, 2), (1.0 / 3 - 1) / 2, 1e-6);
}

TEST(Sgd, UpdateMatchesFloatFormula) {
  Param p;
  p.id = 1;
  init_uniform(p, 8, 16, 16, 3);
  p.grad = random_i32(8, 16, 1 << 20, -30, 6);
  std::vector<int> eg(8);
  for (int r = 0; r < 8; ++r) eg[r] = -30 + r % 3;
  p.grad.set_exponents(ScaleAxis::kRow, eg);
  p.has_grad = true;
  const std::vector<double> w0 = p.master.to_double(), g = p.grad.to_double();
  Sgd sgd({0.9, 5e-4});
  sgd.step({&p}, 0.05, 0, 0);
  const std::vector<double> v1 = sgd.momentum(p.name)->to_double(), w1 = p.master.to_double();
  const double ulp = std::ldexp(1.0, p.master.exponent());
  for (std::size_t i = 0; i < w0.size(); ++i) {
    const double v = g[i] + 5e-4 * w0[i];
    EXPECT_NEAR(v1[i], v, std::abs(v) * 1e-4 + 2 * ulp) << i;
    EXPECT_NEAR(w1[i], w0[i] - 0.05 * v, std::abs(0.05 * v) * 1e-4 + 2 * ulp) << i;
  }
  // Second step uses the momentum.
  p.grad = random_i32(8, 16, 1 << 20, -30, 7);
  p.has_grad = true;
  const std::vector<double> g2 = p.grad.to_double();
  sgd.step({&p}, 0.05, 1, 0);
  const std::vector<double> v2 = sgd.momentum(p.name)->to_double();
  for (std::size_t i = 0; i < w0.size(); ++i) {
    const double v = 0.9 * v1[i] + g2[i] + 5e-4 * w1[i];
    EXPECT_NEAR(v2[i], v, std::abs(v) * 1e-4 + 2 * ulp) << i;
  }
}

TEST(Sgd, TinyUpdatesAreNotLostOnAverage) {
  // An update of 1/8 of the master step must move the weights by 1/8 step on average (stochastic rounding).
  Param p;
  p.id = 2;
  init_uniform(p, 1, 4096, 16, 1);
  const std::vector<double> w0 = p.master.to_double();
  const double ulp = std::ldexp(1.0, p.master.exponent());
  p.grad = Tensor(1, 4096, DType::kI32, p.master.exponent() - 3);
  for (std::size_t i = 0; i < 4096; ++i) p.grad.data<int32_t>()[i] = 1;  // g = ulp/8
  p.has_grad = true;
  Sgd sgd({0.0, 0.0});
  sgd.step({&p}, 1.0, 0, 0);
  const std::vector<double> w1 = p.master.to_double();
  double moved = 0;
  for (std::size_t i = 0; i < w0.size(); ++i) moved += (w0[i] - w1[i]) / ulp;
  EXPECT_NEAR(moved / 4096, 0.125, 6 * std::sqrt(0.125 * 0.875 / 4096));
}

// A parameter with the momentum buffer it starts from: Sgd keeps its own buffer, the two-pass specification below
// works on this one.
struct SgdParam : Param {
  Tensor momentum;
};

// Sgd::step on `a`, starting from a.momentum; a.momentum is then the buffer the step left.
void sgd_step(Sgd& sgd, SgdParam& a, double lr, uint64_t step, uint64_t seed, kernels::ThreadPool* pool = nullptr) {
  sgd.load_state({{a.name, "momentum", a.momentum}}, {&a});
  sgd.step({&a}, lr, step, seed, pool);
  a.momentum = *sgd.momentum(a.name);
}

// The two-pass update Sgd::step ran before the passes were fused (kept verbatim as the specification): pass 1
// accumulates the whole tensor into int64, pass 2 stores v at the shift the whole tensor's maximum needs and
// applies η·v, then the master narrows if a weight reached 2^30.
void two_pass_sgd_step(const SgdConfig& cfg, SgdParam* p, double lr, uint64_t step, uint64_t seed) {
  const quant::Dyadic mu = quant::to_dyadic(cfg.momentum);
  const quant::Dyadic lambda = quant::to_dyadic(cfg.weight_decay);
  const quant::Dyadic eta = quant::to_dyadic(lr);
  constexpr std::size_t kBlock = 1024;
  uint32_t draws[kBlock];
  const std::size_t n = p->master.size();
  const std::size_t cols = p->master.cols();
  int32_t* w = p->master.data<int32_t>();
  int32_t* v = p->momentum.data<int32_t>();
  const int32_t* g = p->grad.data<int32_t>();
  const int e = p->master.exponent(), ev = p->momentum.exponent();
  auto stream = [&](uint32_t k) {
    return quant::CounterRng(
        seed, quant::StreamKey{.purpose = quant::Purpose::kUpdate, .owner = p->id, .slot = k, .step = step});
  };
  const quant::CounterRng rng_g = stream(0), rng_u = stream(2);
  std::vector<int64_t> scratch(n);
  int64_t* acc = scratch.data();
  uint64_t vmax = 0;
  const std::size_t rows = p->master.rows();
  for (std::size_t r = 0; r < rows; ++r) {
    const int eg = p->grad.exponent_at(r, 0);
    for (std::size_t c0 = 0; c0 < cols; c0 += kBlock) {
      const std::size_t len = std::min(kBlock, cols - c0), i0 = r * cols + c0;
      if (eg < e) rng_g.fill_u32(i0, len, draws);
      vmax =
          std::max(vmax, kernels::sgd_accumulate(v + i0, g + i0, p->decay ? w + i0 : nullptr, draws, len, mu.mantissa,
                                                 mu.shift, ev - e, eg - e, lambda.mantissa, lambda.shift, acc + i0));
    }
  }
  const int sv = std::max(0, quant::bit_length(vmax) - 30);
  p->momentum.set_exponent(e + sv);
  uint64_t wmax = 0;
  for (std::size_t i0 = 0; i0 < n; i0 += kBlock) {
    const std::size_t len = std::min(kBlock, n - i0);
    if (eta.shift - sv >= 0) rng_u.fill_u32(i0, len, draws);
    wmax = std::max(
        wmax, kernels::sgd_apply(acc + i0, w + i0, draws, len, eta.mantissa, eta.shift, sv, v + i0, acc + i0, w + i0));
  }
  const int sw = std::max(0, quant::bit_length(wmax) - 30);
  if (sw > 0) kernels::sgd_narrow(acc, n, sw, w);
  p->master.set_exponent(e + sw);
  p->has_grad = false;
}

// A parameter for the fused-versus-two-pass comparison. `big_at` ≥ 0 plants a large gradient there (the
// momentum needs a store shift from that element's block on); `edge_at` ≥ 0 plants weights at 2^30 − 3 from
// there on (the master must narrow).
SgdParam sgd_case_param(std::size_t rows, std::size_t cols, bool per_row, int eg_off, bool decay, long big_at,
                        long edge_at, uint64_t seed) {
  SgdParam p;
  p.id = 7;
  p.decay = decay;
  const int e = -20;
  p.master = random_i32(rows, cols, 1 << 24, e, seed);
  p.momentum = random_i32(rows, cols, 1 << 22, e + 1, seed + 1);
  p.grad = random_i32(rows, cols, 1 << 20, e + eg_off, seed + 2);
  if (per_row) {
    std::vector<int> eg(rows);
    for (std::size_t r = 0; r < rows; ++r) eg[r] = e + eg_off + static_cast<int>(r % 3) - (r % 5 == 4 ? 1 : 0);
    p.grad.set_exponents(ScaleAxis::kRow, eg);
  }
  const std::size_t n = rows * cols;
  if (big_at >= 0) {
    for (std::size_t i = static_cast<std::size_t>(big_at); i < n; i += 997)
      p.grad.data<int32_t>()[i] = (i % 2 ? 1 : -1) * ((1 << 30) + static_cast<int32_t>(i));
  }
  if (edge_at >= 0) {
    for (std::size_t i = static_cast<std::size_t>(edge_at); i < n; i += 13) {
      const int32_t s = p.grad.data<int32_t>()[i] < 0 ? 1 : -1;  // the update moves the weight outward
      p.master.data<int32_t>()[i] = s * ((1 << 30) - 3);
      p.momentum.data<int32_t>()[i] = -s * (1 << 22);
    }
  }
  p.has_grad = true;
  return p;
}

TEST(Sgd, FusedPassesMatchTheTwoPassUpdateBitForBit) {
  struct Shape {
    std::size_t rows, cols;
    bool per_row;
  };
  const Shape shapes[] = {{1, 5000, false}, {40, 130, true}, {3, 2100, true}, {7, 1024, false}, {1, 3, false}};
  int cases = 0, fallbacks = 0, narrowed = 0;
  for (const Shape& sh : shapes) {
    const long n = static_cast<long>(sh.rows * sh.cols);
    for (int eg_off : {-3, 0, 2}) {
      for (bool decay : {false, true}) {
        for (long big_at : {-1L, 0L, n / 2, n - 1}) {
          for (long edge_at : {-1L, 0L, n / 3, n - 1}) {
            for (double lr : {0.05, 1.0, 3e5, 1e10}) {
              const uint64_t seed = static_cast<uint64_t>(cases) * 11 + 1;
              SgdParam a = sgd_case_param(sh.rows, sh.cols, sh.per_row, eg_off, decay, big_at, edge_at, seed);
              SgdParam b = sgd_case_param(sh.rows, sh.cols, sh.per_row, eg_off, decay, big_at, edge_at, seed);
              const SgdConfig cfg{0.9, decay ? 5e-4 : 0.0};
              Sgd sgd(cfg);
              for (uint64_t step = 0; step < 2; ++step) {
                const int e0 = a.master.exponent();
                const bool updates = a.has_grad;
                const uint64_t v0 = a.version();
                sgd_step(sgd, a, lr, step, 5);
                two_pass_sgd_step(cfg, &b, lr, step, 5);
                const std::string what = "shape " + std::to_string(sh.rows) + "x" + std::to_string(sh.cols) +
                                         " eg_off " + std::to_string(eg_off) + " decay " + std::to_string(decay) +
                                         " big_at " + std::to_string(big_at) + " edge_at " + std::to_string(edge_at) +
                                         " lr " + std::to_string(lr) + " step " + std::to_string(step);
                ASSERT_EQ(a.master.exponent(), b.master.exponent()) << what;
                ASSERT_EQ(a.momentum.exponent(), b.momentum.exponent()) << what;
                ASSERT_EQ(a.version() != v0, updates) << what;  // a new version exactly when the weights moved
                ASSERT_FALSE(a.has_grad);
                for (long i = 0; i < n; ++i) {
                  ASSERT_EQ(a.master.data<int32_t>()[i], b.master.data<int32_t>()[i]) << what << " w[" << i << "]";
                  ASSERT_EQ(a.momentum.data<int32_t>()[i], b.momentum.data<int32_t>()[i]) << what << " v[" << i << "]";
                }
                fallbacks += a.momentum.exponent() > e0;
                narrowed += a.master.exponent() > e0;
                // The second step: the same gradient again, now with a momentum at the exponent the first left.
                a.has_grad = b.has_grad = true;
              }
              ++cases;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(fallbacks, 0);
  EXPECT_GT(narrowed, 0);
}

// A tensor of many blocks is split over the pool in ranges of whole blocks: the same bits, exponents and version
// as one thread (and the two-pass specification) with 2 and 3 threads, whether every range keeps the fused bet,
// a late block needs sv > 0 (the fallback undoes every range), or a weight reaches 2^30 in one range only.
TEST(Sgd, SplitOverAPoolIsBitIdentical) {
  struct Shape {
    std::size_t rows, cols;
    bool per_row;
  };
  kernels::ThreadPool two(2, kernels::ThreadPool::Split::kAlways), three(3, kernels::ThreadPool::Split::kAlways);
  const Shape shapes[] = {{1, 40000, false}, {300, 130, true}, {9, 2100, true}};
  int cases = 0, fallbacks = 0, narrowed = 0;
  for (const Shape& sh : shapes) {
    const long n = static_cast<long>(sh.rows * sh.cols);
    for (int eg_off : {-3, 2}) {
      for (bool decay : {false, true}) {
        for (long big_at : {-1L, n / 2, n - 1}) {
          for (long edge_at : {-1L, n / 3, n - 1}) {
            for (double lr : {0.05, 3e5, 1e10}) {
              const uint64_t seed = static_cast<uint64_t>(cases) * 11 + 1;
              const SgdConfig cfg{0.9, decay ? 5e-4 : 0.0};
              SgdParam one = sgd_case_param(sh.rows, sh.cols, sh.per_row, eg_off, decay, big_at, edge_at, seed);
              SgdParam spec = sgd_case_param(sh.rows, sh.cols, sh.per_row, eg_off, decay, big_at, edge_at, seed);
              SgdParam a2 = sgd_case_param(sh.rows, sh.cols, sh.per_row, eg_off, decay, big_at, edge_at, seed);
              SgdParam a3 = sgd_case_param(sh.rows, sh.cols, sh.per_row, eg_off, decay, big_at, edge_at, seed);
              Sgd sgd1(cfg), sgd2(cfg), sgd3(cfg);
              for (uint64_t step = 0; step < 2; ++step) {
                const int e0 = one.master.exponent();
                const bool updates = one.has_grad;
                const uint64_t v0 = one.version();
                sgd_step(sgd1, one, lr, step, 5);
                two_pass_sgd_step(cfg, &spec, lr, step, 5);
                sgd_step(sgd2, a2, lr, step, 5, &two);
                sgd_step(sgd3, a3, lr, step, 5, &three);
                const std::string what = "shape " + std::to_string(sh.rows) + "x" + std::to_string(sh.cols) +
                                         " eg_off " + std::to_string(eg_off) + " decay " + std::to_string(decay) +
                                         " big_at " + std::to_string(big_at) + " edge_at " + std::to_string(edge_at) +
                                         " lr " + std::to_string(lr) + " step " + std::to_string(step);
                for (const SgdParam* b : {&spec, &a2, &a3}) {
                  ASSERT_EQ(one.master.exponent(), b->master.exponent()) << what;
                  ASSERT_EQ(one.momentum.exponent(), b->momentum.exponent()) << what;
                  ASSERT_EQ(one.version() != v0, updates) << what;
                  ASSERT_FALSE(b->has_grad);
                  for (long i = 0; i < n; ++i) {
                    ASSERT_EQ(one.master.data<int32_t>()[i], b->master.data<int32_t>()[i]) << what << " w[" << i << "]";
                    ASSERT_EQ(one.momentum.data<int32_t>()[i], b->momentum.data<int32_t>()[i])
                        << what << " v[" << i << "]";
                  }
                }
                fallbacks += one.momentum.exponent() > e0;
                narrowed += one.master.exponent() > e0;
                one.has_grad = spec.has_grad = a2.has_grad = a3.has_grad = true;
              }
              ++cases;
            }
          }
        }
      }
    }
  }
  EXPECT_GT(fallbacks, 0);
  EXPECT_GT(narrowed, 0);
}

TEST(Sgd, MasterExponentGrowsInsteadOfOverflowing) {
  Param p;
  p.id = 3;
  p.master = Tensor(1, 2, DType::kI32, -10);
  p.master.data<int32_t>()[0] = (1 << 30) - 5;
  p.master.data<int32_t>()[1] = -(1 << 30) + 5;
  p.grad = Tensor(1, 2, DType::kI32, -10);
  p.grad.data<int32_t>()[0] = -1000;
  p.grad.data<int32_t>()[1] = 1000;
  p.has_grad = true;
  const double before = std::ldexp(double((1 << 30) - 5), -10);
  Sgd({0.0, 0.0}).step({&p}, 1.0, 0, 0);
  EXPECT_GT(p.master.exponent(), -10);
  EXPECT_NEAR(p.master.value(0), before + std::ldexp(1000.0, -10), std::ldexp(1.0, p.master.exponent()));
  EXPECT_NEAR(p.master.value(1), -p.master.value(0), std::ldexp(1.0, p.master.exponent()));
}

TEST(Schedule, OneCycleMatchesPyTorchShape) {
  LrSchedule s;
  s.kind = ScheduleKind::kOneCycle;
  s.peak = 0.05;
  s.total_steps = 1000;
  EXPECT_NEAR(s.at(0), 0.05 / 25, 1e-12);
  EXPECT_NEAR(s.at(299), 0.05, 1e-12);  // peak at pct_start·total − 1
  EXPECT_NEAR(s.at(999), 0.05 / 25 / 1e4, 1e-12);
  EXPECT_LT(s.at(100), s.at(200));
  EXPECT_GT(s.at(500), s.at(800));
  s.kind = ScheduleKind::kCosine;
  EXPECT_NEAR(s.at(0), 0.05, 1e-12);
  EXPECT_NEAR(s.at(500), 0.025, 1e-12);
  s.kind = ScheduleKind::kStep;
  EXPECT_NEAR(s.at(499), 0.05, 1e-12);
  EXPECT_NEAR(s.at(500), 0.005, 1e-12);
  EXPECT_NEAR(s.at(800), 0.0005, 1e-12);
  s.kind = ScheduleKind::kConstant;
  EXPECT_EQ(s.at(777), 0.05);
  EXPECT_THROW(parse_schedule("linear"), std::invalid_argument);
}

TEST(Autograd, AccumulateAlignsExponents) {
  Var v;
  Tensor a(1, 2, DType::kI32, -4);
  a.data<int32_t>()[0] = 3;
  a.data<int32_t>()[1] = -8;
  Tensor b(1, 2, DType::kI32, -2);
  b.data<int32_t>()[0] = 1;
  b.data<int32_t>()[1] = 1;
  accumulate_grad(v, a);
  accumulate_grad(v, b);
  EXPECT_DOUBLE_EQ(v.grad.value(0), 3.0 / 16 + 0.25);
  EXPECT_DOUBLE_EQ(v.grad.value(1), -0.5 + 0.25);
}

// A residual block's input gathers two large gradients: the sum split over a pool (whole 1024-element blocks, ranges
// merged exactly) gives the same bits and exponent as one pass, with and without the narrowing a large sum needs.
TEST(Autograd, AccumulateOnThePoolIsBitIdentical) {
  std::mt19937 rng(5);
  kernels::ThreadPool two(2, kernels::ThreadPool::Split::kAlways), three(3, kernels::ThreadPool::Split::kAlways);
  for (const int32_t bound : {1000, std::numeric_limits<int32_t>::max()}) {
    std::uniform_int_distribution<int32_t> dist(-bound, bound);
    Tensor a(2003, 37, DType::kI32, -9), b(2003, 37, DType::kI32, -6);
    for (std::size_t i = 0; i < a.size(); ++i) {
      a.data<int32_t>()[i] = dist(rng);
      b.data<int32_t>()[i] = dist(rng);
    }
    Var one;
    accumulate_grad(one, a);
    accumulate_grad(one, b);
    for (kernels::ThreadPool* pool : {&two, &three}) {
      Var v;
      accumulate_grad(v, a, pool);
      accumulate_grad(v, b, pool);
      ASSERT_EQ(v.grad.exponent(), one.grad.exponent()) << pool->threads() << " threads, bound " << bound;
      for (std::size_t i = 0; i < a.size(); ++i) {
        ASSERT_EQ(v.grad.data<int32_t>()[i], one.grad.data<int32_t>()[i]) << "element " << i << ", bound " << bound;
      }
    }
    if (bound > 1000) {
      EXPECT_GT(one.grad.exponent(), -9) << "the large sums were narrowed";
    }
  }
}

TEST(StepProfile, TableShowsMillisecondsPerStepAndShares) {
  StepProfile p({"Linear(4->3)", "a layer whose name is far longer than the sixty characters the column allows"});
  p.add_forward(0, 3'000'000);
  p.add_backward(0, 1'000'000);
  p.add_forward(1, 2'000'000);
  p.add(StepProfile::Phase::kOptimizer, 4'000'000);
  p.add_step();
  p.add_step();
  EXPECT_EQ(p.total_ns(), 10'000'000);
  const std::string t = p.table();
  EXPECT_NE(t.find("0 Linear(4->3)"), std::string::npos) << t;
  EXPECT_NE(t.find("1.500      0.500    40.0%"), std::string::npos) << t;  // (3 + 1) ms over 2 steps, 4 of 10 ms
  EXPECT_NE(t.find("optimizer"), std::string::npos) << t;
  EXPECT_NE(t.find("5.000 ms per step over 2 steps"), std::string::npos) << t;
  EXPECT_NE(t.find("..."), std::string::npos) << "the long name is cut\n" << t;
  EXPECT_THROW(p.add_forward(2, 1), std::out_of_range);
}

}  // namespace
}  // namespace qtrain
