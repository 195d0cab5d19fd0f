#include "qtrain/engine/layers/norm_stage.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "qtrain/quant/error.h"

namespace qtrain::norm_stage {

Fx fx_of(const Tensor& t, std::size_t c) { return {t.data<int32_t>()[c], t.exponent_at(0, c)}; }

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

void add_to(int64_t& a, int64_t b) { a += b; }
void min_to(int32_t& a, int32_t b) { a = std::min(a, b); }
void max_to(int32_t& a, int32_t b) { a = std::max(a, b); }
void add_wide(kernels::WideSum& a, const kernels::WideSum& b) {
  a.hi += b.hi;
  a.lo += b.lo;
}
void canonical(kernels::WideSum& w) {
  w.hi += w.lo >> 32;
  w.lo &= 0xFFFFFFFF;
}

namespace {
// floor(x / y) for y > 0.
int64_t floor_div(int64_t x, int64_t y) {
  const int64_t q = x / y;
  return (x % y != 0 && x < 0) ? q - 1 : q;
}
}  // namespace

int64_t mean_half_up(int64_t sum, int64_t m, int k) { return floor_div(2 * sum + (m << k), m << (k + 1)); }

int working_shift(uint64_t range) {
  if (range <= static_cast<uint64_t>(kernels::kNormMaxWorking)) return 0;
  int k = 1;
  while ((range >> k) + 1 > static_cast<uint64_t>(kernels::kNormMaxWorking)) ++k;
  return k;
}

uint64_t working_bound(uint64_t vmax, int k) { return k == 0 ? vmax : (vmax >> k) + 1; }

int stage_exponent(const Term& ta, const Term& tb, const Fx& bias) {
  int e = kNoConstraint;
  for (const Term* t : {&ta, &tb})
    if (t->coef.m != 0 && t->umax != 0) e = std::max(e, fx_top(t->coef) + bit_length(t->umax) - 29);
  if (bias.m != 0) e = std::max(e, fx_top(bias) - 29);
  return e;
}

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

std::string fmt_count(std::size_t n) { return std::to_string(n); }

void init_affine(Param& gamma, Param& beta, std::size_t n, const std::string& layer_name, uint32_t layer_id) {
  // γ = 1 and β = 0 with 2^24 steps per unit (the scale init_uniform gives weights); the optimizer moves the
  // exponents as the values grow.
  gamma.name = layer_name + ".gamma";
  gamma.id = layer_id * 2;
  gamma.master = Tensor(1, n, DType::kI32, -24);
  for (std::size_t i = 0; i < n; ++i) gamma.master.data<int32_t>()[i] = 1 << 24;
  gamma.decay = false;
  beta.name = layer_name + ".beta";
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

void check_input(const std::string& layer, const Tensor& x, std::size_t width, const char* what) {
  if (x.dtype() != DType::kI32) throw std::logic_error(layer + " expects an int32 input, got " + x.describe());
  if (x.cols() != width)
    throw std::invalid_argument(layer + ": input has " + fmt_count(x.cols()) + " " + what + ", expected " +
                                fmt_count(width));
  if (x.rows() == 0) throw std::invalid_argument(layer + ": empty input");
}

}  // namespace qtrain::norm_stage
