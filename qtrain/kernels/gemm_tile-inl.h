// The GEMM's per-target geometry: reduction values per 32-bit lane, the packed operand types, register tiles,
// panel width and K-block length (gemm_driver.cc describes how they fit together).
// Per-target code, included by gemm_driver.cc once for each Highway target (the -inl.h idiom: the guard flips
// with HWY_TARGET_TOGGLE, so each pass of foreach_target sees the header again).
#if defined(QTRAIN_KERNELS_GEMM_TILE_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QTRAIN_KERNELS_GEMM_TILE_INL_H_
#undef QTRAIN_KERNELS_GEMM_TILE_INL_H_
#else
#define QTRAIN_KERNELS_GEMM_TILE_INL_H_
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "hwy/highway.h"
#include "qtrain/kernels/gemm_internal.h"

HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using D32 = hn::ScalableTag<int32_t>;
using V32 = hn::Vec<D32>;

#if HWY_TARGET == HWY_AVX3_DL
constexpr std::size_t kGroup = 4;  // reduction values per 32-bit lane
using PackedA = int8_t;
using PackedB = uint8_t;  // b + 128, the unsigned operand of vpdpbusd
#else
constexpr std::size_t kGroup = 2;
using PackedA = int16_t;
using PackedB = int16_t;
#endif

// Register tile: up to kNR vectors of columns × MaxRows(nr) rows, as many accumulators as the registers hold
// next to the B vectors and the broadcast (32 vector registers on AVX-512, 16 on SSE/AVX2). A narrow tile
// (the last panel of a narrow C: 16 or 32 output channels) takes more rows, so it still has enough independent
// accumulators to hide the dot product's latency and reuses each B vector for more rows.
//   AVX3_DL 24 accumulators: 6×4, 8×3, 12×2, 24×1 (+ NR B + 1 broadcast).
//   AVX3    18: 6×3, 9×2, 18×1 (pmaddwd needs a product register before each add; 6×4 spilled).
//   others   8: 4×2, 8×1 (+ B + broadcast + products).
#if HWY_TARGET == HWY_AVX3_DL
constexpr std::size_t kAccumulators = 24;
constexpr std::size_t kNR = 4;
#elif HWY_TARGET == HWY_AVX3
constexpr std::size_t kAccumulators = 18;
constexpr std::size_t kNR = 3;
#else
constexpr std::size_t kAccumulators = 8;
constexpr std::size_t kNR = 2;
#endif
constexpr std::size_t MaxRows(std::size_t nr) { return kAccumulators / nr; }
constexpr std::size_t kMR = MaxRows(kNR);  // rows of a full-width tile
// Row blocks are multiples of this, so every tile height divides them.
constexpr std::size_t kRowQuantum = MaxRows(1);

// Columns per packed panel: the widest tile the micro-kernel computes.
HWY_INLINE std::size_t PanelWidth() { return kNR * hn::Lanes(D32()); }
// Elements of one group of one panel.
HWY_INLINE std::size_t GroupElems() { return PanelWidth() * kGroup; }

// Groups per K block: one panel's block of B takes about half of L1d.
HWY_INLINE std::size_t KcGroups() {
  const std::size_t group_bytes = GroupElems() * sizeof(PackedB);
  return std::max<std::size_t>(4, detail::cache_sizes().l1d / 2 / group_bytes);
}

HWY_INLINE std::size_t DivUp(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // QTRAIN_KERNELS_GEMM_TILE_INL_H_
