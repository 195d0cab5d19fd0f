#include "qtrain/quant/pow2.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/parallel.h"
#include "qtrain/quant/error.h"

namespace qtrain::quant {

IntRange signed_range(int bits) {
  if (bits < 2 || bits > 8) throw UsageError("bit-width " + std::to_string(bits) + " is out of range 2..8");
  const int32_t q = (1 << (bits - 1)) - 1;
  return {-q, q};
}

IntRange unsigned_range(int bits) {
  if (bits < 2 || bits > 8) throw UsageError("bit-width " + std::to_string(bits) + " is out of range 2..8");
  return {0, std::min((1 << bits) - 1, 127)};
}

int covering_shift(uint64_t maxabs, uint32_t limit) {
  int s = bit_length(maxabs) - bit_length(limit);
  // maxabs ≤ limit·2^s  ⇔  (s ≥ 0 ? maxabs ≤ limit << s : maxabs << −s ≤ limit); adjust by at most one step.
  // A shift that would carry past bit 63 decides by itself: limit·2^t ≥ 2^64 > maxabs, maxabs·2^−t ≥ 2^64 > limit.
  auto fits = [&](int t) {
    if (t >= 0) return bit_length(limit) + t > 64 || maxabs <= (static_cast<uint64_t>(limit) << t);
    return bit_length(maxabs) - t <= 64 && (maxabs << -t) <= limit;
  };
  while (!fits(s)) ++s;
  while (fits(s - 1)) --s;
  return s;
}

int int8_headroom(uint32_t limit) {
  int t = 0;
  while ((static_cast<uint64_t>(limit) << (t + 1)) <= 127) ++t;
  return t;
}

double Dyadic::value() const { return std::ldexp(static_cast<double>(mantissa), -shift); }

Dyadic to_dyadic(double x, int mantissa_bits) {
  if (!(x > 0) || !std::isfinite(x)) return {0, 0};
  int exp2 = 0;
  std::frexp(x, &exp2);  // x = f·2^exp2, f in [0.5, 1)
  Dyadic d;
  d.shift = mantissa_bits - exp2;
  d.mantissa = std::llround(std::ldexp(x, d.shift));
  return d;
}

namespace {
// The largest magnitude the range can hold.
inline uint64_t range_magnitude_of(const IntRange& r) { return static_cast<uint64_t>(std::max(r.hi, -r.lo)); }

// Passes over the step's pool (qtrain/kernels/parallel.h): tiles of rows, or of elements in whole cache lines,
// split when the pass, `bytes` read and written in all, is worth a parallel call. Every pass split this way writes
// disjoint outputs or merges by max, so results do not depend on the pool.
double work_of(double bytes) { return kernels::kNsPerByte * bytes; }

// Element ranges of a per-tensor pass in whole cache lines of int32.
constexpr std::size_t kSpanAlign = 16;

// The magnitude that matters for covering: |x|, or for an unsigned range max(x, 0) (negatives clamp to 0). The
// spans' maxima merge by max: exact in any order.
uint64_t max_magnitude(const int32_t* x, std::size_t n, bool is_unsigned, kernels::ThreadPool* pool = nullptr) {
  const kernels::PassSplit split(pool, n, kSpanAlign);
  if (split.tiles() <= 1) return kernels::max_abs_i32(x, n, is_unsigned);
  std::vector<uint64_t> part(split.tiles(), 0);
  split.run(work_of(4.0 * static_cast<double>(n)), [&](std::size_t t, std::size_t i0, std::size_t i1) {
    part[t] = kernels::max_abs_i32(x + i0, i1 - i0, is_unsigned);
  });
  return *std::max_element(part.begin(), part.end());
}

// colmax[c] = max_r |x[r, c]| (kernels::col_max_abs_i32), the rows split over the pool; the row blocks' column
// maxima merge by max: exact in any order.
void col_max_magnitude(const int32_t* x, std::size_t rows, std::size_t cols, bool is_unsigned, uint64_t* colmax,
                       kernels::ThreadPool* pool) {
  const kernels::PassSplit split(pool, rows);
  kernels::TilePartials<uint64_t> part(colmax, split, cols);
  split.run(work_of(4.0 * static_cast<double>(rows * cols)), [&](std::size_t t, std::size_t r0, std::size_t r1) {
    kernels::col_max_abs_i32(x + r0 * cols, r1 - r0, cols, is_unsigned, part.at(t));
  });
  part.merge([](uint64_t& a, uint64_t b) { a = std::max(a, b); });
}

// out[i] = clamp(round(x[i] / 2^s)) for i < n, the rounding hoisted out of the loop.
void round_span(const int32_t* x, std::size_t n, int s, const QuantizeOptions& opt, uint64_t index0, int8_t* out) {
  const int64_t lo = opt.range.lo, hi = opt.range.hi;
  if (opt.rounding == Rounding::kNearestEven) {
    // out[i] = clamp(shift_round_even(x[i], s), lo, hi) (the kernel's reference is this formula).
    kernels::requantize_i8(x, n, s, opt.range.lo, opt.range.hi, out);
    return;
  }
  constexpr std::size_t kBlock = 256;
  uint32_t draws[kBlock];
  for (std::size_t i0 = 0; i0 < n; i0 += kBlock) {
    const std::size_t len = std::min(kBlock, n - i0);
    opt.rng->fill_u32(index0 + i0, len, draws);
    for (std::size_t j = 0; j < len; ++j)
      out[i0 + j] = static_cast<int8_t>(std::clamp(shift_round_stochastic(x[i0 + j], s, draws[j]), lo, hi));
  }
}

// round_span over element ranges of x[0..n) on the pool (element i's draw depends only on index0 + i).
void round_span(const int32_t* x, std::size_t n, int s, const QuantizeOptions& opt, uint64_t index0, int8_t* out,
                kernels::ThreadPool* pool) {
  kernels::PassSplit(pool, n, kSpanAlign)
      .run(work_of(5.0 * static_cast<double>(n)), [&](std::size_t, std::size_t i0, std::size_t i1) {
        round_span(x + i0, i1 - i0, s, opt, index0 + i0, out + i0);
      });
}

// kernels::requantize_i8_cols over blocks of rows on the pool.
void requantize_cols(const int32_t* x, std::size_t rows, std::size_t cols, const int* shift, const IntRange& range,
                     int8_t* out, const int* up, kernels::ThreadPool* pool) {
  kernels::PassSplit(pool, rows)
      .run(work_of(5.0 * static_cast<double>(rows * cols)), [&](std::size_t, std::size_t r0, std::size_t r1) {
        kernels::requantize_i8_cols(x + r0 * cols, r1 - r0, cols, shift, range.lo, range.hi, out + r0 * cols, up);
      });
}
}  // namespace

__extension__ using U128 = unsigned __int128;  // GCC/Clang extension; exact sums of squared 32-bit errors

int min_error_shift(const int32_t* x, std::size_t n, std::size_t stride, int s, const IntRange& range) {
  if (s <= 0) return s;  // no finer step than the input's is considered
  if (range.lo > 0 || range.hi < 0) throw std::invalid_argument("min_error_shift: the range must contain 0");
  stride = std::max<std::size_t>(stride, 1);
  const int count = s - std::max(s - kMinErrorOctaves, 0) + 1;  // candidates t = s, s − 1, …, max(s − 3, 0)
  // Every candidate's exact error in one kernel call per contiguous run of samples.
  U128 err[kMinErrorOctaves + 1] = {};
  auto add = [&](const int32_t* v, std::size_t len) {
    uint64_t hi[kMinErrorOctaves + 1], lo[kMinErrorOctaves + 1];
    kernels::squared_error_sums(v, len, s, count, range.lo, range.hi, hi, lo);
    for (int j = 0; j < count; ++j) err[j] += (static_cast<U128>(hi[j]) << 64) | lo[j];
  };
  if (stride == 1) {
    add(x, n);
  } else {  // gather the strided (cache-unfriendly) sample into contiguous chunks
    constexpr std::size_t kChunk = 2048;
    int32_t buf[kChunk];
    for (std::size_t i = 0; i < n;) {
      std::size_t len = 0;
      for (; len < kChunk && i < n; ++len, i += stride) buf[len] = x[i];
      add(buf, len);
    }
  }
  int best = 0;  // ties keep the coarser step
  for (int j = 1; j < count; ++j)
    if (err[j] < err[best]) best = j;
  return s - best;
}

namespace {
// The step of a whole tensor x[0..n) with max magnitude m > 0: covering, or by least error on an evenly strided
// sample of at most kMinErrorSamples values (odd stride: coprime with power-of-two channel counts).
int tensor_shift(const int32_t* x, std::size_t n, uint64_t m, uint32_t limit, const QuantizeOptions& opt) {
  const int s = covering_shift(m, limit);
  if (opt.scale != ScaleRule::kMinError) return s;
  return min_error_shift(x, n, (n / kMinErrorSamples) | 1, s, opt.range);
}
}  // namespace

int quantize_to_tensor(const int32_t* x, std::size_t rows, std::size_t cols, const int* e_col, std::size_t n_exps,
                       const QuantizeOptions& opt, int8_t* out, kernels::ThreadPool* pool) {
  const uint32_t limit = static_cast<uint32_t>(range_magnitude_of(opt.range));
  const bool is_unsigned = opt.range.lo >= 0;
  auto e_of = [&](std::size_t c) { return n_exps == 1 ? e_col[0] : e_col[c]; };
  // The output exponent must cover every column's largest magnitude at that column's input exponent.
  bool any = false;
  int e_out = e_of(0);
  if (n_exps == 1) {
    const uint64_t m = opt.known_max != nullptr ? *opt.known_max : max_magnitude(x, rows * cols, is_unsigned, pool);
    if (m > 0) {
      any = true;
      e_out = e_col[0] + tensor_shift(x, rows * cols, m, limit, opt);
    }
  } else {
    std::vector<uint64_t> colmax(cols, 0);
    col_max_magnitude(x, rows, cols, is_unsigned, colmax.data(), pool);  // per-column max_magnitude
    for (std::size_t c = 0; c < cols; ++c) {
      if (colmax[c] == 0) continue;
      const int e = e_of(c) + covering_shift(colmax[c], limit);
      e_out = any ? std::max(e_out, e) : e;
      any = true;
    }
  }
  if (!any) {
    std::fill(out, out + rows * cols, int8_t{0});
    return e_out;
  }
  if (n_exps == 1) {
    round_span(x, rows * cols, e_out - e_col[0], opt, opt.index0, out, pool);
    return e_out;
  }
  // Per-column shifts: nearest-even row by row; stochastic through single-element spans (rare: activations are
  // rounded to nearest).
  std::vector<int> shift(cols);
  for (std::size_t c = 0; c < cols; ++c) shift[c] = e_out - e_of(c);
  if (opt.rounding == Rounding::kNearestEven) {
    requantize_cols(x, rows, cols, shift.data(), opt.range, out, nullptr, pool);
    return e_out;
  }
  kernels::PassSplit(pool, rows)
      .run(work_of(5.0 * static_cast<double>(rows * cols)), [&](std::size_t, std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r)
          for (std::size_t c = 0; c < cols; ++c)
            round_span(x + r * cols + c, 1, shift[c], opt, opt.index0 + r * cols + c, out + r * cols + c);
      });
  return e_out;
}

int max_column_groups(const IntRange& range) {
  return int8_headroom(static_cast<uint32_t>(range_magnitude_of(range))) + 1;
}

int quantize_column_groups(const int32_t* x, std::size_t rows, std::size_t cols, int e_in, const QuantizeOptions& opt,
                           int groups, int8_t* out, kernels::ThreadPool* pool) {
  if (groups < 1 || groups > max_column_groups(opt.range))
    throw std::invalid_argument("quantize_column_groups: " + std::to_string(groups) + " groups do not fit the carrier");
  const uint32_t limit = static_cast<uint32_t>(range_magnitude_of(opt.range));
  const bool is_unsigned = opt.range.lo >= 0;
  std::vector<uint64_t> colmax(cols, 0);
  col_max_magnitude(x, rows, cols, is_unsigned, colmax.data(), pool);
  const uint64_t m = cols == 0 ? 0 : *std::max_element(colmax.begin(), colmax.end());
  if (m == 0) {
    std::fill(out, out + rows * cols, int8_t{0});
    return e_in;
  }
  const int s0 = tensor_shift(x, rows * cols, m, limit, opt);
  std::vector<int> shift(cols), up(cols);
  for (std::size_t c = 0; c < cols; ++c) {
    int k = 0;
    while (k < groups - 1 && s0 - k - 1 >= 0 && colmax[c] <= (static_cast<uint64_t>(limit) << (s0 - k - 1))) ++k;
    shift[c] = s0 - k;
    up[c] = groups - 1 - k;
  }
  requantize_cols(x, rows, cols, shift.data(), opt.range, out, up.data(), pool);
  return e_in + s0 - (groups - 1);
}

void quantize_per_row(const int32_t* x, std::size_t rows, std::size_t cols, int e_in, const QuantizeOptions& opt,
                      int8_t* out, int* e_row) {
  const uint32_t limit = static_cast<uint32_t>(range_magnitude_of(opt.range));
  const bool is_unsigned = opt.range.lo >= 0;
  for (std::size_t r = 0; r < rows; ++r) {
    const int32_t* xr = x + r * cols;
    const uint64_t m = max_magnitude(xr, cols, is_unsigned);
    int s = m == 0 ? 0 : covering_shift(m, limit);
    if (m != 0 && opt.scale == ScaleRule::kMinError) s = min_error_shift(xr, cols, 1, s, opt.range);
    e_row[r] = e_in + s;
    round_span(xr, cols, s, opt, opt.index0 + r * cols, out + r * cols);
  }
}

}  // namespace qtrain::quant
