// The element-wise kernels (qtrain/kernels/eltwise.h) against their scalar references on every Highway target this
// machine can run, over odd sizes, every shift range and the int32 limits; and the references against the
// original formulas of qtrain/quant/pow2.h they replace.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "qtrain/kernels/eltwise.h"
#include "qtrain/quant/pow2.h"
#include "tests/target_test_util.h"

namespace qtrain::kernels {
namespace {

constexpr int32_t kI32Min = std::numeric_limits<int32_t>::min();
constexpr int32_t kI32Max = std::numeric_limits<int32_t>::max();

const std::size_t kLengths[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 257, 1023};
const std::size_t kCols[] = {1, 2, 3, 4, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 48, 64, 65, 100, 128};
const std::size_t kRows[] = {0, 1, 2, 3, 5, 37};

// Values whose low bits sit on rounding ties (…100…0) for shifts up to 12.
int32_t tie_i32(std::mt19937_64& rng) {
  const int s = 1 + static_cast<int>(rng() % 12);
  const int64_t q = static_cast<int64_t>(rng() % 2001) - 1000;
  return static_cast<int32_t>(q * (int64_t{1} << s) + (int64_t{1} << (s - 1)));
}

uint32_t random_draw(std::mt19937_64& rng) {
  switch (rng() % 8) {
    case 0:
      return 0;
    case 1:
      return 0xFFFFFFFFu;
    default:
      return static_cast<uint32_t>(rng());
  }
}

template <typename T, typename F>
std::vector<T> fill(std::size_t n, F&& f) {
  std::vector<T> out(n);
  for (T& x : out) x = f();
  return out;
}

std::vector<int32_t> random_values(std::size_t n, std::mt19937_64& rng) {
  return fill<int32_t>(n, [&] { return rng() % 4 == 0 ? tie_i32(rng) : random_i32(rng); });
}

class EltwiseKernelTarget : public PerTargetTest {};

TEST_P(EltwiseKernelTarget, MaxAbsMatchesReference) {
  std::mt19937_64 rng(1);
  for (std::size_t n : kLengths) {
    for (int trial = 0; trial < 4; ++trial) {
      const auto x = random_values(n, rng);
      for (bool pos : {false, true}) ASSERT_EQ(max_abs_i32(x.data(), n, pos), ref::max_abs_i32(x.data(), n, pos)) << n;
      const auto y = fill<int64_t>(n, [&] {
        const int bits = static_cast<int>(rng() % 63);
        const int64_t mag = static_cast<int64_t>(rng() & ((uint64_t{1} << bits) - 1));
        return (rng() & 1) ? -mag : mag;
      });
      ASSERT_EQ(max_abs_i64(y.data(), n), ref::max_abs_i64(y.data(), n)) << n;
    }
  }
  const std::vector<int32_t> extremes(37, kI32Min);
  EXPECT_EQ(max_abs_i32(extremes.data(), extremes.size(), false), uint64_t{1} << 31);
  EXPECT_EQ(max_abs_i32(extremes.data(), extremes.size(), true), 0u);
}

TEST_P(EltwiseKernelTarget, ColumnMaxAbsMatchesReference) {
  std::mt19937_64 rng(2);
  for (std::size_t cols : kCols) {
    for (std::size_t rows : kRows) {
      const auto x = random_values(rows * cols, rng);
      for (bool pos : {false, true}) {
        std::vector<uint64_t> want(cols), got(cols + 4, 77);
        ref::col_max_abs_i32(x.data(), rows, cols, pos, want.data());
        col_max_abs_i32(x.data(), rows, cols, pos, got.data());
        for (std::size_t c = 0; c < cols; ++c) ASSERT_EQ(got[c], want[c]) << rows << "x" << cols << " col " << c;
        for (std::size_t c = cols; c < cols + 4; ++c) ASSERT_EQ(got[c], 77u) << "wrote past the end";
      }
    }
  }
}

// Shifts of every kind: large left shifts (saturating), small left shifts, identity, rounding shifts, ≥ 32 and ≥ 63.
const int kShifts[] = {-70, -40, -31, -24, -9, -8, -7, -6, -3, -1, 0,  1,  2, 3,
                       7,   12,  17,  24,  29, 30, 31, 32, 33, 45, 62, 63, 90};
const std::pair<int32_t, int32_t> kRanges[] = {{-7, 7}, {-127, 127}, {0, 15}, {0, 127}, {-1, 1}, {-128, 127}, {0, 3}};

TEST_P(EltwiseKernelTarget, RequantizeMatchesReference) {
  std::mt19937_64 rng(3);
  for (int s : kShifts) {
    for (const auto& [lo, hi] : kRanges) {
      const std::size_t n = kLengths[rng() % std::size(kLengths)];
      const auto x = random_values(n, rng);
      std::vector<int8_t> want(n), got(n + 4, 0x5A);
      ref::requantize_i8(x.data(), n, s, lo, hi, want.data());
      requantize_i8(x.data(), n, s, lo, hi, got.data());
      for (std::size_t i = 0; i < n; ++i)
        ASSERT_EQ(got[i], want[i]) << "s=" << s << " range " << lo << ".." << hi << " x=" << x[i];
      for (std::size_t i = n; i < n + 4; ++i) ASSERT_EQ(got[i], 0x5A) << "wrote past the end";
      // int8 input: every value −128..127 at each length's tail position too.
      std::vector<int8_t> x8(n + 256);
      for (std::size_t i = 0; i < x8.size(); ++i) x8[i] = static_cast<int8_t>(i < 256 ? i : x[i - 256]);
      std::vector<int8_t> want8(x8.size()), got8(x8.size() + 4, 0x5A);
      ref::requantize_i8(x8.data(), x8.size(), s, lo, hi, want8.data());
      requantize_i8(x8.data(), x8.size(), s, lo, hi, got8.data());
      for (std::size_t i = 0; i < x8.size(); ++i)
        ASSERT_EQ(got8[i], want8[i]) << "int8 input, s=" << s << " range " << lo << ".." << hi << " x=" << int{x8[i]};
      for (std::size_t i = x8.size(); i < got8.size(); ++i) ASSERT_EQ(got8[i], 0x5A) << "wrote past the end";
    }
  }
  for (std::size_t cols : kCols) {
    for (std::size_t rows : kRows) {
      const auto x = random_values(rows * cols, rng);
      const auto shift = fill<int>(cols, [&] { return kShifts[rng() % std::size(kShifts)]; });
      const auto& [lo, hi] = kRanges[rng() % std::size(kRanges)];
      std::vector<int8_t> want(rows * cols), got(rows * cols + 4, 0x5A);
      ref::requantize_i8_cols(x.data(), rows, cols, shift.data(), lo, hi, want.data());
      requantize_i8_cols(x.data(), rows, cols, shift.data(), lo, hi, got.data());
      for (std::size_t i = 0; i < rows * cols; ++i)
        ASSERT_EQ(got[i], want[i]) << rows << "x" << cols << " element " << i << " shift " << shift[i % cols];
      for (std::size_t i = rows * cols; i < rows * cols + 4; ++i) ASSERT_EQ(got[i], 0x5A) << "wrote past the end";
      // With power-of-two column groups: 4-bit unsigned values shifted up by 0..3 in the carrier (15·2^3 ≤ 127).
      const auto up = fill<int>(cols, [&] { return static_cast<int>(rng() % 4); });
      std::vector<int8_t> want_up(rows * cols), got_up(rows * cols);
      ref::requantize_i8_cols(x.data(), rows, cols, shift.data(), 0, 15, want_up.data(), up.data());
      requantize_i8_cols(x.data(), rows, cols, shift.data(), 0, 15, got_up.data(), up.data());
      for (std::size_t i = 0; i < rows * cols; ++i) {
        ASSERT_EQ(got_up[i], want_up[i]) << rows << "x" << cols << " element " << i << " up " << up[i % cols];
        std::vector<int8_t> one(1);
        ref::requantize_i8_cols(x.data() + i, 1, 1, &shift[i % cols], 0, 15, one.data());
        ASSERT_EQ(want_up[i], one[0] * (1 << up[i % cols]));  // the reference is requantize, then the shift
      }
    }
  }
}

// min_error_shift's squared errors: every s the quantizers produce (covering shifts of int32 data: 0..31) and a few
// beyond (the reference's path), every candidate count, lengths with and without tails, and data that is
// extreme (the int32 limits), on rounding ties, or near and far outside the clamp range at the candidate steps.
TEST_P(EltwiseKernelTarget, SquaredErrorSumsMatchReference) {
  std::mt19937_64 rng(10);
  const std::pair<int32_t, int32_t> kErrRanges[] = {{-7, 7},     {-127, 127}, {0, 15}, {0, 127}, {-1, 1},
                                                    {-128, 127}, {0, 3},      {-3, 3}, {0, 0}};
  const std::size_t kErrLengths[] = {0, 1, 3, 7, 8, 15, 16, 17, 31, 33, 64, 65, 257, 1023, 4099};
  std::vector<int> shifts;
  for (int s = 0; s <= 35; ++s) shifts.push_back(s);
  for (int s : {40, 62, 63, 64, 90}) shifts.push_back(s);
  for (int s : shifts) {
    for (int count = 1; count <= std::min(4, s + 1); ++count) {
      const auto& [lo, hi] = kErrRanges[rng() % std::size(kErrRanges)];
      const std::size_t n = kErrLengths[rng() % std::size(kErrLengths)];
      // Near the clamp bounds at one of the candidate steps: (bound + δ)·2^t + noise, saturated to int32.
      const int t = std::min(s - static_cast<int>(rng() % count), 40);
      auto near_bound = [&] {
        const int64_t k = ((rng() & 1) ? hi : lo) + static_cast<int64_t>(rng() % 7) - 3;
        const int64_t noise = static_cast<int64_t>(rng() % 9) - 4;
        const int64_t v = k * (int64_t{1} << std::min(t, 32)) + noise;
        return static_cast<int32_t>(std::clamp<int64_t>(v, kI32Min, kI32Max));
      };
      const auto x = fill<int32_t>(n, [&] {
        const uint64_t kind = rng() % 8;
        return kind < 2 ? near_bound() : kind == 2 ? tie_i32(rng) : random_i32(rng);
      });
      std::vector<uint64_t> want_hi(count), want_lo(count), got_hi(count + 1, 77), got_lo(count + 1, 77);
      ref::squared_error_sums(x.data(), n, s, count, lo, hi, want_hi.data(), want_lo.data());
      squared_error_sums(x.data(), n, s, count, lo, hi, got_hi.data(), got_lo.data());
      for (int j = 0; j < count; ++j) {
        ASSERT_EQ(got_hi[j], want_hi[j]) << "s=" << s << " j=" << j << " n=" << n << " range " << lo << ".." << hi;
        ASSERT_EQ(got_lo[j], want_lo[j]) << "s=" << s << " j=" << j << " n=" << n << " range " << lo << ".." << hi;
      }
      ASSERT_EQ(got_hi[count], 77u) << "wrote past the end";
      ASSERT_EQ(got_lo[count], 77u) << "wrote past the end";
    }
  }
  // Sums beyond 2^64: constant inputs whose errors reach the bounds, 2^31 (INT32_MIN clamped to 0 by an unsigned
  // range) and 2^31 − 1 (INT32_MAX clamped to 0 by the range {0, 0}).
  for (std::size_t n : {std::size_t{5}, std::size_t{17}, std::size_t{4099}, std::size_t{70000}}) {
    for (int32_t v : {kI32Min, kI32Max, kI32Min + 1, -1}) {
      const std::vector<int32_t> x(n, v);
      const std::pair<int32_t, int32_t> kBig[] = {{0, 15}, {0, 0}, {-7, 7}};
      for (const auto& [lo, hi] : kBig) {
        for (int s : {3, 4, 31}) {  // four candidate steps t = s − j ≥ 0 (the kernel's contract)
          uint64_t want_hi[4], want_lo[4], got_hi[4], got_lo[4];
          ref::squared_error_sums(x.data(), n, s, 4, lo, hi, want_hi, want_lo);
          squared_error_sums(x.data(), n, s, 4, lo, hi, got_hi, got_lo);
          for (int j = 0; j < 4; ++j) {
            ASSERT_EQ(got_hi[j], want_hi[j]) << "v=" << v << " n=" << n << " s=" << s << " j=" << j;
            ASSERT_EQ(got_lo[j], want_lo[j]) << "v=" << v << " n=" << n << " s=" << s << " j=" << j;
          }
        }
      }
    }
  }
  const std::vector<int32_t> mins(70000, kI32Min);
  uint64_t h = 0, l = 0;
  squared_error_sums(mins.data(), mins.size(), 1, 1, 0, 15, &h, &l);  // 70000·2^62 = 17500·2^64
  EXPECT_EQ(h, 17500u);
  EXPECT_EQ(l, 0u);
}

TEST_P(EltwiseKernelTarget, ShiftQuantRoundMatchesReference) {
  std::mt19937_64 rng(4);
  const int kSqShifts[] = {-70, -33, -31, -9, -7, -6, -2, -1, 0, 1, 2, 5, 13, 20, 27, 30, 31, 32, 40, 62, 63};
  const int32_t kLimits[] = {1, 3, 7, 15, 31, 63, 127};
  for (std::size_t cols : kCols) {
    for (std::size_t rows : kRows) {
      for (int trial = 0; trial < 3; ++trial) {
        const int32_t limit = kLimits[rng() % std::size(kLimits)];
        const int max_up = quant::int8_headroom(static_cast<uint32_t>(limit));
        // trial 2 allows shifts above 31 (the entry point then runs the reference).
        const auto shift = fill<int>(cols, [&] {
          const int s = kSqShifts[rng() % std::size(kSqShifts)];
          return trial < 2 ? std::min(s, 31) : s;
        });
        const auto up = fill<int>(cols, [&] { return static_cast<int>(rng() % (max_up + 1)); });
        const std::size_t n = rows * cols;
        const auto g = random_values(n, rng);
        const auto draws = fill<uint32_t>(n, [&] { return random_draw(rng); });
        std::vector<int8_t> want_q(n), want_s(n), got_q(n + 4, 0x5A), got_s(n + 4, 0x5A);
        ref::shiftquant_round(g.data(), draws.data(), rows, cols, shift.data(), up.data(), limit, want_q.data(),
                              want_s.data());
        shiftquant_round(g.data(), draws.data(), rows, cols, shift.data(), up.data(), limit, got_q.data(),
                         got_s.data());
        for (std::size_t i = 0; i < n; ++i) {
          ASSERT_EQ(got_q[i], want_q[i]) << rows << "x" << cols << " element " << i << " g=" << g[i]
                                         << " shift=" << shift[i % cols] << " draw=" << draws[i];
          ASSERT_EQ(got_s[i], want_s[i]) << rows << "x" << cols << " element " << i;
        }
        for (std::size_t i = n; i < n + 4; ++i) {
          ASSERT_EQ(got_q[i], 0x5A) << "wrote past the end";
          ASSERT_EQ(got_s[i], 0x5A) << "wrote past the end";
        }
      }
    }
  }
}

// Sums that mostly fit int32 (the kernel's int32-lane blocks), with a block here and there where a shift or the add
// overflows (redone in int64 lanes), over lengths spanning several blocks.
TEST_P(EltwiseKernelTarget, AlignedSumsFittingInt32MatchReference) {
  std::mt19937_64 rng(15);
  for (std::size_t n : {std::size_t{1023}, std::size_t{1024}, std::size_t{1040}, std::size_t{3000}, std::size_t{5000}}) {
    for (int trial = 0; trial < 8; ++trial) {
      const int la = trial % 4 == 0 ? 0 : static_cast<int>(rng() % 8), lb = trial % 4 == 1 ? 0 : static_cast<int>(rng() % 8);
      std::vector<int32_t> a(n), b(n);
      for (std::size_t i = 0; i < n; ++i) {
        a[i] = static_cast<int32_t>(rng() % (1u << 22)) - (1 << 21);
        b[i] = static_cast<int32_t>(rng() % (1u << 22)) - (1 << 21);
      }
      if (trial >= 2) {  // a few elements whose sums leave int32 (or whose shifts do)
        for (int k = 0; k < trial - 1; ++k) {
          const std::size_t i = rng() % n;
          a[i] = random_i32(rng);
          b[i] = (rng() % 2) ? std::numeric_limits<int32_t>::max() : std::numeric_limits<int32_t>::min();
        }
      }
      for (bool relu : {false, true}) {
        std::vector<int32_t> want(n), got(n + 4, 0x5A5A5A5A);
        const SumRange r_want = ref::aligned_sum_range(a.data(), b.data(), n, la, lb, want.data(), relu);
        const SumRange r_got = aligned_sum_range(a.data(), b.data(), n, la, lb, got.data(), relu);
        ASSERT_EQ(r_got.min, r_want.min) << "n=" << n << " trial " << trial;
        ASSERT_EQ(r_got.max, r_want.max) << "n=" << n << " trial " << trial;
        for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], want[i]) << "n=" << n << " element " << i;
        for (std::size_t i = n; i < n + 4; ++i) ASSERT_EQ(got[i], 0x5A5A5A5A) << "wrote past the end";
        const SumRange r_only = aligned_sum_range(a.data(), b.data(), n, la, lb);
        ASSERT_EQ(r_only.min, r_want.min);
        ASSERT_EQ(r_only.max, r_want.max);
      }
    }
  }
}

TEST_P(EltwiseKernelTarget, AlignedSumsMatchReference) {
  std::mt19937_64 rng(5);
  const int kT[] = {0, 0, 0, 1, 1, 2, 5, 31, 32, 33, 40, 62};
  for (std::size_t n : kLengths) {
    for (int trial = 0; trial < 6; ++trial) {
      const int la = trial == 0 ? 0 : static_cast<int>(rng() % 32), lb = trial == 1 ? 0 : static_cast<int>(rng() % 32);
      const int t = kT[rng() % std::size(kT)];
      const auto a = random_values(n, rng);
      const auto b = random_values(n, rng);
      const SumRange r_want = ref::aligned_sum_range(a.data(), b.data(), n, la, lb);
      const SumRange r_got = aligned_sum_range(a.data(), b.data(), n, la, lb);
      ASSERT_EQ(r_got.min, r_want.min) << n;
      ASSERT_EQ(r_got.max, r_want.max) << n;
      for (bool relu : {false, true}) {  // with the t = 0 result stored on the way
        std::vector<int32_t> want0(n), got0(n + 4, 0x5A5A5A5A);
        const SumRange m_want = ref::aligned_sum_range(a.data(), b.data(), n, la, lb, want0.data(), relu);
        const SumRange m_got = aligned_sum_range(a.data(), b.data(), n, la, lb, got0.data(), relu);
        ASSERT_EQ(m_got.min, m_want.min);
        ASSERT_EQ(m_got.max, m_want.max);
        for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(got0[i], want0[i]) << "n=" << n << " element " << i;
        for (std::size_t i = n; i < n + 4; ++i) ASSERT_EQ(got0[i], 0x5A5A5A5A) << "wrote past the end";
        std::vector<int32_t> narrow0(n);
        ref::aligned_sum_narrow(a.data(), b.data(), n, la, lb, 0, narrow0.data(), relu);
        ASSERT_EQ(want0, narrow0);
        std::vector<int32_t> want_t(n), got_t(n + 4, 0x5A5A5A5A);
        ref::aligned_sum_narrow(a.data(), b.data(), n, la, lb, t, want_t.data(), relu);
        aligned_sum_narrow(a.data(), b.data(), n, la, lb, t, got_t.data(), relu);
        std::vector<int32_t> plain_t(n);  // the ReLU variant is max(plain, 0)
        ref::aligned_sum_narrow(a.data(), b.data(), n, la, lb, t, plain_t.data());
        for (std::size_t i = 0; i < n; ++i) {
          ASSERT_EQ(got_t[i], want_t[i]) << "n=" << n << " t=" << t << " relu " << relu << " element " << i;
          ASSERT_EQ(want_t[i], relu ? std::max(plain_t[i], 0) : plain_t[i]);
        }
      }
      std::vector<int32_t> want(n), got(n + 4, 0x5A5A5A5A);
      ref::aligned_sum_narrow(a.data(), b.data(), n, la, lb, t, want.data());
      aligned_sum_narrow(a.data(), b.data(), n, la, lb, t, got.data());
      for (std::size_t i = 0; i < n; ++i)
        ASSERT_EQ(got[i], want[i]) << "n=" << n << " la=" << la << " lb=" << lb << " t=" << t << " element " << i;
      for (std::size_t i = n; i < n + 4; ++i) ASSERT_EQ(got[i], 0x5A5A5A5A) << "wrote past the end";
    }
  }
  for (std::size_t cols : kCols) {
    for (std::size_t rows : kRows) {
      const auto la = fill<int>(cols, [&] { return rng() % 2 ? 0 : static_cast<int>(rng() % 32); });
      const auto lb = fill<int>(cols, [&] { return rng() % 2 ? 0 : static_cast<int>(rng() % 32); });
      const auto t = fill<int>(cols, [&] { return kT[rng() % std::size(kT)]; });
      const auto a = random_values(rows * cols, rng);
      const auto b = random_values(rows * cols, rng);
      std::vector<uint64_t> want_max(cols), got_max(cols + 4, 77);
      ref::aligned_sum_col_max(a.data(), b.data(), rows, cols, la.data(), lb.data(), want_max.data());
      aligned_sum_col_max(a.data(), b.data(), rows, cols, la.data(), lb.data(), got_max.data());
      for (std::size_t c = 0; c < cols; ++c) ASSERT_EQ(got_max[c], want_max[c]) << rows << "x" << cols << " col " << c;
      for (std::size_t c = cols; c < cols + 4; ++c) ASSERT_EQ(got_max[c], 77u) << "wrote past the end";
      std::vector<int32_t> want(rows * cols), got(rows * cols + 4, 0x5A5A5A5A);
      ref::aligned_sum_narrow_cols(a.data(), b.data(), rows, cols, la.data(), lb.data(), t.data(), want.data());
      aligned_sum_narrow_cols(a.data(), b.data(), rows, cols, la.data(), lb.data(), t.data(), got.data());
      for (std::size_t i = 0; i < rows * cols; ++i)
        ASSERT_EQ(got[i], want[i]) << rows << "x" << cols << " element " << i;
      for (std::size_t i = rows * cols; i < rows * cols + 4; ++i) ASSERT_EQ(got[i], 0x5A5A5A5A) << "wrote past the end";
    }
  }
}

TEST_P(EltwiseKernelTarget, ReluAndAddMatchReference) {
  std::mt19937_64 rng(6);
  for (std::size_t n : kLengths) {
    const auto x = random_values(n, rng);
    const auto dy = random_values(n, rng);
    std::vector<int32_t> want(n), got(n + 4, 0x5A5A5A5A);
    const uint64_t m_want = ref::relu_i32(x.data(), n, want.data());
    ASSERT_EQ(relu_i32(x.data(), n, got.data()), m_want);
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], want[i]) << i;
    for (std::size_t i = n; i < n + 4; ++i) ASSERT_EQ(got[i], 0x5A5A5A5A);
    std::vector<int32_t> in_place = x;
    relu_i32(in_place.data(), n, in_place.data());
    ASSERT_EQ(in_place, want);

    ref::relu_backward_i32(dy.data(), x.data(), n, want.data());
    relu_backward_i32(dy.data(), x.data(), n, got.data());
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], want[i]) << i;
    in_place = dy;
    relu_backward_i32(in_place.data(), x.data(), n, in_place.data());
    ASSERT_EQ(in_place, want);
    in_place = dy;  // two outputs, the second in place
    std::vector<int32_t> second(n + 4, 0x5A5A5A5A);
    relu_backward_i32(in_place.data(), x.data(), n, second.data(), in_place.data());
    ASSERT_EQ(in_place, want);
    for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(second[i], want[i]) << i;
    for (std::size_t i = n; i < n + 4; ++i) ASSERT_EQ(second[i], 0x5A5A5A5A);
  }
  // Strided adds: runs of len values, destination runs apart by dst_stride (overlapping when smaller than len).
  const std::size_t kLens[] = {1, 3, 4, 5, 8, 12, 16, 17, 32, 48, 64, 100};
  for (std::size_t len : kLens) {
    for (std::size_t runs : {std::size_t{0}, std::size_t{1}, std::size_t{2}, std::size_t{7}, std::size_t{28}}) {
      for (std::size_t dst_stride : {len, 2 * len, len + 3, len > 4 ? len / 3 : std::size_t{1}}) {
        const std::size_t src_stride = len + rng() % 20;
        const std::size_t dst_n = runs == 0 ? 0 : (runs - 1) * dst_stride + len;
        const auto src = fill<int32_t>(runs * src_stride, [&] { return random_i32(rng) / 4; });
        auto want = fill<int32_t>(dst_n, [&] { return random_i32(rng) / 4; });
        std::vector<int32_t> got = want;
        got.resize(dst_n + 4, 0x5A5A5A5A);
        ref::add_strided_i32(want.data(), dst_stride, src.data(), src_stride, runs, len);
        add_strided_i32(got.data(), dst_stride, src.data(), src_stride, runs, len);
        for (std::size_t i = 0; i < dst_n; ++i)
          ASSERT_EQ(got[i], want[i]) << "len " << len << " runs " << runs << " " << i;
        for (std::size_t i = dst_n; i < dst_n + 4; ++i) ASSERT_EQ(got[i], 0x5A5A5A5A) << "wrote past the end";
      }
    }
  }
}

TEST_P(EltwiseKernelTarget, GatherSumMatchesReference) {
  std::mt19937_64 rng(8);
  for (std::size_t c : {std::size_t{1}, std::size_t{3}, std::size_t{4}, std::size_t{8}, std::size_t{16},
                        std::size_t{17}, std::size_t{32}, std::size_t{64}}) {
    for (std::size_t nsrc : {std::size_t{0}, std::size_t{1}, std::size_t{3}}) {
      const std::size_t w = 1 + rng() % 30, max_taps = 1 + rng() % 4, plane = 40 * c + 7;
      std::vector<std::vector<int32_t>> planes(nsrc);
      std::vector<const int32_t*> src(nsrc);
      for (std::size_t r = 0; r < nsrc; ++r) {
        planes[r] = fill<int32_t>(plane, [&] { return random_i32(rng) / 16; });
        src[r] = planes[r].data();
      }
      const auto count = fill<uint32_t>(w, [&] { return static_cast<uint32_t>(rng() % (max_taps + 1)); });
      const auto offset =
          fill<std::size_t>(w * max_taps, [&] { return static_cast<std::size_t>(rng() % (plane - c + 1)); });
      for (bool accumulate : {false, true}) {
        auto want = fill<int32_t>(w * c, [&] { return random_i32(rng) / 16; });
        std::vector<int32_t> got = want;
        got.resize(w * c + 4, 0x5A5A5A5A);
        ref::gather_sum_i32(src.data(), nsrc, offset.data(), count.data(), max_taps, w, c, accumulate, want.data());
        gather_sum_i32(src.data(), nsrc, offset.data(), count.data(), max_taps, w, c, accumulate, got.data());
        for (std::size_t i = 0; i < w * c; ++i) ASSERT_EQ(got[i], want[i]) << "c=" << c << " nsrc=" << nsrc << " " << i;
        for (std::size_t i = w * c; i < w * c + 4; ++i) ASSERT_EQ(got[i], 0x5A5A5A5A) << "wrote past the end";
      }
    }
  }
}

TEST_P(EltwiseKernelTarget, MaxPoolMatchesReference) {
  std::mt19937_64 rng(7);
  for (std::size_t n : kLengths) {
    for (std::size_t count : {std::size_t{1}, std::size_t{2}, std::size_t{4}, std::size_t{9}}) {
      // Few distinct values, so ties are frequent.
      std::vector<std::vector<int32_t>> planes(count);
      for (auto& p : planes)
        p = fill<int32_t>(n, [&] { return rng() % 3 == 0 ? random_i32(rng) : int32_t(rng() % 5) - 2; });
      std::vector<const int32_t*> src(count);
      std::vector<uint16_t> pos(count);
      for (std::size_t j = 0; j < count; ++j) {
        src[j] = planes[j].data();
        pos[j] = static_cast<uint16_t>(3 * j + 1);
      }
      std::vector<int32_t> want_y(n), got_y(n + 4, 0x5A5A5A5A);
      std::vector<uint16_t> want_a(n), got_a(n + 4, 0x5A5A);
      ref::max_argmax_i32(src.data(), pos.data(), count, n, want_y.data(), want_a.data());
      max_argmax_i32(src.data(), pos.data(), count, n, got_y.data(), got_a.data());
      for (std::size_t e = 0; e < n; ++e) {
        ASSERT_EQ(got_y[e], want_y[e]) << n << " " << count << " " << e;
        ASSERT_EQ(got_a[e], want_a[e]) << n << " " << count << " " << e;
      }
      for (std::size_t e = n; e < n + 4; ++e) ASSERT_TRUE(got_y[e] == 0x5A5A5A5A && got_a[e] == 0x5A5A);

      const auto dy = random_values(n, rng);
      const auto arg = fill<uint16_t>(n, [&] { return static_cast<uint16_t>(rng() % (count + 1)); });
      std::vector<std::vector<int32_t>> want(count, std::vector<int32_t>(n)),
          got(count, std::vector<int32_t>(n + 4, 7));
      std::vector<int32_t*> wp(count), gp(count);
      for (std::size_t j = 0; j < count; ++j) {
        wp[j] = want[j].data();
        gp[j] = got[j].data();
      }
      ref::unpool_max_i32(dy.data(), arg.data(), n, wp.data(), count);
      unpool_max_i32(dy.data(), arg.data(), n, gp.data(), count);
      for (std::size_t j = 0; j < count; ++j) {
        for (std::size_t e = 0; e < n; ++e) ASSERT_EQ(got[j][e], want[j][e]) << n << " " << j << " " << e;
        for (std::size_t e = n; e < n + 4; ++e) ASSERT_EQ(got[j][e], 7) << "wrote past the end";
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, EltwiseKernelTarget, ::testing::ValuesIn(target_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

// ---- The references against the formulas of qtrain/quant/pow2.h, wherever those are defined behaviour.

TEST(EltwiseKernelReference, MatchesThePow2Formulas) {
  std::mt19937_64 rng(9);
  for (int trial = 0; trial < 20000; ++trial) {
    const int32_t x = trial % 3 == 0 ? tie_i32(rng) : random_i32(rng);
    const auto& [lo, hi] = kRanges[rng() % std::size(kRanges)];
    // Left shifts up to 31 keep the original's int64 product defined.
    const int s = static_cast<int>(rng() % 100) - 31;
    int8_t got = 0;
    ref::requantize_i8(&x, 1, s, lo, hi, &got);
    ASSERT_EQ(got, static_cast<int8_t>(std::clamp<int64_t>(quant::shift_round_even(x, s), lo, hi)))
        << "x=" << x << " s=" << s;

    const uint32_t r = random_draw(rng);
    const int32_t limit = 7;
    const int up = static_cast<int>(rng() % 5);
    int8_t q = 0, sh = 0;
    ref::shiftquant_round(&x, &r, 1, 1, &s, &up, limit, &q, &sh);
    const int64_t want = std::clamp<int64_t>(quant::shift_round_stochastic(x, s, r), -limit, limit);
    ASSERT_EQ(q, want) << "x=" << x << " s=" << s << " r=" << r;
    ASSERT_EQ(sh, static_cast<int8_t>(want * (1 << up)));

    const int32_t y = random_i32(rng);
    const int la = static_cast<int>(rng() % 32), lb = static_cast<int>(rng() % 32), t = static_cast<int>(rng() % 63);
    const int64_t sum = quant::shift_round_even(x, -la) + quant::shift_round_even(y, -lb);
    int32_t out = 0;
    ref::aligned_sum_narrow(&x, &y, 1, la, lb, t, &out);
    ASSERT_EQ(out, quant::saturate_i32(quant::shift_round_even(sum, t)));
    ASSERT_EQ(ref::aligned_sum_range(&x, &y, 1, la, lb).max_abs(), static_cast<uint64_t>(sum < 0 ? -sum : sum));

    // One squared error (t ≤ 40 keeps the original's product q·2^t defined): below 2^64, so the high word is 0.
    const int te = static_cast<int>(rng() % 41);
    const int64_t qe = std::clamp<int64_t>(quant::shift_round_even(x, te), lo, hi);
    const int64_t de = x - qe * (int64_t{1} << te);
    uint64_t sq_hi = 1, sq_lo = 1;
    ref::squared_error_sums(&x, 1, te, 1, lo, hi, &sq_hi, &sq_lo);
    ASSERT_EQ(sq_hi, 0u);
    ASSERT_EQ(sq_lo, static_cast<uint64_t>(de) * static_cast<uint64_t>(de)) << "x=" << x << " t=" << te;
  }
}

}  // namespace
}  // namespace qtrain::kernels
