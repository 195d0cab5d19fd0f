// The integer batch-normalization passes (see norm.h), one Highway source compiled for every target.
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

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/norm.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/norm.h"
#include "qtrain/kernels/rounding.h"

// ------------------------------------------------------------------------------------------------------------
// Scalar element functions and the references over a column range (the tails of the SIMD passes).
#ifndef QTRAIN_KERNELS_NORM_SHARED_
#define QTRAIN_KERNELS_NORM_SHARED_
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
                const NormColumns& col, const NormAffine& aff, int32_t* y, int16_t* d_out, bool relu,
                uint64_t* ymax) {
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
#endif  // QTRAIN_KERNELS_NORM_SHARED_

// ------------------------------------------------------------------------------------------------------------
// Per-target code.
HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace nd = qtrain::kernels::norm_detail;

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
HWY_EXPORT(Stats);
HWY_EXPORT(AbsDev);
HWY_EXPORT(SqDev);
HWY_EXPORT(Apply);
HWY_EXPORT(GradStats);
HWY_EXPORT(GradApplyL1);
HWY_EXPORT(GradApplyL2);

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
