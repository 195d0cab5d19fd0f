// The scalar rounding rules of the data plane, one definition for kernels/ (the SIMD kernels' references and
// tails) and quant/ (the quantizers), so the two cannot drift.
//
// A data-plane value is q·2^e. Moving it to a coarser exponent e + s (s > 0) divides q by 2^s, and the division
// must round; `>>` alone floors, a bias of −½ unit that accumulates over thousands of steps. Three roundings:
//   nearest-even   R_even(x, s)     = x / 2^s to nearest, ties to the even neighbour
//                                     (forward weights and activations, narrowing of exact sums)
//   stochastic     R_stoch(x, s, r) = floor((x + u) / 2^s), u = the 32-bit draw r placed as the top fraction bits
//                                     (gradients, weight updates: unbiased, E[R_stoch·2^s] = x up to 2^−32 ulp)
//   half up        R_up(x, s)       = floor(x / 2^s + ½), ties toward +∞
//                                     (the normalizations' 16-bit working values and output stages, whose
//                                     +½-unit bias at exact ties is far below their precision)
// A shift s ≤ 0 is a left shift: x·2^−s.
//
// Domain. Every function below is defined for every int64 x and every int s (k ≥ 0 for the two left shifts),
// with no undefined behaviour:
//   * s ≥ 1: the result is the exact rounding of the rational x / 2^s (no intermediate overflows: the identities
//     next to each function split x into its quotient and remainder first). For s ≥ 64 (|x / 2^s| ≤ ½)
//     R_even and R_up give 0; R_stoch rounds up with probability frac(x / 2^s), to within 2^−32, at any s.
//   * s ≤ 0: x·2^−s modulo 2^64 (0 for −s ≥ 64). Exact whenever the product fits int64; callers that cannot
//     bound it use shift_left_sat / shift_round_even_sat, which saturate at ±2^62 instead.
// The SIMD kernels implement the same functions in int32 or int64 lanes on the ranges their headers state and
// fall back to these outside them; their tests hold them to these bit for bit.
#pragma once

#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>

namespace qtrain::kernels {

// |x| as an unsigned magnitude, defined for INT64_MIN (2^63); int32 arguments widen exactly.
constexpr uint64_t magnitude(int64_t x) { return x < 0 ? uint64_t{0} - static_cast<uint64_t>(x) : uint64_t(x); }

// Number of bits needed to hold x (0 for 0).
constexpr int bit_length(uint64_t x) { return std::bit_width(x); }

// Saturate to the int32 range.
constexpr int32_t saturate_i32(int64_t x) {
  return static_cast<int32_t>(
      std::clamp<int64_t>(x, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()));
}

// The saturation bound of shift_left_sat: 2^62 leaves one octave of headroom, so a saturated value plus an
// in-range one still fits int64.
inline constexpr int64_t kShiftSatLimit = int64_t{1} << 62;

// x·2^k modulo 2^64 for k ≥ 0 (0 for k ≥ 64): the exact product whenever it fits int64.
constexpr int64_t shift_left_wrap(int64_t x, int k) {
  return k >= 64 ? 0 : static_cast<int64_t>(static_cast<uint64_t>(x) << k);
}

namespace rounding_detail {
// x·2^−s modulo 2^64 for s ≤ 0 (−s is not formed for s ≤ −64, so INT_MIN is fine).
constexpr int64_t left_of(int64_t x, int s) { return s <= -64 ? 0 : shift_left_wrap(x, -s); }
}  // namespace rounding_detail

// x·2^k clamped to [−2^62, 2^62], k ≥ 0, on the exact product (no wrap for any x or k; |x| > 2^62 clamps even
// at k = 0).
constexpr int64_t shift_left_sat(int64_t x, int k) {
  if (x == 0) return 0;
  if (k >= 62 || bit_length(magnitude(x)) + k > 62) return x < 0 ? -kShiftSatLimit : kShiftSatLimit;
  return shift_left_wrap(x, k);  // |x·2^k| < 2^62
}

// R_even(x, s). For 1 ≤ s ≤ 63: q = floor(x / 2^s) (an arithmetic shift), r = x mod 2^s ∈ [0, 2^s), and the
// result is q + [r + (q & 1) > 2^(s−1)]: a remainder above half rounds up, exactly half rounds up only to leave
// an even quotient. q + 1 ≤ 2^62 and r + 1 ≤ 2^63 (unsigned), so nothing overflows.
constexpr int64_t shift_round_even(int64_t x, int s) {
  if (s <= 0) return rounding_detail::left_of(x, s);
  if (s >= 64) return 0;  // |x / 2^s| ≤ ½, and −½ (x = INT64_MIN, s = 64) is a tie to the even 0
  const int64_t q = x >> s;
  const uint64_t r = static_cast<uint64_t>(x) & ((uint64_t{1} << s) - 1);
  const uint64_t half = uint64_t{1} << (s - 1);
  return q + (r + static_cast<uint64_t>(q & 1) > half ? 1 : 0);
}

// R_even for s ≥ 0; for s < 0 the left shift saturates at ±2^62 instead of wrapping (values whose exponents may be
// arbitrarily far apart: a bias far coarser than a layer's output, after a diverged run or from a hostile file).
constexpr int64_t shift_round_even_sat(int64_t x, int s) {
  return s >= 0 ? shift_round_even(x, s) : shift_left_sat(x, s <= -62 ? 62 : -s);  // every k ≥ 62 saturates
}

// R_up(x, s) = floor(x / 2^s + ½) = floor(x / 2^s) + bit s−1 of x, for 1 ≤ s ≤ 63 (two shifts, no add of ½ that
// could overflow).
constexpr int64_t shift_round_half_up(int64_t x, int s) {
  if (s <= 0) return rounding_detail::left_of(x, s);
  if (s >= 64) return 0;  // x / 2^s ∈ [−½, ½)
  return (x >> s) + ((x >> (s - 1)) & 1);
}

// R_stoch(x, s, r) = floor((x + u) / 2^s) with u = r·2^(s−32) (the draw as the top 32 fraction bits; for s < 32
// its top s bits, r >> (32 − s)). Computed without overflow:
//   s ≤ 32: floor(x / 2^s) + ((x mod 2^s) + (r >> (32 − s))) >> s   (the inner sum < 2^33)
//   s > 32: (floor(x / 2^(s−32)) + r) >> 32                        (x's bits below the draw cannot carry)
// P(round up) = frac(x / 2^s) to within 2^−32, whatever s.
constexpr int64_t shift_round_stochastic(int64_t x, int s, uint32_t r) {
  if (s <= 0) return rounding_detail::left_of(x, s);
  if (s <= 32) {
    const uint64_t low = static_cast<uint64_t>(x) & ((uint64_t{1} << s) - 1);
    return (x >> s) + static_cast<int64_t>((low + (uint64_t{r} >> (32 - s))) >> s);
  }
  const int64_t high = s - 32 >= 64 ? (x < 0 ? -1 : 0) : x >> (s - 32);
  return (high + int64_t{r}) >> 32;
}

}  // namespace qtrain::kernels
