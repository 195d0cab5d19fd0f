// int8 × int8 → int32 GEMMs (see gemm.h), one Highway source compiled for every target.
//
// All three layouts reduce to one "NT" product with both operands contiguous along the reduction:
//     C[i][j] = Σ_p A[i][p] · B[j][p]          i < m (rows of A), j < n (rows of B), p < k
//   forward  Y  = X · Wᵀ      A = X,    B = W          (no copies)
//   dgrad    dX = dY · W      A = dY,   B = Wᵀ         (W transposed into scratch)
//   wgrad    dW = dYᵀ · X     A = dYᵀ,  B = Xᵀ         (both transposed into scratch)
// The transposes cost O(rows·cols) against the O(n·m·k) product, and keep a single micro-kernel per target.
//
// Micro-kernel: an MR×NR block of C (rows of A × rows of B) is held in MR·NR vector accumulators that each
// collect lane-wise partial dot products along p; at the end each accumulator is summed horizontally.
//  * AVX3_DL: VNNI `vpdpbusd` multiplies 64 u8×s8 pairs and adds groups of four into 16 int32 lanes. It needs
//    an unsigned left operand, so A is fed as a+128 (a xor 0x80) and the excess 128·Σ_p B[j][p] (precomputed
//    per row of B) is subtracted afterwards. vpdpbusd wraps modulo 2^32 (it is the non-saturating form), and so
//    do our int32 vector adds and the final subtraction; the true result fits int32 (k ≤ kMaxReduction, see
//    gemm.h), so the wrapped result is exact even though Σ(a+128)·b alone may exceed 2^31.
//  * Every other target: sign-extend to int16 and `ReorderWidenMulAccumulate` (pmaddwd on x86: two
//    int16 products summed into int32, |2·128·128| = 2^15 cannot overflow).
// Rows are split into tiles over the thread pool; every C element is computed by exactly one thread with the
// same integer operations, so the result is bit-identical for any thread count (and any target).

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

// The NT problem: C[i][j] = Σ_p a[i·lda + p] · b[j·ldb + p].
struct NTProblem {
  const int8_t* a;
  std::size_t lda;
  const int8_t* b;
  std::size_t ldb;
  int32_t* c;
  std::size_t ldc;
  std::size_t m, n, k;
};

// Per-thread scratch that only grows (64-byte aligned); valid until the next call on the same thread.
int8_t* scratch_a(std::size_t bytes);
int8_t* scratch_b(std::size_t bytes);
int32_t* scratch_i32(std::size_t count);

// Rows of B per cache block, so that a block (rows × k bytes) stays in about half of the L2 cache.
std::size_t b_block_rows(std::size_t k, std::size_t multiple);

}  // namespace qtrain::kernels::detail
#endif  // QTRAIN_KERNELS_GEMM_SHARED_

// ------------------------------------------------------------------------------------------------------------
// Per-target code.
HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Loops over the MR×NR register arrays carry HWY_UNROLL: unrolled before GCC decides where the arrays live,
// they stay in registers; otherwise GCC 12 copies every accumulator between registers (and the stack) on each
// iteration of the k loop.
//
// Register blocking. AVX-512 has 32 vector registers: 16 accumulators + 4 A + 4 B fit. Targets with 16
// registers (SSE, AVX2) get 4×2: 8 accumulators + 4 A + 2 B.
#if HWY_TARGET == HWY_AVX3 || HWY_TARGET == HWY_AVX3_DL
constexpr std::size_t kMR = 4;
constexpr std::size_t kNR = 4;
#else
constexpr std::size_t kMR = 4;
constexpr std::size_t kNR = 2;
#endif

// Highway 1.0.3's AVX3_DL attribute string lacks avx512vnni (it names only avxvnni): the VNNI kernel adds it on
// top of the target's own set (the intrinsic would not inline otherwise; see also Dpbusd below).
#undef QTRAIN_KERNEL_ATTR
#if HWY_TARGET == HWY_AVX3_DL
#define QTRAIN_KERNEL_ATTR __attribute__((target(HWY_TARGET_STR ",avx512vnni")))
#else
#define QTRAIN_KERNEL_ATTR
#endif

using D32 = hn::ScalableTag<int32_t>;
using V32 = hn::Vec<D32>;
// int16 operands of the portable path: twice the lanes of D32 (pairs feed one int32 lane), except on the
// one-lane SCALAR target, whose ReorderWidenMulAccumulate takes one int16 per int32.
#if HWY_TARGET == HWY_SCALAR
using D16 = hn::Rebind<int16_t, D32>;
#else
using D16 = hn::Repartition<int16_t, D32>;
#endif

#if HWY_TARGET != HWY_SCALAR && !HWY_HAVE_SCALABLE
// Adds the 128-bit blocks of v lane-wise: 512 → 256 → 128 bits.
template <class D>
HWY_INLINE hn::Vec<hn::Full128<int32_t>> FoldBlocks(D /*d*/, hn::Vec<D> v) {
  if constexpr (hn::MaxLanes(D()) > 4) {
    const hn::Half<D> dh;
    return FoldBlocks(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)));
  } else {
    return v;
  }
}
#endif

// Sums each of up to four accumulators horizontally, subtracts 128·bsum[j] when `bsum` is given (VNNI
// offset), and stores `nr` results to c[0..nr).
template <std::size_t NR>
HWY_INLINE void ReduceStore(const V32 (&acc)[NR], const int32_t* HWY_RESTRICT bsum, int32_t* HWY_RESTRICT c) {
  static_assert(NR >= 1 && NR <= 4, "the reduction tree handles up to four accumulators");
  const D32 d32;
#if HWY_TARGET != HWY_SCALAR && !HWY_HAVE_SCALABLE
  // Transpose-and-add within each 128-bit block (4 accumulators → one vector whose lane j of every block
  // holds a partial sum of accumulator j), then fold the blocks: ~12 ops instead of 4 full reductions.
  const V32 zero = hn::Zero(d32);
  const V32 a0 = acc[0];
  const V32 a1 = NR > 1 ? acc[NR > 1 ? 1 : 0] : zero;
  const V32 a2 = NR > 2 ? acc[NR > 2 ? 2 : 0] : zero;
  const V32 a3 = NR > 3 ? acc[NR > 3 ? 3 : 0] : zero;
  // Lanes per block: [a0₀+a0₂, a1₀+a1₂, a0₁+a0₃, a1₁+a1₃] and likewise for a2, a3.
  const V32 s01 = hn::Add(hn::InterleaveLower(d32, a0, a1), hn::InterleaveUpper(d32, a0, a1));
  const V32 s23 = hn::Add(hn::InterleaveLower(d32, a2, a3), hn::InterleaveUpper(d32, a2, a3));
  const hn::Repartition<int64_t, D32> d64;
  const V32 s = hn::Add(hn::BitCast(d32, hn::InterleaveLower(d64, hn::BitCast(d64, s01), hn::BitCast(d64, s23))),
                        hn::BitCast(d32, hn::InterleaveUpper(d64, hn::BitCast(d64, s01), hn::BitCast(d64, s23))));
  const hn::Full128<int32_t> d128;
  hn::Vec<decltype(d128)> sum = FoldBlocks(d32, s);
  if (bsum != nullptr) {
    alignas(16) int32_t bs[4] = {0, 0, 0, 0};
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) bs[j] = bsum[j];
    sum = hn::Sub(sum, hn::ShiftLeft<7>(hn::Load(d128, bs)));  // wrapping int32 lanes: exact, see top
  }
  if constexpr (NR == 4) {
    hn::StoreU(sum, d128, c);
  } else {
    alignas(16) int32_t out[4];
    hn::Store(sum, d128, out);
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) c[j] = out[j];
  }
#else
  HWY_UNROLL(4)
  for (std::size_t j = 0; j < NR; ++j) {
    uint32_t s = static_cast<uint32_t>(hn::GetLane(hn::SumOfLanes(d32, acc[j])));
    if (bsum != nullptr) s -= static_cast<uint32_t>(bsum[j]) << 7;
    c[j] = static_cast<int32_t>(s);
  }
#endif
}

#if HWY_TARGET == HWY_AVX3_DL
// acc += Σ₄ u8(a)·s8(b) in each int32 lane, in place. Inline asm rather than _mm512_dpbusd_epi32: with the
// intrinsic, GCC 12 keeps the 16 accumulators in zmm16–31 but computes in zmm0–15 and copies every one back
// and forth (some via the stack) on each iteration, ~1.3× slower.
HWY_INLINE QTRAIN_KERNEL_ATTR void Dpbusd(__m512i& acc, __m512i a, __m512i b) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
}

// VNNI micro-kernel: C[MR×NR] = A[MR rows] · B[NR rows]ᵀ over k, with `bsum[j]` = Σ_p B[j][p].
// Written on raw __m512i.
template <std::size_t MR, std::size_t NR>
QTRAIN_KERNEL_ATTR void KernelNT(const int8_t* HWY_RESTRICT a, std::size_t lda, const int8_t* HWY_RESTRICT b,
                                 std::size_t ldb, std::size_t k, const int32_t* HWY_RESTRICT bsum,
                                 int32_t* HWY_RESTRICT c, std::size_t ldc) {
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i acc[MR][NR];
  HWY_UNROLL(4)
  for (std::size_t i = 0; i < MR; ++i) {
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  }
  // One loop for whole and partial steps: a separate remainder block makes GCC 12 copy every accumulator on
  // each iteration. Masked loads never touch bytes past the end; A's zeroed lanes become 128 after the flip,
  // but B's zeroed lanes make those products 0.
  for (std::size_t p = 0; p < k; p += 64) {
    const __mmask64 mask = _bzhi_u64(~uint64_t{0}, static_cast<unsigned>(std::min<std::size_t>(k - p, 64)));
    __m512i av[MR], bv[NR];
    HWY_UNROLL(4)
    for (std::size_t i = 0; i < MR; ++i) av[i] = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, a + i * lda + p), flip);
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) bv[j] = _mm512_maskz_loadu_epi8(mask, b + j * ldb + p);
    HWY_UNROLL(4)
    for (std::size_t i = 0; i < MR; ++i) {
      HWY_UNROLL(4)
      for (std::size_t j = 0; j < NR; ++j) Dpbusd(acc[i][j], av[i], bv[j]);
    }
  }
  HWY_UNROLL(4)
  for (std::size_t i = 0; i < MR; ++i) {
    V32 row[NR];
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) row[j] = V32{acc[i][j]};
    ReduceStore<NR>(row, bsum, c + i * ldc);
  }
}
#else
// One block of the portable kernel: Lanes(d16) bytes of each row, sign-extended to int16, pairwise
// multiply-added into int32 lanes. acc1 is the odd-lane half on targets whose ReorderWidenMulAccumulate needs
// two accumulators (EMU128); on x86 it stays zero and the compiler drops it.
template <std::size_t MR, std::size_t NR>
HWY_INLINE void StepNT(V32 (&acc0)[MR][NR], V32 (&acc1)[MR][NR], const int8_t* const (&ap)[MR],
                       const int8_t* const (&bp)[NR]) {
  const D16 d16;
  const hn::Rebind<int8_t, D16> d8;  // half-width: one int8 per int16 lane
  const D32 d32;
  hn::Vec<decltype(d16)> av[MR];
  HWY_UNROLL(4)
  for (std::size_t i = 0; i < MR; ++i) av[i] = hn::PromoteTo(d16, hn::LoadU(d8, ap[i]));
  HWY_UNROLL(4)
  for (std::size_t j = 0; j < NR; ++j) {
    const auto bv = hn::PromoteTo(d16, hn::LoadU(d8, bp[j]));
    HWY_UNROLL(4)
    for (std::size_t i = 0; i < MR; ++i)
      acc0[i][j] = hn::ReorderWidenMulAccumulate(d32, av[i], bv, acc0[i][j], acc1[i][j]);
  }
}

// Portable micro-kernel: C[MR×NR] = A[MR rows] · B[NR rows]ᵀ over k.
template <std::size_t MR, std::size_t NR>
QTRAIN_KERNEL_ATTR void KernelNT(const int8_t* HWY_RESTRICT a, std::size_t lda, const int8_t* HWY_RESTRICT b,
                                 std::size_t ldb, std::size_t k, const int32_t* HWY_RESTRICT /*bsum*/,
                                 int32_t* HWY_RESTRICT c, std::size_t ldc) {
  const std::size_t step = hn::Lanes(D16());
  V32 acc0[MR][NR], acc1[MR][NR];
  HWY_UNROLL(4)
  for (std::size_t i = 0; i < MR; ++i) {
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) acc0[i][j] = acc1[i][j] = hn::Zero(D32());
  }
  const int8_t* ap[MR];
  const int8_t* bp[NR];
  std::size_t p = 0;
  for (; p + step <= k; p += step) {
    HWY_UNROLL(4)
    for (std::size_t i = 0; i < MR; ++i) ap[i] = a + i * lda + p;
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) bp[j] = b + j * ldb + p;
    StepNT<MR, NR>(acc0, acc1, ap, bp);
  }
  if (p < k) {
    // Remainder: zero-padded copies of the rows' last k−p bytes, one more block (no reads past the end, no
    // scalar tail loop).
    alignas(HWY_ALIGNMENT) int8_t tail[MR + NR][HWY_MAX_BYTES] = {};
    HWY_UNROLL(4)
    for (std::size_t i = 0; i < MR; ++i) {
      std::memcpy(tail[i], a + i * lda + p, k - p);
      ap[i] = tail[i];
    }
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) {
      std::memcpy(tail[MR + j], b + j * ldb + p, k - p);
      bp[j] = tail[MR + j];
    }
    StepNT<MR, NR>(acc0, acc1, ap, bp);
  }
  HWY_UNROLL(4)
  for (std::size_t i = 0; i < MR; ++i) {
    V32 acc[NR];
    HWY_UNROLL(4)
    for (std::size_t j = 0; j < NR; ++j) acc[j] = hn::RearrangeToOddPlusEven(acc0[i][j], acc1[i][j]);
    ReduceStore<NR>(acc, nullptr, c + i * ldc);
  }
}
#endif

using KernelFn = void (*)(const int8_t*, std::size_t, const int8_t*, std::size_t, std::size_t, const int32_t*, int32_t*,
                          std::size_t);

// Edge tiles (fewer than kMR rows of A or kNR rows of B), indexed [mr−1][nr−1].
template <std::size_t... I>
constexpr auto MakeEdgeTable(std::index_sequence<I...>) {
  return std::array<KernelFn, sizeof...(I)>{&KernelNT<I / kNR + 1, I % kNR + 1>...};
}
constexpr auto kEdgeKernels = MakeEdgeTable(std::make_index_sequence<kMR * kNR>());

// Rows [i0, i1) of C, all columns; B walked in L2-sized blocks so each block is reused by every row group.
void RowsNT(const detail::NTProblem& pr, const int32_t* bsum, std::size_t i0, std::size_t i1) {
  const std::size_t nb = detail::b_block_rows(pr.k, kNR);
  for (std::size_t j0 = 0; j0 < pr.n; j0 += nb) {
    const std::size_t j1 = std::min(pr.n, j0 + nb);
    for (std::size_t i = i0; i < i1; i += kMR) {
      const std::size_t mr = std::min(kMR, i1 - i);
      const int8_t* a = pr.a + i * pr.lda;
      int32_t* c = pr.c + i * pr.ldc;
      for (std::size_t j = j0; j < j1; j += kNR) {
        const std::size_t nr = std::min(kNR, j1 - j);
        const int32_t* bs = bsum != nullptr ? bsum + j : nullptr;
        if (mr == kMR && nr == kNR) {
          KernelNT<kMR, kNR>(a, pr.lda, pr.b + j * pr.ldb, pr.ldb, pr.k, bs, c + j, pr.ldc);
        } else {
          kEdgeKernels[(mr - 1) * kNR + (nr - 1)](a, pr.lda, pr.b + j * pr.ldb, pr.ldb, pr.k, bs, c + j, pr.ldc);
        }
      }
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

// Entry point of this target: the whole NT product, tiled over the pool.
void GemmNT(const detail::NTProblem& pr, ThreadPool* pool) {
  if (pr.m == 0 || pr.n == 0) return;
  const int32_t* bsum = nullptr;
#if HWY_TARGET == HWY_AVX3_DL
  // Row sums of B for the VNNI offset; |Σ| ≤ 128·kMaxReduction < 2^31.
  int32_t* sums = detail::scratch_i32(pr.n);
  for (std::size_t j = 0; j < pr.n; ++j) {
    const int8_t* row = pr.b + j * pr.ldb;
    int32_t s = 0;
    for (std::size_t p = 0; p < pr.k; ++p) s += row[p];
    sums[j] = s;
  }
  bsum = sums;
#endif
  const std::size_t threads = pool != nullptr ? pool->threads() : 1;
  if (threads <= 1) {
    RowsNT(pr, bsum, 0, pr.m);
    return;
  }
  // Two tiles per thread (pthreadpool steals work, so a slower thread hands some over), whole micro-tiles.
  const std::size_t per = (pr.m + 2 * threads - 1) / (2 * threads);
  const std::size_t tile = (per + kMR - 1) / kMR * kMR;
  pool->parallel_for(pr.m, tile, [&](std::size_t i0, std::size_t i1) { RowsNT(pr, bsum, i0, i1); });
}

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

// ------------------------------------------------------------------------------------------------------------
// Target-independent part: dispatch, scratch, transposes, the public functions.
#if HWY_ONCE
#include <cpuinfo.h>

namespace qtrain::kernels {
HWY_EXPORT(GemmNT);
HWY_EXPORT(Transpose8);

namespace detail {
namespace {

template <typename T>
class Scratch {
 public:
  T* get(std::size_t count) {
    if (count > capacity_) {
      data_ = hwy::AllocateAligned<T>(count);
      capacity_ = count;
    }
    return data_.get();
  }

 private:
  hwy::AlignedFreeUniquePtr<T[]> data_;
  std::size_t capacity_ = 0;
};

thread_local Scratch<int8_t> tl_scratch_a;
thread_local Scratch<int8_t> tl_scratch_b;
thread_local Scratch<int32_t> tl_scratch_i32;

std::size_t l2_bytes() {
  static const std::size_t bytes = [] {
    std::size_t size = 0;
    if (cpuinfo_initialize() && cpuinfo_get_l2_caches_count() > 0) size = cpuinfo_get_l2_cache(0)->size;
    return size >= (64u << 10) ? size : std::size_t{256} << 10;  // unknown: assume a small L2
  }();
  return bytes;
}

}  // namespace

int8_t* scratch_a(std::size_t bytes) { return tl_scratch_a.get(bytes); }
int8_t* scratch_b(std::size_t bytes) { return tl_scratch_b.get(bytes); }
int32_t* scratch_i32(std::size_t count) { return tl_scratch_i32.get(count); }

std::size_t b_block_rows(std::size_t k, std::size_t multiple) {
  const std::size_t rows = l2_bytes() / 2 / std::max<std::size_t>(k, 1);
  return std::max(multiple, rows / multiple * multiple);
}

void ensure_dispatch_ready();  // dispatch.cc: applies QTRAIN_KERNEL_TARGET once

}  // namespace detail

// Every entry point first lets dispatch.cc apply QTRAIN_KERNEL_TARGET (a no-op after the first call).
void gemm_forward(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                  ThreadPool* pool) {
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(GemmNT)({x, k, w, k, y, m, n, m, k}, pool);
}

void gemm_dgrad(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
                ThreadPool* pool) {
  detail::ensure_dispatch_ready();
  if (n == 0 || k == 0) return;
  int8_t* wt = detail::scratch_b(m * k);  // K × M
  HWY_DYNAMIC_DISPATCH(Transpose8)(w, m, k, wt);
  HWY_DYNAMIC_DISPATCH(GemmNT)({dy, m, wt, m, dx, k, n, k, m}, pool);
}

void gemm_wgrad(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
                ThreadPool* pool) {
  detail::ensure_dispatch_ready();
  if (m == 0 || k == 0) return;
  int8_t* dyt = detail::scratch_a(n * m);  // M × N
  int8_t* xt = detail::scratch_b(n * k);   // K × N
  HWY_DYNAMIC_DISPATCH(Transpose8)(dy, n, m, dyt);
  HWY_DYNAMIC_DISPATCH(Transpose8)(x, n, k, xt);
  HWY_DYNAMIC_DISPATCH(GemmNT)({dyt, n, xt, n, dw, k, m, k, n}, pool);
}

}  // namespace qtrain::kernels
#endif  // HWY_ONCE
