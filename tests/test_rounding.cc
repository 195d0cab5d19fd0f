// The scalar rounding rules (qtrain/kernels/rounding.h) against exact 128-bit arithmetic, over every edge the
// kernels and quantizers can meet: shifts 0, ±31, ±32, ±63, ±64 and far beyond, INT32/INT64 extremes, exact ties.
#include <gtest/gtest.h>

#include <climits>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "qtrain/kernels/rounding.h"

namespace qtrain::kernels {
namespace {

__extension__ using I128 = __int128;  // GCC/Clang extension: exact products and quotients of int64 values

constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kI32Min = std::numeric_limits<int32_t>::min();
constexpr int64_t kI32Max = std::numeric_limits<int32_t>::max();

// floor(v / 2^s) for 0 ≤ s ≤ 126 (an arithmetic shift of a 128-bit value is a floor).
I128 floor_shift(I128 v, int s) { return v >> s; }

// The exact references, written from the definitions (not the identities the header uses).
int64_t want_even(int64_t x, int s) {
  if (s <= 0) return s <= -64 ? 0 : static_cast<int64_t>(static_cast<uint64_t>(x) << -s);
  if (s > 100) return 0;
  const I128 q = floor_shift(x, s), r = I128{x} - (q << s), half = I128{1} << (s - 1);
  return static_cast<int64_t>(r > half || (r == half && (q & 1) != 0) ? q + 1 : q);
}
int64_t want_half_up(int64_t x, int s) {
  if (s <= 0) return s <= -64 ? 0 : static_cast<int64_t>(static_cast<uint64_t>(x) << -s);
  if (s > 100) return 0;
  return static_cast<int64_t>(floor_shift(I128{x} + (I128{1} << (s - 1)), s));
}
// floor((x + r·2^(s−32)) / 2^s) = floor((x·2^32 + r·2^s) / 2^(s+32)), in 128 bits for s ≤ 94. Beyond,
// |x| ≤ 2^63 < 2^(s−32) is below one unit of the draw: −1 exactly when x < 0 and r = 0.
int64_t want_stochastic(int64_t x, int s, uint32_t r) {
  if (s <= 0) return s <= -64 ? 0 : static_cast<int64_t>(static_cast<uint64_t>(x) << -s);
  if (s > 94) return x < 0 && r == 0 ? -1 : 0;
  return static_cast<int64_t>(floor_shift((I128{x} << 32) + (I128{r} << s), s + 32));
}
int64_t want_sat(int64_t x, int k) {
  if (x == 0) return 0;
  const I128 lim = I128{1} << 62;
  if (k >= 63) return x < 0 ? -kShiftSatLimit : kShiftSatLimit;
  const I128 v = I128{x} << k;
  return static_cast<int64_t>(v > lim ? lim : v < -lim ? -lim : v);
}

std::vector<int64_t> edge_values() {
  std::vector<int64_t> v = {0,
                            1,
                            -1,
                            2,
                            -2,
                            3,
                            -3,
                            5,
                            -5,
                            6,
                            -6,
                            7,
                            -7,
                            kI32Min,
                            kI32Max,
                            kI32Min + 1,
                            kI32Max - 1,
                            kI64Min,
                            kI64Max,
                            kI64Min + 1,
                            kI64Max - 1,
                            kShiftSatLimit,
                            -kShiftSatLimit,
                            kShiftSatLimit - 1,
                            -kShiftSatLimit + 1,
                            kShiftSatLimit + 1,
                            -kShiftSatLimit - 1};
  // Exact ties and their neighbours at several shifts: (2k + 1)·2^(s−1) ± {0, 1}.
  for (int s : {1, 2, 15, 31, 32, 33, 61, 62, 63})
    for (int64_t k : {0, 1, 2, 3}) {
      const uint64_t t = static_cast<uint64_t>(2 * k + 1) << (s - 1);  // wraps for s = 63, k ≥ 1: still a tie
      for (uint64_t d : {uint64_t{0} - 1, uint64_t{0}, uint64_t{1}}) {
        v.push_back(static_cast<int64_t>(t + d));
        v.push_back(static_cast<int64_t>(uint64_t{0} - t - d));
      }
    }
  std::mt19937_64 rng(7);
  for (int i = 0; i < 200; ++i) {
    const int64_t r = static_cast<int64_t>(rng() >> (rng() % 64));
    v.push_back((i & 1) != 0 ? ~r : r);
  }
  return v;
}

const std::vector<int> kShifts = {INT_MIN, -1000, -65, -64, -63, -62, -61, -33, -32,  -31,    -30,
                                  -2,      -1,    0,   1,   2,   3,   15,  16,  29,   30,     31,
                                  32,      33,    61,  62,  63,  64,  65,  96,  1000, INT_MAX};

TEST(Rounding, NearestEvenIsExactForEveryValueAndShift) {
  for (int64_t x : edge_values())
    for (int s : kShifts) ASSERT_EQ(shift_round_even(x, s), want_even(x, s)) << "x=" << x << " s=" << s;
}

TEST(Rounding, NearestEvenTies) {
  static_assert(shift_round_even(5, 1) == 2 && shift_round_even(7, 1) == 4);  // 2.5 → 2, 3.5 → 4
  static_assert(shift_round_even(-5, 1) == -2 && shift_round_even(-7, 1) == -4);
  static_assert(shift_round_even(int64_t{3} << 30, 31) == 2);  // 1.5 → 2
  static_assert(shift_round_even(int64_t{1} << 31, 32) == 0);  // 0.5 → 0
  static_assert(shift_round_even(kI32Min, 32) == 0 && shift_round_even(kI32Min, 31) == -1);
  static_assert(shift_round_even(kI64Min, 63) == -1 && shift_round_even(kI64Min, 64) == 0);  // −0.5 → 0
  static_assert(shift_round_even(kI64Max, 63) == 1 && shift_round_even(int64_t{1} << 62, 63) == 0);
  static_assert(shift_round_even(kI64Max, 1) == int64_t{1} << 62);  // (2^63 − 1)/2 = 2^62 − ½ → 2^62 (even)
  static_assert(shift_round_even(3, -4) == 48 && shift_round_even(1, -63) == kI64Min && shift_round_even(1, -64) == 0);
}

TEST(Rounding, HalfUpIsExactForEveryValueAndShift) {
  for (int64_t x : edge_values())
    for (int s : kShifts) ASSERT_EQ(shift_round_half_up(x, s), want_half_up(x, s)) << "x=" << x << " s=" << s;
  static_assert(shift_round_half_up(5, 1) == 3 && shift_round_half_up(-5, 1) == -2);  // ties toward +∞
  static_assert(shift_round_half_up(kI64Max, 63) == 1 && shift_round_half_up(kI64Min, 63) == -1);
  static_assert(shift_round_half_up(kI32Min, 32) == 0 && shift_round_half_up(kI32Max, 32) == 0);
  static_assert(shift_round_half_up(kI64Min, 64) == 0 && shift_round_half_up(-7, 0) == -7);
}

TEST(Rounding, StochasticIsExactForEveryValueShiftAndDraw) {
  const uint32_t draws[] = {0, 1, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFEu, 0xFFFFFFFFu, 0x12345678u};
  for (int64_t x : edge_values())
    for (int s : kShifts)
      for (uint32_t r : draws)
        ASSERT_EQ(shift_round_stochastic(x, s, r), want_stochastic(x, s, r)) << "x=" << x << " s=" << s << " r=" << r;
  static_assert(shift_round_stochastic(12, 3, 0) == 1 && shift_round_stochastic(12, 3, 0xFFFFFFFFu) == 2);
  static_assert(shift_round_stochastic(kI64Max, 1, 0xFFFFFFFFu) == int64_t{1} << 62);  // no wrap at the top
  static_assert(shift_round_stochastic(kI64Min, 63, 0) == -1 && shift_round_stochastic(kI64Min, 64, 0) == -1);
  static_assert(shift_round_stochastic(kI64Min, 64, 0x80000000u) == 0);  // −½ + ½
}

// The far shifts keep the expectation: P(round up) = frac(x / 2^s) to within 2^−32 (here counted over every
// 2^32/2^k-th draw).
TEST(Rounding, StochasticIsUnbiasedFarBeyondTheInputsWidth) {
  for (int s : {40, 62, 63, 64, 70}) {
    const int64_t x = -(int64_t{3} << 60);  // −0.375·2^63
    int64_t sum = 0;
    constexpr int kDraws = 1 << 12;
    for (int i = 0; i < kDraws; ++i) sum += shift_round_stochastic(x, s, static_cast<uint32_t>(i) << 20);
    // E[result] = x / 2^s; over the evenly spaced draws the mean is within one step of 2^−12.
    const double mean = static_cast<double>(sum) / kDraws, exact = static_cast<double>(x) / std::ldexp(1.0, s);
    EXPECT_NEAR(mean, exact, 1.0 / kDraws + 1e-12) << "s=" << s;
  }
}

TEST(Rounding, SaturatingLeftShifts) {
  for (int64_t x : edge_values())
    for (int k : {0, 1, 30, 31, 32, 33, 61, 62, 63, 64, 1000, INT_MAX})
      ASSERT_EQ(shift_left_sat(x, k), want_sat(x, k)) << "x=" << x << " k=" << k;
  static_assert(shift_round_even_sat(5, -144) == kShiftSatLimit && shift_round_even_sat(-5, -60) == -kShiftSatLimit);
  static_assert(shift_round_even_sat(5, -59) == int64_t{5} << 59 && shift_round_even_sat(1, INT_MIN) == kShiftSatLimit);
  static_assert(shift_round_even_sat(kI64Min, 0) == kI64Min);  // s ≥ 0 rounds, it never clamps
  static_assert(shift_left_sat(kI64Min, 0) == -kShiftSatLimit && shift_left_wrap(-1, 63) == kI64Min);
}

TEST(Rounding, MagnitudesAndWidths) {
  static_assert(magnitude(kI64Min) == uint64_t{1} << 63 && magnitude(kI32Min) == uint64_t{1} << 31);
  static_assert(magnitude(-1) == 1 && magnitude(kI64Max) == (uint64_t{1} << 63) - 1);
  static_assert(bit_length(0) == 0 && bit_length(1) == 1 && bit_length(uint64_t{1} << 63) == 64);
  static_assert(saturate_i32(kI64Min) == kI32Min && saturate_i32(kI32Max + 1) == kI32Max && saturate_i32(-5) == -5);
}

}  // namespace
}  // namespace qtrain::kernels
