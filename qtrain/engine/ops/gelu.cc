// Integer GELU (gelu.h): the tables and the op.
//
// Table entries. With x = q·2^e (|q| ≤ 127) both entries need Φ(x) and x·φ(x). For |x| ≤ 8 they come from the series
//   p_n = x^(2n+1)/(2^n·n!),   Φ(x) = ½ + C·Σ (−1)^n p_n/(2n+1),   x·φ(x) = C·Σ (−1)^n p_n,   C = 1/√(2π),
// summed in signed 128-bit fixed point with 64 fraction bits (Q64). p_n peaks near n = x²/2 at 2^45.3 (x = 8);
// p_n = p_(n−1)/(2n)·q²·2^(2e) is formed as divide, multiply by q² ≤ 2^14, shift: below 2^(45.3+64+14) < 2^127.
// Each of the ≤ 200 terms truncates by < 3 units of 2^−64, so both sums are within 2^−55 of exact, and
// 128·q·Φ within 2^−41: an entry could round the wrong way only if its exact value lay within 2^−41 of a half
// integer, which the builder checks (2^−40 margin; std::logic_error, never met for bits 2..8, e −60..+40, tests).
// For |x| > 8: 1 − Φ(x) < φ(8)/8 < 7·10^−17 and |x|·φ(x) < 10^−12, so T = 128q (x > 0) or 0, D = 2^16 or 0.
// For e < −30 (|x| < 2^−23): T = 64q and D = 2^15, since 128|q|·|Φ(x) − ½| < 51·q²·2^e < 0.001 and likewise D.
#include "qtrain/engine/ops/gelu.h"

#include <algorithm>
#include <climits>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>

#include "qtrain/kernels/parallel.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {

void GeluConfig::validate() const {
  if (bits < 2 || bits > 8) throw UsageError("gelu.bits = " + std::to_string(bits) + " is outside 2..8");
}

namespace {

__extension__ using I128 = __int128;  // GCC/Clang extension: the Q64 series
__extension__ using U128 = unsigned __int128;
constexpr int kFrac = 64;
// round(2^64/√(2π)), from a 60-digit decimal evaluation.
constexpr I128 kInvSqrt2Pi = 7359186146747302452LL;

struct Series {
  I128 phi_cdf;  // Φ(x), Q64
  I128 x_pdf;    // x·φ(x), Q64
};

Series series(int q, int e) {
  const I128 one = I128{1} << kFrac;
  const I128 x = e >= 0 ? I128{q} << (kFrac + e) : (I128{q} << kFrac) >> (-e);  // exact for e ≥ −64
  const int64_t q2 = int64_t{q} * q;
  I128 p = x, sum_cdf = 0, sum_pdf = 0;
  for (int n = 0; p != 0 && n < 400; ++n) {
    if (n > 0) {
      p /= 2 * n;
      p *= q2;
      p = e >= 0 ? p << (2 * e) : p >> (-2 * e);  // arithmetic: floor, within one unit
    }
    const I128 sgn = n % 2 == 0 ? 1 : -1;
    sum_cdf += sgn * (p / (2 * n + 1));
    sum_pdf += sgn * p;
  }
  auto mul_c = [](I128 v) {  // v·C in Q64: v < 2^70 here, split to keep the product in 128 bits
    const bool neg = v < 0;
    const U128 a = neg ? -v : v;
    const U128 hi = a >> 32, lo = a & 0xFFFFFFFFu;
    const U128 c = kInvSqrt2Pi;
    const U128 r = ((hi * c) >> 32) + ((lo * c) >> 64);
    return neg ? -static_cast<I128>(r) : static_cast<I128>(r);
  };
  return {one / 2 + mul_c(sum_cdf), mul_c(sum_pdf)};
}

// round(v / 2^64) for v in Q64, checking the distance to the rounding boundary.
int32_t round_checked(I128 v, int q, int e, const char* what) {
  const I128 half = I128{1} << (kFrac - 1);
  const I128 fl = v >> kFrac;
  const I128 rest = v - (fl << kFrac);  // 0 ≤ rest < 2^64
  const I128 dist = rest > half ? rest - half : half - rest;
  if (dist < (I128{1} << (kFrac - 40)))
    throw std::logic_error(std::string("gelu table: ") + what + " entry for q = " + std::to_string(q) +
                           ", e = " + std::to_string(e) + " lies within 2^-40 of a rounding boundary");
  return static_cast<int32_t>(fl + (rest > half ? 1 : 0));
}

bool beyond_eight(int q, int e) {  // |q·2^e| > 8
  const int64_t a = q < 0 ? -int64_t{q} : q;
  if (e >= 4) return a > 0;
  if (e >= 0) return (a << e) > 8;
  return e > -4 && a > (int64_t{8} << (-e));
}

}  // namespace

int32_t gelu_value_entry(int q, int e) {
  if (q == 0) return 0;
  if (e < -30) return 64 * q;
  if (beyond_eight(q, e)) return q > 0 ? 128 * q : 0;
  return round_checked(series(q, e).phi_cdf * (I128{q} << kGeluOutFrac), q, e, "value");
}

int32_t gelu_slope_entry(int q, int e) {
  if (q == 0 || e < -30) return 1 << (kGeluSlopeFrac - 1);
  if (beyond_eight(q, e)) return q > 0 ? 1 << kGeluSlopeFrac : 0;
  const Series s = series(q, e);
  return round_checked((s.phi_cdf + s.x_pdf) << kGeluSlopeFrac, q, e, "slope");
}

const GeluTables& gelu_tables(int bits, int e) {
  static std::mutex mu;
  static std::map<std::pair<int, int>, std::unique_ptr<GeluTables>> cache;
  const std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[{bits, e}];
  if (!slot) {
    auto t = std::make_unique<GeluTables>();
    const int lim = (1 << (bits - 1)) - 1;
    for (int q = -lim; q <= lim; ++q) {
      t->value.push_back(gelu_value_entry(q, e));
      t->slope.push_back(gelu_slope_entry(q, e));
    }
    slot = std::move(t);
  }
  return *slot;
}

namespace {

struct GeluSaved {
  std::vector<int8_t> xq;
  const GeluTables* tables = nullptr;
  int lim = 0;
};

}  // namespace

VarPtr gelu(const StepContext& ctx, const GeluConfig& cfg, const VarPtr& x) {
  cfg.validate();
  const Tensor& xv = x->value;
  Tensor widened;
  const Tensor* src = &xv;
  if (xv.dtype() == DType::kI8) {
    widened = Tensor::uninitialized(xv.rows(), xv.cols(), DType::kI32);
    std::copy(xv.data<int8_t>(), xv.data<int8_t>() + xv.size(), widened.data<int32_t>());
    widened.set_exponents(xv.axis(), xv.exponents());
    src = &widened;
  }
  if (src->axis() == ScaleAxis::kRow) throw std::logic_error("GELU input with per-row exponents: " + xv.describe());
  const std::size_t n = xv.size();
  auto saved = std::make_shared<GeluSaved>();
  saved->xq.resize(n);
  const quant::QuantizeOptions opt{quant::signed_range(cfg.bits)};
  const auto& es = src->exponents();
  const int e = quant::quantize_to_tensor(src->data<int32_t>(), xv.rows(), xv.cols(), es.data(), es.size(), opt,
                                          saved->xq.data(), ctx.pool);
  saved->tables = &gelu_tables(cfg.bits, e);
  saved->lim = (1 << (cfg.bits - 1)) - 1;
  auto out = std::make_shared<Var>();
  out->value = Tensor::uninitialized(xv.rows(), xv.cols(), DType::kI32, e - kGeluOutFrac);
  int32_t* y = out->value.data<int32_t>();
  const int32_t* tv = saved->tables->value.data() + saved->lim;
  const kernels::PassSplit split(ctx.pool, n, 64);
  split.run(kernels::kNsPerByte * static_cast<double>(n * 5), [&](std::size_t, std::size_t i0, std::size_t i1) {
    for (std::size_t i = i0; i < i1; ++i) y[i] = tv[saved->xq[i]];
  });
  if (!ctx.training() || !x->requires_grad) return out;
  ctx.tape->record([x, out, saved, split, n] {
    if (!out->has_grad) return;
    Tensor dy = take_grad(*out);
    if (dy.axis() != ScaleAxis::kTensor) throw std::logic_error("GELU: gradient with several exponents");
    const int32_t* g = dy.data<int32_t>();
    const int32_t* ts = saved->tables->slope.data() + saved->lim;
    // Pass 1: max |dy·D| (< 2^48). Pass 2: dx = R_even(dy·D, t).
    std::vector<uint64_t> part(std::max<std::size_t>(split.tiles(), 1), 0);
    const double ns = kernels::kNsPerByte * static_cast<double>(n * 5);
    split.run(ns, [&](std::size_t t, std::size_t i0, std::size_t i1) {
      uint64_t m = 0;
      for (std::size_t i = i0; i < i1; ++i) m = std::max(m, kernels::magnitude(int64_t{g[i]} * ts[saved->xq[i]]));
      part[t] = m;
    });
    uint64_t mx = 0;
    for (uint64_t m : part) mx = std::max(mx, m);
    int t = std::max(0, kernels::bit_length(mx) - 31);
    if (t > 0 && quant::shift_round_even(static_cast<int64_t>(mx), t) > INT32_MAX) ++t;  // rounding up to 2^31
    Tensor dx = Tensor::uninitialized(dy.rows(), dy.cols(), DType::kI32, dy.exponent() - kGeluSlopeFrac + t);
    int32_t* d = dx.data<int32_t>();
    split.run(ns, [&](std::size_t, std::size_t i0, std::size_t i1) {
      for (std::size_t i = i0; i < i1; ++i)
        d[i] = static_cast<int32_t>(quant::shift_round_even(int64_t{g[i]} * ts[saved->xq[i]], t));
    });
    accumulate_grad(*x, std::move(dx));
  });
  return out;
}

}  // namespace qtrain
