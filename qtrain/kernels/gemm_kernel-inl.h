// The GEMM's micro-kernels (one register tile of C over one panel block) and the forward epilogue applied to a
// finished tile.
// Per-target code, included by gemm_driver.cc once for each Highway target (the -inl.h idiom: the guard flips
// with HWY_TARGET_TOGGLE, so each pass of foreach_target sees the header again).
#if defined(QTRAIN_KERNELS_GEMM_KERNEL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QTRAIN_KERNELS_GEMM_KERNEL_INL_H_
#undef QTRAIN_KERNELS_GEMM_KERNEL_INL_H_
#else
#define QTRAIN_KERNELS_GEMM_KERNEL_INL_H_
#endif

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#include "hwy/highway.h"
#include "qtrain/kernels/gemm_tile-inl.h"

HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

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

// ---- Epilogue ------------------------------------------------------------------------------------------------

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

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // QTRAIN_KERNELS_GEMM_KERNEL_INL_H_
