// The max-|x| scans and the ReLU passes of eltwise.h (the ReLU's forward returns its output's maximum, so both are
// reductions to one magnitude), one Highway source compiled for every target. Reductions keep up to four column
// vectors of accumulators in registers and sweep the rows, so every element is read once; column tails that do
// not fill a vector run the scalar loop.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/eltwise_max_relu.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/rounding.h"

// ------------------------------------------------------------------------------------------------------------
// Per-target code.
HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#if HWY_TARGET != HWY_SCALAR

using D32 = hn::ScalableTag<int32_t>;
using DU32 = hn::RebindToUnsigned<D32>;
using V32 = hn::Vec<D32>;
using VU32 = hn::Vec<DU32>;

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

// ---- ReLU ---------------------------------------------------------------------------------------------------

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

#else  // HWY_SCALAR: the references.

uint64_t MaxAbsI32(const int32_t* x, std::size_t n, bool positive_only) {
  return ref::max_abs_i32(x, n, positive_only);
}
void ColMaxAbsI32(const int32_t* x, std::size_t rows, std::size_t cols, bool positive_only, uint64_t* colmax) {
  ref::col_max_abs_i32(x, rows, cols, positive_only, colmax);
}
uint64_t ReluI32(const int32_t* x, std::size_t n, int32_t* y) { return ref::relu_i32(x, n, y); }
void ReluBackwardI32(const int32_t* dy, const int32_t* x, std::size_t n, int32_t* dx, int32_t* dx2) {
  ref::relu_backward_i32(dy, x, n, dx, dx2);
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
HWY_EXPORT(ReluI32);
HWY_EXPORT(ReluBackwardI32);

namespace detail {
void ensure_dispatch_ready();  // dispatch.cc: applies QTRAIN_KERNEL_TARGET once
}  // namespace detail

uint64_t max_abs_i32(const int32_t* x, std::size_t n, bool positive_only) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(MaxAbsI32)(x, n, positive_only);
}

void col_max_abs_i32(const int32_t* x, std::size_t rows, std::size_t cols, bool positive_only, uint64_t* colmax) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(ColMaxAbsI32)(x, rows, cols, positive_only, colmax);
}

uint64_t relu_i32(const int32_t* x, std::size_t n, int32_t* y) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(ReluI32)(x, n, y);
}

void relu_backward_i32(const int32_t* dy, const int32_t* x, std::size_t n, int32_t* dx, int32_t* dx2) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(ReluBackwardI32)(dy, x, n, dx, dx2);
}

namespace ref {

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

}  // namespace ref
}  // namespace qtrain::kernels
#endif  // HWY_ONCE
