// qtrain/quant/fixed_point.h: FxDivisor (a precomputed reciprocal) gives exactly fx_div's quotient for every
// numerator and denominator — the layer norm's per-row means depend on it bit for bit.
#include <gtest/gtest.h>

#include <cstdint>
#include <iterator>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "qtrain/quant/fixed_point.h"

namespace qtrain::quant {
namespace {

// Mantissas of every bit length and sign, with the limits and powers of two (exact quotients, R's rounding).
int64_t mantissa(std::mt19937_64& rng) {
  switch (rng() % 6) {
    case 0: {
      const int64_t special[] = {1,
                                 -1,
                                 2,
                                 3,
                                 7,
                                 64,
                                 65,
                                 768,
                                 (int64_t{1} << 30),
                                 (int64_t{1} << 31) - 1,
                                 (int64_t{1} << 61),
                                 (int64_t{1} << 62) - 1,
                                 -(int64_t{1} << 62) + 1,
                                 std::numeric_limits<int64_t>::max(),
                                 std::numeric_limits<int64_t>::min()};
      return special[rng() % std::size(special)];
    }
    case 1:
      return int64_t{1} << (rng() % 63);
    default: {
      const int bits = 1 + static_cast<int>(rng() % 63);
      const auto m = static_cast<int64_t>(rng() >> (64 - bits));
      return (rng() & 1) ? -m : m;
    }
  }
}

void expect_same(const Fx& a, const Fx& b, const FxDivisor& div) {
  const Fx want = fx_div(a, b), got = div(a);
  ASSERT_EQ(got.m, want.m) << a.m << "·2^" << a.e << " / " << b.m << "·2^" << b.e;
  ASSERT_EQ(got.e, want.e) << a.m << "·2^" << a.e << " / " << b.m << "·2^" << b.e;
}

TEST(FxDivisor, MatchesFxDiv) {
  std::mt19937_64 rng(5);
  for (int i = 0; i < 2000; ++i) {
    const Fx b{mantissa(rng), static_cast<int>(rng() % 41) - 20};
    if (b.m == 0) continue;
    const FxDivisor div(b);
    for (int j = 0; j < 200; ++j) expect_same({mantissa(rng), static_cast<int>(rng() % 41) - 20}, b, div);
    expect_same({0, 3}, b, div);
  }
  // The layer norm's denominators (feature counts) against numerators next to multiples of them.
  for (int64_t f : {1, 7, 16, 48, 63, 64, 65, 96, 768, 65536}) {
    const FxDivisor div({f, 0});
    for (int64_t k = 1; k < 3000; ++k)
      for (int64_t off : {-1, 0, 1}) expect_same({k * f + off, 0}, {f, 0}, div);
  }
  EXPECT_THROW(FxDivisor({0, 0}), std::logic_error);
}

}  // namespace
}  // namespace qtrain::quant
