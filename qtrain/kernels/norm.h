// The element passes of the integer batch normalizations (qtrain/engine/layers/norm.h), as SIMD kernels over a row-major
// rows×cols int32 matrix whose *columns* are the channels (NHWC activations: rows = N·H·W). Every reduction is per
// column over all rows; SIMD lanes run across columns, so a row of C channels is C/L whole vectors.
//
// Notation. R(v, k) = floor(v/2^k + 1/2): round half up (ties toward +∞), qtrain/kernels/rounding.h's
// shift_round_half_up, computed without overflow as (v >> k) + ((v >> (k−1)) & 1) for k ≥ 1 and v for k = 0 (in
// int32 lanes shift counts above 31 act as 31, which gives the exact result 0 for every int32 v when k ≥ 32). It is
// the only rounding used here: a tie needs the k low bits to be exactly 100…0, and its +½-unit bias is far below
// the 16-bit working precision.
//
// The working value of element (i, c) is d = R(x[i,c], k[c]) − center[c]: the caller picks k[c] and center[c] from
// the column's range so that |d| ≤ 2^15 − 1 (a 16-bit integer). Every product below is then a 32-bit product, and
// every per-column sum is exact:
//   * int32 lane accumulators are flushed into int64 every kBlockRows = 2^15 rows. Σx and Σdy are split into
//     16-bit halves (lo = v & 0xFFFF < 2^16, hi = v >> 16 ∈ [−2^15, 2^15)), so a block sum stays below 2^31;
//     Σ|d| ≤ 2^15·(2^15 − 1) < 2^30 and |Σ sign d| ≤ 2^15 per block; Σd² is accumulated as pairs of rows (d₁² + d₂² ≤
//     2^31 − 2^17 + 2) split at bit 15 (hi ≤ 2^16 − 4, lo < 2^15), < 2^31 per block of 2^14 pairs.
//   * Σ dy·d (|dy·d| ≤ 2^31·(2^15 − 1) < 2^46) uses int64 lanes (MulEven), < 2^61 per block, and is returned as a
//     WideSum (hi·2^32 + lo), exact for any row count below 2^31.
// Totals: |Σx|, |Σdy| < 2^31·rows; Σ|d| < 2^15·rows; Σd² < 2^30·rows; |Σ sign d| ≤ rows — all int64 for
// rows < 2^32 (the engine allows rows < 2^30).
//
// Every function picks the best Highway target compiled in (dispatch.h). Results are bit-identical on every target
// to the scalar references (namespace ref), which are the specification.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qtrain::kernels {

inline constexpr std::size_t kNormBlockRows = std::size_t{1} << 15;
inline constexpr int32_t kNormMaxWorking = (1 << 15) - 1;  // bound on |d| and on |dy'|

// An exact sum too wide for int64: value = hi·2^32 + lo (lo ≥ 0).
struct WideSum {
  int64_t hi = 0;
  int64_t lo = 0;
};

// The working-precision reduction of one column: d = R(v, shift) − center.
struct NormColumns {
  const int32_t* shift;   // k[c] ≥ 0
  const int32_t* center;  // center[c]
};

// A per-column affine output stage: out = ((u·a + w·b + 2^(t−1)) >> t) + c, with 0 ≤ t ≤ 30 (no rounding term for
// t = 0). The caller guarantees |u·a| ≤ 2^29, |w·b| ≤ 2^29 and |c| ≤ 2^29 for every element, so no intermediate
// leaves int32 (|u·a + w·b + 2^(t−1)| ≤ 2^30 + 2^29, |result| ≤ 2^30 + 2^29).
struct NormAffine {
  const int32_t* a;
  const int32_t* b;  // unused where there is no w term
  const int32_t* t;
  const int32_t* c;
};

// Pass 1 (training and eval): per column Σx (exact), min x, max x.
void norm_stats(const int32_t* x, std::size_t rows, std::size_t cols, int64_t* sum, int32_t* min, int32_t* max);

// Pass 2, L1: per column Σ|d| and Σ sign(d) (the backward's mean(s), a forward quantity computed where d is at hand).
void norm_abs_dev(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, int64_t* sum_abs,
                  int64_t* sum_sign);
// Pass 2, L2: per column Σd².
void norm_sq_dev(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, int64_t* sum_sq);

// Pass 3: y = ((d·a + 2^(t−1)) >> t) + c (the affine's b is unused); also stores d as int16 when d_out is not null.
// With relu, a ReLU is fused: y = max(that, 0), and the result is max y (0 without relu).
uint64_t norm_apply(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, NormAffine aff, int32_t* y,
                    int16_t* d_out, bool relu = false);

// Backward pass 1: per column Σdy (exact), min dy, max dy and Σ dy·d (exact, wide). d is the int16 working value the
// forward stored.
// Both backward passes take `relu`, the forward's affine stage (a, t, c) when norm_apply fused a ReLU (else null):
// dy is then first masked by the ReLU, dy·[((d·a + 2^(t−1)) >> t) + c > 0], the output recomputed from d (16-bit
// reads instead of a pass over the int32 output).
void norm_grad_stats(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, int64_t* sum_dy,
                     int32_t* min_dy, int32_t* max_dy, WideSum* sum_dy_d, const NormAffine* relu = nullptr);

// Backward pass 2. u = R(dy, shift) − center (center is 0 here); L1: w = sign(d), L2: w = d.
//   dx = ((u·a + w·b + 2^(t−1)) >> t) + c
void norm_grad_apply_l1(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, NormColumns col,
                        NormAffine aff, int32_t* dx, const NormAffine* relu = nullptr);
void norm_grad_apply_l2(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, NormColumns col,
                        NormAffine aff, int32_t* dx, const NormAffine* relu = nullptr);

// Plain scalar references (no SIMD): the specification the tests hold the kernels to.
namespace ref {
void norm_stats(const int32_t* x, std::size_t rows, std::size_t cols, int64_t* sum, int32_t* min, int32_t* max);
void norm_abs_dev(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, int64_t* sum_abs,
                  int64_t* sum_sign);
void norm_sq_dev(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, int64_t* sum_sq);
uint64_t norm_apply(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, NormAffine aff, int32_t* y,
                    int16_t* d_out, bool relu = false);
void norm_grad_stats(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, int64_t* sum_dy,
                     int32_t* min_dy, int32_t* max_dy, WideSum* sum_dy_d, const NormAffine* relu = nullptr);
void norm_grad_apply_l1(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, NormColumns col,
                        NormAffine aff, int32_t* dx, const NormAffine* relu = nullptr);
void norm_grad_apply_l2(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, NormColumns col,
                        NormAffine aff, int32_t* dx, const NormAffine* relu = nullptr);
}  // namespace ref

}  // namespace qtrain::kernels
