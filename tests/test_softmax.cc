// Attention's integer softmax (engine/ops/softmax.h): every row sums to exactly 2^15; the error against float softmax
// of the same integer input is bounded; int32 extremes, equal rows and one-hot rows; the causal mask; the backward
// against p ⊙ (g − Σ p g) written here in doubles; thread counts give the same bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <vector>

#include "qtrain/engine/ops/softmax.h"
#include "qtrain/kernels/thread_pool.h"
#include "qtrain/quant/error.h"
#include "tests/op_test_util.h"

namespace qtrain {
namespace {

constexpr double kUnit = 1.0 / 32768;  // one unit of the Q15 output

std::vector<double> float_softmax(const std::vector<double>& z) {
  const double m = *std::max_element(z.begin(), z.end());
  std::vector<double> p(z.size());
  double s = 0;
  for (std::size_t i = 0; i < z.size(); ++i) s += p[i] = std::exp(z[i] - m);
  for (double& v : p) v /= s;
  return p;
}

VarPtr run_softmax(const Tensor& x, const SoftmaxConfig& cfg, kernels::ThreadPool* pool = nullptr) {
  const StepContext ctx{pool, nullptr, 1, 1};
  return softmax(ctx, cfg, var(x));
}

// Rows of every length, std 1/3/6 in real units, scales 1/4 and 1/√8: sums exact, error ≤ 2 units + 2^−16 relative.
TEST(Softmax, RowsSumToOneExactlyAndStayCloseToFloat) {
  for (std::size_t cols : {1u, 2u, 17u, 65u, 197u, 1000u})
    for (double sd : {1.0, 3.0, 6.0})
      for (double scale : {0.25, 1.0 / std::sqrt(8.0)}) {
        // Integers at 2^−8 whose real values after the scale have the wanted spread.
        const int32_t range = static_cast<int32_t>(sd / scale * std::sqrt(3.0) * 256);
        const Tensor x = random_i32(8, cols, range, -8, cols * 31 + static_cast<uint64_t>(sd));
        SoftmaxConfig cfg;
        cfg.scale = scale;
        const VarPtr p = run_softmax(x, cfg);
        ASSERT_EQ(p->value.exponent(), -15);
        for (std::size_t r = 0; r < 8; ++r) {
          std::vector<double> z(cols);
          int64_t sum = 0;
          for (std::size_t c = 0; c < cols; ++c) {
            z[c] = x.value(r * cols + c) * scale;
            sum += p->value.data<int32_t>()[r * cols + c];
          }
          EXPECT_EQ(sum, 32768) << cols << " columns, row " << r;
          const std::vector<double> ref = float_softmax(z);
          for (std::size_t c = 0; c < cols; ++c)
            EXPECT_LE(std::abs(p->value.value(r * cols + c) - ref[c]), 2 * kUnit + ref[c] * 1e-4)
                << cols << " cols, sd " << sd << ", scale " << scale << ", (" << r << ", " << c << ")";
        }
      }
}

TEST(Softmax, Int32ExtremesEqualRowsAndOneHotRows) {
  const std::size_t cols = 17;
  Tensor x(5, cols, DType::kI32, 0);
  int32_t* v = x.data<int32_t>();
  for (std::size_t c = 0; c < cols; ++c) {
    v[0 * cols + c] = INT32_MIN;                      // all equal at the bottom
    v[1 * cols + c] = INT32_MAX;                      // all equal at the top
    v[2 * cols + c] = c % 2 ? INT32_MAX : INT32_MIN;  // mixed: uniform over the maxima
    v[3 * cols + c] = c == 5 ? 1000 : 0;              // one-hot
    v[4 * cols + c] = 7;
  }
  for (int e : {-40, -8, 0, 20}) {
    x.set_exponent(e);
    const VarPtr p = run_softmax(x, SoftmaxConfig{});
    const int32_t* q = p->value.data<int32_t>();
    for (std::size_t r = 0; r < 5; ++r) {
      int64_t sum = 0;
      for (std::size_t c = 0; c < cols; ++c) sum += q[r * cols + c];
      EXPECT_EQ(sum, 32768) << "row " << r << " at e=" << e;
    }
    for (std::size_t r : {0u, 1u, 4u})  // equal rows: uniform, within the one unit the exact sum hands out
      for (std::size_t c = 0; c < cols; ++c) EXPECT_NEAR(q[r * cols + c], 32768.0 / cols, 1.0) << r << "," << c;
    for (std::size_t c = 0; c < cols; ++c) {
      if (e >= -8) {  // 2^−8 · (INT32_MAX − INT32_MIN) real units apart: the minima are exactly 0
        EXPECT_EQ(q[2 * cols + c], c % 2 ? 32768 / 8 : 0) << c;
      }
      if (e >= 0) {  // 1000 real units: one-hot
        EXPECT_EQ(q[3 * cols + c], c == 5 ? 32768 : 0) << c;
      }
    }
  }
}

TEST(Softmax, CausalMaskZeroesTheFutureAndEachRowStillSumsToOne) {
  const std::size_t t = 6, matrices = 3;
  const Tensor x = random_i32(matrices * t, t, 1 << 12, -10, 3);
  SoftmaxConfig cfg;
  cfg.causal = true;
  cfg.rows_per_matrix = t;
  const VarPtr p = run_softmax(x, cfg);
  for (std::size_t r = 0; r < matrices * t; ++r) {
    int64_t sum = 0;
    std::vector<double> z;
    for (std::size_t c = 0; c < t; ++c) {
      const int32_t q = p->value.data<int32_t>()[r * t + c];
      if (c > r % t) {
        EXPECT_EQ(q, 0) << r << "," << c;
      } else {
        z.push_back(x.value(r * t + c));
      }
      sum += q;
    }
    EXPECT_EQ(sum, 32768) << r;
    if (r % t == 0) {
      EXPECT_EQ(p->value.data<int32_t>()[r * t], 32768) << "first row of a matrix is one-hot";
    }
    const std::vector<double> ref = float_softmax(z);
    for (std::size_t c = 0; c < z.size(); ++c) EXPECT_LE(std::abs(p->value.value(r * t + c) - ref[c]), 2 * kUnit);
  }
  cfg.rows_per_matrix = 5;
  EXPECT_THROW(run_softmax(x, cfg), std::invalid_argument);
}

// dx against c·p ⊙ (g − Σ p g) in doubles on the op's own p (the straight-through choice), relative to max|dx|.
TEST(Softmax, BackwardMatchesTheFloatFormula) {
  for (double scale : {0.25, 1.0 / std::sqrt(8.0)})
    for (bool causal : {false, true}) {
      const std::size_t t = 17, rows = 4 * t;
      const Tensor x = random_i32(rows, t, 1 << 14, -12, 11);
      const Tensor g = random_i32(rows, t, 1 << 24, -30, 12);
      Tape tape;
      const StepContext ctx{nullptr, &tape, 1, 1};
      SoftmaxConfig cfg;
      cfg.scale = scale;
      cfg.causal = causal;
      cfg.rows_per_matrix = t;
      VarPtr xv = var(x);
      VarPtr p = softmax(ctx, cfg, xv);
      p->grad = g;
      p->has_grad = true;
      tape.backward();
      ASSERT_TRUE(xv->has_grad);
      double worst = 0, top = 0;
      for (std::size_t r = 0; r < rows; ++r) {
        double dot = 0;
        for (std::size_t c = 0; c < t; ++c) dot += p->value.value(r * t + c) * g.value(r * t + c);
        for (std::size_t c = 0; c < t; ++c) {
          const double ref = scale * p->value.value(r * t + c) * (g.value(r * t + c) - dot);
          top = std::max(top, std::abs(ref));
          worst = std::max(worst, std::abs(xv->grad.value(r * t + c) - ref));
        }
      }
      ASSERT_GT(top, 0);
      // The 16-bit working gradient (2^−15 of max|g|) and the dyadic scale (2^−16) bound the error.
      EXPECT_LE(worst / top, 2e-4) << "scale " << scale << (causal ? " causal" : "");
    }
}

TEST(Softmax, ThreadCountsGiveTheSameBits) {
  const Tensor x = random_i32(4096, 17, 1 << 16, -10, 21);
  const Tensor g = random_i32(4096, 17, 1 << 20, -20, 22);
  std::vector<int32_t> ref_p, ref_dx;
  for (std::size_t threads : {1u, 2u}) {
    kernels::ThreadPool pool(threads);
    Tape tape;
    const StepContext ctx{&pool, &tape, 1, 1};
    VarPtr xv = var(x);
    VarPtr p = softmax(ctx, SoftmaxConfig{0.25, false, 0}, xv);
    p->grad = g;
    p->has_grad = true;
    tape.backward();
    std::vector<int32_t> pv(p->value.data<int32_t>(), p->value.data<int32_t>() + p->value.size());
    std::vector<int32_t> dv(xv->grad.data<int32_t>(), xv->grad.data<int32_t>() + xv->grad.size());
    if (ref_p.empty()) {
      ref_p = pv;
      ref_dx = dv;
    } else {
      EXPECT_EQ(pv, ref_p);
      EXPECT_EQ(dv, ref_dx);
    }
  }
}

TEST(Softmax, ScaleOutOfRangeIsAUsageError) {
  const Tensor x = random_i32(2, 3, 10, 0, 1);
  EXPECT_THROW(run_softmax(x, SoftmaxConfig{0.0, false, 0}), UsageError);
  EXPECT_THROW(run_softmax(x, SoftmaxConfig{1000.0, false, 0}), UsageError);
}

}  // namespace
}  // namespace qtrain
