// Fixed-point scalars m·2^e (int64 mantissa |m| < 2^62, power-of-two exponent) for the per-channel statistics of
// the integer data plane: a normalization's means, σ₁, the reciprocal ρ and the backward's means are computed with
// integer adds, multiplies, one division and one square root per channel, never in floating point. Roundings are to
// nearest even (qtrain/kernels/rounding.h); each operation keeps ≥ 30 significant bits. Floats enter only as
// control-plane constants (fx_const: ε, momentum, √(π/2)), turned into dyadic numbers once.
#pragma once

#include <cstdint>

#include "qtrain/kernels/rounding.h"

namespace qtrain::quant {

struct Fx {
  int64_t m = 0;
  int e = 0;
};

// The small operations are inline: a layer norm runs a few dozen of them per row (per token), where calls would
// cost more than the arithmetic.
inline int fx_bits(const Fx& a) { return kernels::bit_length(kernels::magnitude(a.m)); }
// |a| < 2^fx_top(a).
inline int fx_top(const Fx& a) { return a.e + fx_bits(a); }
// At most b significant bits; never shifts left.
inline Fx fx_narrow(Fx a, int b) {
  const int s = fx_bits(a) - b;
  if (s <= 0) return a;
  a.m = kernels::shift_round_even(a.m, s);
  a.e += s;
  if (fx_bits(a) > b) {  // the rounding carried into bit b: m = ±2^b, halving it is exact
    a.m /= 2;
    ++a.e;
  }
  return a;
}
// Exactly b significant bits (0 stays 0).
inline Fx fx_normalize(Fx a, int b) {
  if (a.m == 0) return Fx{};
  a = fx_narrow(a, b);
  const int s = b - fx_bits(a);
  a.m *= int64_t{1} << s;
  a.e -= s;
  return a;
}
inline Fx fx_neg(Fx a) {
  a.m = -a.m;
  return a;
}
inline Fx fx_mul(Fx a, Fx b) {
  a = fx_narrow(a, 31);
  b = fx_narrow(b, 31);
  return {a.m * b.m, a.e + b.e};
}
inline Fx fx_add(Fx a, Fx b) {
  if (a.m == 0) return b;
  if (b.m == 0) return a;
  a = fx_normalize(a, 61);
  b = fx_normalize(b, 61);
  const int e = a.e > b.e ? a.e : b.e;
  return {kernels::shift_round_even(a.m, e - a.e) + kernels::shift_round_even(b.m, e - b.e), e};
}
inline Fx fx_sub(Fx a, Fx b) { return fx_add(a, fx_neg(b)); }
// a / b for b ≠ 0: one integer division of a 62-bit numerator by a 31-bit denominator (a 31–32-bit quotient).
Fx fx_div(Fx a, Fx b);
// fx_div(a, b) for one b and many a, exactly: the quotient of the 62-bit numerator by b's 31-bit mantissa D from
// a precomputed reciprocal R = floor(2^64 / D) (D ≥ 2^30: R < 2^35) instead of a division. For x < 2^63,
// q' = floor(x·R / 2^64) satisfies q − 1 ≤ q' ≤ q (x·R/2^64 > x/D − x/2^64 > x/D − 1), and one comparison of the
// remainder with D corrects it. The layer norm divides every row's sums by its one feature count.
class FxDivisor {
 public:
  explicit FxDivisor(Fx b);
  Fx operator()(Fx a) const;

 private:
  Fx b_, den_;      // b and its mantissa at 31 bits
  uint64_t r_ = 0;  // floor(2^64 / den_.m); 0: fx_div itself
};
// floor(sqrt(n)), bit by bit.
uint64_t isqrt(uint64_t n);
// sqrt(a) for a ≥ 0, rounded to nearest: the mantissa is brought to 61–62 bits with an even exponent.
Fx fx_sqrt(Fx a);
// round(a / 2^e) to nearest even, saturated at ±2^62.
inline int64_t fx_to_int(const Fx& a, int e) { return kernels::shift_round_even_sat(a.m, e - a.e); }
// A control-plane constant as a dyadic number (30-bit mantissa).
Fx fx_const(double x);
// 1 − x for a constant x = m·2^−s in [0, 1]: exact for s ≤ 62; a finer x is first rounded to 2^−62.
Fx fx_one_minus(const Fx& x);

}  // namespace qtrain::quant
