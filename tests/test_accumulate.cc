// Gradient accumulation: the one aligned sum (core/aligned_sum.h) that a residual add and accumulate_grad (for
// variables and parameters) share, its edges (exponents far apart, int32 extremes, the rounding carry), and layers
// whose parameters are used twice in one step.
#include <gtest/gtest.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "op_test_util.h"
#include "qtrain/engine/core/aligned_sum.h"
#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/core/narrow.h"
#include "qtrain/engine/layers/conv2d.h"
#include "qtrain/engine/layers/depthwise_conv2d.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/engine/layers/norm.h"
#include "qtrain/kernels/thread_pool.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {
namespace {

constexpr int32_t kMax = std::numeric_limits<int32_t>::max();
constexpr int32_t kMin = std::numeric_limits<int32_t>::min();

Tensor filled(std::size_t rows, std::size_t cols, std::vector<int32_t> values, int e) {
  Tensor t(rows, cols, DType::kI32, e);
  for (std::size_t i = 0; i < t.size(); ++i) t.data<int32_t>()[i] = values[i % values.size()];
  return t;
}

__extension__ typedef __int128 i128;  // the exact reference's integers (GCC's extension, quiet under -Wpedantic)

// q·2^(e − base) exactly (the test's exponents keep it within 127 bits).
i128 scaled(int64_t q, int e, int base) { return static_cast<i128>(q) << (e - base); }

// Checks s = a + b element by element against the exact sum (in i128 at the finest exponent): the error is
// ≤ ½ ulp of s's exponent when the operands' exponents are ≤ 31 octaves apart (one rounding), ≤ 1 ulp beyond
// (the finer operand is rounded first, aligned_sum.h), and every value fits int32.
void expect_sum(const Tensor& a, const Tensor& b, const Tensor& s, const std::string& what) {
  ASSERT_EQ(s.rows(), a.rows());
  ASSERT_EQ(s.cols(), a.cols());
  for (std::size_t r = 0; r < a.rows(); ++r)
    for (std::size_t c = 0; c < a.cols(); ++c) {
      const std::size_t i = r * a.cols() + c;
      const int ea = a.exponent_at(r, c), eb = b.exponent_at(r, c), es = s.exponent_at(r, c);
      const int base = std::min({ea, eb, es});
      const i128 exact = scaled(a.data<int32_t>()[i], ea, base) + scaled(b.data<int32_t>()[i], eb, base);
      const i128 got = scaled(s.data<int32_t>()[i], es, base);
      const i128 err = got > exact ? got - exact : exact - got;
      const i128 ulp = static_cast<i128>(1) << (es - base);
      const bool near = std::max(ea, eb) - std::min(ea, eb) <= 31;
      ASSERT_LE(near ? 2 * err : err, ulp)
          << what << " element " << i << " exponents " << ea << " " << eb << " → " << es;
    }
}

TEST(AlignedSum, ZeroFarBelowOrAboveLeavesTheOtherExact) {
  // A zero gradient at −30 plus one at +20 (50 octaves apart) is the latter exactly, and the other way round;
  // the values include the int32 extremes ±(2^31 − 1). (−2^31 is outside the symmetric range every narrowed
  // result keeps: a tensor holding it moves one exponent up, see ExtremesAtEveryGap.)
  const std::vector<int32_t> v{kMax, -kMax, 1, -1, 0, 12345};
  for (auto [ez, ev] : {std::pair{-30, 20}, std::pair{20, -30}, std::pair{-100, 100}, std::pair{100, -100}}) {
    const Tensor zero(3, 7, DType::kI32, ez);
    const Tensor val = filled(3, 7, v, ev);
    for (bool zero_first : {true, false}) {
      const Tensor s = zero_first ? aligned_sum(nullptr, zero, val) : aligned_sum(nullptr, val, zero);
      ASSERT_EQ(s.axis(), ScaleAxis::kTensor);
      EXPECT_EQ(s.exponent(), ev) << ez << " " << ev;
      for (std::size_t i = 0; i < s.size(); ++i) EXPECT_EQ(s.data<int32_t>()[i], val.data<int32_t>()[i]) << i;
    }
  }
}

TEST(AlignedSum, ExtremesAtEveryGap) {
  // ±(2^31 − 1) and −2^31 on both sides, at gaps 0..62 octaves (beyond 31 the finer operand is rounded first).
  const std::vector<int32_t> va{kMax, -kMax, kMin, kMax, 1, 0, -3};
  const std::vector<int32_t> vb{kMax, -kMax, kMin, kMin, -1, kMax, 5};
  for (int gap = 0; gap <= 62; ++gap)
    for (bool a_coarse : {true, false}) {
      const Tensor a = filled(1, 7, va, a_coarse ? 10 + gap : 10);
      const Tensor b = filled(1, 7, vb, a_coarse ? 10 : 10 + gap);
      expect_sum(a, b, aligned_sum(nullptr, a, b), "gap " + std::to_string(gap));
    }
  // Same exponent: the exact sums ±(2^32 − 2) and −2^32 need 33 bits; after one shift −2^31 is outside the
  // symmetric range ±(2^31 − 1), so two.
  const Tensor a = filled(1, 3, {kMax, -kMax, kMin}, -4);
  const Tensor s = aligned_sum(nullptr, a, a);
  EXPECT_EQ(s.exponent(), -2);
  EXPECT_EQ(s.data<int32_t>()[0], 1 << 30);  // (2^32 − 2)/4 = 2^30 − ½ → 2^30 (nearest-even)
  EXPECT_EQ(s.data<int32_t>()[1], -(1 << 30));
  EXPECT_EQ(s.data<int32_t>()[2], -(1 << 30));  // exact
}

TEST(AlignedSum, RoundingCarryTakesOneMoreShift) {
  // (2^31 − 1)·2^e + 2^30·2^(e+1) = (2^32 − 1)·2^e: one shift rounds to 2^31 (ties to even), beyond int32, so the
  // sum takes exponent e + 2 and is 2^30 — not a saturated 2^31 − 1 at e + 1.
  const Tensor a = filled(1, 1, {kMax}, 0), b = filled(1, 1, {1 << 30}, 1);
  for (const Tensor& s : {aligned_sum(nullptr, a, b), aligned_sum(nullptr, b, a)}) {
    EXPECT_EQ(s.exponent(), 2);
    EXPECT_EQ(s.data<int32_t>()[0], 1 << 30);
  }
  Var v;
  accumulate_grad(v, Tensor(a));
  accumulate_grad(v, Tensor(b));
  EXPECT_EQ(v.grad.exponent(), 2);
  EXPECT_EQ(v.grad.data<int32_t>()[0], 1 << 30);
}

TEST(AlignedSum, PerRowAndPerColumnExponents) {
  kernels::ThreadPool two(2);
  const std::size_t rows = 37, cols = 300;
  std::vector<int> er(rows), ec(cols);
  for (std::size_t r = 0; r < rows; ++r) er[r] = -40 + static_cast<int>(r % 9) * 9;  // gaps up to 72 octaves
  for (std::size_t c = 0; c < cols; ++c) ec[c] = -20 + static_cast<int>(c % 7);
  uint64_t seed = 1;
  for (int range : {1 << 10, kMax}) {
    Tensor rowwise = random_i32(rows, cols, range, 0, seed++), rowwise2 = random_i32(rows, cols, range, 0, seed++);
    Tensor one = random_i32(rows, cols, range, -12, seed++);
    Tensor colwise = random_i32(rows, cols, range, 0, seed++);
    rowwise.set_exponents(ScaleAxis::kRow, er);
    std::vector<int> er2(er.rbegin(), er.rend());
    rowwise2.set_exponents(ScaleAxis::kRow, er2);
    colwise.set_exponents(ScaleAxis::kCol, ec);
    const struct {
      const Tensor *a, *b;
      ScaleAxis axis;
    } cases[] = {{&rowwise, &one, ScaleAxis::kRow},
                 {&one, &rowwise, ScaleAxis::kRow},
                 {&rowwise, &rowwise2, ScaleAxis::kRow},
                 {&colwise, &one, ScaleAxis::kCol},
                 {&one, &one, ScaleAxis::kTensor}};
    for (const auto& k : cases) {
      const Tensor s = aligned_sum(nullptr, *k.a, *k.b);
      EXPECT_EQ(s.axis(), k.axis);
      expect_sum(*k.a, *k.b, s, "range " + std::to_string(range));
      // The same bits split over a pool.
      const Tensor t = aligned_sum(&two, *k.a, *k.b);
      EXPECT_EQ(t.exponents(), s.exponents());
      for (std::size_t i = 0; i < s.size(); ++i) ASSERT_EQ(t.data<int32_t>()[i], s.data<int32_t>()[i]) << i;
    }
    EXPECT_THROW(aligned_sum(nullptr, rowwise, colwise), std::invalid_argument);
  }
  EXPECT_THROW(aligned_sum(nullptr, Tensor(2, 3, DType::kI32), Tensor(3, 2, DType::kI32)), std::invalid_argument);
}

TEST(AlignedSum, FinestExponentThatFits) {
  // When the sum needs narrowing, its largest magnitude uses the int32 range: a finer exponent would not fit.
  const Tensor a = random_i32(5, 64, kMax, -3, 7), b = random_i32(5, 64, kMax, -3, 8);
  const Tensor s = aligned_sum(nullptr, a, b);
  std::vector<int64_t> exact(a.size());
  for (std::size_t i = 0; i < a.size(); ++i) exact[i] = int64_t{a.data<int32_t>()[i]} + b.data<int32_t>()[i];
  const Tensor want = narrow_tensor(exact.data(), 5, 64, -3);
  EXPECT_EQ(s.exponent(), want.exponent());
  for (std::size_t i = 0; i < s.size(); ++i) ASSERT_EQ(s.data<int32_t>()[i], want.data<int32_t>()[i]);
}

TEST(AccumulateGrad, VarGradientsFarApartAreDefined) {
  // The former separate loop shifted by more than 63 bits here (undefined); now the aligned sum's rule applies.
  Var v;
  accumulate_grad(v, Tensor(4, 4, DType::kI32, -30));
  accumulate_grad(v, filled(4, 4, {kMax, -kMax, 3}, 20));
  EXPECT_EQ(v.grad.exponent(), 20);
  EXPECT_EQ(v.grad.data<int32_t>()[0], kMax);
  EXPECT_EQ(v.grad.data<int32_t>()[1], -kMax);
  EXPECT_EQ(v.grad.data<int32_t>()[2], 3);
  const Tensor big = filled(4, 4, {kMax}, 20), small = filled(4, 4, {-kMax}, -30);
  Var w;
  accumulate_grad(w, big);
  accumulate_grad(w, small);
  expect_sum(big, small, w.grad, "50 octaves");
}

TEST(AccumulateGrad, ParamFirstGradientIsMovedIn) {
  Param p;
  p.name = "p";
  p.master = Tensor(8, 16, DType::kI32, -20);
  Tensor g = random_i32(8, 16, 1000, -25, 3);
  const int32_t* buffer = std::as_const(g).data<int32_t>();
  accumulate_grad(p, std::move(g));
  ASSERT_TRUE(p.has_grad);
  EXPECT_EQ(std::as_const(p.grad).data<int32_t>(), buffer);  // no copy
  EXPECT_EQ(p.grad.exponent(), -25);
}

TEST(AccumulateGrad, ParamSumsPerRowAndOneExponentGradients) {
  kernels::ThreadPool two(2);
  const std::size_t rows = 6, cols = 50;
  std::vector<int> er{-31, -20, -5, 10, -60, 0};
  for (kernels::ThreadPool* pool : {static_cast<kernels::ThreadPool*>(nullptr), &two}) {
    Param p;
    p.name = "w";
    p.master = Tensor(rows, cols, DType::kI32, -20);
    Tensor g1 = random_i32(rows, cols, kMax, 0, 11), g2 = random_i32(rows, cols, 1 << 20, -24, 12);
    g1.set_exponents(ScaleAxis::kRow, er);
    Tensor g3 = random_i32(rows, cols, 1 << 28, 0, 13);
    g3.set_exponents(ScaleAxis::kRow, std::vector<int>(er.rbegin(), er.rend()));
    const Tensor s12 = aligned_sum(nullptr, g1, g2), s123 = aligned_sum(nullptr, s12, g3);
    accumulate_grad(p, Tensor(g1), pool);
    accumulate_grad(p, Tensor(g2), pool);
    expect_sum(g1, g2, p.grad, "two");
    accumulate_grad(p, Tensor(g3), pool);
    EXPECT_EQ(p.grad.axis(), ScaleAxis::kRow);
    EXPECT_EQ(p.grad.exponents(), s123.exponents());
    for (std::size_t i = 0; i < p.grad.size(); ++i) ASSERT_EQ(p.grad.data<int32_t>()[i], s123.data<int32_t>()[i]);
  }
  // 1×C with one exponent (a norm's γ and β, a bias).
  Param b;
  b.name = "b";
  b.master = Tensor(1, 9, DType::kI32, -24);
  const Tensor d1 = random_i32(1, 9, kMax, -30, 1), d2 = random_i32(1, 9, kMax, -28, 2);
  accumulate_grad(b, Tensor(d1));
  accumulate_grad(b, Tensor(d2));
  EXPECT_EQ(b.grad.axis(), ScaleAxis::kTensor);
  expect_sum(d1, d2, b.grad, "bias");
  // Another shape or per-column exponents are refused.
  EXPECT_THROW(accumulate_grad(b, Tensor(9, 1, DType::kI32)), std::logic_error);
  Tensor col = random_i32(1, 9, 5, 0, 3);
  col.set_exponents(ScaleAxis::kCol, std::vector<int>(9, -3));
  EXPECT_THROW(accumulate_grad(b, std::move(col)), std::logic_error);
}

// The parameter gradients of `layer` after one backward that feeds dy[k] to a forward of x[k], for the given
// inputs all in one step (one tape): used twice, the gradients must be the aligned sums of the single uses.
std::vector<Tensor> grads_of(Layer& layer, const std::vector<Tensor>& x, const std::vector<Tensor>& dy,
                             const std::vector<std::size_t>& uses, kernels::ThreadPool* pool) {
  for (Param* p : layer.params()) {
    p->grad = Tensor();
    p->has_grad = false;
  }
  Tape tape;
  const StepContext ctx{pool, &tape, 5, 7};
  std::vector<VarPtr> ys;
  for (std::size_t k : uses) {
    VarPtr y = layer.forward(ctx, var(Tensor(x[k])));
    y->grad = dy[k];
    y->has_grad = true;
    ys.push_back(y);
  }
  tape.backward();
  std::vector<Tensor> out;
  for (Param* p : layer.params()) {
    EXPECT_TRUE(p->has_grad) << p->name;
    out.push_back(p->grad);
  }
  return out;
}

void expect_used_twice_sums(Layer& layer, const std::vector<Tensor>& x, const std::vector<Tensor>& dy) {
  kernels::ThreadPool two(2);
  const std::vector<Tensor> g0 = grads_of(layer, x, dy, {0}, nullptr), g1 = grads_of(layer, x, dy, {1}, nullptr);
  for (kernels::ThreadPool* pool : {static_cast<kernels::ThreadPool*>(nullptr), &two}) {
    const std::vector<Tensor> both = grads_of(layer, x, dy, {0, 1}, pool);
    ASSERT_EQ(both.size(), g0.size());
    for (std::size_t i = 0; i < both.size(); ++i) {
      // The backward closures run in reverse order: use 1's gradient arrives first.
      const Tensor want = aligned_sum(nullptr, g1[i], g0[i]);
      SCOPED_TRACE(layer.name() + " param " + std::to_string(i));
      EXPECT_EQ(both[i].exponents(), want.exponents());
      for (std::size_t j = 0; j < want.size(); ++j) ASSERT_EQ(both[i].data<int32_t>()[j], want.data<int32_t>()[j]) << j;
    }
  }
}

TEST(AccumulateGrad, LinearUsedTwiceSumsBothGradients) {
  LinearSpec s;
  s.in = 24;
  s.out = 10;
  s.signed_input = true;
  s.relu = true;
  Linear lin(s, 2, 3);
  expect_used_twice_sums(lin, {random_i32(5, 24, 1 << 16, -16, 1), random_i32(7, 24, 1 << 12, -10, 2)},
                         {random_i32(5, 10, 1 << 20, -26, 3), random_i32(7, 10, 1 << 24, -30, 4)});
}

TEST(AccumulateGrad, ConvolutionsUsedTwiceSumAllGradients) {
  for (std::size_t k : {1, 3}) {
    Conv2dSpec cs;
    cs.in_h = cs.in_w = 6;
    cs.in_channels = 4;
    cs.out_channels = 5;
    cs.kernel_h = cs.kernel_w = k;
    cs.padding = k / 2;
    cs.signed_input = true;
    Conv2d conv(cs, 1, 9);
    expect_used_twice_sums(conv, {random_i32(2 * 36, 4, 1 << 14, -14, 5), random_i32(36, 4, 1 << 10, -9, 6)},
                           {random_i32(2 * 36, 5, 1 << 20, -26, 7), random_i32(36, 5, 1 << 26, -20, 8)});
  }
  Conv2dSpec ds;
  ds.in_h = ds.in_w = 5;
  ds.in_channels = ds.out_channels = 6;
  ds.padding = 1;
  ds.signed_input = true;
  DepthwiseConv2d dw(ds, 4, 2);
  expect_used_twice_sums(dw, {random_i32(25, 6, 1 << 14, -14, 9), random_i32(2 * 25, 6, 1 << 14, -12, 10)},
                         {random_i32(25, 6, 1 << 20, -26, 11), random_i32(2 * 25, 6, 1 << 22, -27, 12)});
}

// A norm applied twice on one tape (a shared block, sandwich sub-networks): γ and β get the sum of both uses'
// gradients. Training mode, so each use normalizes with its own batch's statistics.
TEST(AccumulateGrad, NormsUsedTwiceSumTheirGammaAndBetaGradients) {
  L1BatchNorm l1(6, 3);
  L2BatchNorm l2(6, 4);
  L1LayerNorm ln(6, 5);
  for (Layer* norm : std::initializer_list<Layer*>{&l1, &l2, &ln}) {
    // γ away from 1 and β away from 0, so their gradients meet non-trivial values.
    for (Param* p : norm->params())
      for (std::size_t c = 0; c < 6; ++c) p->master.data<int32_t>()[c] += static_cast<int32_t>(c * 3000000) - 7000000;
    expect_used_twice_sums(*norm, {random_i32(40, 6, 1 << 16, -16, 13), random_i32(24, 6, 1 << 12, -10, 14)},
                           {random_i32(40, 6, 1 << 20, -26, 15), random_i32(24, 6, 1 << 24, -30, 16)});
  }
}

}  // namespace
}  // namespace qtrain
