// Integer GELU (qtrain/engine/ops/gelu.h): table entries against float GELU/GELU', the forward within ½ unit of the
// output for the quantized input, the backward against GELU', a gradient check, extremes, thread counts, and the
// comparison with I-BERT's i-GELU on the int32 input (printed; docs/transformer-ops.md quotes it).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <limits>

#include "op_test_util.h"
#include "qtrain/engine/ops/gelu.h"
#include "qtrain/kernels/thread_pool.h"
#include "qtrain/quant/error.h"

namespace qtrain {
namespace {

// Independent float formulas (C library erfc/exp in double; ample accuracy for these bounds).
double gelu_f(double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); }
double gelu_d(double x) {
  return 0.5 * std::erfc(-x / std::sqrt(2.0)) + x * std::exp(-0.5 * x * x) / std::sqrt(2 * M_PI);
}

TEST(Gelu, TableEntriesAreRoundedExactValues) {
  for (int e = -60; e <= 40; ++e)
    for (int q = -127; q <= 127; ++q) {
      const double x = std::ldexp(q, e);
      const double v = 128.0 * q * 0.5 * std::erfc(-x / std::sqrt(2.0));
      const double d = 65536.0 * gelu_d(x);
      ASSERT_LE(std::abs(gelu_value_entry(q, e) - v), 0.5 + 1e-6) << q << " " << e;
      ASSERT_LE(std::abs(gelu_slope_entry(q, e) - d), 0.5 + 1e-6) << q << " " << e;
    }
  for (int bits = 2; bits <= 8; ++bits)
    for (int e = -40; e <= 20; ++e) {
      const GeluTables& t = gelu_tables(bits, e);
      ASSERT_EQ(t.value.size(), std::size_t((1 << bits) - 1));
      EXPECT_EQ(&t, &gelu_tables(bits, e));  // cached
    }
}

VarPtr run(const Tensor& x, const Tensor& dy, kernels::ThreadPool* pool, int bits = 8) {
  VarPtr xv = var(x);
  Tape tape;
  VarPtr y = gelu({pool, &tape, 1, 1}, GeluConfig{bits}, xv);
  y->grad = dy;
  y->has_grad = true;
  tape.backward();
  EXPECT_TRUE(xv->has_grad);
  y->grad = xv->grad;  // return both in one Var
  return y;
}

TEST(Gelu, ForwardAndBackwardMatchFloatOnTheQuantizedInput) {
  for (int bits : {2, 4, 6, 8})
    for (int ein : {-40, -20, -12, 0, 20}) {
      const Tensor x = random_i32(37, 29, 1 << 20, ein, 7 + bits);
      const Tensor dy = random_i32(37, 29, 1 << 28, -30, 9 + bits);
      VarPtr y = run(x, dy, nullptr, bits);
      const int e = y->value.exponent() + kGeluOutFrac;
      const double step = std::ldexp(1.0, e);
      const double ulp_y = std::ldexp(1.0, y->value.exponent()), ulp_dx = std::ldexp(1.0, y->grad.exponent());
      const int lim = (1 << (bits - 1)) - 1;
      for (std::size_t i = 0; i < x.size(); ++i) {
        const double xr = x.value(i);
        const double xq = std::nearbyint(xr / step);  // nearest-even at the covering step
        ASSERT_LE(std::abs(xq), lim);
        EXPECT_LE(std::abs(y->value.value(i) - gelu_f(xq * step)), 0.5 * ulp_y * (1 + 1e-9)) << i;
        // dx = dy·D rounded twice: D to 2^−16 (≤ ½·|dy|·2^−16), the product to dx's unit (≤ ½ ulp).
        const double dxf = dy.value(i) * gelu_d(xq * step);
        EXPECT_LE(std::abs(y->grad.value(i) - dxf), 0.5 * std::abs(dy.value(i)) * std::ldexp(1.0, -16) + 0.5 * ulp_dx)
            << i;
      }
    }
}

TEST(Gelu, GradientCheckAgainstFiniteDifferencesOfTheFloatFormula) {
  // Away from quantization: 8-bit input whose values are on the grid, so x_q = x exactly; dy = 1 ulp basis.
  const int e = -5;
  Tensor x(1, 255, DType::kI32, e);
  for (int q = -127; q <= 127; ++q) x.data<int32_t>()[q + 127] = q;
  Tensor dy(1, 255, DType::kI32, -20);
  for (std::size_t i = 0; i < 255; ++i) dy.data<int32_t>()[i] = 1 << 20;  // dy = 1
  VarPtr y = run(x, dy, nullptr);
  for (int q = -127; q <= 127; ++q) {
    const double xr = std::ldexp(q, e), h = 1e-5;
    const double fd = (gelu_f(xr + h) - gelu_f(xr - h)) / (2 * h);
    EXPECT_NEAR(y->grad.value(static_cast<std::size_t>(q + 127)), fd, std::ldexp(1.0, -16) + 1e-8) << q;
  }
}

TEST(Gelu, Extremes) {
  Tensor x(2, 4, DType::kI32, 20);
  const int32_t v[] = {INT32_MIN, INT32_MAX, 0, -1, 1, INT32_MIN, INT32_MAX, 7};
  std::copy(v, v + 8, x.data<int32_t>());
  Tensor dy(2, 4, DType::kI32, 0);
  for (std::size_t i = 0; i < 8; ++i) dy.data<int32_t>()[i] = i % 2 == 0 ? INT32_MAX : INT32_MIN;
  VarPtr y = run(x, dy, nullptr);
  EXPECT_EQ(y->value.data<int32_t>()[1], 64 * 128);  // x ≈ 2^51 → x_q = 64 at the covering step 2^45: y = x
  EXPECT_EQ(y->value.data<int32_t>()[0], 0);         // x ≈ −2^51: y = 0
  EXPECT_EQ(y->grad.value(1), dy.value(1));
  EXPECT_EQ(y->grad.value(0), 0);
  // All zero: y = 0, dx = dy/2.
  const Tensor z(3, 3, DType::kI32, -7);
  Tensor g(3, 3, DType::kI32, -3);
  for (std::size_t i = 0; i < 9; ++i) g.data<int32_t>()[i] = int32_t(i) * 1000 - 4000;
  VarPtr yz = run(z, g, nullptr);
  for (std::size_t i = 0; i < 9; ++i) {
    EXPECT_EQ(yz->value.data<int32_t>()[i], 0);
    EXPECT_EQ(yz->grad.value(i), g.value(i) / 2);
  }
  // int8 input and per-column exponents.
  Tensor x8(2, 3, DType::kI8, -6);
  const int8_t v8[] = {-127, -128, 127, 0, 5, -5};
  std::copy(v8, v8 + 6, x8.data<int8_t>());
  VarPtr y8 = gelu({}, GeluConfig{}, var(x8));
  // −128 makes the covering step 2^−5: 127·2^−6 → x_q = 64 → GELU(2).
  EXPECT_NEAR(y8->value.value(2), gelu_f(2.0), std::ldexp(1.0, y8->value.exponent()));
  Tensor xc = random_i32(5, 3, 1000, 0, 3);
  xc.set_exponents(ScaleAxis::kCol, {-10, -8, -12});
  VarPtr yc = gelu({}, GeluConfig{}, var(xc));
  for (std::size_t i = 0; i < xc.size(); ++i)
    EXPECT_NEAR(yc->value.value(i), gelu_f(xc.value(i)),
                1.13 * 0.5 * std::ldexp(1.0, yc->value.exponent() + 7) + std::ldexp(1.0, yc->value.exponent()));
  EXPECT_THROW(GeluConfig{1}.validate(), UsageError);
  EXPECT_THROW(GeluConfig{9}.validate(), UsageError);
}

TEST(Gelu, ThreadCountsGiveIdenticalResults) {
  kernels::ThreadPool two(2, kernels::ThreadPool::Split::kAlways);
  const Tensor x = random_i32(301, 67, 1 << 24, -16, 11);
  const Tensor dy = random_i32(301, 67, 1 << 30, -30, 12);
  VarPtr a = run(x, dy, nullptr), b = run(x, dy, &two);
  ASSERT_EQ(a->value.exponents(), b->value.exponents());
  ASSERT_EQ(a->grad.exponents(), b->grad.exponents());
  for (std::size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(a->value.data<int32_t>()[i], b->value.data<int32_t>()[i]);
    ASSERT_EQ(a->grad.data<int32_t>()[i], b->grad.data<int32_t>()[i]);
  }
}

// I-BERT's IntGELU (kssteven418/I-BERT quant_modules.py) ported: integer values with float scale factors.
double i_gelu(int64_t x_int, double s) {
  const double k = 1.4142, a = -0.2888, b = -1.769, c = 1.0 / a;
  const double se = s / k;
  const int64_t b_int = static_cast<int64_t>(std::floor(b / se));
  const int64_t c_int = static_cast<int64_t>(std::floor(c / (se * se)));
  const int64_t sgn = (x_int > 0) - (x_int < 0);
  const int64_t abs_int = std::min<int64_t>(std::abs(x_int), -b_int);
  int64_t y = sgn * ((abs_int + b_int) * (abs_int + b_int) + c_int);
  double sf = se * se * a;
  y = static_cast<int64_t>(std::floor(static_cast<double>(y) / 16384));
  sf *= 16384;
  const int64_t shift = static_cast<int64_t>(std::floor(1 / sf));
  return static_cast<double>(x_int) * static_cast<double>(y + shift) * s * sf / 2;
}

TEST(Gelu, ErrorAgainstIGelu) {
  // x uniform on [−6, 6]: the LUT after requantizing an int32 input (e = −16) to 8 bits, vs i-GELU on the int32.
  const int ein = -16;
  const Tensor x = random_i32(1, 200001, 6 << 16, ein, 21);
  VarPtr y = gelu({}, GeluConfig{}, var(x));
  double lut = 0, ig = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double xr = x.value(i);
    lut = std::max(lut, std::abs(y->value.value(i) - gelu_f(xr)));
    ig = std::max(ig, std::abs(i_gelu(x.data<int32_t>()[i], std::ldexp(1.0, ein)) - gelu_f(xr)));
  }
  std::printf("max |error| vs GELU(x) on [-6, 6]: LUT 8-bit input %.4f, i-GELU on int32 input %.4f\n", lut, ig);
  EXPECT_LT(lut, 0.04);
  EXPECT_LT(ig, 0.03);
}

}  // namespace
}  // namespace qtrain
