// The softmax's 2^(j/256) table (qtrain/kernels/exp_table.h) is correctly rounded, proved with integers:
// T = round(2^(30 + j/256)) exactly when (T − 1/2)^256 < 2^(30·256 + j) < (T + 1/2)^256, i.e.
// (2T − 1)^256 < 2^(7936 + j) < (2T + 1)^256 (no tie is possible: 2^(j/256) is irrational for 0 < j < 256).
// Also against long double exp2l, as the table was first computed (with exp2 in double).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "qtrain/kernels/exp_table.h"

namespace qtrain {
namespace {

using Big = std::vector<uint32_t>;  // little-endian base-2^32 digits, no leading zero digit

Big mul(const Big& a, const Big& b) {
  Big out(a.size() + b.size(), 0);
  for (std::size_t i = 0; i < a.size(); ++i) {
    uint64_t carry = 0;
    for (std::size_t j = 0; j < b.size(); ++j) {
      const uint64_t cur = uint64_t{a[i]} * b[j] + out[i + j] + carry;  // < 2^64
      out[i + j] = static_cast<uint32_t>(cur);
      carry = cur >> 32;
    }
    out[i + b.size()] = static_cast<uint32_t>(carry);
  }
  while (!out.empty() && out.back() == 0) out.pop_back();
  return out;
}

Big pow256(uint64_t v) {
  Big x;
  for (; v != 0; v >>= 32) x.push_back(static_cast<uint32_t>(v));
  for (int i = 0; i < 8; ++i) x = mul(x, x);
  return x;
}

Big pow2(unsigned k) {
  Big x(k / 32 + 1, 0);
  x[k / 32] = 1u << (k % 32);
  return x;
}

// −1, 0, 1 as a <, =, > b.
int compare(const Big& a, const Big& b) {
  if (a.size() != b.size()) return a.size() < b.size() ? -1 : 1;
  for (std::size_t i = a.size(); i-- > 0;)
    if (a[i] != b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}

TEST(Exp2Table, EveryEntryIsCorrectlyRounded) {
  ASSERT_EQ(kExp2Q30.size(), 257u);
  EXPECT_EQ(kExp2Q30[0], int64_t{1} << 30);
  EXPECT_EQ(kExp2Q30[256], int64_t{1} << 31);
  for (unsigned j = 1; j < 256; ++j) {
    const auto t = static_cast<uint64_t>(kExp2Q30[j]);
    const Big target = pow2(7936 + j);
    EXPECT_LT(compare(pow256(2 * t - 1), target), 0) << "entry " << j << " = " << t << " is too large";
    EXPECT_GT(compare(pow256(2 * t + 1), target), 0) << "entry " << j << " = " << t << " is too small";
  }
}

TEST(Exp2Table, EqualsLongDoubleExp2) {
  for (int j = 0; j <= 256; ++j)
    EXPECT_EQ(kExp2Q30[j], std::llround(std::ldexp(std::exp2(static_cast<long double>(j) / 256), 30))) << j;
}

}  // namespace
}  // namespace qtrain
