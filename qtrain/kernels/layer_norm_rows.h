// The L1 layer norm's forward passes over one row (engine/layers/layer_norm.cc), as SIMD kernels over plain
// arrays: the row statistics that choose the working shift, the working values and their L1 sum, and the
// normalized values with the affine output.
//
//   ln_row_stats:  S = Σ x_j (exact in int64: n·2^31 < 2^63), lo = min x_j, hi = max x_j        (n ≥ 1)
//   ln_row_center: d_j = R_up(x_j, k) − μ,  T = Σ |d_j|  (R_up = shift_round_half_up, rounding.h; 0 ≤ k ≤ 31)
//                  The caller's k and μ keep every d_j within ±(2^15 − 1) (norm_stage.h: working_shift,
//                  mean_half_up), so d_j is exact in int32 lanes and stored as int16; T < n·2^15 is an int64 sum.
//
//   ln_row_affine: x̂_j = R_even(d_j·ρ, s),  y_j = R_even(x̂_j·γ_j, s_y) + β_j      (R_even = shift_round_even)
//                  |d| ≤ 2^15 − 1 and 0 ≤ ρ < 2^31: |d·ρ| < 2^46; the layer's exponents keep |x̂| ≤ 2^15 + 1 and
//                  |γ| ≤ 2^15 − 1 (|x̂·γ| < 2^31), y within int32 and |β| < 2^31. Shifts outside 0..62 run the reference.
//   ln_row_dx:     G_j = γ_j·R_up(g_j, k), dx_j = R_up(G_j·a + sign(d_j)·b, t) + c       (the backward's output
//                  stage, norm_stage.h: |G| < 2^30, |G·a| and |b| ≤ 2^60, 0 ≤ k ≤ 31, 0 ≤ t ≤ 62, dx within int32)
//   ln_row_grad_sums: with G_j = γ_j·R_up(g_j, k): ΣG, ΣG·d, Σsign(d), max|G|    (|G| < 2^30, |G·d| < 2^45: exact
//                  int64 sums for n ≤ 2^17)
//   ln_row_accumulate: per feature j, p = g_j·x̂_j (|p| ≤ 2^46): lo_j += p mod 2^32, hi_j += floor(p / 2^32),
//                  sdy_j += g_j — the exact wide sums of dγ and dβ over rows (lo and hi each < rows·2^32)
//
// Each function picks the best Highway target compiled in (dispatch.h). Results are bit-identical on every target
// to the scalar references (namespace ref), which are the specification.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qtrain::kernels {

struct LnGradSums {
  int64_t sum_g = 0, sum_gd = 0, sum_s = 0;
  uint64_t gmax = 0;
  bool operator==(const LnGradSums&) const = default;
};

struct LnRowStats {
  int64_t sum = 0;
  int32_t lo = 0, hi = 0;
  bool operator==(const LnRowStats&) const = default;
};

LnRowStats ln_row_stats(const int32_t* x, std::size_t n);
// μ is R_up's mean of the row (so |μ| < 2^31); returns T.
int64_t ln_row_center(const int32_t* x, std::size_t n, int k, int32_t mu, int16_t* d);
void ln_row_affine(const int16_t* d, std::size_t n, int64_t rho, int s, const int32_t* gamma, int sy,
                   const int64_t* beta, int32_t* xh, int32_t* y);
void ln_row_dx(const int32_t* g, const int16_t* d, std::size_t n, const int32_t* gamma, int k, int64_t a, int64_t b,
               int t, int64_t c, int32_t* dx);
LnGradSums ln_row_grad_sums(const int32_t* g, const int16_t* d, std::size_t n, const int32_t* gamma, int k);
void ln_row_accumulate(const int32_t* g, const int32_t* xh, std::size_t n, int64_t* lo, int64_t* hi, int64_t* sdy);

namespace ref {
LnRowStats ln_row_stats(const int32_t* x, std::size_t n);
int64_t ln_row_center(const int32_t* x, std::size_t n, int k, int32_t mu, int16_t* d);
void ln_row_affine(const int16_t* d, std::size_t n, int64_t rho, int s, const int32_t* gamma, int sy,
                   const int64_t* beta, int32_t* xh, int32_t* y);
void ln_row_dx(const int32_t* g, const int16_t* d, std::size_t n, const int32_t* gamma, int k, int64_t a, int64_t b,
               int t, int64_t c, int32_t* dx);
LnGradSums ln_row_grad_sums(const int32_t* g, const int16_t* d, std::size_t n, const int32_t* gamma, int k);
void ln_row_accumulate(const int32_t* g, const int32_t* xh, std::size_t n, int64_t* lo, int64_t* hi, int64_t* sdy);
}  // namespace ref

}  // namespace qtrain::kernels
