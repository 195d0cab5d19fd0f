// The gathers of eltwise.h that the convolutions and poolings run per output pixel — strided adds and gathered sums
// (col2im), max pooling with its argmax and its gradient — one Highway source compiled for every target. SIMD
// lanes run across channels; the channel tail runs the scalar loop.

#include <cstddef>
#include <cstdint>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/eltwise_gather.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/eltwise.h"

// ------------------------------------------------------------------------------------------------------------
// Per-target code.
HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#if HWY_TARGET != HWY_SCALAR

using D32 = hn::ScalableTag<int32_t>;
using V32 = hn::Vec<D32>;

// ---- strided adds (col2im) ---------------------------------------------------------------------------------

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
HWY_EXPORT(AddStridedI32);
HWY_EXPORT(GatherSumI32);
HWY_EXPORT(MaxArgmaxI32);
HWY_EXPORT(UnpoolMaxI32);

namespace detail {
void ensure_dispatch_ready();  // dispatch.cc: applies QTRAIN_KERNEL_TARGET once
}  // namespace detail

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
