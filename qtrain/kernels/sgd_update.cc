// The integer SGD passes (see sgd_update.h), one Highway source compiled for every target.
//
// Lanes are int64: int32 inputs are sign-extended on load (PromoteTo), products int32 × mantissa are MulEven
// (vpmuldq: the low 32 bits of each 64-bit lane times the mantissa), and outputs are narrowed by TruncateTo.
// Shifts are uniform per call (they come from exponents and dyadic shifts), so every rounding is one
// ShiftRightSame/ShiftLeftSame by a scalar count, specialised per call by a few template flags:
//  * R_even(x, s): odd = bit s of x (a logical shift is enough), floor((x + 2^(s−1) − 1 + odd) / 2^s). Below
//    AVX3 there is no 64-bit arithmetic right shift, so floor(y / 2^s) is computed as the logical shift of
//    y + 2^63 (the bias folds into the rounding constant) minus 2^(63−s): exact for every int64 y.
//  * R_stoch(x, s, r), s ≤ 62: the draw is zero-extended to 64 bits and moved to its place by two logical shifts
//    (r >> (32 − s) for s ≤ 32, r << (s − 32) above), then floor((x + u) / 2^s) as above (|x| ≤ 2^62 here, so
//    x + u < 2^63 does not wrap). Larger shifts take the reference.
//  * shl_sat(x, s): clamp x to ±2^(62−s) then shift left: exactly x·2^s below saturation, exactly ±2^62 at
//    or above it (for s ≥ 62, clamp to ±1 and shift by 62).
// All additions are modular. On the values the passes meet (|x| ≤ 2^62: int32 × 31-bit products, the ±2^62-clamped
// accumulators, sgd_narrow's input by its contract) none of them wraps, so the results are the reference's (exact
// roundings, qtrain/kernels/rounding.h) bit for bit.
// The ragged tail of each call runs the reference's element functions.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/sgd_update.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/int64_lanes-inl.h"
#include "qtrain/kernels/rounding.h"
#include "qtrain/kernels/sgd_update.h"

// ------------------------------------------------------------------------------------------------------------
// Scalar element functions: the reference, and the tails of the SIMD loops (seen once per target pass).
#ifndef QTRAIN_KERNELS_SGD_UPDATE_SHARED_
#define QTRAIN_KERNELS_SGD_UPDATE_SHARED_
namespace qtrain::kernels::sgd_detail {

inline constexpr int64_t kSatLimit = kShiftSatLimit;

inline int64_t add_wrap(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}
inline int64_t mul_wrap(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b));
}

inline int64_t accumulate_one(int32_t v, int32_t g, const int32_t* w, uint32_t draw, int64_t mu_m, int mu_s,
                              int v_shift, int g_shift, int64_t lambda_m, int lambda_s) {
  int64_t m = shift_round_even(mul_wrap(v, mu_m), mu_s);
  m = v_shift >= 0 ? shift_left_sat(m, v_shift) : shift_round_even(m, -v_shift);
  int64_t acc = add_wrap(m, g_shift >= 0 ? shift_left_sat(g, g_shift) : shift_round_stochastic(g, -g_shift, draw));
  if (w != nullptr) acc = add_wrap(acc, shift_round_even(mul_wrap(*w, lambda_m), lambda_s));
  return std::clamp(acc, -kSatLimit, kSatLimit);
}

// Returns the new weight at E (int64); writes the stored momentum.
inline int64_t apply_one(int64_t acc, int32_t w, uint32_t draw, int64_t eta_m, int eta_s, int v_store_shift,
                         int32_t* v_out) {
  const int32_t v = static_cast<int32_t>(shift_round_even(acc, v_store_shift));
  *v_out = v;
  const int64_t prod = mul_wrap(v, eta_m);
  const int su = eta_s - v_store_shift;
  const int64_t u = su >= 0 ? shift_round_stochastic(prod, su, draw) : shift_left_sat(prod, -su);
  const int64_t wn = static_cast<int64_t>(static_cast<uint64_t>(int64_t{w}) - static_cast<uint64_t>(u));
  return std::clamp(wn, -kSatLimit, kSatLimit);
}

}  // namespace qtrain::kernels::sgd_detail
#endif  // QTRAIN_KERNELS_SGD_UPDATE_SHARED_

// ------------------------------------------------------------------------------------------------------------
// Per-target code.
HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace sd = qtrain::kernels::sgd_detail;

#if HWY_TARGET != HWY_SCALAR

// R_stoch(x, s, r) for s ≥ 0 (s = 0: identity).
struct RoundStochastic {
  FloorShift floor;
  int right, left;  // the draw's placement: r >> right << left
  explicit RoundStochastic(int s)  // s > 62 acts as 62, as in the reference
      : floor(std::min(s, 62), 0), right(32 - std::min(s, 32)), left(std::clamp(s - 32, 0, 30)) {}
  HWY_INLINE V64 operator()(V64 x, const uint32_t* HWY_RESTRICT draws) const {
    const DU64 du;
    const VU64 r = hn::PromoteTo(du, hn::LoadU(DU32H(), draws));
    const VU64 u = hn::ShiftLeftSame(hn::ShiftRightSame(r, right), left);
    return floor(hn::Add(hn::BitCast(du, x), u));
  }
};

// shl_sat(x, s), s ≥ 0.
struct ShiftSat {
  int s;
  V64 lo, hi;
  explicit ShiftSat(int shift) : s(std::min(shift, 62)) {
    const D64 d;
    hi = hn::Set(d, int64_t{1} << (62 - s));
    lo = hn::Neg(hi);
  }
  HWY_INLINE V64 operator()(V64 x) const { return hn::ShiftLeftSame(hn::Min(hn::Max(x, lo), hi), s); }
};

// Running min and max of int64 lanes; max |·| at the end.
struct MinMax {
  V64 lo, hi;
  MinMax() : lo(hn::Zero(D64())), hi(hn::Zero(D64())) {}  // explicit: implicit members miss the target attribute
  HWY_INLINE void Add(V64 x) {
    lo = hn::Min(lo, x);
    hi = hn::Max(hi, x);
  }
  uint64_t MaxAbs() const {
    const D64 d;
    HWY_ALIGN int64_t a[hn::MaxLanes(d)];
    HWY_ALIGN int64_t b[hn::MaxLanes(d)];
    hn::Store(lo, d, a);
    hn::Store(hi, d, b);
    uint64_t m = 0;
    for (std::size_t i = 0; i < hn::Lanes(d); ++i) m = std::max({m, magnitude(a[i]), magnitude(b[i])});
    return m;
  }
};

// Pass 1. kVRight: the momentum moves to a coarser exponent (rounded) rather than a finer one (saturating
// shift); kGStoch: the gradient is finer than E (stochastic rounding); kDecay: weight decay applies.
template <bool kVRight, bool kGStoch, bool kDecay>
uint64_t AccumulateT(const int32_t* HWY_RESTRICT v, const int32_t* HWY_RESTRICT g, const int32_t* HWY_RESTRICT w,
                     const uint32_t* HWY_RESTRICT draws, std::size_t n, int64_t mu_m, int mu_s, int v_shift,
                     int g_shift, int64_t lambda_m, int lambda_s, int64_t* HWY_RESTRICT acc) {
  const D64 d;
  const std::size_t lanes = hn::Lanes(d);
  const V64 mu = hn::Set(d, mu_m), lambda = hn::Set(d, lambda_m);
  const V64 sat_lo = hn::Set(d, -sd::kSatLimit), sat_hi = hn::Set(d, sd::kSatLimit);
  const RoundEven mu_round(mu_s), lambda_round(kDecay ? lambda_s : 0);
  const RoundEven v_round(kVRight ? -v_shift : 0);
  const ShiftSat v_sat(kVRight ? 0 : v_shift);
  const RoundStochastic g_round(kGStoch ? -g_shift : 0);
  const ShiftSat g_sat(kGStoch ? 0 : g_shift);
  MinMax mm;
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    V64 m = mu_round(MulI32(LoadI32(v + i), mu));
    m = kVRight ? v_round(m) : v_sat(m);
    const V64 gi = LoadI32(g + i);
    V64 a = hn::Add(m, kGStoch ? g_round(gi, draws + i) : g_sat(gi));
    if constexpr (kDecay) a = hn::Add(a, lambda_round(MulI32(LoadI32(w + i), lambda)));
    a = hn::Min(hn::Max(a, sat_lo), sat_hi);
    mm.Add(a);
    hn::StoreU(a, d, acc + i);
  }
  uint64_t mx = mm.MaxAbs();
  for (; i < n; ++i) {
    acc[i] = sd::accumulate_one(v[i], g[i], kDecay ? w + i : nullptr, kGStoch ? draws[i] : 0, mu_m, mu_s, v_shift,
                                g_shift, lambda_m, lambda_s);
    mx = std::max(mx, magnitude(acc[i]));
  }
  return mx;
}

uint64_t Accumulate(const int32_t* v, const int32_t* g, const int32_t* w, const uint32_t* draws, std::size_t n,
                    int64_t mu_m, int mu_s, int v_shift, int g_shift, int64_t lambda_m, int lambda_s,
                    int64_t* acc) {
  // Caller (HWY_ONCE part) guarantees: 0 ≤ mu_m, lambda_m < 2^31; 0 ≤ mu_s, lambda_s ≤ 62; v_shift ≥ −62.
  const bool vr = v_shift < 0, gs = g_shift < 0, dec = w != nullptr;
#define QTRAIN_SGD_CASE(A, B, C) \
  if (vr == A && gs == B && dec == C) \
    return AccumulateT<A, B, C>(v, g, w, draws, n, mu_m, mu_s, v_shift, g_shift, lambda_m, lambda_s, acc);
  QTRAIN_SGD_CASE(false, false, false)
  QTRAIN_SGD_CASE(false, false, true)
  QTRAIN_SGD_CASE(false, true, false)
  QTRAIN_SGD_CASE(false, true, true)
  QTRAIN_SGD_CASE(true, false, false)
  QTRAIN_SGD_CASE(true, false, true)
  QTRAIN_SGD_CASE(true, true, false)
  QTRAIN_SGD_CASE(true, true, true)
#undef QTRAIN_SGD_CASE
  return 0;
}

// Pass 2. kVRound: v_store_shift > 0; kUStoch: su ≥ 0 (η·v rounded stochastically, else a saturating shift).
template <bool kVRound, bool kUStoch>
uint64_t ApplyT(const int64_t* acc_in, const int32_t* w_in, const uint32_t* HWY_RESTRICT draws, std::size_t n,
                int64_t eta_m, int eta_s, int v_store_shift, int32_t* HWY_RESTRICT v, int64_t* acc_out,
                int32_t* w_out) {
  const D64 d;
  const std::size_t lanes = hn::Lanes(d);
  const int su = eta_s - v_store_shift;
  const V64 eta = hn::Set(d, eta_m);
  const V64 sat_lo = hn::Set(d, -sd::kSatLimit), sat_hi = hn::Set(d, sd::kSatLimit);
  const RoundEven v_round(kVRound ? v_store_shift : 0);
  const RoundStochastic u_round(kUStoch ? su : 0);
  const ShiftSat u_sat(kUStoch ? 0 : -su);
  MinMax mm;
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    V64 a = hn::LoadU(d, acc_in + i);
    if constexpr (kVRound) a = v_round(a);
    StoreI32(a, v + i);
    const V64 prod = MulI32(a, eta);  // the low 32 bits: the stored int32 momentum
    const V64 u = kUStoch ? u_round(prod, draws + i) : u_sat(prod);
    V64 wn = hn::Sub(LoadI32(w_in + i), u);
    wn = hn::Min(hn::Max(wn, sat_lo), sat_hi);
    mm.Add(wn);
    hn::StoreU(wn, d, acc_out + i);
    StoreI32(wn, w_out + i);
  }
  uint64_t mx = mm.MaxAbs();
  for (; i < n; ++i) {
    const int64_t wn = sd::apply_one(acc_in[i], w_in[i], kUStoch ? draws[i] : 0, eta_m, eta_s, v_store_shift, v + i);
    acc_out[i] = wn;
    w_out[i] = static_cast<int32_t>(wn);
    mx = std::max(mx, magnitude(wn));
  }
  return mx;
}

uint64_t Apply(const int64_t* acc_in, const int32_t* w_in, const uint32_t* draws, std::size_t n, int64_t eta_m,
               int eta_s, int v_store_shift, int32_t* v, int64_t* acc_out, int32_t* w_out) {
  // Caller guarantees: 0 ≤ eta_m < 2^31; 0 ≤ v_store_shift ≤ 62.
  const bool vr = v_store_shift > 0, us = eta_s - v_store_shift >= 0;
  if (vr) {
    return us ? ApplyT<true, true>(acc_in, w_in, draws, n, eta_m, eta_s, v_store_shift, v, acc_out, w_out)
              : ApplyT<true, false>(acc_in, w_in, draws, n, eta_m, eta_s, v_store_shift, v, acc_out, w_out);
  }
  return us ? ApplyT<false, true>(acc_in, w_in, draws, n, eta_m, eta_s, v_store_shift, v, acc_out, w_out)
            : ApplyT<false, false>(acc_in, w_in, draws, n, eta_m, eta_s, v_store_shift, v, acc_out, w_out);
}

void Narrow(const int64_t* HWY_RESTRICT x, std::size_t n, int s, int32_t* HWY_RESTRICT out) {
  // Caller guarantees 0 ≤ s ≤ 62.
  const D64 d;
  const std::size_t lanes = hn::Lanes(d);
  const RoundEven round(s);
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) StoreI32(round(hn::LoadU(d, x + i)), out + i);
  for (; i < n; ++i) out[i] = static_cast<int32_t>(shift_round_even(x[i], s));
}

#else  // HWY_SCALAR: the reference element functions.

uint64_t Accumulate(const int32_t* v, const int32_t* g, const int32_t* w, const uint32_t* draws, std::size_t n,
                    int64_t mu_m, int mu_s, int v_shift, int g_shift, int64_t lambda_m, int lambda_s,
                    int64_t* acc) {
  uint64_t mx = 0;
  for (std::size_t i = 0; i < n; ++i) {
    acc[i] = sd::accumulate_one(v[i], g[i], w != nullptr ? w + i : nullptr, g_shift < 0 ? draws[i] : 0, mu_m, mu_s,
                                v_shift, g_shift, lambda_m, lambda_s);
    mx = std::max(mx, magnitude(acc[i]));
  }
  return mx;
}

uint64_t Apply(const int64_t* acc_in, const int32_t* w_in, const uint32_t* draws, std::size_t n, int64_t eta_m,
               int eta_s, int v_store_shift, int32_t* v, int64_t* acc_out, int32_t* w_out) {
  const bool us = eta_s - v_store_shift >= 0;
  uint64_t mx = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const int64_t wn = sd::apply_one(acc_in[i], w_in[i], us ? draws[i] : 0, eta_m, eta_s, v_store_shift, v + i);
    acc_out[i] = wn;
    w_out[i] = static_cast<int32_t>(wn);
    mx = std::max(mx, magnitude(wn));
  }
  return mx;
}

void Narrow(const int64_t* x, std::size_t n, int s, int32_t* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(shift_round_even(x[i], s));
}

#endif  // HWY_TARGET != HWY_SCALAR

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

// ------------------------------------------------------------------------------------------------------------
// Target-independent part: parameter normalisation, dispatch, the references.
#if HWY_ONCE
namespace qtrain::kernels {
HWY_EXPORT(Accumulate);
HWY_EXPORT(Apply);
HWY_EXPORT(Narrow);

namespace detail {
void ensure_dispatch_ready();  // dispatch.cc: applies QTRAIN_KERNEL_TARGET once
}  // namespace detail

namespace {
bool fits_mulpos(int64_t m) { return m >= 0 && m < (int64_t{1} << 31); }

// A product rounding R_even(x·m, s) in the range the SIMD code takes (0 ≤ m < 2^31, 0 ≤ s ≤ 62), or false.
// R_even(·, s ≥ 63) is 0, so is m = 0; a left shift folds into the mantissa when it still fits.
bool normalise_product(int64_t& m, int& s) {
  if (m == 0 || s >= 63) {
    m = 0;
    s = 0;
    return true;
  }
  if (s < 0) {
    if (!fits_mulpos(m) || -s >= 31 || m >= (int64_t{1} << (31 + s))) return false;
    m <<= -s;
    s = 0;
  }
  return fits_mulpos(m);
}
}  // namespace

uint64_t sgd_accumulate(const int32_t* v, const int32_t* g, const int32_t* w, const uint32_t* draws, std::size_t n,
                        int64_t mu_m, int mu_s, int v_shift, int g_shift, int64_t lambda_m, int lambda_s,
                        int64_t* acc) {
  detail::ensure_dispatch_ready();
  int64_t m = mu_m, l = lambda_m;
  int ms = mu_s, ls = lambda_s, vs = v_shift;
  bool ok = normalise_product(m, ms) && normalise_product(l, ls);
  if (vs <= -63) {  // R_even(·, ≥ 63): the momentum term vanishes
    m = 0;
    ms = 0;
    vs = 0;
  }
  if (w != nullptr && l == 0) w = nullptr;  // decay term is 0 for every element
  // The SIMD stochastic rounding places the draw for shifts ≤ 62; a gradient more than 62 octaves below E (only
  // after a diverged run) takes the reference.
  if (!ok || g_shift < -62)
    return ref::sgd_accumulate(v, g, w, draws, n, mu_m, mu_s, v_shift, g_shift, lambda_m, lambda_s, acc);
  return HWY_DYNAMIC_DISPATCH(Accumulate)(v, g, w, draws, n, m, ms, vs, g_shift, l, ls, acc);
}

uint64_t sgd_apply(const int64_t* acc_in, const int32_t* w_in, const uint32_t* draws, std::size_t n, int64_t eta_m,
                   int eta_s, int v_store_shift, int32_t* v, int64_t* acc_out, int32_t* w_out) {
  detail::ensure_dispatch_ready();
  if (!fits_mulpos(eta_m) || v_store_shift < 0 || v_store_shift > 62 || eta_s - v_store_shift > 62) {
    return ref::sgd_apply(acc_in, w_in, draws, n, eta_m, eta_s, v_store_shift, v, acc_out, w_out);
  }
  return HWY_DYNAMIC_DISPATCH(Apply)(acc_in, w_in, draws, n, eta_m, eta_s, v_store_shift, v, acc_out, w_out);
}

void sgd_narrow(const int64_t* x, std::size_t n, int s, int32_t* out) {
  detail::ensure_dispatch_ready();
  if (s < 0 || s > 62) return ref::sgd_narrow(x, n, s, out);
  HWY_DYNAMIC_DISPATCH(Narrow)(x, n, s, out);
}

namespace ref {

uint64_t sgd_accumulate(const int32_t* v, const int32_t* g, const int32_t* w, const uint32_t* draws, std::size_t n,
                        int64_t mu_m, int mu_s, int v_shift, int g_shift, int64_t lambda_m, int lambda_s,
                        int64_t* acc) {
  uint64_t mx = 0;
  for (std::size_t i = 0; i < n; ++i) {
    acc[i] = sgd_detail::accumulate_one(v[i], g[i], w != nullptr ? w + i : nullptr, g_shift < 0 ? draws[i] : 0,
                                        mu_m, mu_s, v_shift, g_shift, lambda_m, lambda_s);
    mx = std::max(mx, magnitude(acc[i]));
  }
  return mx;
}

uint64_t sgd_apply(const int64_t* acc_in, const int32_t* w_in, const uint32_t* draws, std::size_t n, int64_t eta_m,
                   int eta_s, int v_store_shift, int32_t* v, int64_t* acc_out, int32_t* w_out) {
  const bool stochastic = eta_s - v_store_shift >= 0;
  uint64_t mx = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const int64_t wn =
        sgd_detail::apply_one(acc_in[i], w_in[i], stochastic ? draws[i] : 0, eta_m, eta_s, v_store_shift, v + i);
    acc_out[i] = wn;
    w_out[i] = static_cast<int32_t>(wn);
    mx = std::max(mx, magnitude(wn));
  }
  return mx;
}

void sgd_narrow(const int64_t* x, std::size_t n, int s, int32_t* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = static_cast<int32_t>(shift_round_even(x[i], s));
}

}  // namespace ref
}  // namespace qtrain::kernels
#endif  // HWY_ONCE
