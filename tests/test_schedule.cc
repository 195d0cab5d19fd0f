// The learning-rate schedules without libm (qtrain/engine/optim/schedule.h): cos_rounded, the integer cosine the
// cosine and one-cycle schedules use, is the correctly rounded cos. glibc's cos (2.36) is not always: on ~0.1% of
// arguments it returns the other neighbour of cos x (an error just above half an ulp; checked at 300 bits, see
// docs/reliability.md). So a learning rate may differ from the glibc-cos one in its last bits on a few steps, but
// the dyadic number the optimizer uses (quant::to_dyadic, 16 significant bits) is the same on every step of the
// runs the tests and the README use and beyond: the training bits do not change.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numbers>
#include <stdexcept>
#include <vector>

#include "qtrain/engine/optim/schedule.h"
#include "qtrain/quant/pow2.h"
#include "qtrain/quant/rng.h"

namespace qtrain {
namespace {

// LrSchedule::at as it was with std::cos (kept verbatim as the reference).
double glibc_cos_anneal(double a, double b, double t) {
  return b + (a - b) * 0.5 * (1.0 + std::cos(std::numbers::pi * t));
}
double glibc_at(const LrSchedule& s, uint64_t step) {
  const double total = static_cast<double>(std::max<uint64_t>(s.total_steps, 1));
  const double st = std::min(static_cast<double>(step), total);
  if (s.kind == ScheduleKind::kCosine) return glibc_cos_anneal(s.peak, 0.0, st / total);
  const double initial = s.peak / s.div_factor, final_lr = initial / s.final_div_factor;
  const double up_end = s.pct_start * total - 1.0, down_end = total - 1.0;
  if (st <= up_end) return glibc_cos_anneal(initial, s.peak, up_end > 0 ? st / up_end : 1.0);
  return glibc_cos_anneal(s.peak, final_lr, std::min(1.0, (st - up_end) / std::max(down_end - up_end, 1.0)));
}

TEST(CosRounded, SpecialValues) {
  EXPECT_EQ(cos_rounded(0.0), 1.0);
  EXPECT_EQ(cos_rounded(0x1p-28), 1.0);
  EXPECT_EQ(cos_rounded(std::numbers::pi), -1.0);
  // cos of the double nearest π/2 is 6.123233995736766e-17 (1 + it rounds to 1 + 2^-52: it matters).
  EXPECT_EQ(cos_rounded(std::numbers::pi / 2), 6.123233995736766e-17);
  EXPECT_EQ(cos_rounded(std::numbers::pi / 2), std::cos(std::numbers::pi / 2));
  EXPECT_EQ(cos_rounded(std::numbers::pi / 3), std::cos(std::numbers::pi / 3));
  EXPECT_THROW(cos_rounded(-1.0), std::logic_error);
  EXPECT_THROW(cos_rounded(4.0), std::logic_error);
  EXPECT_THROW(cos_rounded(std::nan("")), std::logic_error);
}

// Against long double cosl (11 more bits) on arguments spread over [0, π] (uniform, and near the zero at π/2 and
// the ends): the result is the double nearest cos x (up to what cosl can tell, 2^-10 ulp). glibc's cos is the
// same or the other neighbour, one ulp away.
TEST(CosRounded, IsCorrectlyRoundedAndAtMostAnUlpFromGlibc) {
  const quant::CounterRng rng(2024, 1);
  std::vector<double> xs;
  for (uint64_t i = 0; i < 200000; ++i) xs.push_back(std::numbers::pi * static_cast<double>(rng.u32(i)) * 0x1p-32);
  for (int k = -2000; k <= 2000; ++k) {
    xs.push_back(std::numbers::pi / 2 + k * 1e-9);
    xs.push_back(std::numbers::pi / 2 + k * 0x1p-52);
    xs.push_back(std::abs(k) * 1e-6);
    xs.push_back(std::numbers::pi - std::abs(k) * 1e-6);
  }
  int differ = 0, far = 0, beyond_ulp = 0;
  for (double x : xs) {
    const double c = cos_rounded(x), g = std::cos(x);
    differ += c != g;
    beyond_ulp += c != g && std::nextafter(c, g) != g;
    // |cosl(x) − c| ≤ half an ulp of c (plus cosl's own error): c is the double nearest cos x.
    const long double err = std::fabs(std::cos(static_cast<long double>(x)) - static_cast<long double>(c));
    const long double half_ulp = std::ldexp(1.0L, std::ilogb(c) - 53);
    far += err > half_ulp * (1 + 0x1p-9L);
  }
  EXPECT_EQ(far, 0) << "of " << xs.size();
  EXPECT_EQ(beyond_ulp, 0) << "of " << xs.size();
  EXPECT_LT(differ, static_cast<int>(xs.size() / 200));
  std::printf("glibc's cos differs (by one ulp) on %d of %zu arguments\n", differ, xs.size());
}

// The schedules' dyadic learning rates, every step of runs of many lengths (the tests' 1..60 steps, the README's 937
// steps per Fashion-MNIST epoch and 390 per CIFAR-10 epoch, and a 100000-step run): identical to the ones the
// glibc-cos rates give; the rates themselves are equal or differ by at most peak·2^-52.
TEST(Schedule, CosineAndOneCycleGiveTheGlibcDyadicRatesOnEveryStep) {
  std::vector<uint64_t> totals;
  for (uint64_t t = 1; t <= 60; ++t) totals.push_back(t);
  for (uint64_t epochs : {1, 2, 5, 10, 20, 30}) {
    totals.push_back(937 * epochs);
    totals.push_back(390 * epochs);
  }
  totals.push_back(100000);
  uint64_t steps = 0, ulp_apart = 0;
  for (ScheduleKind kind : {ScheduleKind::kCosine, ScheduleKind::kOneCycle}) {
    for (uint64_t total : totals) {
      for (double peak : {0.05, 0.1}) {
        LrSchedule s;
        s.kind = kind;
        s.peak = peak;
        s.total_steps = total;
        for (uint64_t step = 0; step <= total; ++step) {
          const double ours = s.at(step), ref = glibc_at(s, step);
          const quant::Dyadic a = quant::to_dyadic(ours), b = quant::to_dyadic(ref);
          ASSERT_EQ(a.mantissa, b.mantissa) << schedule_name(kind) << " total " << total << " step " << step;
          ASSERT_EQ(a.shift, b.shift) << schedule_name(kind) << " total " << total << " step " << step;
          if (ours != ref) {  // the cos's one ulp (≤ 2^-53), times (a − b)/2 ≤ peak/2, plus the roundings after it
            ASSERT_LE(std::abs(ours - ref), peak * 0x1p-52)
                << schedule_name(kind) << " total " << total << " step " << step;
            ++ulp_apart;
          }
          ++steps;
        }
      }
    }
  }
  EXPECT_GT(steps, 400000u);
  std::printf("%llu steps; the rate differs from the glibc-cos rate in its last bits on %llu (same dyadic number)\n",
              static_cast<unsigned long long>(steps), static_cast<unsigned long long>(ulp_apart));
}

}  // namespace
}  // namespace qtrain
