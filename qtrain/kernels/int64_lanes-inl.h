// int64-lane pieces the SIMD kernels share (sgd_update.cc, layer_norm_rows.cc): exact floor shifts and
// nearest-even rounding of int64 lanes on every target (below AVX3 there is no 64-bit arithmetic right shift), and
// int32 ↔ int64 loads, stores and products. The Highway -inl.h idiom: re-included by each source's foreach_target
// pass, once per target. Internal to kernels/.
#if defined(QTRAIN_KERNELS_INT64_LANES_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QTRAIN_KERNELS_INT64_LANES_INL_H_
#undef QTRAIN_KERNELS_INT64_LANES_INL_H_
#else
#define QTRAIN_KERNELS_INT64_LANES_INL_H_
#endif

#include <cstdint>

#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#if HWY_TARGET != HWY_SCALAR

using D64 = hn::ScalableTag<int64_t>;
using DU64 = hn::RebindToUnsigned<D64>;
using D32F = hn::Repartition<int32_t, D64>;  // full vector of int32: MulEven's operands
using D32H = hn::Rebind<int32_t, D64>;       // one int32 per int64 lane: loads and stores
using DU32H = hn::Rebind<uint32_t, D64>;
using V64 = hn::Vec<D64>;
using VU64 = hn::Vec<DU64>;

#if HWY_TARGET <= HWY_AVX3
constexpr bool kNativeSra = true;  // vpsraq
#else
constexpr bool kNativeSra = false;
#endif

// floor((x + c) / 2^s) for 0 ≤ s ≤ 63, the addition modulo 2^64. Without a 64-bit arithmetic shift: the
// logical shift of x + c + 2^63, minus 2^(63−s).
struct FloorShift {
  int s;
  VU64 c;        // c (+ 2^63 when emulating)
  V64 unbias;    // 2^(63−s) when emulating
  FloorShift(int shift, uint64_t add) : s(shift) {
    const DU64 du;
    const D64 d;
    c = hn::Set(du, kNativeSra ? add : add + (uint64_t{1} << 63));
    unbias = hn::Set(d, kNativeSra ? 0 : static_cast<int64_t>(uint64_t{1} << (63 - shift)));
  }
  HWY_INLINE V64 operator()(VU64 x) const {
    const D64 d;
    const VU64 t = hn::Add(x, c);
    if constexpr (kNativeSra) {
      return hn::ShiftRightSame(hn::BitCast(d, t), s);
    } else {
      return hn::Sub(hn::BitCast(d, hn::ShiftRightSame(t, s)), unbias);
    }
  }
};

// R_even(x, s) for 0 ≤ s ≤ 62 (s = 0: identity).
struct RoundEven {
  FloorShift floor;
  VU64 odd_mask;  // 1, or 0 for s = 0
  explicit RoundEven(int s)
      : floor(s, s == 0 ? 0 : (uint64_t{1} << (s - 1)) - 1), odd_mask(hn::Set(DU64(), s == 0 ? 0 : 1)) {}
  HWY_INLINE V64 operator()(V64 x) const {
    const DU64 du;
    const VU64 xu = hn::BitCast(du, x);
    const VU64 odd = hn::And(hn::ShiftRightSame(xu, floor.s), odd_mask);
    return floor(hn::Add(xu, odd));
  }
};

HWY_INLINE V64 LoadI32(const int32_t* HWY_RESTRICT p) { return hn::PromoteTo(D64(), hn::LoadU(D32H(), p)); }

HWY_INLINE void StoreI32(V64 x, int32_t* HWY_RESTRICT p) {
  const DU64 du;
  const hn::Rebind<uint32_t, DU64> du32;
  hn::StoreU(hn::TruncateTo(du32, hn::BitCast(du, x)), du32, reinterpret_cast<uint32_t*>(p));
}

// x (the low 32 bits of each lane, as int32) times m (0 ≤ m < 2^31, broadcast in every lane), exact in int64.
HWY_INLINE V64 MulI32(V64 x, V64 m) {
  const D32F d32;
  return hn::MulEven(hn::BitCast(d32, x), hn::BitCast(d32, m));
}

#endif  // HWY_TARGET != HWY_SCALAR

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // QTRAIN_KERNELS_INT64_LANES_INL_H_
