#include "qtrain/engine/layers/norm.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <exception>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>

#include "qtrain/engine/core/parallel.h"
#include "qtrain/kernels/norm.h"
#include "qtrain/kernels/rounding.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {
namespace {

using kernels::bit_length;
using kernels::magnitude;
using kernels::shift_round_even;
using kernels::shift_round_half_up;  // R(v, k) = floor(v/2^k + ½) (qtrain/kernels/norm.h)

// ============================================================================================================
// Per-channel scalars: m·2^e with an int64 mantissa |m| < 2^62. They carry every statistic between the element
// passes (means, σ₁, the reciprocal ρ, the backward's means), computed with integer adds, multiplies, one division
// and one square root per channel. Roundings are to nearest even; each operation keeps ≥ 30 significant bits.
// ============================================================================================================
struct Fx {
  int64_t m = 0;
  int e = 0;
};

int fx_bits(const Fx& a) { return bit_length(magnitude(a.m)); }
// |a| < 2^fx_top(a).
int fx_top(const Fx& a) { return a.e + fx_bits(a); }

// At most b significant bits; never shifts left.
Fx fx_narrow(Fx a, int b) {
  const int s = fx_bits(a) - b;
  if (s <= 0) return a;
  a.m = shift_round_even(a.m, s);
  a.e += s;
  if (fx_bits(a) > b) {  // the rounding carried into bit b: m = ±2^b, halving it is exact
    a.m /= 2;
    ++a.e;
  }
  return a;
}

// Exactly b significant bits (0 stays 0).
Fx fx_normalize(Fx a, int b) {
  if (a.m == 0) return Fx{};
  a = fx_narrow(a, b);
  const int s = b - fx_bits(a);
  a.m *= int64_t{1} << s;
  a.e -= s;
  return a;
}

Fx fx_neg(Fx a) {
  a.m = -a.m;
  return a;
}

Fx fx_mul(Fx a, Fx b) {
  a = fx_narrow(a, 31);
  b = fx_narrow(b, 31);
  return {a.m * b.m, a.e + b.e};
}

Fx fx_add(Fx a, Fx b) {
  if (a.m == 0) return b;
  if (b.m == 0) return a;
  a = fx_normalize(a, 61);
  b = fx_normalize(b, 61);
  const int e = std::max(a.e, b.e);
  return {shift_round_even(a.m, e - a.e) + shift_round_even(b.m, e - b.e), e};
}

Fx fx_sub(Fx a, Fx b) { return fx_add(a, fx_neg(b)); }

// a / b for b ≠ 0: one integer division of a 62-bit numerator by a 31-bit denominator (a 31–32-bit quotient).
Fx fx_div(Fx a, Fx b) {
  if (a.m == 0) return Fx{};
  if (b.m == 0) throw std::logic_error("normalization: division by zero");
  const bool negative = (a.m < 0) != (b.m < 0);
  const Fx num = fx_normalize({static_cast<int64_t>(magnitude(a.m)), a.e}, 62);
  const Fx den = fx_normalize({static_cast<int64_t>(magnitude(b.m)), b.e}, 31);
  const int64_t q = (num.m + den.m / 2) / den.m;
  return {negative ? -q : q, num.e - den.e};
}

// floor(sqrt(n)), bit by bit.
uint64_t isqrt(uint64_t n) {
  uint64_t r = 0;
  for (uint64_t bit = uint64_t{1} << 62; bit != 0; bit >>= 2) {
    if (n >= r + bit) {
      n -= r + bit;
      r = (r >> 1) + bit;
    } else {
      r >>= 1;
    }
  }
  return r;
}

// sqrt(a) for a ≥ 0, rounded to nearest: the mantissa is brought to 61–62 bits with an even exponent.
Fx fx_sqrt(Fx a) {
  if (a.m <= 0) return Fx{};
  Fx n = fx_normalize(a, 62);
  if (n.e % 2 != 0) n = fx_normalize(a, 61);
  const auto v = static_cast<uint64_t>(n.m);
  uint64_t r = isqrt(v);
  if (v - r * r > r) ++r;
  return {static_cast<int64_t>(r), n.e / 2};
}

// round(a / 2^e) to nearest even, saturated at ±2^62.
int64_t fx_to_int(const Fx& a, int e) { return kernels::shift_round_even_sat(a.m, e - a.e); }

// A control-plane constant as a dyadic number (30-bit mantissa).
Fx fx_const(double x) {
  const quant::Dyadic d = quant::to_dyadic(x, 30);
  return {d.mantissa, -d.shift};
}

// 1 − x for a constant x = m·2^−s in [0, 1] (exact).
Fx fx_one_minus(const Fx& x) {
  if (x.m == 0) return {1, 0};
  return {(int64_t{1} << -x.e) - x.m, x.e};
}

Fx fx_of(const Tensor& t, std::size_t c) { return {t.data<int32_t>()[c], t.exponent_at(0, c)}; }

// A 1×n int32 tensor with one exponent holding values (the finest exponent with every |q| ≤ 2^30).
Tensor fx_tensor(const std::vector<Fx>& v, int fallback_exponent) {
  int e = INT_MIN;
  for (const Fx& f : v)
    if (f.m != 0) e = std::max(e, fx_top(f) - 30);
  if (e == INT_MIN) e = fallback_exponent;
  Tensor t(1, v.size(), DType::kI32, e);
  for (std::size_t i = 0; i < v.size(); ++i) t.data<int32_t>()[i] = static_cast<int32_t>(fx_to_int(v[i], e));
  return t;
}

Fx fx_of_wide(const kernels::WideSum& w) { return fx_add({w.hi, 32}, {w.lo, 0}); }

// ============================================================================================================
// Row splits. Every element pass runs over runs of whole rows on the step's pool: a batch norm's per-column
// reductions give per-run partials that the caller merges (integer sums add, min/max combine: exact, so any split
// gives the single pass's integers), and its element-wise passes write their own rows. A layer norm's rows are
// independent groups.
// ============================================================================================================

// `chunks` runs of whole rows, chunk i = rows [rows·i/chunks, rows·(i+1)/chunks): four per thread, as for_tiles
// tiles its index space; one without a pool. run() gives each parallel task a range of consecutive chunks,
// calling fn(first_chunk, r0, r1) once for their rows; the first chunk indexes the task's scratch (Partials).
class RowSplit {
 public:
  RowSplit(kernels::ThreadPool* pool, std::size_t rows)
      : pool_(pool),
        rows_(rows),
        chunks_(pool != nullptr && pool->threads() > 1 ? std::clamp<std::size_t>(rows, 1, 4 * pool->threads()) : 1) {}

  std::size_t chunks() const { return chunks_; }

  // `work_ns`: the single-thread cost estimate for_tiles' SplitAdvisor weighs (kNsPerByte × bytes touched). An
  // exception in a task is rethrown here (the first by chunk order) after every task has finished: the pool runs
  // tasks behind C frames.
  template <class Fn>
  void run(double work_ns, Fn&& fn) const {
    if (chunks_ == 1) {
      fn(std::size_t{0}, std::size_t{0}, rows_);
      return;
    }
    std::vector<std::exception_ptr> errors(chunks_);
    for_tiles(pool_, chunks_, work_ns, [&](std::size_t c0, std::size_t c1) {
      try {
        fn(c0, row(c0), row(c1));
      } catch (...) {
        errors[c0] = std::current_exception();
      }
    });
    for (const std::exception_ptr& e : errors)
      if (e) std::rethrow_exception(e);
  }

 private:
  std::size_t row(std::size_t chunk) const { return rows_ * chunk / chunks_; }  // rows < 2^30, chunks small

  kernels::ThreadPool* pool_;
  std::size_t rows_;
  std::size_t chunks_;
};

// Per-task partials of a per-column reduction over a RowSplit: the task starting at chunk 0 writes the caller's
// array `out` (the whole result when the pass is not split), every other task a scratch row of its own.
template <class T>
class Partials {
 public:
  Partials(T* out, const RowSplit& split, std::size_t cols)
      : out_(out), cols_(cols), scratch_((split.chunks() - 1) * cols), written_(split.chunks(), 0) {}

  // The array of the task starting at `chunk` (called from that task only).
  T* at(std::size_t chunk) {
    written_[chunk] = 1;
    return chunk == 0 ? out_ : scratch_.data() + (chunk - 1) * cols_;
  }

  // out[c] = combine(out[c], partial[c]) for every other task's partial, in chunk order.
  template <class Combine>
  void merge(Combine&& combine) {
    for (std::size_t i = 1; i < written_.size(); ++i) {
      if (!written_[i]) continue;
      const T* p = scratch_.data() + (i - 1) * cols_;
      for (std::size_t c = 0; c < cols_; ++c) combine(out_[c], p[c]);
    }
  }

 private:
  T* out_;
  std::size_t cols_;
  std::vector<T> scratch_;
  std::vector<uint8_t> written_;  // one byte per chunk: tasks never share one
};

void add_to(int64_t& a, int64_t b) { a += b; }
void min_to(int32_t& a, int32_t b) { a = std::min(a, b); }
void max_to(int32_t& a, int32_t b) { a = std::max(a, b); }
// Adds WideSums part by part. A partial covers fewer rows than the whole, so every bound on a full sum (norm.h)
// holds for it. The batch norm's kernels return canonical partials (0 ≤ lo < 2^32): their lo parts add to less
// than chunks·2^32, and canonical() then gives the one representation a single pass returns (fx_of_wide rounds,
// so the representation, not only the value, must match). The layer norm's sums are never canonicalized: their
// parts add to exactly the hi and lo of one accumulation over all rows.
void add_wide(kernels::WideSum& a, const kernels::WideSum& b) {
  a.hi += b.hi;
  a.lo += b.lo;
}
void canonical(kernels::WideSum& w) {
  w.hi += w.lo >> 32;
  w.lo &= 0xFFFFFFFF;
}

// The batch norm's kernels over a RowSplit (qtrain/kernels/norm.h); a row range is an offset pointer and its row count.
void split_norm_stats(const RowSplit& split, const int32_t* x, std::size_t rows, std::size_t cols, int64_t* sum,
                      int32_t* mn, int32_t* mx) {
  Partials<int64_t> ps(sum, split, cols);
  Partials<int32_t> pmn(mn, split, cols), pmx(mx, split, cols);
  const double bytes = static_cast<double>(rows * cols * sizeof(int32_t));  // x read
  split.run(kNsPerByte * bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    kernels::norm_stats(x + r0 * cols, r1 - r0, cols, ps.at(i), pmn.at(i), pmx.at(i));
  });
  ps.merge(add_to);
  pmn.merge(min_to);
  pmx.merge(max_to);
}

void split_abs_dev(const RowSplit& split, const int32_t* x, std::size_t rows, std::size_t cols,
                   kernels::NormColumns col, int64_t* sum_abs, int64_t* sum_sign) {
  Partials<int64_t> pa(sum_abs, split, cols), ps(sum_sign, split, cols);
  const double bytes = static_cast<double>(rows * cols * sizeof(int32_t));  // x read
  split.run(kNsPerByte * bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    kernels::norm_abs_dev(x + r0 * cols, r1 - r0, cols, col, pa.at(i), ps.at(i));
  });
  pa.merge(add_to);
  ps.merge(add_to);
}

void split_sq_dev(const RowSplit& split, const int32_t* x, std::size_t rows, std::size_t cols,
                  kernels::NormColumns col, int64_t* sum_sq) {
  Partials<int64_t> ps(sum_sq, split, cols);
  const double bytes = static_cast<double>(rows * cols * sizeof(int32_t));  // x read
  split.run(kNsPerByte * bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    kernels::norm_sq_dev(x + r0 * cols, r1 - r0, cols, col, ps.at(i));
  });
  ps.merge(add_to);
}

uint64_t split_apply(const RowSplit& split, const int32_t* x, std::size_t rows, std::size_t cols,
                     kernels::NormColumns col, kernels::NormAffine aff, int32_t* y, int16_t* d_out, bool relu) {
  std::vector<uint64_t> ymax(split.chunks(), 0);
  // x read, y written, d written when stored.
  const double bytes = static_cast<double>(rows * cols * (2 * sizeof(int32_t) + (d_out ? sizeof(int16_t) : 0)));
  split.run(kNsPerByte * bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    ymax[i] = kernels::norm_apply(x + r0 * cols, r1 - r0, cols, col, aff, y + r0 * cols,
                                  d_out ? d_out + r0 * cols : nullptr, relu);
  });
  return *std::max_element(ymax.begin(), ymax.end());
}

void split_grad_stats(const RowSplit& split, const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols,
                      int64_t* sum_dy, int32_t* mn, int32_t* mx, kernels::WideSum* sum_dy_d,
                      const kernels::NormAffine* relu) {
  Partials<int64_t> ps(sum_dy, split, cols);
  Partials<int32_t> pmn(mn, split, cols), pmx(mx, split, cols);
  Partials<kernels::WideSum> pw(sum_dy_d, split, cols);
  const double bytes = static_cast<double>(rows * cols * (sizeof(int32_t) + sizeof(int16_t)));  // dy, d read
  split.run(kNsPerByte * bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    kernels::norm_grad_stats(dy + r0 * cols, d + r0 * cols, r1 - r0, cols, ps.at(i), pmn.at(i), pmx.at(i), pw.at(i),
                             relu);
  });
  ps.merge(add_to);
  pmn.merge(min_to);
  pmx.merge(max_to);
  if (split.chunks() > 1) {
    pw.merge(add_wide);
    for (std::size_t c = 0; c < cols; ++c) canonical(sum_dy_d[c]);  // the kernel's (unique) form of the value
  }
}

void split_grad_apply(const RowSplit& split, bool l1, const int32_t* dy, const int16_t* d, std::size_t rows,
                      std::size_t cols, kernels::NormColumns col, kernels::NormAffine aff, int32_t* dx,
                      const kernels::NormAffine* relu) {
  // dy, d read, dx written.
  const double bytes = static_cast<double>(rows * cols * (2 * sizeof(int32_t) + sizeof(int16_t)));
  split.run(kNsPerByte * bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    static_cast<void>(i);
    const std::size_t o = r0 * cols;
    if (l1) {
      kernels::norm_grad_apply_l1(dy + o, d + o, r1 - r0, cols, col, aff, dx + o, relu);
    } else {
      kernels::norm_grad_apply_l2(dy + o, d + o, r1 - r0, cols, col, aff, dx + o, relu);
    }
  });
}

// ============================================================================================================
// Working precision and output stages
// ============================================================================================================

// floor(x / y) for y > 0.
int64_t floor_div(int64_t x, int64_t y) {
  const int64_t q = x / y;
  return (x % y != 0 && x < 0) ? q - 1 : q;
}

// R(S/m, k) = floor(S/(m·2^k) + ½) = floor((2S + m·2^k) / (m·2^(k+1))). |S| < 2^31·m, m < 2^30, k ≤ 17.
int64_t mean_half_up(int64_t sum, int64_t m, int k) { return floor_div(2 * sum + (m << k), m << (k + 1)); }

// The smallest k ≥ 0 such that values spanning `range` have working values R(·, k) − center within ±(2^15 − 1):
// k = 0 keeps them exact when range ≤ 2^15 − 1; otherwise R's rounding may add one unit, so (range >> k) + 1 must fit.
int working_shift(uint64_t range) {
  if (range <= static_cast<uint64_t>(kernels::kNormMaxWorking)) return 0;
  int k = 1;
  while ((range >> k) + 1 > static_cast<uint64_t>(kernels::kNormMaxWorking)) ++k;
  return k;
}

// The bound on |R(v, k)| for |v| ≤ vmax.
uint64_t working_bound(uint64_t vmax, int k) { return k == 0 ? vmax : (vmax >> k) + 1; }

constexpr int kNoConstraint = INT_MIN / 4;

// One term coef·u of an output stage, with |u| ≤ umax.
struct Term {
  Fx coef;
  uint64_t umax = 0;
};

// An output stage out = ((u·a + w·b + 2^(t−1)) >> t) + c representing out·2^E ≈ coef_a·u + coef_b·w + bias.
struct Stage {
  int64_t a = 0, b = 0, c = 0;
  int t = 0;
};

// The smallest output exponent E a stage allows: each term's real magnitude below 2^(29+E) and |bias| ≤ 2^(29+E),
// so that the shifted products (< 2^29 each) plus c (≤ 2^29) stay below 2^31.
int stage_exponent(const Term& ta, const Term& tb, const Fx& bias) {
  int e = kNoConstraint;
  for (const Term* t : {&ta, &tb})
    if (t->coef.m != 0 && t->umax != 0) e = std::max(e, fx_top(t->coef) + bit_length(t->umax) - 29);
  if (bias.m != 0) e = std::max(e, fx_top(bias) - 29);
  return e;
}

// The integers of a stage at output exponent E ≥ stage_exponent: the largest t ≤ t_max such that every
// |coef_int|·umax ≤ 2^prod_bits (coef_int = round(coef·2^(t−E))); t ≥ prod_bits − 29 ≥ 0 follows from E.
Stage make_stage(const Term& ta, const Term& tb, const Fx& bias, int e_out, int prod_bits, int t_max) {
  int t = t_max;
  for (const Term* term : {&ta, &tb})
    if (term->coef.m != 0 && term->umax != 0)
      t = std::min(t, e_out + prod_bits - bit_length(term->umax) - fx_top(term->coef));
  if (t < 0) throw std::logic_error("normalization: output stage below its exponent");
  Stage s;
  s.t = t;
  s.a = ta.umax != 0 ? fx_to_int(ta.coef, e_out - t) : 0;
  s.b = tb.umax != 0 ? fx_to_int(tb.coef, e_out - t) : 0;
  s.c = fx_to_int(bias, e_out);
  return s;
}

constexpr int kDefaultExponent = -30;  // an all-zero output

std::string fmt_count(std::size_t n) { return std::to_string(n); }

void init_affine(Param& gamma, Param& beta, std::size_t n, const std::string& prefix, uint32_t layer_id) {
  // γ = 1 and β = 0 with 2^24 steps per unit (the scale init_uniform gives weights); the optimizer moves the
  // exponents as the values grow.
  gamma.name = prefix + std::to_string(layer_id) + ".gamma";
  gamma.id = layer_id * 2;
  gamma.master = Tensor(1, n, DType::kI32, -24);
  for (std::size_t i = 0; i < n; ++i) gamma.master.data<int32_t>()[i] = 1 << 24;
  gamma.decay = false;
  beta.name = prefix + std::to_string(layer_id) + ".beta";
  beta.id = layer_id * 2 + 1;
  beta.master = Tensor(1, n, DType::kI32, -24);
  beta.decay = false;
}

void check_options(const NormOptions& opt) {
  if (!(opt.eps > 0) || !std::isfinite(opt.eps))
    throw UsageError("normalization epsilon must be a positive number, got " + std::to_string(opt.eps));
  if (!(opt.momentum >= 0 && opt.momentum <= 1))
    throw UsageError("normalization momentum must be in [0, 1], got " + std::to_string(opt.momentum));
}

const Fx kC = fx_const(std::sqrt(std::acos(-1.0) / 2));  // c = sqrt(π/2)

// What a batch norm's backward needs from its forward.
struct BatchSaved {
  std::unique_ptr<int16_t[]> d;  // working values, rows×C (written in full by the forward: not zero-filled)
  std::vector<Fx> rho;           // x̂ per unit of d
  std::vector<Fx> gamma;         // the step's 15-bit γ
  std::vector<int> unit;         // exponent of one unit of d: e_c + k_c
  std::vector<uint64_t> dmax;
  std::vector<int64_t> sum_sign;  // L1: Σ sign(d) per channel (the backward's mean(s))
  std::vector<int32_t> a, t, c;   // the forward's output stage, which a fused ReLU's mask recomputes
};

}  // namespace

// ============================================================================================================
// Batch norm (L1 and L2)
// ============================================================================================================

BatchNorm::BatchNorm(NormKind kind, std::size_t channels, uint32_t layer_id, const NormOptions& opt)
    : kind_(kind), channels_(channels), opt_(opt) {
  if (channels == 0) throw UsageError("batch norm needs at least one channel");
  check_options(opt);
  init_affine(gamma_, beta_, channels, kind == NormKind::kL1 ? "l1bn" : "l2bn", layer_id);
  running_mean_ = Tensor(1, channels, DType::kI32);
  running_mean_.set_exponents(ScaleAxis::kCol, std::vector<int>(channels, 0));
  running_scale_ = Tensor(1, channels, DType::kI32);
  for (std::size_t c = 0; c < channels; ++c) running_scale_.data<int32_t>()[c] = 1 << 30;
  running_scale_.set_exponents(ScaleAxis::kCol, std::vector<int>(channels, -30));
}

std::string BatchNorm::name() const {
  return std::string(kind_ == NormKind::kL1 ? "L1BatchNorm(" : "L2BatchNorm(") + fmt_count(channels_) + ")" +
         (opt_.relu ? "+ReLU" : "");
}

// Forward, per channel c over the m rows (float formula in norm.h):
//   pass 1  Σx, min x, max x                                  (kernels::norm_stats)
//           k, μ' = R(Σx/m, k)  (eval: μ' = R(running mean, k))  → d = R(x, k) − μ', |d| ≤ 2^15 − 1
//   pass 2  L1: Σ|d| and Σsign(d)   L2: Σd²                   (kernels::norm_abs_dev / norm_sq_dev; training only)
//           ρ = 1/(c·Σ|d|/m + ε/2^(e_c+k))   L2: ρ = 1/sqrt(Σd²/m + ε/2^(2(e_c+k)))     x̂ = d·ρ
//           (eval: σ₁ or the variance from the running statistics, same formulas)
//   pass 3  y = γ·x̂ + β = d·(γρ) + β  →  y_q = R((d·a) / 2^t) + β_q at one output exponent (kernels::norm_apply),
//           storing d as int16 for the backward.
// Backward, per channel (g = γ·dy, u = R(dy, k_dy) the 16-bit working gradient):
//   pass 1  Σdy, max|dy|, Σdy·d                                        (kernels::norm_grad_stats)
//           mean(g·x̂) = γ·ρ·Σdy·d/m
//   L1      dx = γρ/2^(e_c+k)·[dy − mean(dy) − c·mean(dy·x̂)·(s − mean(s))]
//              = u·A + s·K + B   with A = γρ·2^(e_dy+k_dy−e_c−k), K = −γρ·c·mean(dy·x̂)/2^(e_c+k),
//                                     B = −γρ·(mean(dy) − c·mean(dy·x̂)·mean(s))/2^(e_c+k)
//   L2      dx = γρ/2^(e_c+k)·[dy − mean(dy) − x̂·mean(dy·x̂)] = u·A + d·K + B, K = −γρ²·mean(dy·x̂)/2^(e_c+k)
//   pass 2  dx_q = R((u·a + w·b) / 2^t) + b_q   (kernels::norm_grad_apply_l1 / _l2)
//           dγ = Σ dy·x̂ = ρ·Σdy·d,  dβ = Σ dy (exact sums)
VarPtr BatchNorm::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  if (xv.dtype() != DType::kI32) throw std::logic_error(name() + " expects an int32 input, got " + xv.describe());
  if (xv.cols() != channels_)
    throw std::invalid_argument(name() + ": input has " + fmt_count(xv.cols()) + " channels, expected " +
                                fmt_count(channels_));
  if (xv.rows() == 0) throw std::invalid_argument(name() + ": empty input");
  if (xv.rows() >= (std::size_t{1} << 30))
    throw UsageError(name() + ": " + fmt_count(xv.rows()) + " rows per channel exceed 2^30 (the int64 sum bound)");
  if (xv.axis() == ScaleAxis::kRow) throw std::logic_error(name() + ": input with per-row exponents");

  const std::size_t m = xv.rows(), nc = channels_;
  const bool training = ctx.training();
  const bool l1 = kind_ == NormKind::kL1;
  const int32_t* xp = xv.data<int32_t>();
  const Fx eps = fx_const(opt_.eps);
  const Fx m_fx{static_cast<int64_t>(m), 0};

  // Pass 1 and the working precision.
  std::vector<int64_t> sum(nc);
  std::vector<int32_t> lo(nc), hi(nc), shift(nc), center(nc);
  const RowSplit split(ctx.pool, m);
  split_norm_stats(split, xp, m, nc, sum.data(), lo.data(), hi.data());
  auto saved = std::make_shared<BatchSaved>();
  saved->rho.resize(nc);
  saved->gamma.resize(nc);
  saved->unit.resize(nc);
  saved->dmax.resize(nc);
  for (std::size_t c = 0; c < nc; ++c) {
    const int e = xv.exponent_at(0, c);
    int k = 0;
    int64_t mu = 0;
    if (training) {
      k = working_shift(static_cast<uint64_t>(int64_t{hi[c]} - lo[c]));
      mu = mean_half_up(sum[c], static_cast<int64_t>(m), k);
    } else {
      constexpr int64_t kFar = int64_t{1} << 61;  // beyond this the running mean is "infinitely" far anyway
      const int64_t r = std::clamp(fx_to_int(fx_of(running_mean_, c), e), -kFar, kFar);
      k = working_shift(static_cast<uint64_t>(std::max<int64_t>({0, hi[c] - r, r - lo[c]})));
      if (k == 0 && (r > std::numeric_limits<int32_t>::max() || r < std::numeric_limits<int32_t>::min())) k = 1;
      mu = shift_round_half_up(r, k);
    }
    shift[c] = k;
    center[c] = static_cast<int32_t>(mu);
    saved->unit[c] = e + k;
    saved->dmax[c] = static_cast<uint64_t>(std::max(shift_round_half_up(hi[c], k) - mu, mu - shift_round_half_up(lo[c], k)));
  }
  const kernels::NormColumns col{shift.data(), center.data()};

  // Pass 2 (training) or the running statistics (eval) → ρ.
  if (training) {
    std::vector<int64_t> dev(nc);
    if (l1) {
      saved->sum_sign.resize(nc);
      split_abs_dev(split, xp, m, nc, col, dev.data(), saved->sum_sign.data());
    } else {
      split_sq_dev(split, xp, m, nc, col, dev.data());
    }
    const Fx alpha = fx_const(opt_.momentum), keep = fx_one_minus(alpha);
    std::vector<int> e_mean(nc), e_scale(nc);
    for (std::size_t c = 0; c < nc; ++c) {
      const int unit = saved->unit[c];
      Fx batch_scale;
      if (l1) {
        const Fx sigma = fx_div({dev[c], 0}, m_fx);  // σ₁ in units of d
        saved->rho[c] = fx_div({1, 0}, fx_add(fx_mul(kC, sigma), {eps.m, eps.e - unit}));
        batch_scale = {sigma.m, sigma.e + unit};
      } else {
        const Fx var = fx_div({dev[c], 0}, m_fx);  // in units of d²
        saved->rho[c] = fx_div({1, 0}, fx_sqrt(fx_add(var, {eps.m, eps.e - 2 * unit})));
        const Fx unbiased = fx_div({dev[c], 0}, {static_cast<int64_t>(m > 1 ? m - 1 : 1), 0});
        batch_scale = {unbiased.m, unbiased.e + 2 * unit};
      }
      // r ← (1 − momentum)·r + momentum·batch, in real units.
      const Fx batch_mean = fx_div({sum[c], xv.exponent_at(0, c)}, m_fx);
      const Fx rm = fx_narrow(fx_add(fx_mul(keep, fx_of(running_mean_, c)), fx_mul(alpha, batch_mean)), 31);
      const Fx rs = fx_narrow(fx_add(fx_mul(keep, fx_of(running_scale_, c)), fx_mul(alpha, batch_scale)), 31);
      running_mean_.data<int32_t>()[c] = static_cast<int32_t>(rm.m);
      running_scale_.data<int32_t>()[c] = static_cast<int32_t>(rs.m);
      e_mean[c] = rm.e;
      e_scale[c] = rs.e;
    }
    running_mean_.set_exponents(ScaleAxis::kCol, std::move(e_mean));
    running_scale_.set_exponents(ScaleAxis::kCol, std::move(e_scale));
  } else {
    for (std::size_t c = 0; c < nc; ++c) {
      const int unit = saved->unit[c];
      const Fx s = fx_of(running_scale_, c);
      if (l1) {
        saved->rho[c] = fx_div({1, 0}, fx_add(fx_mul(kC, {s.m, s.e - unit}), {eps.m, eps.e - unit}));
      } else {
        saved->rho[c] = fx_div({1, 0}, fx_sqrt(fx_add({s.m, s.e - 2 * unit}, {eps.m, eps.e - 2 * unit})));
      }
    }
  }

  // Pass 3: y = d·(γρ) + β at one exponent.
  std::vector<Term> terms(nc);
  std::vector<Fx> bias(nc);
  int e_out = kNoConstraint;
  for (std::size_t c = 0; c < nc; ++c) {
    saved->gamma[c] = fx_narrow(fx_of(gamma_.master, c), 15);
    terms[c] = {fx_mul(saved->gamma[c], saved->rho[c]), saved->dmax[c]};
    bias[c] = fx_of(beta_.master, c);
    e_out = std::max(e_out, stage_exponent(terms[c], Term{}, bias[c]));
  }
  if (e_out == kNoConstraint) e_out = kDefaultExponent;
  std::vector<int32_t>& a = saved->a;
  std::vector<int32_t>& t = saved->t;
  std::vector<int32_t>& cc = saved->c;
  a.resize(nc);
  t.resize(nc);
  cc.resize(nc);
  for (std::size_t c = 0; c < nc; ++c) {
    const Stage s = make_stage(terms[c], Term{}, bias[c], e_out, 29, 30);
    a[c] = static_cast<int32_t>(s.a);
    t[c] = s.t;
    cc[c] = static_cast<int32_t>(s.c);
  }
  auto out = std::make_shared<Var>();
  out->value = Tensor::uninitialized(m, nc, DType::kI32, e_out);  // norm_apply writes every element
  if (training) saved->d.reset(new int16_t[m * nc]);
  const uint64_t ymax = split_apply(split, xp, m, nc, col, {a.data(), nullptr, t.data(), cc.data()},
                                    out->value.data<int32_t>(), training ? saved->d.get() : nullptr, opt_.relu);
  if (opt_.relu) out->value.set_nonnegative_max(ymax);
  if (!training) return out;

  ctx.tape->record([this, x, out, saved, m, nc, l1, split] {
    if (!out->has_grad) return;
    const Tensor& dy = out->grad;
    if (dy.axis() != ScaleAxis::kTensor) throw std::logic_error(name() + ": gradient with several exponents");
    const int e_dy = dy.exponent();
    const Fx mm{static_cast<int64_t>(m), 0};
    std::vector<int64_t> sum_dy(nc);
    std::vector<int32_t> mn(nc), mx(nc), kd(nc), zero(nc, 0);
    std::vector<kernels::WideSum> sum_dy_d(nc);
    const kernels::NormAffine fwd{saved->a.data(), nullptr, saved->t.data(), saved->c.data()};
    const kernels::NormAffine* relu = opt_.relu ? &fwd : nullptr;
    split_grad_stats(split, dy.data<int32_t>(), saved->d.get(), m, nc, sum_dy.data(), mn.data(), mx.data(),
                     sum_dy_d.data(), relu);
    std::vector<Fx> dgamma(nc), dbeta(nc), bias_dx(nc);
    std::vector<Term> ta(nc), tb(nc);
    int e_dx = kNoConstraint;
    for (std::size_t c = 0; c < nc; ++c) {
      const uint64_t amax = std::max(magnitude(mx[c]), magnitude(mn[c]));
      kd[c] = working_shift(amax);
      const Fx rho = saved->rho[c];
      const Fx dot = fx_of_wide(sum_dy_d[c]);                  // Σ dy·d, units 2^e_dy × (unit of d)
      const Fx dot_xhat = fx_mul(rho, {dot.m, dot.e + e_dy});  // Σ dy·x̂ (real)
      dgamma[c] = dot_xhat;
      dbeta[c] = {sum_dy[c], e_dy};
      const Fx mean_dy = fx_div({sum_dy[c], e_dy}, mm);
      const Fx mean_dy_xhat = fx_div(dot_xhat, mm);
      Fx gr = fx_mul(saved->gamma[c], rho);  // γρ per real unit of x:
      gr.e -= saved->unit[c];
      ta[c] = {{gr.m, gr.e + e_dy + kd[c]}, working_bound(amax, kd[c])};
      if (l1) {
        const Fx mean_s = fx_div({saved->sum_sign[c], 0}, mm);
        const Fx c_mean_dy_xhat = fx_mul(kC, mean_dy_xhat);
        tb[c] = {fx_neg(fx_mul(gr, c_mean_dy_xhat)), saved->dmax[c] > 0 ? 1u : 0u};
        bias_dx[c] = fx_neg(fx_mul(gr, fx_sub(mean_dy, fx_mul(c_mean_dy_xhat, mean_s))));
      } else {
        tb[c] = {fx_neg(fx_mul(fx_mul(gr, mean_dy_xhat), rho)), saved->dmax[c]};
        bias_dx[c] = fx_neg(fx_mul(gr, mean_dy));
      }
      e_dx = std::max(e_dx, stage_exponent(ta[c], tb[c], bias_dx[c]));
    }
    if (x->requires_grad) {
      if (e_dx == kNoConstraint) e_dx = kDefaultExponent;
      std::vector<int32_t> a2(nc), b2(nc), t2(nc), c2(nc);
      for (std::size_t c = 0; c < nc; ++c) {
        const Stage s = make_stage(ta[c], tb[c], bias_dx[c], e_dx, 29, 30);
        a2[c] = static_cast<int32_t>(s.a);
        b2[c] = static_cast<int32_t>(s.b);
        t2[c] = s.t;
        c2[c] = static_cast<int32_t>(s.c);
      }
      Tensor dx = Tensor::uninitialized(m, nc, DType::kI32, e_dx);  // the kernel writes every element
      const kernels::NormColumns gcol{kd.data(), zero.data()};
      const kernels::NormAffine aff{a2.data(), b2.data(), t2.data(), c2.data()};
      split_grad_apply(split, l1, dy.data<int32_t>(), saved->d.get(), m, nc, gcol, aff, dx.data<int32_t>(), relu);
      accumulate_grad(*x, std::move(dx));
    }
    gamma_.grad = fx_tensor(dgamma, e_dy);
    gamma_.has_grad = true;
    beta_.grad = fx_tensor(dbeta, e_dy);
    beta_.has_grad = true;
  });
  return out;
}

// ============================================================================================================
// L1 layer norm
// ============================================================================================================

L1LayerNorm::L1LayerNorm(std::size_t features, uint32_t layer_id, const NormOptions& opt)
    : features_(features), opt_(opt) {
  if (features == 0) throw UsageError("layer norm needs at least one feature");
  if (features > (std::size_t{1} << 16))
    throw UsageError("layer norm over " + fmt_count(features) + " features exceeds 65536 (the int64 row-sum bound)");
  check_options(opt);
  init_affine(gamma_, beta_, features, "l1ln", layer_id);
}

std::string L1LayerNorm::name() const { return "L1LayerNorm(" + fmt_count(features_) + ")"; }

namespace {

// A layer norm reduces across columns, so per-column exponents are brought to one: the finest exponent at which
// every column still fits int32 (exact left shifts; columns finer than it are rounded to nearest even).
Tensor align_columns(const Tensor& x, kernels::ThreadPool* pool) {
  const std::size_t rows = x.rows(), cols = x.cols();
  const RowSplit split(pool, rows);
  std::vector<uint64_t> mx(cols, 0);
  const int32_t* p = x.data<int32_t>();
  Partials<uint64_t> pmx(mx.data(), split, cols);
  split.run(kNsPerByte * static_cast<double>(rows * cols * sizeof(int32_t)),  // x read
            [&](std::size_t i, std::size_t r0, std::size_t r1) {
              uint64_t* m = pmx.at(i);
              std::fill(m, m + cols, 0);
              for (std::size_t r = r0; r < r1; ++r)
                for (std::size_t c = 0; c < cols; ++c) m[c] = std::max(m[c], magnitude(p[r * cols + c]));
            });
  pmx.merge([](uint64_t& a, uint64_t b) { a = std::max(a, b); });
  int e = INT_MIN, e_any = INT_MIN;
  for (std::size_t c = 0; c < cols; ++c) {
    e_any = std::max(e_any, x.exponent_at(0, c));
    if (mx[c] != 0) e = std::max(e, x.exponent_at(0, c) + bit_length(mx[c]) - 31);
  }
  if (e == INT_MIN) e = e_any;
  std::vector<int> shift(cols);
  for (std::size_t c = 0; c < cols; ++c) shift[c] = e - x.exponent_at(0, c);
  Tensor out = Tensor::uninitialized(rows, cols, DType::kI32, e);  // every element written below
  int32_t* q = out.data<int32_t>();
  split.run(kNsPerByte * static_cast<double>(rows * cols * 2 * sizeof(int32_t)),  // x read, out written
            [&](std::size_t, std::size_t r0, std::size_t r1) {
              for (std::size_t r = r0; r < r1; ++r)
                for (std::size_t c = 0; c < cols; ++c)
                  q[r * cols + c] = static_cast<int32_t>(shift_round_even(p[r * cols + c], shift[c]));
            });
  return out;
}

struct LayerSaved {
  std::vector<int16_t> d;   // working values, rows×F
  std::vector<int32_t> xh;  // x̂ at exponent e_xh, |x̂_q| ≤ 2^15
  int e_xh = 0;
  std::vector<Fx> rho;    // per row, x̂ per unit of d
  std::vector<int> unit;  // per row, exponent of one unit of d
  std::vector<uint64_t> dmax;
  std::vector<int32_t> gq;  // γ at 15 bits with one exponent
  int e_gq = 0;
};

}  // namespace

// Forward, per row over its F features (float formula in norm.h):
//   S = Σx, min, max → k, μ' = R(S/F, k), d = R(x, k) − μ', T = Σ|d|, ρ = 1/(c·T/F + ε/2^(e+k)), x̂ = d·ρ
//   x̂_q = round(x̂ / 2^e_xh) with one exponent e_xh for the tensor (|x̂_q| ≤ 2^15: 15-bit fixed point)
//   y = γ·x̂ + β:  y_q = round(x̂_q·γ_q / 2^(e_y − e_xh − e_γ)) + β_q   (γ_q: 15 bits, one exponent)
// Backward, per row (g = γ·dy, G = γ_q·R(dy, k_dy) the integer g, s = sign(d)):
//   dx = ρ/2^(e+k)·[g − mean(g) − c·mean(g·x̂)·(s − mean(s))],  mean(g·x̂) = ρ·ΣG·d/F (in units of G)
//      = G·A + s·K + B   (int64 products: |G| < 2^30)
//   dγ_j = Σ_rows dy·x̂ (exact wide sums of dy·x̂_q), dβ_j = Σ_rows dy (exact)
VarPtr L1LayerNorm::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xin = x->value;
  if (xin.dtype() != DType::kI32) throw std::logic_error(name() + " expects an int32 input, got " + xin.describe());
  if (xin.cols() != features_)
    throw std::invalid_argument(name() + ": input has " + fmt_count(xin.cols()) + " features, expected " +
                                fmt_count(features_));
  if (xin.rows() == 0) throw std::invalid_argument(name() + ": empty input");
  Tensor aligned;
  const Tensor* src = &xin;
  if (xin.axis() == ScaleAxis::kCol) {
    aligned = align_columns(xin, ctx.pool);
    src = &aligned;
  }
  const std::size_t n = src->rows(), nf = features_;
  const int32_t* xp = src->data<int32_t>();
  const Fx eps = fx_const(opt_.eps);
  const Fx f_fx{static_cast<int64_t>(nf), 0};
  // Rows are independent groups: every pass over them is split in runs of rows. Per element, the statistics pass
  // reads x twice and writes d; the output pass reads d and writes x̂ and y.
  const RowSplit split(ctx.pool, n);
  const double pass_ns = kNsPerByte * static_cast<double>(n * nf * (2 * sizeof(int32_t) + sizeof(int16_t)));

  auto saved = std::make_shared<LayerSaved>();
  saved->d.resize(n * nf);
  saved->xh.resize(n * nf);
  saved->rho.resize(n);
  saved->unit.resize(n);
  saved->dmax.resize(n);
  std::vector<int> e_xh_part(split.chunks(), kNoConstraint);  // per task: max over its rows
  split.run(pass_ns, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    int e_xh = kNoConstraint;
    for (std::size_t r = r0; r < r1; ++r) {
      const int32_t* row = xp + r * nf;
      int64_t s = 0;
      int32_t lo = row[0], hi = row[0];
      for (std::size_t j = 0; j < nf; ++j) {
        s += row[j];
        lo = std::min(lo, row[j]);
        hi = std::max(hi, row[j]);
      }
      const int k = working_shift(static_cast<uint64_t>(int64_t{hi} - lo));
      const int64_t mu = mean_half_up(s, static_cast<int64_t>(nf), k);
      int64_t t = 0;
      int16_t* d = saved->d.data() + r * nf;
      for (std::size_t j = 0; j < nf; ++j) {
        const int64_t v = shift_round_half_up(row[j], k) - mu;
        d[j] = static_cast<int16_t>(v);
        t += v < 0 ? -v : v;
      }
      const int unit = src->exponent_at(r, 0) + k;
      saved->unit[r] = unit;
      saved->rho[r] = fx_div({1, 0}, fx_add(fx_mul(kC, fx_div({t, 0}, f_fx)), {eps.m, eps.e - unit}));
      saved->dmax[r] = static_cast<uint64_t>(std::max(shift_round_half_up(hi, k) - mu, mu - shift_round_half_up(lo, k)));
      const Fx xmax = fx_mul(saved->rho[r], {static_cast<int64_t>(saved->dmax[r]), 0});
      if (xmax.m != 0) e_xh = std::max(e_xh, fx_top(xmax) - 15);
    }
    e_xh_part[i] = e_xh;
  });
  int e_xh = *std::max_element(e_xh_part.begin(), e_xh_part.end());
  if (e_xh == kNoConstraint) e_xh = -15;
  saved->e_xh = e_xh;

  // γ to 15 bits with one exponent; β to the output's exponent.
  const Tensor& gm = gamma_.master;
  uint64_t gmax = 0, bmax = 0;
  for (std::size_t j = 0; j < nf; ++j) {
    gmax = std::max(gmax, magnitude(gm.data<int32_t>()[j]));
    bmax = std::max(bmax, magnitude(beta_.master.data<int32_t>()[j]));
  }
  const int sg = gmax > 0 ? quant::covering_shift(gmax, 32767) : 0;
  saved->gq.resize(nf);
  uint64_t gqmax = 0;
  for (std::size_t j = 0; j < nf; ++j) {
    saved->gq[j] = static_cast<int32_t>(shift_round_even(gm.data<int32_t>()[j], sg));
    gqmax = std::max(gqmax, magnitude(saved->gq[j]));
  }
  saved->e_gq = gm.exponent() + sg;
  // |y| ≤ (2^15 + 1)·2^e_xh·max|γ| + max|β|, at 30 bits.
  const Fx ybound = fx_add(fx_mul({(int64_t{1} << 15) + 1, e_xh}, {static_cast<int64_t>(gqmax), saved->e_gq}),
                           {static_cast<int64_t>(bmax), beta_.master.exponent()});
  const int e_y = ybound.m != 0 ? fx_top(ybound) - 30 : kDefaultExponent;
  const int sy = e_y - e_xh - saved->e_gq;
  std::vector<int64_t> bq(nf);
  for (std::size_t j = 0; j < nf; ++j) bq[j] = fx_to_int(fx_of(beta_.master, j), e_y);
  auto out = std::make_shared<Var>();
  out->value = Tensor::uninitialized(n, nf, DType::kI32, e_y);  // every element written below
  int32_t* y = out->value.data<int32_t>();
  // x̂ and y, row by row.
  split.run(pass_ns, [&](std::size_t, std::size_t r0, std::size_t r1) {
    for (std::size_t r = r0; r < r1; ++r) {
      const Fx rho = fx_narrow(saved->rho[r], 31);
      const int s = e_xh - rho.e;
      for (std::size_t j = 0; j < nf; ++j) {
        const std::size_t i = r * nf + j;
        saved->xh[i] = static_cast<int32_t>(shift_round_even(int64_t{saved->d[i]} * rho.m, s));
        y[i] = static_cast<int32_t>(shift_round_even(int64_t{saved->xh[i]} * saved->gq[j], sy) + bq[j]);
      }
    }
  });
  if (!ctx.training()) return out;

  ctx.tape->record([this, x, out, saved, n, nf, split] {
    if (!out->has_grad) return;
    const Tensor& dy = out->grad;
    if (dy.axis() != ScaleAxis::kTensor) throw std::logic_error(name() + ": gradient with several exponents");
    const int e_dy = dy.exponent();
    const int32_t* g = dy.data<int32_t>();
    const Fx count{static_cast<int64_t>(nf), 0};
    const bool need_dx = x->requires_grad;

    // One pass over the rows: per feature dγ_j = Σ_r dy·x̂, dβ_j = Σ_r dy (per-task partials, merged exactly: the
    // WideSums part by part as one accumulation adds them); per row (input gradient) the stage's terms.
    std::vector<kernels::WideSum> dot(nf);
    std::vector<int64_t> sdy(nf, 0);
    Partials<kernels::WideSum> pdot(dot.data(), split, nf);
    Partials<int64_t> psdy(sdy.data(), split, nf);
    std::vector<Term> ta(need_dx ? n : 0), tb(need_dx ? n : 0);
    std::vector<Fx> bias(need_dx ? n : 0);
    std::vector<int> kd(need_dx ? n : 0);
    std::vector<int> e_dx_part(split.chunks(), kNoConstraint);
    // dy read (twice with dx), x̂ read, d read with dx.
    const double stats_bytes = static_cast<double>(
        n * nf * (2 * sizeof(int32_t) + (need_dx ? sizeof(int32_t) + sizeof(int16_t) : 0)));
    split.run(kNsPerByte * stats_bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
      kernels::WideSum* dt = pdot.at(i);
      int64_t* sd = psdy.at(i);
      std::fill(dt, dt + nf, kernels::WideSum{});
      std::fill(sd, sd + nf, 0);
      for (std::size_t r = r0; r < r1; ++r)
        for (std::size_t j = 0; j < nf; ++j) {
          const std::size_t e = r * nf + j;
          const int64_t p = int64_t{g[e]} * saved->xh[e];  // |p| ≤ 2^46
          dt[j].lo += p & 0xFFFFFFFF;
          dt[j].hi += p >> 32;
          sd[j] += g[e];
        }
      if (!need_dx) return;
      int e_dx = kNoConstraint;
      for (std::size_t r = r0; r < r1; ++r) {
        const int32_t* gr_row = g + r * nf;
        const int16_t* d = saved->d.data() + r * nf;
        uint64_t amax = 0;
        for (std::size_t j = 0; j < nf; ++j) amax = std::max(amax, magnitude(gr_row[j]));
        kd[r] = working_shift(amax);
        int64_t sum_g = 0, sum_gd = 0, sum_s = 0;
        uint64_t gmax_row = 0;
        for (std::size_t j = 0; j < nf; ++j) {
          const int64_t gg = saved->gq[j] * shift_round_half_up(gr_row[j], kd[r]);  // |G| < 2^30
          sum_g += gg;
          sum_gd += gg * d[j];  // |G·d| < 2^45, F ≤ 2^16 terms
          sum_s += (d[j] > 0) - (d[j] < 0);
          gmax_row = std::max(gmax_row, magnitude(gg));
        }
        const Fx rho = saved->rho[r];
        // A: dx per unit of G; G's unit is 2^(e_γ + e_dy + k_dy).
        Fx a_coef = fx_narrow(rho, 31);
        a_coef.e += saved->e_gq + e_dy + kd[r] - saved->unit[r];
        const Fx mean_g = fx_div({sum_g, 0}, count);
        const Fx mean_gx = fx_mul(kC, fx_div(fx_mul(rho, {sum_gd, 0}), count));  // c·mean(G·x̂), units of G
        const Fx mean_s = fx_div({sum_s, 0}, count);
        ta[r] = {a_coef, gmax_row};
        tb[r] = {fx_neg(fx_mul(a_coef, mean_gx)), saved->dmax[r] > 0 ? 1u : 0u};
        bias[r] = fx_neg(fx_mul(a_coef, fx_sub(mean_g, fx_mul(mean_gx, mean_s))));
        e_dx = std::max(e_dx, stage_exponent(ta[r], tb[r], bias[r]));
      }
      e_dx_part[i] = e_dx;
    });
    pdot.merge(add_wide);
    psdy.merge(add_to);
    std::vector<Fx> dgamma(nf), dbeta(nf);
    for (std::size_t j = 0; j < nf; ++j) {
      const Fx v = fx_of_wide(dot[j]);
      dgamma[j] = {v.m, v.e + e_dy + saved->e_xh};
      dbeta[j] = {sdy[j], e_dy};
    }

    if (need_dx) {
      int e_dx = *std::max_element(e_dx_part.begin(), e_dx_part.end());
      if (e_dx == kNoConstraint) e_dx = kDefaultExponent;
      Tensor dx = Tensor::uninitialized(n, nf, DType::kI32, e_dx);  // every element written below
      int32_t* out_dx = dx.data<int32_t>();
      // dy, d read, dx written.
      const double dx_bytes = static_cast<double>(n * nf * (2 * sizeof(int32_t) + sizeof(int16_t)));
      split.run(kNsPerByte * dx_bytes, [&](std::size_t, std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
          const Stage s = make_stage(ta[r], tb[r], bias[r], e_dx, 60, 61);
          const int32_t* gr_row = g + r * nf;
          const int16_t* d = saved->d.data() + r * nf;
          for (std::size_t j = 0; j < nf; ++j) {
            const int64_t gg = saved->gq[j] * shift_round_half_up(gr_row[j], kd[r]);
            const int64_t w = (d[j] > 0) - (d[j] < 0);
            out_dx[r * nf + j] = static_cast<int32_t>(shift_round_half_up(gg * s.a + w * s.b, s.t) + s.c);
          }
        }
      });
      accumulate_grad(*x, std::move(dx));
    }
    gamma_.grad = fx_tensor(dgamma, e_dy);
    gamma_.has_grad = true;
    beta_.grad = fx_tensor(dbeta, e_dy);
    beta_.has_grad = true;
  });
  return out;
}

}  // namespace qtrain
