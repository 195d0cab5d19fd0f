// Power-of-two (and dyadic) fixed-point arithmetic: the rounding primitives every quantizer is built from.
//
// A data-plane value is q·2^e. Moving it to a coarser exponent e' > e is a right shift by s = e' − e, and the
// shift must round: floor (what `>>` does) is biased by −½ ulp on average, which accumulates over thousands of
// training steps. Two roundings are provided:
//   nearest-even   q' = round(q / 2^s), ties to the even neighbour       (forward weights and activations)
//   stochastic     q' = floor((q + r) / 2^s), r uniform in [0, 2^s)      (gradients, weight updates)
// Stochastic rounding is unbiased: P(round up) = frac(q / 2^s), so E[q'·2^s] = q exactly. Its random bits
// come from a counter-based generator (rng.h), so results do not depend on threads or call order.
// A negative shift is an exact left shift.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qtrain/kernels/rounding.h"
#include "qtrain/quant/rng.h"

namespace qtrain::kernels {
class ThreadPool;
}  // namespace qtrain::kernels

namespace qtrain::quant {

enum class Rounding { kNearestEven, kStochastic };

// How a quantizer picks its power-of-two step 2^s.
//   kCover     the finest step that covers max|x|: nothing is clipped (the plain scheme)
//   kMinError  the covering step or one of the kMinErrorOctaves finer ones, whichever has the least squared error
//              over the data: at 4 bits a few outliers otherwise set a step 2-4x coarser than the bulk of the
//              values needs (a bell-shaped weight row's max is ~3.5σ; the error-optimal clip is ~2.5σ)
enum class ScaleRule { kCover, kMinError };
inline constexpr int kMinErrorOctaves = 3;

// The rounding shifts (shift_round_even, shift_round_even_sat, shift_round_stochastic, defined for every int64 x
// and shift) and the integer helpers live in qtrain/kernels/rounding.h, one definition for the kernels' references
// and the quantizers.
using kernels::bit_length;
using kernels::saturate_i32;
using kernels::shift_round_even;
using kernels::shift_round_even_sat;
using kernels::shift_round_stochastic;

// The integer range of a b-bit quantized value held in an int8 carrier.
struct IntRange {
  int32_t lo, hi;
};
// Symmetric signed range ±(2^(b−1) − 1), b in 2..8. No −2^(b−1): keeps negation exact and the range symmetric.
IntRange signed_range(int bits);
// Unsigned range [0, 2^b − 1] for non-negative data (after ReLU), capped at 127 by the int8 carrier
// (so 8-bit unsigned activations use 7 magnitude bits).
IntRange unsigned_range(int bits);

// Smallest shift s (possibly negative) with maxabs ≤ limit·2^s: the finest power-of-two step that still
// represents every value without clipping. maxabs must be > 0, limit ≥ 1.
int covering_shift(uint64_t maxabs, uint32_t limit);

// The largest t ≥ 0 with limit·2^t ≤ 127: how far a value of magnitude ≤ limit may be shifted left and still
// fit the int8 carrier (ShiftQuant's group budget).
int int8_headroom(uint32_t limit);

// A control-plane scalar as a dyadic number m·2^−s (m a positive 16-bit mantissa unless x is tiny).
struct Dyadic {
  int64_t mantissa = 0;
  int shift = 0;  // value = mantissa / 2^shift
  double value() const;
};
Dyadic to_dyadic(double x, int mantissa_bits = 16);

// Quantize n int32 values, all with exponent `e_in`, to one exponent for the whole tensor: returns e_out and writes
// out[i] = round(x[i] / 2^(e_out − e_in)) clamped to `range` (the clamp binds only on the side the range excludes,
// e.g. negatives for an unsigned range). e_out is the finest exponent covering max|x| in `range`.
// With Rounding::kStochastic, `rng` draws for index (index0 + i). All-zero input gives e_out = e_in.
struct QuantizeOptions {
  IntRange range;
  Rounding rounding = Rounding::kNearestEven;
  const CounterRng* rng = nullptr;  // required for kStochastic
  uint64_t index0 = 0;
  // quantize_to_tensor with one exponent: the largest magnitude that matters (|x|, or max(x, 0) for an unsigned
  // range) when the caller already knows it exactly; saves a pass over x.
  const uint64_t* known_max = nullptr;
  // How the step is chosen. kMinError applies to quantize_per_row and to quantize_to_tensor with one input
  // exponent (the per-column form always covers). With it, quantize_to_tensor judges the error on an evenly
  // strided sample of at most kMinErrorSamples values.
  ScaleRule scale = ScaleRule::kCover;
};
inline constexpr std::size_t kMinErrorSamples = 16384;

// The step 2^t, t in [s − kMinErrorOctaves, s] (s: the covering shift of the data), with the least squared error
// Σ (x − clamp(round_even(x / 2^t))·2^t)² over x[0], x[stride], x[2·stride], … (i < n); ties keep the coarser
// step. Steps finer than the input (t < 0) are not considered: they only clip. Exact (128-bit integer sums, from the
// SIMD kernel kernels::squared_error_sums). range must contain 0, as signed_range and unsigned_range do (throws
// std::invalid_argument otherwise).
int min_error_shift(const int32_t* x, std::size_t n, std::size_t stride, int s, const IntRange& range);
// x is rows×cols; e_col has one exponent per column (per-column scales, e.g. a layer output whose weights have
// per-output-channel exponents) or a single exponent (n_exps == 1).
// With a pool, the maxima and rounding passes are split over it (whole rows, or element ranges for one exponent;
// the least-error sample search stays on this thread); results are identical for any pool or none.
int quantize_to_tensor(const int32_t* x, std::size_t rows, std::size_t cols, const int* e_col, std::size_t n_exps,
                       const QuantizeOptions& opt, int8_t* out, kernels::ThreadPool* pool = nullptr);
// Power-of-two column groups for an operand that a GEMM reduces over its columns (a layer's input activations:
// channels, or im2col's kh·kw·C): ShiftQuant's trick (shiftquant.h) with nearest-even rounding. x has one exponent
// e_in; the tensor step 2^s0 is chosen by opt.scale over all of x; column c gets the finer step 2^(s0 − k_c),
//   k_c = min(groups − 1, s0, largest k with max_n |x[n,c]| ≤ limit·2^(s0 − k)),
// and is stored shifted into the int8 carrier: out = clamp(R_even(x / 2^(s0 − k_c)))·2^(groups − 1 − k_c), which
// fits while limit·2^(groups − 1) ≤ 127 (checked: throws std::invalid_argument otherwise). Returns the carrier's
// exponent e_in + s0 − (groups − 1): one exponent for the tensor, so a plain int8 GEMM consumes it exactly.
// With a pool, as quantize_to_tensor: identical results.
int quantize_column_groups(const int32_t* x, std::size_t rows, std::size_t cols, int e_in, const QuantizeOptions& opt,
                           int groups, int8_t* out, kernels::ThreadPool* pool = nullptr);
// The largest column-group count whose shifted values fit the int8 carrier for a quantizer of this range.
int max_column_groups(const IntRange& range);

// Per-row exponents (per output channel for a weight matrix): row r gets e_row[r], the finest exponent covering
// that row's max|x| (or, with ScaleRule::kMinError, the error-minimizing one of min_error_shift). All values of x have exponent e_in. An all-zero row gets e_row[r] = e_in.
void quantize_per_row(const int32_t* x, std::size_t rows, std::size_t cols, int e_in, const QuantizeOptions& opt,
                      int8_t* out, int* e_row);

}  // namespace qtrain::quant
