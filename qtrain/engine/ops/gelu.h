// Integer GELU by table lookup on the requantized input.
//
// Float formula: y = GELU(x) = x·Φ(x), Φ the standard normal CDF; dy/dx = GELU'(x) = Φ(x) + x·φ(x) (−0.17..1.13).
//
// Forward. x (int32 with one exponent per tensor or per column, as a Linear output has; or int8) is requantized to
// x_q, signed `bits` (±(2^(bits−1) − 1)), one power-of-two exponent e for the tensor: the covering scale (the finest
// step that clips nothing), nearest-even rounding (quant::quantize_to_tensor). Then
//   y_q = T_e[x_q],  T_e[q] = round(GELU(q·2^e) / 2^(e−7)) = round(128·q·Φ(q·2^e))     (|T| ≤ 127·128 < 2^14)
// y is int32 with the one exponent e − 7: for the quantized input the error is ≤ ½ unit of y (one rounding).
// Backward (straight-through for the input quantization):
//   D_e[q] = round(2^16·GELU'(q·2^e))  (Q16, |D| ≤ 74000 < 2^17);  p = dy·D_e[x_q] in int64 (|p| < 2^48),
//   dx = R_even(p, t) at exponent e_dy − 16 + t, t the smallest shift ≥ 0 with every |dx| ≤ 2^31 − 1.
// Tables: one pair (T, D) per (bits, e), built on first use and cached (thread-safe). Entries come from a 128-bit
// fixed-point series (gelu.cc), not from the C library, so they are identical everywhere.
#pragma once

#include <cstdint>
#include <vector>

#include "qtrain/engine/core/autograd.h"

namespace qtrain {

struct GeluConfig {
  int bits = 8;           // input requantized to `bits` signed, 2..8
  void validate() const;  // UsageError naming gelu.bits and the range 2..8
};

// The tables of one (bits, e): index q + (2^(bits−1) − 1) for q in ±(2^(bits−1) − 1).
struct GeluTables {
  std::vector<int32_t> value;  // T_e, at exponent e − 7
  std::vector<int32_t> slope;  // D_e, Q16
};
inline constexpr int kGeluOutFrac = 7;     // y's exponent is e − kGeluOutFrac
inline constexpr int kGeluSlopeFrac = 16;  // D in Q16
const GeluTables& gelu_tables(int bits, int e);

// The exact table entries (for tests): round(128·q·Φ(q·2^e)) and round(2^16·GELU'(q·2^e)), |q| ≤ 127.
int32_t gelu_value_entry(int q, int e);
int32_t gelu_slope_entry(int q, int e);

VarPtr gelu(const StepContext& ctx, const GeluConfig& cfg, const VarPtr& x);

}  // namespace qtrain
