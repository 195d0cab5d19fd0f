// The integer softmax's row passes (attention's softmax, engine/ops/softmax.h; the loss's exponentials,
// engine/ops/softmax_ce.h), as SIMD kernels over plain arrays. No tensors: the caller supplies each row's Q16 shift,
// the scale as a dyadic m·2^−s and the causal period.
//
// Forward of one row of n visible values (the rest of the row is not touched):
//   z_i  = clamp(R_even_sat(x_i, q16_shift), ±2^40)               x in Q16 (rounding.h: shift_round_even_sat)
//   z'_i = R_even(clamp(z_i, ±2^46)·m, s)                          the scale (|·| < 2^62)
//   e_i  = E(z'_i − max z')                                         Q30 exponentials, the largest exactly 2^30
//   S    = Σ e_i                                                    exact in int64 (n < 2^32)
//   p_i  = floor(e_i·2^15 / S) + [i among the `missing` largest remainders (e_i·2^15 mod S), ties to the lower i]
//          missing = 2^15 − Σ floor(·) (0 ≤ missing < n), so Σ p_i = 2^15 exactly.
// E(d), d ≤ 0: u = floor(max(d, −2^21)·log2e_Q16 / 2^16) (log2e_Q16 = 94548), ip = floor(u / 2^16),
// f = u mod 2^16, j = f >> 8, l = f & 255, mant = t[j] + ((t[j+1] − t[j])·l >> 8) (t = kExp2Q30, exp_table.h),
// E = R_even(mant, −ip). The clamp at −2^21 changes no result where the unclamped product fits int64 (any d ≤ −2^21
// has ip ≤ −47, and mant < 2^31 rounds to 0 beyond 31 octaves); it keeps the product bounded for any d.
//
// Backward of one row (P a forward's output: P_j ≥ 0, Σ_j P_j ≤ 2^15; masked columns hold P = 0 and so get 0):
//   u_j = R_even(g_j, k) (0 ≤ k; the caller picks k so that |u_j| ≤ 2^15), T = Σ_j P_j·u_j (|T| ≤ 2^30),
//   d_j = P_j·((u_j << 15) − T)·m                                   (|·| < 2^62 for m ≤ 2^16)
//
// Every function picks the best Highway target compiled in (dispatch.h). Results are bit-identical on every target
// to the scalar references (namespace ref), which are the specification; where a parameter is outside the range the
// SIMD code handles (m outside [1, 2^16], s outside [1, 62], k outside [0, 31]) the entry point runs the reference.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qtrain::kernels {

inline constexpr int kSoftmaxPFrac = 15;  // the forward's output: Q15 probabilities

// The causal mask of rows [row0, row0 + rows) of a stack of square matrices: row r sees r % period + 1 columns;
// period 0: no mask (every row sees all cols).
struct SoftmaxRows {
  std::size_t rows = 0, cols = 0;  // row-major, row stride cols
  std::size_t row0 = 0;            // global index of the first row (for the causal period)
  std::size_t causal_period = 0;
  std::size_t visible(std::size_t r) const { return causal_period ? (row0 + r) % causal_period + 1 : cols; }
};

// Forward from int32 values, row r's Q16 shift q16_shift[r] (value·2^16 = x·2^−q16_shift). p: rows×cols Q15, only
// the visible columns written.
void softmax_forward_i32(const int32_t* x, const int* q16_shift, const SoftmaxRows& shape, int64_t m, int s,
                         int32_t* p);
// The same from values already in Q16 (|z| ≤ 2^40: the form the tensor-aware conversion produces).
void softmax_forward_q16(const int64_t* z, const SoftmaxRows& shape, int64_t m, int s, int32_t* p);
// One row's exponentials e_i = E(z_i − max z) for n ≥ 1 values with |z_i| ≤ 2^62; returns S = Σ e_i.
int64_t softmax_exp_q30(const int64_t* z, std::size_t n, int64_t* e);
// Backward over rows×cols (the mask needs no argument: masked P are 0). d: rows×cols int64.
void softmax_backward(const int32_t* p, const int32_t* g, std::size_t rows, std::size_t cols, int k, int64_t m,
                      int64_t* d);

// Plain scalar references (no SIMD): the specification the tests hold the kernels to.
namespace ref {
void softmax_forward_i32(const int32_t* x, const int* q16_shift, const SoftmaxRows& shape, int64_t m, int s,
                         int32_t* p);
void softmax_forward_q16(const int64_t* z, const SoftmaxRows& shape, int64_t m, int s, int32_t* p);
int64_t softmax_exp_q30(const int64_t* z, std::size_t n, int64_t* e);
void softmax_backward(const int32_t* p, const int32_t* g, std::size_t rows, std::size_t cols, int k, int64_t m,
                      int64_t* d);
}  // namespace ref

}  // namespace qtrain::kernels
