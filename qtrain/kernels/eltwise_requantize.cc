// The int32 → int8 requantizations of eltwise.h — nearest-even (requantize_i8, per tensor or per column), the
// squared errors the least-error scale compares, and ShiftQuant's stochastic rounding — one Highway source compiled
// for every target. They run in int32 lanes without ever leaving the int32 range (eltwise.h explains the rounding
// identities). Per-column parameters are turned once per call into per-column lane constants (so a vector of
// columns loads its shifts, masks and clamps like data); column tails that do not fill a vector, and the ragged end
// of flat arrays, run the reference's element functions.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/eltwise_requantize.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/rounding.h"

// ------------------------------------------------------------------------------------------------------------
// Scalar element functions: the reference, and the tails of the SIMD loops (seen once per target pass).
#ifndef QTRAIN_KERNELS_ELTWISE_REQUANTIZE_CC_SHARED_
#define QTRAIN_KERNELS_ELTWISE_REQUANTIZE_CC_SHARED_
namespace qtrain::kernels::elt_detail {

// clamp(R_even(x, s), lo, hi) on the exact value: for s < 0 a saturating left shift (saturation lies far beyond
// any int8 bound, so the clamp sees what the exact product would give it).
inline int8_t requantize_one(int32_t x, int s, int32_t lo, int32_t hi) {
  return static_cast<int8_t>(std::clamp<int64_t>(shift_round_even_sat(x, s), lo, hi));
}

inline void shiftquant_one(int32_t g, uint32_t r, int s, int up, int32_t limit, int8_t* q, int8_t* shifted) {
  const int64_t v =
      std::clamp<int64_t>(s <= 0 ? shift_left_sat(g, -s) : shift_round_stochastic(g, s, r), -limit, limit);
  *q = static_cast<int8_t>(v);
  *shifted = static_cast<int8_t>(v * (int64_t{1} << up));
}

// x − clamp(R_even(x, t), lo, hi)·2^t for t ≥ 0, lo ≤ 0 ≤ hi: in [−2^31, 2^31) (eltwise.h).
inline int64_t quant_error_one(int32_t x, int t, int32_t lo, int32_t hi) {
  const int64_t q = std::clamp<int64_t>(shift_round_even(x, t), lo, hi);
  return q == 0 ? x : x - q * (int64_t{1} << t);  // q ≠ 0 only for t ≤ 31 (|x| ≤ 2^31)
}

// The 128-bit number hi·2^64 + lo plus v.
inline void add128(uint64_t* hi, uint64_t* lo, uint64_t v) {
  *lo += v;
  *hi += *lo < v;  // carry
}

// Adds Σ_i quant_error_one(x[i], t, lo, hi)² to the 128-bit number (*sum_hi, *sum_lo).
inline void add_squared_errors(const int32_t* x, std::size_t n, int t, int32_t lo, int32_t hi, uint64_t* sum_hi,
                               uint64_t* sum_lo) {
  for (std::size_t i = 0; i < n; ++i) {
    const uint64_t a = magnitude(quant_error_one(x[i], t, lo, hi));  // ≤ 2^31
    add128(sum_hi, sum_lo, a * a);
  }
}

}  // namespace qtrain::kernels::elt_detail
#endif  // QTRAIN_KERNELS_ELTWISE_REQUANTIZE_CC_SHARED_

// ------------------------------------------------------------------------------------------------------------
// Per-target code.
HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace ed = qtrain::kernels::elt_detail;

#if HWY_TARGET != HWY_SCALAR

using D32 = hn::ScalableTag<int32_t>;
using DU32 = hn::RebindToUnsigned<D32>;
using D8 = hn::Rebind<int8_t, D32>;
using V32 = hn::Vec<D32>;
using VU32 = hn::Vec<DU32>;

// ---- requantization -------------------------------------------------------------------------------------------

// Lane constants of one shift s (see eltwise.h):
//   s ≥ 32  pre-clamp to [0, 0] (R_even(x, s) = 0 for every int32 x)
//   s ≥ 1   sr = s, mask = 2^s − 1, half = 2^(s−1), oddm = 1
//   s ≤ 0   sl = min(−s, 30), pre-clamp to ±max(1, 128 >> −s)
struct ShiftConsts {
  int32_t pmin, pmax, sr, mask, half, oddm, sl;
  explicit ShiftConsts(int s) {
    pmin = std::numeric_limits<int32_t>::min();
    pmax = std::numeric_limits<int32_t>::max();
    sr = mask = half = oddm = sl = 0;
    if (s >= 32) {
      pmin = pmax = 0;
    } else if (s >= 1) {
      sr = s;
      mask = static_cast<int32_t>((uint32_t{1} << s) - 1);
      half = static_cast<int32_t>(uint32_t{1} << (s - 1));
      oddm = 1;
    } else if (s < 0) {
      const int k = s < -62 ? 62 : -s;
      sl = std::min(k, 30);
      pmax = k >= 7 ? 1 : (128 >> k);
      pmin = -pmax;
    }
  }
};

struct RqVec {
  V32 pmin, pmax, sr, mask, half, oddm, sl;
};

HWY_INLINE RqVec RqSet(const ShiftConsts& k) {
  const D32 d;
  return {hn::Set(d, k.pmin), hn::Set(d, k.pmax), hn::Set(d, k.sr), hn::Set(d, k.mask),
          hn::Set(d, k.half), hn::Set(d, k.oddm), hn::Set(d, k.sl)};
}

// clamp(R_even(x, s), lo, hi) in int32 lanes.
HWY_INLINE V32 RequantCore(V32 x, const RqVec& p, V32 lo, V32 hi) {
  const D32 d;
  const DU32 du;
  const V32 x1 = hn::Min(hn::Max(x, p.pmin), p.pmax);
  const V32 q = hn::operator>>(x1, p.sr);
  const V32 r = hn::And(x1, p.mask);
  const V32 odd = hn::And(q, p.oddm);
  const auto round_up = hn::Gt(hn::BitCast(du, hn::Add(r, odd)), hn::BitCast(du, p.half));  // r + odd ≤ 2^31
  V32 v = hn::Sub(q, hn::BitCast(d, hn::VecFromMask(du, round_up)));
  v = hn::operator<<(v, p.sl);
  return hn::Min(hn::Max(v, lo), hi);
}

HWY_INLINE V32 LoadAsI32(const int32_t* HWY_RESTRICT x) { return hn::LoadU(D32(), x); }
HWY_INLINE V32 LoadAsI32(const int8_t* HWY_RESTRICT x) { return hn::PromoteTo(D32(), hn::LoadU(D8(), x)); }

// int32 or int8 input, one shift.
template <typename T>
void RequantizeI8T(const T* HWY_RESTRICT x, std::size_t n, int shift, int32_t lo, int32_t hi,
                   int8_t* HWY_RESTRICT out) {
  const D32 d;
  const D8 d8;
  const std::size_t lanes = hn::Lanes(d);
  const RqVec p = RqSet(ShiftConsts(shift));
  const V32 vlo = hn::Set(d, lo), vhi = hn::Set(d, hi);
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes)
    hn::StoreU(hn::DemoteTo(d8, RequantCore(LoadAsI32(x + i), p, vlo, vhi)), d8, out + i);
  for (; i < n; ++i) out[i] = ed::requantize_one(x[i], shift, lo, hi);
}
void RequantizeI8(const int32_t* HWY_RESTRICT x, std::size_t n, int shift, int32_t lo, int32_t hi,
                  int8_t* HWY_RESTRICT out) {
  RequantizeI8T(x, n, shift, lo, hi, out);
}
void RequantizeI8FromI8(const int8_t* HWY_RESTRICT x, std::size_t n, int shift, int32_t lo, int32_t hi,
                        int8_t* HWY_RESTRICT out) {
  RequantizeI8T(x, n, shift, lo, hi, out);
}

// Per-column lane constants, one array per constant (a vector of columns loads them like data).
struct ColumnShiftTable {
  std::vector<int32_t> pmin, pmax, sr, mask, half, oddm, sl;
  ColumnShiftTable(const int* shift, std::size_t cols)
      : pmin(cols), pmax(cols), sr(cols), mask(cols), half(cols), oddm(cols), sl(cols) {
    for (std::size_t c = 0; c < cols; ++c) {
      const ShiftConsts k(shift[c]);
      pmin[c] = k.pmin;
      pmax[c] = k.pmax;
      sr[c] = k.sr;
      mask[c] = k.mask;
      half[c] = k.half;
      oddm[c] = k.oddm;
      sl[c] = k.sl;
    }
  }
  HWY_INLINE RqVec Load(std::size_t c) const {
    const D32 d;
    return {hn::LoadU(d, pmin.data() + c), hn::LoadU(d, pmax.data() + c), hn::LoadU(d, sr.data() + c),
            hn::LoadU(d, mask.data() + c), hn::LoadU(d, half.data() + c), hn::LoadU(d, oddm.data() + c),
            hn::LoadU(d, sl.data() + c)};
  }
};

void RequantizeI8Cols(const int32_t* HWY_RESTRICT x, std::size_t rows, std::size_t cols, const int* shift, int32_t lo,
                      int32_t hi, int8_t* HWY_RESTRICT out, const int* up) {
  const D32 d;
  const D8 d8;
  const std::size_t lanes = hn::Lanes(d);
  const std::size_t full = cols / lanes * lanes;
  const V32 vlo = hn::Set(d, lo), vhi = hn::Set(d, hi);
  const ColumnShiftTable table(shift, cols);
  std::vector<int32_t> up32(cols, 0);  // the left shifts as lanes (0: none)
  if (up != nullptr) std::copy(up, up + cols, up32.begin());
  auto tail = [&](const int32_t* xr, int8_t* o) {
    for (std::size_t c = full; c < cols; ++c)
      o[c] = static_cast<int8_t>(ed::requantize_one(xr[c], shift[c], lo, hi) * (1 << up32[c]));
  };
  if (full == lanes) {  // one vector of columns (e.g. 16 channels on AVX-512): constants stay in registers
    const RqVec p = table.Load(0);
    const V32 u = hn::LoadU(d, up32.data());
    for (std::size_t r = 0; r < rows; ++r) {
      const int32_t* xr = x + r * cols;
      int8_t* o = out + r * cols;
      hn::StoreU(hn::DemoteTo(d8, hn::operator<<(RequantCore(hn::LoadU(d, xr), p, vlo, vhi), u)), d8, o);
      tail(xr, o);
    }
    return;
  }
  for (std::size_t r = 0; r < rows; ++r) {
    const int32_t* xr = x + r * cols;
    int8_t* o = out + r * cols;
    for (std::size_t c = 0; c < full; c += lanes) {
      const V32 v = RequantCore(hn::LoadU(d, xr + c), table.Load(c), vlo, vhi);
      hn::StoreU(hn::DemoteTo(d8, hn::operator<<(v, hn::LoadU(d, up32.data() + c))), d8, o + c);
    }
    tail(xr, o);
  }
}

// ---- squared quantization errors ------------------------------------------------------------------------------

// Adds Σ d² over x[0..n) for one step t to the 128-bit number (*sum_hi, *sum_lo); 0 ≤ t ≤ 31, n ≤ 2^31.
// d = x − q·2^t with q = clamp(R_even(x, t), lo, hi) from RequantCore (the requantizer's own rounding), formed
// wrapping in uint32 lanes: its true value lies in [−2^31, 2^31) (eltwise.h), so the wrapped bits are it, and |d|
// (Abs, 2^31 read as uint32) ≤ 2^31. MulEven squares the even lanes into uint64, the odd ones after a 32-bit shift
// down; each square ≤ 2^62, so the pair's sum < 2^63. Its high and low 32-bit halves go to separate uint64
// accumulators (adds < 2^32): after n/Lanes(d) rounds their Lanes(d)/2 lanes together hold < n·2^31 ≤ 2^62 each,
// and the exact sum is total_hi·2^32 + total_lo.
void SquaredErrorSum(const int32_t* HWY_RESTRICT x, std::size_t n, int t, int32_t lo, int32_t hi, uint64_t* sum_hi,
                     uint64_t* sum_lo) {
  const D32 d;
  const DU32 du;
  const hn::Repartition<uint64_t, DU32> du64;  // the same vectors as pairs of uint32 lanes
  const std::size_t lanes = hn::Lanes(d);
  const RqVec p = RqSet(ShiftConsts(t));
  const V32 vlo = hn::Set(d, lo), vhi = hn::Set(d, hi);
  const auto low32 = hn::Set(du64, uint64_t{0xFFFFFFFF});
  auto acc_hi = hn::Zero(du64), acc_lo = hn::Zero(du64);
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const V32 xv = hn::LoadU(d, x + i);
    const VU32 q = hn::BitCast(du, RequantCore(xv, p, vlo, vhi));
    const V32 e = hn::BitCast(d, hn::Sub(hn::BitCast(du, xv), hn::ShiftLeftSame(q, t)));
    const VU32 a = hn::BitCast(du, hn::Abs(e));
    const VU32 a_odd = hn::BitCast(du, hn::ShiftRight<32>(hn::BitCast(du64, a)));
    const auto sq = hn::Add(hn::MulEven(a, a), hn::MulEven(a_odd, a_odd));
    acc_hi = hn::Add(acc_hi, hn::ShiftRight<32>(sq));
    acc_lo = hn::Add(acc_lo, hn::And(sq, low32));
  }
  HWY_ALIGN uint64_t h[hn::MaxLanes(du64)], l[hn::MaxLanes(du64)];
  hn::Store(acc_hi, du64, h);
  hn::Store(acc_lo, du64, l);
  uint64_t total_hi = 0, total_lo = 0;
  for (std::size_t k = 0; k < hn::Lanes(du64); ++k) {
    total_hi += h[k];
    total_lo += l[k];
  }
  ed::add128(sum_hi, sum_lo, total_lo);
  ed::add128(sum_hi, sum_lo, total_hi << 32);  // total_hi·2^32 = (total_hi >> 32)·2^64 + (total_hi << 32)
  *sum_hi += total_hi >> 32;
  ed::add_squared_errors(x + i, n - i, t, lo, hi, sum_hi, sum_lo);
}

// ---- ShiftQuant rounding --------------------------------------------------------------------------------------

// clamp(R_stoch(g, s, r), ±limit) for s ≤ 31, in int32 lanes: (x >> s) + ((x & (2^s − 1)) + (r >> (32 − s))) >> s
// with the inner sum unsigned (< 2^32) and the draw shifted as (r >> 1) >> (31 − s) (0 for s = 0).
struct SqVec {
  V32 pmin, pmax, sr, mask, rshift, sl, up;
};

HWY_INLINE void ShiftQuantCore(V32 g, VU32 draw, const SqVec& p, V32 lim_lo, V32 lim_hi, V32* q, V32* shifted) {
  const D32 d;
  const DU32 du;
  const V32 x1 = hn::Min(hn::Max(g, p.pmin), p.pmax);
  const V32 hi_part = hn::operator>>(x1, p.sr);
  const VU32 lo_part = hn::BitCast(du, hn::And(x1, p.mask));
  const VU32 u = hn::operator>>(hn::ShiftRight<1>(draw), hn::BitCast(du, p.rshift));
  const VU32 carry = hn::operator>>(hn::Add(lo_part, u), hn::BitCast(du, p.sr));
  V32 v = hn::Add(hi_part, hn::BitCast(d, carry));
  v = hn::operator<<(v, p.sl);
  v = hn::Min(hn::Max(v, lim_lo), lim_hi);
  *q = v;
  *shifted = hn::operator<<(v, p.up);
}

void ShiftQuantRound(const int32_t* HWY_RESTRICT g, const uint32_t* HWY_RESTRICT draws, std::size_t rows,
                     std::size_t cols, const int* shift, const int* up, int32_t limit, int8_t* HWY_RESTRICT q,
                     int8_t* HWY_RESTRICT shifted) {
  // Caller guarantees shift[c] ≤ 31.
  const D32 d;
  const DU32 du;
  const D8 d8;
  const std::size_t lanes = hn::Lanes(d);
  const std::size_t full = cols / lanes * lanes;
  std::vector<int32_t> pmin(cols), pmax(cols), sr(cols), mask(cols), rshift(cols), sl(cols), upv(cols);
  for (std::size_t c = 0; c < cols; ++c) {
    const int s = shift[c];
    pmin[c] = std::numeric_limits<int32_t>::min();
    pmax[c] = std::numeric_limits<int32_t>::max();
    sr[c] = s > 0 ? s : 0;
    mask[c] = s > 0 ? static_cast<int32_t>((uint32_t{1} << s) - 1) : 0;
    rshift[c] = 31 - sr[c];
    sl[c] = 0;
    if (s < 0) {
      const int k = s < -62 ? 62 : -s;
      sl[c] = std::min(k, 30);
      pmax[c] = k >= 7 ? 1 : (128 >> k);
      pmin[c] = -pmax[c];
    }
    upv[c] = up[c];
  }
  auto load = [&](std::size_t c) {
    return SqVec{hn::LoadU(d, pmin.data() + c), hn::LoadU(d, pmax.data() + c),   hn::LoadU(d, sr.data() + c),
                 hn::LoadU(d, mask.data() + c), hn::LoadU(d, rshift.data() + c), hn::LoadU(d, sl.data() + c),
                 hn::LoadU(d, upv.data() + c)};
  };
  const V32 lim_hi = hn::Set(d, limit), lim_lo = hn::Set(d, -limit);
  auto run = [&](auto&& params) {
    for (std::size_t r = 0; r < rows; ++r) {
      const std::size_t base = r * cols;
      for (std::size_t c = 0; c < full; c += lanes) {
        V32 qv, sv;
        ShiftQuantCore(hn::LoadU(d, g + base + c), hn::LoadU(du, draws + base + c), params(c), lim_lo, lim_hi, &qv,
                       &sv);
        hn::StoreU(hn::DemoteTo(d8, qv), d8, q + base + c);
        hn::StoreU(hn::DemoteTo(d8, sv), d8, shifted + base + c);
      }
      for (std::size_t c = full; c < cols; ++c)
        ed::shiftquant_one(g[base + c], draws[base + c], shift[c], up[c], limit, q + base + c, shifted + base + c);
    }
  };
  if (full == lanes) {  // one vector of columns: the constants stay in registers
    const SqVec p0 = load(0);
    run([&](std::size_t) { return p0; });
  } else {
    run(load);
  }
}

#else  // HWY_SCALAR: the references.

void RequantizeI8(const int32_t* x, std::size_t n, int shift, int32_t lo, int32_t hi, int8_t* out) {
  ref::requantize_i8(x, n, shift, lo, hi, out);
}
void RequantizeI8FromI8(const int8_t* x, std::size_t n, int shift, int32_t lo, int32_t hi, int8_t* out) {
  ref::requantize_i8(x, n, shift, lo, hi, out);
}
void RequantizeI8Cols(const int32_t* x, std::size_t rows, std::size_t cols, const int* shift, int32_t lo, int32_t hi,
                      int8_t* out, const int* up) {
  ref::requantize_i8_cols(x, rows, cols, shift, lo, hi, out, up);
}
void SquaredErrorSum(const int32_t* x, std::size_t n, int t, int32_t lo, int32_t hi, uint64_t* sum_hi,
                     uint64_t* sum_lo) {
  ed::add_squared_errors(x, n, t, lo, hi, sum_hi, sum_lo);
}
void ShiftQuantRound(const int32_t* g, const uint32_t* draws, std::size_t rows, std::size_t cols, const int* shift,
                     const int* up, int32_t limit, int8_t* q, int8_t* shifted) {
  ref::shiftquant_round(g, draws, rows, cols, shift, up, limit, q, shifted);
}

#endif  // HWY_TARGET != HWY_SCALAR

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

// ------------------------------------------------------------------------------------------------------------
// Target-independent part: dispatch and the references.
#if HWY_ONCE
namespace qtrain::kernels {
HWY_EXPORT(RequantizeI8);
HWY_EXPORT(RequantizeI8FromI8);
HWY_EXPORT(RequantizeI8Cols);
HWY_EXPORT(SquaredErrorSum);
HWY_EXPORT(ShiftQuantRound);

namespace detail {
void ensure_dispatch_ready();  // dispatch.cc: applies QTRAIN_KERNEL_TARGET once
}  // namespace detail

namespace {
bool shifts_in(const int* s, std::size_t n, int lo, int hi) {
  for (std::size_t i = 0; i < n; ++i)
    if (s[i] < lo || s[i] > hi) return false;
  return true;
}
}  // namespace

void requantize_i8(const int32_t* x, std::size_t n, int shift, int32_t lo, int32_t hi, int8_t* out) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(RequantizeI8)(x, n, shift, lo, hi, out);
}

void requantize_i8(const int8_t* x, std::size_t n, int shift, int32_t lo, int32_t hi, int8_t* out) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(RequantizeI8FromI8)(x, n, shift, lo, hi, out);
}

void requantize_i8_cols(const int32_t* x, std::size_t rows, std::size_t cols, const int* shift, int32_t lo, int32_t hi,
                        int8_t* out, const int* up) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(RequantizeI8Cols)(x, rows, cols, shift, lo, hi, out, up);
}

void squared_error_sums(const int32_t* x, std::size_t n, int s, int count, int32_t lo, int32_t hi, uint64_t* sum_hi,
                        uint64_t* sum_lo) {
  detail::ensure_dispatch_ready();
  // The SIMD code handles t ≤ 31 (all that min_error_shift meets: int32 data covers with s ≤ 31) and n ≤ 2^31.
  if (s > 31) return ref::squared_error_sums(x, n, s, count, lo, hi, sum_hi, sum_lo);
  constexpr std::size_t kBlock = std::size_t{1} << 30;
  for (int j = 0; j < count; ++j) {
    sum_hi[j] = sum_lo[j] = 0;
    for (std::size_t i = 0; i < n; i += kBlock)
      HWY_DYNAMIC_DISPATCH(SquaredErrorSum)(x + i, std::min(kBlock, n - i), s - j, lo, hi, sum_hi + j, sum_lo + j);
  }
}

void shiftquant_round(const int32_t* g, const uint32_t* draws, std::size_t rows, std::size_t cols, const int* shift,
                      const int* up, int32_t limit, int8_t* q, int8_t* shifted) {
  detail::ensure_dispatch_ready();
  // The int32-lane identity needs s ≤ 31 (int32 gradients with b ≥ 2 bits never need more: s ≤ 31 − 1).
  if (!shifts_in(shift, cols, std::numeric_limits<int>::min(), 31))
    return ref::shiftquant_round(g, draws, rows, cols, shift, up, limit, q, shifted);
  HWY_DYNAMIC_DISPATCH(ShiftQuantRound)(g, draws, rows, cols, shift, up, limit, q, shifted);
}

namespace ref {
namespace ed = elt_detail;

void requantize_i8(const int32_t* x, std::size_t n, int shift, int32_t lo, int32_t hi, int8_t* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = ed::requantize_one(x[i], shift, lo, hi);
}

void requantize_i8(const int8_t* x, std::size_t n, int shift, int32_t lo, int32_t hi, int8_t* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = ed::requantize_one(x[i], shift, lo, hi);
}

void requantize_i8_cols(const int32_t* x, std::size_t rows, std::size_t cols, const int* shift, int32_t lo, int32_t hi,
                        int8_t* out, const int* up) {
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c)
      out[r * cols + c] =
          static_cast<int8_t>(ed::requantize_one(x[r * cols + c], shift[c], lo, hi) * (up != nullptr ? 1 << up[c] : 1));
}

void squared_error_sums(const int32_t* x, std::size_t n, int s, int count, int32_t lo, int32_t hi, uint64_t* sum_hi,
                        uint64_t* sum_lo) {
  for (int j = 0; j < count; ++j) {
    sum_hi[j] = sum_lo[j] = 0;
    ed::add_squared_errors(x, n, s - j, lo, hi, sum_hi + j, sum_lo + j);
  }
}

void shiftquant_round(const int32_t* g, const uint32_t* draws, std::size_t rows, std::size_t cols, const int* shift,
                      const int* up, int32_t limit, int8_t* q, int8_t* shifted) {
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) {
      const std::size_t i = r * cols + c;
      ed::shiftquant_one(g[i], draws[i], shift[c], up[c], limit, q + i, shifted + i);
    }
}

}  // namespace ref
}  // namespace qtrain::kernels
#endif  // HWY_ONCE
