// The element-wise passes of the integer SGD update (qtrain/engine/optim/optimizer.h), as SIMD kernels over plain arrays.
//
// Notation (qtrain/kernels/rounding.h, the functions the reference calls). R_even(x, s) = shift_round_even: x / 2^s
// to nearest, ties to even (s ≤ 0: a left shift). R_stoch(x, s, r) = shift_round_stochastic: floor((x + u) / 2^s),
// u = the draw r as the top 32 fraction bits (s ≤ 0: a left shift). shl_sat(x, s) = shift_left_sat, s ≥ 0: x·2^s
// saturated at ±2^62.
//
// Every dyadic constant is a mantissa m (0 ≤ m < 2^31, e.g. quant::Dyadic's 16-bit mantissa) and a shift s
// (value m·2^−s). Products are int32 × m in int64 (exact). Sums are int64 and wrap on overflow (they cannot
// overflow unless two saturated terms meet, i.e. a diverged run). The functions know nothing of tensors: the
// caller supplies exponent differences, the random draws (one uint32 per element) and the int64 scratch.
//
// Each function picks the best Highway target compiled in (see dispatch.h). The result is bit-identical on
// every target to the scalar reference (namespace ref), which is the specification.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qtrain::kernels {

// First pass of v ← μ·v + g + λ·w, at the master exponent E, for n elements:
//   acc[j] = clamp(M(R_even(v[j]·mu_m, mu_s)) + G(g[j]) + D(w[j]), −2^62, 2^62)
//   M(x) = shl_sat(x, v_shift) if v_shift ≥ 0, else R_even(x, −v_shift)        (v_shift = exponent(v) − E)
//   G(x) = shl_sat(x, g_shift) if g_shift ≥ 0, else R_stoch(x, −g_shift, draws[j])  (g_shift = exponent(g) − E)
//   D(x) = R_even(x·lambda_m, lambda_s), or 0 when w is null (no weight decay)
// draws is read only when g_shift < 0 (may be null otherwise). Returns max_j |acc[j]| (0 for n = 0).
uint64_t sgd_accumulate(const int32_t* v, const int32_t* g, const int32_t* w, const uint32_t* draws, std::size_t n,
                        int64_t mu_m, int mu_s, int v_shift, int g_shift, int64_t lambda_m, int lambda_s,
                        int64_t* acc);

// Second pass, w ← w − η·v, for n elements, after sgd_accumulate filled acc with the new momentum at E:
//   v[j]   = int32(R_even(acc[j], v_store_shift))        (the buffer stored at exponent E + v_store_shift)
//   u      = R_stoch(v[j]·eta_m, su, draws[j]) if su ≥ 0, else shl_sat(v[j]·eta_m, −su),  su = eta_s − v_store_shift
//   acc[j] = clamp(w[j] − u, −2^62, 2^62)                 (the new master weight at E, in int64)
//   w[j]   = int32(acc[j])                               (truncated: final only if the returned max fits 31 bits)
// Returns max_j |acc[j]|. When it needs more than 30 bits, the caller rescales w with sgd_narrow.
uint64_t sgd_apply(const int64_t* acc_in, const int32_t* w_in, const uint32_t* draws, std::size_t n, int64_t eta_m,
                   int eta_s, int v_store_shift, int32_t* v, int64_t* acc_out, int32_t* w_out);

// out[j] = int32(R_even(x[j], s)) for s ≥ 0 and |x[j]| ≤ 2^62 (every momentum or master value is).
void sgd_narrow(const int64_t* x, std::size_t n, int s, int32_t* out);

// Plain scalar references (no SIMD): the specification the tests hold the kernels to.
namespace ref {
uint64_t sgd_accumulate(const int32_t* v, const int32_t* g, const int32_t* w, const uint32_t* draws, std::size_t n,
                        int64_t mu_m, int mu_s, int v_shift, int g_shift, int64_t lambda_m, int lambda_s,
                        int64_t* acc);
uint64_t sgd_apply(const int64_t* acc_in, const int32_t* w_in, const uint32_t* draws, std::size_t n, int64_t eta_m,
                   int eta_s, int v_store_shift, int32_t* v, int64_t* acc_out, int32_t* w_out);
void sgd_narrow(const int64_t* x, std::size_t n, int s, int32_t* out);
}  // namespace ref

}  // namespace qtrain::kernels
