// Fixed-point scalars m·2^e (int64 mantissa |m| < 2^62, power-of-two exponent) for the per-channel statistics of
// the integer data plane: a normalization's means, σ₁, the reciprocal ρ and the backward's means are computed with
// integer adds, multiplies, one division and one square root per channel, never in floating point. Roundings are to
// nearest even (qtrain/kernels/rounding.h); each operation keeps ≥ 30 significant bits. Floats enter only as
// control-plane constants (fx_const: ε, momentum, √(π/2)), turned into dyadic numbers once.
#pragma once

#include <cstdint>

namespace qtrain::quant {

struct Fx {
  int64_t m = 0;
  int e = 0;
};

int fx_bits(const Fx& a);
// |a| < 2^fx_top(a).
int fx_top(const Fx& a);
// At most b significant bits; never shifts left.
Fx fx_narrow(Fx a, int b);
// Exactly b significant bits (0 stays 0).
Fx fx_normalize(Fx a, int b);
Fx fx_neg(Fx a);
Fx fx_mul(Fx a, Fx b);
Fx fx_add(Fx a, Fx b);
Fx fx_sub(Fx a, Fx b);
// a / b for b ≠ 0: one integer division of a 62-bit numerator by a 31-bit denominator (a 31–32-bit quotient).
Fx fx_div(Fx a, Fx b);
// floor(sqrt(n)), bit by bit.
uint64_t isqrt(uint64_t n);
// sqrt(a) for a ≥ 0, rounded to nearest: the mantissa is brought to 61–62 bits with an even exponent.
Fx fx_sqrt(Fx a);
// round(a / 2^e) to nearest even, saturated at ±2^62.
int64_t fx_to_int(const Fx& a, int e);
// A control-plane constant as a dyadic number (30-bit mantissa).
Fx fx_const(double x);
// 1 − x for a constant x = m·2^−s in [0, 1]: exact for s ≤ 62; a finer x is first rounded to 2^−62.
Fx fx_one_minus(const Fx& x);

}  // namespace qtrain::quant
