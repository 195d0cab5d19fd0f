// The L1 layer norm's first forward pass over one row (engine/layers/layer_norm.cc), as SIMD kernels over plain
// arrays: the row statistics that choose the working shift, then the working values and their L1 sum.
//
//   ln_row_stats:  S = Σ x_j (exact in int64: n·2^31 < 2^63), lo = min x_j, hi = max x_j        (n ≥ 1)
//   ln_row_center: d_j = R_up(x_j, k) − μ,  T = Σ |d_j|  (R_up = shift_round_half_up, rounding.h; 0 ≤ k ≤ 31)
//                  The caller's k and μ keep every d_j within ±(2^15 − 1) (norm_stage.h: working_shift,
//                  mean_half_up), so d_j is exact in int32 lanes and stored as int16; T < n·2^15 is an int64 sum.
//
// Each function picks the best Highway target compiled in (dispatch.h). Results are bit-identical on every target
// to the scalar references (namespace ref), which are the specification.
#pragma once

#include <cstddef>
#include <cstdint>

namespace qtrain::kernels {

struct LnRowStats {
  int64_t sum = 0;
  int32_t lo = 0, hi = 0;
  bool operator==(const LnRowStats&) const = default;
};

LnRowStats ln_row_stats(const int32_t* x, std::size_t n);
// μ is R_up's mean of the row (so |μ| < 2^31); returns T.
int64_t ln_row_center(const int32_t* x, std::size_t n, int k, int32_t mu, int16_t* d);

namespace ref {
LnRowStats ln_row_stats(const int32_t* x, std::size_t n);
int64_t ln_row_center(const int32_t* x, std::size_t n, int k, int32_t mu, int16_t* d);
}  // namespace ref

}  // namespace qtrain::kernels
