// The L1 layer norm's row passes (layer_norm_rows.h), one Highway source compiled for every
// target. int32 lanes throughout: the sums widen each vector's lanes to int64 (PromoteTo of its two halves) before
// they add, so no lane accumulates more than one int32; R_up is two arithmetic shifts and an add, exact in int32.
// Tails that do not fill a vector run the reference's element loop.

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/layer_norm_rows.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/int64_lanes-inl.h"
#include "qtrain/kernels/layer_norm_rows.h"
#include "qtrain/kernels/rounding.h"

HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#if HWY_TARGET != HWY_SCALAR

using D32 = hn::ScalableTag<int32_t>;
using V32 = hn::Vec<D32>;
using D64W = hn::Repartition<int64_t, D32>;  // the int64 halves of a full int32 vector (WidenSum)

// Both halves of v widened to int64 and added.
HWY_INLINE hn::Vec<D64W> WidenSum(V32 v) {
  const D64W d64;
  const hn::Half<D32> dh;
  return hn::Add(hn::PromoteTo(d64, hn::LowerHalf(dh, v)), hn::PromoteTo(d64, hn::UpperHalf(dh, v)));
}

int64_t LaneSum(hn::Vec<D64W> v) {
  const D64W d64;
  HWY_ALIGN int64_t a[hn::MaxLanes(d64)];
  hn::Store(v, d64, a);
  int64_t s = 0;
  for (std::size_t i = 0; i < hn::Lanes(d64); ++i) s += a[i];
  return s;
}

LnRowStats LnRowStatsT(const int32_t* HWY_RESTRICT x, std::size_t n) {
  const D32 d;
  const std::size_t lanes = hn::Lanes(d);
  if (n < lanes) return ref::ln_row_stats(x, n);
  V32 lo = hn::LoadU(d, x), hi = lo;
  hn::Vec<D64W> sum = hn::Zero(D64W());
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const V32 v = hn::LoadU(d, x + i);
    lo = hn::Min(lo, v);
    hi = hn::Max(hi, v);
    sum = hn::Add(sum, WidenSum(v));
  }
  LnRowStats s;
  s.sum = LaneSum(sum);
  s.lo = hn::GetLane(hn::MinOfLanes(d, lo));
  s.hi = hn::GetLane(hn::MaxOfLanes(d, hi));
  for (; i < n; ++i) {
    s.sum += x[i];
    s.lo = std::min(s.lo, x[i]);
    s.hi = std::max(s.hi, x[i]);
  }
  return s;
}

int64_t LnRowCenterT(const int32_t* HWY_RESTRICT x, std::size_t n, int k, int32_t mu, int16_t* HWY_RESTRICT d) {
  const D32 d32;
  const hn::Rebind<int16_t, D32> d16;
  const std::size_t lanes = hn::Lanes(d32);
  const V32 vmu = hn::Set(d32, mu), one = hn::Set(d32, 1);
  hn::Vec<D64W> t = hn::Zero(D64W());
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    V32 v = hn::LoadU(d32, x + i);
    if (k > 0)  // R_up(x, k) = (x >> k) + bit k−1 of x
      v = hn::Add(hn::ShiftRightSame(v, k), hn::And(hn::ShiftRightSame(v, k - 1), one));
    const V32 c = hn::Sub(v, vmu);
    hn::StoreU(hn::DemoteTo(d16, c), d16, d + i);  // |c| ≤ 2^15 − 1: the demotion is exact
    t = hn::Add(t, WidenSum(hn::Abs(c)));
  }
  return LaneSum(t) + ref::ln_row_center(x + i, n - i, k, mu, d + i);
}

// int64 lanes (int64_lanes-inl.h): the products d·ρ and x̂·γ are MulEven of the lanes' low 32 bits.
void LnRowAffineT(const int16_t* HWY_RESTRICT d, std::size_t n, int64_t rho, int s, const int32_t* HWY_RESTRICT gamma,
                  int sy, const int64_t* HWY_RESTRICT beta, int32_t* HWY_RESTRICT xh, int32_t* HWY_RESTRICT y) {
  if (s < 0 || s > 62 || sy < 0 || sy > 62 || rho < 0 || rho >= (int64_t{1} << 31))
    return ref::ln_row_affine(d, n, rho, s, gamma, sy, beta, xh, y);
  const D64 d64;
  const D32H d32h;
  const hn::Rebind<int16_t, D64> d16h;
  const std::size_t lanes = hn::Lanes(d64);
  const V64 vrho = hn::Set(d64, rho);
  const RoundEven round_x(s), round_y(sy);
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const V64 dv = hn::PromoteTo(d64, hn::PromoteTo(d32h, hn::LoadU(d16h, d + i)));
    const V64 x = round_x(MulI32(dv, vrho));
    StoreI32(x, xh + i);
    const V64 prod = MulI32(x, LoadI32(gamma + i));
    StoreI32(hn::Add(round_y(prod), hn::LoadU(d64, beta + i)), y + i);
  }
  ref::ln_row_affine(d + i, n - i, rho, s, gamma + i, sy, beta + i, xh + i, y + i);
}

// G·a with |a| possibly above 2^31: a = a_hi·2^31 + a_lo (0 ≤ a_lo < 2^31), two MulEven products of int32
// operands, the high one shifted by 31; the sum is exact (|G·a| ≤ 2^60 by the stage's contract).
void LnRowDxT(const int32_t* HWY_RESTRICT g, const int16_t* HWY_RESTRICT d, std::size_t n,
              const int32_t* HWY_RESTRICT gamma, int k, int64_t a, int64_t b, int t, int64_t c, int32_t* HWY_RESTRICT dx) {
  const int64_t a_hi = a >> 31, a_lo = a & ((int64_t{1} << 31) - 1);
  if (k < 0 || k > 31 || t < 0 || t > 62 || a_hi < INT32_MIN || a_hi > INT32_MAX)
    return ref::ln_row_dx(g, d, n, gamma, k, a, b, t, c, dx);
  const D64 d64;
  const D32H d32h;
  const hn::Rebind<int16_t, D64> d16h;
  const std::size_t lanes = hn::Lanes(d64);
  const FloorShift round_g(k, k == 0 ? 0 : uint64_t{1} << (k - 1));  // R_up(·, k)
  const FloorShift round_dx(t, t == 0 ? 0 : uint64_t{1} << (t - 1));
  const V64 vlo = hn::Set(d64, a_lo), vhi = hn::Set(d64, a_hi), vb = hn::Set(d64, b), vc = hn::Set(d64, c);
  const V64 zero = hn::Zero(d64), nb = hn::Neg(vb);
  const DU64 du;
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const V64 r = round_g(hn::BitCast(du, LoadI32(g + i)));  // |R_up(g, k)| < 2^15
    const V64 gg = MulI32(LoadI32(gamma + i), r);             // |G| < 2^30
    const V64 ga = hn::Add(MulI32(gg, vlo), hn::ShiftLeft<31>(MulI32(gg, vhi)));
    const V64 dv = hn::PromoteTo(d64, hn::PromoteTo(d32h, hn::LoadU(d16h, d + i)));
    const V64 wb = hn::IfThenElse(hn::Gt(dv, zero), vb, hn::IfThenElseZero(hn::Lt(dv, zero), nb));
    StoreI32(hn::Add(round_dx(hn::BitCast(du, hn::Add(ga, wb))), vc), dx + i);
  }
  ref::ln_row_dx(g + i, d + i, n - i, gamma + i, k, a, b, t, c, dx + i);
}

LnGradSums LnRowGradSumsT(const int32_t* HWY_RESTRICT g, const int16_t* HWY_RESTRICT d, std::size_t n,
                          const int32_t* HWY_RESTRICT gamma, int k) {
  if (k < 0 || k > 31) return ref::ln_row_grad_sums(g, d, n, gamma, k);
  const D64 d64;
  const D32H d32h;
  const hn::Rebind<int16_t, D64> d16h;
  const DU64 du;
  const std::size_t lanes = hn::Lanes(d64);
  const FloorShift round_g(k, k == 0 ? 0 : uint64_t{1} << (k - 1));  // R_up(·, k)
  const V64 zero = hn::Zero(d64), one = hn::Set(d64, 1);
  V64 sg = zero, sgd = zero, ss = zero, gm = zero;
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const V64 gg = MulI32(LoadI32(gamma + i), round_g(hn::BitCast(du, LoadI32(g + i))));
    const V64 dv = hn::PromoteTo(d64, hn::PromoteTo(d32h, hn::LoadU(d16h, d + i)));
    sg = hn::Add(sg, gg);
    sgd = hn::Add(sgd, MulI32(gg, dv));
    ss = hn::Add(ss, hn::Sub(hn::IfThenElseZero(hn::Gt(dv, zero), one), hn::IfThenElseZero(hn::Lt(dv, zero), one)));
    gm = hn::Max(gm, hn::Max(gg, hn::Neg(gg)));
  }
  HWY_ALIGN int64_t a[4][hn::MaxLanes(d64)];
  hn::Store(sg, d64, a[0]);
  hn::Store(sgd, d64, a[1]);
  hn::Store(ss, d64, a[2]);
  hn::Store(gm, d64, a[3]);
  LnGradSums r = ref::ln_row_grad_sums(g + i, d + i, n - i, gamma + i, k);
  for (std::size_t l = 0; l < lanes; ++l) {
    r.sum_g += a[0][l];
    r.sum_gd += a[1][l];
    r.sum_s += a[2][l];
    r.gmax = std::max(r.gmax, static_cast<uint64_t>(a[3][l]));
  }
  return r;
}

void LnRowAccumulateT(const int32_t* HWY_RESTRICT g, const int32_t* HWY_RESTRICT xh, std::size_t n,
                      int64_t* HWY_RESTRICT lo, int64_t* HWY_RESTRICT hi, int64_t* HWY_RESTRICT sdy) {
  const D64 d64;
  const DU64 du;
  const std::size_t lanes = hn::Lanes(d64);
  const VU64 low_mask = hn::Set(du, 0xFFFFFFFFu);
  const FloorShift high(32, 0);  // floor(p / 2^32)
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const V64 gv = LoadI32(g + i);
    const VU64 p = hn::BitCast(du, MulI32(gv, LoadI32(xh + i)));
    hn::StoreU(hn::Add(hn::LoadU(d64, lo + i), hn::BitCast(d64, hn::And(p, low_mask))), d64, lo + i);
    hn::StoreU(hn::Add(hn::LoadU(d64, hi + i), high(p)), d64, hi + i);
    hn::StoreU(hn::Add(hn::LoadU(d64, sdy + i), gv), d64, sdy + i);
  }
  ref::ln_row_accumulate(g + i, xh + i, n - i, lo + i, hi + i, sdy + i);
}

#else  // HWY_SCALAR: the references.

LnRowStats LnRowStatsT(const int32_t* x, std::size_t n) { return ref::ln_row_stats(x, n); }
int64_t LnRowCenterT(const int32_t* x, std::size_t n, int k, int32_t mu, int16_t* d) {
  return ref::ln_row_center(x, n, k, mu, d);
}
void LnRowAffineT(const int16_t* d, std::size_t n, int64_t rho, int s, const int32_t* gamma, int sy,
                  const int64_t* beta, int32_t* xh, int32_t* y) {
  ref::ln_row_affine(d, n, rho, s, gamma, sy, beta, xh, y);
}
void LnRowDxT(const int32_t* g, const int16_t* d, std::size_t n, const int32_t* gamma, int k, int64_t a, int64_t b,
              int t, int64_t c, int32_t* dx) {
  ref::ln_row_dx(g, d, n, gamma, k, a, b, t, c, dx);
}
LnGradSums LnRowGradSumsT(const int32_t* g, const int16_t* d, std::size_t n, const int32_t* gamma, int k) {
  return ref::ln_row_grad_sums(g, d, n, gamma, k);
}
void LnRowAccumulateT(const int32_t* g, const int32_t* xh, std::size_t n, int64_t* lo, int64_t* hi, int64_t* sdy) {
  ref::ln_row_accumulate(g, xh, n, lo, hi, sdy);
}

#endif  // HWY_TARGET != HWY_SCALAR

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace qtrain::kernels {
HWY_EXPORT(LnRowStatsT);
HWY_EXPORT(LnRowCenterT);
HWY_EXPORT(LnRowAffineT);
HWY_EXPORT(LnRowDxT);
HWY_EXPORT(LnRowGradSumsT);
HWY_EXPORT(LnRowAccumulateT);

namespace detail {
void ensure_dispatch_ready();  // dispatch.cc: applies QTRAIN_KERNEL_TARGET once
}  // namespace detail

LnRowStats ln_row_stats(const int32_t* x, std::size_t n) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(LnRowStatsT)(x, n);
}
int64_t ln_row_center(const int32_t* x, std::size_t n, int k, int32_t mu, int16_t* d) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(LnRowCenterT)(x, n, k, mu, d);
}

void ln_row_affine(const int16_t* d, std::size_t n, int64_t rho, int s, const int32_t* gamma, int sy,
                   const int64_t* beta, int32_t* xh, int32_t* y) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(LnRowAffineT)(d, n, rho, s, gamma, sy, beta, xh, y);
}

void ln_row_dx(const int32_t* g, const int16_t* d, std::size_t n, const int32_t* gamma, int k, int64_t a, int64_t b,
               int t, int64_t c, int32_t* dx) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(LnRowDxT)(g, d, n, gamma, k, a, b, t, c, dx);
}

LnGradSums ln_row_grad_sums(const int32_t* g, const int16_t* d, std::size_t n, const int32_t* gamma, int k) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(LnRowGradSumsT)(g, d, n, gamma, k);
}

void ln_row_accumulate(const int32_t* g, const int32_t* xh, std::size_t n, int64_t* lo, int64_t* hi, int64_t* sdy) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(LnRowAccumulateT)(g, xh, n, lo, hi, sdy);
}

namespace ref {
LnRowStats ln_row_stats(const int32_t* x, std::size_t n) {
  LnRowStats s;
  s.lo = s.hi = x[0];
  for (std::size_t j = 0; j < n; ++j) {
    s.sum += x[j];
    s.lo = std::min(s.lo, x[j]);
    s.hi = std::max(s.hi, x[j]);
  }
  return s;
}
int64_t ln_row_center(const int32_t* x, std::size_t n, int k, int32_t mu, int16_t* d) {
  int64_t t = 0;
  for (std::size_t j = 0; j < n; ++j) {
    const int64_t v = shift_round_half_up(x[j], k) - mu;
    d[j] = static_cast<int16_t>(v);
    t += v < 0 ? -v : v;
  }
  return t;
}
void ln_row_affine(const int16_t* d, std::size_t n, int64_t rho, int s, const int32_t* gamma, int sy,
                   const int64_t* beta, int32_t* xh, int32_t* y) {
  for (std::size_t j = 0; j < n; ++j) {
    xh[j] = static_cast<int32_t>(shift_round_even(int64_t{d[j]} * rho, s));
    y[j] = static_cast<int32_t>(shift_round_even(int64_t{xh[j]} * gamma[j], sy) + beta[j]);
  }
}
void ln_row_dx(const int32_t* g, const int16_t* d, std::size_t n, const int32_t* gamma, int k, int64_t a, int64_t b,
               int t, int64_t c, int32_t* dx) {
  for (std::size_t j = 0; j < n; ++j) {
    const int64_t gg = gamma[j] * shift_round_half_up(g[j], k);
    const int64_t w = (d[j] > 0) - (d[j] < 0);
    dx[j] = static_cast<int32_t>(shift_round_half_up(gg * a + w * b, t) + c);
  }
}
LnGradSums ln_row_grad_sums(const int32_t* g, const int16_t* d, std::size_t n, const int32_t* gamma, int k) {
  LnGradSums s;
  for (std::size_t j = 0; j < n; ++j) {
    const int64_t gg = gamma[j] * shift_round_half_up(g[j], k);
    s.sum_g += gg;
    s.sum_gd += gg * d[j];
    s.sum_s += (d[j] > 0) - (d[j] < 0);
    s.gmax = std::max(s.gmax, magnitude(gg));
  }
  return s;
}
void ln_row_accumulate(const int32_t* g, const int32_t* xh, std::size_t n, int64_t* lo, int64_t* hi, int64_t* sdy) {
  for (std::size_t j = 0; j < n; ++j) {
    const int64_t p = int64_t{g[j]} * xh[j];
    lo[j] += p & 0xFFFFFFFF;
    hi[j] += p >> 32;
    sdy[j] += g[j];
  }
}
}  // namespace ref
}  // namespace qtrain::kernels
#endif  // HWY_ONCE
