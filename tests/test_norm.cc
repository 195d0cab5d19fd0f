// Integer normalization layers (qtrain/engine/layers/norm.h) against their float formulas, computed in double from the same
// integer inputs; and their element kernels (qtrain/kernels/norm.h) against the scalar references on every Highway target.
//
// Tolerances follow the fixed-point formats (see norm.h). With k the working shift of a column (d = R(x, k) − μ',
// one unit of d = 2^k input units) and ρ_int = x̂ per input unit:
//   * d is off by ≤ 2^k input units (two half-unit roundings), and σ₁ (σ) by ≤ 2^k, so
//     |Δx̂| ≤ 2^k·ρ_int·(1 + c·|x̂|) ≤ 2^(k+1)·ρ_int·(1 + |x̂|);
//   * γ has 15 bits (2^-15), the folded multipliers ≥ 13 significant bits relative to their term's largest value
//     (|a|·max|u| ≈ 2^28..2^29), the per-channel scalars 30 bits; the output rounds to one ulp of its exponent.
//   * the backward's working gradient is off by ≤ 2^(k_dy − 1) units of dy; an element within 2^k of the mean may get
//     the other sign s (L1), which moves its dx by up to 2c·|γ·mean(dy·x̂)|/(c·σ₁ + ε) and mean(s) by 2/m per such
//     element.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/layers/norm.h"
#include "qtrain/engine/optim/optimizer.h"
#include "qtrain/engine/ops/relu.h"
#include "qtrain/kernels/dispatch.h"
#include "qtrain/kernels/norm.h"
#include "qtrain/kernels/thread_pool.h"
#include "qtrain/quant/error.h"

namespace qtrain {
namespace {

constexpr int32_t kI32Min = std::numeric_limits<int32_t>::min();
constexpr int32_t kI32Max = std::numeric_limits<int32_t>::max();
const double kC = std::sqrt(std::acos(-1.0) / 2);

// ---- the format's rules, restated ---------------------------------------------------------------------------
int working_shift(uint64_t range) {
  if (range <= 32767) return 0;
  int k = 1;
  while ((range >> k) + 1 > 32767) ++k;
  return k;
}

int64_t round_half_up(int64_t v, int k) { return k == 0 ? v : (v >> k) + ((v >> (k - 1)) & 1); }

// ============================================================================================================
// Kernels against their references, on every target
// ============================================================================================================

class ForcedTarget {
 public:
  explicit ForcedTarget(const std::string& name) { ok_ = kernels::force_target(name); }
  ~ForcedTarget() { kernels::force_target(""); }
  ForcedTarget(const ForcedTarget&) = delete;
  ForcedTarget& operator=(const ForcedTarget&) = delete;
  bool ok() const { return ok_; }

 private:
  bool ok_ = false;
};

std::vector<std::string> target_names() {
  std::vector<std::string> names;
  for (const auto& t : kernels::available_targets()) names.push_back(t.name);
  return names;
}

// int32 of every magnitude, the limits over-represented; `bits` caps the magnitude (31: anything).
int32_t random_value(std::mt19937_64& rng, int bits) {
  if (bits >= 31 && rng() % 8 == 0) {
    constexpr int32_t kSpecial[] = {kI32Min, kI32Max, kI32Min + 1, kI32Max - 1, 0, 1, -1};
    return kSpecial[rng() % std::size(kSpecial)];
  }
  const int b = static_cast<int>(rng() % static_cast<uint64_t>(bits + 1));
  const int64_t mag = static_cast<int64_t>(rng() & ((uint64_t{1} << b) - 1));
  return static_cast<int32_t>((rng() & 1) ? -mag : mag);
}

struct KernelCase {
  std::size_t rows, cols;
};

// Random inputs honouring norm.h's preconditions, and every kernel run against its reference.
void check_kernels(const KernelCase& kc, std::mt19937_64& rng) {
  const std::size_t rows = kc.rows, cols = kc.cols, n = rows * cols;
  const std::string what = "rows=" + std::to_string(rows) + " cols=" + std::to_string(cols);
  // Columns of different magnitudes (some tiny, some full range), each with an offset.
  std::vector<int> bits(cols);
  for (auto& b : bits) b = static_cast<int>(rng() % 32);
  std::vector<int32_t> x(n), dy(n);
  for (std::size_t i = 0; i < n; ++i) {
    x[i] = random_value(rng, bits[i % cols]);
    dy[i] = random_value(rng, bits[(i + 1) % cols]);
  }
  std::vector<int64_t> sum(cols), sum_ref(cols);
  std::vector<int32_t> mn(cols), mx(cols), mn_ref(cols), mx_ref(cols);
  kernels::norm_stats(x.data(), rows, cols, sum.data(), mn.data(), mx.data());
  kernels::ref::norm_stats(x.data(), rows, cols, sum_ref.data(), mn_ref.data(), mx_ref.data());
  ASSERT_EQ(sum, sum_ref) << what;
  ASSERT_EQ(mn, mn_ref) << what;
  ASSERT_EQ(mx, mx_ref) << what;

  // Working precision: k from the range (sometimes larger than needed), centre at the middle of the range.
  std::vector<int32_t> shift(cols), center(cols), zero(cols, 0), kd(cols);
  std::vector<uint64_t> dmax(cols), umax(cols);
  for (std::size_t c = 0; c < cols; ++c) {
    if (rows == 0) continue;
    const int64_t lo = mn_ref[c], hi = mx_ref[c];
    int k = working_shift(static_cast<uint64_t>(hi - lo)) + static_cast<int>(rng() % 3) * (rng() % 2 == 0);
    if (rng() % 10 == 0) k = 32 + static_cast<int>(rng() % 10);  // a far-away eval mean: every R(x, k) is 0
    shift[c] = k;
    center[c] = k >= 32 ? 0 : static_cast<int32_t>(round_half_up(lo + (hi - lo) / 2, k));
    dmax[c] = k >= 32
                  ? 0
                  : static_cast<uint64_t>(std::max(round_half_up(hi, k) - center[c], center[c] - round_half_up(lo, k)));
  }
  const kernels::NormColumns col{shift.data(), center.data()};
  std::vector<int64_t> dev(cols), dev_ref(cols), sgn(cols), sgn_ref(cols);
  kernels::norm_abs_dev(x.data(), rows, cols, col, dev.data(), sgn.data());
  kernels::ref::norm_abs_dev(x.data(), rows, cols, col, dev_ref.data(), sgn_ref.data());
  ASSERT_EQ(dev, dev_ref) << what << " abs_dev";
  ASSERT_EQ(sgn, sgn_ref) << what << " abs_dev sign";
  kernels::norm_sq_dev(x.data(), rows, cols, col, dev.data());
  kernels::ref::norm_sq_dev(x.data(), rows, cols, col, dev_ref.data());
  ASSERT_EQ(dev, dev_ref) << what << " sq_dev";

  // Output stages at the limits of the preconditions: |u·a|, |w·b|, |c| ≤ 2^29, 0 ≤ t ≤ 30.
  auto coef = [&](uint64_t u) -> int32_t {
    if (u == 0) return static_cast<int32_t>(rng() % 1000);
    const int64_t lim = (int64_t{1} << 29) / static_cast<int64_t>(u);
    const int64_t v = rng() % 4 == 0 ? lim : static_cast<int64_t>(rng() % static_cast<uint64_t>(lim + 1));
    return static_cast<int32_t>(rng() % 2 ? v : -v);
  };
  std::vector<int32_t> a(cols), b(cols), t(cols), cc(cols);
  for (std::size_t c = 0; c < cols; ++c) {
    a[c] = coef(dmax[c]);
    t[c] = static_cast<int32_t>(rng() % 31);
    const int32_t cmax = 1 << 29;
    cc[c] = rng() % 4 == 0 ? (rng() % 2 ? cmax : -cmax) : static_cast<int32_t>(rng() % (1u << 29)) - (1 << 28);
  }
  std::vector<int32_t> y(n + 8, 0x5A5A5A5A), y_ref(n);
  std::vector<int16_t> d16(n + 8, 0x5A5A), d16_ref(n);
  const kernels::NormAffine aff{a.data(), nullptr, t.data(), cc.data()};
  kernels::norm_apply(x.data(), rows, cols, col, aff, y.data(), d16.data());
  kernels::ref::norm_apply(x.data(), rows, cols, col, aff, y_ref.data(), d16_ref.data());
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(y[i], y_ref[i]) << what << " apply, element " << i;
    ASSERT_EQ(d16[i], d16_ref[i]) << what << " apply d, element " << i;
  }
  for (std::size_t i = n; i < n + 8; ++i) ASSERT_EQ(y[i], 0x5A5A5A5A) << what << ": wrote past the end";
  std::vector<int32_t> y2(n);
  kernels::norm_apply(x.data(), rows, cols, col, aff, y2.data(), nullptr);  // eval: no stored d
  for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(y2[i], y_ref[i]) << what << " apply without d";
  // A fused ReLU: max(y, 0) and its maximum.
  std::vector<int32_t> yr(n + 8, 0x5A5A5A5A), yr_ref(n);
  const uint64_t ymax = kernels::norm_apply(x.data(), rows, cols, col, aff, yr.data(), d16.data(), true);
  const uint64_t ymax_ref = kernels::ref::norm_apply(x.data(), rows, cols, col, aff, yr_ref.data(), nullptr, true);
  uint64_t ymax_direct = 0;
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(yr_ref[i], std::max(y_ref[i], 0)) << what << " relu reference, element " << i;
    ASSERT_EQ(yr[i], yr_ref[i]) << what << " relu apply, element " << i;
    ASSERT_EQ(d16[i], d16_ref[i]) << what << " relu apply d, element " << i;
    ymax_direct = std::max(ymax_direct, static_cast<uint64_t>(yr_ref[i]));
  }
  ASSERT_EQ(ymax_ref, ymax_direct) << what;
  ASSERT_EQ(ymax, ymax_ref) << what;
  for (std::size_t i = n; i < n + 8; ++i) ASSERT_EQ(yr[i], 0x5A5A5A5A) << what << ": wrote past the end";
  // The backward of the fused ReLU sees dy masked by y > 0 (recomputed from d by the forward stage `fwd`).
  const std::vector<int32_t> fa = a;
  const kernels::NormAffine fwd{fa.data(), nullptr, t.data(), cc.data()};
  std::vector<int32_t> dy_masked(n);
  for (std::size_t i = 0; i < n; ++i) dy_masked[i] = y_ref[i] > 0 ? dy[i] : 0;
  {
    std::vector<int64_t> s1(cols), s2(cols), s3(cols);
    std::vector<int32_t> mn1(cols), mx1(cols), mn2(cols), mx2(cols), mn3(cols), mx3(cols);
    std::vector<kernels::WideSum> w1(cols), w2(cols), w3(cols);
    kernels::norm_grad_stats(dy.data(), d16_ref.data(), rows, cols, s1.data(), mn1.data(), mx1.data(), w1.data(),
                             &fwd);
    kernels::ref::norm_grad_stats(dy.data(), d16_ref.data(), rows, cols, s2.data(), mn2.data(), mx2.data(), w2.data(),
                                  &fwd);
    kernels::ref::norm_grad_stats(dy_masked.data(), d16_ref.data(), rows, cols, s3.data(), mn3.data(), mx3.data(),
                                  w3.data());
    for (std::size_t c = 0; c < cols; ++c) {
      ASSERT_EQ(s2[c], s3[c]) << what << " masked reference, column " << c;
      ASSERT_EQ(mn2[c], mn3[c]) << what;
      ASSERT_EQ(mx2[c], mx3[c]) << what;
      ASSERT_EQ(w2[c].hi, w3[c].hi) << what;
      ASSERT_EQ(w2[c].lo, w3[c].lo) << what;
      ASSERT_EQ(s1[c], s2[c]) << what << " masked grad stats, column " << c;
      ASSERT_EQ(mn1[c], mn2[c]) << what;
      ASSERT_EQ(mx1[c], mx2[c]) << what;
      ASSERT_EQ(w1[c].hi, w2[c].hi) << what;
      ASSERT_EQ(w1[c].lo, w2[c].lo) << what;
    }
  }

  // Backward.
  std::vector<int64_t> sdy(cols), sdy_ref(cols);
  std::vector<kernels::WideSum> dot(cols), dot_ref(cols);
  kernels::norm_grad_stats(dy.data(), d16_ref.data(), rows, cols, sdy.data(), mn.data(), mx.data(), dot.data());
  kernels::ref::norm_grad_stats(dy.data(), d16_ref.data(), rows, cols, sdy_ref.data(), mn_ref.data(), mx_ref.data(),
                                dot_ref.data());
  ASSERT_EQ(sdy, sdy_ref) << what;
  ASSERT_EQ(mn, mn_ref) << what;
  ASSERT_EQ(mx, mx_ref) << what;
  for (std::size_t c = 0; c < cols; ++c) {
    ASSERT_EQ(dot[c].hi, dot_ref[c].hi) << what << " column " << c;
    ASSERT_EQ(dot[c].lo, dot_ref[c].lo) << what << " column " << c;
  }
  // The wide sums are exact: compare with a direct long-double-free exact computation (two int64 halves).
  for (std::size_t c = 0; c < cols && rows <= 4096; ++c) {
    int64_t direct = 0;  // |Σ| < 2^46·4096 = 2^58
    for (std::size_t r = 0; r < rows; ++r) direct += int64_t{dy[r * cols + c]} * d16_ref[r * cols + c];
    ASSERT_EQ(dot_ref[c].hi * (int64_t{1} << 32) + dot_ref[c].lo, direct) << what;
  }
  for (std::size_t c = 0; c < cols; ++c) {
    if (rows == 0) continue;
    const uint64_t amax = std::max<uint64_t>(static_cast<uint64_t>(std::abs(int64_t{mn_ref[c]})),
                                             static_cast<uint64_t>(std::abs(int64_t{mx_ref[c]})));
    kd[c] = working_shift(amax);
    umax[c] = kd[c] == 0 ? amax : (amax >> kd[c]) + 1;
  }
  for (bool l1 : {true, false}) {
    for (std::size_t c = 0; c < cols; ++c) {
      a[c] = coef(umax[c]);
      b[c] = coef(l1 ? 1 : 32767);
    }
    const kernels::NormColumns gcol{kd.data(), zero.data()};
    const kernels::NormAffine gaff{a.data(), b.data(), t.data(), cc.data()};
    std::vector<int32_t> dx(n + 8, 0x5A5A5A5A), dx_ref(n);
    if (l1) {
      kernels::norm_grad_apply_l1(dy.data(), d16_ref.data(), rows, cols, gcol, gaff, dx.data());
      kernels::ref::norm_grad_apply_l1(dy.data(), d16_ref.data(), rows, cols, gcol, gaff, dx_ref.data());
    } else {
      kernels::norm_grad_apply_l2(dy.data(), d16_ref.data(), rows, cols, gcol, gaff, dx.data());
      kernels::ref::norm_grad_apply_l2(dy.data(), d16_ref.data(), rows, cols, gcol, gaff, dx_ref.data());
    }
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(dx[i], dx_ref[i]) << what << (l1 ? " L1" : " L2") << " dx " << i;
    for (std::size_t i = n; i < n + 8; ++i) ASSERT_EQ(dx[i], 0x5A5A5A5A) << what << ": wrote past the end";
    // With the fused ReLU's mask (the working shift kd bounds |dy|, so it bounds the masked dy too).
    std::vector<int32_t> dxm(n + 8, 0x5A5A5A5A), dxm_ref(n), dxm_direct(n);
    if (l1) {
      kernels::norm_grad_apply_l1(dy.data(), d16_ref.data(), rows, cols, gcol, gaff, dxm.data(), &fwd);
      kernels::ref::norm_grad_apply_l1(dy.data(), d16_ref.data(), rows, cols, gcol, gaff, dxm_ref.data(), &fwd);
      kernels::ref::norm_grad_apply_l1(dy_masked.data(), d16_ref.data(), rows, cols, gcol, gaff, dxm_direct.data());
    } else {
      kernels::norm_grad_apply_l2(dy.data(), d16_ref.data(), rows, cols, gcol, gaff, dxm.data(), &fwd);
      kernels::ref::norm_grad_apply_l2(dy.data(), d16_ref.data(), rows, cols, gcol, gaff, dxm_ref.data(), &fwd);
      kernels::ref::norm_grad_apply_l2(dy_masked.data(), d16_ref.data(), rows, cols, gcol, gaff, dxm_direct.data());
    }
    for (std::size_t i = 0; i < n; ++i) {
      ASSERT_EQ(dxm_ref[i], dxm_direct[i]) << what << " masked reference dx " << i;
      ASSERT_EQ(dxm[i], dxm_ref[i]) << what << (l1 ? " L1" : " L2") << " masked dx " << i;
    }
    for (std::size_t i = n; i < n + 8; ++i) ASSERT_EQ(dxm[i], 0x5A5A5A5A) << what << ": wrote past the end";
  }
}

class NormKernelTarget : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    forced_ = std::make_unique<ForcedTarget>(GetParam());
    ASSERT_TRUE(forced_->ok()) << "cannot force target " << GetParam();
  }
  void TearDown() override { forced_.reset(); }

 private:
  std::unique_ptr<ForcedTarget> forced_;
};

TEST_P(NormKernelTarget, MatchReferenceOnOddShapes) {
  std::mt19937_64 rng(7);
  for (std::size_t rows : {0, 1, 2, 3, 7, 33, 130})
    for (std::size_t cols : {1, 3, 4, 8, 15, 16, 17, 31, 32, 33, 48, 63, 64, 65, 100, 129})
      ASSERT_NO_FATAL_FAILURE(check_kernels({rows, cols}, rng));
}

TEST_P(NormKernelTarget, MatchReferenceAcrossAccumulatorBlocks) {
  // Row counts around the int32 flush block (2^15 rows), full-range values.
  std::mt19937_64 rng(11);
  for (std::size_t rows : {kernels::kNormBlockRows - 1, kernels::kNormBlockRows + 1, 2 * kernels::kNormBlockRows + 3})
    ASSERT_NO_FATAL_FAILURE(check_kernels({rows, 19}, rng));
}

TEST_P(NormKernelTarget, ExtremeSumsAreExact) {
  // Every accumulator at its bound: x = INT32_MAX / INT32_MIN everywhere, |d| = 2^15 − 1, dy = INT32_MIN.
  const std::size_t rows = 3 * kernels::kNormBlockRows + 1, cols = 35;
  std::vector<int32_t> x(rows * cols), dy(rows * cols, kI32Min);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = (i % cols) % 2 ? kI32Max : kI32Min;
  std::vector<int64_t> sum(cols);
  std::vector<int32_t> mn(cols), mx(cols);
  kernels::norm_stats(x.data(), rows, cols, sum.data(), mn.data(), mx.data());
  for (std::size_t c = 0; c < cols; ++c)
    EXPECT_EQ(sum[c], static_cast<int64_t>(rows) * (c % 2 ? kI32Max : kI32Min)) << c;
  // Working values at their bound ±(2^15 − 1) (k = 0, centre 0).
  std::vector<int32_t> xs(rows * cols), shift(cols, 0), center(cols, 0);
  for (std::size_t i = 0; i < xs.size(); ++i) xs[i] = ((i / cols) % 3 == 0) ? -32767 : 32767;
  std::vector<int64_t> dev(cols), sgn(cols);
  kernels::norm_abs_dev(xs.data(), rows, cols, {shift.data(), center.data()}, dev.data(), sgn.data());
  const int64_t negatives = static_cast<int64_t>((rows + 2) / 3);
  for (std::size_t c = 0; c < cols; ++c) {
    EXPECT_EQ(dev[c], static_cast<int64_t>(rows) * 32767) << c;
    EXPECT_EQ(sgn[c], static_cast<int64_t>(rows) - 2 * negatives) << c;
  }
  kernels::norm_sq_dev(xs.data(), rows, cols, {shift.data(), center.data()}, dev.data());
  for (std::size_t c = 0; c < cols; ++c) EXPECT_EQ(dev[c], static_cast<int64_t>(rows) * 32767 * 32767) << c;
  std::vector<int16_t> d16(rows * cols, 32767);
  std::vector<int64_t> sdy(cols);
  std::vector<kernels::WideSum> dot(cols);
  kernels::norm_grad_stats(dy.data(), d16.data(), rows, cols, sdy.data(), mn.data(), mx.data(), dot.data());
  for (std::size_t c = 0; c < cols; ++c) {
    EXPECT_EQ(sdy[c], static_cast<int64_t>(rows) * kI32Min);
    const int64_t total = static_cast<int64_t>(rows) * (int64_t{kI32Min} * 32767);  // ≈ −2^62.6, fits int64
    EXPECT_EQ(dot[c].hi, total >> 32) << c;
    EXPECT_EQ(dot[c].lo, total & 0xFFFFFFFF) << c;
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, NormKernelTarget, ::testing::ValuesIn(target_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

// ============================================================================================================
// Float references (double) from the same integer inputs
// ============================================================================================================

struct Input {
  Tensor x;
  std::vector<double> xf;  // real values
};

// rows×cols int32 with per-column exponents; column c has `bits[c]` magnitude bits around an offset.
Input random_input(std::size_t rows, std::size_t cols, const std::vector<int>& bits, uint64_t seed, int e0 = -12) {
  std::mt19937_64 rng(seed);
  Input in;
  in.x = Tensor(rows, cols, DType::kI32);
  std::vector<int> exps(cols);
  for (std::size_t c = 0; c < cols; ++c) exps[c] = e0 + static_cast<int>(c % 5) - 2;
  in.x.set_exponents(ScaleAxis::kCol, exps);
  for (std::size_t c = 0; c < cols; ++c) {
    const int b = bits[c % bits.size()];
    const double spread = std::ldexp(1.0, b);
    const double offset = (static_cast<double>(rng() % 2001) / 1000.0 - 1.0) * spread;
    std::normal_distribution<double> dist(offset, spread / 4);
    for (std::size_t r = 0; r < rows; ++r) {
      const double v = std::clamp(std::nearbyint(dist(rng)), double{kI32Min + 1}, double{kI32Max});
      in.x.data<int32_t>()[r * cols + c] = static_cast<int32_t>(v);
    }
  }
  in.xf = in.x.to_double();
  return in;
}

Tensor make_grad(std::size_t rows, std::size_t cols, int bits, int exponent, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Tensor g(rows, cols, DType::kI32, exponent);
  for (std::size_t i = 0; i < g.size(); ++i) {
    const int64_t lim = (int64_t{1} << bits) - 1;
    g.data<int32_t>()[i] = static_cast<int32_t>(static_cast<int64_t>(rng() % static_cast<uint64_t>(2 * lim + 1)) - lim);
  }
  return g;
}

double real(const Tensor& t, std::size_t i) { return t.value(i); }

void set_affine(Param& gamma, Param& beta, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (std::size_t j = 0; j < gamma.master.size(); ++j) {
    // γ in ±[0.25, 2), β in (−1, 1), at the master exponent 2^-24.
    const double g = (0.25 + 1.75 * static_cast<double>(rng() % 10000) / 10000.0) * (rng() % 4 == 0 ? -1 : 1);
    gamma.master.data<int32_t>()[j] = static_cast<int32_t>(std::llround(std::ldexp(g, -gamma.master.exponent())));
    const double b = static_cast<double>(rng() % 20001) / 10000.0 - 1.0;
    beta.master.data<int32_t>()[j] = static_cast<int32_t>(std::llround(std::ldexp(b, -beta.master.exponent())));
  }
}

// The float formulas of one normalized group (a column of a batch norm, a row of a layer norm).
struct GroupRef {
  double mean = 0, scale = 0, denom = 0;  // scale: σ₁ (L1) or biased variance (L2)
  std::vector<double> xhat, y, dx;
};

GroupRef group_forward(NormKind kind, const std::vector<double>& x, double eps, const std::vector<double>& gamma,
                       const std::vector<double>& beta, const double* running_mean = nullptr,
                       const double* running_scale = nullptr) {
  GroupRef g;
  const double m = static_cast<double>(x.size());
  for (double v : x) g.mean += v / m;
  for (double v : x) g.scale += kind == NormKind::kL1 ? std::abs(v - g.mean) / m : (v - g.mean) * (v - g.mean) / m;
  const double mean = running_mean ? *running_mean : g.mean;
  const double scale = running_scale ? *running_scale : g.scale;
  g.denom = kind == NormKind::kL1 ? kC * scale + eps : std::sqrt(scale + eps);
  for (std::size_t i = 0; i < x.size(); ++i) {
    g.xhat.push_back((x[i] - mean) / g.denom);
    g.y.push_back(gamma[i] * g.xhat.back() + beta[i]);
  }
  return g;
}

// dx = [g − mean(g) − c·mean(g·x̂)·(s − mean(s))]/denom (L1), [g − mean(g) − x̂·mean(g·x̂)]/denom (L2), g = γ·dy.
// (L1: the derivative of denom = c·σ₁ + ε is c·(s − mean(s))/m, hence the factor c.)
void group_backward(NormKind kind, GroupRef& g, const std::vector<double>& x, const std::vector<double>& gamma,
                    const std::vector<double>& dy) {
  const double m = static_cast<double>(x.size());
  double mg = 0, mgx = 0, ms = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double gi = gamma[i] * dy[i];
    mg += gi / m;
    mgx += gi * g.xhat[i] / m;
    ms += ((x[i] > g.mean) - (x[i] < g.mean)) / m;
  }
  g.dx.resize(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double gi = gamma[i] * dy[i];
    const double s = (x[i] > g.mean) - (x[i] < g.mean);
    g.dx[i] = kind == NormKind::kL1 ? (gi - mg - kC * mgx * (s - ms)) / g.denom : (gi - mg - g.xhat[i] * mgx) / g.denom;
  }
}

TEST(NormReference, BackwardFormulasMatchFiniteDifferences) {
  // A check of the references themselves: L = Σ dy·y, dL/dx by central differences.
  std::mt19937_64 rng(3);
  std::normal_distribution<double> dist(0.3, 2.0);
  for (NormKind kind : {NormKind::kL1, NormKind::kL2}) {
    std::vector<double> x(23), dy(23), gamma(23), beta(23, 0.1);
    for (std::size_t i = 0; i < x.size(); ++i) {
      x[i] = dist(rng);
      dy[i] = dist(rng);
      gamma[i] = 0.5 + 0.05 * static_cast<double>(i);  // per element: covers the layer norm's per-feature γ
    }
    GroupRef g = group_forward(kind, x, 1e-5, gamma, beta);
    group_backward(kind, g, x, gamma, dy);
    for (std::size_t i = 0; i < x.size(); ++i) {
      const double h = 1e-6;
      auto loss = [&](double xi) {
        std::vector<double> xx = x;
        xx[i] = xi;
        const GroupRef gg = group_forward(kind, xx, 1e-5, gamma, beta);
        double l = 0;
        for (std::size_t j = 0; j < x.size(); ++j) l += dy[j] * gg.y[j];
        return l;
      };
      EXPECT_NEAR(g.dx[i], (loss(x[i] + h) - loss(x[i] - h)) / (2 * h), 1e-5) << i;
    }
  }
}

// ============================================================================================================
// Batch norms
// ============================================================================================================

std::unique_ptr<BatchNorm> make_bn(NormKind kind, std::size_t c) {
  if (kind == NormKind::kL1) return std::make_unique<L1BatchNorm>(c, 4);
  return std::make_unique<L2BatchNorm>(c, 4);
}

std::vector<double> column(const std::vector<double>& v, std::size_t rows, std::size_t cols, std::size_t c) {
  std::vector<double> out(rows);
  for (std::size_t r = 0; r < rows; ++r) out[r] = v[r * cols + c];
  return out;
}

struct BnCheck {
  double max_rel_y = 0, max_rel_dx = 0;  // observed error / tolerance (≤ 1 passes)
};

// Forward (training) + backward of a batch norm against the float formulas; returns the worst error/tolerance.
BnCheck check_batch_norm(NormKind kind, const Input& in, const Tensor& dy, uint64_t seed, bool input_grad = true) {
  const std::size_t rows = in.x.rows(), cols = in.x.cols();
  auto bn = make_bn(kind, cols);
  set_affine(bn->gamma(), bn->beta(), seed);
  auto x = std::make_shared<Var>();
  x->value = in.x;
  x->requires_grad = input_grad;
  Tape tape;
  VarPtr y = bn->forward({nullptr, &tape, 1, 1}, x);
  y->grad = dy;
  y->has_grad = true;
  tape.backward();
  EXPECT_EQ(y->value.axis(), ScaleAxis::kTensor);
  const double ulp_y = std::ldexp(1.0, y->value.exponent());
  const double ulp_dx = input_grad ? std::ldexp(1.0, x->grad.exponent()) : 0;
  const double eps = 1e-5;
  BnCheck worst;
  for (std::size_t c = 0; c < cols; ++c) {
    const std::vector<double> xc = column(in.xf, rows, cols, c);
    const std::vector<double> dyc = column(dy.to_double(), rows, cols, c);
    const double gamma = real(bn->gamma().master, c), beta = real(bn->beta().master, c);
    const std::vector<double> gv(rows, gamma), bv(rows, beta);
    GroupRef g = group_forward(kind, xc, eps, gv, bv);
    group_backward(kind, g, xc, gv, dyc);
    // Working shift and ρ per input unit.
    const int e = in.x.exponent_at(0, c);
    int32_t lo = kI32Max, hi = kI32Min;
    for (std::size_t r = 0; r < rows; ++r) {
      lo = std::min(lo, in.x.data<int32_t>()[r * cols + c]);
      hi = std::max(hi, in.x.data<int32_t>()[r * cols + c]);
    }
    const int k = working_shift(static_cast<uint64_t>(int64_t{hi} - lo));
    const double unit_k = std::ldexp(1.0, k + e);  // one unit of d, real
    const double rho_unit = unit_k / g.denom;      // x̂ per unit of d
    double xhat_max = 0;
    for (double v : g.xhat) xhat_max = std::max(xhat_max, std::abs(v));
    // Forward.
    for (std::size_t r = 0; r < rows; ++r) {
      const double xh = g.xhat[r];
      const double tol = std::abs(gamma) * (std::abs(xh) * std::ldexp(1.0, -12) + xhat_max * std::ldexp(1.0, -13) +
                                            2 * rho_unit * (1 + std::abs(xh))) +
                         2 * ulp_y;
      const double got = y->value.value(r * cols + c);
      EXPECT_NEAR(got, g.y[r], tol) << "y column " << c << " row " << r << " k=" << k;
      worst.max_rel_y = std::max(worst.max_rel_y, std::abs(got - g.y[r]) / tol);
    }
    // dγ = Σ dy·x̂ (within the x̂ error), dβ = Σ dy (exact but for the gradient tensor's rounding).
    double dgamma = 0, dbeta = 0, dgamma_tol = 0, dymax = 0;
    for (std::size_t r = 0; r < rows; ++r) {
      dgamma += dyc[r] * g.xhat[r];
      dbeta += dyc[r];
      dgamma_tol += std::abs(dyc[r]) * (2 * rho_unit * (1 + std::abs(g.xhat[r])) + std::abs(g.xhat[r]) * 1e-8);
      dymax = std::max(dymax, std::abs(dyc[r]));
    }
    EXPECT_NEAR(real(bn->gamma().grad, c), dgamma, dgamma_tol + std::ldexp(1.0, bn->gamma().grad.exponent()))
        << "dgamma " << c;
    EXPECT_NEAR(real(bn->beta().grad, c), dbeta, std::ldexp(1.0, bn->beta().grad.exponent())) << "dbeta " << c;
    if (!input_grad) continue;
    // Backward.
    double mgx = 0, dmgx = 0;
    for (std::size_t r = 0; r < rows; ++r) {
      mgx += gamma * dyc[r] * g.xhat[r] / static_cast<double>(rows);
      dmgx += std::abs(gamma * dyc[r]) * 2 * rho_unit * (1 + std::abs(g.xhat[r])) / static_cast<double>(rows);
    }
    const double gr = std::abs(gamma) / g.denom;
    const int kd = working_shift(static_cast<uint64_t>(dymax / std::ldexp(1.0, dy.exponent())));
    std::size_t ambiguous = 0;
    for (std::size_t r = 0; r < rows; ++r) ambiguous += std::abs(xc[r] - g.mean) <= unit_k;
    const double term_a = gr * dymax,
                 term_k = kind == NormKind::kL1 ? kC * gr * std::abs(mgx) : gr * std::abs(mgx) * xhat_max;
    double bias = 0;
    for (std::size_t r = 0; r < rows; ++r) bias += std::abs(gamma * dyc[r]) / static_cast<double>(rows);
    bias *= 1 / g.denom;
    for (std::size_t r = 0; r < rows; ++r) {
      const bool amb = std::abs(xc[r] - g.mean) <= unit_k;
      double tol = std::ldexp(1.0, -12) * (term_a + term_k + bias) + 2 * rho_unit * std::abs(g.dx[r]) +
                   gr * std::ldexp(1.0, kd - 1 + dy.exponent()) + 2 * kC * gr * dmgx + 2 * ulp_dx;
      if (kind == NormKind::kL1) {
        tol += kC * gr * std::abs(mgx) *
               (2.0 * static_cast<double>(ambiguous) / static_cast<double>(rows) + (amb ? 2 : 0));
      } else {
        tol += gr * std::abs(mgx) * 2 * rho_unit * (1 + std::abs(g.xhat[r]));
      }
      const double got = x->grad.value(r * cols + c);
      EXPECT_NEAR(got, g.dx[r], tol) << "dx column " << c << " row " << r << " k=" << k << " kd=" << kd;
      worst.max_rel_dx = std::max(worst.max_rel_dx, std::abs(got - g.dx[r]) / tol);
    }
  }
  return worst;
}

class BatchNormKinds : public ::testing::TestWithParam<NormKind> {};

TEST_P(BatchNormKinds, ForwardBackwardMatchFloatFormulas) {
  // Columns from 3 magnitude bits (tiny range, k = 0, many ties at the mean) to 30 bits (k = 16).
  const Input in = random_input(517, 37, {3, 8, 12, 14, 15, 16, 20, 24, 30}, 21);
  const Tensor dy = make_grad(517, 37, 24, -30, 22);
  const BnCheck w = check_batch_norm(GetParam(), in, dy, 23);
  std::printf("worst error / tolerance: y %.3f, dx %.3f\n", w.max_rel_y, w.max_rel_dx);
}

TEST_P(BatchNormKinds, ResNetShapeAndFullRangeGradients) {
  const Input in = random_input(8 * 7 * 7, 64, {18, 22, 26}, 31);
  const Tensor dy = make_grad(8 * 7 * 7, 64, 31, -40, 32);
  check_batch_norm(GetParam(), in, dy, 33);
}

TEST_P(BatchNormKinds, NoInputGradientStillGivesParameterGradients) {
  const Input in = random_input(50, 16, {10, 20}, 41);
  const Tensor dy = make_grad(50, 16, 20, -20, 42);
  check_batch_norm(GetParam(), in, dy, 43, /*input_grad=*/false);
}

TEST_P(BatchNormKinds, ConstantChannelTakesTheEpsilonPath) {
  // Column 0 constant (σ = 0): x̂ = 0, y = β, dx = γ/ε·(dy − mean(dy)) (L1; L2: γ/sqrt(ε)·…).
  Input in = random_input(64, 5, {12}, 51);
  for (std::size_t r = 0; r < 64; ++r) in.x.data<int32_t>()[r * 5] = 12345;
  in.x.data<int32_t>()[3 * 5 + 1] = in.x.data<int32_t>()[5 + 1];  // and a tie elsewhere
  in.xf = in.x.to_double();
  const Tensor dy = make_grad(64, 5, 20, -20, 52);
  check_batch_norm(GetParam(), in, dy, 53);
  // And exactly: y = β to one ulp.
  auto bn = make_bn(GetParam(), 5);
  Tape tape;
  VarPtr y = bn->forward({nullptr, &tape, 0, 0}, make_input(in.x));
  for (std::size_t r = 0; r < 64; ++r) EXPECT_NEAR(y->value.value(r * 5), 0.0, std::ldexp(1.0, y->value.exponent()));
}

TEST_P(BatchNormKinds, LargeRowCountAndExtremeValues) {
  // 2^17 + 3 rows (beyond int32 per-lane sums and the flush block), 19 channels (one SIMD group + a tail):
  //   0: every value INT32_MAX (constant)       1: alternating INT32_MIN + 1 / INT32_MAX (k = 17)
  //   2: full-range uniform                      3: zeros with one INT32_MAX outlier (|x̂| ≈ m/(2c) ≈ 52000)
  //   4..18: ordinary columns;  dy full range, INT32_MIN included.
  const std::size_t rows = (std::size_t{1} << 17) + 3, cols = 19;
  Input in = random_input(rows, cols, {10, 16, 22}, 61);
  std::mt19937_64 rng(62);
  for (std::size_t r = 0; r < rows; ++r) {
    int32_t* row = in.x.data<int32_t>() + r * cols;
    row[0] = kI32Max;
    row[1] = r % 2 ? kI32Max : kI32Min + 1;
    row[2] = static_cast<int32_t>(static_cast<uint32_t>(rng()));
    row[3] = r == 777 ? kI32Max : 0;
  }
  in.xf = in.x.to_double();
  Tensor dy = make_grad(rows, cols, 31, -45, 63);
  dy.data<int32_t>()[5] = kI32Min;
  check_batch_norm(GetParam(), in, dy, 64);
}

TEST_P(BatchNormKinds, RunningStatisticsAndEvalMode) {
  const NormKind kind = GetParam();
  const std::size_t rows = 200, cols = 20;
  auto bn = make_bn(kind, cols);
  set_affine(bn->gamma(), bn->beta(), 71);
  // Reference running statistics in double: mean 0, scale 1; r ← 0.9·r + 0.1·batch.
  std::vector<double> rm(cols, 0.0), rs(cols, 1.0), rm_mag(cols, 0.0);
  for (int step = 0; step < 5; ++step) {
    const Input in = random_input(rows, cols, {6, 12, 20, 28}, 100 + step, -10 - step);
    Tape tape;
    bn->forward({nullptr, &tape, 0, static_cast<uint64_t>(step)}, make_input(in.x));
    for (std::size_t c = 0; c < cols; ++c) {
      const std::vector<double> xc = column(in.xf, rows, cols, c);
      double mean = 0, dev = 0;
      for (double v : xc) mean += v / rows;
      for (double v : xc)
        dev += kind == NormKind::kL1 ? std::abs(v - mean) / rows : (v - mean) * (v - mean) / (rows - 1);
      rm[c] = 0.9 * rm[c] + 0.1 * mean;
      rm_mag[c] = 0.9 * rm_mag[c] + 0.1 * std::abs(mean);
      rs[c] = 0.9 * rs[c] + 0.1 * dev;
    }
  }
  for (std::size_t c = 0; c < cols; ++c) {
    // The batch statistics are exact but for the working precision (≤ 2^k units per value in σ₁; L2 relative
    // 2^(k+1)/σ); the dyadic momentum and 31-bit storage add ~2^-29 relative.
    EXPECT_NEAR(bn->running_mean().value(c), rm[c], rm_mag[c] * 1e-7 + 1e-12) << c;
    EXPECT_NEAR(bn->running_scale().value(c), rs[c], std::abs(rs[c]) * 2e-3) << c;
  }
  // Eval mode: y = γ·(x − running mean)/(c·running σ₁ + ε) + β (L2: /sqrt(running var + ε)); no tape recorded.
  const Input in = random_input(rows, cols, {6, 12, 20, 28}, 200, -12);
  VarPtr y = bn->forward({nullptr, nullptr, 0, 0}, make_input(in.x));
  const double ulp = std::ldexp(1.0, y->value.exponent());
  for (std::size_t c = 0; c < cols; ++c) {
    const double rmean = bn->running_mean().value(c), rscale = bn->running_scale().value(c);
    const double gamma = real(bn->gamma().master, c), beta = real(bn->beta().master, c);
    const std::vector<double> xc = column(in.xf, rows, cols, c);
    const GroupRef g = group_forward(kind, xc, 1e-5, std::vector<double>(rows, gamma), std::vector<double>(rows, beta),
                                     &rmean, &rscale);
    const int e = in.x.exponent_at(0, c);
    const int64_t rq = std::llround(std::ldexp(rmean, -e));
    int64_t lo = kI32Max, hi = kI32Min;
    for (std::size_t r = 0; r < rows; ++r) {
      lo = std::min<int64_t>(lo, in.x.data<int32_t>()[r * cols + c]);
      hi = std::max<int64_t>(hi, in.x.data<int32_t>()[r * cols + c]);
    }
    const int k = working_shift(static_cast<uint64_t>(std::max<int64_t>({0, hi - rq, rq - lo})));
    const double rho_unit = std::ldexp(1.0, k + e) / g.denom;
    double xhat_max = 0;
    for (double v : g.xhat) xhat_max = std::max(xhat_max, std::abs(v));
    for (std::size_t r = 0; r < rows; ++r) {
      const double tol = std::abs(gamma) * (std::abs(g.xhat[r]) * std::ldexp(1.0, -12) +
                                            xhat_max * std::ldexp(1.0, -13) + 2 * rho_unit) +
                         2 * ulp;
      EXPECT_NEAR(y->value.value(r * cols + c), g.y[r], tol) << "eval column " << c << " row " << r;
    }
  }
}

TEST_P(BatchNormKinds, ParametersTrainWithoutDecay) {
  auto bn = make_bn(GetParam(), 8);
  for (Param* p : bn->params()) EXPECT_FALSE(p->decay) << p->name;
  EXPECT_DOUBLE_EQ(bn->gamma().master.value(3), 1.0);
  EXPECT_DOUBLE_EQ(bn->beta().master.value(3), 0.0);
  const Input in = random_input(40, 8, {12}, 81);
  Tape tape;
  VarPtr y = bn->forward({nullptr, &tape, 0, 0}, make_input(in.x));
  y->grad = make_grad(40, 8, 20, -20, 82);
  y->has_grad = true;
  tape.backward();
  Sgd sgd({0.9, 5e-4});
  const double b0 = bn->beta().master.value(0);
  sgd.step(bn->params(), 0.1, 0, 1);
  // β moves by −lr·Σdy (no decay, first momentum step).
  double sdy = 0;
  for (std::size_t r = 0; r < 40; ++r) sdy += y->grad.value(r * 8);
  EXPECT_NEAR(bn->beta().master.value(0), b0 - 0.1 * sdy, std::abs(0.1 * sdy) * 1e-4 + 1e-6);
}

// NormOptions::relu gives bit for bit what a Relu layer after the norm gives: values, their known maximum, the input
// gradient and the parameter gradients, in training and in eval.
TEST_P(BatchNormKinds, FusedReluMatchesNormThenRelu) {
  const std::size_t rows = 300, cols = 37;  // 37 columns: whole vectors and a scalar tail on every target
  NormOptions fused_opt;
  fused_opt.relu = true;
  auto make = [&](const NormOptions& opt) -> std::unique_ptr<BatchNorm> {
    if (GetParam() == NormKind::kL1) return std::make_unique<L1BatchNorm>(cols, 4, opt);
    return std::make_unique<L2BatchNorm>(cols, 4, opt);
  };
  auto plain = make({}), fused = make(fused_opt);
  set_affine(plain->gamma(), plain->beta(), 91);
  set_affine(fused->gamma(), fused->beta(), 91);
  EXPECT_EQ(fused->name(), plain->name() + "+ReLU");
  const Input in = random_input(rows, cols, {6, 12, 20, 28}, 92, -12);
  const Tensor dy = make_grad(rows, cols, 20, -20, 93);
  for (bool training : {true, false}) {
    Tape tape_p, tape_f;
    auto xp = make_input(in.x), xf = make_input(in.x);
    xp->requires_grad = xf->requires_grad = true;
    Relu relu;
    const StepContext cp{nullptr, training ? &tape_p : nullptr, 1, 1}, cf{nullptr, training ? &tape_f : nullptr, 1, 1};
    VarPtr yp = relu.forward(cp, plain->forward(cp, xp));
    VarPtr yf = fused->forward(cf, xf);
    ASSERT_EQ(yf->value.exponent(), yp->value.exponent());
    ASSERT_EQ(yf->value.nonnegative_max(), yp->value.nonnegative_max());
    for (std::size_t i = 0; i < rows * cols; ++i)
      ASSERT_EQ(yf->value.data<int32_t>()[i], yp->value.data<int32_t>()[i]) << i;
    if (!training) continue;
    yp->grad = dy;
    yp->has_grad = true;
    yf->grad = dy;
    yf->has_grad = true;
    tape_p.backward();
    tape_f.backward();
    ASSERT_EQ(xf->grad.exponent(), xp->grad.exponent());
    for (std::size_t i = 0; i < rows * cols; ++i)
      ASSERT_EQ(xf->grad.data<int32_t>()[i], xp->grad.data<int32_t>()[i]) << i;
    for (int p = 0; p < 2; ++p) {
      const Tensor& gp = plain->params()[p]->grad;
      const Tensor& gf = fused->params()[p]->grad;
      ASSERT_EQ(gf.exponent(), gp.exponent());
      for (std::size_t c = 0; c < cols; ++c) ASSERT_EQ(gf.data<int32_t>()[c], gp.data<int32_t>()[c]) << p << " " << c;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(L1AndL2, BatchNormKinds, ::testing::Values(NormKind::kL1, NormKind::kL2),
                         [](const ::testing::TestParamInfo<NormKind>& p) {
                           return p.param == NormKind::kL1 ? std::string("L1") : std::string("L2");
                         });

// ============================================================================================================
// Thread counts: the passes split over runs of rows (per-run partials of the column sums merged exactly) give the
// single-thread integers bit for bit
// ============================================================================================================

// Named results of one run; a run on a pool must equal the run without one in every tensor (values and exponents).
struct NormRun {
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::optional<uint64_t> ymax;
};

void expect_identical_runs(const NormRun& got, const NormRun& want, const std::string& what) {
  EXPECT_EQ(got.ymax, want.ymax) << what;
  ASSERT_EQ(got.tensors.size(), want.tensors.size()) << what;
  for (std::size_t k = 0; k < want.tensors.size(); ++k) {
    const std::string name = what + " " + want.tensors[k].first;
    const Tensor& a = got.tensors[k].second;
    const Tensor& b = want.tensors[k].second;
    ASSERT_EQ(a.rows(), b.rows()) << name;
    ASSERT_EQ(a.cols(), b.cols()) << name;
    ASSERT_EQ(a.axis(), b.axis()) << name;
    ASSERT_EQ(a.exponents(), b.exponents()) << name;
    const int32_t* pa = a.data<int32_t>();
    const int32_t* pb = b.data<int32_t>();
    for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(pa[i], pb[i]) << name << " element " << i;
  }
}

// Training forward + backward, then an eval forward with the updated running statistics.
NormRun run_batch_norm(NormKind kind, bool relu, const Tensor& x, const Tensor& dy, kernels::ThreadPool* pool) {
  NormOptions opt;
  opt.relu = relu;
  std::unique_ptr<BatchNorm> bn;
  if (kind == NormKind::kL1) {
    bn = std::make_unique<L1BatchNorm>(x.cols(), 4, opt);
  } else {
    bn = std::make_unique<L2BatchNorm>(x.cols(), 4, opt);
  }
  set_affine(bn->gamma(), bn->beta(), 71);
  NormRun run;
  VarPtr xv = make_input(x);
  xv->requires_grad = true;
  Tape tape;
  VarPtr y = bn->forward({pool, &tape, 1, 1}, xv);
  run.ymax = y->value.nonnegative_max();
  y->grad = dy;
  y->has_grad = true;
  tape.backward();
  run.tensors.emplace_back("y", y->value);
  run.tensors.emplace_back("dx", xv->grad);
  run.tensors.emplace_back("dgamma", bn->gamma().grad);
  run.tensors.emplace_back("dbeta", bn->beta().grad);
  run.tensors.emplace_back("running_mean", bn->running_mean());
  run.tensors.emplace_back("running_scale", bn->running_scale());
  VarPtr ye = bn->forward({pool, nullptr, 1, 1}, make_input(x));
  run.tensors.emplace_back("eval y", ye->value);
  return run;
}

NormRun run_layer_norm(const Tensor& x, const Tensor& dy, kernels::ThreadPool* pool) {
  L1LayerNorm ln(x.cols(), 9);
  set_affine(ln.gamma(), ln.beta(), 72);
  NormRun run;
  VarPtr xv = make_input(x);
  xv->requires_grad = true;
  Tape tape;
  VarPtr y = ln.forward({pool, &tape, 1, 1}, xv);
  y->grad = dy;
  y->has_grad = true;
  tape.backward();
  run.tensors.emplace_back("y", y->value);
  run.tensors.emplace_back("dx", xv->grad);
  run.tensors.emplace_back("dgamma", ln.gamma().grad);
  run.tensors.emplace_back("dbeta", ln.beta().grad);
  return run;
}

struct SplitShape {
  std::size_t rows, cols;
};

// Fewer rows than runs; odd rows and a scalar column tail; more rows than a kernel's accumulator block, with
// gradients of 30 bits so that the wide dy·d sums carry between their halves.
const SplitShape kSplitShapes[] = {{5, 9}, {300, 37}, {2 * kernels::kNormBlockRows + 77, 19}};

TEST_P(BatchNormKinds, ThreadCountsGiveIdenticalResults) {
  kernels::ThreadPool two(2, kernels::ThreadPool::Split::kAlways), three(3, kernels::ThreadPool::Split::kAlways);
  for (const SplitShape& sh : kSplitShapes) {
    const Input in = random_input(sh.rows, sh.cols, {6, 12, 20, 28}, 81 + sh.rows, -12);
    const Tensor dy = make_grad(sh.rows, sh.cols, 30, -20, 82 + sh.rows);
    for (bool relu : {false, true}) {
      const NormRun one = run_batch_norm(GetParam(), relu, in.x, dy, nullptr);
      for (kernels::ThreadPool* pool : {&two, &three}) {
        const std::string what = std::to_string(sh.rows) + "x" + std::to_string(sh.cols) +
                                 (relu ? " relu" : "") + " threads " + std::to_string(pool->threads());
        expect_identical_runs(run_batch_norm(GetParam(), relu, in.x, dy, pool), one, what);
      }
    }
  }
}

TEST(L1LayerNorm, ThreadCountsGiveIdenticalResults) {
  kernels::ThreadPool two(2, kernels::ThreadPool::Split::kAlways), three(3, kernels::ThreadPool::Split::kAlways);
  for (const SplitShape& sh : {SplitShape{5, 48}, SplitShape{1001, 96}}) {
    Input in = random_input(sh.rows, sh.cols, {20}, 83 + sh.rows, -16);
    // The last row one outlier (|x̂| ≈ F/(2c)): the tensor's x̂ exponent comes from the last run of rows.
    int32_t* last = in.x.data<int32_t>() + (sh.rows - 1) * sh.cols;
    std::fill(last, last + sh.cols, 0);
    last[sh.cols / 2] = 1 << 20;
    const Tensor dy = make_grad(sh.rows, sh.cols, 24, -28, 84 + sh.rows);
    Tensor one_exponent = in.x;  // the same integers at one exponent: no column alignment
    one_exponent.set_exponent(-16);
    for (const Tensor* x : {&in.x, &one_exponent}) {
      const NormRun one = run_layer_norm(*x, dy, nullptr);
      for (kernels::ThreadPool* pool : {&two, &three}) {
        const std::string what = std::to_string(sh.rows) + "x" + std::to_string(sh.cols) +
                                 (x == &in.x ? " per-column exponents" : "") + " threads " +
                                 std::to_string(pool->threads());
        expect_identical_runs(run_layer_norm(*x, dy, pool), one, what);
      }
    }
  }
}

TEST(BatchNorm, RejectsBadShapesAndOptions) {
  EXPECT_THROW(L1BatchNorm(0), UsageError);
  EXPECT_THROW(L1BatchNorm(4, 0, {0.0, 0.1}), UsageError);
  EXPECT_THROW(L2BatchNorm(4, 0, {1e-5, 1.5}), UsageError);
  L1BatchNorm bn(4);
  EXPECT_THROW(bn.forward({}, make_input(Tensor(3, 5, DType::kI32))), std::invalid_argument);
  EXPECT_EQ(bn.name(), "L1BatchNorm(4)");
  EXPECT_EQ(L2BatchNorm(4).name(), "L2BatchNorm(4)");
}

// ============================================================================================================
// L1 layer norm
// ============================================================================================================

TEST(L1LayerNorm, ForwardBackwardMatchFloatFormulas) {
  // Rows of very different scales (the per-row normalization removes them), per-column exponents, a constant row.
  const std::size_t rows = 41, f = 48;
  Input in = random_input(rows, f, {20}, 91, -16);
  std::mt19937_64 rng(92);
  for (std::size_t r = 0; r < rows; ++r) {
    const int scale_shift = static_cast<int>(r % 12);
    for (std::size_t j = 0; j < f; ++j) in.x.data<int32_t>()[r * f + j] >>= scale_shift;
  }
  // Row 5 constant in real units (q·2^e_c equal across the per-column exponents e_c = −18 + j mod 5).
  for (std::size_t j = 0; j < f; ++j) in.x.data<int32_t>()[5 * f + j] = 1000 << (4 - j % 5);
  in.xf = in.x.to_double();
  L1LayerNorm ln(f, 9);
  set_affine(ln.gamma(), ln.beta(), 93);
  auto x = std::make_shared<Var>();
  x->value = in.x;
  Tape tape;
  VarPtr y = ln.forward({nullptr, &tape, 0, 0}, x);
  const Tensor dy = make_grad(rows, f, 24, -28, 94);
  y->grad = dy;
  y->has_grad = true;
  tape.backward();
  ASSERT_TRUE(x->has_grad);

  // The aligned input (one exponent E) the layer normalizes: E = max_c(e_c + bits(max|x_c|) − 31).
  int E = std::numeric_limits<int>::min();
  for (std::size_t j = 0; j < f; ++j) {
    uint64_t mx = 0;
    for (std::size_t r = 0; r < rows; ++r)
      mx = std::max<uint64_t>(mx, std::abs(int64_t{in.x.data<int32_t>()[r * f + j]}));
    E = std::max(E, in.x.exponent_at(0, j) + (mx == 0 ? 0 : 64 - __builtin_clzll(mx)) - 31);
  }
  std::vector<double> gamma(f), beta(f);
  double gmax = 0;
  for (std::size_t j = 0; j < f; ++j) {
    gamma[j] = real(ln.gamma().master, j);
    beta[j] = real(ln.beta().master, j);
    gmax = std::max(gmax, std::abs(gamma[j]));
  }
  const double ulp_y = std::ldexp(1.0, y->value.exponent()), ulp_dx = std::ldexp(1.0, x->grad.exponent());
  std::vector<double> dgamma(f, 0), dgamma_tol(f, 0), dbeta(f, 0);
  std::vector<GroupRef> refs;
  double xhat_max_all = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    const std::vector<double> xr(in.xf.begin() + static_cast<long>(r * f),
                                 in.xf.begin() + static_cast<long>((r + 1) * f));
    refs.push_back(group_forward(NormKind::kL1, xr, 1e-5, gamma, beta));
    for (double v : refs.back().xhat) xhat_max_all = std::max(xhat_max_all, std::abs(v));
  }
  for (std::size_t r = 0; r < rows; ++r) {
    const std::vector<double> xr(in.xf.begin() + static_cast<long>(r * f),
                                 in.xf.begin() + static_cast<long>((r + 1) * f));
    std::vector<double> dyr(f);
    for (std::size_t j = 0; j < f; ++j) dyr[j] = dy.value(r * f + j);
    GroupRef& g = refs[r];
    group_backward(NormKind::kL1, g, xr, gamma, dyr);
    // Working shift of the row in aligned units (alignment rounding ≤ ½ unit of E, inside the 2^k budget + 1).
    double lo = 1e300, hi = -1e300;  // aligned integers: round(x / 2^E) to nearest even
    for (double v : xr) {
      lo = std::min(lo, std::nearbyint(std::ldexp(v, -E)));
      hi = std::max(hi, std::nearbyint(std::ldexp(v, -E)));
    }
    const int k = working_shift(static_cast<uint64_t>(hi - lo));
    const double unit_k = std::ldexp(1.0, k + E);
    const double rho_unit = 2 * unit_k / g.denom;  // d error ≤ 2^k + alignment ½ unit: doubled
    double mgx = 0, dmgx = 0, dymax = 0, bias = 0;
    std::size_t ambiguous = 0;
    for (std::size_t j = 0; j < f; ++j) {
      mgx += gamma[j] * dyr[j] * g.xhat[j] / f;
      dmgx += std::abs(gamma[j] * dyr[j]) * 2 * rho_unit * (1 + std::abs(g.xhat[j])) / f;
      dymax = std::max(dymax, std::abs(dyr[j]));
      bias += std::abs(gamma[j] * dyr[j]) / f;
      ambiguous += std::abs(xr[j] - g.mean) <= unit_k;
    }
    const double gr = 1 / g.denom;
    const int kd = working_shift(static_cast<uint64_t>(dymax / std::ldexp(1.0, dy.exponent())));
    for (std::size_t j = 0; j < f; ++j) {
      const double xh = g.xhat[j];
      // x̂ is 15-bit fixed point at one exponent for the tensor; γ 15 bits at one exponent.
      const double tol_y =
          std::abs(gamma[j]) * (2 * rho_unit * (1 + std::abs(xh)) + xhat_max_all * std::ldexp(1.0, -14)) +
          std::abs(xh) * gmax * std::ldexp(1.0, -14) + 2 * ulp_y;
      EXPECT_NEAR(y->value.value(r * f + j), g.y[j], tol_y) << "y row " << r << " feature " << j;
      const bool amb = std::abs(xr[j] - g.mean) <= unit_k;
      const double tol_dx = std::ldexp(1.0, -12) * gr * (gmax * dymax + std::abs(mgx) + bias) +
                            2 * rho_unit * std::abs(g.dx[j]) + gr * gmax * std::ldexp(1.0, kd - 1 + dy.exponent()) +
                            gr * dymax * gmax * std::ldexp(1.0, -14) + 2 * gr * dmgx +
                            kC * gr * std::abs(mgx) * (2.0 * static_cast<double>(ambiguous) / f + (amb ? 2 : 0)) +
                            2 * ulp_dx;
      EXPECT_NEAR(x->grad.value(r * f + j), g.dx[j], tol_dx) << "dx row " << r << " feature " << j;
      dgamma[j] += dyr[j] * xh;
      dgamma_tol[j] += std::abs(dyr[j]) * (2 * rho_unit * (1 + std::abs(xh)) + xhat_max_all * std::ldexp(1.0, -15));
      dbeta[j] += dyr[j];
    }
  }
  for (std::size_t j = 0; j < f; ++j) {
    EXPECT_NEAR(real(ln.gamma().grad, j), dgamma[j], dgamma_tol[j] + std::ldexp(1.0, ln.gamma().grad.exponent()))
        << "dgamma " << j;
    EXPECT_NEAR(real(ln.beta().grad, j), dbeta[j], std::ldexp(1.0, ln.beta().grad.exponent())) << "dbeta " << j;
  }
}

TEST(L1LayerNorm, RejectsBadShapes) {
  EXPECT_THROW(L1LayerNorm(0), UsageError);
  EXPECT_THROW(L1LayerNorm(70000), UsageError);
  L1LayerNorm ln(8);
  EXPECT_THROW(ln.forward({}, make_input(Tensor(3, 5, DType::kI32))), std::invalid_argument);
  EXPECT_EQ(ln.name(), "L1LayerNorm(8)");
}

}  // namespace
}  // namespace qtrain
