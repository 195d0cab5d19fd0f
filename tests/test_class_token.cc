// The ViT's class token (qtrain/engine/layers/class_token.h): forward and backward against the float formulas
// y_n = [c; x_n], dx_n = dy_n[1:], dc = Σ_n dy_n[0], and the selection of the class row with its scattered gradient.
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <memory>

#include "op_test_util.h"
#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/layers/class_token.h"

namespace qtrain {
namespace {

TEST(ClassToken, PrependsTheTokenAndSplitsTheGradient) {
  const std::size_t n = 3, t = 5, dim = 8, s = t + 1;
  ClassToken cls(t, dim, 4, 7);
  const Tensor x = random_i32(n * t, dim, 1 << 20, -22, 3);
  const Tensor dy = random_i32(n * s, dim, 1 << 20, -30, 4);
  Tape tape;
  const StepContext ctx{nullptr, &tape, 1, 1};
  VarPtr xv = var(x);
  xv->requires_grad = true;
  VarPtr y = cls.forward(ctx, xv);
  ASSERT_EQ(y->value.rows(), n * s);
  ASSERT_EQ(y->value.cols(), dim);
  const Tensor& c = cls.weight().master;
  // Both operands are 2^20-bounded int32 at their own exponents; the sum is narrowed to int32 once: relative error
  // below 2^−29 of the largest value.
  double top = 0;
  for (std::size_t i = 0; i < x.size(); ++i) top = std::max(top, std::abs(x.value(i)));
  for (std::size_t q = 0; q < n; ++q)
    for (std::size_t r = 0; r < s; ++r)
      for (std::size_t j = 0; j < dim; ++j) {
        const double want = r == 0 ? c.value(j) : x.value((q * t + r - 1) * dim + j);
        ASSERT_NEAR(y->value.value((q * s + r) * dim + j), want, top * 0x1p-29) << q << " " << r << " " << j;
      }
  y->grad = dy;
  y->has_grad = true;
  tape.backward();
  ASSERT_TRUE(xv->has_grad);
  ASSERT_TRUE(cls.weight().has_grad);
  for (std::size_t q = 0; q < n; ++q)
    for (std::size_t r = 0; r < t; ++r)
      for (std::size_t j = 0; j < dim; ++j)
        ASSERT_EQ(xv->grad.value((q * t + r) * dim + j), dy.value((q * s + r + 1) * dim + j));
  for (std::size_t j = 0; j < dim; ++j) {
    double want = 0;
    for (std::size_t q = 0; q < n; ++q) want += dy.value(q * s * dim + j);
    EXPECT_NEAR(cls.weight().grad.value(j), want, std::abs(want) * 0x1p-29 + std::ldexp(1.0, -30)) << j;
  }
  EXPECT_FALSE(cls.weight().decay);
}

TEST(ClassTokenRow, SelectsTheFirstRowAndScattersTheGradient) {
  const std::size_t n = 4, s = 6, dim = 5;
  ClassTokenRow pick(s, dim);
  const Tensor x = random_i32(n * s, dim, 1 << 24, -20, 8);
  const Tensor dy = random_i32(n, dim, 1 << 24, -31, 9);
  Tape tape;
  const StepContext ctx{nullptr, &tape, 1, 1};
  VarPtr xv = var(x);
  xv->requires_grad = true;
  VarPtr y = pick.forward(ctx, xv);
  ASSERT_EQ(y->value.rows(), n);
  for (std::size_t q = 0; q < n; ++q)
    for (std::size_t j = 0; j < dim; ++j) ASSERT_EQ(y->value.value(q * dim + j), x.value(q * s * dim + j));
  y->grad = dy;
  y->has_grad = true;
  tape.backward();
  ASSERT_TRUE(xv->has_grad);
  for (std::size_t q = 0; q < n; ++q)
    for (std::size_t r = 0; r < s; ++r)
      for (std::size_t j = 0; j < dim; ++j)
        ASSERT_EQ(xv->grad.value((q * s + r) * dim + j), r == 0 ? dy.value(q * dim + j) : 0.0);
}

TEST(ClassToken, RefusesInputsThatAreNotWholeSequences) {
  ClassToken cls(4, 8, 1, 1);
  const StepContext ctx{nullptr, nullptr, 1, 1};
  EXPECT_THROW(cls.forward(ctx, var(Tensor(10, 8, DType::kI32))), std::invalid_argument);
  EXPECT_THROW(cls.forward(ctx, var(Tensor(8, 7, DType::kI32))), std::invalid_argument);
  ClassTokenRow pick(3, 8);
  EXPECT_THROW(pick.forward(ctx, var(Tensor(10, 8, DType::kI32))), std::invalid_argument);
}

}  // namespace
}  // namespace qtrain
