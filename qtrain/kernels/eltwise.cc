// The element-wise passes of the data plane (see eltwise.h), one Highway source compiled for every target.
//
// int32 work runs in int32 lanes without ever leaving the int32 range (eltwise.h explains the rounding
// identities); the aligned sums run in int64 lanes (PromoteTo on load, TruncateTo after saturating). Per-column
// parameters are turned once per call into per-column lane constants (so a vector of columns loads its shifts,
// masks and clamps like data); column tails that do not fill a vector, and the ragged end of flat arrays, run the
// reference's element functions. Reductions keep up to four column vectors of accumulators in registers and sweep
// the rows, so every element is read once.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/eltwise.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/rounding.h"

// ------------------------------------------------------------------------------------------------------------
// Scalar element functions: the reference, and the tails of the SIMD loops (seen once per target pass).
#ifndef QTRAIN_KERNELS_ELTWISE_SHARED_
#define QTRAIN_KERNELS_ELTWISE_SHARED_
namespace qtrain::kernels::elt_detail {

// clamp(R_even(x, s), lo, hi) on the exact value: for s < 0 a saturating left shift (saturation lies far beyond
// any int8 bound, so the clamp sees what the exact product would give it).
inline int8_t requantize_one(int32_t x, int s, int32_t lo, int32_t hi) {
  return static_cast<int8_t>(std::clamp<int64_t>(shift_round_even_sat(x, s), lo, hi));
}

inline void shiftquant_one(int32_t g, uint32_t r, int s, int up, int32_t limit, int8_t* q, int8_t* shifted) {
  const int64_t v = std::clamp<int64_t>(s <= 0 ? shift_left_sat(g, -s) : shift_round_stochastic(g, s, r), -limit, limit);
  *q = static_cast<int8_t>(v);
  *shifted = static_cast<int8_t>(v * (int64_t{1} << up));
}

inline int64_t aligned_sum_one(int32_t a, int32_t b, int la, int lb) {
  return int64_t{a} * (int64_t{1} << la) + int64_t{b} * (int64_t{1} << lb);
}

inline int32_t narrow_one(int64_t s, int t, bool relu = false) {
  const int64_t v = shift_round_even(s, t);
  return static_cast<int32_t>(
      std::clamp<int64_t>(v, relu ? 0 : std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()));
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
#endif  // QTRAIN_KERNELS_ELTWISE_SHARED_

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
using D64 = hn::ScalableTag<int64_t>;
using DU64 = hn::RebindToUnsigned<D64>;
using D32H = hn::Rebind<int32_t, D64>;  // one int32 per int64 lane
using DU32H = hn::Rebind<uint32_t, D64>;
using V64 = hn::Vec<D64>;

constexpr std::size_t kGroup = 4;  // column vectors reduced together

// ---- max |x| --------------------------------------------------------------------------------------------------

// |x| as uint32 (Abs(INT32_MIN) is INT32_MIN, i.e. 2^31 unsigned), or max(x, 0).
template <bool kPositive>
HWY_INLINE VU32 Magnitude(V32 x) {
  const DU32 du;
  if constexpr (kPositive) {
    return hn::BitCast(du, hn::Max(x, hn::Zero(D32())));
  } else {
    return hn::BitCast(du, hn::Abs(x));
  }
}

uint64_t LaneMax(VU32 v) {
  const DU32 du;
  HWY_ALIGN uint32_t a[hn::MaxLanes(du)];
  hn::Store(v, du, a);
  uint32_t m = 0;
  for (std::size_t i = 0; i < hn::Lanes(du); ++i) m = std::max(m, a[i]);
  return m;
}

template <bool kPositive>
uint64_t MaxAbsT(const int32_t* HWY_RESTRICT x, std::size_t n) {
  const D32 d;
  const DU32 du;
  const std::size_t lanes = hn::Lanes(d);
  VU32 m0 = hn::Zero(du), m1 = hn::Zero(du);
  std::size_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    m0 = hn::Max(m0, Magnitude<kPositive>(hn::LoadU(d, x + i)));
    m1 = hn::Max(m1, Magnitude<kPositive>(hn::LoadU(d, x + i + lanes)));
  }
  for (; i + lanes <= n; i += lanes) m0 = hn::Max(m0, Magnitude<kPositive>(hn::LoadU(d, x + i)));
  uint64_t m = LaneMax(hn::Max(m0, m1));
  for (; i < n; ++i) m = std::max(m, kPositive ? magnitude(std::max(x[i], 0)) : magnitude(x[i]));
  return m;
}

uint64_t MaxAbsI32(const int32_t* x, std::size_t n, bool positive_only) {
  return positive_only ? MaxAbsT<true>(x, n) : MaxAbsT<false>(x, n);
}

template <bool kPositive>
void ColMaxAbsT(const int32_t* HWY_RESTRICT x, std::size_t rows, std::size_t cols, uint64_t* HWY_RESTRICT colmax) {
  const D32 d;
  const DU32 du;
  const std::size_t lanes = hn::Lanes(d);
  const std::size_t full = cols / lanes * lanes;
  HWY_ALIGN uint32_t tmp[hn::MaxLanes(du)];
  for (std::size_t c0 = 0; c0 < full; c0 += kGroup * lanes) {
    const std::size_t nv = std::min(kGroup, (full - c0) / lanes);
    VU32 m0 = hn::Zero(du), m1 = hn::Zero(du), m2 = hn::Zero(du), m3 = hn::Zero(du);
    const int32_t* p = x + c0;
    if (nv == 4) {
      for (std::size_t r = 0; r < rows; ++r, p += cols) {
        m0 = hn::Max(m0, Magnitude<kPositive>(hn::LoadU(d, p)));
        m1 = hn::Max(m1, Magnitude<kPositive>(hn::LoadU(d, p + lanes)));
        m2 = hn::Max(m2, Magnitude<kPositive>(hn::LoadU(d, p + 2 * lanes)));
        m3 = hn::Max(m3, Magnitude<kPositive>(hn::LoadU(d, p + 3 * lanes)));
      }
    } else {
      for (std::size_t r = 0; r < rows; ++r, p += cols) {
        m0 = hn::Max(m0, Magnitude<kPositive>(hn::LoadU(d, p)));
        if (nv > 1) m1 = hn::Max(m1, Magnitude<kPositive>(hn::LoadU(d, p + lanes)));
        if (nv > 2) m2 = hn::Max(m2, Magnitude<kPositive>(hn::LoadU(d, p + 2 * lanes)));
      }
    }
    const VU32 acc[4] = {m0, m1, m2, m3};
    for (std::size_t v = 0; v < nv; ++v) {
      hn::Store(acc[v], du, tmp);
      for (std::size_t l = 0; l < lanes; ++l) colmax[c0 + v * lanes + l] = tmp[l];
    }
  }
  for (std::size_t c = full; c < cols; ++c) {
    uint64_t m = 0;
    for (std::size_t r = 0; r < rows; ++r) {
      const int32_t v = x[r * cols + c];
      m = std::max(m, kPositive ? magnitude(std::max(v, 0)) : magnitude(v));
    }
    colmax[c] = m;
  }
}

void ColMaxAbsI32(const int32_t* x, std::size_t rows, std::size_t cols, bool positive_only, uint64_t* colmax) {
  if (positive_only) {
    ColMaxAbsT<true>(x, rows, cols, colmax);
  } else {
    ColMaxAbsT<false>(x, rows, cols, colmax);
  }
}

// Running min and max of int64 lanes; max |·| at the end.
struct MinMax64 {
  V64 lo, hi;
  MinMax64() : lo(hn::Zero(D64())), hi(hn::Zero(D64())) {}
  HWY_INLINE void Add(V64 x) {
    lo = hn::Min(lo, x);
    hi = hn::Max(hi, x);
  }
  HWY_INLINE void Merge(const MinMax64& o) {
    lo = hn::Min(lo, o.lo);
    hi = hn::Max(hi, o.hi);
  }
  // max |·| of lane l, for every lane, into out[0..lanes).
  void PerLane(uint64_t* out) const {
    const D64 d;
    HWY_ALIGN int64_t a[hn::MaxLanes(d)];
    HWY_ALIGN int64_t b[hn::MaxLanes(d)];
    hn::Store(lo, d, a);
    hn::Store(hi, d, b);
    for (std::size_t i = 0; i < hn::Lanes(d); ++i) out[i] = std::max(magnitude(a[i]), magnitude(b[i]));
  }
  // The smallest and largest lane values (with 0, where every lane starts).
  SumRange Range() const {
    const D64 d;
    HWY_ALIGN int64_t a[hn::MaxLanes(d)];
    HWY_ALIGN int64_t b[hn::MaxLanes(d)];
    hn::Store(lo, d, a);
    hn::Store(hi, d, b);
    SumRange r{a[0], b[0]};
    for (std::size_t i = 1; i < hn::Lanes(d); ++i) {
      r.min = std::min(r.min, a[i]);
      r.max = std::max(r.max, b[i]);
    }
    return r;
  }
  uint64_t MaxAbs() const {
    HWY_ALIGN uint64_t m[hn::MaxLanes(D64())];
    PerLane(m);
    uint64_t r = 0;
    for (std::size_t i = 0; i < hn::Lanes(D64()); ++i) r = std::max(r, m[i]);
    return r;
  }
};

uint64_t MaxAbsI64(const int64_t* HWY_RESTRICT x, std::size_t n) {
  const D64 d;
  const std::size_t lanes = hn::Lanes(d);
  MinMax64 m0, m1;
  std::size_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    m0.Add(hn::LoadU(d, x + i));
    m1.Add(hn::LoadU(d, x + i + lanes));
  }
  for (; i + lanes <= n; i += lanes) m0.Add(hn::LoadU(d, x + i));
  m0.Merge(m1);
  uint64_t m = m0.MaxAbs();
  for (; i < n; ++i) m = std::max(m, magnitude(x[i]));
  return m;
}

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
  for (; i + lanes <= n; i += lanes) hn::StoreU(hn::DemoteTo(d8, RequantCore(LoadAsI32(x + i), p, vlo, vhi)), d8, out + i);
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

// ---- aligned sums ---------------------------------------------------------------------------------------------

HWY_INLINE V64 LoadI32(const int32_t* p) { return hn::PromoteTo(D64(), hn::LoadU(D32H(), p)); }

HWY_INLINE V64 SumCore(const int32_t* a, const int32_t* b, V64 la, V64 lb) {
  return hn::Add(hn::operator<<(LoadI32(a), la), hn::operator<<(LoadI32(b), lb));
}

// sat32(R_even(s, t)) for 0 ≤ t ≤ 62, |s| < 2^63 − 2^62: q = s >> t, r = s & (2^t − 1),
// result q + [r + (q & 1) > 2^(t−1)] (odd masked off for t = 0).
struct NarrowVec {
  V64 t, mask, half, oddm;
  explicit NarrowVec(int tt) {
    const D64 d;
    t = hn::Set(d, tt);
    mask = hn::Set(d, tt == 0 ? 0 : static_cast<int64_t>((uint64_t{1} << tt) - 1));
    half = hn::Set(d, tt == 0 ? 0 : int64_t{1} << (tt - 1));
    oddm = hn::Set(d, tt == 0 ? 0 : 1);
  }
  NarrowVec(V64 t_, V64 mask_, V64 half_, V64 oddm_) : t(t_), mask(mask_), half(half_), oddm(oddm_) {}
};

// sat32(R_even(s, t)), or its ReLU (the low saturation bound raised to 0), stored as int32.
HWY_INLINE void NarrowStore(V64 s, const NarrowVec& p, V64 lo, int32_t* out) {
  const D64 d;
  const V64 q = hn::operator>>(s, p.t);
  const V64 r = hn::And(s, p.mask);
  const V64 odd = hn::And(q, p.oddm);
  const V64 v = hn::Sub(q, hn::VecFromMask(d, hn::Gt(hn::Add(r, odd), p.half)));
  const V64 sat = hn::Min(hn::Max(v, lo), hn::Set(d, std::numeric_limits<int32_t>::max()));
  const DU64 du;
  const DU32H du32;
  hn::StoreU(hn::TruncateTo(du32, hn::BitCast(du, sat)), du32, reinterpret_cast<uint32_t*>(out));
}

HWY_INLINE V64 SatLow(bool relu) { return hn::Set(D64(), relu ? 0 : std::numeric_limits<int32_t>::min()); }

template <bool kStore>
SumRange AlignedSumRangeT(const int32_t* HWY_RESTRICT a, const int32_t* HWY_RESTRICT b, std::size_t n, int la, int lb,
                          int32_t* HWY_RESTRICT out, bool relu) {
  const D64 d;
  const std::size_t lanes = hn::Lanes(d);
  const V64 vla = hn::Set(d, la), vlb = hn::Set(d, lb), lo = SatLow(relu);
  const NarrowVec identity(0);
  MinMax64 m0, m1;
  std::size_t i = 0;
  for (; i + 2 * lanes <= n; i += 2 * lanes) {
    const V64 s0 = SumCore(a + i, b + i, vla, vlb), s1 = SumCore(a + i + lanes, b + i + lanes, vla, vlb);
    m0.Add(s0);
    m1.Add(s1);
    if constexpr (kStore) {
      NarrowStore(s0, identity, lo, out + i);
      NarrowStore(s1, identity, lo, out + i + lanes);
    }
  }
  for (; i + lanes <= n; i += lanes) {
    const V64 s0 = SumCore(a + i, b + i, vla, vlb);
    m0.Add(s0);
    if constexpr (kStore) NarrowStore(s0, identity, lo, out + i);
  }
  m0.Merge(m1);
  SumRange range = m0.Range();  // the lanes start at 0, which the range includes by definition
  for (; i < n; ++i) {
    const int64_t s0 = ed::aligned_sum_one(a[i], b[i], la, lb);
    range.min = std::min(range.min, s0);
    range.max = std::max(range.max, s0);
    if constexpr (kStore) out[i] = ed::narrow_one(s0, 0, relu);
  }
  return range;
}

// The same in int32 lanes (twice the lanes of int64, no widening) for blocks whose sums all fit int32: there
// a·2^la, b·2^lb and their sum are exact int32 values, so the range and the t = 0 result (sat32 is a no-op; with
// relu max(s, 0)) equal the int64 ones. A block where a shift or the add overflows (detected: the shift does not
// shift back, or the sum's sign differs from both terms') is redone by the int64 loop above.
constexpr std::size_t kSum32Block = 1024;

template <bool kStore>
SumRange AlignedSumRange32(const int32_t* HWY_RESTRICT a, const int32_t* HWY_RESTRICT b, std::size_t n, int la,
                           int lb, int32_t* HWY_RESTRICT out, bool relu) {
  const D32 d;
  const std::size_t lanes = hn::Lanes(d);
  const V32 zero = hn::Zero(d), lo = relu ? zero : hn::Set(d, std::numeric_limits<int32_t>::min());
  SumRange range;
  std::size_t i0 = 0;
  for (; i0 + lanes <= n; i0 += kSum32Block) {
    const std::size_t i1 = std::min(n, i0 + kSum32Block) / lanes * lanes;
    V32 vmin = zero, vmax = zero, lost = zero, wrapped = zero;
    for (std::size_t i = i0; i < i1; i += lanes) {
      const V32 va = hn::LoadU(d, a + i), vb = hn::LoadU(d, b + i);
      const V32 sa = hn::ShiftLeftSame(va, la), sb = hn::ShiftLeftSame(vb, lb);
      const V32 s = hn::Add(sa, sb);
      lost = hn::Or(lost, hn::Or(hn::Xor(hn::ShiftRightSame(sa, la), va), hn::Xor(hn::ShiftRightSame(sb, lb), vb)));
      wrapped = hn::Or(wrapped, hn::And(hn::Xor(s, sa), hn::Xor(s, sb)));  // sign bit: the add overflowed
      vmin = hn::Min(vmin, s);
      vmax = hn::Max(vmax, s);
      if constexpr (kStore) hn::StoreU(hn::Max(s, lo), d, out + i);
    }
    SumRange r;
    if (hn::AllTrue(d, hn::Eq(lost, zero)) && hn::AllFalse(d, hn::Lt(wrapped, zero))) {
      r = {hn::GetLane(hn::MinOfLanes(d, vmin)), hn::GetLane(hn::MaxOfLanes(d, vmax))};
    } else {
      r = AlignedSumRangeT<kStore>(a + i0, b + i0, i1 - i0, la, lb, kStore ? out + i0 : nullptr, relu);
    }
    range.min = std::min(range.min, r.min);
    range.max = std::max(range.max, r.max);
    if (i1 < i0 + kSum32Block) {
      i0 = i1;
      break;
    }
  }
  const SumRange tail = AlignedSumRangeT<kStore>(a + i0, b + i0, n - i0, la, lb, kStore ? out + i0 : nullptr, relu);
  return {std::min(range.min, tail.min), std::max(range.max, tail.max)};
}

SumRange AlignedSumRange(const int32_t* a, const int32_t* b, std::size_t n, int la, int lb, int32_t* out, bool relu) {
  return out != nullptr ? AlignedSumRange32<true>(a, b, n, la, lb, out, relu)
                        : AlignedSumRange32<false>(a, b, n, la, lb, nullptr, relu);
}

void AlignedSumNarrow(const int32_t* a, const int32_t* b, std::size_t n, int la, int lb, int t, int32_t* out,
                      bool relu) {
  const D64 d;
  const std::size_t lanes = hn::Lanes(d);
  const V64 vla = hn::Set(d, la), vlb = hn::Set(d, lb), lo = SatLow(relu);
  const NarrowVec p(t);
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) NarrowStore(SumCore(a + i, b + i, vla, vlb), p, lo, out + i);
  for (; i < n; ++i) out[i] = ed::narrow_one(ed::aligned_sum_one(a[i], b[i], la, lb), t, relu);
}

void AlignedSumColMax(const int32_t* HWY_RESTRICT a, const int32_t* HWY_RESTRICT b, std::size_t rows, std::size_t cols,
                      const int* la, const int* lb, uint64_t* HWY_RESTRICT colmax) {
  const D64 d;
  const std::size_t lanes = hn::Lanes(d);
  const std::size_t full = cols / lanes * lanes;
  std::vector<int64_t> sa(cols), sb(cols);
  for (std::size_t c = 0; c < cols; ++c) {
    sa[c] = la[c];
    sb[c] = lb[c];
  }
  HWY_ALIGN uint64_t tmp[hn::MaxLanes(d)];
  for (std::size_t c0 = 0; c0 < full; c0 += 2 * lanes) {
    const bool two = c0 + 2 * lanes <= full;
    const V64 a0 = hn::LoadU(d, sa.data() + c0), b0 = hn::LoadU(d, sb.data() + c0);
    const V64 a1 = two ? hn::LoadU(d, sa.data() + c0 + lanes) : a0;
    const V64 b1 = two ? hn::LoadU(d, sb.data() + c0 + lanes) : b0;
    MinMax64 m0, m1;
    for (std::size_t r = 0; r < rows; ++r) {
      const std::size_t o = r * cols + c0;
      m0.Add(SumCore(a + o, b + o, a0, b0));
      if (two) m1.Add(SumCore(a + o + lanes, b + o + lanes, a1, b1));
    }
    m0.PerLane(tmp);
    for (std::size_t l = 0; l < lanes; ++l) colmax[c0 + l] = tmp[l];
    if (two) {
      m1.PerLane(tmp);
      for (std::size_t l = 0; l < lanes; ++l) colmax[c0 + lanes + l] = tmp[l];
    }
  }
  for (std::size_t c = full; c < cols; ++c) {
    uint64_t m = 0;
    for (std::size_t r = 0; r < rows; ++r)
      m = std::max(m, magnitude(ed::aligned_sum_one(a[r * cols + c], b[r * cols + c], la[c], lb[c])));
    colmax[c] = m;
  }
}

void AlignedSumNarrowCols(const int32_t* a, const int32_t* b, std::size_t rows, std::size_t cols, const int* la,
                          const int* lb, const int* t, int32_t* out) {
  const D64 d;
  const std::size_t lanes = hn::Lanes(d);
  const std::size_t full = cols / lanes * lanes;
  std::vector<int64_t> sa(cols), sb(cols), st(cols), mask(cols), half(cols), oddm(cols);
  for (std::size_t c = 0; c < cols; ++c) {
    sa[c] = la[c];
    sb[c] = lb[c];
    st[c] = t[c];
    mask[c] = t[c] == 0 ? 0 : static_cast<int64_t>((uint64_t{1} << t[c]) - 1);
    half[c] = t[c] == 0 ? 0 : int64_t{1} << (t[c] - 1);
    oddm[c] = t[c] == 0 ? 0 : 1;
  }
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t base = r * cols;
    for (std::size_t c = 0; c < full; c += lanes) {
      const NarrowVec p(hn::LoadU(d, st.data() + c), hn::LoadU(d, mask.data() + c), hn::LoadU(d, half.data() + c),
                        hn::LoadU(d, oddm.data() + c));
      NarrowStore(SumCore(a + base + c, b + base + c, hn::LoadU(d, sa.data() + c), hn::LoadU(d, sb.data() + c)), p,
                  SatLow(false), out + base + c);
    }
    for (std::size_t c = full; c < cols; ++c)
      out[base + c] = ed::narrow_one(ed::aligned_sum_one(a[base + c], b[base + c], la[c], lb[c]), t[c]);
  }
}

// ---- ReLU, adds -----------------------------------------------------------------------------------------------

uint64_t ReluI32(const int32_t* x, std::size_t n, int32_t* y) {
  const D32 d;
  const std::size_t lanes = hn::Lanes(d);
  const V32 zero = hn::Zero(d);
  V32 m = zero;
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const V32 v = hn::Max(hn::LoadU(d, x + i), zero);
    m = hn::Max(m, v);
    hn::StoreU(v, d, y + i);
  }
  uint64_t mx = LaneMax(hn::BitCast(DU32(), m));
  for (; i < n; ++i) {
    y[i] = std::max(x[i], 0);
    mx = std::max<uint64_t>(mx, static_cast<uint64_t>(y[i]));
  }
  return mx;
}

void ReluBackwardI32(const int32_t* dy, const int32_t* HWY_RESTRICT x, std::size_t n, int32_t* dx, int32_t* dx2) {
  const D32 d;
  const std::size_t lanes = hn::Lanes(d);
  const V32 zero = hn::Zero(d);
  std::size_t i = 0;
  if (dx2 != nullptr) {
    for (; i + lanes <= n; i += lanes) {
      const V32 g = hn::IfThenElseZero(hn::Gt(hn::LoadU(d, x + i), zero), hn::LoadU(d, dy + i));
      hn::StoreU(g, d, dx + i);
      hn::StoreU(g, d, dx2 + i);
    }
    for (; i < n; ++i) dx[i] = dx2[i] = x[i] > 0 ? dy[i] : 0;
    return;
  }
  for (; i + lanes <= n; i += lanes)
    hn::StoreU(hn::IfThenElseZero(hn::Gt(hn::LoadU(d, x + i), zero), hn::LoadU(d, dy + i)), d, dx + i);
  for (; i < n; ++i) dx[i] = x[i] > 0 ? dy[i] : 0;
}

void AddStridedI32(int32_t* HWY_RESTRICT dst, std::size_t dst_stride, const int32_t* HWY_RESTRICT src,
                   std::size_t src_stride, std::size_t runs, std::size_t len) {
  const D32 d;
  const hn::CappedTag<int32_t, 4> d4;  // 128-bit tail (e.g. 4 or 8 channels on wider targets)
  const std::size_t lanes = hn::Lanes(d), lanes4 = hn::Lanes(d4);
  for (std::size_t r = 0; r < runs; ++r, dst += dst_stride, src += src_stride) {
    std::size_t e = 0;
    for (; e + lanes <= len; e += lanes) hn::StoreU(hn::Add(hn::LoadU(d, dst + e), hn::LoadU(d, src + e)), d, dst + e);
    for (; e + lanes4 <= len; e += lanes4)
      hn::StoreU(hn::Add(hn::LoadU(d4, dst + e), hn::LoadU(d4, src + e)), d4, dst + e);
    for (; e < len; ++e) dst[e] = static_cast<int32_t>(static_cast<uint32_t>(dst[e]) + static_cast<uint32_t>(src[e]));
  }
}

// ---- gathered sums (col2im) ----------------------------------------------------------------------------------

HWY_INLINE uint32_t WrapAdd(uint32_t a, int32_t b) { return a + static_cast<uint32_t>(b); }

void GatherSumI32(const int32_t* const* src, std::size_t nsrc, const std::size_t* HWY_RESTRICT offset,
                  const uint32_t* HWY_RESTRICT count, std::size_t max_taps, std::size_t w, std::size_t c,
                  bool accumulate, int32_t* HWY_RESTRICT dst) {
  const D32 d;
  const std::size_t lanes = hn::Lanes(d);
  for (std::size_t q = 0; q < w; ++q) {
    const std::size_t* off = offset + q * max_taps;
    const std::size_t taps = count[q];
    int32_t* o = dst + q * c;
    std::size_t e = 0;
    for (; e + lanes <= c; e += lanes) {
      V32 acc = accumulate ? hn::LoadU(d, o + e) : hn::Zero(d);
      for (std::size_t r = 0; r < nsrc; ++r) {
        const int32_t* base = src[r] + e;
        for (std::size_t t = 0; t < taps; ++t) acc = hn::Add(acc, hn::LoadU(d, base + off[t]));
      }
      hn::StoreU(acc, d, o + e);
    }
    for (; e < c; ++e) {
      uint32_t acc = accumulate ? static_cast<uint32_t>(o[e]) : 0u;
      for (std::size_t r = 0; r < nsrc; ++r)
        for (std::size_t t = 0; t < taps; ++t) acc = WrapAdd(acc, src[r][off[t] + e]);
      o[e] = static_cast<int32_t>(acc);
    }
  }
}

// ---- max pooling ----------------------------------------------------------------------------------------------

void MaxArgmaxI32(const int32_t* const* src, const uint16_t* pos, std::size_t count, std::size_t n,
                  int32_t* HWY_RESTRICT y, uint16_t* HWY_RESTRICT arg) {
  const D32 d;
  const hn::Rebind<uint16_t, D32> d16;
  const std::size_t lanes = hn::Lanes(d);
  std::size_t e = 0;
  for (; e + lanes <= n; e += lanes) {
    V32 best = hn::LoadU(d, src[0] + e);
    V32 at = hn::Set(d, pos[0]);
    for (std::size_t j = 1; j < count; ++j) {
      const V32 v = hn::LoadU(d, src[j] + e);
      const auto gt = hn::Gt(v, best);  // strict: ties keep the earlier position
      best = hn::IfThenElse(gt, v, best);
      at = hn::IfThenElse(gt, hn::Set(d, pos[j]), at);
    }
    hn::StoreU(best, d, y + e);
    hn::StoreU(hn::DemoteTo(d16, at), d16, arg + e);
  }
  for (; e < n; ++e) {
    int32_t b = src[0][e];
    uint16_t a = pos[0];
    for (std::size_t j = 1; j < count; ++j)
      if (src[j][e] > b) {
        b = src[j][e];
        a = pos[j];
      }
    y[e] = b;
    arg[e] = a;
  }
}

void UnpoolMaxI32(const int32_t* HWY_RESTRICT dy, const uint16_t* HWY_RESTRICT arg, std::size_t n, int32_t* const* dst,
                  std::size_t count) {
  const D32 d;
  const hn::Rebind<uint16_t, D32> d16;
  const std::size_t lanes = hn::Lanes(d);
  std::size_t e = 0;
  for (; e + lanes <= n; e += lanes) {
    const V32 g = hn::LoadU(d, dy + e);
    const V32 a = hn::PromoteTo(d, hn::LoadU(d16, arg + e));
    for (std::size_t j = 0; j < count; ++j)
      hn::StoreU(hn::IfThenElseZero(hn::Eq(a, hn::Set(d, static_cast<int32_t>(j))), g), d, dst[j] + e);
  }
  for (; e < n; ++e)
    for (std::size_t j = 0; j < count; ++j) dst[j][e] = arg[e] == j ? dy[e] : 0;
}

#else  // HWY_SCALAR: the references.

uint64_t MaxAbsI32(const int32_t* x, std::size_t n, bool positive_only) {
  return ref::max_abs_i32(x, n, positive_only);
}
void ColMaxAbsI32(const int32_t* x, std::size_t rows, std::size_t cols, bool positive_only, uint64_t* colmax) {
  ref::col_max_abs_i32(x, rows, cols, positive_only, colmax);
}
uint64_t MaxAbsI64(const int64_t* x, std::size_t n) { return ref::max_abs_i64(x, n); }
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
SumRange AlignedSumRange(const int32_t* a, const int32_t* b, std::size_t n, int la, int lb, int32_t* out, bool relu) {
  return ref::aligned_sum_range(a, b, n, la, lb, out, relu);
}
void AlignedSumNarrow(const int32_t* a, const int32_t* b, std::size_t n, int la, int lb, int t, int32_t* out,
                      bool relu) {
  ref::aligned_sum_narrow(a, b, n, la, lb, t, out, relu);
}
void AlignedSumColMax(const int32_t* a, const int32_t* b, std::size_t rows, std::size_t cols, const int* la,
                      const int* lb, uint64_t* colmax) {
  ref::aligned_sum_col_max(a, b, rows, cols, la, lb, colmax);
}
void AlignedSumNarrowCols(const int32_t* a, const int32_t* b, std::size_t rows, std::size_t cols, const int* la,
                          const int* lb, const int* t, int32_t* out) {
  ref::aligned_sum_narrow_cols(a, b, rows, cols, la, lb, t, out);
}
uint64_t ReluI32(const int32_t* x, std::size_t n, int32_t* y) { return ref::relu_i32(x, n, y); }
void ReluBackwardI32(const int32_t* dy, const int32_t* x, std::size_t n, int32_t* dx, int32_t* dx2) {
  ref::relu_backward_i32(dy, x, n, dx, dx2);
}
void AddStridedI32(int32_t* dst, std::size_t dst_stride, const int32_t* src, std::size_t src_stride, std::size_t runs,
                   std::size_t len) {
  ref::add_strided_i32(dst, dst_stride, src, src_stride, runs, len);
}

void GatherSumI32(const int32_t* const* src, std::size_t nsrc, const std::size_t* offset, const uint32_t* count,
                  std::size_t max_taps, std::size_t w, std::size_t c, bool accumulate, int32_t* dst) {
  ref::gather_sum_i32(src, nsrc, offset, count, max_taps, w, c, accumulate, dst);
}
void MaxArgmaxI32(const int32_t* const* src, const uint16_t* pos, std::size_t count, std::size_t n, int32_t* y,
                  uint16_t* arg) {
  ref::max_argmax_i32(src, pos, count, n, y, arg);
}
void UnpoolMaxI32(const int32_t* dy, const uint16_t* arg, std::size_t n, int32_t* const* dst, std::size_t count) {
  ref::unpool_max_i32(dy, arg, n, dst, count);
}

#endif  // HWY_TARGET != HWY_SCALAR

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

// ------------------------------------------------------------------------------------------------------------
// Target-independent part: dispatch and the references.
#if HWY_ONCE
namespace qtrain::kernels {
HWY_EXPORT(MaxAbsI32);
HWY_EXPORT(ColMaxAbsI32);
HWY_EXPORT(MaxAbsI64);
HWY_EXPORT(RequantizeI8);
HWY_EXPORT(RequantizeI8FromI8);
HWY_EXPORT(RequantizeI8Cols);
HWY_EXPORT(SquaredErrorSum);
HWY_EXPORT(ShiftQuantRound);
HWY_EXPORT(AlignedSumRange);
HWY_EXPORT(AlignedSumNarrow);
HWY_EXPORT(AlignedSumColMax);
HWY_EXPORT(AlignedSumNarrowCols);
HWY_EXPORT(ReluI32);
HWY_EXPORT(ReluBackwardI32);
HWY_EXPORT(AddStridedI32);
HWY_EXPORT(GatherSumI32);
HWY_EXPORT(MaxArgmaxI32);
HWY_EXPORT(UnpoolMaxI32);

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

uint64_t max_abs_i32(const int32_t* x, std::size_t n, bool positive_only) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(MaxAbsI32)(x, n, positive_only);
}

void col_max_abs_i32(const int32_t* x, std::size_t rows, std::size_t cols, bool positive_only, uint64_t* colmax) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(ColMaxAbsI32)(x, rows, cols, positive_only, colmax);
}

uint64_t max_abs_i64(const int64_t* x, std::size_t n) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(MaxAbsI64)(x, n);
}

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

SumRange aligned_sum_range(const int32_t* a, const int32_t* b, std::size_t n, int la, int lb, int32_t* out, bool relu) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(AlignedSumRange)(a, b, n, la, lb, out, relu);
}

void aligned_sum_narrow(const int32_t* a, const int32_t* b, std::size_t n, int la, int lb, int t, int32_t* out,
                        bool relu) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(AlignedSumNarrow)(a, b, n, la, lb, t, out, relu);
}

void aligned_sum_col_max(const int32_t* a, const int32_t* b, std::size_t rows, std::size_t cols, const int* la,
                         const int* lb, uint64_t* colmax) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(AlignedSumColMax)(a, b, rows, cols, la, lb, colmax);
}

void aligned_sum_narrow_cols(const int32_t* a, const int32_t* b, std::size_t rows, std::size_t cols, const int* la,
                             const int* lb, const int* t, int32_t* out) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(AlignedSumNarrowCols)(a, b, rows, cols, la, lb, t, out);
}

uint64_t relu_i32(const int32_t* x, std::size_t n, int32_t* y) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(ReluI32)(x, n, y);
}

void relu_backward_i32(const int32_t* dy, const int32_t* x, std::size_t n, int32_t* dx, int32_t* dx2) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(ReluBackwardI32)(dy, x, n, dx, dx2);
}

void add_strided_i32(int32_t* dst, std::size_t dst_stride, const int32_t* src, std::size_t src_stride, std::size_t runs,
                     std::size_t len) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(AddStridedI32)(dst, dst_stride, src, src_stride, runs, len);
}

void gather_sum_i32(const int32_t* const* src, std::size_t nsrc, const std::size_t* offset, const uint32_t* count,
                    std::size_t max_taps, std::size_t w, std::size_t c, bool accumulate, int32_t* dst) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(GatherSumI32)(src, nsrc, offset, count, max_taps, w, c, accumulate, dst);
}

void max_argmax_i32(const int32_t* const* src, const uint16_t* pos, std::size_t count, std::size_t n, int32_t* y,
                    uint16_t* arg) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(MaxArgmaxI32)(src, pos, count, n, y, arg);
}

void unpool_max_i32(const int32_t* dy, const uint16_t* arg, std::size_t n, int32_t* const* dst, std::size_t count) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(UnpoolMaxI32)(dy, arg, n, dst, count);
}

namespace ref {
namespace ed = elt_detail;

uint64_t max_abs_i32(const int32_t* x, std::size_t n, bool positive_only) {
  uint64_t m = 0;
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, magnitude(positive_only ? std::max(x[i], 0) : x[i]));
  return m;
}

void col_max_abs_i32(const int32_t* x, std::size_t rows, std::size_t cols, bool positive_only, uint64_t* colmax) {
  std::fill(colmax, colmax + cols, uint64_t{0});
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) {
      const int32_t v = x[r * cols + c];
      colmax[c] = std::max(colmax[c], magnitude(positive_only ? std::max(v, 0) : v));
    }
}

uint64_t max_abs_i64(const int64_t* x, std::size_t n) {
  uint64_t m = 0;
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, magnitude(x[i]));
  return m;
}

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
      out[r * cols + c] = static_cast<int8_t>(ed::requantize_one(x[r * cols + c], shift[c], lo, hi) *
                                              (up != nullptr ? 1 << up[c] : 1));
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

SumRange aligned_sum_range(const int32_t* a, const int32_t* b, std::size_t n, int la, int lb, int32_t* out, bool relu) {
  SumRange r;  // {0, 0}: the range includes 0
  for (std::size_t i = 0; i < n; ++i) {
    const int64_t s = ed::aligned_sum_one(a[i], b[i], la, lb);
    r.min = std::min(r.min, s);
    r.max = std::max(r.max, s);
    if (out != nullptr) out[i] = ed::narrow_one(s, 0, relu);
  }
  return r;
}

void aligned_sum_narrow(const int32_t* a, const int32_t* b, std::size_t n, int la, int lb, int t, int32_t* out,
                        bool relu) {
  for (std::size_t i = 0; i < n; ++i) out[i] = ed::narrow_one(ed::aligned_sum_one(a[i], b[i], la, lb), t, relu);
}

void aligned_sum_col_max(const int32_t* a, const int32_t* b, std::size_t rows, std::size_t cols, const int* la,
                         const int* lb, uint64_t* colmax) {
  std::fill(colmax, colmax + cols, uint64_t{0});
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c)
      colmax[c] = std::max(colmax[c], magnitude(ed::aligned_sum_one(a[r * cols + c], b[r * cols + c], la[c], lb[c])));
}

void aligned_sum_narrow_cols(const int32_t* a, const int32_t* b, std::size_t rows, std::size_t cols, const int* la,
                             const int* lb, const int* t, int32_t* out) {
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = 0; c < cols; ++c) {
      const std::size_t i = r * cols + c;
      out[i] = ed::narrow_one(ed::aligned_sum_one(a[i], b[i], la[c], lb[c]), t[c]);
    }
}

uint64_t relu_i32(const int32_t* x, std::size_t n, int32_t* y) {
  uint64_t m = 0;
  for (std::size_t i = 0; i < n; ++i) {
    y[i] = std::max(x[i], 0);
    m = std::max<uint64_t>(m, static_cast<uint64_t>(y[i]));
  }
  return m;
}

void relu_backward_i32(const int32_t* dy, const int32_t* x, std::size_t n, int32_t* dx, int32_t* dx2) {
  for (std::size_t i = 0; i < n; ++i) {
    dx[i] = x[i] > 0 ? dy[i] : 0;
    if (dx2 != nullptr) dx2[i] = dx[i];
  }
}

void add_strided_i32(int32_t* dst, std::size_t dst_stride, const int32_t* src, std::size_t src_stride, std::size_t runs,
                     std::size_t len) {
  for (std::size_t r = 0; r < runs; ++r)
    for (std::size_t e = 0; e < len; ++e) {
      int32_t& o = dst[r * dst_stride + e];
      o = static_cast<int32_t>(static_cast<uint32_t>(o) + static_cast<uint32_t>(src[r * src_stride + e]));
    }
}

void gather_sum_i32(const int32_t* const* src, std::size_t nsrc, const std::size_t* offset, const uint32_t* count,
                    std::size_t max_taps, std::size_t w, std::size_t c, bool accumulate, int32_t* dst) {
  for (std::size_t q = 0; q < w; ++q)
    for (std::size_t e = 0; e < c; ++e) {
      uint32_t acc = accumulate ? static_cast<uint32_t>(dst[q * c + e]) : 0u;
      for (std::size_t r = 0; r < nsrc; ++r)
        for (std::size_t t = 0; t < count[q]; ++t) acc += static_cast<uint32_t>(src[r][offset[q * max_taps + t] + e]);
      dst[q * c + e] = static_cast<int32_t>(acc);
    }
}

void max_argmax_i32(const int32_t* const* src, const uint16_t* pos, std::size_t count, std::size_t n, int32_t* y,
                    uint16_t* arg) {
  for (std::size_t e = 0; e < n; ++e) {
    int32_t b = src[0][e];
    uint16_t a = pos[0];
    for (std::size_t j = 1; j < count; ++j)
      if (src[j][e] > b) {
        b = src[j][e];
        a = pos[j];
      }
    y[e] = b;
    arg[e] = a;
  }
}

void unpool_max_i32(const int32_t* dy, const uint16_t* arg, std::size_t n, int32_t* const* dst, std::size_t count) {
  for (std::size_t j = 0; j < count; ++j)
    for (std::size_t e = 0; e < n; ++e) dst[j][e] = arg[e] == j ? dy[e] : 0;
}

}  // namespace ref
}  // namespace qtrain::kernels
#endif  // HWY_ONCE
