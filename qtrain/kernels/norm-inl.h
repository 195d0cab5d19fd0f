// The pieces the batch-normalization passes' two sources (norm_forward.cc, norm_backward.cc) share: the scalar
// element functions of the working value d = R(v, k) − center and of the output stage (once), and their per-target
// vector forms (once per Highway target: the Highway -inl.h idiom, re-included by each source's foreach_target
// pass). Internal to kernels/.
//
// Layout: lanes run across columns (channels). Columns are processed in groups of up to kMaxGroup whole vectors;
// for each group the loop walks every row (stride = cols) with the group's accumulators held in registers and its
// per-column constants loaded once. Columns beyond the last whole vector run the scalar reference on that column
// range. All int32 arithmetic stays in range by the bounds stated in norm.h, so every target computes exactly the
// reference's integers.
//
// The working value d = R(v, k) − center needs two per-lane arithmetic shifts (AVX2/AVX-512 vpsravd): one by
// min(k, 31), one by the rounding bit's position min(max(k − 1, 0), 31), masked to 0 when k = 0. When a group has
// k = 0 in every column (the common case: the column's range already fits 15 bits) a specialisation skips them.

// ------------------------------------------------------------------------------------------------------------
// Scalar element functions (the references and the SIMD loops' column tails).
#ifndef QTRAIN_KERNELS_NORM_INL_SCALAR_
#define QTRAIN_KERNELS_NORM_INL_SCALAR_

#include <cstddef>
#include <cstdint>

#include "qtrain/kernels/norm.h"
#include "qtrain/kernels/rounding.h"

namespace qtrain::kernels::norm_detail {

// d = R(v, k) − center (R = shift_round_half_up, qtrain/kernels/rounding.h; k ≥ 0).
inline int32_t working(int32_t v, const NormColumns& col, std::size_t c) {
  return static_cast<int32_t>(shift_round_half_up(v, col.shift[c]) - col.center[c]);
}

// ((u·a + w·b + 2^(t−1)) >> t) + c = R(u·a + w·b, t) + c; the int64 intermediate equals the int32 one under
// norm.h's bounds.
inline int32_t affine(int64_t ua, int64_t wb, const NormAffine& aff, std::size_t c) {
  return static_cast<int32_t>(shift_round_half_up(ua + wb, aff.t[c]) + aff.c[c]);
}

inline int32_t sign(int32_t v) { return (v > 0) - (v < 0); }

}  // namespace qtrain::kernels::norm_detail
#endif  // QTRAIN_KERNELS_NORM_INL_SCALAR_

// ------------------------------------------------------------------------------------------------------------
// Per-target code: included once per target by sources that include hwy/foreach_target.h first.
#if defined(QTRAIN_KERNELS_NORM_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QTRAIN_KERNELS_NORM_INL_H_
#undef QTRAIN_KERNELS_NORM_INL_H_
#else
#define QTRAIN_KERNELS_NORM_INL_H_
#endif

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#if HWY_TARGET != HWY_SCALAR

using D = hn::ScalableTag<int32_t>;
using V = hn::Vec<D>;
using D16 = hn::Rebind<int16_t, D>;  // one int16 per int32 lane: the stored working values
using D64 = hn::Repartition<int64_t, D>;
using V64 = hn::Vec<D64>;

constexpr std::size_t kMaxGroup = 4;  // vectors per row processed together (accumulators stay in registers)

// d = R(v, k) − center for one vector of columns.
struct Working {
  V ks, kr, km, center;
  bool any_shift;
};

HWY_INLINE Working MakeWorking(const NormColumns& col, std::size_t c) {
  const D d;
  const V k = hn::LoadU(d, col.shift + c);
  Working w;
  w.ks = hn::Min(k, hn::Set(d, 31));
  w.kr = hn::Min(hn::Max(hn::Sub(k, hn::Set(d, 1)), hn::Zero(d)), hn::Set(d, 31));
  w.km = hn::IfThenElseZero(hn::Gt(k, hn::Zero(d)), hn::Set(d, 1));
  w.center = hn::LoadU(d, col.center + c);
  w.any_shift = !hn::AllFalse(d, hn::Gt(k, hn::Zero(d)));
  return w;
}

template <bool kShift>
HWY_INLINE V ApplyWorking(const Working& w, V v) {
  if constexpr (kShift) v = hn::Add(v >> w.ks, hn::And(v >> w.kr, w.km));
  return hn::Sub(v, w.center);
}

// The output stage ((p + 2^(t−1)) >> t) + c for one vector of columns.
struct Affine {
  V a, b, nb, t, half, c;
};

HWY_INLINE Affine MakeAffine(const NormAffine& aff, std::size_t c, bool with_b) {
  const D d;
  Affine o;
  o.a = hn::LoadU(d, aff.a + c);
  o.b = with_b ? hn::LoadU(d, aff.b + c) : hn::Zero(d);
  o.nb = hn::Neg(o.b);
  o.t = hn::LoadU(d, aff.t + c);
  o.half = hn::ShiftRight<1>(hn::Set(d, 1) << o.t);
  o.c = hn::LoadU(d, aff.c + c);
  return o;
}

HWY_INLINE V Finish(const Affine& o, V p) { return hn::Add(hn::Add(p, o.half) >> o.t, o.c); }

// Runs Pass<G>::Run(c0, args...) over groups of G ≤ kMaxGroup whole vectors covering the first ⌊cols/L⌋·L
// columns; returns the first column left for the scalar tail.
template <template <std::size_t> class Pass, class... Args>
HWY_INLINE std::size_t ForGroups(std::size_t cols, Args&&... args) {
  const std::size_t lanes = hn::Lanes(D());
  std::size_t c0 = 0;
  for (; c0 + kMaxGroup * lanes <= cols; c0 += kMaxGroup * lanes) Pass<kMaxGroup>::Run(c0, args...);
  switch ((cols - c0) / lanes) {
    case 3:
      Pass<3>::Run(c0, args...);
      return c0 + 3 * lanes;
    case 2:
      Pass<2>::Run(c0, args...);
      return c0 + 2 * lanes;
    case 1:
      Pass<1>::Run(c0, args...);
      return c0 + lanes;
    default:
      return c0;
  }
}

#endif  // HWY_TARGET != HWY_SCALAR

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // QTRAIN_KERNELS_NORM_INL_H_ toggle
