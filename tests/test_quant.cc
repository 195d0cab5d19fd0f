// Quantizer properties: rounding is what it claims to be, scales never overflow, ShiftQuant's shifted GEMM is the
// grouped product exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "qtrain/kernels/gemm.h"
#include "qtrain/kernels/thread_pool.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"
#include "qtrain/quant/rng.h"
#include "qtrain/quant/shiftquant.h"
#include "tests/target_test_util.h"

namespace qtrain::quant {
namespace {

TEST(Rng, PhiloxKnownAnswers) {
  // Known-answer vectors of Philox4x32-10 from the Random123 distribution (kat_vectors).
  EXPECT_EQ(philox4x32({0, 0, 0, 0}, {0, 0}), (std::array<uint32_t, 4>{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}));
  EXPECT_EQ(philox4x32({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}),
            (std::array<uint32_t, 4>{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}));
  EXPECT_EQ(philox4x32({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}),
            (std::array<uint32_t, 4>{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}));
}

TEST(Rng, FillMatchesSingleDraws) {
  const CounterRng rng(42, StreamKey{.purpose = Purpose::kRounding, .owner = 0, .slot = 3, .step = 7});
  std::vector<uint32_t> out(37);
  rng.fill_u32(5, out.size(), out.data());
  for (std::size_t i = 0; i < out.size(); ++i) EXPECT_EQ(out[i], rng.u32(5 + i)) << i;
  EXPECT_NE(rng.u32(0), CounterRng(43, StreamKey{.purpose = Purpose::kRounding, .slot = 3, .step = 7}).u32(0));
  EXPECT_NE(rng.u32(0), CounterRng(42, StreamKey{.purpose = Purpose::kRounding, .slot = 3, .step = 8}).u32(0));
}

TEST(Rounding, NearestEvenTies) {
  EXPECT_EQ(shift_round_even(5, 1), 2);    // 2.5 → 2
  EXPECT_EQ(shift_round_even(7, 1), 4);    // 3.5 → 4
  EXPECT_EQ(shift_round_even(-5, 1), -2);  // −2.5 → −2
  EXPECT_EQ(shift_round_even(-7, 1), -4);  // −3.5 → −4
  EXPECT_EQ(shift_round_even(6, 2), 2);    // 1.5 → 2
  EXPECT_EQ(shift_round_even(10, 2), 2);   // 2.5 → 2
  EXPECT_EQ(shift_round_even(11, 2), 3);   // 2.75 → 3
  EXPECT_EQ(shift_round_even(-9, 2), -2);  // −2.25 → −2
  EXPECT_EQ(shift_round_even(3, -4), 48);  // negative shift: exact
  EXPECT_EQ(shift_round_even(123456789, 70), 0);
  // Exhaustive against a double reference with ties to even.
  for (int64_t x = -3000; x <= 3000; ++x)
    for (int s = 0; s <= 6; ++s)
      ASSERT_EQ(shift_round_even(x, s), static_cast<int64_t>(std::nearbyint(std::ldexp(double(x), -s)))) << x << " " << s;
}

TEST(Rounding, StochasticIsFloorOrCeilAndUnbiased) {
  const CounterRng rng(1, StreamKey{.purpose = Purpose::kRounding});
  for (int64_t x : {int64_t{-1000}, int64_t{-37}, int64_t{-1}, int64_t{1}, int64_t{5}, int64_t{37}, int64_t{1001}}) {
    for (int s : {1, 3, 4, 7}) {
      const double exact = std::ldexp(static_cast<double>(x), -s);
      constexpr int kDraws = 200000;
      double sum = 0;
      for (int i = 0; i < kDraws; ++i) {
        const int64_t q = shift_round_stochastic(x, s, rng.u32(static_cast<uint64_t>(i) + 1000000 * s));
        ASSERT_TRUE(q == std::floor(exact) || q == std::ceil(exact)) << x << " " << s << " " << q;
        sum += static_cast<double>(q);
      }
      // Each draw has variance f(1−f) ≤ ¼; six standard deviations of the mean.
      EXPECT_NEAR(sum / kDraws, exact, 6 * 0.5 / std::sqrt(double(kDraws))) << x << " " << s;
    }
  }
  EXPECT_EQ(shift_round_stochastic(12, 0, 0xffffffffu), 12);  // no fraction: exact
  EXPECT_EQ(shift_round_stochastic(12, 3, 0), 1);              // floor(1.5) with u = 0
  EXPECT_EQ(shift_round_stochastic(12, 3, 0xffffffffu), 2);    // ceil with u = max
}

TEST(Pow2, CoveringShiftIsFinestThatFits) {
  for (uint32_t limit : {1u, 3u, 7u, 15u, 31u, 63u, 127u})
    for (uint64_t m = 1; m < 20000; m += (m < 300 ? 1 : 37)) {
      const int s = covering_shift(m, limit);
      EXPECT_LE(static_cast<double>(m), std::ldexp(double(limit), s)) << m << " " << limit;
      EXPECT_GT(static_cast<double>(m), std::ldexp(double(limit), s - 1)) << m << " " << limit;
    }
  EXPECT_EQ(covering_shift(uint64_t{1} << 40, 127), 34);
}

TEST(Pow2, RangesAndHeadroom) {
  EXPECT_EQ(signed_range(4).hi, 7);
  EXPECT_EQ(signed_range(4).lo, -7);
  EXPECT_EQ(signed_range(8).hi, 127);
  EXPECT_EQ(unsigned_range(4).hi, 15);
  EXPECT_EQ(unsigned_range(8).hi, 127);  // int8 carrier
  EXPECT_THROW(signed_range(1), UsageError);
  EXPECT_THROW(signed_range(9), UsageError);
  EXPECT_EQ(int8_headroom(7), 4);
  EXPECT_EQ(int8_headroom(31), 2);
  EXPECT_EQ(int8_headroom(127), 0);
}

TEST(Pow2, DyadicIsAccurate) {
  for (double x : {0.05, 0.9, 5e-4, 1e-7, 3.0, 0.123456}) {
    const Dyadic d = to_dyadic(x);
    EXPECT_LT(std::abs(d.value() - x) / x, std::ldexp(1.0, -15)) << x;
    EXPECT_GE(d.mantissa, 1 << 15);
    EXPECT_LT(d.mantissa, 1 << 16);
  }
  EXPECT_EQ(to_dyadic(0.0).mantissa, 0);
}

std::vector<int32_t> random_ints(std::size_t n, int32_t lo, int32_t hi, uint64_t seed) {
  const CounterRng rng(seed, 0);
  std::vector<int32_t> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = lo + static_cast<int32_t>(rng.below(i, static_cast<uint32_t>(hi - lo + 1)));
  return v;
}

TEST(Pow2, QuantizeToTensorNeverOverflowsAndRoundsToHalfStep) {
  for (int bits = 2; bits <= 8; ++bits) {
    for (bool is_signed : {true, false}) {
      const std::size_t rows = 9, cols = 13;
      const auto x = random_ints(rows * cols, -5000000, 5000000, bits * 2 + is_signed);
      std::vector<int> e_col(cols);
      for (std::size_t c = 0; c < cols; ++c) e_col[c] = -20 + static_cast<int>(c % 4);
      const QuantizeOptions opt{is_signed ? signed_range(bits) : unsigned_range(bits)};
      std::vector<int8_t> q(rows * cols);
      const int e = quantize_to_tensor(x.data(), rows, cols, e_col.data(), cols, opt, q.data());
      int8_t qmax = 0;
      for (std::size_t i = 0; i < q.size(); ++i) {
        ASSERT_GE(q[i], opt.range.lo);
        ASSERT_LE(q[i], opt.range.hi);
        qmax = std::max<int8_t>(qmax, static_cast<int8_t>(std::abs(q[i])));
        const double real = std::ldexp(double(x[i]), e_col[i % cols]);
        const double want = is_signed ? real : std::max(real, 0.0);
        EXPECT_LE(std::abs(std::ldexp(double(q[i]), e) - want), std::ldexp(0.5, e) * (1 + 1e-12)) << i;
      }
      // Finest exponent: one step finer would overflow the range.
      EXPECT_GT(qmax, opt.range.hi / 2) << bits;
    }
  }
}

TEST(Pow2, QuantizePerRowUsesEachRowsRange) {
  const std::size_t rows = 4, cols = 50;
  auto x = random_ints(rows * cols, -1000, 1000, 3);
  for (std::size_t c = 0; c < cols; ++c) x[3 * cols + c] /= 64;  // a small row
  std::vector<int8_t> q(rows * cols);
  std::vector<int> e(rows);
  quantize_per_row(x.data(), rows, cols, -10, QuantizeOptions{signed_range(4)}, q.data(), e.data());
  EXPECT_LE(e[3], e[0] - 5);
  for (std::size_t i = 0; i < x.size(); ++i)
    EXPECT_LE(std::abs(std::ldexp(double(q[i]), e[i / cols]) - std::ldexp(double(x[i]), -10)),
              std::ldexp(0.5, e[i / cols]));
}

// Brute force in double: the squared error of quantizing x with step 2^t (nearest-even, clamped).
double squared_error(const std::vector<int32_t>& x, int t, const IntRange& r) {
  double e = 0;
  for (int32_t v : x) {
    const double q = std::clamp<double>(static_cast<double>(shift_round_even(v, t)), r.lo, r.hi);
    e += std::pow(v - std::ldexp(q, t), 2);
  }
  return e;
}

TEST(Pow2, MinErrorShiftClipsOutliersAndKeepsCoverOtherwise) {
  const IntRange r = signed_range(4);  // ±7
  // A bell-shaped row with one outlier: the outlier sets a coarse covering step, the bulk wants a finer one.
  std::vector<int32_t> bell(512);
  const CounterRng rng(3, 0);
  for (std::size_t i = 0; i < bell.size(); ++i) {
    int64_t s = 0;
    for (int j = 0; j < 4; ++j) s += static_cast<int64_t>(rng.u32(4 * i + j) >> 20) - 2048;  // sum of 4 uniforms
    bell[i] = static_cast<int32_t>(s);
  }
  bell[17] = 6 * 4096;
  const int cover = covering_shift(6 * 4096, 7);
  const int best = min_error_shift(bell.data(), bell.size(), 1, cover, r);
  EXPECT_LT(best, cover);
  EXPECT_GE(best, cover - kMinErrorOctaves);
  for (int t = cover - kMinErrorOctaves; t <= cover; ++t) EXPECT_LE(squared_error(bell, best, r), squared_error(bell, t, r));
  // Values spread evenly over the range: clipping only adds error, the covering step stays.
  std::vector<int32_t> flat;
  for (int v = -7000; v <= 7000; v += 13) flat.push_back(v);
  const int fc = covering_shift(7000, 7);
  EXPECT_EQ(min_error_shift(flat.data(), flat.size(), 1, fc, r), fc);
  // Unsigned range: negatives clamp to zero in both the covering and the error measure.
  std::vector<int32_t> relu(bell);
  for (auto& v : relu) v = std::max(v, 0);
  const IntRange u = unsigned_range(4);
  const int uc = covering_shift(6 * 4096, 15);
  const int ub = min_error_shift(relu.data(), relu.size(), 1, uc, u);
  for (int t = uc - kMinErrorOctaves; t <= uc; ++t) EXPECT_LE(squared_error(relu, ub, u), squared_error(relu, t, u));
  // Steps finer than the input are never chosen (they cannot reduce rounding error, only clip).
  const std::vector<int32_t> small{1, -2, 3, 0};
  EXPECT_EQ(min_error_shift(small.data(), small.size(), 1, 0, r), 0);
}

// min_error_shift as first written: one scalar pass, exact 128-bit sums.
int min_error_shift_scalar(const int32_t* x, std::size_t n, std::size_t stride, int s, const IntRange& range) {
  __extension__ using U128 = unsigned __int128;
  if (s <= 0) return s;
  stride = std::max<std::size_t>(stride, 1);
  const int count = s - std::max(s - kMinErrorOctaves, 0) + 1;
  U128 err[kMinErrorOctaves + 1] = {};
  for (std::size_t i = 0; i < n; i += stride)
    for (int j = 0; j < count; ++j) {
      const int t = s - j;
      const int64_t q = std::clamp<int64_t>(shift_round_even(x[i], t), range.lo, range.hi);
      const int64_t d = x[i] - q * (int64_t{1} << t);
      const uint64_t a = static_cast<uint64_t>(d < 0 ? -d : d);
      err[j] += static_cast<U128>(a) * a;
    }
  int best = 0;
  for (int j = 1; j < count; ++j)
    if (err[j] < err[best]) best = j;
  return s - best;
}

// The SIMD-kernel min_error_shift chooses what the scalar original chooses, on every target, for the shifts the
// quantizers produce (the covering shift of the sample) and others (up to 40), any stride (chunked gathers) and
// data from bell-shaped rows with outliers to the int32 limits.
TEST(Pow2, MinErrorShiftMatchesScalarOriginal) {
  std::mt19937_64 rng(21);
  const std::size_t kN[] = {1, 5, 64, 300, 577, 5000, 20000};
  const std::size_t kStrides[] = {1, 2, 3, 7, 61, 1000};
  std::vector<IntRange> ranges;
  for (int bits = 2; bits <= 8; ++bits) {
    ranges.push_back(signed_range(bits));
    ranges.push_back(unsigned_range(bits));
  }
  for (const std::string& target : kernels::target_names()) {
    kernels::ForcedTarget forced(target);
    ASSERT_TRUE(forced.ok()) << target;
    for (int trial = 0; trial < 150; ++trial) {
      const std::size_t n = kN[rng() % std::size(kN)], stride = kStrides[rng() % std::size(kStrides)];
      const IntRange r = ranges[rng() % ranges.size()];
      const int scale_bits = static_cast<int>(rng() % 31);  // the bulk's magnitude
      std::vector<int32_t> x(n);
      for (auto& v : x) {
        switch (rng() % 16) {
          case 0:
            v = kernels::random_i32(rng);  // outliers up to the int32 limits
            break;
          case 1:
            v = 0;
            break;
          default: {  // a sum of two uniforms: bell-ish
            const int64_t span = int64_t{1} << scale_bits;
            v = static_cast<int32_t>(static_cast<int64_t>(rng() % span) - static_cast<int64_t>(rng() % span));
          }
        }
      }
      uint64_t m = 0;
      for (std::size_t i = 0; i < n; i += stride)
        m = std::max<uint64_t>(
            m, r.lo >= 0 ? static_cast<uint64_t>(std::max(x[i], 0)) : static_cast<uint64_t>(std::abs(int64_t{x[i]})));
      const int cover = m == 0 ? 0 : covering_shift(m, static_cast<uint32_t>(std::max(r.hi, -r.lo)));
      for (int s : {cover, static_cast<int>(rng() % 41)})
        ASSERT_EQ(min_error_shift(x.data(), n, stride, s, r), min_error_shift_scalar(x.data(), n, stride, s, r))
            << target << " trial " << trial << " n=" << n << " stride=" << stride << " s=" << s << " range " << r.lo
            << ".." << r.hi;
    }
  }
  EXPECT_THROW(min_error_shift(std::vector<int32_t>{5}.data(), 1, 1, 2, IntRange{1, 7}), std::invalid_argument);
}

TEST(Pow2, MinErrorRuleInTheQuantizers) {
  const IntRange r = signed_range(4);
  std::vector<int32_t> x(4 * 300);
  const CounterRng rng(5, 0);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<int32_t>(rng.u32(i) >> 22) - 512;
  x[7] = 9000;          // row 0: an outlier far out (clipping it costs more than the finer step saves)
  x[300 + 5] = -1500;   // row 1: a moderate outlier (the bulk's finer step wins)
  QuantizeOptions opt{r};
  opt.scale = ScaleRule::kMinError;
  std::vector<int8_t> q(x.size());
  std::vector<int> e_row(4);
  quantize_per_row(x.data(), 4, 300, -3, opt, q.data(), e_row.data());
  for (std::size_t row = 0; row < 4; ++row) {
    const int32_t* xr = x.data() + row * 300;
    uint64_t m = 0;
    for (std::size_t i = 0; i < 300; ++i) m = std::max<uint64_t>(m, static_cast<uint64_t>(std::abs(xr[i])));
    const int s = min_error_shift(xr, 300, 1, covering_shift(m, 7), r);
    EXPECT_EQ(e_row[row], -3 + s) << row;
    for (std::size_t i = 0; i < 300; ++i)
      EXPECT_EQ(q[row * 300 + i], std::clamp<int64_t>(shift_round_even(xr[i], s), r.lo, r.hi));
  }
  EXPECT_EQ(e_row[0], -3 + covering_shift(9000, 7));
  EXPECT_LT(e_row[1], -3 + covering_shift(1500, 7));
  // One exponent for the tensor: the rule on a strided sample, here every element (small tensor).
  x[7] = 0;
  const int e = quantize_to_tensor(x.data(), 4, 300, std::vector<int>{2}.data(), 1, opt, q.data());
  EXPECT_EQ(e, 2 + min_error_shift(x.data(), x.size(), 1, covering_shift(1500, 7), r));
  EXPECT_LT(e, 2 + covering_shift(1500, 7));
}

TEST(Pow2, ColumnGroupsGiveSmallChannelsFinerStepsInOneInt8Exponent) {
  const std::size_t rows = 64, cols = 6;
  const CounterRng rng(9, 0);
  std::vector<int32_t> x(rows * cols);
  // Column c spans about 2^(12 − 2c): the small columns would get few or no levels with one step.
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<int32_t>(rng.u32(i) >> (20 + 2 * (i % cols)));
  for (const ScaleRule rule : {ScaleRule::kCover, ScaleRule::kMinError}) {
    QuantizeOptions opt{unsigned_range(4)};
    opt.scale = rule;
    EXPECT_EQ(max_column_groups(opt.range), 4);  // 15·2^3 = 120 ≤ 127 < 240
    EXPECT_THROW(quantize_column_groups(x.data(), rows, cols, -8, opt, 5, std::vector<int8_t>(x.size()).data()),
                 std::invalid_argument);
    std::vector<int8_t> one(x.size()), grouped(x.size());
    const int e1 = quantize_column_groups(x.data(), rows, cols, -8, opt, 1, one.data());
    // One group is the per-tensor quantizer.
    std::vector<int8_t> plain(x.size());
    EXPECT_EQ(e1, quantize_to_tensor(x.data(), rows, cols, std::vector<int>{-8}.data(), 1, opt, plain.data()));
    EXPECT_EQ(one, plain);
    const int e4 = quantize_column_groups(x.data(), rows, cols, -8, opt, 4, grouped.data());
    EXPECT_EQ(e4, e1 - 3);
    for (std::size_t c = 0; c < cols; ++c) {
      // Column c's values are multiples of 2^up_c in the carrier (up_c = 3 − k_c); the step 2^(e4 + up_c) never
      // exceeds the tensor step, and each value is x rounded to nearest at that step (clamped at the top).
      int up = 3;
      for (std::size_t r = 0; r < rows; ++r)
        while (up > 0 && grouped[r * cols + c] % (1 << up) != 0) --up;
      double err1 = 0, err4 = 0;
      for (std::size_t r = 0; r < rows; ++r) {
        const std::size_t i = r * cols + c;
        EXPECT_GE(grouped[i], 0);
        EXPECT_LE(grouped[i], 120);
        const double v = std::ldexp(double(x[i]), -8);
        err1 += std::pow(std::ldexp(double(one[i]), e1) - v, 2);
        err4 += std::pow(std::ldexp(double(grouped[i]), e4) - v, 2);
      }
      EXPECT_LE(err4, err1 + 1e-12) << "column " << c;
    }
  }
}

// The activation quantizers split their maxima and rounding passes over a pool (whole rows, or element ranges for
// one exponent): outputs and exponents are those of the single-thread call, for every form, range, rounding and
// scale rule, on shapes whose tiles do not fall on vector or row boundaries.
TEST(Pow2, QuantizersAreIdenticalOnThePool) {
  kernels::ThreadPool two(2, kernels::ThreadPool::Split::kAlways), three(3, kernels::ThreadPool::Split::kAlways);
  const kernels::ThreadPool::Split measured = kernels::ThreadPool::Split::kMeasured;
  kernels::ThreadPool two_measured(2, measured);
  const std::vector<kernels::ThreadPool*> pools = {&two, &three, &two_measured};
  struct Shape {
    std::size_t rows, cols;
  };
  // 1 row, fewer rows than tiles, and tensors above kMinErrorSamples (a strided error sample).
  const Shape shapes[] = {{1, 333}, {5, 7}, {517, 37}, {1000, 64}, {64, 784}};
  const CounterRng draws(77, 3);
  uint64_t seed = 1;
  for (const Shape& sh : shapes) {
    const std::size_t n = sh.rows * sh.cols;
    auto x = random_ints(n, -300000, 300000, seed++);
    // A bell-ish bulk with a few outliers (so the least-error rule picks a finer step than cover) and small columns
    // (so column groups differ per column).
    for (std::size_t i = 0; i < n; ++i) x[i] /= 1 + static_cast<int32_t>((i % sh.cols) % 5) * 7;
    x[n / 3] = 2900000;
    x[n / 2] = -3100000;
    std::vector<int> e_col(sh.cols);
    for (std::size_t c = 0; c < sh.cols; ++c) e_col[c] = -20 + static_cast<int>(c % 5);
    for (const int bits : {2, 4, 8}) {
      for (const bool is_signed : {true, false}) {
        for (const Rounding rounding : {Rounding::kNearestEven, Rounding::kStochastic}) {
          for (const ScaleRule rule : {ScaleRule::kCover, ScaleRule::kMinError}) {
            QuantizeOptions opt{is_signed ? signed_range(bits) : unsigned_range(bits)};
            opt.rounding = rounding;
            opt.rng = &draws;
            opt.index0 = 12345;
            opt.scale = rule;
            const std::string what = std::to_string(sh.rows) + "x" + std::to_string(sh.cols) + " bits " +
                                     std::to_string(bits) + (is_signed ? " signed" : " unsigned") +
                                     (rounding == Rounding::kStochastic ? " stochastic" : " nearest") +
                                     (rule == ScaleRule::kMinError ? " mse" : " max");
            std::vector<int8_t> one(n), per_col(n), grouped(n);
            const int e_one = quantize_to_tensor(x.data(), sh.rows, sh.cols, e_col.data(), 1, opt, one.data());
            const int e_col_out =
                quantize_to_tensor(x.data(), sh.rows, sh.cols, e_col.data(), sh.cols, opt, per_col.data());
            const int groups = std::min(3, max_column_groups(opt.range));
            const int e_grouped = quantize_column_groups(x.data(), sh.rows, sh.cols, -9, opt, groups, grouped.data());
            for (kernels::ThreadPool* pool : pools) {
              const std::string where = what + ", " + std::to_string(pool->threads()) + " threads";
              std::vector<int8_t> q(n, int8_t{99});
              EXPECT_EQ(quantize_to_tensor(x.data(), sh.rows, sh.cols, e_col.data(), 1, opt, q.data(), pool), e_one)
                  << where;
              EXPECT_EQ(q, one) << where;
              std::fill(q.begin(), q.end(), int8_t{99});
              EXPECT_EQ(quantize_to_tensor(x.data(), sh.rows, sh.cols, e_col.data(), sh.cols, opt, q.data(), pool),
                        e_col_out)
                  << where;
              EXPECT_EQ(q, per_col) << where;
              std::fill(q.begin(), q.end(), int8_t{99});
              EXPECT_EQ(quantize_column_groups(x.data(), sh.rows, sh.cols, -9, opt, groups, q.data(), pool), e_grouped)
                  << where;
              EXPECT_EQ(q, grouped) << where;
            }
          }
        }
      }
    }
  }
  // All-zero input on the pool: zeros, the input exponent.
  const std::vector<int32_t> zeros(4000, 0);
  std::vector<int8_t> q(zeros.size(), int8_t{99});
  EXPECT_EQ(
      quantize_to_tensor(zeros.data(), 100, 40, std::vector<int>{-4}.data(), 1, {signed_range(4)}, q.data(), &two), -4);
  EXPECT_EQ(q, std::vector<int8_t>(zeros.size(), 0));
}

TEST(ShiftQuant, GroupBudget) {
  EXPECT_EQ(max_groups(4), 5);
  EXPECT_EQ(max_groups(6), 3);
  EXPECT_EQ(max_groups(8), 1);
  EXPECT_NO_THROW(validate({4, 5}));
  EXPECT_THROW(validate({4, 6}), UsageError);
  EXPECT_THROW(validate({8, 2}), UsageError);
  EXPECT_THROW(validate({4, 0}), UsageError);
  try {
    validate({4, 6});
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("1..5"), std::string::npos) << e.what();
  }
}

// A gradient with channel ranges spread over many octaves (log-normal scales, as in real gradients).
std::vector<int32_t> spread_gradient(std::size_t rows, std::size_t cols, uint64_t seed) {
  const CounterRng rng(seed, 1);
  std::vector<int32_t> g(rows * cols);
  for (std::size_t c = 0; c < cols; ++c) {
    const double scale = std::exp(1.5 * rng.normal(1000000 + c)) * 1e5;
    for (std::size_t n = 0; n < rows; ++n)
      g[n * cols + c] = static_cast<int32_t>(std::llround(scale * rng.normal(n * cols + c)));
  }
  return g;
}

TEST(ShiftQuant, ShiftedGemmEqualsDequantizedGroupedProductExactly) {
  const std::size_t n = 23, m = 37, k = 19;
  for (int bits : {4, 5, 6, 8}) {
    const int ng = max_groups(bits);
    const auto g = spread_gradient(n, m, bits);
    ShiftQuantized sq;
    shiftquant(g.data(), n, m, -30, {bits, ng}, CounterRng(9, 9), &sq);
    const auto w32 = random_ints(m * k, -127, 127, 11);
    std::vector<int8_t> w(w32.begin(), w32.end());
    for (std::size_t i = 0; i < sq.q.size(); ++i) ASSERT_LE(std::abs(sq.q[i]), signed_range(bits).hi);
    // dgrad: one int8 GEMM over the shifted operand.
    std::vector<int32_t> dx(n * k);
    kernels::gemm_dgrad(sq.shifted.data(), w.data(), dx.data(), n, m, k, nullptr);
    for (std::size_t r = 0; r < n; ++r)
      for (std::size_t j = 0; j < k; ++j) {
        double want = 0;  // Σ_c Ĝ[r,c]·W[c,j] with Ĝ = q·2^(e0 − k_c), exact in double at these sizes
        for (std::size_t c = 0; c < m; ++c)
          want += std::ldexp(double(sq.q[r * m + c]), sq.channel_exponent(c)) * w[c * k + j];
        ASSERT_EQ(std::ldexp(double(dx[r * k + j]), sq.shifted_exponent()), want) << bits << " " << r << " " << j;
      }
    // wgrad: the unshifted operand, group shift on the output rows.
    const auto x32 = random_ints(n * k, -127, 127, 12);
    std::vector<int8_t> x(x32.begin(), x32.end());
    std::vector<int32_t> dw(m * k);
    kernels::gemm_wgrad(sq.q.data(), x.data(), dw.data(), n, m, k, nullptr);
    for (std::size_t c = 0; c < m; ++c)
      for (std::size_t j = 0; j < k; ++j) {
        double want = 0;
        for (std::size_t r = 0; r < n; ++r) want += std::ldexp(double(sq.q[r * m + c]), sq.channel_exponent(c)) * x[r * k + j];
        ASSERT_EQ(std::ldexp(double(dw[c * k + j]), sq.channel_exponent(c)), want);
      }
  }
}

TEST(ShiftQuant, UnbiasedAndCloseToPerChannelBound) {
  const std::size_t n = 64, m = 48;
  const auto g = spread_gradient(n, m, 5);
  const int eg = -20;
  std::vector<double> mean(n * m, 0.0);
  double err_sq = 0, ref_err_sq = 0, energy = 0;
  constexpr int kTrials = 400;
  for (int t = 0; t < kTrials; ++t) {
    ShiftQuantized sq;
    shiftquant(g.data(), n, m, eg, {4, 5}, CounterRng(t, 77), &sq);
    for (std::size_t i = 0; i < n * m; ++i) {
      const double v = std::ldexp(double(sq.q[i]), sq.channel_exponent(i % m));
      mean[i] += v / kTrials;
      const double d = v - std::ldexp(double(g[i]), eg);
      err_sq += d * d / kTrials;
    }
  }
  // Per-channel bound: SR with each channel's own max scale R_c / Q has variance ≤ step²/4 per element.
  for (std::size_t c = 0; c < m; ++c) {
    double rc = 0;
    for (std::size_t r = 0; r < n; ++r) rc = std::max(rc, std::abs(std::ldexp(double(g[r * m + c]), eg)));
    ref_err_sq += n * (rc / 7) * (rc / 7) / 4;
  }
  for (std::size_t i = 0; i < n * m; ++i) energy += std::pow(std::ldexp(double(g[i]), eg), 2);
  // Unbiased: the mean over trials converges to the exact value (six standard deviations of the mean).
  double max_bias_in_steps = 0;
  ShiftQuantized sq;
  shiftquant(g.data(), n, m, eg, {4, 5}, CounterRng(0, 77), &sq);
  for (std::size_t i = 0; i < n * m; ++i) {
    const double step = std::ldexp(1.0, sq.channel_exponent(i % m));
    max_bias_in_steps = std::max(max_bias_in_steps, std::abs(mean[i] - std::ldexp(double(g[i]), eg)) / step);
  }
  EXPECT_LT(max_bias_in_steps, 6 * 0.5 / std::sqrt(double(kTrials)));
  // ShiftQuant's error stays within a small factor of the per-channel quantizer it approximates (≤ 4× plus the
  // channels below the lowest group).
  EXPECT_LT(err_sq, 8 * ref_err_sq) << "relative MSE " << err_sq / energy << " vs bound " << ref_err_sq / energy;
}

TEST(ShiftQuant, AllZeroGradient) {
  std::vector<int32_t> g(12, 0);
  ShiftQuantized sq;
  shiftquant(g.data(), 3, 4, -5, {4, 5}, CounterRng(0, 0), &sq);
  for (int8_t v : sq.q) EXPECT_EQ(v, 0);
  for (int8_t v : sq.shifted) EXPECT_EQ(v, 0);
}

// Both passes split by rows over 2 and 3 threads (always split) give the single-thread bits: the channel ranges are
// merged with max, and every element's draw depends only on its index. Shapes: many rows of few channels (a
// convolution's gradient: tiles of many 4096-draw blocks), fewer wide rows (block_rows = 13, tiles that end inside
// a block), a zero channel, and an all-zero gradient.
TEST(ShiftQuant, ThreadedPassesAreBitIdentical) {
  kernels::ThreadPool two(2, kernels::ThreadPool::Split::kAlways), three(3, kernels::ThreadPool::Split::kAlways);
  struct Shape {
    std::size_t rows, cols;
  };
  for (const Shape s : {Shape{3001, 16}, Shape{203, 300}, Shape{50, 7}}) {
    for (int bits : {4, 8}) {
      SCOPED_TRACE(std::to_string(s.rows) + "x" + std::to_string(s.cols) + " bits " + std::to_string(bits));
      auto g = spread_gradient(s.rows, s.cols, 20 + bits);
      for (std::size_t r = 0; r < s.rows; ++r) g[r * s.cols + 3] = 0;  // a zero channel
      const ShiftQuantConfig cfg{bits, max_groups(bits)};
      const CounterRng rng(5, StreamKey{.purpose = Purpose::kRounding, .slot = 2, .step = 11});
      ShiftQuantized one;
      shiftquant(g.data(), s.rows, s.cols, -25, cfg, rng, &one);
      for (kernels::ThreadPool* pool : {&two, &three}) {
        ShiftQuantized sq;
        shiftquant(g.data(), s.rows, s.cols, -25, cfg, rng, &sq, pool);
        EXPECT_EQ(sq.e0, one.e0);
        EXPECT_EQ(sq.k, one.k);
        ASSERT_TRUE(std::equal(sq.q.begin(), sq.q.end(), one.q.begin(), one.q.end())) << pool->threads();
        ASSERT_TRUE(std::equal(sq.shifted.begin(), sq.shifted.end(), one.shifted.begin(), one.shifted.end()))
            << pool->threads();
      }
    }
  }
  const std::vector<int32_t> zero(4000 * 8, 0);
  ShiftQuantized sq;
  shiftquant(zero.data(), 4000, 8, -5, {4, 5}, CounterRng(0, 0), &sq, &three);
  EXPECT_EQ(sq.e0, -5);
  EXPECT_TRUE(std::all_of(sq.q.begin(), sq.q.end(), [](int8_t v) { return v == 0; }));
  EXPECT_TRUE(std::all_of(sq.shifted.begin(), sq.shifted.end(), [](int8_t v) { return v == 0; }));
}

TEST(ShiftQuant, AlignRowsIsExactWithinHeadroom) {
  const std::size_t rows = 5, cols = 8;
  const auto w32 = random_ints(rows * cols, -7, 7, 4);
  std::vector<int8_t> w(w32.begin(), w32.end()), out(rows * cols);
  const std::vector<int> e{-10, -12, -14, -11, -13};  // spread 4 octaves = int8_headroom(7)
  const int ea = align_rows(w.data(), rows, cols, e.data(), 7, out.data());
  for (std::size_t i = 0; i < w.size(); ++i)
    EXPECT_EQ(std::ldexp(double(out[i]), ea), std::ldexp(double(w[i]), e[i / cols]));
}

}  // namespace
}  // namespace qtrain::quant
