// The exponent-aligned sums of eltwise.h (a·2^la + b·2^lb, its range, its narrowing back to int32) and the int64
// max-|x| scan that narrowing also needs, one Highway source compiled for every target. The sums run in int64 lanes
// (PromoteTo on load, TruncateTo after saturating), aligned_sum_range first in int32 lanes per block where nothing
// overflows; the ragged ends run the reference's element functions.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/eltwise_aligned_sum.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/rounding.h"

// ------------------------------------------------------------------------------------------------------------
// Scalar element functions: the reference, and the tails of the SIMD loops (seen once per target pass).
#ifndef QTRAIN_KERNELS_ELTWISE_ALIGNED_SUM_CC_SHARED_
#define QTRAIN_KERNELS_ELTWISE_ALIGNED_SUM_CC_SHARED_
namespace qtrain::kernels::elt_detail {

inline int64_t aligned_sum_one(int32_t a, int32_t b, int la, int lb) {
  return int64_t{a} * (int64_t{1} << la) + int64_t{b} * (int64_t{1} << lb);
}

inline int32_t narrow_one(int64_t s, int t, bool relu = false) {
  const int64_t v = shift_round_even(s, t);
  return static_cast<int32_t>(
      std::clamp<int64_t>(v, relu ? 0 : std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max()));
}

}  // namespace qtrain::kernels::elt_detail
#endif  // QTRAIN_KERNELS_ELTWISE_ALIGNED_SUM_CC_SHARED_

// ------------------------------------------------------------------------------------------------------------
// Per-target code.
HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace ed = qtrain::kernels::elt_detail;

#if HWY_TARGET != HWY_SCALAR

using D32 = hn::ScalableTag<int32_t>;
using V32 = hn::Vec<D32>;
using D64 = hn::ScalableTag<int64_t>;
using DU64 = hn::RebindToUnsigned<D64>;
using D32H = hn::Rebind<int32_t, D64>;  // one int32 per int64 lane
using DU32H = hn::Rebind<uint32_t, D64>;
using V64 = hn::Vec<D64>;

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
SumRange AlignedSumRange32(const int32_t* HWY_RESTRICT a, const int32_t* HWY_RESTRICT b, std::size_t n, int la, int lb,
                           int32_t* HWY_RESTRICT out, bool relu) {
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

#else  // HWY_SCALAR: the references.

uint64_t MaxAbsI64(const int64_t* x, std::size_t n) { return ref::max_abs_i64(x, n); }
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

#endif  // HWY_TARGET != HWY_SCALAR

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

// ------------------------------------------------------------------------------------------------------------
// Target-independent part: dispatch and the references.
#if HWY_ONCE
namespace qtrain::kernels {
HWY_EXPORT(MaxAbsI64);
HWY_EXPORT(AlignedSumRange);
HWY_EXPORT(AlignedSumNarrow);
HWY_EXPORT(AlignedSumColMax);
HWY_EXPORT(AlignedSumNarrowCols);

namespace detail {
void ensure_dispatch_ready();  // dispatch.cc: applies QTRAIN_KERNEL_TARGET once
}  // namespace detail

uint64_t max_abs_i64(const int64_t* x, std::size_t n) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(MaxAbsI64)(x, n);
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

namespace ref {
namespace ed = elt_detail;

uint64_t max_abs_i64(const int64_t* x, std::size_t n) {
  uint64_t m = 0;
  for (std::size_t i = 0; i < n; ++i) m = std::max(m, magnitude(x[i]));
  return m;
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

}  // namespace ref
}  // namespace qtrain::kernels
#endif  // HWY_ONCE
