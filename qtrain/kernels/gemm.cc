// int8 (and int4) × int8 → int32 GEMMs (see gemm.h, int4.h), one Highway source compiled for every target.
//
// All layouts run one product, C[i][j] = Σ_p A[i][p] · B[p][j], on operands packed for the micro-kernels:
//   forward  Y[n×m]  = X · Wᵀ    A = X,    B(p, j) = W[j][p]   (B packed from W's rows: a 32-bit transpose)
//   dgrad    dX[n×k] = dY · W    A = dY,   B(p, j) = W[p][j]   (B packed by interleaving W's rows)
//   wgrad    dW[m×k] = dYᵀ · X   A = dYᵀ,  B(p, j) = X[p][j]   (dY transposed, B by interleaving X's rows)
//
// Packing. B is cut into panels of PanelWidth() columns. Within a panel, the reduction is grouped by kGroup
// consecutive p, and one group of one column is a 32-bit lane: [panel][group][column][kGroup]. A is copied
// row by row with its reduction zero-padded to whole groups — except on AVX3_DL for an int8 row-major A whose
// reduction is whole groups, which the kernel reads where it is (PrepareA). Padding contributes nothing, so k,
// m and n need not be multiples of anything. int4 operands are unpacked by these packing routines (nibble → int8 in
// registers), so the micro-kernels are the same for both widths. PackedWeights (gemm.h) is B packed once.
//
// Micro-kernel: an MR-row × NR-vector tile of C lives in MR·NR vector accumulators, one output per lane, so
// there is never a horizontal sum. (A first version reduced dot products of K-contiguous rows and summed each
// accumulator at the end: those sums dominated the short reductions of dgrad and wgrad, and even the forward
// product ran ~1.5× slower than this on AVX3_DL.) Per group, the kernel loads NR
// vectors of the panel and broadcasts A[i][group] (kGroup values in one 32-bit lane) to each row i:
//  * AVX3_DL: kGroup = 4, `vpdpbusd` (VNNI) adds four u8×s8 products into each int32 lane. B is the
//    unsigned operand, so the packer stores b+128 (b xor 0x80) and the kernel subtracts 128·Σ_p A[i][p] at the
//    end. vpdpbusd wraps modulo 2^32 (the non-saturating form), as does the int32 subtraction; the true result
//    fits int32 (reductions ≤ kMaxReduction, gemm.h), so it is exact although Σ(b+128)·a alone may not fit.
//  * Other SIMD targets: kGroup = 2, int8 widened to int16 at packing time, `ReorderWidenMulAccumulate`
//    (pmaddwd: two int16 products per int32 lane, |2·128·128| = 2^15 cannot overflow).
//  * SCALAR: the same packing and tiling with a plain C++ kernel (one column per "vector").
//
// Blocking. The reduction is cut into K blocks of KcGroups() groups, sized from cpuinfo's L1d so that one
// panel's block of B (e.g. 384 × 64 bytes on AVX3_DL with a 48 KiB L1d) stays in L1 while every row tile of A
// streams past it; the first K block stores C, the later ones add to it. Work is split three ways:
//  * by panels (square-ish products, the default): A prepared once; each task packs the B blocks of its panels
//    and multiplies them by all of A while they are hot, so packed B never moves between cores;
//  * by row blocks (tall A — the im2col products of a CNN — or too few panels for the threads): B packed once
//    (in parallel), each task prepares its rows of A (a quarter of L2) and multiplies them by all of B;
//  * by reduction ranges (few output tiles, long reduction — wgrad of a tall-skinny product): each task
//    multiplies its K range into a partial C and the partials are added. Integer sums are exact and the true
//    result fits int32, so every partial (and every prefix of their sum) does too: any split gives the same bits.
// Every element is computed with the same integer operations whatever the split, so the result is
// bit-identical for any thread count and any target.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/gemm.cc"
#include "hwy/aligned_allocator.h"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/kernels/int4.h"
#include "qtrain/kernels/thread_pool.h"

// ------------------------------------------------------------------------------------------------------------
// Declarations shared by all targets (this part is seen once per target pass, hence the guard).
#ifndef QTRAIN_KERNELS_GEMM_SHARED_
#define QTRAIN_KERNELS_GEMM_SHARED_
namespace qtrain::kernels::detail {

// Per-thread scratch that only grows (64-byte aligned); valid until the next call on the same thread. One
// buffer per role, so a call can hold several at once: the k* slots belong to the calling thread (shared with
// the tasks it starts), the kTask* slots to whichever thread runs a task.
enum class Slot {
  kPackedA,
  kPackedB,
  kSums,
  kTransposed,
  kUnpacked,
  kPartial,
  kTaskA,
  kTaskB,
  kTaskSums,
  kTaskTransposed,
  kCount
};
void* scratch(Slot slot, std::size_t bytes);

// The A operand: `rows` × k, stored row-major (A[i][p] at data[i·ld + p]) or transposed (A[i][p] at
// data[p·ld + i]: wgrad's dY). ld counts bytes; int4 rows hold two values per byte (int4.h). Transposed int4
// does not occur (wgrad_s4 unpacks dY first).
struct OperandA {
  const uint8_t* data;
  std::size_t ld;
  bool int4;
  bool transposed;
};

// The B operand: k × cols, stored with the reduction along rows (B[p][j] at data[p·ld + j]: dgrad's W, wgrad's
// X) or along columns (B[p][j] at data[j·ld + p]: forward's W), int8 or int4; or already packed (`packed`
// non-null: the panels of a PackedWeights made for this target).
struct OperandB {
  const uint8_t* data;
  std::size_t ld;
  bool int4;
  bool reduction_rows;
  const void* packed;
};

struct GemmArgs {
  OperandA a;
  OperandB b;
  int32_t* c;  // rows × cols, leading dimension cols
  std::size_t rows, cols, k;
  GemmEpilogue epilogue;
};

struct CacheSizes {
  std::size_t l1d, l2;  // bytes, per core
};
const CacheSizes& cache_sizes();

}  // namespace qtrain::kernels::detail
#endif  // QTRAIN_KERNELS_GEMM_SHARED_

// ------------------------------------------------------------------------------------------------------------
// Per-target code.
HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using detail::OperandA;
using detail::OperandB;
using detail::Slot;

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

// ---- int8 / int4 element access -----------------------------------------------------------------------------

// Element c of a stored row.
template <bool kInt4>
HWY_INLINE int8_t Elem(const uint8_t* HWY_RESTRICT row, std::size_t c) {
  if constexpr (kInt4) {
    const unsigned byte = row[c >> 1];
    const unsigned nibble = (c & 1) != 0 ? byte >> 4 : byte & 0xF;
    return static_cast<int8_t>(static_cast<int>(nibble ^ 8) - 8);
  } else {
    return static_cast<int8_t>(row[c]);
  }
}

#if HWY_TARGET != HWY_SCALAR
// Elements c … c+15 of a row as int8 bytes (c even for int4: a whole byte). Reads exactly their bytes.
template <bool kInt4>
HWY_INLINE hn::Vec<hn::Full128<uint8_t>> Load16(const uint8_t* HWY_RESTRICT row, std::size_t c) {
  const hn::Full128<uint8_t> d;
  if constexpr (kInt4) {
    uint64_t bits;
    std::memcpy(&bits, row + c / 2, sizeof(bits));
    const auto v = hn::BitCast(d, hn::Set(hn::Full128<uint64_t>(), bits));
    // Low nibble first; (x ^ 8) − 8 sign-extends 4 bits within the byte.
    const auto x = hn::InterleaveLower(d, hn::And(v, hn::Set(d, 0x0F)), hn::ShiftRight<4>(v));
    return hn::Sub(hn::Xor(x, hn::Set(d, 8)), hn::Set(d, 8));
  } else {
    return hn::LoadU(d, row + c);
  }
}

// Elements c … c+7 of a row as int8 (c even for int4).
template <bool kInt4>
HWY_INLINE hn::Vec<hn::Full64<int8_t>> Load8(const uint8_t* HWY_RESTRICT row, std::size_t c) {
  const hn::Full64<uint8_t> d;
  if constexpr (kInt4) {
    uint32_t bits;
    std::memcpy(&bits, row + c / 2, sizeof(bits));
    const auto v = hn::BitCast(d, hn::Set(hn::Full64<uint32_t>(), bits));
    const auto x = hn::InterleaveLower(d, hn::And(v, hn::Set(d, 0x0F)), hn::ShiftRight<4>(v));
    return hn::BitCast(hn::Full64<int8_t>(), hn::Sub(hn::Xor(x, hn::Set(d, 8)), hn::Set(d, 8)));
  } else {
    return hn::LoadU(hn::Full64<int8_t>(), reinterpret_cast<const int8_t*>(row) + c);
  }
}
#endif

// ---- Packing ------------------------------------------------------------------------------------------------

#if HWY_TARGET == HWY_AVX3_DL
// sums[i] = Σ_p a[i·lda + p], p < len, for `rows` int8 rows (|Σ| ≤ 128·kMaxReduction < 2^31): the VNNI offset
// correction. psadbw sums 8 bytes of x xor 0x80 (x + 128, unsigned) per 64-bit lane; 8 rows at a time, one
// transpose-and-add tree turns their 8 vectors of partial sums into one vector of 8 row sums (a horizontal sum
// per row cost as much as the products of a short row); then −128·len.
__attribute__((target(HWY_TARGET_STR))) void RowSums(const int8_t* HWY_RESTRICT a, std::size_t lda,
                                                     std::size_t rows, std::size_t len, int32_t* HWY_RESTRICT sums) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  const __m512i zero = _mm512_setzero_si512();
  const std::size_t full = len / 64 * 64;
  const __mmask64 tail = len % 64 != 0 ? (~__mmask64{0}) >> (64 - len % 64) : 0;
  const auto row_vector = [&](const int8_t* row) {
    __m512i acc = zero;
    for (std::size_t p = 0; p < full; p += 64) {
      acc = _mm512_add_epi64(acc, _mm512_sad_epu8(_mm512_xor_si512(_mm512_loadu_si512(row + p), flip), zero));
    }
    if (tail != 0) {
      const __m512i v = _mm512_maskz_mov_epi8(tail, _mm512_xor_si512(_mm512_maskz_loadu_epi8(tail, row + full), flip));
      acc = _mm512_add_epi64(acc, _mm512_sad_epu8(v, zero));
    }
    return acc;
  };
  const __m512i bias = _mm512_set1_epi64(128 * static_cast<int64_t>(len));
  std::size_t i = 0;
  for (; i + 8 <= rows; i += 8) {
    __m512i acc[8];
    HWY_UNROLL(8)
    for (std::size_t r = 0; r < 8; ++r) acc[r] = row_vector(a + (i + r) * lda);
    // Pairs: lane 2q+t of s[h] = lanes 2q, 2q+1 of row 2h+t.
    __m512i s[4];
    HWY_UNROLL(4)
    for (std::size_t h = 0; h < 4; ++h) {
      s[h] = _mm512_add_epi64(_mm512_unpacklo_epi64(acc[2 * h], acc[2 * h + 1]),
                              _mm512_unpackhi_epi64(acc[2 * h], acc[2 * h + 1]));
    }
    // Quads: 128-bit blocks 0, 2 and 1, 3 of two pair vectors added: rows 4h'…4h'+3, two partial sums each.
    __m512i q[2];
    HWY_UNROLL(2)
    for (std::size_t h = 0; h < 2; ++h) {
      q[h] = _mm512_add_epi64(_mm512_shuffle_i64x2(s[2 * h], s[2 * h + 1], 0x88),
                              _mm512_shuffle_i64x2(s[2 * h], s[2 * h + 1], 0xDD));
    }
    const __m512i total =
        _mm512_add_epi64(_mm512_shuffle_i64x2(q[0], q[1], 0x88), _mm512_shuffle_i64x2(q[0], q[1], 0xDD));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums + i), _mm512_cvtepi64_epi32(_mm512_sub_epi64(total, bias)));
  }
  for (; i < rows; ++i) {
    sums[i] = static_cast<int32_t>(_mm512_reduce_add_epi64(row_vector(a + i * lda)) - 128 * static_cast<int64_t>(len));
  }
}
#endif

// Rows [i0, i1) and reduction [p0, p1) of a row-major A → dst ((i1−i0) × kpad, zero-padded), as PackedA
// (int4 unpacked, int8 widened to int16 off VNNI).
template <bool kInt4>
void PackARows(const uint8_t* HWY_RESTRICT a, std::size_t lda, std::size_t i0, std::size_t i1, std::size_t p0,
               std::size_t p1, std::size_t kpad, PackedA* HWY_RESTRICT dst) {
  const std::size_t len = p1 - p0;
  for (std::size_t i = i0; i < i1; ++i) {
    const uint8_t* row = a + i * lda;
    PackedA* out = dst + (i - i0) * kpad;
    std::size_t p = 0;
    if constexpr (kInt4) {
      // p0 is a multiple of kGroup, so even: whole bytes, a full vector of values at a time. Each byte is
      // widened to a lane of twice (int8 out) or four times (int16 out) its width; the high nibble moves up
      // to the next byte (int16 element), and (x ^ 8) − 8 sign-extends both in place.
#if HWY_TARGET == HWY_AVX3_DL
      const uint8_t* bytes = row + p0 / 2;
      const hn::ScalableTag<uint16_t> dw;
      const hn::Repartition<uint8_t, decltype(dw)> dn;
      const hn::Rebind<uint8_t, decltype(dw)> dload;
      const std::size_t step = 2 * hn::Lanes(dw);
      for (; p + step <= len; p += step) {
        const auto w = hn::PromoteTo(dw, hn::LoadU(dload, bytes + p / 2));
        const auto x = hn::BitCast(dn, hn::Or(hn::And(w, hn::Set(dw, 0x0F)), hn::ShiftLeft<4>(hn::And(w, hn::Set(dw, 0xF0)))));
        const auto v = hn::Sub(hn::Xor(x, hn::Set(dn, 8)), hn::Set(dn, 8));
        hn::StoreU(v, dn, reinterpret_cast<uint8_t*>(out + p));
      }
#elif HWY_TARGET != HWY_SCALAR
      const uint8_t* bytes = row + p0 / 2;
      const hn::ScalableTag<uint32_t> dw;
      const hn::Repartition<uint16_t, decltype(dw)> dn;
      const hn::Rebind<uint8_t, decltype(dw)> dload;
      const std::size_t step = 2 * hn::Lanes(dw);
      for (; p + step <= len; p += step) {
        const auto w = hn::PromoteTo(dw, hn::LoadU(dload, bytes + p / 2));
        const auto x = hn::BitCast(dn, hn::Or(hn::And(w, hn::Set(dw, 0x0F)), hn::ShiftLeft<12>(hn::And(w, hn::Set(dw, 0xF0)))));
        const auto v = hn::Sub(hn::Xor(x, hn::Set(dn, 8)), hn::Set(dn, 8));
        hn::StoreU(v, dn, reinterpret_cast<uint16_t*>(out + p));
      }
#endif
#if HWY_TARGET != HWY_SCALAR
      for (; p + 16 <= len; p += 16) {  // the rest 16 values (8 bytes) at a time
        const auto v = hn::BitCast(hn::Full128<int8_t>(), Load16<true>(row, p0 + p));
#if HWY_TARGET == HWY_AVX3_DL
        hn::StoreU(v, hn::Full128<int8_t>(), out + p);
#else
        const hn::Full128<int16_t> d16;
        hn::StoreU(hn::PromoteTo(d16, hn::LowerHalf(v)), d16, out + p);
        hn::StoreU(hn::PromoteTo(d16, hn::UpperHalf(hn::Full64<int8_t>(), v)), d16, out + p + 8);
#endif
      }
#endif
      for (; p < len; ++p) out[p] = Elem<true>(row, p0 + p);
    } else {
      const auto* r8 = reinterpret_cast<const int8_t*>(row) + p0;
#if HWY_TARGET == HWY_AVX3_DL
      std::memcpy(out, r8, len);
      p = len;
#elif HWY_TARGET != HWY_SCALAR
      const hn::ScalableTag<int16_t> d16;
      const hn::Rebind<int8_t, decltype(d16)> d8;
      for (; p + hn::Lanes(d16) <= len; p += hn::Lanes(d16)) hn::StoreU(hn::PromoteTo(d16, hn::LoadU(d8, r8 + p)), d16, out + p);
#endif
      for (; p < len; ++p) out[p] = r8[p];
    }
    for (p = len; p < kpad; ++p) out[p] = 0;
  }
}

// dst (cols × rows, leading dimension ldd) = srcᵀ for an int8 matrix src (rows × cols, leading dimension lds).
// Whole 16×16 blocks go through the classic four-stage interleave network (8-, 16-, 32-, 64-bit) on 128-bit
// vectors; the ragged right and bottom edges, and the SCALAR target, take the plain loop.
void Transpose8(const int8_t* HWY_RESTRICT src, std::size_t lds, std::size_t rows, std::size_t cols,
                int8_t* HWY_RESTRICT dst, std::size_t ldd) {
  std::size_t rows16 = 0, cols16 = 0;
#if HWY_TARGET != HWY_SCALAR
  rows16 = rows / 16 * 16;
  cols16 = cols / 16 * 16;
  const hn::Full128<uint8_t> d8;
  const hn::Full128<uint16_t> d16;
  const hn::Full128<uint32_t> d32;
  const hn::Full128<uint64_t> d64;
  const auto* s = reinterpret_cast<const uint8_t*>(src);
  auto* o = reinterpret_cast<uint8_t*>(dst);
  for (std::size_t r0 = 0; r0 < rows16; r0 += 16) {
    for (std::size_t c0 = 0; c0 < cols16; c0 += 16) {
      hn::Vec<decltype(d8)> a[16], b[16];
      HWY_UNROLL(16)
      for (std::size_t r = 0; r < 16; ++r) a[r] = hn::LoadU(d8, s + (r0 + r) * lds + c0);
      // b[2i], b[2i+1]: rows 2i, 2i+1 interleaved byte by byte (columns 0–7, 8–15).
      HWY_UNROLL(8)
      for (std::size_t i = 0; i < 8; ++i) {
        b[2 * i] = hn::InterleaveLower(d8, a[2 * i], a[2 * i + 1]);
        b[2 * i + 1] = hn::InterleaveUpper(d8, a[2 * i], a[2 * i + 1]);
      }
      // a[4q + t]: rows 4q…4q+3 of columns 4t…4t+3, one 32-bit group per column.
      HWY_UNROLL(4)
      for (std::size_t q = 0; q < 4; ++q) {
        const auto x0 = hn::BitCast(d16, b[4 * q]), x1 = hn::BitCast(d16, b[4 * q + 1]);
        const auto y0 = hn::BitCast(d16, b[4 * q + 2]), y1 = hn::BitCast(d16, b[4 * q + 3]);
        a[4 * q + 0] = hn::BitCast(d8, hn::InterleaveLower(d16, x0, y0));
        a[4 * q + 1] = hn::BitCast(d8, hn::InterleaveUpper(d16, x0, y0));
        a[4 * q + 2] = hn::BitCast(d8, hn::InterleaveLower(d16, x1, y1));
        a[4 * q + 3] = hn::BitCast(d8, hn::InterleaveUpper(d16, x1, y1));
      }
      // b[8h + u]: rows 8h…8h+7 of columns 2u, 2u+1, one 64-bit group per column.
      HWY_UNROLL(2)
      for (std::size_t h = 0; h < 2; ++h) {
        HWY_UNROLL(4)
        for (std::size_t t = 0; t < 4; ++t) {
          const auto x = hn::BitCast(d32, a[8 * h + t]), y = hn::BitCast(d32, a[8 * h + 4 + t]);
          b[8 * h + 2 * t] = hn::BitCast(d8, hn::InterleaveLower(d32, x, y));
          b[8 * h + 2 * t + 1] = hn::BitCast(d8, hn::InterleaveUpper(d32, x, y));
        }
      }
      // Column 2u, 2u+1: rows 0–7 from b[u], rows 8–15 from b[8 + u].
      HWY_UNROLL(8)
      for (std::size_t u = 0; u < 8; ++u) {
        const auto x = hn::BitCast(d64, b[u]), y = hn::BitCast(d64, b[8 + u]);
        hn::StoreU(hn::BitCast(d8, hn::InterleaveLower(d64, x, y)), d8, o + (c0 + 2 * u) * ldd + r0);
        hn::StoreU(hn::BitCast(d8, hn::InterleaveUpper(d64, x, y)), d8, o + (c0 + 2 * u + 1) * ldd + r0);
      }
    }
  }
#endif
  // Edges: columns right of the last whole block (all rows), rows below it (whole-block columns).
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = cols16; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
  for (std::size_t r = rows16; r < rows; ++r)
    for (std::size_t c = 0; c < cols16; ++c) dst[c * ldd + r] = src[r * lds + c];
}

// Rows [i0, i1), reduction [p0, p1) of A → dst ((i1−i0) × kpad). A transposed A is transposed first into the
// `tmp` scratch slot of the calling thread.
void PackA(const OperandA& a, std::size_t i0, std::size_t i1, std::size_t p0, std::size_t p1, std::size_t kpad,
           PackedA* HWY_RESTRICT dst, Slot tmp) {
  if (a.transposed) {
    const std::size_t rows = i1 - i0, len = p1 - p0;
    auto* t = static_cast<int8_t*>(detail::scratch(tmp, rows * len));
    Transpose8(reinterpret_cast<const int8_t*>(a.data) + p0 * a.ld + i0, a.ld, len, rows, t, len);
    PackARows<false>(reinterpret_cast<const uint8_t*>(t), len, 0, rows, 0, len, kpad, dst);
  } else if (a.int4) {
    PackARows<true>(a.data, a.ld, i0, i1, p0, p1, kpad, dst);
  } else {
    PackARows<false>(a.data, a.ld, i0, i1, p0, p1, kpad, dst);
  }
}

// A as the micro-kernels read it: rows of PackedA, `lda` apart, the reduction padded to whole groups.
struct ReadyA {
  const PackedA* a;
  std::size_t lda;
};

// Rows [i0, i1), reduction [p0, p1) of A, ready for the micro-kernels, and with VNNI the row sums (`sums`,
// unused elsewhere). With VNNI an int8 row-major A whose range is whole groups is read where it is — the
// kernel broadcasts 4 bytes at a time from any address — and only its row sums are computed; otherwise A is
// packed into the `slot` scratch.
ReadyA PrepareA(const OperandA& a, std::size_t i0, std::size_t i1, std::size_t p0, std::size_t p1, int32_t* sums,
                Slot slot, Slot tmp) {
  ReadyA ready{};
#if HWY_TARGET == HWY_AVX3_DL
  if (!a.int4 && !a.transposed && (p1 - p0) % kGroup == 0) {
    ready = {reinterpret_cast<const int8_t*>(a.data) + i0 * a.ld + p0, a.ld};
    RowSums(ready.a, ready.lda, i1 - i0, p1 - p0, sums);
    return ready;
  }
#endif
  const std::size_t kpad = (p1 - p0 + kGroup - 1) / kGroup * kGroup;
  auto* dst = static_cast<PackedA*>(detail::scratch(slot, (i1 - i0) * kpad * sizeof(PackedA)));
  PackA(a, i0, i1, p0, p1, kpad, dst, tmp);
  ready = {dst, kpad};
#if HWY_TARGET == HWY_AVX3_DL
  RowSums(ready.a, ready.lda, i1 - i0, p1 - p0, sums);
#else
  (void)sums;  // no offset to correct without VNNI
#endif
  return ready;
}

// The packed value of one B element. Padding is PackedB{0}, which contributes 0 (under VNNI: u8 0, not 0 ^ 0x80).
HWY_INLINE PackedB PackValue(int8_t v) {
#if HWY_TARGET == HWY_AVX3_DL
  return static_cast<uint8_t>(static_cast<uint8_t>(v) ^ 0x80);
#else
  return v;
#endif
}

// Groups [g0, g1) of panel `panel` of a B stored with the reduction along rows (b: k rows × n columns) → dst
// ((g1−g0) groups). Lane (column) j of group g gets rows g·kGroup … g·kGroup+kGroup−1 of column j: an
// interleave of kGroup rows, 16 (VNNI) or 8 columns at a time. Ragged columns and padding take the scalar loop.
template <bool kInt4>
void PackPanelRows(const uint8_t* HWY_RESTRICT b, std::size_t ldb, std::size_t k, std::size_t n, std::size_t panel,
                   std::size_t g0, std::size_t g1, PackedB* HWY_RESTRICT dst) {
  const std::size_t pw = PanelWidth();
  const std::size_t col0 = panel * pw;
  const std::size_t cols = std::min(pw, n - col0);
  for (std::size_t g = g0; g < g1; ++g) {
    PackedB* out = dst + (g - g0) * pw * kGroup;
    const uint8_t* rows[kGroup];  // null: padding row beyond k
    for (std::size_t q = 0; q < kGroup; ++q) {
      const std::size_t p = g * kGroup + q;
      rows[q] = p < k ? b + p * ldb : nullptr;
    }
    std::size_t c = 0;
#if HWY_TARGET == HWY_AVX3_DL
    const hn::Full128<uint8_t> du8;
    const hn::Full128<uint16_t> du16;
    const auto flip = hn::Set(du8, 0x80);
    for (; c + 16 <= cols; c += 16) {
      hn::Vec<decltype(du8)> f[4];
      for (std::size_t q = 0; q < 4; ++q) {
        f[q] = rows[q] != nullptr ? hn::Xor(Load16<kInt4>(rows[q], col0 + c), flip) : hn::Zero(du8);
      }
      const auto t0 = hn::BitCast(du16, hn::InterleaveLower(du8, f[0], f[1]));
      const auto t1 = hn::BitCast(du16, hn::InterleaveUpper(du8, f[0], f[1]));
      const auto t2 = hn::BitCast(du16, hn::InterleaveLower(du8, f[2], f[3]));
      const auto t3 = hn::BitCast(du16, hn::InterleaveUpper(du8, f[2], f[3]));
      uint8_t* o = out + c * 4;
      hn::StoreU(hn::BitCast(du8, hn::InterleaveLower(du16, t0, t2)), du8, o);
      hn::StoreU(hn::BitCast(du8, hn::InterleaveUpper(du16, t0, t2)), du8, o + 16);
      hn::StoreU(hn::BitCast(du8, hn::InterleaveLower(du16, t1, t3)), du8, o + 32);
      hn::StoreU(hn::BitCast(du8, hn::InterleaveUpper(du16, t1, t3)), du8, o + 48);
    }
#elif HWY_TARGET != HWY_SCALAR
    const hn::Full128<int16_t> d16;
    const hn::Full128<uint16_t> du16;
    for (; c + 8 <= cols; c += 8) {
      const auto x0 = hn::BitCast(du16, hn::PromoteTo(d16, Load8<kInt4>(rows[0], col0 + c)));
      const auto x1 = rows[1] != nullptr ? hn::BitCast(du16, hn::PromoteTo(d16, Load8<kInt4>(rows[1], col0 + c)))
                                         : hn::Zero(du16);
      hn::StoreU(hn::BitCast(d16, hn::InterleaveLower(du16, x0, x1)), d16, out + c * 2);
      hn::StoreU(hn::BitCast(d16, hn::InterleaveUpper(du16, x0, x1)), d16, out + c * 2 + 8);
    }
#endif
    for (; c < cols; ++c) {
      for (std::size_t q = 0; q < kGroup; ++q) {
        out[c * kGroup + q] = rows[q] != nullptr ? PackValue(Elem<kInt4>(rows[q], col0 + c)) : PackedB{0};
      }
    }
    std::memset(out + cols * kGroup, 0, (pw - cols) * kGroup * sizeof(PackedB));  // padding columns
  }
}

// Groups [g0, g1) of panel `panel` of a B stored with the reduction along columns (forward: B(p, j) = W[j][p];
// w: n rows × k) → dst. Lane j of group g is the kGroup values W[j][g·kGroup …], so this is a transpose of
// 32-bit (VNNI) or 16-bit (widened to 32-bit) units: 4 columns × 4 groups at a time through a 4×4 transpose
// of 32-bit lanes.
template <bool kInt4>
void PackPanelCols(const uint8_t* HWY_RESTRICT w, std::size_t ldw, std::size_t k, std::size_t n, std::size_t panel,
                   std::size_t g0, std::size_t g1, PackedB* HWY_RESTRICT dst) {
  const std::size_t pw = PanelWidth();
  const std::size_t col0 = panel * pw;
  const std::size_t cols = std::min(pw, n - col0);
  std::size_t gv = g0;  // groups [g0, gv) done by the vector loop (whole 4-group blocks inside k)
  std::size_t c4 = 0;   // columns done by the vector loop (multiple of 4)
#if HWY_TARGET != HWY_SCALAR
  const hn::Full128<uint32_t> d32;
  const hn::Full128<uint64_t> d64;
  const std::size_t full = std::min(g1, k / kGroup);  // groups entirely inside k
  gv = full > g0 ? g0 + (full - g0) / 4 * 4 : g0;
  c4 = cols / 4 * 4;
  for (std::size_t c = 0; c < c4; c += 4) {
    for (std::size_t g = g0; g < gv; g += 4) {
      hn::Vec<decltype(d32)> v[4];  // v[r]: groups g…g+3 of column c+r
      for (std::size_t r = 0; r < 4; ++r) {
        const uint8_t* row = w + (col0 + c + r) * ldw;
#if HWY_TARGET == HWY_AVX3_DL
        v[r] = hn::BitCast(d32, hn::Xor(Load16<kInt4>(row, g * kGroup), hn::Set(hn::Full128<uint8_t>(), 0x80)));
#else
        v[r] = hn::BitCast(d32, hn::PromoteTo(hn::Full128<int16_t>(), Load8<kInt4>(row, g * kGroup)));
#endif
      }
      // 4×4 transpose of 32-bit lanes: out[t] = group g+t of columns c…c+3.
      const auto t0 = hn::BitCast(d64, hn::InterleaveLower(d32, v[0], v[1]));
      const auto t1 = hn::BitCast(d64, hn::InterleaveUpper(d32, v[0], v[1]));
      const auto t2 = hn::BitCast(d64, hn::InterleaveLower(d32, v[2], v[3]));
      const auto t3 = hn::BitCast(d64, hn::InterleaveUpper(d32, v[2], v[3]));
      const hn::Vec<decltype(d32)> out[4] = {
          hn::BitCast(d32, hn::InterleaveLower(d64, t0, t2)), hn::BitCast(d32, hn::InterleaveUpper(d64, t0, t2)),
          hn::BitCast(d32, hn::InterleaveLower(d64, t1, t3)), hn::BitCast(d32, hn::InterleaveUpper(d64, t1, t3))};
      for (std::size_t t = 0; t < 4; ++t) {
        hn::StoreU(out[t], d32, reinterpret_cast<uint32_t*>(dst + ((g - g0 + t) * pw + c) * kGroup));
      }
    }
  }
#endif
  // Everything the vector loop left: groups beyond gv for its columns, then the other columns; padding.
  for (std::size_t c = 0; c < cols; ++c) {
    const uint8_t* row = w + (col0 + c) * ldw;
    for (std::size_t g = c < c4 ? gv : g0; g < g1; ++g) {
      for (std::size_t q = 0; q < kGroup; ++q) {
        const std::size_t p = g * kGroup + q;
        dst[((g - g0) * pw + c) * kGroup + q] = p < k ? PackValue(Elem<kInt4>(row, p)) : PackedB{0};
      }
    }
  }
  for (std::size_t g = g0; g < g1; ++g) {
    std::memset(dst + ((g - g0) * pw + cols) * kGroup, 0, (pw - cols) * kGroup * sizeof(PackedB));
  }
}

// Groups [g0, g1) of one panel of B (k × n) → dst.
void PackPanel(const OperandB& b, std::size_t k, std::size_t n, std::size_t panel, std::size_t g0, std::size_t g1,
               PackedB* HWY_RESTRICT dst) {
  if (b.reduction_rows) {
    if (b.int4) {
      PackPanelRows<true>(b.data, b.ld, k, n, panel, g0, g1, dst);
    } else {
      PackPanelRows<false>(b.data, b.ld, k, n, panel, g0, g1, dst);
    }
  } else if (b.int4) {
    PackPanelCols<true>(b.data, b.ld, k, n, panel, g0, g1, dst);
  } else {
    PackPanelCols<false>(b.data, b.ld, k, n, panel, g0, g1, dst);
  }
}

// ---- Micro-kernels ------------------------------------------------------------------------------------------
// C[MR rows × NR vectors of columns] = A[MR rows] · panel block, over `groups` groups; `ncols` (≤ NR·lanes)
// columns are stored (the rest of the panel is padding), or added to C when `accumulate` (a later K block).
// `a_sums`: VNNI offset correction, given with the first K block only (null otherwise; unused elsewhere).
// Loops over the register arrays carry HWY_UNROLL with at least their full trip count (24 rows, 4 vectors):
// unrolled before GCC 12 decides where the arrays live, they
// stay in registers (otherwise it copied the accumulators around on every iteration).

#if HWY_TARGET == HWY_AVX3_DL
// Highway 1.0.3's AVX3_DL attribute string lacks avx512vnni (it names only avxvnni): the VNNI kernel adds it.
#define QTRAIN_VNNI_ATTR __attribute__((target(HWY_TARGET_STR ",avx512vnni")))

// acc += Σ₄ u8(u)·s8(s) in each int32 lane, in place. Inline asm rather than _mm512_dpbusd_epi32: with the
// intrinsic, GCC 12 kept the accumulators in zmm16–31 but computed in zmm0–15, copying every one back and
// forth (some via the stack) on each iteration, ~1.3× slower.
HWY_INLINE QTRAIN_VNNI_ATTR void Dpbusd(__m512i& acc, __m512i u, __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
}

template <std::size_t MR, std::size_t NR>
QTRAIN_VNNI_ATTR void KernelNN(const int8_t* HWY_RESTRICT a, std::size_t lda, const uint8_t* HWY_RESTRICT b,
                               std::size_t groups, const int32_t* HWY_RESTRICT a_sums, int32_t* HWY_RESTRICT c,
                               std::size_t ldc, std::size_t ncols, bool accumulate) {
  constexpr std::size_t kGroupBytes = kNR * 64;  // one group of a packed panel
  __m512i acc[MR][NR];
  HWY_UNROLL(24)
  for (std::size_t i = 0; i < MR; ++i) {
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  }
  for (std::size_t g = 0; g < groups; ++g) {
    __m512i bv[NR];
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) bv[j] = _mm512_load_si512(b + g * kGroupBytes + j * 64);
    HWY_UNROLL(24)
    for (std::size_t i = 0; i < MR; ++i) {
      int32_t quad;  // A[i][4g … 4g+3]
      std::memcpy(&quad, a + i * lda + g * 4, sizeof(quad));
      const __m512i av = _mm512_set1_epi32(quad);
      HWY_UNROLL(4)
      for (std::size_t j = 0; j < NR; ++j) Dpbusd(acc[i][j], bv[j], av);
    }
  }
  HWY_UNROLL(24)
  for (std::size_t i = 0; i < MR; ++i) {
    // Σ (b+128)·a = Σ b·a + 128·Σ a, in wrapping int32 lanes (exact, see the top of the file).
    const __m512i offset =
        a_sums != nullptr ? _mm512_slli_epi32(_mm512_set1_epi32(a_sums[i]), 7) : _mm512_setzero_si512();
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) {
      __m512i r = _mm512_sub_epi32(acc[i][j], offset);
      int32_t* out = c + i * ldc + j * 16;
      if (ncols >= (j + 1) * 16) {
        if (accumulate) r = _mm512_add_epi32(r, _mm512_loadu_si512(out));
        _mm512_storeu_si512(out, r);
      } else if (ncols > j * 16) {
        const auto mask = static_cast<__mmask16>((1u << (ncols - j * 16)) - 1);
        if (accumulate) r = _mm512_add_epi32(r, _mm512_maskz_loadu_epi32(mask, out));
        _mm512_mask_storeu_epi32(out, mask, r);
      }
    }
  }
}
#undef QTRAIN_VNNI_ATTR

#elif HWY_TARGET != HWY_SCALAR
template <std::size_t MR, std::size_t NR>
void KernelNN(const int16_t* HWY_RESTRICT a, std::size_t lda, const int16_t* HWY_RESTRICT b, std::size_t groups,
              const int32_t* HWY_RESTRICT /*a_sums*/, int32_t* HWY_RESTRICT c, std::size_t ldc, std::size_t ncols,
              bool accumulate) {
  const D32 d32;
  const hn::Repartition<int16_t, D32> d16;
  const std::size_t lanes = hn::Lanes(d32);
  const std::size_t group_elems = kNR * lanes * 2;  // int16 in one group of a packed panel
  // acc1: the odd-lane half on targets whose ReorderWidenMulAccumulate needs two accumulators (EMU128); on x86
  // it stays zero and the compiler drops it.
  V32 acc0[MR][NR], acc1[MR][NR];
  HWY_UNROLL(24)
  for (std::size_t i = 0; i < MR; ++i) {
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) acc0[i][j] = acc1[i][j] = hn::Zero(d32);
  }
  for (std::size_t g = 0; g < groups; ++g) {
    hn::Vec<decltype(d16)> bv[NR];
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) bv[j] = hn::Load(d16, b + g * group_elems + j * lanes * 2);
    HWY_UNROLL(24)
    for (std::size_t i = 0; i < MR; ++i) {
      int32_t pair;  // A[i][2g], A[i][2g+1] as two int16
      std::memcpy(&pair, a + i * lda + g * 2, sizeof(pair));
      const auto av = hn::BitCast(d16, hn::Set(d32, pair));
      HWY_UNROLL(4)
      for (std::size_t j = 0; j < NR; ++j)
        acc0[i][j] = hn::ReorderWidenMulAccumulate(d32, av, bv[j], acc0[i][j], acc1[i][j]);
    }
  }
  HWY_UNROLL(24)
  for (std::size_t i = 0; i < MR; ++i) {
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) {
      V32 r = hn::RearrangeToOddPlusEven(acc0[i][j], acc1[i][j]);
      int32_t* out = c + i * ldc + j * lanes;
      if (ncols >= (j + 1) * lanes) {
        if (accumulate) r = hn::Add(r, hn::LoadU(d32, out));
        hn::StoreU(r, d32, out);
      } else if (ncols > j * lanes) {
        const std::size_t valid = ncols - j * lanes;
        if (accumulate) {
          // Not MaskedLoad: up to SSE4, Highway 1.0.3 implements it as a full aligned load.
          HWY_ALIGN int32_t part[HWY_MAX_BYTES / sizeof(int32_t)] = {};
          std::memcpy(part, out, valid * sizeof(int32_t));
          r = hn::Add(r, hn::Load(d32, part));
        }
        hn::BlendedStore(r, hn::FirstN(d32, valid), d32, out);
      }
    }
  }
}

#else   // HWY_SCALAR: one column per "vector", plain integer arithmetic.
template <std::size_t MR, std::size_t NR>
void KernelNN(const int16_t* HWY_RESTRICT a, std::size_t lda, const int16_t* HWY_RESTRICT b, std::size_t groups,
              const int32_t* HWY_RESTRICT /*a_sums*/, int32_t* HWY_RESTRICT c, std::size_t ldc, std::size_t ncols,
              bool accumulate) {
  int32_t acc[MR][NR] = {};
  for (std::size_t g = 0; g < groups; ++g) {
    const int16_t* bg = b + g * kNR * 2;
    for (std::size_t i = 0; i < MR; ++i) {
      const int16_t* ai = a + i * lda + g * 2;
      for (std::size_t j = 0; j < NR; ++j) acc[i][j] += ai[0] * bg[j * 2] + ai[1] * bg[j * 2 + 1];
    }
  }
  for (std::size_t i = 0; i < MR; ++i)
    for (std::size_t j = 0; j < NR && j < ncols; ++j) c[i * ldc + j] = (accumulate ? c[i * ldc + j] : 0) + acc[i][j];
}
#endif  // HWY_TARGET

using KernelFn = void (*)(const PackedA*, std::size_t, const PackedB*, std::size_t, const int32_t*, int32_t*,
                          std::size_t, std::size_t, bool);

// Every tile shape, indexed [mr−1][nr−1]; null where mr > MaxRows(nr) (never used).
template <std::size_t I>
constexpr KernelFn KernelAt() {
  constexpr std::size_t mr = I / kNR + 1, nr = I % kNR + 1;
  if constexpr (mr <= MaxRows(nr)) {
    return &KernelNN<mr, nr>;
  } else {
    return nullptr;
  }
}
template <std::size_t... I>
constexpr auto MakeKernelTable(std::index_sequence<I...>) {
  return std::array<KernelFn, sizeof...(I)>{KernelAt<I>()...};
}
constexpr auto kKernels = MakeKernelTable(std::make_index_sequence<kRowQuantum * kNR>());

// ---- Driver -------------------------------------------------------------------------------------------------

// C[rows × ncols] (leading dimension ldc) = A (packed rows, leading dimension lda, at this K block) · one
// panel's block of `groups` groups; stored, or added when `accumulate`. Row tiles one after the other against
// the same panel block, which stays in L1.
// sat32(a + b) in int32 lanes: the wrapped sum, or the bound of a's sign where a and b share a sign the sum lost.
HWY_INLINE V32 SaturatedAdd32(V32 a, V32 b) {
  const D32 d;
  const V32 sum = hn::Add(a, b);  // modular
  const auto overflow = hn::Lt(hn::And(hn::Xor(a, sum), hn::Xor(b, sum)), hn::Zero(d));
  const V32 bound = hn::Xor(hn::ShiftRight<31>(a), hn::Set(d, std::numeric_limits<int32_t>::max()));
  return hn::IfThenElse(overflow, bound, sum);
}

// The epilogue (gemm.h) over a finished tile C[rows × ncols] (leading dimension ldc); `bias` at its first column.
void TileEpilogue(int32_t* HWY_RESTRICT c, std::size_t ldc, std::size_t rows, std::size_t ncols,
                  const int32_t* HWY_RESTRICT bias, bool relu) {
  const D32 d;
  const std::size_t lanes = hn::Lanes(d);
  const V32 zero = hn::Zero(d);
  for (std::size_t i = 0; i < rows; ++i) {
    int32_t* row = c + i * ldc;
    std::size_t j = 0;
    for (; j + lanes <= ncols; j += lanes) {
      V32 v = hn::LoadU(d, row + j);
      if (bias != nullptr) v = SaturatedAdd32(v, hn::LoadU(d, bias + j));
      if (relu) v = hn::Max(v, zero);
      hn::StoreU(v, d, row + j);
    }
    for (; j < ncols; ++j) {
      int64_t v = row[j];
      if (bias != nullptr) v += bias[j];
      v = std::clamp<int64_t>(v, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max());
      row[j] = static_cast<int32_t>(relu ? std::max<int64_t>(v, 0) : v);
    }
  }
}

// The epilogue of the product's last K block, for the columns a call writes: `bias` at C's column 0.
struct Epilogue {
  const int32_t* bias;
  bool relu;
};

// C[rows × ncols] (leading dimension ldc) = A (packed rows, leading dimension lda, at this K block) · one
// panel's block of `groups` groups; stored, or added when `accumulate`. Row tiles one after the other against
// the same panel block, which stays in L1; each tile gets the epilogue `ep` (null: none; its bias at this
// panel's first column) right after the kernel wrote it.
void PanelRows(const PackedA* a, std::size_t lda, const int32_t* sums, const PackedB* b, std::size_t groups,
               int32_t* c, std::size_t ldc, std::size_t rows, std::size_t ncols, bool accumulate,
               const Epilogue* ep) {
  const std::size_t lanes = hn::Lanes(D32());
  const std::size_t nr = (ncols + lanes - 1) / lanes;
  const std::size_t tile = MaxRows(nr);
  for (std::size_t i = 0; i < rows; i += tile) {
    const std::size_t mr = std::min(tile, rows - i);
    const int32_t* s = sums != nullptr ? sums + i : nullptr;
    if (mr == kMR && nr == kNR) {
      KernelNN<kMR, kNR>(a + i * lda, lda, b, groups, s, c + i * ldc, ldc, ncols, accumulate);
    } else {
      kKernels[(mr - 1) * kNR + (nr - 1)](a + i * lda, lda, b, groups, s, c + i * ldc, ldc, ncols, accumulate);
    }
    if (ep != nullptr) TileEpilogue(c + i * ldc, ldc, mr, ncols, ep->bias, ep->relu);
  }
}

// The same epilogue shifted to the panel whose first column is `col` (null stays null).
HWY_INLINE const Epilogue* AtColumn(const Epilogue* ep, std::size_t col, Epilogue* storage) {
  if (ep == nullptr) return nullptr;
  *storage = {ep->bias != nullptr ? ep->bias + col : nullptr, ep->relu};
  return storage;
}

// A K block of at most this many groups is "short": C's traffic outweighs B's (see MultiplyBlock).
constexpr std::size_t kShortBlock = 32;

// One K block of `groups` groups over panels [p0, p1): C[rows × cols] (at column 0, leading dimension ldc) =/+=
// A (packed, at this K block) · the panels' blocks, found at b + (p − p0)·stride. When the blocks of all these
// panels fit in half of L1 (a narrow C), or the block is short and they fit in a quarter of L2, the rows go in
// the outer loop: C is then written one row chunk at a time across its full width, not panel by panel (which
// made the int32 output of a short-reduction dgrad go to memory several times). Otherwise panel by panel, each
// block staying in L1.
void MultiplyBlock(const PackedA* a, std::size_t lda, const int32_t* sums, const PackedB* b, std::size_t stride,
                   std::size_t p0, std::size_t p1, std::size_t groups, int32_t* c, std::size_t ldc, std::size_t rows,
                   std::size_t cols, bool accumulate, const Epilogue* ep) {
  Epilogue at;
  const std::size_t pw = PanelWidth();
  const std::size_t bytes = (p1 - p0) * groups * GroupElems() * sizeof(PackedB);
  const bool rows_outer = p1 - p0 > 1 && (bytes <= detail::cache_sizes().l1d / 2 ||
                                          (groups <= kShortBlock && bytes <= detail::cache_sizes().l2 / 4));
  if (rows_outer) {
    for (std::size_t i = 0; i < rows; i += kRowQuantum) {
      const std::size_t mr = std::min(kRowQuantum, rows - i);
      for (std::size_t p = p0; p < p1; ++p) {
        PanelRows(a + i * lda, lda, sums != nullptr ? sums + i : nullptr, b + (p - p0) * stride, groups,
                  c + i * ldc + p * pw, ldc, mr, std::min(pw, cols - p * pw), accumulate, AtColumn(ep, p * pw, &at));
      }
    }
  } else {
    for (std::size_t p = p0; p < p1; ++p) {
      PanelRows(a, lda, sums, b + (p - p0) * stride, groups, c + p * pw, ldc, rows, std::min(pw, cols - p * pw),
                accumulate, AtColumn(ep, p * pw, &at));
    }
  }
}

HWY_INLINE std::size_t DivUp(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

// Multiply-adds per nanosecond one thread of this target sustains on mid-sized products (bench/README.md): the
// time estimate the pool weighs against its fork-join overhead.
constexpr double MacsPerNs() {
#if HWY_TARGET == HWY_AVX3_DL
  return 300.0;
#elif HWY_TARGET == HWY_AVX3
  return 85.0;
#elif HWY_TARGET == HWY_AVX2
  return 60.0;
#elif HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
  return 2.0;
#else
  return 25.0;
#endif
}

// Every panel of B (k × n), all groups → dst ([panel][group][column][kGroup]), split over the pool's panels.
void PackAllPanels(const OperandB& b, std::size_t k, std::size_t n, PackedB* dst, ThreadPool* pool) {
  const std::size_t groups = DivUp(k, kGroup), panels = DivUp(n, PanelWidth());
  const auto task = [&](std::size_t p0, std::size_t p1) {
    for (std::size_t p = p0; p < p1; ++p) PackPanel(b, k, n, p, 0, groups, dst + p * groups * GroupElems());
  };
  if (pool != nullptr && pool->threads() > 1 && panels > 1) {
    pool->parallel_for(panels, 1, task);
  } else {
    task(0, panels);
  }
}

// The blocks of panels [p0, p1), groups [g, g + len), of B: inside the prepacked panels (*stride: a whole
// panel), or packed now into the `slot` scratch (*stride: one block).
const PackedB* PanelBlocks(const OperandB& b, const PackedB* all, std::size_t k, std::size_t n, std::size_t p0,
                           std::size_t p1, std::size_t g, std::size_t len, Slot slot, std::size_t* stride) {
  const std::size_t groups = DivUp(k, kGroup);
  if (all != nullptr) {
    *stride = groups * GroupElems();
    return all + (p0 * groups + g) * GroupElems();
  }
  *stride = len * GroupElems();
  auto* dst = static_cast<PackedB*>(detail::scratch(slot, (p1 - p0) * len * GroupElems() * sizeof(PackedB)));
  for (std::size_t p = p0; p < p1; ++p) PackPanel(b, k, n, p, g, g + len, dst + (p - p0) * len * GroupElems());
  return dst;
}

// C (rows × cols, leading dimension ldc) =/+= A (packed, lda; reduction groups [g0, g1) of B) · panels
// [p0, p1) of B, K block by K block: the first block of the range stores (subtracting the VNNI offset `sums`),
// later ones add. When one K block of all the panels fits in half of L1, each K block's panels are packed
// together and multiplied rows-outer (MultiplyBlock); otherwise panel by panel, each block packed just before
// its rows stream past it.
void MultiplyPanels(const OperandB& b, const PackedB* prepacked, std::size_t k, std::size_t n, std::size_t p0,
                    std::size_t p1, std::size_t g0, std::size_t g1, const PackedA* a, std::size_t lda,
                    const int32_t* sums, int32_t* c, std::size_t ldc, std::size_t rows, Slot slot,
                    const Epilogue* ep) {
  const std::size_t kc = KcGroups();
  const std::size_t np = p1 - p0;
  const std::size_t len0 = std::min(kc, g1 - g0);
  const std::size_t bytes = np * len0 * GroupElems() * sizeof(PackedB);
  const bool together = np > 1 && (bytes <= detail::cache_sizes().l1d / 2 ||
                                   (len0 <= kShortBlock && bytes <= detail::cache_sizes().l2 / 4));
  std::size_t stride = 0;
  if (together) {
    for (std::size_t g = g0; g < g1; g += kc) {
      const std::size_t len = std::min(kc, g1 - g);
      const PackedB* bb = PanelBlocks(b, prepacked, k, n, p0, p1, g, len, slot, &stride);
      MultiplyBlock(a + (g - g0) * kGroup, lda, g == g0 ? sums : nullptr, bb, stride, p0, p1, len, c, ldc, rows, n,
                    g > g0, g + len == g1 ? ep : nullptr);
    }
    return;
  }
  for (std::size_t p = p0; p < p1; ++p) {
    for (std::size_t g = g0; g < g1; g += kc) {
      const std::size_t len = std::min(kc, g1 - g);
      const PackedB* bb = PanelBlocks(b, prepacked, k, n, p, p + 1, g, len, slot, &stride);
      MultiplyBlock(a + (g - g0) * kGroup, lda, g == g0 ? sums : nullptr, bb, stride, p, p + 1, len, c, ldc, rows, n,
                    g > g0, g + len == g1 ? ep : nullptr);
    }
  }
}

// How Gemm splits a product over `threads` threads (see the top of the file); `threads` is already 1 below
// kMinParallelMacs.
GemmSplit ChooseSplit(std::size_t rows, std::size_t cols, std::size_t k, std::size_t threads) {
  const std::size_t kp = DivUp(k, kGroup) * kGroup;
  const std::size_t panels = DivUp(cols, PanelWidth()), tiles = DivUp(rows, kMR);
  // A reduction much longer than C is wide or tall (wgrad of a tall-skinny product): output tiles are too few
  // to balance over the threads, and adding the partial sums costs next to nothing.
  if (threads > 1 && k >= 4 * std::max(rows, cols)) return GemmSplit::kReduction;
  // A larger than a quarter of L2 (it is read once per panel), or too few panels for the threads.
  const std::size_t a_bytes = rows * kp * sizeof(PackedA);
  if (tiles >= 2 * threads && (a_bytes > detail::cache_sizes().l2 / 2 || (threads > 1 && panels < 2 * threads))) {
    return GemmSplit::kRows;
  }
  return GemmSplit::kPanels;
}

void Gemm(const detail::GemmArgs& args, ThreadPool* pool) {
  const std::size_t rows = args.rows, cols = args.cols, k = args.k;
  if (rows == 0 || cols == 0) return;
  const Epilogue epilogue{args.epilogue.bias, args.epilogue.relu};
  const Epilogue* const ep = args.epilogue.empty() ? nullptr : &epilogue;
  if (k == 0) {
    std::memset(args.c, 0, rows * cols * sizeof(int32_t));
    if (ep != nullptr) TileEpilogue(args.c, cols, rows, cols, ep->bias, ep->relu);
    return;
  }
  const std::size_t groups = DivUp(k, kGroup), kp = groups * kGroup;
  const std::size_t panels = DivUp(cols, PanelWidth());
  const bool vnni = HWY_TARGET == HWY_AVX3_DL;
  std::size_t threads = pool != nullptr ? pool->threads() : 1;
  const std::size_t macs = rows * cols * k;
  if (macs < kMinParallelMacs || (threads > 1 && !pool->worth_splitting(static_cast<double>(macs) / MacsPerNs()))) {
    threads = 1;
  }
  ThreadPool* const par = threads > 1 ? pool : nullptr;
  const OperandB& b = args.b;
  const auto* prepacked = static_cast<const PackedB*>(b.packed);
  const GemmSplit split = ChooseSplit(rows, cols, k, threads);

  // By reduction ranges: each task multiplies its K range (whole K blocks where possible) into a partial C.
  if (split == GemmSplit::kReduction) {
    const std::size_t per = DivUp(groups, threads), chunks = DivUp(groups, per);
    auto* partial =
        static_cast<int32_t*>(detail::scratch(Slot::kPartial, (chunks - 1) * rows * cols * sizeof(int32_t)));
    par->parallel_for(chunks, 1, [&](std::size_t c0, std::size_t c1) {
      for (std::size_t ci = c0; ci < c1; ++ci) {
        const std::size_t g0 = ci * per, g1 = std::min(groups, g0 + per);
        int32_t* out = ci == 0 ? args.c : partial + (ci - 1) * rows * cols;
        auto* sums = vnni ? static_cast<int32_t*>(detail::scratch(Slot::kTaskSums, rows * sizeof(int32_t))) : nullptr;
        const ReadyA ra = PrepareA(args.a, 0, rows, g0 * kGroup, std::min(k, g1 * kGroup), sums, Slot::kTaskA,
                                   Slot::kTaskTransposed);
        MultiplyPanels(b, prepacked, k, cols, 0, panels, g0, g1, ra.a, ra.lda, sums, out, cols, rows, Slot::kTaskB,
                       nullptr);
      }
    });
    for (std::size_t ci = 1; ci < chunks; ++ci) {
      const int32_t* src = partial + (ci - 1) * rows * cols;
      for (std::size_t i = 0; i < rows * cols; ++i) args.c[i] += src[i];  // every prefix fits int32 (see top)
    }
    if (ep != nullptr) TileEpilogue(args.c, cols, rows, cols, ep->bias, ep->relu);  // only the sum is final
    return;
  }

  // By row blocks: B packed whole, each task packs and multiplies its rows of A.
  if (split == GemmSplit::kRows) {
    const PackedB* bp = prepacked;
    if (bp == nullptr) {
      auto* dst =
          static_cast<PackedB*>(detail::scratch(Slot::kPackedB, panels * groups * GroupElems() * sizeof(PackedB)));
      PackAllPanels(b, k, cols, dst, par);
      bp = dst;
    }
    // Rows per task: a quarter of L2 of packed A, and at least two tasks per thread for balance.
    const std::size_t l2_rows = detail::cache_sizes().l2 / 4 / (kp * sizeof(PackedA));
    std::size_t mc = std::max<std::size_t>(1, l2_rows / kRowQuantum) * kRowQuantum;
    if (threads > 1) mc = std::min(mc, DivUp(DivUp(rows, kRowQuantum), 2 * threads) * kRowQuantum);
    const auto task = [&](std::size_t i0, std::size_t i1) {
      auto* sums =
          vnni ? static_cast<int32_t*>(detail::scratch(Slot::kTaskSums, (i1 - i0) * sizeof(int32_t))) : nullptr;
      const ReadyA ra = PrepareA(args.a, i0, i1, 0, k, sums, Slot::kTaskA, Slot::kTaskTransposed);
      MultiplyPanels(b, bp, k, cols, 0, panels, 0, groups, ra.a, ra.lda, sums, args.c + i0 * cols, cols, i1 - i0,
                     Slot::kTaskB, ep);
    };
    if (par != nullptr) {
      par->parallel_for(rows, mc, task);
    } else {
      for (std::size_t i = 0; i < rows; i += mc) task(i, std::min(rows, i + mc));
    }
    return;
  }

  // By panels: A prepared once here; each task packs (or finds prepacked) the blocks of its panels.
  auto* sums = vnni ? static_cast<int32_t*>(detail::scratch(Slot::kSums, rows * sizeof(int32_t))) : nullptr;
  const ReadyA ra = PrepareA(args.a, 0, rows, 0, k, sums, Slot::kPackedA, Slot::kTransposed);
  const auto task = [&](std::size_t p0, std::size_t p1) {
    MultiplyPanels(b, prepacked, k, cols, p0, p1, 0, groups, ra.a, ra.lda, sums, args.c, cols, rows, Slot::kTaskB,
                   ep);
  };
  if (par != nullptr) {
    par->parallel_for(panels, 1, task);
  } else {
    task(0, panels);
  }
}

// ---- This target's entry points ------------------------------------------------------------------------------

int64_t TargetBits() { return HWY_TARGET; }

void GemmEntry(const detail::GemmArgs& args, ThreadPool* pool) { Gemm(args, pool); }

GemmSplit SplitEntry(std::size_t rows, std::size_t cols, std::size_t k, std::size_t threads) {
  if (rows * cols * k < kMinParallelMacs) threads = 1;
  return ChooseSplit(rows, cols, k, std::max<std::size_t>(threads, 1));
}

// Bytes of B (k × n) packed whole for this target.
std::size_t PackedBytes(std::size_t k, std::size_t n) {
  return DivUp(n, PanelWidth()) * DivUp(k, kGroup) * GroupElems() * sizeof(PackedB);
}

void PackEntry(const OperandB& b, std::size_t k, std::size_t n, void* dst, ThreadPool* pool) {
  PackAllPanels(b, k, n, static_cast<PackedB*>(dst), pool);
}

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

// ------------------------------------------------------------------------------------------------------------
// Target-independent part: dispatch, scratch, cache sizes, the public functions.
#if HWY_ONCE
#include <cpuinfo.h>

#include <new>
#include <stdexcept>
#include <string>

namespace qtrain::kernels {
HWY_EXPORT(TargetBits);
HWY_EXPORT(GemmEntry);
HWY_EXPORT(PackedBytes);
HWY_EXPORT(PackEntry);
HWY_EXPORT(SplitEntry);

namespace detail {
namespace {

class Scratch {
 public:
  void* get(std::size_t bytes) {
    if (bytes > capacity_) {
      data_ = hwy::AllocateAligned<uint8_t>(bytes);
      if (data_ == nullptr) throw std::bad_alloc();
      capacity_ = bytes;
    }
    return data_.get();
  }

 private:
  hwy::AlignedFreeUniquePtr<uint8_t[]> data_;
  std::size_t capacity_ = 0;
};

thread_local Scratch tl_scratch[static_cast<int>(Slot::kCount)];

}  // namespace

void* scratch(Slot slot, std::size_t bytes) { return tl_scratch[static_cast<int>(slot)].get(bytes); }

const CacheSizes& cache_sizes() {
  // cpuinfo's per-core data caches; the defaults (32 KiB, 1 MiB) when it cannot tell.
  static const CacheSizes sizes = [] {
    CacheSizes s{32 * 1024, 1024 * 1024};
    if (cpuinfo_initialize()) {
      if (cpuinfo_get_l1d_caches_count() > 0 && cpuinfo_get_l1d_cache(0)->size >= 16 * 1024) {
        s.l1d = cpuinfo_get_l1d_cache(0)->size;
      }
      if (cpuinfo_get_l2_caches_count() > 0 && cpuinfo_get_l2_cache(0)->size >= 128 * 1024) {
        s.l2 = cpuinfo_get_l2_cache(0)->size;
      }
    }
    return s;
  }();
  return sizes;
}

void ensure_dispatch_ready();  // dispatch.cc: applies QTRAIN_KERNEL_TARGET once

namespace {

void run(const OperandA& a, const OperandB& b, int32_t* c, std::size_t rows, std::size_t cols, std::size_t k,
         ThreadPool* pool, const GemmEpilogue& epilogue = {}) {
  ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(GemmEntry)(GemmArgs{a, b, c, rows, cols, k, epilogue}, pool);
}

const uint8_t* bytes(const int8_t* p) { return reinterpret_cast<const uint8_t*>(p); }

// W (m × k, int8 or int4 rows) as the B operand of forward (reduction along W's rows' length) or dgrad.
OperandB weights_operand(const uint8_t* w, std::size_t k, bool int4, PackedWeights::Use use) {
  return OperandB{w, int4 ? int4_row_bytes(k) : k, int4, use == PackedWeights::Use::kDgrad, nullptr};
}

PackedWeights pack(PackedWeights::Use use, const uint8_t* w, std::size_t m, std::size_t k, bool int4,
                   ThreadPool* pool) {
  ensure_dispatch_ready();
  const OperandB b = weights_operand(w, k, int4, use);
  // forward: B is k × m (cols = m); dgrad: B is m × k (reduction m, cols = k).
  const std::size_t red = use == PackedWeights::Use::kForward ? k : m;
  const std::size_t cols = use == PackedWeights::Use::kForward ? m : k;
  const std::size_t source_bytes = m * (int4 ? int4_row_bytes(k) : k);
  PackedWeights out = PackedWeights::allocate(use, m, k, int4, HWY_DYNAMIC_DISPATCH(TargetBits)(),
                                              HWY_DYNAMIC_DISPATCH(PackedBytes)(red, cols), w, source_bytes);
  if (red > 0 && cols > 0) HWY_DYNAMIC_DISPATCH(PackEntry)(b, red, cols, out.mutable_panels(), pool);
  return out;
}

// The B operand for a product with packed weights: the panels, or W itself when they were packed for another
// target than the active one.
OperandB packed_operand(const PackedWeights& w, PackedWeights::Use use) {
  OperandB b = weights_operand(w.source(), w.k(), w.int4(), use);
  if (w.target() == HWY_DYNAMIC_DISPATCH(TargetBits)()) b.packed = w.panels();
  return b;
}

void check_use(const PackedWeights& w, PackedWeights::Use use, const char* fn) {
  if (w.use() != use) {
    throw std::invalid_argument(std::string(fn) + ": the weights were not packed for this product (use " +
                                (use == PackedWeights::Use::kForward ? "pack_weights_forward" : "pack_weights_dgrad") +
                                ")");
  }
}

}  // namespace
}  // namespace detail

GemmSplit gemm_split(std::size_t rows, std::size_t cols, std::size_t k, std::size_t threads) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(SplitEntry)(rows, cols, k, threads);
}

void PackedWeights::Free::operator()(void* p) const { hwy::FreeAlignedBytes(p, nullptr, nullptr); }

PackedWeights PackedWeights::allocate(Use use, std::size_t m, std::size_t k, bool int4, int64_t target,
                                      std::size_t panel_bytes, const uint8_t* source, std::size_t source_bytes) {
  PackedWeights w;
  w.use_ = use;
  w.m_ = m;
  w.k_ = k;
  w.int4_ = int4;
  w.target_ = target;
  w.panels_.reset(hwy::AllocateAlignedBytes(std::max<std::size_t>(panel_bytes, 1), nullptr, nullptr));
  if (w.panels_ == nullptr) throw std::bad_alloc();
  w.panel_bytes_ = panel_bytes;
  w.source_ = std::make_unique<uint8_t[]>(std::max<std::size_t>(source_bytes, 1));
  if (source_bytes > 0) std::memcpy(w.source_.get(), source, source_bytes);
  w.source_bytes_ = source_bytes;
  return w;
}

using detail::bytes;
using detail::OperandA;
using detail::OperandB;
using Use = PackedWeights::Use;

void gemm_forward(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                  ThreadPool* pool, const GemmEpilogue& epilogue) {
  detail::run(OperandA{bytes(x), k, false, false}, detail::weights_operand(bytes(w), k, false, Use::kForward), y, n,
              m, k, pool, epilogue);
}

void gemm_dgrad(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
                ThreadPool* pool) {
  detail::run(OperandA{bytes(dy), m, false, false}, detail::weights_operand(bytes(w), k, false, Use::kDgrad), dx, n,
              k, m, pool);
}

void gemm_wgrad(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
                ThreadPool* pool) {
  // A = dYᵀ (m × n, read transposed from dY), B = X (n × k, reduction along its rows).
  detail::run(OperandA{bytes(dy), m, false, true}, OperandB{bytes(x), k, false, true, nullptr}, dw, m, k, n, pool);
}

PackedWeights pack_weights_forward(const int8_t* w, std::size_t m, std::size_t k, ThreadPool* pool) {
  return detail::pack(Use::kForward, bytes(w), m, k, false, pool);
}

PackedWeights pack_weights_dgrad(const int8_t* w, std::size_t m, std::size_t k, ThreadPool* pool) {
  return detail::pack(Use::kDgrad, bytes(w), m, k, false, pool);
}

void gemm_forward_packed(const int8_t* x, const PackedWeights& w, int32_t* y, std::size_t n, ThreadPool* pool,
                         const GemmEpilogue& epilogue) {
  detail::check_use(w, Use::kForward, "gemm_forward_packed");
  detail::ensure_dispatch_ready();
  detail::run(OperandA{bytes(x), w.k(), false, false}, detail::packed_operand(w, Use::kForward), y, n, w.m(), w.k(),
              pool, epilogue);
}

void gemm_dgrad_packed(const int8_t* dy, const PackedWeights& w, int32_t* dx, std::size_t n, ThreadPool* pool) {
  detail::check_use(w, Use::kDgrad, "gemm_dgrad_packed");
  detail::ensure_dispatch_ready();
  detail::run(OperandA{bytes(dy), w.m(), false, false}, detail::packed_operand(w, Use::kDgrad), dx, n, w.k(), w.m(),
              pool);
}

// ---- int4 (int4.h) ----------------------------------------------------------------------------------------------

void gemm_forward_s4(const uint8_t* x, const uint8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                     ThreadPool* pool, const GemmEpilogue& epilogue) {
  detail::run(OperandA{x, int4_row_bytes(k), true, false}, detail::weights_operand(w, k, true, Use::kForward), y, n,
              m, k, pool, epilogue);
}

void gemm_dgrad_s4(const uint8_t* dy, const uint8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
                   ThreadPool* pool) {
  detail::run(OperandA{dy, int4_row_bytes(m), true, false}, detail::weights_operand(w, k, true, Use::kDgrad), dx, n,
              k, m, pool);
}

void gemm_wgrad_s4(const uint8_t* dy, const uint8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
                   ThreadPool* pool) {
  // dY is read transposed: unpacked to int8 first (it is the small operand), then as gemm_wgrad.
  auto* dy8 = static_cast<int8_t*>(detail::scratch(detail::Slot::kUnpacked, n * m));
  unpack_int4(dy, n, m, dy8);
  detail::run(OperandA{bytes(dy8), m, false, true}, OperandB{x, int4_row_bytes(k), true, true, nullptr}, dw, m, k, n,
              pool);
}

PackedWeights pack_weights_forward_s4(const uint8_t* w, std::size_t m, std::size_t k, ThreadPool* pool) {
  return detail::pack(Use::kForward, w, m, k, true, pool);
}

PackedWeights pack_weights_dgrad_s4(const uint8_t* w, std::size_t m, std::size_t k, ThreadPool* pool) {
  return detail::pack(Use::kDgrad, w, m, k, true, pool);
}

void gemm_forward_packed_s4(const uint8_t* x, const PackedWeights& w, int32_t* y, std::size_t n, ThreadPool* pool,
                            const GemmEpilogue& epilogue) {
  detail::check_use(w, Use::kForward, "gemm_forward_packed_s4");
  detail::ensure_dispatch_ready();
  detail::run(OperandA{x, int4_row_bytes(w.k()), true, false}, detail::packed_operand(w, Use::kForward), y, n, w.m(),
              w.k(), pool, epilogue);
}

void gemm_dgrad_packed_s4(const uint8_t* dy, const PackedWeights& w, int32_t* dx, std::size_t n, ThreadPool* pool) {
  detail::check_use(w, Use::kDgrad, "gemm_dgrad_packed_s4");
  detail::ensure_dispatch_ready();
  detail::run(OperandA{dy, int4_row_bytes(w.m()), true, false}, detail::packed_operand(w, Use::kDgrad), dx, n, w.k(),
              w.m(), pool);
}

}  // namespace qtrain::kernels
#endif  // HWY_ONCE
