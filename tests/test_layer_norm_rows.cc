// The L1 layer norm's row kernels (qtrain/kernels/layer_norm_rows.h) against their scalar references on every SIMD
// target: random rows of many lengths, rows of INT32_MIN/INT32_MAX, constant rows and one-hot rows, with the
// working shift and mean the layer computes (norm_stage.h).
#include <gtest/gtest.h>

#include <algorithm>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "qtrain/engine/layers/norm_stage.h"
#include "qtrain/kernels/layer_norm_rows.h"
#include "target_test_util.h"

namespace qtrain::kernels {
namespace {

constexpr int32_t kMin = std::numeric_limits<int32_t>::min(), kMax = std::numeric_limits<int32_t>::max();

std::vector<std::vector<int32_t>> rows_to_test() {
  std::mt19937_64 rng(17);
  std::vector<std::vector<int32_t>> rows;
  for (std::size_t n : {1, 2, 7, 15, 16, 17, 63, 64, 65, 200, 768}) {
    for (int32_t span : {1 << 10, 1 << 14, 1 << 20, kMax}) {
      std::vector<int32_t> r(n);
      std::uniform_int_distribution<int32_t> u(span == kMax ? kMin : -span, span);
      for (auto& v : r) v = u(rng);
      rows.push_back(r);
    }
    std::vector<int32_t> extremes(n);
    for (std::size_t j = 0; j < n; ++j) extremes[j] = j % 3 == 0 ? kMin : j % 3 == 1 ? kMax : random_i32(rng);
    rows.push_back(extremes);
    rows.push_back(std::vector<int32_t>(n, -12345));  // zero spread
    rows.push_back(std::vector<int32_t>(n, kMin));
    std::vector<int32_t> one_hot(n, 0);
    one_hot[n / 2] = kMax;
    rows.push_back(one_hot);
  }
  return rows;
}

uint32_t rng_value(std::size_t i) { return static_cast<uint32_t>((i + 1) * 2654435761u); }

class LayerNormRows : public ::testing::TestWithParam<std::string> {};

TEST_P(LayerNormRows, MatchTheReferences) {
  const ForcedTarget forced(GetParam());
  ASSERT_TRUE(forced.ok()) << GetParam();
  for (const std::vector<int32_t>& row : rows_to_test()) {
    const std::size_t n = row.size();
    const LnRowStats want = ref::ln_row_stats(row.data(), n);
    ASSERT_EQ(ln_row_stats(row.data(), n), want) << "n " << n;
    const int k = norm_stage::working_shift(static_cast<uint64_t>(int64_t{want.hi} - want.lo));
    const auto mu = static_cast<int32_t>(norm_stage::mean_half_up(want.sum, static_cast<int64_t>(n), k));
    std::vector<int16_t> d_ref(n), d(n);
    const int64_t t_ref = ref::ln_row_center(row.data(), n, k, mu, d_ref.data());
    ASSERT_EQ(ln_row_center(row.data(), n, k, mu, d.data()), t_ref) << "n " << n << " k " << k;
    ASSERT_EQ(d, d_ref) << "n " << n << " k " << k;
    // The affine pass on these working values: ρ and γ across their ranges, shifts from 0 to past the SIMD range.
    std::vector<int32_t> gamma(n);
    std::vector<int64_t> beta(n);
    for (std::size_t j = 0; j < n; ++j) {
      gamma[j] = static_cast<int32_t>(rng_value(j) % 65535) - 32767;
      beta[j] = static_cast<int64_t>(rng_value(j + 7) % (1u << 30)) - (1 << 29);
    }
    for (const auto& [rho, s, sy] : {std::tuple{int64_t{(1u << 31) - 1}, 46, 16}, std::tuple{int64_t{1} << 30, 31, 1},
                                     std::tuple{int64_t{123456789}, 33, 0}, std::tuple{int64_t{5}, 0, 15},
                                     std::tuple{int64_t{1} << 30, 63, 2}, std::tuple{int64_t{1} << 20, 20, -1}}) {
      // Keep |x̂| ≤ 2^15 + 1 (the layer's contract) for the shifts that would not.
      if (s < 31 && rho > (int64_t{1} << s)) continue;
      std::vector<int32_t> xh_ref(n), y_ref(n), xh(n), y(n);
      ref::ln_row_affine(d_ref.data(), n, rho, s, gamma.data(), sy, beta.data(), xh_ref.data(), y_ref.data());
      ln_row_affine(d_ref.data(), n, rho, s, gamma.data(), sy, beta.data(), xh.data(), y.data());
      ASSERT_EQ(xh, xh_ref) << "n " << n << " rho " << rho << " s " << s;
      ASSERT_EQ(y, y_ref) << "n " << n << " rho " << rho << " s " << s << " sy " << sy;
    }
    // The backward's output stage with the row as the gradient: a within and beyond int32, both signs; k and t
    // across their ranges (|G| < 2^30 and |G·a|, |b| ≤ 2^60 as the stage guarantees).
    uint64_t amax = 0;
    for (int32_t v : row) amax = std::max<uint64_t>(amax, static_cast<uint64_t>(std::abs(int64_t{v})));
    const int kg = norm_stage::working_shift(amax);
    {  // dγ/dβ sums: the row as g against its x̂, accumulated twice on top of nonzero sums
      std::vector<int32_t> xh(n);
      for (std::size_t j = 0; j < n; ++j) xh[j] = static_cast<int32_t>(rng_value(j + 3) % 65537) - 32768;
      std::vector<int64_t> lo(n, 5), hi(n, -3), sd(n, 11), lo_r = lo, hi_r = hi, sd_r = sd;
      for (int rep = 0; rep < 2; ++rep) {
        ln_row_accumulate(row.data(), xh.data(), n, lo.data(), hi.data(), sd.data());
        ref::ln_row_accumulate(row.data(), xh.data(), n, lo_r.data(), hi_r.data(), sd_r.data());
      }
      ASSERT_EQ(lo, lo_r) << "n " << n;
      ASSERT_EQ(hi, hi_r) << "n " << n;
      ASSERT_EQ(sd, sd_r) << "n " << n;
    }
    ASSERT_EQ(ln_row_grad_sums(row.data(), d_ref.data(), n, gamma.data(), kg),
              ref::ln_row_grad_sums(row.data(), d_ref.data(), n, gamma.data(), kg))
        << "n " << n << " k " << kg;
    for (const auto& [a, b, t, c] :
         {std::tuple{int64_t{3}, int64_t{-7}, 0, int64_t{5}}, std::tuple{int64_t{1} << 29, int64_t{1} << 40, 31, int64_t{-100}},
          std::tuple{(int64_t{1} << 30) + 12345, -(int64_t{1} << 45), 40, int64_t{0}},
          std::tuple{-(int64_t{1} << 30) - 999, int64_t{77}, 35, int64_t{1} << 20},
          std::tuple{int64_t{1} << 30, int64_t{0}, 62, int64_t{-1}}, std::tuple{int64_t{1} << 40, int64_t{1}, 61, int64_t{9}}}) {
      if (a > (int64_t{1} << 30) + 12345 || a < -(int64_t{1} << 30) - 999) continue;  // |G·a| ≤ 2^60 needs |a| ≤ 2^30
      std::vector<int32_t> dx_ref(n), dx(n);
      ref::ln_row_dx(row.data(), d_ref.data(), n, gamma.data(), kg, a, b, t, c, dx_ref.data());
      ln_row_dx(row.data(), d_ref.data(), n, gamma.data(), kg, a, b, t, c, dx.data());
      ASSERT_EQ(dx, dx_ref) << "n " << n << " a " << a << " b " << b << " t " << t << " k " << kg;
    }
  }
}

// Small gradients (|G| < 2^14) let the stage's a exceed int32 (|G·a| ≤ 2^60): the split product.
TEST_P(LayerNormRows, OutputStageWithLargeCoefficients) {
  const ForcedTarget forced(GetParam());
  ASSERT_TRUE(forced.ok()) << GetParam();
  std::mt19937_64 rng(5);
  std::uniform_int_distribution<int32_t> small(-100, 100);
  for (std::size_t n : {1, 8, 17, 64, 100}) {
    std::vector<int32_t> g(n), gamma(n);
    std::vector<int16_t> d(n);
    for (std::size_t j = 0; j < n; ++j) {
      g[j] = small(rng);
      gamma[j] = small(rng);
      d[j] = static_cast<int16_t>(small(rng) % 3);
    }
    for (const int64_t a : {int64_t{1} << 40, -(int64_t{1} << 45) - 3, (int64_t{1} << 31) + 1, int64_t{-1} << 31})
      for (const int t : {40, 46, 62}) {  // shifts that keep dx within int32, as the stage's t does
        std::vector<int32_t> dx_ref(n), dx(n);
        ref::ln_row_dx(g.data(), d.data(), n, gamma.data(), 0, a, -(int64_t{1} << 50), t, 3, dx_ref.data());
        ln_row_dx(g.data(), d.data(), n, gamma.data(), 0, a, -(int64_t{1} << 50), t, 3, dx.data());
        ASSERT_EQ(dx, dx_ref) << "n " << n << " a " << a << " t " << t;
      }
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, LayerNormRows, ::testing::ValuesIn(target_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

}  // namespace
}  // namespace qtrain::kernels
