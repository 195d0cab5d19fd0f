// Gradient checks of the CNN ops (Conv2d, pools, Flatten, residual add) against the float formulas they implement,
// and a stack of them run forward and backward through one tape.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "qtrain/engine/ops/add.h"
#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/layers/conv2d.h"
#include "qtrain/engine/layers/depthwise_conv2d.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/engine/core/narrow.h"
#include "qtrain/engine/optim/optimizer.h"
#include "qtrain/engine/layers/pool.h"
#include "qtrain/engine/ops/qgemm_op.h"
#include "qtrain/engine/ops/relu.h"
#include "qtrain/engine/ops/softmax_ce.h"
#include "qtrain/kernels/dispatch.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/kernels/thread_pool.h"
#include "qtrain/quant/pow2.h"
#include "qtrain/quant/rng.h"
#include "qtrain/quant/shiftquant.h"
#include "tests/op_test_util.h"
#include "tests/target_test_util.h"

namespace qtrain {
namespace {

double deq(const Tensor& t, std::size_t i) { return t.value(i); }

bool bit_identical(const Tensor& a, const Tensor& b) {
  if (a.rows() != b.rows() || a.cols() != b.cols() || a.dtype() != b.dtype() || a.axis() != b.axis() ||
      a.exponents() != b.exponents())
    return false;
  return a.size() == 0 ||
         (a.dtype() == DType::kI8 ? std::memcmp(a.data<int8_t>(), b.data<int8_t>(), a.size()) == 0
                                  : std::memcmp(a.data<int32_t>(), b.data<int32_t>(), a.size() * 4) == 0);
}

// ---- Narrowing int64 sums -------------------------------------------------------------------------------------

TEST(Narrow, FinestExponentThatFitsInt32) {
  EXPECT_EQ(narrowing_shift(0), 0);
  EXPECT_EQ(narrowing_shift((uint64_t{1} << 31) - 1), 0);
  EXPECT_EQ(narrowing_shift(uint64_t{1} << 31), 1);
  EXPECT_EQ(narrowing_shift((uint64_t{1} << 32) - 1), 2);  // /2 rounds up to 2^31: one more shift
  const std::vector<int64_t> v{int64_t{3} << 40, -5, 7, -(int64_t{1} << 20)};
  const Tensor t = narrow_tensor(v.data(), 2, 2, -10);
  EXPECT_EQ(t.exponent(), -10 + 11);
  EXPECT_EQ(t.data<int32_t>()[0], 3 << 29);
  EXPECT_EQ(t.data<int32_t>()[1], -0);  // −5/2048 rounds to 0
  // Columns at different exponents into one: column 0 (2^0) must coarsen to fit, column 1 (2^−20) rounds to it.
  const std::vector<int64_t> w{int64_t{1} << 33, 3 << 19, -(int64_t{1} << 33), -(5 << 18)};
  const Tensor u = narrow_cols_to_tensor(w.data(), 2, 2, {0, -20});
  EXPECT_EQ(u.exponent(), 3);
  for (std::size_t i = 0; i < w.size(); ++i)
    EXPECT_NEAR(deq(u, i), std::ldexp(double(w[i]), i % 2 == 0 ? 0 : -20), 4.0) << i;
  const std::vector<int64_t> z{5, 0, -6, 0};  // column 1 all zero at a huge exponent: ignored, no overflow
  const Tensor zt = narrow_cols_to_tensor(z.data(), 2, 2, {-3, 200});
  EXPECT_EQ(zt.exponent(), -3);
  EXPECT_EQ(zt.data<int32_t>()[2], -6);
}

// ---- Conv2d ---------------------------------------------------------------------------------------------------

// Float reference geometry: the same NHWC / (co, i, j, c) conventions as Conv2d, written out plainly.
struct Geo {
  std::size_t n, h, w, c, co, kh, kw, s, p, ho, wo, k;
  explicit Geo(const Conv2dSpec& sp, std::size_t batch)
      : n(batch),
        h(sp.in_h),
        w(sp.in_w),
        c(sp.in_channels),
        co(sp.out_channels),
        kh(sp.kernel_h),
        kw(sp.kernel_w),
        s(sp.stride),
        p(sp.padding),
        ho(sp.out_h()),
        wo(sp.out_w()),
        k(sp.patch_size()) {}
  // Calls f(out_row, in_row, patch_col_base) for every (output pixel, kernel tap inside the image).
  template <typename F>
  void for_taps(F f) const {
    for (std::size_t b = 0; b < n; ++b)
      for (std::size_t oh = 0; oh < ho; ++oh)
        for (std::size_t ow = 0; ow < wo; ++ow)
          for (std::size_t i = 0; i < kh; ++i)
            for (std::size_t j = 0; j < kw; ++j) {
              const long ih = static_cast<long>(oh * s + i) - static_cast<long>(p);
              const long iw = static_cast<long>(ow * s + j) - static_cast<long>(p);
              if (ih < 0 || iw < 0 || ih >= static_cast<long>(h) || iw >= static_cast<long>(w)) continue;
              f((b * ho + oh) * wo + ow, (b * h + static_cast<std::size_t>(ih)) * w + static_cast<std::size_t>(iw),
                (i * kw + j) * c);
            }
  }
};

struct ConvRun {
  VarPtr x, y;
  Tensor master, dw;
};

ConvRun run_conv(const Conv2dSpec& spec, const Tensor& xt, const Tensor& dy, kernels::ThreadPool* pool) {
  Conv2d conv(spec, 3, 17);
  ConvRun r;
  r.x = var(xt);
  Tape tape;
  const StepContext ctx{pool, &tape, 5, 7};
  r.y = conv.forward(ctx, r.x);
  r.y->grad = dy;
  r.y->has_grad = true;
  tape.backward();
  r.master = conv.weight().master;
  EXPECT_TRUE(conv.weight().has_grad);
  r.dw = conv.weight().grad;
  return r;
}

struct ConvCase {
  std::size_t kh, kw, stride, pad;
  int bits;
  bool is_signed;
};

class ConvGrad : public ::testing::TestWithParam<ConvCase> {};

TEST_P(ConvGrad, ForwardAndBackwardMatchFloatFormula) {
  const ConvCase cc = GetParam();
  Conv2dSpec spec;
  spec.in_h = 7;
  spec.in_w = 5;
  spec.in_channels = 3;
  spec.out_channels = 5;
  spec.kernel_h = cc.kh;
  spec.kernel_w = cc.kw;
  spec.stride = cc.stride;
  spec.padding = cc.pad;
  spec.weight_bits = spec.act_bits = spec.grad_bits = cc.bits;
  spec.groups = quant::max_groups(cc.bits);
  spec.signed_input = cc.is_signed;
  const Geo g(spec, 2);
  // Input with per-channel exponents (a previous layer's output).
  Tensor xt = random_i32(g.n * g.h * g.w, g.c, 100000, 0, 1);
  xt.set_exponents(ScaleAxis::kCol, {-20, -19, -22});
  if (!cc.is_signed)
    for (std::size_t i = 0; i < xt.size(); ++i) xt.data<int32_t>()[i] = std::abs(xt.data<int32_t>()[i]);
  const std::size_t rows = g.n * g.ho * g.wo;
  const Tensor dy = random_i32(rows, g.co, 1 << 20, -26, 2);
  const ConvRun run = run_conv(spec, xt, dy, nullptr);
  ASSERT_EQ(run.y->value.rows(), rows);
  ASSERT_EQ(run.y->value.cols(), g.co);

  // The quantized operands, as the float formula sees them.
  const quant::IntRange ar = cc.is_signed ? quant::signed_range(cc.bits) : quant::unsigned_range(cc.bits);
  std::vector<int8_t> xq8(xt.size());
  const int ex =
      quant::quantize_to_tensor(xt.data<int32_t>(), xt.rows(), xt.cols(), xt.exponents().data(), 3, {ar}, xq8.data());
  std::vector<double> xq(xt.size());
  for (std::size_t i = 0; i < xq.size(); ++i) xq[i] = std::ldexp(double(xq8[i]), ex);
  std::vector<int8_t> wq8(g.co * g.k);
  std::vector<int> ew(g.co);
  quant::quantize_per_row(run.master.data<int32_t>(), g.co, g.k, run.master.exponent(), {quant::signed_range(cc.bits)},
                          wq8.data(), ew.data());
  std::vector<double> wq(wq8.size());
  for (std::size_t i = 0; i < wq.size(); ++i) wq[i] = std::ldexp(double(wq8[i]), ew[i / g.k]);

  // Forward: y = conv2d(Q(x), Q(W)), exact.
  std::vector<double> y(rows * g.co, 0.0);
  g.for_taps([&](std::size_t o, std::size_t in, std::size_t kb) {
    for (std::size_t co = 0; co < g.co; ++co)
      for (std::size_t c = 0; c < g.c; ++c) y[o * g.co + co] += xq[in * g.c + c] * wq[co * g.k + kb + c];
  });
  for (std::size_t i = 0; i < y.size(); ++i) ASSERT_EQ(deq(run.y->value, i), y[i]) << "y " << i;

  // Backward: the ShiftQuant of dY that Conv2d drew (same stream: layer id 3, its output-gradient slot).
  quant::ShiftQuantized gs;
  const StepContext ctx{nullptr, nullptr, 5, 7};
  quant::shiftquant(dy.data<int32_t>(), rows, g.co, dy.exponent(), {cc.bits, spec.groups},
                    ctx.rounding_rng(3, kOutputGradSlot), &gs);
  std::vector<double> gq(rows * g.co);
  for (std::size_t i = 0; i < gq.size(); ++i) gq[i] = std::ldexp(double(gs.q[i]), gs.channel_exponent(i % g.co));

  // dx = conv_transpose2d(Q_g(dy), Q(W)): exact when the weight rows' exponents span ≤ the int8 headroom;
  // otherwise rows below E = max e_w − headroom were rounded to 2^E (≤ ½·2^E per weight).
  const int headroom = quant::int8_headroom(static_cast<uint32_t>(quant::signed_range(cc.bits).hi));
  const int big_e = *std::max_element(ew.begin(), ew.end()) - headroom;
  ASSERT_TRUE(run.x->has_grad);
  std::vector<double> dx(xt.size(), 0.0), tol(xt.size(), 0.0);
  g.for_taps([&](std::size_t o, std::size_t in, std::size_t kb) {
    for (std::size_t co = 0; co < g.co; ++co)
      for (std::size_t c = 0; c < g.c; ++c) {
        dx[in * g.c + c] += gq[o * g.co + co] * wq[co * g.k + kb + c];
        if (ew[co] < big_e) tol[in * g.c + c] += std::abs(gq[o * g.co + co]) * std::ldexp(0.5, big_e);
      }
  });
  const bool exact = *std::min_element(ew.begin(), ew.end()) >= big_e;
  // No narrowing happened at these sizes: dX has the dgrad GEMM's exponent.
  EXPECT_EQ(run.x->grad.exponent(), gs.shifted_exponent() + big_e);
  for (std::size_t i = 0; i < dx.size(); ++i) {
    if (exact) {
      ASSERT_EQ(deq(run.x->grad, i), dx[i]) << "dx " << i;
    } else {
      ASSERT_NEAR(deq(run.x->grad, i), dx[i], tol[i]) << "dx " << i;
    }
  }

  // dW = Q_g(dy) ⋆ Q(x), exact.
  std::vector<double> dw(g.co * g.k, 0.0);
  g.for_taps([&](std::size_t o, std::size_t in, std::size_t kb) {
    for (std::size_t co = 0; co < g.co; ++co)
      for (std::size_t c = 0; c < g.c; ++c) dw[co * g.k + kb + c] += gq[o * g.co + co] * xq[in * g.c + c];
  });
  for (std::size_t i = 0; i < dw.size(); ++i) ASSERT_EQ(deq(run.dw, i), dw[i]) << "dW " << i;

  // One output row per im2col block (many wgrad chunks summed in int64) and two threads give the same bits.
  Conv2dSpec small = spec;
  small.max_block_rows = 1;
  kernels::ThreadPool pool(2);
  const ConvRun run2 = run_conv(small, xt, dy, &pool);
  EXPECT_TRUE(bit_identical(run2.y->value, run.y->value));
  EXPECT_TRUE(bit_identical(run2.x->grad, run.x->grad));
  EXPECT_TRUE(bit_identical(run2.dw, run.dw));
}

std::vector<ConvCase> conv_cases() {
  std::vector<ConvCase> v;
  for (std::size_t k : {1, 3})
    for (std::size_t s : {1, 2})
      for (std::size_t p : {0, 1})
        for (int bits : {4, 8}) v.push_back({k, k, s, p, bits, bits == 8});
  v.push_back({2, 3, 1, 1, 4, false});  // even and non-square kernels
  v.push_back({2, 2, 2, 0, 6, false});
  v.push_back({5, 3, 2, 2, 4, true});
  v.push_back({1, 1, 1, 3, 4, false});  // padding wider than the kernel: whole patches of zeros
  return v;
}

std::string case_name(const ::testing::TestParamInfo<ConvCase>& p) {
  const ConvCase& c = p.param;
  std::string s = "k";
  for (std::size_t v : {c.kh, c.kw, c.stride, c.pad, static_cast<std::size_t>(c.bits)}) {
    s += std::to_string(v);
    s += '_';
  }
  s += c.is_signed ? "signed" : "unsigned";
  return s;
}

INSTANTIATE_TEST_SUITE_P(Shapes, ConvGrad, ::testing::ValuesIn(conv_cases()), case_name);

TEST(Conv2d, WeightGradientSplitsReductionsBeyondKMaxReduction) {
  // N·Ho·Wo = 3·210·210 = 132300 > kMaxReduction: the wgrad reduction runs as several int8 GEMMs whose int32
  // results are summed in int64. dW must still equal the float formula exactly.
  for (std::size_t k : {3, 1}) {
    Conv2dSpec spec;
    spec.in_h = spec.in_w = 210;
    spec.in_channels = 2;
    spec.out_channels = 3;
    spec.kernel_h = spec.kernel_w = k;
    spec.padding = k / 2;
    spec.weight_bits = spec.act_bits = spec.grad_bits = 8;
    spec.signed_input = true;
    spec.needs_input_grad = false;
    const Geo g(spec, 3);
    const std::size_t rows = g.n * g.ho * g.wo;
    ASSERT_GT(rows, kernels::kMaxReduction);
    const Tensor xt = random_i32(g.n * g.h * g.w, g.c, 1 << 20, -20, 11);
    const Tensor dy = random_i32(rows, g.co, 1 << 20, -26, 12);
    const ConvRun run = run_conv(spec, xt, dy, nullptr);
    EXPECT_FALSE(run.x->has_grad);

    std::vector<int8_t> xq8(xt.size());
    const int ex = quant::quantize_to_tensor(xt.data<int32_t>(), xt.rows(), xt.cols(), xt.exponents().data(), 1,
                                             {quant::signed_range(8)}, xq8.data());
    quant::ShiftQuantized gs;
    const StepContext ctx{nullptr, nullptr, 5, 7};
    quant::shiftquant(dy.data<int32_t>(), rows, g.co, dy.exponent(), {8, 1}, ctx.rounding_rng(3, kOutputGradSlot), &gs);
    std::vector<int64_t> dw(g.co * g.k, 0);  // exact integer reference: Σ q_g·q_x
    g.for_taps([&](std::size_t o, std::size_t in, std::size_t kb) {
      for (std::size_t co = 0; co < g.co; ++co)
        for (std::size_t c = 0; c < g.c; ++c) dw[co * g.k + kb + c] += int64_t{gs.q[o * g.co + co]} * xq8[in * g.c + c];
    });
    for (std::size_t co = 0; co < g.co; ++co)
      for (std::size_t i = 0; i < g.k; ++i) {
        const double want = std::ldexp(double(dw[co * g.k + i]), gs.channel_exponent(co) + ex);
        ASSERT_EQ(deq(run.dw, co * g.k + i), want) << k << " " << co << "," << i;
      }
    // Blocks of exactly kMaxReduction rows (rounded to whole output rows) give the same bits.
    Conv2dSpec big = spec;
    big.max_block_rows = kernels::kMaxReduction;
    EXPECT_TRUE(bit_identical(run_conv(big, xt, dy, nullptr).dw, run.dw));
  }
}

TEST(QGemm, SplitWeightGradientNarrowsWhenTheSumExceedsInt32) {
  // 140000 rows of 125·125 = 2,187,500,000 > 2^31 − 1: the chunks' int64 sum is moved to exponent +1 (exact here,
  // the sum is even). Through Linear, which now accepts batches beyond kMaxReduction.
  const std::size_t n = 140000;
  LinearSpec spec{2, 1, 8, 8, 8, 1, true, false};
  Linear lin(spec, 0, 1);
  Tensor xt(n, 2, DType::kI32, -10);
  for (std::size_t i = 0; i < xt.size(); ++i) xt.data<int32_t>()[i] = 1000;  // → 125 at exponent −7
  auto x = var(xt);
  Tape tape;
  VarPtr y = lin.forward({nullptr, &tape, 0, 0}, x);
  y->grad = Tensor(n, 1, DType::kI32, -30);
  for (std::size_t i = 0; i < n; ++i) y->grad.data<int32_t>()[i] = 1000;  // → 125 at exponent −27, exactly
  y->has_grad = true;
  tape.backward();
  const double want = 125.0 * 125.0 * double(n) * std::ldexp(1.0, -7 - 27);
  EXPECT_EQ(lin.weight().grad.exponent_at(0, 0), -7 - 27 + 1);
  EXPECT_EQ(deq(lin.weight().grad, 0), want);
  EXPECT_EQ(deq(lin.weight().grad, 1), want);
  // The same through qgemm_wgrad with small chunks.
  quant::ShiftQuantized g;
  quant::shiftquant(y->grad.data<int32_t>(), n, 1, -30, {8, 1}, quant::CounterRng(0, 0), &g);
  Tensor xq(n, 2, DType::kI8, -7);
  std::memset(xq.data<int8_t>(), 125, xq.size());
  const Tensor dw = qgemm_wgrad(g, xq, nullptr, 1000);
  EXPECT_EQ(deq(dw, 0), want);
}

// ---- DepthwiseConv2d ------------------------------------------------------------------------------------------

class DepthwiseGrad : public ::testing::TestWithParam<ConvCase> {};

TEST_P(DepthwiseGrad, ForwardAndBackwardMatchFloatFormula) {
  const ConvCase cc = GetParam();
  Conv2dSpec spec;
  spec.in_h = 7;
  spec.in_w = 5;
  spec.in_channels = 4;
  spec.kernel_h = cc.kh;
  spec.kernel_w = cc.kw;
  spec.stride = cc.stride;
  spec.padding = cc.pad;
  spec.weight_bits = spec.act_bits = spec.grad_bits = cc.bits;
  spec.groups = quant::max_groups(cc.bits);
  spec.signed_input = cc.is_signed;
  const std::size_t n = 2, c = 4, kk = cc.kh * cc.kw, ho = spec.out_h(), wo = spec.out_w(), rows = n * ho * wo;
  Tensor xt = random_i32(n * 7 * 5, c, 100000, 0, 81);
  xt.set_exponents(ScaleAxis::kCol, {-20, -19, -22, -21});
  if (!cc.is_signed)
    for (std::size_t i = 0; i < xt.size(); ++i) xt.data<int32_t>()[i] = std::abs(xt.data<int32_t>()[i]);
  // One channel's gradient 2^10 times smaller than the others: ShiftQuant puts it in a finer group.
  Tensor dy = random_i32(rows, c, 1 << 20, -26, 82);
  for (std::size_t r = 0; r < rows; ++r) dy.data<int32_t>()[r * c + 2] >>= 10;

  auto run = [&](kernels::ThreadPool* pool) {
    DepthwiseConv2d conv(spec, 4, 19);
    ConvRun r;
    r.x = var(xt);
    Tape tape;
    r.y = conv.forward({pool, &tape, 5, 7}, r.x);
    r.y->grad = dy;
    r.y->has_grad = true;
    tape.backward();
    r.master = conv.weight().master;
    r.dw = conv.weight().grad;
    return r;
  };
  const ConvRun r = run(nullptr);

  const quant::IntRange ar = cc.is_signed ? quant::signed_range(cc.bits) : quant::unsigned_range(cc.bits);
  std::vector<int8_t> xq8(xt.size());
  const int ex =
      quant::quantize_to_tensor(xt.data<int32_t>(), xt.rows(), c, xt.exponents().data(), c, {ar}, xq8.data());
  std::vector<int8_t> wq8(c * kk);
  std::vector<int> ew(c);
  quant::quantize_per_row(r.master.data<int32_t>(), c, kk, r.master.exponent(), {quant::signed_range(cc.bits)},
                          wq8.data(), ew.data());
  quant::ShiftQuantized gs;
  const StepContext ctx{nullptr, nullptr, 5, 7};
  quant::shiftquant(dy.data<int32_t>(), rows, c, dy.exponent(), {cc.bits, spec.groups},
                    ctx.rounding_rng(4, kOutputGradSlot), &gs);
  auto xq = [&](std::size_t i) { return std::ldexp(double(xq8[i]), ex); };
  auto wq = [&](std::size_t ch, std::size_t tap) { return std::ldexp(double(wq8[ch * kk + tap]), ew[ch]); };
  auto gq = [&](std::size_t i) { return std::ldexp(double(gs.q[i]), gs.channel_exponent(i % c)); };

  // The per-channel reference, with the tap loop written out.
  std::vector<double> y(rows * c, 0.0), dx(xt.size(), 0.0), dw(c * kk, 0.0);
  for (std::size_t b = 0; b < n; ++b)
    for (std::size_t oh = 0; oh < ho; ++oh)
      for (std::size_t ow = 0; ow < wo; ++ow)
        for (std::size_t i = 0; i < cc.kh; ++i)
          for (std::size_t j = 0; j < cc.kw; ++j) {
            const long ih = static_cast<long>(oh * cc.stride + i) - static_cast<long>(cc.pad);
            const long iw = static_cast<long>(ow * cc.stride + j) - static_cast<long>(cc.pad);
            if (ih < 0 || iw < 0 || ih >= 7 || iw >= 5) continue;
            const std::size_t o = (b * ho + oh) * wo + ow, in = (b * 7 + static_cast<std::size_t>(ih)) * 5 + iw;
            for (std::size_t ch = 0; ch < c; ++ch) {
              y[o * c + ch] += xq(in * c + ch) * wq(ch, i * cc.kw + j);
              dx[in * c + ch] += gq(o * c + ch) * wq(ch, i * cc.kw + j);
              dw[ch * kk + i * cc.kw + j] += gq(o * c + ch) * xq(in * c + ch);
            }
          }
  for (std::size_t i = 0; i < y.size(); ++i) ASSERT_EQ(deq(r.y->value, i), y[i]) << "y " << i;
  // dx: exact (no weight alignment in a depthwise conv), unless a value had to be rounded to fit int32.
  int emin = 1000;
  for (std::size_t ch = 0; ch < c; ++ch) emin = std::min(emin, gs.channel_exponent(ch) + ew[ch]);
  const double tol = r.x->grad.exponent() == emin ? 0.0 : std::ldexp(0.5, r.x->grad.exponent());
  for (std::size_t i = 0; i < dx.size(); ++i) ASSERT_NEAR(deq(r.x->grad, i), dx[i], tol) << "dx " << i;
  for (std::size_t i = 0; i < dw.size(); ++i) ASSERT_EQ(deq(r.dw, i), dw[i]) << "dW " << i;

  kernels::ThreadPool pool(2);
  const ConvRun r2 = run(&pool);
  EXPECT_TRUE(bit_identical(r2.y->value, r.y->value));
  EXPECT_TRUE(bit_identical(r2.x->grad, r.x->grad));
  EXPECT_TRUE(bit_identical(r2.dw, r.dw));
}

INSTANTIATE_TEST_SUITE_P(Shapes, DepthwiseGrad,
                         ::testing::Values(ConvCase{3, 3, 1, 1, 4, false}, ConvCase{3, 3, 2, 0, 8, true},
                                           ConvCase{3, 3, 2, 1, 6, false}, ConvCase{1, 1, 1, 0, 4, true},
                                           ConvCase{2, 3, 1, 1, 4, false}, ConvCase{5, 5, 2, 2, 8, false}),
                         case_name);

// ---- Pools ----------------------------------------------------------------------------------------------------

struct PoolGeo {
  std::size_t n, h, w, c, k, s, p, ho, wo;
  PoolGeo(const Pool2dSpec& sp, std::size_t batch)
      : n(batch),
        h(sp.in_h),
        w(sp.in_w),
        c(sp.channels),
        k(sp.kernel),
        s(sp.stride),
        p(sp.padding),
        ho(sp.out_h()),
        wo(sp.out_w()) {}
  // f(out_row, in_row) for every window position inside the image, in window order (i, then j).
  template <typename F>
  void for_window(F f) const {
    for (std::size_t b = 0; b < n; ++b)
      for (std::size_t oh = 0; oh < ho; ++oh)
        for (std::size_t ow = 0; ow < wo; ++ow)
          for (std::size_t i = 0; i < k; ++i)
            for (std::size_t j = 0; j < k; ++j) {
              const long ih = static_cast<long>(oh * s + i) - static_cast<long>(p);
              const long iw = static_cast<long>(ow * s + j) - static_cast<long>(p);
              if (ih < 0 || iw < 0 || ih >= static_cast<long>(h) || iw >= static_cast<long>(w)) continue;
              f((b * ho + oh) * wo + ow, (b * h + static_cast<std::size_t>(ih)) * w + static_cast<std::size_t>(iw));
            }
  }
};

TEST(MaxPool2d, ForwardAndBackwardMatchFloatFormula) {
  for (const Pool2dSpec spec :
       {Pool2dSpec{7, 5, 3, 3, 2, 1}, Pool2dSpec{7, 5, 3, 2, 2, 0}, Pool2dSpec{7, 5, 3, 3, 1, 1},
        Pool2dSpec{7, 5, 3, 2, 2, 1}, Pool2dSpec{8, 6, 3, 2, 2, 0}}) {
    const PoolGeo g(spec, 2);
    // Small integers: many ties, which must go to the first window position.
    Tensor xt = random_i32(g.n * g.h * g.w, g.c, 3, 0, 21);
    xt.set_exponents(ScaleAxis::kCol, {-3, 0, 5});
    auto x = var(xt);
    MaxPool2d pool(spec);
    Tape tape;
    VarPtr y = pool.forward({nullptr, &tape, 0, 0}, x);
    const std::size_t rows = g.n * g.ho * g.wo;
    ASSERT_EQ(y->value.rows(), rows);
    EXPECT_EQ(y->value.exponents(), xt.exponents());
    std::vector<double> best(rows * g.c, -1e300);
    std::vector<std::size_t> arg(rows * g.c);
    g.for_window([&](std::size_t o, std::size_t in) {
      for (std::size_t c = 0; c < g.c; ++c)
        if (deq(xt, in * g.c + c) > best[o * g.c + c]) {
          best[o * g.c + c] = deq(xt, in * g.c + c);
          arg[o * g.c + c] = in * g.c + c;
        }
    });
    for (std::size_t i = 0; i < best.size(); ++i) ASSERT_EQ(deq(y->value, i), best[i]);
    y->grad = random_i32(rows, g.c, 1 << 30, -12, 22);  // large: overlapping windows overflow int32 sums
    y->has_grad = true;
    tape.backward();
    std::vector<double> dx(xt.size(), 0.0);
    for (std::size_t i = 0; i < arg.size(); ++i) dx[arg[i]] += deq(y->grad, i);
    const double ulp = std::ldexp(1.0, x->grad.exponent());
    for (std::size_t i = 0; i < dx.size(); ++i)
      ASSERT_NEAR(deq(x->grad, i), dx[i], x->grad.exponent() == -12 ? 0.0 : 0.5 * ulp) << i;
  }
}

// Σ/A: exact for A = 2^a unless the result had to be narrowed; else within the dyadic error plus ½ ulp.
double avg_tol(double sum, std::size_t window, int out_exponent) {
  const InverseWindow inv(window);
  const double scale_err = std::abs(std::ldexp(double(inv.mul), -inv.shift) - 1.0 / double(window));
  // + a float-rounding slack for the check itself (want = sum/A is rounded in double)
  return std::abs(sum) * scale_err + std::ldexp(0.5, out_exponent) + 1e-14 * std::abs(sum);
}

TEST(AvgPool2d, ForwardAndBackwardMatchFloatFormula) {
  for (const Pool2dSpec spec :
       {Pool2dSpec{8, 6, 3, 2, 2, 0}, Pool2dSpec{7, 5, 3, 3, 2, 0}, Pool2dSpec{7, 5, 3, 3, 1, 0}}) {
    const PoolGeo g(spec, 2);
    const std::size_t window = g.k * g.k, rows = g.n * g.ho * g.wo;
    const bool pow2 = (window & (window - 1)) == 0;
    Tensor xt = random_i32(g.n * g.h * g.w, g.c, 1 << 30, 0, 31);
    xt.set_exponents(ScaleAxis::kCol, {-30, -28, -33});
    auto x = var(xt);
    AvgPool2d pool(spec);
    Tape tape;
    VarPtr y = pool.forward({nullptr, &tape, 0, 0}, x);
    ASSERT_EQ(y->value.rows(), rows);
    std::vector<double> sum(rows * g.c, 0.0);
    g.for_window([&](std::size_t o, std::size_t in) {
      for (std::size_t c = 0; c < g.c; ++c) sum[o * g.c + c] += deq(xt, in * g.c + c);
    });
    for (std::size_t i = 0; i < sum.size(); ++i)
      ASSERT_NEAR(deq(y->value, i), sum[i] / double(window),
                  avg_tol(sum[i], window, y->value.exponent_at(i / g.c, i % g.c)))
          << i;
    y->grad = random_i32(rows, g.c, 1 << 20, -20, 32);
    y->has_grad = true;
    tape.backward();
    std::vector<double> dsum(xt.size(), 0.0);
    g.for_window([&](std::size_t o, std::size_t in) {
      for (std::size_t c = 0; c < g.c; ++c) dsum[in * g.c + c] += deq(y->grad, o * g.c + c);
    });
    for (std::size_t i = 0; i < dsum.size(); ++i) {
      const double want = dsum[i] / double(window);
      if (pow2) {
        ASSERT_EQ(deq(x->grad, i), want) << i;  // an exponent shift, no rounding at these magnitudes
      } else {
        ASSERT_NEAR(deq(x->grad, i), want, avg_tol(dsum[i], window, x->grad.exponent())) << i;
      }
    }
  }
}

TEST(GlobalAvgPool, ForwardAndBackwardMatchFloatFormula) {
  const std::vector<std::pair<std::size_t, std::size_t>> sizes{{7, 5}, {4, 4}};
  for (const auto& [h, w] : sizes) {
    const std::size_t n = 3, c = 4, window = h * w;
    Tensor xt = random_i32(n * h * w, c, 1 << 30, -25, 41);
    auto x = var(xt);
    GlobalAvgPool pool(h, w, c);
    Tape tape;
    VarPtr y = pool.forward({nullptr, &tape, 0, 0}, x);
    ASSERT_EQ(y->value.rows(), n);
    ASSERT_EQ(y->value.cols(), c);
    for (std::size_t b = 0; b < n; ++b)
      for (std::size_t ch = 0; ch < c; ++ch) {
        double sum = 0;
        for (std::size_t q = 0; q < window; ++q) sum += deq(xt, (b * window + q) * c + ch);
        ASSERT_NEAR(deq(y->value, b * c + ch), sum / double(window), avg_tol(sum, window, y->value.exponent()));
      }
    y->grad = random_i32(n, c, 1 << 30, -20, 42);
    y->has_grad = true;
    tape.backward();
    for (std::size_t i = 0; i < xt.size(); ++i) {
      const double d = deq(y->grad, (i / (c * window)) * c + i % c);
      ASSERT_NEAR(deq(x->grad, i), d / double(window), avg_tol(d, window, x->grad.exponent())) << i;
      if (window == 16) {
        ASSERT_EQ(deq(x->grad, i), d / 16);
      }
    }
  }
}

TEST(Flatten, ReshapesValuesExponentsAndGradient) {
  const std::size_t n = 2, h = 3, w = 2, c = 4;
  Tensor xt = random_i32(n * h * w, c, 1000, 0, 51);
  xt.set_exponents(ScaleAxis::kCol, {-1, -2, -3, -4});
  auto x = var(xt);
  Flatten flat(h, w, c);
  Tape tape;
  VarPtr y = flat.forward({nullptr, &tape, 0, 0}, x);
  ASSERT_EQ(y->value.rows(), n);
  ASSERT_EQ(y->value.cols(), h * w * c);
  for (std::size_t i = 0; i < xt.size(); ++i) ASSERT_EQ(deq(y->value, i), deq(xt, i));
  y->grad = random_i32(n, h * w * c, 1000, -9, 52);
  y->has_grad = true;
  y->retain_grad = true;  // compared with x's below
  tape.backward();
  ASSERT_EQ(x->grad.rows(), n * h * w);
  for (std::size_t i = 0; i < xt.size(); ++i) ASSERT_EQ(deq(x->grad, i), deq(y->grad, i));
}

// ---- Residual add ---------------------------------------------------------------------------------------------

TEST(Add, AlignsExponentsPerColumnExactly) {
  Tensor at = random_i32(6, 4, 1 << 30, 0, 61);
  at.set_exponents(ScaleAxis::kCol, {-10, -3, -20, 5});
  Tensor bt = random_i32(6, 4, 1 << 30, -12, 62);
  auto a = var(at), b = var(bt);
  Tape tape;
  VarPtr y = add({nullptr, &tape, 0, 0}, a, b);
  ASSERT_EQ(y->value.axis(), ScaleAxis::kCol);
  for (std::size_t i = 0; i < at.size(); ++i) {
    const double want = deq(at, i) + deq(bt, i);  // exact in double: spans < 53 bits here
    // The exact sum rounded once to the output column's exponent.
    const double ulp = std::ldexp(1.0, y->value.exponent_at(0, i % 4));
    const double rounded = std::nearbyint(want / ulp) * ulp;  // FE_TONEAREST: ties to even
    ASSERT_EQ(deq(y->value, i), rounded) << i;
  }
  // Per-tensor operands without overflow: exact.
  Tensor ct = random_i32(3, 3, 1000, -4, 63), dt = random_i32(3, 3, 1000, -9, 64);
  VarPtr z = add({nullptr, nullptr, 0, 0}, var(ct), var(dt));
  ASSERT_EQ(z->value.axis(), ScaleAxis::kTensor);
  EXPECT_EQ(z->value.exponent(), -9);
  for (std::size_t i = 0; i < ct.size(); ++i) ASSERT_EQ(deq(z->value, i), deq(ct, i) + deq(dt, i));

  // Backward: both inputs receive dy.
  y->grad = random_i32(6, 4, 1000, -7, 65);
  y->has_grad = true;
  y->retain_grad = true;  // compared with the inputs' below
  tape.backward();
  for (std::size_t i = 0; i < at.size(); ++i) {
    ASSERT_EQ(deq(a->grad, i), deq(y->grad, i));
    ASSERT_EQ(deq(b->grad, i), deq(y->grad, i));
  }
}

TEST(Add, FarApartExponentsAndSharedInputs) {
  // 40 octaves apart: the finer operand is rounded at 2^−31 of the coarser scale; bounded by ½ ulp twice.
  Tensor at = random_i32(4, 2, 1 << 30, 0, 71), bt = random_i32(4, 2, 1 << 30, -40, 72);
  VarPtr y = add({nullptr, nullptr, 0, 0}, var(at), var(bt));
  for (std::size_t i = 0; i < at.size(); ++i) {
    const double ulp = std::ldexp(1.0, y->value.exponent());
    ASSERT_NEAR(deq(y->value, i), deq(at, i) + deq(bt, i), ulp) << i;
  }
  // A coarse column that is all zero does not force the rounding: that column is b, exactly.
  Tensor a2 = at;
  a2.set_exponents(ScaleAxis::kCol, {0, 0});
  for (std::size_t r = 0; r < 4; ++r) a2.data<int32_t>()[r * 2 + 1] = 0;
  VarPtr y2 = add({nullptr, nullptr, 0, 0}, var(a2), var(bt));
  for (std::size_t r = 0; r < 4; ++r) ASSERT_EQ(deq(y2->value, r * 2 + 1), deq(bt, r * 2 + 1)) << r;
  EXPECT_EQ(y2->value.exponent_at(0, 1), -40);
  // int8 + int32, and x + x (the gradient accumulates twice).
  Tensor i8(2, 3, DType::kI8, -2);
  for (std::size_t i = 0; i < 6; ++i) i8.data<int8_t>()[i] = static_cast<int8_t>(10 * i) - 25;
  auto x = var(random_i32(2, 3, 500, -5, 73));
  Tape tape;
  VarPtr s = add({nullptr, &tape, 0, 0}, x, x);
  VarPtr t = add({nullptr, nullptr, 0, 0}, var(i8), x);
  for (std::size_t i = 0; i < 6; ++i) {
    ASSERT_EQ(deq(s->value, i), 2 * deq(x->value, i));
    ASSERT_EQ(deq(t->value, i), deq(i8, i) + deq(x->value, i));
  }
  s->grad = random_i32(2, 3, 500, -3, 74);
  s->has_grad = true;
  s->retain_grad = true;  // compared with x's below
  tape.backward();
  for (std::size_t i = 0; i < 6; ++i) ASSERT_EQ(deq(x->grad, i), 2 * deq(s->grad, i));
}

TEST(Add, FusedReluEqualsReluOfAdd) {
  // Exponents equal, a few octaves apart (per tensor and per column), and magnitudes that force a narrowing shift.
  struct Case {
    int32_t range_a, range_b;
    int ea, eb;
    bool per_col;
  };
  const Case cases[] = {{1 << 20, 1 << 20, -5, -5, false}, {1 << 30, 1 << 30, -3, -3, false},
                        {1 << 29, 1 << 25, -2, -7, false}, {1000, 1 << 30, 4, -9, true}};
  int seed = 90;
  for (const Case& k : cases) {
    Tensor at = random_i32(67, 16, k.range_a, k.ea, seed++), bt = random_i32(67, 16, k.range_b, k.eb, seed++);
    if (k.per_col) {
      std::vector<int> e(16);
      for (int c = 0; c < 16; ++c) e[c] = k.ea + c % 3;
      at.set_exponents(ScaleAxis::kCol, e);
    }
    const Tensor dy = random_i32(67, 16, 1 << 20, -11, seed++);
    auto a1 = var(at), b1 = var(bt), a2 = var(at), b2 = var(bt);
    Tape tape1, tape2;
    Relu relu;
    VarPtr y1 = relu.forward({nullptr, &tape1, 0, 0}, add({nullptr, &tape1, 0, 0}, a1, b1));
    VarPtr y2 = add_relu({nullptr, &tape2, 0, 0}, a2, b2);
    ASSERT_TRUE(bit_identical(y1->value, y2->value));
    if (!k.per_col) {
      ASSERT_TRUE(y2->value.nonnegative_max().has_value());
      int32_t mx = 0;
      for (std::size_t i = 0; i < y2->value.size(); ++i) mx = std::max(mx, std::as_const(y2->value).data<int32_t>()[i]);
      EXPECT_EQ(*y2->value.nonnegative_max(), static_cast<uint64_t>(mx));
    }
    y1->grad = dy;
    y1->has_grad = true;
    y2->grad = dy;
    y2->has_grad = true;
    tape1.backward();
    tape2.backward();
    ASSERT_TRUE(bit_identical(a1->grad, a2->grad));
    ASSERT_TRUE(bit_identical(b1->grad, b2->grad));
  }
}

// add and add_relu split over 2 and 3 threads (always split) give the single-thread bits, forward (values,
// exponents, the ReLU's maximum) and backward (one or both inputs needing a gradient). Shapes not a multiple of
// the 1024-element blocks; cases where no block, every block, or one block in the middle overflows int32 at the
// working exponent (the kernels redo such a block in int64, and the sums need a narrowing shift), and per-column
// exponents (the column maxima merged over row tiles).
TEST(Add, ThreadedForwardAndBackwardAreBitIdentical) {
  kernels::ThreadPool two(2, kernels::ThreadPool::Split::kAlways), three(3, kernels::ThreadPool::Split::kAlways);
  struct Case {
    int32_t range_a, range_b;
    int ea, eb;
    bool per_col;
    bool plant;  // one element pair whose sum overflows int32, in block 17
  };
  const Case cases[] = {{1 << 20, 1 << 20, -5, -5, false, false}, {1 << 29, 1 << 25, -2, -7, false, false},
                        {1 << 20, 1 << 20, -5, -5, false, true},  {1 << 24, 1 << 29, 4, -9, true, false},
                        {1 << 30, 1 << 30, -3, -3, true, false}};
  const std::size_t rows = 2003, cols = 16;  // 32048 elements: 31 whole blocks and a tail
  uint64_t seed = 300;
  for (const Case& k : cases)
    for (bool relu : {false, true})
      for (bool both : {true, false}) {
        SCOPED_TRACE(std::to_string(&k - cases) + (relu ? " relu" : "") + (both ? " both" : " b only"));
        Tensor at = random_i32(rows, cols, k.range_a, k.ea, seed++), bt = random_i32(rows, cols, k.range_b, k.eb, seed++);
        if (k.per_col) {
          std::vector<int> e(cols);
          for (std::size_t c = 0; c < cols; ++c) e[c] = k.ea + static_cast<int>(c % 5);
          at.set_exponents(ScaleAxis::kCol, e);
        }
        if (k.plant) at.data<int32_t>()[17 * 1024 + 5] = bt.data<int32_t>()[17 * 1024 + 5] = (1 << 30) + 1;
        const Tensor dy = random_i32(rows, cols, 1 << 20, -11, seed++);
        struct Run {
          VarPtr a, b, y;
        };
        auto run = [&](kernels::ThreadPool* pool) {
          Run r{var(at), var(bt), nullptr};
          r.a->requires_grad = both;
          Tape tape;
          const StepContext ctx{pool, &tape, 0, 0};
          r.y = relu ? add_relu(ctx, r.a, r.b) : add(ctx, r.a, r.b);
          r.y->grad = dy;
          r.y->has_grad = true;
          tape.backward();
          return r;
        };
        const Run one = run(nullptr);
        if (k.plant) {
          EXPECT_EQ(one.y->value.exponent(), k.ea + 1);  // the planted sum forced a narrowing shift
        }
        for (kernels::ThreadPool* pool : {&two, &three}) {
          const Run r = run(pool);
          ASSERT_TRUE(bit_identical(r.y->value, one.y->value)) << pool->threads();
          EXPECT_EQ(r.y->value.nonnegative_max(), one.y->value.nonnegative_max());
          ASSERT_EQ(r.a->has_grad, both);
          if (both) {
            ASSERT_TRUE(bit_identical(r.a->grad, one.a->grad)) << pool->threads();
          }
          ASSERT_TRUE(bit_identical(r.b->grad, one.b->grad)) << pool->threads();
        }
      }
}

// ---- Weights packed once per version ---------------------------------------------------------------------------

// W_q (per-row exponents ew) and W_aligned (exponent e_aligned) of a parameter's current master weights.
struct QuantizedOperands {
  std::vector<int8_t> w, aligned;
  std::vector<int> ew;
  int e_aligned = 0;
};
QuantizedOperands quantized_operands(const Param& p, int bits) {
  const std::size_t m = p.master.rows(), k = p.master.cols();
  const quant::IntRange r = quant::signed_range(bits);
  QuantizedOperands o{std::vector<int8_t>(m * k), std::vector<int8_t>(m * k), std::vector<int>(m), 0};
  quant::quantize_per_row(p.master.data<int32_t>(), m, k, p.master.exponent(), {r}, o.w.data(), o.ew.data());
  o.e_aligned = quant::align_rows(o.w.data(), m, k, o.ew.data(), static_cast<uint32_t>(r.hi), o.aligned.data());
  return o;
}

// One training step of a layer (id 3: ShiftQuant stream 13) on x with output gradient dy.
struct Step {
  VarPtr x, y;
  quant::ShiftQuantized g;
};
Step train_step(Layer& layer, const Tensor& xt, const Tensor& dy, const QGemmConfig& cfg, kernels::ThreadPool* pool) {
  Step s;
  s.x = var(xt);
  Tape tape;
  const StepContext ctx{pool, &tape, 5, 7};
  s.y = layer.forward(ctx, s.x);
  s.y->grad = dy;
  s.y->has_grad = true;
  tape.backward();
  quant::shiftquant(dy.data<int32_t>(), dy.rows(), dy.cols(), dy.exponent(), {cfg.grad_bits, cfg.groups},
                    ctx.rounding_rng(3, kOutputGradSlot), &s.g);
  return s;
}

// Y and dX of the step equal `y` (exponents e_x + e_w[c]) and `dx` (the dgrad exponent), exactly.
void expect_products(const Step& s, const QuantizedOperands& w, int ex, const std::vector<int64_t>& y,
                     const std::vector<int64_t>& dx) {
  const Tensor& yt = s.y->value;
  ASSERT_EQ(yt.size(), y.size());
  for (std::size_t c = 0; c < yt.cols(); ++c) ASSERT_EQ(yt.exponent_at(0, c), ex + w.ew[c]) << c;
  for (std::size_t i = 0; i < y.size(); ++i) ASSERT_EQ(yt.data<int32_t>()[i], y[i]) << "y " << i;
  ASSERT_TRUE(s.x->has_grad);
  ASSERT_EQ(s.x->grad.size(), dx.size());
  ASSERT_EQ(s.x->grad.exponent(), s.g.shifted_exponent() + w.e_aligned);
  for (std::size_t i = 0; i < dx.size(); ++i) ASSERT_EQ(s.x->grad.data<int32_t>()[i], dx[i]) << "dx " << i;
}

// Linear (zero bias: Y is the GEMM) against the scalar GEMMs on this version's operands.
void check_linear(Linear& lin, const Tensor& xt, const Tensor& dy, kernels::ThreadPool* pool) {
  const LinearSpec& sp = lin.spec();
  const QGemmConfig cfg{sp.weight_bits, sp.act_bits, sp.grad_bits, sp.groups, sp.signed_input};
  const Step s = train_step(lin, xt, dy, cfg, pool);
  const QuantizedOperands w = quantized_operands(lin.weight(), sp.weight_bits);
  const Tensor xq = quantize_activation(xt, sp.act_bits, sp.signed_input);
  const std::size_t n = xt.rows();
  std::vector<int32_t> y(n * sp.out), dx(n * sp.in);
  kernels::ref::gemm_forward(xq.data<int8_t>(), w.w.data(), y.data(), n, sp.out, sp.in);
  kernels::ref::gemm_dgrad(s.g.shifted.data(), w.aligned.data(), dx.data(), n, sp.out, sp.in);
  expect_products(s, w, xq.exponent(), {y.begin(), y.end()}, {dx.begin(), dx.end()});
}

// Conv2d against the plain convolution loops on this version's operands.
void check_conv(Conv2d& conv, const Tensor& xt, const Tensor& dy, kernels::ThreadPool* pool) {
  const Conv2dSpec& sp = conv.spec();
  const QGemmConfig cfg{sp.weight_bits, sp.act_bits, sp.grad_bits, sp.groups, sp.signed_input};
  const Step s = train_step(conv, xt, dy, cfg, pool);
  const QuantizedOperands w = quantized_operands(conv.weight(), sp.weight_bits);
  const Tensor xq = quantize_activation(xt, sp.act_bits, sp.signed_input);
  const Geo g(sp, xt.rows() / (sp.in_h * sp.in_w));
  const int8_t* x8 = xq.data<int8_t>();
  std::vector<int64_t> y(dy.size(), 0), dx(xt.size(), 0);
  g.for_taps([&](std::size_t o, std::size_t in, std::size_t kb) {
    for (std::size_t co = 0; co < g.co; ++co)
      for (std::size_t c = 0; c < g.c; ++c) {
        y[o * g.co + co] += x8[in * g.c + c] * w.w[co * g.k + kb + c];
        dx[in * g.c + c] += s.g.shifted[o * g.co + co] * w.aligned[co * g.k + kb + c];
      }
  });
  expect_products(s, w, xq.exponent(), y, dx);
}

// A new version of the weights, as an optimizer step leaves them.
void update(Param& p, uint64_t seed) {
  p.master = random_i32(p.master.rows(), p.master.cols(), 1 << 24, p.master.exponent(), seed);  // a new version
}

// Linear and Conv2d run their forward and dgrad products through WeightProducts (QuantizedWeights, Conv2d's
// flipped dX weights): a version's first product packs W inside the call, later ones use W packed once. Three steps
// per version: the first unpacked, the second packing under the best target, the third under `target` (a forced
// lower one: PackedWeights repacks from its copy of W). Every step, and every version after an update, must equal
// the scalar references exactly.
TEST(PackedWeights, LayersMatchScalarProductsAcrossVersionsAndTargets) {
  kernels::ThreadPool pool(2, kernels::ThreadPool::Split::kAlways);
  const std::string best = kernels::available_targets().front().name;
  LinearSpec ls;
  ls.in = 37;
  ls.out = 19;
  ls.signed_input = true;
  std::vector<Conv2dSpec> cs;
  for (std::size_t k : {3, 1})
    for (std::size_t stride : {1, 2}) {
      Conv2dSpec c;
      c.in_h = 6;
      c.in_w = 5;
      c.in_channels = 8;
      c.out_channels = 40;
      c.kernel_h = c.kernel_w = k;
      c.stride = stride;
      c.padding = k / 2;  // 3×3/s1: dX as a convolution; 3×3/s2: dP and col2im; 1×1/s1: no im2col
      c.weight_bits = c.act_bits = c.grad_bits = 4;
      c.groups = quant::max_groups(4);
      cs.push_back(c);
    }
  const std::size_t batch = 3;
  const Tensor lx = random_i32(9, ls.in, 100000, -20, 21), ldy = random_i32(9, ls.out, 1 << 20, -26, 22);
  Tensor cx = random_i32(batch * 6 * 5, 8, 100000, -20, 23);
  for (std::size_t i = 0; i < cx.size(); ++i) cx.data<int32_t>()[i] = std::abs(cx.data<int32_t>()[i]);
  for (const std::string& target : kernels::target_names()) {
    SCOPED_TRACE(target);
    Linear lin(ls, 3, 17);
    std::fill_n(lin.bias().master.data<int32_t>(), ls.out, 0);
    std::vector<std::unique_ptr<Conv2d>> convs;
    for (const Conv2dSpec& c : cs) convs.push_back(std::make_unique<Conv2d>(c, 3, 17));
    for (uint64_t version = 0; version < 3; ++version) {
      for (const std::string& t : {best, best, target}) {
        const kernels::ForcedTarget forced(t);
        ASSERT_TRUE(forced.ok());
        check_linear(lin, lx, ldy, &pool);
        for (auto& conv : convs) {
          const Conv2dSpec& sp = conv->spec();
          const Tensor dy = random_i32(batch * sp.out_h() * sp.out_w(), sp.out_channels, 1 << 20, -26, 24 + version);
          check_conv(*conv, cx, dy, &pool);
        }
      }
      update(lin.weight(), 30 + version);
      for (auto& conv : convs) update(conv->weight(), 40 + version);
    }
  }
}

// ---- Composition ----------------------------------------------------------------------------------------------

struct TinyCnn {
  Conv2d conv1, conv2;
  Relu relu;
  MaxPool2d pool;
  GlobalAvgPool gap;
  Linear fc;
  TinyCnn()
      : conv1(Conv2dSpec{8, 8, 3, 8, 3, 3, 1, 1, 4, 8, 4, 5, true, false, 0}, 0, 9),
        conv2(Conv2dSpec{4, 4, 8, 6, 3, 3, 1, 1, 4, 4, 4, 5, false, true, 0}, 1, 9),
        pool(Pool2dSpec{8, 8, 8, 2, 2, 0}),
        gap(4, 4, 6),
        fc(LinearSpec{6, 10, 4, 4, 4, 5, false, true}, 2, 9) {}
  std::vector<Param*> params() { return {&conv1.weight(), &conv2.weight(), &fc.weight(), &fc.bias()}; }
  VarPtr forward(const StepContext& ctx, const VarPtr& x) {
    VarPtr h = relu.forward(ctx, conv1.forward(ctx, x));
    h = pool.forward(ctx, h);
    h = relu.forward(ctx, conv2.forward(ctx, h));
    // A residual add of the block with itself shifted through ReLU keeps add() in the graph.
    h = add(ctx, h, relu.forward(ctx, h));
    return fc.forward(ctx, gap.forward(ctx, h));
  }
};

TEST(CnnStack, ConvReluPoolConvGapLinearTrainsThroughOneTape) {
  const std::size_t n = 16;
  Tensor images(n * 8 * 8, 3, DType::kI8, -5);
  const quant::CounterRng rng(3, 3);
  for (std::size_t i = 0; i < images.size(); ++i)
    images.data<int8_t>()[i] = static_cast<int8_t>(static_cast<int>(rng.below(i, 255)) - 127);
  std::vector<int32_t> labels(n);
  for (std::size_t i = 0; i < n; ++i) labels[i] = static_cast<int32_t>(i % 10);

  auto train = [&](kernels::ThreadPool* pool, std::vector<double>* losses) {
    auto net = std::make_unique<TinyCnn>();
    Sgd sgd({0.9, 0.0});
    for (uint64_t step = 0; step < 40; ++step) {
      Tape tape;
      const StepContext ctx{pool, &tape, 1, step};
      VarPtr logits = net->forward(ctx, make_input(images));
      EXPECT_EQ(logits->value.rows(), n);
      const LossResult res = softmax_cross_entropy(ctx, logits, labels.data());
      losses->push_back(res.loss);
      tape.backward();
      for (Param* p : net->params()) EXPECT_TRUE(p->has_grad) << p->name;
      sgd.step(net->params(), 0.05, step, 1);
    }
    return net;
  };
  std::vector<double> l1, l2;
  kernels::ThreadPool two(2);
  auto a = train(nullptr, &l1);
  auto b = train(&two, &l2);
  EXPECT_TRUE(std::isfinite(l1.back()));
  EXPECT_LT(l1.back(), l1.front());  // it learns the fixed batch
  EXPECT_EQ(l1, l2);                 // and bit-identically for one and two threads
  const auto pa = a->params(), pb = b->params();
  for (std::size_t i = 0; i < pa.size(); ++i) EXPECT_TRUE(bit_identical(pa[i]->master, pb[i]->master)) << pa[i]->name;
}

}  // namespace
}  // namespace qtrain
