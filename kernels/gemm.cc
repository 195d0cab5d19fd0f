// int8 × int8 → int32 GEMMs (see gemm.h), one Highway source compiled for every target.
//
// All three layouts run one product, C[i][j] = Σ_p A[i][p] · B[p][j], on operands packed per call:
//   forward  Y[n×m]  = X · Wᵀ    A = X,    B(p, j) = W[j][p]   (B packed from W's rows: a 32-bit transpose)
//   dgrad    dX[n×k] = dY · W    A = dY,   B(p, j) = W[p][j]   (B packed by interleaving W's rows)
//   wgrad    dW[m×k] = dYᵀ · X   A = dYᵀ,  B(p, j) = X[p][j]   (dY transposed, B by interleaving X's rows)
//
// Packing. B is cut into panels of PanelWidth() columns. Within a panel, the reduction is grouped by kGroup
// consecutive p, and one group of one column is a 32-bit lane: [panel][group][column][kGroup]. A is copied
// row by row with its reduction zero-padded to whole groups. Padding contributes nothing, so k, m and n need
// not be multiples of anything.
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
// Rows of C are split into tiles over the thread pool; every element is computed by one thread with the same
// integer operations, so the result is bit-identical for any thread count and any target.

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <utility>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/gemm.cc"
#include "hwy/aligned_allocator.h"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/gemm.h"
#include "kernels/thread_pool.h"

// ------------------------------------------------------------------------------------------------------------
// Declarations shared by all targets (this part is seen once per target pass, hence the guard).
#ifndef QTRAIN_KERNELS_GEMM_SHARED_
#define QTRAIN_KERNELS_GEMM_SHARED_
namespace qtrain::kernels::detail {

// Per-thread scratch that only grows (64-byte aligned); valid until the next call on the same thread. One
// buffer per role, so a call can hold several at once.
enum class Slot { kTransposed, kPackedA, kPackedB, kSums, kCount };
void* scratch(Slot slot, std::size_t bytes);

}  // namespace qtrain::kernels::detail
#endif  // QTRAIN_KERNELS_GEMM_SHARED_

// ------------------------------------------------------------------------------------------------------------
// Per-target code.
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

// Register tile: MR rows × NR vectors, out of 32 vector registers on AVX-512 and 16 on SSE/AVX2.
//   AVX3_DL 6×4: 24 accumulators + 4 B + 1 broadcast.
//   AVX3    6×3: pmaddwd needs a product register before each add; 6×4 spilled accumulators.
//   others  4×2: 8 accumulators + 2 B + broadcast + products.
#if HWY_TARGET == HWY_AVX3_DL
constexpr std::size_t kMR = 6;
constexpr std::size_t kNR = 4;
#elif HWY_TARGET == HWY_AVX3
constexpr std::size_t kMR = 6;
constexpr std::size_t kNR = 3;
#else
constexpr std::size_t kMR = 4;
constexpr std::size_t kNR = 2;
#endif

// Columns per packed panel: the widest tile the micro-kernel computes.
HWY_INLINE std::size_t PanelWidth() { return kNR * hn::Lanes(D32()); }

// ---- Packing ------------------------------------------------------------------------------------------------

// a (rows × k, leading dimension lda) → dst (rows × kp), zero-padded, as PackedA; with VNNI, also Σ_p of each
// row (|Σ| ≤ 128·kMaxReduction < 2^31).
void PackA(const int8_t* HWY_RESTRICT a, std::size_t lda, std::size_t rows, std::size_t k, std::size_t kp,
           PackedA* HWY_RESTRICT dst, int32_t* HWY_RESTRICT sums) {
  for (std::size_t i = 0; i < rows; ++i) {
    const int8_t* row = a + i * lda;
    PackedA* out = dst + i * kp;
    int32_t s = 0;
    for (std::size_t p = 0; p < k; ++p) {
      out[p] = static_cast<PackedA>(row[p]);
      s += row[p];
    }
    for (std::size_t p = k; p < kp; ++p) out[p] = 0;
    if (sums != nullptr) sums[i] = s;
  }
}

// The packed value of one B element. Padding is PackedB{0}, which contributes 0 (under VNNI: u8 0, not 0 ^ 0x80).
HWY_INLINE PackedB PackValue(int8_t v) {
#if HWY_TARGET == HWY_AVX3_DL
  return static_cast<uint8_t>(static_cast<uint8_t>(v) ^ 0x80);
#else
  return v;
#endif
}

// B stored with the reduction along rows: b (k rows × n columns, leading dimension ldb) → panels. Lane
// (column) j of group g gets rows g·kGroup … g·kGroup+kGroup−1 of column j: an interleave of kGroup rows,
// 16 (VNNI) or 8 columns at a time. Ragged columns and padding take the scalar loop. Packs panels [p0, p1).
void PackRows(const int8_t* HWY_RESTRICT b, std::size_t ldb, std::size_t k, std::size_t n, PackedB* HWY_RESTRICT dst,
              std::size_t p0, std::size_t p1) {
  const std::size_t pw = PanelWidth();
  const std::size_t groups = (k + kGroup - 1) / kGroup;
  for (std::size_t col0 = p0 * pw; col0 < std::min(n, p1 * pw); col0 += pw) {
    const std::size_t cols = std::min(pw, n - col0);
    for (std::size_t g = 0; g < groups; ++g) {
      PackedB* out = dst + ((col0 / pw) * groups + g) * pw * kGroup;
      const int8_t* rows[kGroup];  // null: padding row beyond k
      for (std::size_t q = 0; q < kGroup; ++q) {
        const std::size_t p = g * kGroup + q;
        rows[q] = p < k ? b + p * ldb + col0 : nullptr;
      }
      std::size_t c = 0;
#if HWY_TARGET == HWY_AVX3_DL
      const hn::Full128<uint8_t> du8;
      const hn::Full128<uint16_t> du16;
      const auto flip = hn::Set(du8, 0x80);
      for (; c + 16 <= cols; c += 16) {
        hn::Vec<decltype(du8)> f[4];
        for (std::size_t q = 0; q < 4; ++q) {
          f[q] = rows[q] != nullptr ? hn::Xor(hn::LoadU(du8, reinterpret_cast<const uint8_t*>(rows[q]) + c), flip)
                                    : hn::Zero(du8);
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
      const hn::Full64<int8_t> d8;
      const hn::Full128<int16_t> d16;
      const hn::Full128<uint16_t> du16;
      for (; c + 8 <= cols; c += 8) {
        const auto x0 = hn::BitCast(du16, hn::PromoteTo(d16, hn::LoadU(d8, rows[0] + c)));
        const auto x1 =
            rows[1] != nullptr ? hn::BitCast(du16, hn::PromoteTo(d16, hn::LoadU(d8, rows[1] + c))) : hn::Zero(du16);
        hn::StoreU(hn::BitCast(d16, hn::InterleaveLower(du16, x0, x1)), d16, out + c * 2);
        hn::StoreU(hn::BitCast(d16, hn::InterleaveUpper(du16, x0, x1)), d16, out + c * 2 + 8);
      }
#endif
      for (; c < cols; ++c) {
        for (std::size_t q = 0; q < kGroup; ++q) out[c * kGroup + q] = rows[q] != nullptr ? PackValue(rows[q][c]) : 0;
      }
      std::memset(out + cols * kGroup, 0, (pw - cols) * kGroup * sizeof(PackedB));  // padding columns
    }
  }
}

// B stored with the reduction along columns (forward: B(p, j) = W[j][p]): w (n rows × k, leading dimension ldw)
// → panels. Lane j of group g is the kGroup bytes W[j][g·kGroup …], so this is a transpose of 32-bit (VNNI) or
// 16-bit (widened to 32-bit) units: 4 rows × 4 groups at a time through a 4×4 transpose of 32-bit lanes. Packs
// panels [p0, p1).
void PackCols(const int8_t* HWY_RESTRICT w, std::size_t ldw, std::size_t k, std::size_t n, PackedB* HWY_RESTRICT dst,
              std::size_t p0, std::size_t p1) {
  const std::size_t pw = PanelWidth();
  const std::size_t groups = (k + kGroup - 1) / kGroup;
  for (std::size_t col0 = p0 * pw; col0 < std::min(n, p1 * pw); col0 += pw) {
    const std::size_t cols = std::min(pw, n - col0);
    PackedB* panel = dst + (col0 / pw) * groups * pw * kGroup;
    std::size_t g4 = 0;  // groups done by the vector loop (multiple of 4)
    std::size_t c4 = 0;  // columns done by the vector loop (multiple of 4)
#if HWY_TARGET != HWY_SCALAR
    const hn::Full128<uint32_t> d32;
    const hn::Full128<uint64_t> d64;
    g4 = k / (4 * kGroup) * 4;
    c4 = cols / 4 * 4;
    for (std::size_t c = 0; c < c4; c += 4) {
      for (std::size_t g = 0; g < g4; g += 4) {
        hn::Vec<decltype(d32)> v[4];  // v[r]: groups g…g+3 of column c+r
        for (std::size_t r = 0; r < 4; ++r) {
          const int8_t* src = w + (col0 + c + r) * ldw + g * kGroup;
#if HWY_TARGET == HWY_AVX3_DL
          const hn::Full128<uint8_t> du8;
          v[r] = hn::BitCast(d32, hn::Xor(hn::LoadU(du8, reinterpret_cast<const uint8_t*>(src)), hn::Set(du8, 0x80)));
#else
          v[r] = hn::BitCast(d32, hn::PromoteTo(hn::Full128<int16_t>(), hn::LoadU(hn::Full64<int8_t>(), src)));
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
          hn::StoreU(out[t], d32, reinterpret_cast<uint32_t*>(panel + ((g + t) * pw + c) * kGroup));
        }
      }
    }
#endif
    // Everything the vector loop left: groups beyond g4 for its columns, then the other columns; padding.
    for (std::size_t c = 0; c < cols; ++c) {
      for (std::size_t g = c < c4 ? g4 : 0; g < groups; ++g) {
        for (std::size_t q = 0; q < kGroup; ++q) {
          const std::size_t p = g * kGroup + q;
          panel[(g * pw + c) * kGroup + q] = p < k ? PackValue(w[(col0 + c) * ldw + p]) : PackedB{0};
        }
      }
    }
    for (std::size_t g = 0; g < groups; ++g) {
      std::memset(panel + (g * pw + cols) * kGroup, 0, (pw - cols) * kGroup * sizeof(PackedB));
    }
  }
}

// dst (cols × rows) = srcᵀ for an int8 matrix src (rows × cols). Whole 16×16 blocks go through the classic
// four-stage interleave network (8-, 16-, 32-, 64-bit) on 128-bit vectors; the ragged right and bottom edges,
// and the SCALAR target, take the plain loop.
void Transpose8(const int8_t* HWY_RESTRICT src, std::size_t rows, std::size_t cols, int8_t* HWY_RESTRICT dst) {
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
      for (std::size_t r = 0; r < 16; ++r) a[r] = hn::LoadU(d8, s + (r0 + r) * cols + c0);
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
        hn::StoreU(hn::BitCast(d8, hn::InterleaveLower(d64, x, y)), d8, o + (c0 + 2 * u) * rows + r0);
        hn::StoreU(hn::BitCast(d8, hn::InterleaveUpper(d64, x, y)), d8, o + (c0 + 2 * u + 1) * rows + r0);
      }
    }
  }
#endif
  // Edges: columns right of the last whole block (all rows), rows below it (whole-block columns).
  for (std::size_t r = 0; r < rows; ++r)
    for (std::size_t c = cols16; c < cols; ++c) dst[c * rows + r] = src[r * cols + c];
  for (std::size_t r = rows16; r < rows; ++r)
    for (std::size_t c = 0; c < cols16; ++c) dst[c * rows + r] = src[r * cols + c];
}

// ---- Micro-kernels ------------------------------------------------------------------------------------------
// C[MR rows × NR vectors of columns] = A[MR rows] · panel, over `groups` groups; `ncols` (≤ NR·lanes) columns
// are stored (the rest of the panel is padding). `a_sums`: VNNI offset correction, else unused.
// Loops over the register arrays carry HWY_UNROLL: unrolled before GCC 12 decides where the arrays live, they
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
                               std::size_t ldc, std::size_t ncols) {
  constexpr std::size_t kGroupBytes = kNR * 64;  // one group of a packed panel
  __m512i acc[MR][NR];
  HWY_UNROLL(6)
  for (std::size_t i = 0; i < MR; ++i) {
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  }
  for (std::size_t g = 0; g < groups; ++g) {
    __m512i bv[NR];
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) bv[j] = _mm512_load_si512(b + g * kGroupBytes + j * 64);
    HWY_UNROLL(6)
    for (std::size_t i = 0; i < MR; ++i) {
      int32_t quad;  // A[i][4g … 4g+3]
      std::memcpy(&quad, a + i * lda + g * 4, sizeof(quad));
      const __m512i av = _mm512_set1_epi32(quad);
      HWY_UNROLL(4)
      for (std::size_t j = 0; j < NR; ++j) Dpbusd(acc[i][j], bv[j], av);
    }
  }
  HWY_UNROLL(6)
  for (std::size_t i = 0; i < MR; ++i) {
    // Σ (b+128)·a = Σ b·a + 128·Σ a, in wrapping int32 lanes (exact, see the top of the file).
    const __m512i offset = _mm512_slli_epi32(_mm512_set1_epi32(a_sums[i]), 7);
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) {
      const __m512i r = _mm512_sub_epi32(acc[i][j], offset);
      int32_t* out = c + i * ldc + j * 16;
      if (ncols >= (j + 1) * 16) {
        _mm512_storeu_si512(out, r);
      } else if (ncols > j * 16) {
        _mm512_mask_storeu_epi32(out, static_cast<__mmask16>((1u << (ncols - j * 16)) - 1), r);
      }
    }
  }
}
#undef QTRAIN_VNNI_ATTR

#elif HWY_TARGET != HWY_SCALAR
template <std::size_t MR, std::size_t NR>
void KernelNN(const int16_t* HWY_RESTRICT a, std::size_t lda, const int16_t* HWY_RESTRICT b, std::size_t groups,
              const int32_t* HWY_RESTRICT /*a_sums*/, int32_t* HWY_RESTRICT c, std::size_t ldc, std::size_t ncols) {
  const D32 d32;
  const hn::Repartition<int16_t, D32> d16;
  const std::size_t lanes = hn::Lanes(d32);
  const std::size_t group_elems = kNR * lanes * 2;  // int16 in one group of a packed panel
  // acc1: the odd-lane half on targets whose ReorderWidenMulAccumulate needs two accumulators (EMU128); on x86
  // it stays zero and the compiler drops it.
  V32 acc0[MR][NR], acc1[MR][NR];
  HWY_UNROLL(4)
  for (std::size_t i = 0; i < MR; ++i) {
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) acc0[i][j] = acc1[i][j] = hn::Zero(d32);
  }
  for (std::size_t g = 0; g < groups; ++g) {
    hn::Vec<decltype(d16)> bv[NR];
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) bv[j] = hn::Load(d16, b + g * group_elems + j * lanes * 2);
    HWY_UNROLL(6)
    for (std::size_t i = 0; i < MR; ++i) {
      int32_t pair;  // A[i][2g], A[i][2g+1] as two int16
      std::memcpy(&pair, a + i * lda + g * 2, sizeof(pair));
      const auto av = hn::BitCast(d16, hn::Set(d32, pair));
      HWY_UNROLL(4)
      for (std::size_t j = 0; j < NR; ++j)
        acc0[i][j] = hn::ReorderWidenMulAccumulate(d32, av, bv[j], acc0[i][j], acc1[i][j]);
    }
  }
  HWY_UNROLL(6)
  for (std::size_t i = 0; i < MR; ++i) {
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) {
      const V32 r = hn::RearrangeToOddPlusEven(acc0[i][j], acc1[i][j]);
      int32_t* out = c + i * ldc + j * lanes;
      if (ncols >= (j + 1) * lanes) {
        hn::StoreU(r, d32, out);
      } else if (ncols > j * lanes) {
        hn::BlendedStore(r, hn::FirstN(d32, ncols - j * lanes), d32, out);
      }
    }
  }
}

#else   // HWY_SCALAR: one column per "vector", plain integer arithmetic.
template <std::size_t MR, std::size_t NR>
void KernelNN(const int16_t* HWY_RESTRICT a, std::size_t lda, const int16_t* HWY_RESTRICT b, std::size_t groups,
              const int32_t* HWY_RESTRICT /*a_sums*/, int32_t* HWY_RESTRICT c, std::size_t ldc, std::size_t ncols) {
  int32_t acc[MR][NR] = {};
  for (std::size_t g = 0; g < groups; ++g) {
    const int16_t* bg = b + g * kNR * 2;
    for (std::size_t i = 0; i < MR; ++i) {
      const int16_t* ai = a + i * lda + g * 2;
      for (std::size_t j = 0; j < NR; ++j) acc[i][j] += ai[0] * bg[j * 2] + ai[1] * bg[j * 2 + 1];
    }
  }
  for (std::size_t i = 0; i < MR; ++i)
    for (std::size_t j = 0; j < NR && j < ncols; ++j) c[i * ldc + j] = acc[i][j];
}
#endif  // HWY_TARGET

using KernelFn = void (*)(const PackedA*, std::size_t, const PackedB*, std::size_t, const int32_t*, int32_t*,
                          std::size_t, std::size_t);

// All tile shapes, indexed [mr−1][nr−1]: edges have fewer than kMR rows or kNR vectors of columns.
template <std::size_t... I>
constexpr auto MakeKernelTable(std::index_sequence<I...>) {
  return std::array<KernelFn, sizeof...(I)>{&KernelNN<I / kNR + 1, I % kNR + 1>...};
}
constexpr auto kKernels = MakeKernelTable(std::make_index_sequence<kMR * kNR>());

// ---- Driver -------------------------------------------------------------------------------------------------

struct Packed {
  const PackedA* a;  // rows × lda
  std::size_t lda;
  const PackedB* b;  // panels
  const int32_t* a_sums;
  int32_t* c;
  std::size_t ldc;
  std::size_t rows, cols, groups;
};

// Rows [i0, i1) of C within panel `panel` (PanelWidth() columns): one row group after the other against the
// same packed panel, which stays in L2 (kp · PanelWidth() · 4 bytes: 64 KB at k = 1024 on AVX3_DL).
void PanelRows(const Packed& pk, std::size_t panel, std::size_t i0, std::size_t i1) {
  const std::size_t pw = PanelWidth(), lanes = hn::Lanes(D32());
  const std::size_t col0 = panel * pw;
  const std::size_t ncols = std::min(pw, pk.cols - col0);
  const std::size_t nr = (ncols + lanes - 1) / lanes;
  const PackedB* b = pk.b + panel * pk.groups * pw * kGroup;
  for (std::size_t i = i0; i < i1; i += kMR) {
    const std::size_t mr = std::min(kMR, i1 - i);
    const PackedA* a = pk.a + i * pk.lda;
    const int32_t* sums = pk.a_sums != nullptr ? pk.a_sums + i : nullptr;
    int32_t* c = pk.c + i * pk.ldc + col0;
    if (mr == kMR && nr == kNR) {
      KernelNN<kMR, kNR>(a, pk.lda, b, pk.groups, sums, c, pk.ldc, ncols);
    } else {
      kKernels[(mr - 1) * kNR + (nr - 1)](a, pk.lda, b, pk.groups, sums, c, pk.ldc, ncols);
    }
  }
}

// B's layout in memory: reduction along its rows (dgrad, wgrad) or along its columns (forward).
enum class BLayout { kReductionRows, kReductionCols };

// C (rows × cols) = A (rows × k, row-major, leading dimension lda) · B, with B given as b (k × cols, kReductionRows)
// or as its transpose (cols × k, kReductionCols), leading dimension ldb. Packs both, tiles rows over the pool.
void Gemm(const int8_t* a, std::size_t lda, const int8_t* b, std::size_t ldb, BLayout layout, int32_t* c,
          std::size_t rows, std::size_t cols, std::size_t k, ThreadPool* pool) {
  if (rows == 0 || cols == 0) return;
  const std::size_t groups = (k + kGroup - 1) / kGroup, kp = groups * kGroup;
  const std::size_t pw = PanelWidth(), panels = (cols + pw - 1) / pw;
  auto* ap = static_cast<PackedA*>(detail::scratch(detail::Slot::kPackedA, rows * kp * sizeof(PackedA)));
  auto* bp =
      static_cast<PackedB*>(detail::scratch(detail::Slot::kPackedB, panels * groups * pw * kGroup * sizeof(PackedB)));
  int32_t* sums = nullptr;
#if HWY_TARGET == HWY_AVX3_DL
  sums = static_cast<int32_t*>(detail::scratch(detail::Slot::kSums, rows * sizeof(int32_t)));
#endif
  PackA(a, lda, rows, k, kp, ap, sums);  // small: the batch (forward, dgrad) or dYᵀ (wgrad)
  const auto pack_b = [&](std::size_t p0, std::size_t p1) {
    if (layout == BLayout::kReductionRows) {
      PackRows(b, ldb, k, cols, bp, p0, p1);
    } else {
      PackCols(b, ldb, k, cols, bp, p0, p1);
    }
  };
  const Packed pk{ap, kp, bp, sums, c, cols, rows, cols, groups};
  const std::size_t threads = pool != nullptr ? pool->threads() : 1;
  if (threads <= 1 || panels >= threads) {
    // Tasks are whole panels: pack one, multiply it by all of A while it is hot. Each thread packs the panels
    // it multiplies, so packed B never moves between cores (splitting rows instead made 2 threads slower
    // than 1 at batch 64). pthreadpool steals single panels when the split is uneven.
    const auto panel_task = [&](std::size_t p0, std::size_t p1) {
      for (std::size_t p = p0; p < p1; ++p) {
        pack_b(p, p + 1);
        PanelRows(pk, p, 0, rows);
      }
    };
    if (threads <= 1) {
      panel_task(0, panels);
    } else {
      pool->parallel_for(panels, 1, panel_task);
    }
    return;
  }
  // Fewer panels than threads (a narrow C, e.g. the classifier layer): pack B here, split the rows.
  pack_b(0, panels);
  const std::size_t per = (rows + threads - 1) / threads;
  const std::size_t tile = (per + kMR - 1) / kMR * kMR;
  pool->parallel_for(rows, tile, [&](std::size_t i0, std::size_t i1) {
    for (std::size_t p = 0; p < panels; ++p) PanelRows(pk, p, i0, i1);
  });
}

// This target's entry points (see gemm.h for the layouts).
void GemmForward(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                 ThreadPool* pool) {
  Gemm(x, k, w, k, BLayout::kReductionCols, y, n, m, k, pool);  // B(p, j) = W[j][p]
}

void GemmDgrad(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
               ThreadPool* pool) {
  Gemm(dy, m, w, k, BLayout::kReductionRows, dx, n, k, m, pool);  // A = dY, B = W
}

void GemmWgrad(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
               ThreadPool* pool) {
  if (m == 0 || k == 0) return;
  auto* dyt = static_cast<int8_t*>(detail::scratch(detail::Slot::kTransposed, n * m));  // M × N
  Transpose8(dy, n, m, dyt);
  Gemm(dyt, n, x, k, BLayout::kReductionRows, dw, m, k, n, pool);  // A = dYᵀ, B = X
}

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

// ------------------------------------------------------------------------------------------------------------
// Target-independent part: dispatch, scratch, the public functions.
#if HWY_ONCE
namespace qtrain::kernels {
HWY_EXPORT(GemmForward);
HWY_EXPORT(GemmDgrad);
HWY_EXPORT(GemmWgrad);

namespace detail {
namespace {

class Scratch {
 public:
  void* get(std::size_t bytes) {
    if (bytes > capacity_) {
      data_ = hwy::AllocateAligned<uint8_t>(bytes);
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

void ensure_dispatch_ready();  // dispatch.cc: applies QTRAIN_KERNEL_TARGET once

}  // namespace detail

// Every entry point first lets dispatch.cc apply QTRAIN_KERNEL_TARGET (a no-op after the first call).
void gemm_forward(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                  ThreadPool* pool) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(GemmForward)(x, w, y, n, m, k, pool);
}

void gemm_dgrad(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
                ThreadPool* pool) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(GemmDgrad)(dy, w, dx, n, m, k, pool);
}

void gemm_wgrad(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
                ThreadPool* pool) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(GemmWgrad)(dy, x, dw, n, m, k, pool);
}

}  // namespace qtrain::kernels
#endif  // HWY_ONCE
