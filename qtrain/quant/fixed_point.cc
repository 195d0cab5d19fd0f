#include "qtrain/quant/fixed_point.h"

#include <stdexcept>

#include "qtrain/kernels/rounding.h"
#include "qtrain/quant/pow2.h"

namespace qtrain::quant {

using kernels::magnitude;

// a / b for b ≠ 0: one integer division of a 62-bit numerator by a 31-bit denominator (a 31–32-bit quotient).
Fx fx_div(Fx a, Fx b) {
  if (a.m == 0) return Fx{};
  if (b.m == 0) throw std::logic_error("normalization: division by zero");
  const bool negative = (a.m < 0) != (b.m < 0);
  const Fx num = fx_normalize({static_cast<int64_t>(magnitude(a.m)), a.e}, 62);
  const Fx den = fx_normalize({static_cast<int64_t>(magnitude(b.m)), b.e}, 31);
  const int64_t q = (num.m + den.m / 2) / den.m;
  return {negative ? -q : q, num.e - den.e};
}

namespace {
__extension__ using U128 = unsigned __int128;  // GCC/Clang extension: the reciprocal's 64×35-bit product
}  // namespace

FxDivisor::FxDivisor(Fx b) : b_(b) {
  if (b.m == 0) throw std::logic_error("normalization: division by zero");
  den_ = fx_normalize({static_cast<int64_t>(magnitude(b.m)), b.e}, 31);
  // b.m = INT64_MIN (outside the |m| < 2^62 contract) leaves a negative mantissa: r_ = 0 sends every a to fx_div.
  if (den_.m > 0) r_ = static_cast<uint64_t>((U128{1} << 64) / static_cast<uint64_t>(den_.m));
}

Fx FxDivisor::operator()(Fx a) const {
  if (a.m == 0) return Fx{};
  const Fx num = fx_normalize({static_cast<int64_t>(magnitude(a.m)), a.e}, 62);
  if (num.m < 0 || r_ == 0) return fx_div(a, b_);  // a.m or b.m = INT64_MIN: fx_div's own path
  const bool negative = (a.m < 0) != (b_.m < 0);
  const auto d = static_cast<uint64_t>(den_.m);
  const uint64_t x = static_cast<uint64_t>(num.m) + d / 2;  // < 2^62 + 2^30
  auto q = static_cast<uint64_t>((U128{x} * r_) >> 64);
  if (x - q * d >= d) ++q;
  const auto qi = static_cast<int64_t>(q);
  return {negative ? -qi : qi, num.e - den_.e};
}

// floor(sqrt(n)), bit by bit.
uint64_t isqrt(uint64_t n) {
  uint64_t r = 0;
  for (uint64_t bit = uint64_t{1} << 62; bit != 0; bit >>= 2) {
    if (n >= r + bit) {
      n -= r + bit;
      r = (r >> 1) + bit;
    } else {
      r >>= 1;
    }
  }
  return r;
}

// sqrt(a) for a ≥ 0, rounded to nearest: the mantissa is brought to 61–62 bits with an even exponent.
Fx fx_sqrt(Fx a) {
  if (a.m <= 0) return Fx{};
  Fx n = fx_normalize(a, 62);
  if (n.e % 2 != 0) n = fx_normalize(a, 61);
  const auto v = static_cast<uint64_t>(n.m);
  uint64_t r = isqrt(v);
  if (v - r * r > r) ++r;
  return {static_cast<int64_t>(r), n.e / 2};
}

// A control-plane constant as a dyadic number (30-bit mantissa).
Fx fx_const(double x) {
  const Dyadic d = to_dyadic(x, 30);
  return {d.mantissa, -d.shift};
}

// 1 − x for a constant x = m·2^−s in [0, 1]: exact for s ≤ 62; a finer x is first rounded to 2^−62.
Fx fx_one_minus(const Fx& x) {
  if (x.m == 0) return {1, 0};
  if (-x.e <= 62) return {(int64_t{1} << -x.e) - x.m, x.e};
  return {(int64_t{1} << 62) - shift_round_even(x.m, -x.e - 62), -62};
}

}  // namespace qtrain::quant
