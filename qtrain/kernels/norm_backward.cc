// The backward passes of the integer batch normalizations (norm.h: Σdy/min/max/Σdy·d, then
// dx = R(u·a + w·b, t) + c, both through a fused ReLU's mask when there is one), one Highway source compiled for
// every target.
// The shared pieces and the layout are in norm-inl.h.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/norm_backward.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/norm-inl.h"
#include "qtrain/kernels/norm.h"

// ------------------------------------------------------------------------------------------------------------
// Scalar element functions and the references over a column range (the tails of the SIMD passes).
#ifndef QTRAIN_KERNELS_NORM_BACKWARD_CC_SHARED_
#define QTRAIN_KERNELS_NORM_BACKWARD_CC_SHARED_
namespace qtrain::kernels::norm_detail {

// The gradient a fused ReLU lets through: dy where the forward output ((d·a + 2^(t−1)) >> t) + c (recomputed from
// the stored d) is positive, else 0; dy itself without a ReLU (fwd null).
inline int32_t masked(int32_t dy, int16_t d, const NormAffine* fwd, std::size_t c) {
  return fwd == nullptr || affine(int64_t{d} * fwd->a[c], 0, *fwd, c) > 0 ? dy : 0;
}

inline void wide_add(WideSum& w, int64_t v) {
  w.lo += v & 0xFFFFFFFF;
  w.hi += v >> 32;
}
inline void wide_canonical(WideSum& w) {
  w.hi += w.lo >> 32;
  w.lo &= 0xFFFFFFFF;
}

void grad_stats_cols(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, std::size_t c0,
                     std::size_t c1, int64_t* sum_dy, int32_t* mn, int32_t* mx, WideSum* sum_dy_d,
                     const NormAffine* relu) {
  if (c0 >= c1) return;
  for (std::size_t c = c0; c < c1; ++c) {
    sum_dy[c] = 0;
    mn[c] = std::numeric_limits<int32_t>::max();
    mx[c] = std::numeric_limits<int32_t>::min();
    sum_dy_d[c] = WideSum{};
  }
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = c0; c < c1; ++c) {
      const std::size_t i = r * cols + c;
      const int32_t g = masked(dy[i], d[i], relu, c);
      sum_dy[c] += g;
      mn[c] = std::min(mn[c], g);
      mx[c] = std::max(mx[c], g);
      wide_add(sum_dy_d[c], int64_t{g} * d[i]);
    }
  }
  for (std::size_t c = c0; c < c1; ++c) wide_canonical(sum_dy_d[c]);
}

template <bool kL1>
void grad_apply_cols(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, std::size_t c0,
                     std::size_t c1, const NormColumns& col, const NormAffine& aff, int32_t* dx,
                     const NormAffine* relu) {
  if (c0 >= c1) return;
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = c0; c < c1; ++c) {
      const std::size_t i = r * cols + c;
      const int64_t u = working(masked(dy[i], d[i], relu, c), col, c);
      const int64_t w = kL1 ? sign(d[i]) : d[i];
      dx[i] = affine(u * aff.a[c], w * aff.b[c], aff, c);
    }
  }
}

}  // namespace qtrain::kernels::norm_detail
#endif  // QTRAIN_KERNELS_NORM_BACKWARD_CC_SHARED_

// ------------------------------------------------------------------------------------------------------------
// Per-target code.
HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace nd = qtrain::kernels::norm_detail;

#if HWY_TARGET != HWY_SCALAR

// ---- Backward pass 1: Σdy, min/max dy, Σ dy·d (int64 lanes: MulEven on even and on swapped odd lanes)
// The gradient a fused ReLU lets through (nd::masked): dy where the forward output recomputed from d is positive.
HWY_INLINE V Masked(V dy, V dv, const Affine& fwd) {
  return hn::IfThenElseZero(hn::Gt(Finish(fwd, hn::Mul(dv, fwd.a)), hn::Zero(D())), dy);
}

template <bool kMask, std::size_t G>
void GradStatsLoop(std::size_t c0, const int32_t* HWY_RESTRICT dy, const int16_t* HWY_RESTRICT dw, std::size_t rows,
                   std::size_t cols, int64_t* HWY_RESTRICT sum_dy, int32_t* HWY_RESTRICT mn, int32_t* HWY_RESTRICT mx,
                   WideSum* HWY_RESTRICT sum_dy_d, const Affine* fm) {
  const D d;
  const D16 d16;
  const D64 d64;
  const std::size_t lanes = hn::Lanes(d), lanes64 = hn::Lanes(d64);
  const V m16 = hn::Set(d, 0xFFFF);
  V vmin[G], vmax[G];
  for (std::size_t g = 0; g < G; ++g) {
    vmin[g] = hn::Set(d, std::numeric_limits<int32_t>::max());
    vmax[g] = hn::Set(d, std::numeric_limits<int32_t>::min());
  }
  HWY_ALIGN int32_t bh[kMaxGroup * hn::MaxLanes(d)];
  HWY_ALIGN int32_t bl[kMaxGroup * hn::MaxLanes(d)];
  HWY_ALIGN int64_t be[kMaxGroup * hn::MaxLanes(d64)];
  HWY_ALIGN int64_t bo[kMaxGroup * hn::MaxLanes(d64)];
  for (std::size_t r0 = 0; r0 < rows; r0 += kNormBlockRows) {
    const std::size_t r1 = std::min(rows, r0 + kNormBlockRows);
    V hi[G], lo[G];
    V64 pe[G], po[G];
    for (std::size_t g = 0; g < G; ++g) {
      hi[g] = lo[g] = hn::Zero(d);
      pe[g] = po[g] = hn::Zero(d64);
    }
    for (std::size_t r = r0; r < r1; ++r) {
      const std::size_t i0 = r * cols + c0;
      for (std::size_t g = 0; g < G; ++g) {
        const std::size_t i = i0 + g * lanes;
        const V dv = hn::PromoteTo(d, hn::LoadU(d16, dw + i));
        V v = hn::LoadU(d, dy + i);
        if constexpr (kMask) v = Masked(v, dv, fm[g]);
        lo[g] = hn::Add(lo[g], hn::And(v, m16));
        hi[g] = hn::Add(hi[g], hn::ShiftRight<16>(v));
        vmin[g] = hn::Min(vmin[g], v);
        vmax[g] = hn::Max(vmax[g], v);
        pe[g] = hn::Add(pe[g], hn::MulEven(v, dv));
        po[g] = hn::Add(po[g], hn::MulEven(hn::Shuffle2301(v), hn::Shuffle2301(dv)));
      }
    }
    for (std::size_t g = 0; g < G; ++g) {
      hn::Store(hi[g], d, bh + g * lanes);
      hn::Store(lo[g], d, bl + g * lanes);
      hn::Store(pe[g], d64, be + g * lanes64);
      hn::Store(po[g], d64, bo + g * lanes64);
    }
    for (std::size_t j = 0; j < G * lanes; ++j) {
      sum_dy[c0 + j] += int64_t{bh[j]} * 65536 + bl[j];
      // int32 lane j of vector g is int64 lane (j mod L)/2 of that vector's even (j even) or odd product sums.
      const std::size_t g = j / lanes, l = j % lanes;
      nd::wide_add(sum_dy_d[c0 + j], (l % 2 == 0 ? be : bo)[g * lanes64 + l / 2]);
    }
  }
  for (std::size_t g = 0; g < G; ++g) {
    hn::StoreU(vmin[g], d, mn + c0 + g * lanes);
    hn::StoreU(vmax[g], d, mx + c0 + g * lanes);
  }
}

template <std::size_t G>
struct GradStatsPass {
  static void Run(std::size_t c0, const int32_t* dy, const int16_t* dw, std::size_t rows, std::size_t cols,
                  int64_t* sum_dy, int32_t* mn, int32_t* mx, WideSum* sum_dy_d, const NormAffine* relu) {
    for (std::size_t j = 0; j < G * hn::Lanes(D()); ++j) {
      sum_dy[c0 + j] = 0;
      sum_dy_d[c0 + j] = WideSum{};
    }
    Affine fm[G];
    if (relu != nullptr) {
      for (std::size_t g = 0; g < G; ++g) fm[g] = MakeAffine(*relu, c0 + g * hn::Lanes(D()), false);
      GradStatsLoop<true, G>(c0, dy, dw, rows, cols, sum_dy, mn, mx, sum_dy_d, fm);
    } else {
      GradStatsLoop<false, G>(c0, dy, dw, rows, cols, sum_dy, mn, mx, sum_dy_d, fm);
    }
    for (std::size_t j = 0; j < G * hn::Lanes(D()); ++j) nd::wide_canonical(sum_dy_d[c0 + j]);
  }
};

void GradStats(const int32_t* dy, const int16_t* dw, std::size_t rows, std::size_t cols, int64_t* sum_dy, int32_t* mn,
               int32_t* mx, WideSum* sum_dy_d, const NormAffine* relu) {
  const std::size_t tail = ForGroups<GradStatsPass>(cols, dy, dw, rows, cols, sum_dy, mn, mx, sum_dy_d, relu);
  nd::grad_stats_cols(dy, dw, rows, cols, tail, cols, sum_dy, mn, mx, sum_dy_d, relu);
}

// ---- Backward pass 2: dx = ((u·a + w·b + 2^(t−1)) >> t) + c; L1 w·b = sign(d)·b by selects, L2 a multiply ------
template <bool kL1, bool kShift, bool kMask, std::size_t G>
void GradApplyLoop(std::size_t c0, const int32_t* HWY_RESTRICT dy, const int16_t* HWY_RESTRICT dw, std::size_t rows,
                   std::size_t cols, const Working* w, const Affine* o, int32_t* HWY_RESTRICT dx, const Affine* fm) {
  const D d;
  const D16 d16;
  const std::size_t lanes = hn::Lanes(d);
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t i0 = r * cols + c0;
    for (std::size_t g = 0; g < G; ++g) {
      const std::size_t i = i0 + g * lanes;
      const V dv = hn::PromoteTo(d, hn::LoadU(d16, dw + i));
      V v = hn::LoadU(d, dy + i);
      if constexpr (kMask) v = Masked(v, dv, fm[g]);
      const V u = ApplyWorking<kShift>(w[g], v);
      V wb;
      if constexpr (kL1) {
        // Compare masks, not IfNegativeThenElse: Highway 1.0.3's 32-bit IfNegativeThenElse is wrong on SSSE3
        // (no blendv there, and the sign bit alone is not a mask for its and/andnot blend).
        const V zero = hn::Zero(d);
        wb = hn::IfThenElse(hn::Lt(dv, zero), o[g].nb, hn::IfThenElseZero(hn::Gt(dv, zero), o[g].b));
      } else {
        wb = hn::Mul(dv, o[g].b);
      }
      hn::StoreU(Finish(o[g], hn::Add(hn::Mul(u, o[g].a), wb)), d, dx + i);
    }
  }
}

template <bool kL1>
struct GradApplyPassT {
  template <std::size_t G>
  struct Pass {
    static void Run(std::size_t c0, const int32_t* dy, const int16_t* dw, std::size_t rows, std::size_t cols,
                    const NormColumns& col, const NormAffine& aff, int32_t* dx, const NormAffine* relu) {
      Working w[G];
      Affine o[G], fm[G];
      bool shift = false;
      for (std::size_t g = 0; g < G; ++g) {
        w[g] = MakeWorking(col, c0 + g * hn::Lanes(D()));
        o[g] = MakeAffine(aff, c0 + g * hn::Lanes(D()), true);
        if (relu != nullptr) fm[g] = MakeAffine(*relu, c0 + g * hn::Lanes(D()), false);
        shift = shift || w[g].any_shift;
      }
      if (relu != nullptr) {
        if (shift) {
          GradApplyLoop<kL1, true, true, G>(c0, dy, dw, rows, cols, w, o, dx, fm);
        } else {
          GradApplyLoop<kL1, false, true, G>(c0, dy, dw, rows, cols, w, o, dx, fm);
        }
      } else if (shift) {
        GradApplyLoop<kL1, true, false, G>(c0, dy, dw, rows, cols, w, o, dx, fm);
      } else {
        GradApplyLoop<kL1, false, false, G>(c0, dy, dw, rows, cols, w, o, dx, fm);
      }
    }
  };
};

void GradApplyL1(const int32_t* dy, const int16_t* dw, std::size_t rows, std::size_t cols, NormColumns col,
                 NormAffine aff, int32_t* dx, const NormAffine* relu) {
  const std::size_t tail = ForGroups<GradApplyPassT<true>::Pass>(cols, dy, dw, rows, cols, col, aff, dx, relu);
  nd::grad_apply_cols<true>(dy, dw, rows, cols, tail, cols, col, aff, dx, relu);
}

void GradApplyL2(const int32_t* dy, const int16_t* dw, std::size_t rows, std::size_t cols, NormColumns col,
                 NormAffine aff, int32_t* dx, const NormAffine* relu) {
  const std::size_t tail = ForGroups<GradApplyPassT<false>::Pass>(cols, dy, dw, rows, cols, col, aff, dx, relu);
  nd::grad_apply_cols<false>(dy, dw, rows, cols, tail, cols, col, aff, dx, relu);
}

#else  // HWY_SCALAR: the reference.

void GradStats(const int32_t* dy, const int16_t* dw, std::size_t rows, std::size_t cols, int64_t* sum_dy, int32_t* mn,
               int32_t* mx, WideSum* sum_dy_d, const NormAffine* relu) {
  nd::grad_stats_cols(dy, dw, rows, cols, 0, cols, sum_dy, mn, mx, sum_dy_d, relu);
}
void GradApplyL1(const int32_t* dy, const int16_t* dw, std::size_t rows, std::size_t cols, NormColumns col,
                 NormAffine aff, int32_t* dx, const NormAffine* relu) {
  nd::grad_apply_cols<true>(dy, dw, rows, cols, 0, cols, col, aff, dx, relu);
}
void GradApplyL2(const int32_t* dy, const int16_t* dw, std::size_t rows, std::size_t cols, NormColumns col,
                 NormAffine aff, int32_t* dx, const NormAffine* relu) {
  nd::grad_apply_cols<false>(dy, dw, rows, cols, 0, cols, col, aff, dx, relu);
}

#endif  // HWY_TARGET != HWY_SCALAR

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

// ------------------------------------------------------------------------------------------------------------
// Target-independent part: dispatch and the references.
#if HWY_ONCE
namespace qtrain::kernels {
HWY_EXPORT(GradStats);
HWY_EXPORT(GradApplyL1);
HWY_EXPORT(GradApplyL2);

namespace detail {
void ensure_dispatch_ready();  // dispatch.cc: applies QTRAIN_KERNEL_TARGET once
}  // namespace detail

void norm_grad_stats(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, int64_t* sum_dy,
                     int32_t* min_dy, int32_t* max_dy, WideSum* sum_dy_d, const NormAffine* relu) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(GradStats)(dy, d, rows, cols, sum_dy, min_dy, max_dy, sum_dy_d, relu);
}
void norm_grad_apply_l1(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, NormColumns col,
                        NormAffine aff, int32_t* dx, const NormAffine* relu) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(GradApplyL1)(dy, d, rows, cols, col, aff, dx, relu);
}
void norm_grad_apply_l2(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, NormColumns col,
                        NormAffine aff, int32_t* dx, const NormAffine* relu) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(GradApplyL2)(dy, d, rows, cols, col, aff, dx, relu);
}

namespace ref {
void norm_grad_stats(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, int64_t* sum_dy,
                     int32_t* min_dy, int32_t* max_dy, WideSum* sum_dy_d, const NormAffine* relu) {
  norm_detail::grad_stats_cols(dy, d, rows, cols, 0, cols, sum_dy, min_dy, max_dy, sum_dy_d, relu);
}
void norm_grad_apply_l1(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, NormColumns col,
                        NormAffine aff, int32_t* dx, const NormAffine* relu) {
  norm_detail::grad_apply_cols<true>(dy, d, rows, cols, 0, cols, col, aff, dx, relu);
}
void norm_grad_apply_l2(const int32_t* dy, const int16_t* d, std::size_t rows, std::size_t cols, NormColumns col,
                        NormAffine aff, int32_t* dx, const NormAffine* relu) {
  norm_detail::grad_apply_cols<false>(dy, d, rows, cols, 0, cols, col, aff, dx, relu);
}
}  // namespace ref

}  // namespace qtrain::kernels
#endif  // HWY_ONCE
