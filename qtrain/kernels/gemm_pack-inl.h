// Packing the GEMM's operands for the micro-kernels (gemm_driver.cc describes the layout): A rows widened or
// read in place, B cut into panels of 32-bit lanes, int4 unpacked on the way.
// Per-target code, included by gemm_driver.cc once for each Highway target (the -inl.h idiom: the guard flips
// with HWY_TARGET_TOGGLE, so each pass of foreach_target sees the header again).
#if defined(QTRAIN_KERNELS_GEMM_PACK_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef QTRAIN_KERNELS_GEMM_PACK_INL_H_
#undef QTRAIN_KERNELS_GEMM_PACK_INL_H_
#else
#define QTRAIN_KERNELS_GEMM_PACK_INL_H_
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "hwy/highway.h"
#include "qtrain/kernels/gemm_internal.h"
#include "qtrain/kernels/gemm_tile-inl.h"
#include "qtrain/kernels/thread_pool.h"

HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

using detail::OperandA;
using detail::OperandB;
using detail::Slot;

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
__attribute__((target(HWY_TARGET_STR))) void RowSums(const int8_t* HWY_RESTRICT a, std::size_t lda, std::size_t rows,
                                                     std::size_t len, int32_t* HWY_RESTRICT sums) {
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
        const auto x =
            hn::BitCast(dn, hn::Or(hn::And(w, hn::Set(dw, 0x0F)), hn::ShiftLeft<4>(hn::And(w, hn::Set(dw, 0xF0)))));
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
        const auto x =
            hn::BitCast(dn, hn::Or(hn::And(w, hn::Set(dw, 0x0F)), hn::ShiftLeft<12>(hn::And(w, hn::Set(dw, 0xF0)))));
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
      for (; p + hn::Lanes(d16) <= len; p += hn::Lanes(d16))
        hn::StoreU(hn::PromoteTo(d16, hn::LoadU(d8, r8 + p)), d16, out + p);
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
      const auto x1 =
          rows[1] != nullptr ? hn::BitCast(du16, hn::PromoteTo(d16, Load8<kInt4>(rows[1], col0 + c))) : hn::Zero(du16);
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

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // QTRAIN_KERNELS_GEMM_PACK_INL_H_
