// The forward passes of the integer batch normalizations (norm.h: Σx/min/max, Σ|d| or Σd², the output stage
// y = R(d·a, t) + c with the stored int16 d), one Highway source compiled for every target.
// The shared pieces and the layout are in norm-inl.h.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/norm_forward.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/norm-inl.h"
#include "qtrain/kernels/norm.h"

// ------------------------------------------------------------------------------------------------------------
// Scalar element functions and the references over a column range (the tails of the SIMD passes).
#ifndef QTRAIN_KERNELS_NORM_FORWARD_CC_SHARED_
#define QTRAIN_KERNELS_NORM_FORWARD_CC_SHARED_
namespace qtrain::kernels::norm_detail {

void stats_cols(const int32_t* x, std::size_t rows, std::size_t cols, std::size_t c0, std::size_t c1, int64_t* sum,
                int32_t* mn, int32_t* mx) {
  if (c0 >= c1) return;
  for (std::size_t c = c0; c < c1; ++c) {
    sum[c] = 0;
    mn[c] = std::numeric_limits<int32_t>::max();
    mx[c] = std::numeric_limits<int32_t>::min();
  }
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = c0; c < c1; ++c) {
      const int32_t v = x[r * cols + c];
      sum[c] += v;
      mn[c] = std::min(mn[c], v);
      mx[c] = std::max(mx[c], v);
    }
  }
}

void abs_dev_cols(const int32_t* x, std::size_t rows, std::size_t cols, std::size_t c0, std::size_t c1,
                  const NormColumns& col, int64_t* out, int64_t* sum_sign) {
  if (c0 >= c1) return;
  for (std::size_t c = c0; c < c1; ++c) out[c] = sum_sign[c] = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = c0; c < c1; ++c) {
      const int32_t d = working(x[r * cols + c], col, c);
      out[c] += d < 0 ? -d : d;
      sum_sign[c] += sign(d);
    }
  }
}

void sq_dev_cols(const int32_t* x, std::size_t rows, std::size_t cols, std::size_t c0, std::size_t c1,
                 const NormColumns& col, int64_t* out) {
  if (c0 >= c1) return;
  for (std::size_t c = c0; c < c1; ++c) out[c] = 0;
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = c0; c < c1; ++c) {
      const int64_t d = working(x[r * cols + c], col, c);
      out[c] += d * d;
    }
  }
}

// With relu, y = max(y, 0) and *ymax = max(*ymax, max y).
void apply_cols(const int32_t* x, std::size_t rows, std::size_t cols, std::size_t c0, std::size_t c1,
                const NormColumns& col, const NormAffine& aff, int32_t* y, int16_t* d_out, bool relu, uint64_t* ymax) {
  if (c0 >= c1) return;
  for (std::size_t r = 0; r < rows; ++r) {
    for (std::size_t c = c0; c < c1; ++c) {
      const std::size_t i = r * cols + c;
      const int32_t d = working(x[i], col, c);
      y[i] = affine(int64_t{d} * aff.a[c], 0, aff, c);
      if (relu) {
        y[i] = std::max(y[i], 0);
        *ymax = std::max(*ymax, static_cast<uint64_t>(y[i]));
      }
      if (d_out != nullptr) d_out[i] = static_cast<int16_t>(d);
    }
  }
}

}  // namespace qtrain::kernels::norm_detail
#endif  // QTRAIN_KERNELS_NORM_FORWARD_CC_SHARED_

// ------------------------------------------------------------------------------------------------------------
// Per-target code.
HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace nd = qtrain::kernels::norm_detail;

#if HWY_TARGET != HWY_SCALAR

// ---- Pass 1: Σx, min, max ------------------------------------------------------------------------------------
template <std::size_t G>
struct StatsPass {
  static void Run(std::size_t c0, const int32_t* HWY_RESTRICT x, std::size_t rows, std::size_t cols,
                  int64_t* HWY_RESTRICT sum, int32_t* HWY_RESTRICT mn, int32_t* HWY_RESTRICT mx) {
    const D d;
    const std::size_t lanes = hn::Lanes(d);
    const V m16 = hn::Set(d, 0xFFFF);
    V vmin[G], vmax[G];
    for (std::size_t g = 0; g < G; ++g) {
      vmin[g] = hn::Set(d, std::numeric_limits<int32_t>::max());
      vmax[g] = hn::Set(d, std::numeric_limits<int32_t>::min());
    }
    for (std::size_t j = 0; j < G * lanes; ++j) sum[c0 + j] = 0;
    HWY_ALIGN int32_t bh[kMaxGroup * hn::MaxLanes(d)];
    HWY_ALIGN int32_t bl[kMaxGroup * hn::MaxLanes(d)];
    for (std::size_t r0 = 0; r0 < rows; r0 += kNormBlockRows) {
      const std::size_t r1 = std::min(rows, r0 + kNormBlockRows);
      V hi[G], lo[G];
      for (std::size_t g = 0; g < G; ++g) hi[g] = lo[g] = hn::Zero(d);
      const int32_t* p = x + r0 * cols + c0;
      for (std::size_t r = r0; r < r1; ++r, p += cols) {
        for (std::size_t g = 0; g < G; ++g) {
          const V v = hn::LoadU(d, p + g * lanes);
          lo[g] = hn::Add(lo[g], hn::And(v, m16));
          hi[g] = hn::Add(hi[g], hn::ShiftRight<16>(v));
          vmin[g] = hn::Min(vmin[g], v);
          vmax[g] = hn::Max(vmax[g], v);
        }
      }
      for (std::size_t g = 0; g < G; ++g) {
        hn::Store(hi[g], d, bh + g * lanes);
        hn::Store(lo[g], d, bl + g * lanes);
      }
      for (std::size_t j = 0; j < G * lanes; ++j) sum[c0 + j] += int64_t{bh[j]} * 65536 + bl[j];
    }
    for (std::size_t g = 0; g < G; ++g) {
      hn::StoreU(vmin[g], d, mn + c0 + g * lanes);
      hn::StoreU(vmax[g], d, mx + c0 + g * lanes);
    }
  }
};

void Stats(const int32_t* x, std::size_t rows, std::size_t cols, int64_t* sum, int32_t* mn, int32_t* mx) {
  const std::size_t tail = ForGroups<StatsPass>(cols, x, rows, cols, sum, mn, mx);
  nd::stats_cols(x, rows, cols, tail, cols, sum, mn, mx);
}

// ---- Pass 2: Σ|d| (L1) and Σd² (L2) ----------------------------------------------------------------------------
// Both walk rows in pairs; L1 adds |d₁| + |d₂| to one int32 accumulator, L2 adds d₁² + d₂² (< 2^31) split at bit 15
// into two.
template <bool kShift, std::size_t G>
void AbsDevLoop(std::size_t c0, const int32_t* HWY_RESTRICT x, std::size_t rows, std::size_t cols, const Working* w,
                int64_t* HWY_RESTRICT out, int64_t* HWY_RESTRICT sum_sign) {
  const D d;
  const std::size_t lanes = hn::Lanes(d);
  const V one = hn::Set(d, 1), minus_one = hn::Set(d, -1);
  HWY_ALIGN int32_t buf[kMaxGroup * hn::MaxLanes(d)];
  HWY_ALIGN int32_t bsg[kMaxGroup * hn::MaxLanes(d)];
  for (std::size_t r0 = 0; r0 < rows; r0 += kNormBlockRows) {
    const std::size_t r1 = std::min(rows, r0 + kNormBlockRows);
    V acc[G], sg[G];
    for (std::size_t g = 0; g < G; ++g) acc[g] = sg[g] = hn::Zero(d);
    const int32_t* p = x + r0 * cols + c0;
    std::size_t r = r0;
    for (; r + 2 <= r1; r += 2, p += 2 * cols) {
      for (std::size_t g = 0; g < G; ++g) {
        const V d0 = ApplyWorking<kShift>(w[g], hn::LoadU(d, p + g * lanes));
        const V d1 = ApplyWorking<kShift>(w[g], hn::LoadU(d, p + cols + g * lanes));
        acc[g] = hn::Add(acc[g], hn::Add(hn::Abs(d0), hn::Abs(d1)));
        // sign(d) = clamp(d, −1, 1) for integers.
        sg[g] = hn::Add(sg[g], hn::Add(hn::Min(hn::Max(d0, minus_one), one), hn::Min(hn::Max(d1, minus_one), one)));
      }
    }
    if (r < r1) {
      for (std::size_t g = 0; g < G; ++g) {
        const V d0 = ApplyWorking<kShift>(w[g], hn::LoadU(d, p + g * lanes));
        acc[g] = hn::Add(acc[g], hn::Abs(d0));
        sg[g] = hn::Add(sg[g], hn::Min(hn::Max(d0, minus_one), one));
      }
    }
    for (std::size_t g = 0; g < G; ++g) {
      hn::Store(acc[g], d, buf + g * lanes);
      hn::Store(sg[g], d, bsg + g * lanes);
    }
    for (std::size_t j = 0; j < G * lanes; ++j) {
      out[c0 + j] += buf[j];
      sum_sign[c0 + j] += bsg[j];
    }
  }
}

template <bool kShift, std::size_t G>
void SqDevLoop(std::size_t c0, const int32_t* HWY_RESTRICT x, std::size_t rows, std::size_t cols, const Working* w,
               int64_t* HWY_RESTRICT out) {
  const D d;
  const std::size_t lanes = hn::Lanes(d);
  const hn::Repartition<int16_t, D> d16x2;
  using V16 = hn::Vec<decltype(d16x2)>;
  const V m15 = hn::Set(d, 0x7FFF), m16 = hn::Set(d, 0xFFFF);
  HWY_ALIGN int32_t bh[kMaxGroup * hn::MaxLanes(d)];
  HWY_ALIGN int32_t bl[kMaxGroup * hn::MaxLanes(d)];
  for (std::size_t r0 = 0; r0 < rows; r0 += kNormBlockRows) {
    const std::size_t r1 = std::min(rows, r0 + kNormBlockRows);
    V hi[G], lo[G];
    for (std::size_t g = 0; g < G; ++g) hi[g] = lo[g] = hn::Zero(d);
    const int32_t* p = x + r0 * cols + c0;
    std::size_t r = r0;
    for (; r + 2 <= r1; r += 2, p += 2 * cols) {
      for (std::size_t g = 0; g < G; ++g) {
        const V d0 = ApplyWorking<kShift>(w[g], hn::LoadU(d, p + g * lanes));
        const V d1 = ApplyWorking<kShift>(w[g], hn::LoadU(d, p + cols + g * lanes));
        // Both rows' 16-bit values in one int32 lane, then one pairwise multiply-add (vpmaddwd): d₀² + d₁².
        const V16 packed = hn::BitCast(d16x2, hn::Or(hn::And(d0, m16), hn::ShiftLeft<16>(d1)));
        V odd = hn::Zero(d);
        const V s = hn::RearrangeToOddPlusEven(hn::ReorderWidenMulAccumulate(d, packed, packed, hn::Zero(d), odd), odd);
        hi[g] = hn::Add(hi[g], hn::ShiftRight<15>(s));
        lo[g] = hn::Add(lo[g], hn::And(s, m15));
      }
    }
    if (r < r1) {
      for (std::size_t g = 0; g < G; ++g) {
        const V d0 = ApplyWorking<kShift>(w[g], hn::LoadU(d, p + g * lanes));
        const V s = hn::Mul(d0, d0);
        hi[g] = hn::Add(hi[g], hn::ShiftRight<15>(s));
        lo[g] = hn::Add(lo[g], hn::And(s, m15));
      }
    }
    for (std::size_t g = 0; g < G; ++g) {
      hn::Store(hi[g], d, bh + g * lanes);
      hn::Store(lo[g], d, bl + g * lanes);
    }
    for (std::size_t j = 0; j < G * lanes; ++j) out[c0 + j] += int64_t{bh[j]} * 32768 + bl[j];
  }
}

template <std::size_t G>
struct AbsDevPass {
  static void Run(std::size_t c0, const int32_t* x, std::size_t rows, std::size_t cols, const NormColumns& col,
                  int64_t* out, int64_t* sum_sign) {
    Working w[G];
    bool shift = false;
    for (std::size_t g = 0; g < G; ++g) {
      w[g] = MakeWorking(col, c0 + g * hn::Lanes(D()));
      shift = shift || w[g].any_shift;
    }
    for (std::size_t j = 0; j < G * hn::Lanes(D()); ++j) out[c0 + j] = sum_sign[c0 + j] = 0;
    if (shift) {
      AbsDevLoop<true, G>(c0, x, rows, cols, w, out, sum_sign);
    } else {
      AbsDevLoop<false, G>(c0, x, rows, cols, w, out, sum_sign);
    }
  }
};

template <std::size_t G>
struct SqDevPass {
  static void Run(std::size_t c0, const int32_t* x, std::size_t rows, std::size_t cols, const NormColumns& col,
                  int64_t* out) {
    Working w[G];
    bool shift = false;
    for (std::size_t g = 0; g < G; ++g) {
      w[g] = MakeWorking(col, c0 + g * hn::Lanes(D()));
      shift = shift || w[g].any_shift;
    }
    for (std::size_t j = 0; j < G * hn::Lanes(D()); ++j) out[c0 + j] = 0;
    if (shift) {
      SqDevLoop<true, G>(c0, x, rows, cols, w, out);
    } else {
      SqDevLoop<false, G>(c0, x, rows, cols, w, out);
    }
  }
};

void AbsDev(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, int64_t* out, int64_t* sum_sign) {
  const std::size_t tail = ForGroups<AbsDevPass>(cols, x, rows, cols, col, out, sum_sign);
  nd::abs_dev_cols(x, rows, cols, tail, cols, col, out, sum_sign);
}

void SqDev(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, int64_t* out) {
  const std::size_t tail = ForGroups<SqDevPass>(cols, x, rows, cols, col, out);
  nd::sq_dev_cols(x, rows, cols, tail, cols, col, out);
}

// ---- Pass 3: y = ((d·a + 2^(t−1)) >> t) + c, and the stored int16 d ----------------------------------------------
// kRelu: y = max(y, 0), its maximum kept in *vmax.
template <bool kShift, bool kStore, bool kRelu, std::size_t G>
void ApplyLoop(std::size_t c0, const int32_t* HWY_RESTRICT x, std::size_t rows, std::size_t cols, const Working* w,
               const Affine* o, int32_t* HWY_RESTRICT y, int16_t* HWY_RESTRICT d_out, V* vmax) {
  const D d;
  const D16 d16;
  const std::size_t lanes = hn::Lanes(d);
  const V zero = hn::Zero(d);
  V m = *vmax;
  for (std::size_t r = 0; r < rows; ++r) {
    const std::size_t i0 = r * cols + c0;
    for (std::size_t g = 0; g < G; ++g) {
      const std::size_t i = i0 + g * lanes;
      const V dv = ApplyWorking<kShift>(w[g], hn::LoadU(d, x + i));
      V yv = Finish(o[g], hn::Mul(dv, o[g].a));
      if constexpr (kRelu) {
        yv = hn::Max(yv, zero);
        m = hn::Max(m, yv);
      }
      hn::StoreU(yv, d, y + i);
      if constexpr (kStore) hn::StoreU(hn::DemoteTo(d16, dv), d16, d_out + i);
    }
  }
  *vmax = m;
}

template <bool kShift, bool kStore, std::size_t G>
HWY_INLINE void ApplyLoopRelu(bool relu, std::size_t c0, const int32_t* x, std::size_t rows, std::size_t cols,
                              const Working* w, const Affine* o, int32_t* y, int16_t* d_out, V* vmax) {
  if (relu) {
    ApplyLoop<kShift, kStore, true, G>(c0, x, rows, cols, w, o, y, d_out, vmax);
  } else {
    ApplyLoop<kShift, kStore, false, G>(c0, x, rows, cols, w, o, y, d_out, vmax);
  }
}

template <std::size_t G>
struct ApplyPass {
  static void Run(std::size_t c0, const int32_t* x, std::size_t rows, std::size_t cols, const NormColumns& col,
                  const NormAffine& aff, int32_t* y, int16_t* d_out, bool relu, V* vmax) {
    Working w[G];
    Affine o[G];
    bool shift = false;
    for (std::size_t g = 0; g < G; ++g) {
      w[g] = MakeWorking(col, c0 + g * hn::Lanes(D()));
      o[g] = MakeAffine(aff, c0 + g * hn::Lanes(D()), false);
      shift = shift || w[g].any_shift;
    }
    if (d_out != nullptr) {
      if (shift) {
        ApplyLoopRelu<true, true, G>(relu, c0, x, rows, cols, w, o, y, d_out, vmax);
      } else {
        ApplyLoopRelu<false, true, G>(relu, c0, x, rows, cols, w, o, y, d_out, vmax);
      }
    } else if (shift) {
      ApplyLoopRelu<true, false, G>(relu, c0, x, rows, cols, w, o, y, nullptr, vmax);
    } else {
      ApplyLoopRelu<false, false, G>(relu, c0, x, rows, cols, w, o, y, nullptr, vmax);
    }
  }
};

uint64_t Apply(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, NormAffine aff, int32_t* y,
               int16_t* d_out, bool relu) {
  const D d;
  V vmax = hn::Zero(d);
  const std::size_t tail = ForGroups<ApplyPass>(cols, x, rows, cols, col, aff, y, d_out, relu, &vmax);
  uint64_t ymax = static_cast<uint32_t>(hn::GetLane(hn::MaxOfLanes(d, vmax)));  // ≥ 0: the lanes start at 0
  nd::apply_cols(x, rows, cols, tail, cols, col, aff, y, d_out, relu, &ymax);
  return ymax;
}

#else  // HWY_SCALAR: the reference.

void Stats(const int32_t* x, std::size_t rows, std::size_t cols, int64_t* sum, int32_t* mn, int32_t* mx) {
  nd::stats_cols(x, rows, cols, 0, cols, sum, mn, mx);
}
void AbsDev(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, int64_t* out, int64_t* sum_sign) {
  nd::abs_dev_cols(x, rows, cols, 0, cols, col, out, sum_sign);
}
void SqDev(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, int64_t* out) {
  nd::sq_dev_cols(x, rows, cols, 0, cols, col, out);
}
uint64_t Apply(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, NormAffine aff, int32_t* y,
               int16_t* d_out, bool relu) {
  uint64_t ymax = 0;
  nd::apply_cols(x, rows, cols, 0, cols, col, aff, y, d_out, relu, &ymax);
  return ymax;
}

#endif  // HWY_TARGET != HWY_SCALAR

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

// ------------------------------------------------------------------------------------------------------------
// Target-independent part: dispatch and the references.
#if HWY_ONCE
namespace qtrain::kernels {
HWY_EXPORT(Stats);
HWY_EXPORT(AbsDev);
HWY_EXPORT(SqDev);
HWY_EXPORT(Apply);

namespace detail {
void ensure_dispatch_ready();  // dispatch.cc: applies QTRAIN_KERNEL_TARGET once
}  // namespace detail

void norm_stats(const int32_t* x, std::size_t rows, std::size_t cols, int64_t* sum, int32_t* min, int32_t* max) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(Stats)(x, rows, cols, sum, min, max);
}
void norm_abs_dev(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, int64_t* sum_abs,
                  int64_t* sum_sign) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(AbsDev)(x, rows, cols, col, sum_abs, sum_sign);
}
void norm_sq_dev(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, int64_t* sum_sq) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(SqDev)(x, rows, cols, col, sum_sq);
}
uint64_t norm_apply(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, NormAffine aff, int32_t* y,
                    int16_t* d_out, bool relu) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(Apply)(x, rows, cols, col, aff, y, d_out, relu);
}

namespace ref {
void norm_stats(const int32_t* x, std::size_t rows, std::size_t cols, int64_t* sum, int32_t* min, int32_t* max) {
  norm_detail::stats_cols(x, rows, cols, 0, cols, sum, min, max);
}
void norm_abs_dev(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, int64_t* sum_abs,
                  int64_t* sum_sign) {
  norm_detail::abs_dev_cols(x, rows, cols, 0, cols, col, sum_abs, sum_sign);
}
void norm_sq_dev(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, int64_t* sum_sq) {
  norm_detail::sq_dev_cols(x, rows, cols, 0, cols, col, sum_sq);
}
uint64_t norm_apply(const int32_t* x, std::size_t rows, std::size_t cols, NormColumns col, NormAffine aff, int32_t* y,
                    int16_t* d_out, bool relu) {
  uint64_t ymax = 0;
  norm_detail::apply_cols(x, rows, cols, 0, cols, col, aff, y, d_out, relu, &ymax);
  return ymax;
}
}  // namespace ref

}  // namespace qtrain::kernels
#endif  // HWY_ONCE
