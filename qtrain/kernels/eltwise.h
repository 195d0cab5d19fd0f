// The element-wise passes of the integer data plane, as SIMD kernels over plain arrays: the reductions and
// roundings that run over every activation and gradient of a step (max-|x| scans, int32 → int8 requantization,
// ShiftQuant's stochastic rounding, exponent-aligned sums narrowed back to int32, ReLU and its mask).
//
// Notation (qtrain/kernels/rounding.h, the functions the references call):
//   R_even(x, s)      shift_round_even: x / 2^s to nearest, ties to even; x·2^−s for s ≤ 0.
//   R_stoch(x, s, r)  shift_round_stochastic: floor((x + u) / 2^s), u = the draw r as the top 32 fraction bits
//                     (its top s bits for s ≤ 32); x·2^−s for s ≤ 0.
//   clamp(v, lo, hi)  computed on the exact value: a left shift never wraps (x·2^k for k ≥ 32 is "huge").
// Matrices are row-major rows×cols; "per column" parameters have one entry per column (an NHWC channel).
//
// How the SIMD code stays exact in int32 lanes (the reasoning is repeated next to each kernel):
//   * R_even(x, s), 1 ≤ s ≤ 31: q = x >> s (floor), r = x & (2^s − 1); the result is q + [r + (q & 1) > 2^(s−1)]
//     (the comparison unsigned: r + 1 ≤ 2^31). No intermediate leaves int32.
//   * R_stoch(x, s, r), 1 ≤ s ≤ 31: (x >> s) + ((x & (2^s − 1)) + (r >> (32 − s))) >> s, the inner sum unsigned
//     (< 2^32). The draw's shift is done as (r >> 1) >> (31 − s), which is 0 for s = 0.
//   * Left shifts by k into a clamped int8 range: x is first clamped to ±max(1, 128 >> k) and k capped at 30, which
//     changes no result (clamp is monotone and 128 exceeds every int8 bound) and cannot overflow.
//   * Squared errors (squared_error_sums): d = x − q·2^t is formed wrapping in uint32 lanes (its true value fits
//     int32, so the wrapped bits are it); MulEven squares |d| ≤ 2^31 of the even and odd lanes into uint64
//     (≤ 2^62 each, a pair < 2^63), whose high and low 32-bit halves are summed in separate uint64 lanes.
//   * Aligned sums use int64 lanes: a·2^la + b·2^lb with la, lb ≤ 31 is below 2^63. aligned_sum_range first tries
//     int32 lanes per block and keeps them where no shift or add overflowed (then the int32 values are exact).
//
// Every function picks the best Highway target compiled in (dispatch.h). Results are bit-identical on every target
// to the scalar references (namespace ref), which are the specification; where a parameter is outside the range
// the SIMD code handles, the entry point runs the reference instead.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "qtrain/kernels/rounding.h"

namespace qtrain::kernels {

// max_i |x[i]| (2^31 for INT32_MIN); with positive_only, max_i max(x[i], 0). 0 for n = 0.
uint64_t max_abs_i32(const int32_t* x, std::size_t n, bool positive_only);
// colmax[c] = max_r |x[r, c]| (or max(x[r, c], 0) with positive_only) for every column; 0 for rows = 0.
void col_max_abs_i32(const int32_t* x, std::size_t rows, std::size_t cols, bool positive_only, uint64_t* colmax);
// max_i |x[i]| over int64 values with |x[i]| < 2^63. 0 for n = 0.
uint64_t max_abs_i64(const int64_t* x, std::size_t n);

// int32 → int8 requantization to nearest even: out[i] = clamp(R_even(x[i], shift), lo, hi), −128 ≤ lo ≤ 0 ≤ hi ≤ 127.
void requantize_i8(const int32_t* x, std::size_t n, int shift, int32_t lo, int32_t hi, int8_t* out);
// The same from int8 values (an int8 operand brought to another exponent, e.g. weight rows to one exponent).
void requantize_i8(const int8_t* x, std::size_t n, int shift, int32_t lo, int32_t hi, int8_t* out);
// The same with one shift per column: out[r, c] = clamp(R_even(x[r, c], shift[c]), lo, hi), then, when `up` is
// given, ·2^up[c] (power-of-two column groups in the int8 carrier: caller guarantees max(|lo|, hi)·2^up[c] ≤ 127).
void requantize_i8_cols(const int32_t* x, std::size_t rows, std::size_t cols, const int* shift, int32_t lo, int32_t hi,
                        int8_t* out, const int* up = nullptr);

// The squared errors min_error_shift compares (qtrain/quant/pow2.h): for each candidate step t = s − j, j < count,
//   sum[j] = Σ_{i<n} d_i²,   d_i = x[i] − clamp(R_even(x[i], t), lo, hi)·2^t,
// exact, written as the 128-bit number sum_hi[j]·2^64 + sum_lo[j]. Needs t ≥ 0 (s ≥ count − 1) and lo ≤ 0 ≤ hi;
// then −2^31 ≤ d_i < 2^31 (rounding leaves |d| ≤ 2^(t−1) ≤ 2^30 for t ≤ 31, R_even is 0 beyond; a binding clamp
// moves q toward 0, so d lies between x and the rounding error), d_i² ≤ 2^62 and any n fits 128 bits.
void squared_error_sums(const int32_t* x, std::size_t n, int s, int count, int32_t lo, int32_t hi, uint64_t* sum_hi,
                        uint64_t* sum_lo);

// ShiftQuant's rounding pass (qtrain/quant/shiftquant.h) over rows×cols, draws[r·cols + c] for element (r, c):
//   q[r, c]       = clamp(R_stoch(g[r, c], shift[c], draws[r·cols + c]), −limit, limit)
//   shifted[r, c] = q[r, c]·2^up[c]
// 1 ≤ limit ≤ 127, 0 ≤ up[c] with limit·2^up[c] ≤ 127.
void shiftquant_round(const int32_t* g, const uint32_t* draws, std::size_t rows, std::size_t cols, const int* shift,
                      const int* up, int32_t limit, int8_t* q, int8_t* shifted);

// Exponent-aligned sums s = a·2^la + b·2^lb (exact in int64; 0 ≤ la, lb ≤ 31), in two passes: the range of s, then
// out = sat32(R_even(s, t)) (0 ≤ t ≤ 62; saturation at the int32 limits, a no-op when t makes s fit), or max(that, 0)
// with relu (a ReLU fused into the sum). out may alias a or b (each element is read before it is written).
// One shift pair for the whole tensor. aligned_sum_range also writes the t = 0 result to `out` when it is not null:
// final whenever the range fits int32 (one pass instead of two in the common case; out must then not alias a or b,
// which a second pass would need).
struct SumRange {
  int64_t min = 0, max = 0;  // min(0, min s) and max(0, max s) over the elements
  uint64_t max_abs() const { return std::max(magnitude(min), magnitude(max)); }
};
SumRange aligned_sum_range(const int32_t* a, const int32_t* b, std::size_t n, int la, int lb, int32_t* out = nullptr,
                           bool relu = false);
void aligned_sum_narrow(const int32_t* a, const int32_t* b, std::size_t n, int la, int lb, int t, int32_t* out,
                        bool relu = false);
// One shift pair (and one t) per column of rows×cols:
void aligned_sum_col_max(const int32_t* a, const int32_t* b, std::size_t rows, std::size_t cols, const int* la,
                         const int* lb, uint64_t* colmax);
void aligned_sum_narrow_cols(const int32_t* a, const int32_t* b, std::size_t rows, std::size_t cols, const int* la,
                             const int* lb, const int* t, int32_t* out);

// ReLU: y[i] = max(x[i], 0) (y may alias x); returns max_i y[i] (0 for n = 0). Backward: dx[i] = x[i] > 0 ? dy[i] : 0
// (dx may alias dy), written to dx2 as well when it is not null (a gradient two consumers receive).
uint64_t relu_i32(const int32_t* x, std::size_t n, int32_t* y);
void relu_backward_i32(const int32_t* dy, const int32_t* x, std::size_t n, int32_t* dx, int32_t* dx2 = nullptr);

// Strided runs of int32 adds: dst[r·dst_stride + e] += src[r·src_stride + e] for r < runs, e < len, run after run
// (so overlapping destination runs are fine). Wrapping; callers guarantee the sums fit.
void add_strided_i32(int32_t* dst, std::size_t dst_stride, const int32_t* src, std::size_t src_stride, std::size_t runs,
                     std::size_t len);

// Gathered sums (one input line of col2im, qtrain/engine/layers/conv2d.cc): for each of w output pixels (c values each),
//   dst[q·c + e]  =  Σ_{r < nsrc} Σ_{t < count[q]} src[r][offset[q·max_taps + t] + e]      (+ dst[q·c + e] when
//   accumulate). Int32, wrapping; callers guarantee the sums fit.
void gather_sum_i32(const int32_t* const* src, std::size_t nsrc, const std::size_t* offset, const uint32_t* count,
                    std::size_t max_taps, std::size_t w, std::size_t c, bool accumulate, int32_t* dst);

// Max pooling of one output pixel over `count` window positions (count ≥ 1), n values (channels) each:
//   y[e] = max_j src[j][e],  arg[e] = pos[j] of the first j attaining it (later positions win only if strictly
//   greater, so ties keep the first).
void max_argmax_i32(const int32_t* const* src, const uint16_t* pos, std::size_t count, std::size_t n, int32_t* y,
                    uint16_t* arg);
// Its gradient for non-overlapping windows that write every input once: dst[j][e] = arg[e] == j ? dy[e] : 0 for
// j < count.
void unpool_max_i32(const int32_t* dy, const uint16_t* arg, std::size_t n, int32_t* const* dst, std::size_t count);

// Plain scalar references (no SIMD): the specification the tests hold the kernels to.
namespace ref {
uint64_t max_abs_i32(const int32_t* x, std::size_t n, bool positive_only);
void col_max_abs_i32(const int32_t* x, std::size_t rows, std::size_t cols, bool positive_only, uint64_t* colmax);
uint64_t max_abs_i64(const int64_t* x, std::size_t n);
void requantize_i8(const int32_t* x, std::size_t n, int shift, int32_t lo, int32_t hi, int8_t* out);
void requantize_i8(const int8_t* x, std::size_t n, int shift, int32_t lo, int32_t hi, int8_t* out);
void requantize_i8_cols(const int32_t* x, std::size_t rows, std::size_t cols, const int* shift, int32_t lo, int32_t hi,
                        int8_t* out, const int* up = nullptr);
void squared_error_sums(const int32_t* x, std::size_t n, int s, int count, int32_t lo, int32_t hi, uint64_t* sum_hi,
                        uint64_t* sum_lo);
void shiftquant_round(const int32_t* g, const uint32_t* draws, std::size_t rows, std::size_t cols, const int* shift,
                      const int* up, int32_t limit, int8_t* q, int8_t* shifted);
SumRange aligned_sum_range(const int32_t* a, const int32_t* b, std::size_t n, int la, int lb, int32_t* out = nullptr,
                           bool relu = false);
void aligned_sum_narrow(const int32_t* a, const int32_t* b, std::size_t n, int la, int lb, int t, int32_t* out,
                        bool relu = false);
void aligned_sum_col_max(const int32_t* a, const int32_t* b, std::size_t rows, std::size_t cols, const int* la,
                         const int* lb, uint64_t* colmax);
void aligned_sum_narrow_cols(const int32_t* a, const int32_t* b, std::size_t rows, std::size_t cols, const int* la,
                             const int* lb, const int* t, int32_t* out);
uint64_t relu_i32(const int32_t* x, std::size_t n, int32_t* y);
void relu_backward_i32(const int32_t* dy, const int32_t* x, std::size_t n, int32_t* dx, int32_t* dx2 = nullptr);
void add_strided_i32(int32_t* dst, std::size_t dst_stride, const int32_t* src, std::size_t src_stride, std::size_t runs,
                     std::size_t len);
void gather_sum_i32(const int32_t* const* src, std::size_t nsrc, const std::size_t* offset, const uint32_t* count,
                    std::size_t max_taps, std::size_t w, std::size_t c, bool accumulate, int32_t* dst);
void max_argmax_i32(const int32_t* const* src, const uint16_t* pos, std::size_t count, std::size_t n, int32_t* y,
                    uint16_t* arg);
void unpool_max_i32(const int32_t* dy, const uint16_t* arg, std::size_t n, int32_t* const* dst, std::size_t count);
}  // namespace ref

}  // namespace qtrain::kernels
