// The integer softmax's row passes (see int_softmax.h), one Highway source compiled for every target.
//
// Forward, one row at a time, vectorized across the row in int64 lanes (a row of 16 is two AVX-512 vectors); the
// ragged end of a row is a vector padded with a copy of the row's first value (its z' ≤ max, its e zeroed), so every
// pass runs whole vectors over row-sized scratch and stores only the n visible results. Without 64-bit multiplies
// below AVX3, every product is a 32×32 → 64 MulEven on values whose bounds fit its halves:
//  * x·m (|x| ≤ 2^46, 0 < m ≤ 2^16): the low 32 bits unsigned times m plus (the high half, |·| ≤ 2^14, times m) << 32.
//  * d·log2e with d clamped to [−2^21, 0] (the clamp is part of the specification, int_softmax.h): a signed int32
//    product, |·| < 2^38; it is biased by +2^38 (a multiple of 2^32) so floor(/2^16) and the octave are logical shifts.
//  * the interpolation (t[j+1] − t[j] < 2^22) × (l < 2^8): < 2^30.
//  * R_even(mant, sh) with a shift per lane: R_even(2·mant, sh + 1) (the same rational), so the rounding formula
//    floor((x + 2^(s−1) − 1 + bit_s(x)) / 2^s) always has s ≥ 1; shifts ≥ 32 are capped at 33 (both give 0:
//    mant < 2^31).
//  * The quotients floor(e·2^15 / S) without a divide. R = floor((2^62 − 1) / S) once per row (S ≥ 2^30, the max's
//    e = 2^30, so R < 2^32), q' = floor(e·R / 2^47) (e ≤ 2^30: a 32×32 product). Then q' ∈ {q − 1, q}:
//      R ≤ 2^62/S gives q' ≤ e·2^15/S, so q' ≤ q;
//      R > (2^62 − 1)/S − 1 gives e·2^15/S − e·R/2^47 < e·(1 + 1/S)/2^47 ≤ 2^30·(1 + 2^−30)/2^47 < 1, so q' ≥ q − 1.
//    rem' = e·2^15 − q'·S (q'·S ≤ e·2^15 ≤ 2^45: q' times S's two 32-bit halves, summed mod 2^64) lies in [0, 2S);
//    one step (rem' ≥ S: q' + 1, rem' − S) gives the exact quotient and remainder.
//  * The missing units: for rows of up to kRankRow columns each lane counts the columns whose key
//    rem·64 + (63 − j) is larger (keys distinct, < 2^42 since rem < S ≤ 64·2^30: larger remainder first, then lower
//    column), and gets a unit when that rank is below `missing`; longer rows select with nth_element under the same
//    total order. The set of `missing` first elements of a total order is unique, so both equal the reference's
//    partial_sort.
// Backward, per row: pass 1 in int32 lanes (u = R_even(g, k) as in eltwise.h; P·u ≤ 2^30 and every partial sum of
// T is a sum over a subset of columns, |·| ≤ 2^15·Σ P ≤ 2^30, so int32 lanes are exact); pass 2 in int64 lanes:
// d = ±(|w|·(P·m)) with w = (u << 15) − T, |w| ≤ 2^31 and P·m ≤ 2^31 as uint32 halves (product < 2^62).
// The ragged end of a backward row runs the reference's element formulas.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <vector>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/int_softmax.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/exp_table.h"
#include "qtrain/kernels/int_softmax.h"
#include "qtrain/kernels/rounding.h"

// ------------------------------------------------------------------------------------------------------------
// Scalar element functions: the references, and the parts the SIMD code shares (seen once per target pass).
#ifndef QTRAIN_KERNELS_INT_SOFTMAX_SHARED_
#define QTRAIN_KERNELS_INT_SOFTMAX_SHARED_
namespace qtrain::kernels::softmax_detail {

inline constexpr int kZFrac = 16;                       // logits as Q16
inline constexpr int64_t kLog2eQ16 = 94548;             // log2(e)·2^16, rounded
inline constexpr int64_t kZLimit = int64_t{1} << 40;    // the Q16 conversion's clamp
inline constexpr int64_t kZClamp = int64_t{1} << 46;    // before the scale: |z·m| < 2^62
inline constexpr int64_t kDClamp = int64_t{1} << 21;    // z − max below −2^21: e = 0 (int_softmax.h)
inline constexpr std::size_t kRankRow = 32;             // rows up to this length rank in SIMD

inline int64_t q16_one(int32_t v, int shift) {
  return std::clamp(shift_round_even_sat(v, shift), -kZLimit, kZLimit);  // saturation (2^62) clamps too
}
inline int64_t scale_one(int64_t z, int64_t m, int s) {  // |z| ≤ 2^46, m ≤ 2^16: < 2^62
  return shift_round_even(std::clamp(z, -kZClamp, kZClamp) * m, s);
}

// 2^(u / 2^16) for u ≤ 0 as Q30.
inline int64_t exp2_q16(int64_t u) {
  const int64_t ip = u >> kZFrac;  // floor: ≤ 0
  const int64_t frac = u - (ip << kZFrac);
  const auto& t = kExp2Q30;
  const int64_t j = frac >> 8, lo = frac & 0xFF;
  const int64_t mant = t[j] + (((t[j + 1] - t[j]) * lo) >> 8);  // in [2^30, 2^31)
  return shift_round_even(mant, static_cast<int>(-ip));         // 0 beyond 31 octaves down
}
inline int64_t exp_one(int64_t d) { return exp2_q16((std::max(d, -kDClamp) * kLog2eQ16) >> kZFrac); }

// The missing units to the largest remainders, ties to the lower column: the first `missing` columns of that
// total order. partial_sort (the reference) or nth_element (the kernels' long rows) pick the same set.
template <bool kPartialSort>
void add_missing(const int64_t* rem, std::size_t n, int64_t missing, int32_t* p, std::vector<uint32_t>& order) {
  order.resize(n);
  std::iota(order.begin(), order.end(), 0u);
  const auto before = [rem](uint32_t a, uint32_t b) { return rem[a] != rem[b] ? rem[a] > rem[b] : a < b; };
  const auto mid = order.begin() + missing;
  if (kPartialSort) {
    std::partial_sort(order.begin(), mid, order.end(), before);
  } else {
    std::nth_element(order.begin(), mid - 1, order.end(), before);
  }
  for (auto it = order.begin(); it != mid; ++it) ++p[*it];
}

}  // namespace qtrain::kernels::softmax_detail
#endif  // QTRAIN_KERNELS_INT_SOFTMAX_SHARED_

// ------------------------------------------------------------------------------------------------------------
// Per-target code.
HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
namespace sd = qtrain::kernels::softmax_detail;

#if HWY_TARGET != HWY_SCALAR

using D64 = hn::ScalableTag<int64_t>;
using DU64 = hn::RebindToUnsigned<D64>;
using D32W = hn::Repartition<int32_t, D64>;   // the same bits as int32 (MulEven operands)
using DU32W = hn::Repartition<uint32_t, D64>;
using D32H = hn::Rebind<int32_t, D64>;        // one int32 per int64 lane (loads that widen)
using V64 = hn::Vec<D64>;
using VU64 = hn::Vec<DU64>;

// R_even(x, s) for one 1 ≤ s ≤ 62 and |x| ≤ 2^62: floor((x + 2^(s−1) − 1 + bit_s(x)) / 2^s), no overflow.
HWY_INLINE V64 RoundEvenSame(V64 x, int s) {
  const D64 d;
  const V64 odd = hn::And(hn::ShiftRightSame(x, s), hn::Set(d, 1));
  return hn::ShiftRightSame(hn::Add(hn::Add(x, hn::Set(d, (int64_t{1} << (s - 1)) - 1)), odd), s);
}

// x·m for |x| ≤ 2^46, 0 < m ≤ 2^16 (exact, |·| < 2^62).
HWY_INLINE V64 MulSmall(V64 x, int64_t m) {
  const D64 d;
  const auto lo = hn::MulEven(hn::BitCast(DU32W(), x), hn::Set(DU32W(), static_cast<uint32_t>(m)));
  const V64 hi = hn::MulEven(hn::BitCast(D32W(), hn::ShiftRight<32>(x)), hn::Set(D32W(), static_cast<int32_t>(m)));
  return hn::Add(hn::BitCast(d, lo), hn::ShiftLeft<32>(hi));
}

// e = E(d) for d ≤ 0 (int_softmax.h; the steps are proved in the comment at the top of this file).
HWY_INLINE V64 ExpQ30(V64 d) {
  const D64 di;
  const DU64 du;
  const V64 dc = hn::Max(d, hn::Set(di, -sd::kDClamp));
  const V64 prod = hn::MulEven(hn::BitCast(D32W(), dc), hn::Set(D32W(), static_cast<int32_t>(sd::kLog2eQ16)));
  const VU64 ub = hn::ShiftRight<16>(hn::BitCast(du, hn::Add(prod, hn::Set(di, int64_t{1} << 38))));  // u + 2^22
  const VU64 ipb = hn::ShiftRight<16>(ub);                                                          // ip + 64
  const VU64 frac = hn::And(ub, hn::Set(du, 0xFFFF));
  const V64 j = hn::BitCast(di, hn::ShiftRight<8>(frac));
  const VU64 lo = hn::And(frac, hn::Set(du, 0xFF));
  const V64 t0 = hn::GatherIndex(di, qtrain::kExp2Q30.data(), j);
  const V64 t1 = hn::GatherIndex(di, qtrain::kExp2Q30.data() + 1, j);
  const auto slope = hn::MulEven(hn::BitCast(DU32W(), hn::Sub(t1, t0)), hn::BitCast(DU32W(), lo));
  const VU64 mant = hn::Add(hn::BitCast(du, t0), hn::ShiftRight<8>(slope));  // < 2^31
  const VU64 one = hn::Set(du, 1);
  const VU64 s1 = hn::Add(hn::Min(hn::Sub(hn::Set(du, 64), ipb), hn::Set(du, 32)), one);  // −ip + 1, capped at 33
  const VU64 x2 = hn::ShiftLeft<1>(mant);
  const VU64 half_m1 = hn::Sub(hn::Shl(one, hn::Sub(s1, one)), one);
  const VU64 odd = hn::And(hn::Shr(x2, s1), one);
  return hn::BitCast(di, hn::Shr(hn::Add(hn::Add(x2, half_m1), odd), s1));
}

// Per-row scratch: z' (then the rank keys), e, q, remainders; each a whole number of vectors.
struct RowScratch {
  explicit RowScratch(std::size_t cols)
      : np((cols + hn::Lanes(D64()) - 1) / hn::Lanes(D64()) * hn::Lanes(D64())), z(np), e(np), q(np), rem(np) {}
  std::size_t np;
  std::vector<int64_t> z, e, q, rem;
  std::vector<uint32_t> order;
};

// The exponentials of z[0, n) (z padded to whole vectors with values ≤ the max): e written (pads 0), S returned.
int64_t ExpRow(const int64_t* HWY_RESTRICT z, std::size_t n, int64_t m, int64_t* HWY_RESTRICT e) {
  const D64 d;
  const std::size_t lanes = hn::Lanes(d);
  const V64 vm = hn::Set(d, m);
  V64 sum = hn::Zero(d);  // Σ e ≤ n·2^30
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) {
    const V64 v = ExpQ30(hn::Sub(hn::LoadU(d, z + i), vm));
    hn::StoreU(v, d, e + i);
    sum = hn::Add(sum, v);
  }
  if (i < n) {
    const V64 v = hn::IfThenElseZero(hn::FirstN(d, n - i), ExpQ30(hn::Sub(hn::LoadU(d, z + i), vm)));
    hn::StoreU(v, d, e + i);
    sum = hn::Add(sum, v);
  }
  return hn::GetLane(hn::SumOfLanes(d, sum));
}

// From the row's z' (padded): the Q15 probabilities of its n visible columns.
void FinishRow(RowScratch& w, std::size_t n, int64_t zmax, int32_t* HWY_RESTRICT p) {
  const D64 d;
  const DU64 du;
  const DU32W du32;
  const std::size_t lanes = hn::Lanes(d);
  const int64_t s = ExpRow(w.z.data(), n, zmax, w.e.data());
  const uint64_t r = ((uint64_t{1} << 62) - 1) / static_cast<uint64_t>(s);  // < 2^32 (S ≥ 2^30)
  const auto vr = hn::BitCast(du32, hn::Set(du, r));
  const auto s_lo = hn::BitCast(du32, hn::Set(du, static_cast<uint64_t>(s) & 0xFFFFFFFFu));
  const auto s_hi = hn::BitCast(du32, hn::Set(du, static_cast<uint64_t>(s) >> 32));
  const V64 vs = hn::Set(d, s), vs_m1 = hn::Set(d, s - 1);
  const std::size_t nv = (n + lanes - 1) / lanes * lanes;  // the vectors ExpRow wrote (beyond: other rows' data)
  V64 qsum = hn::Zero(d);  // ≤ 2^15
  for (std::size_t i = 0; i < nv; i += lanes) {
    const V64 e = hn::LoadU(d, w.e.data() + i);
    const VU64 q0 = hn::ShiftRight<47>(hn::MulEven(hn::BitCast(du32, e), vr));
    const VU64 qs = hn::Add(hn::MulEven(hn::BitCast(du32, q0), s_lo),
                            hn::ShiftLeft<32>(hn::MulEven(hn::BitCast(du32, q0), s_hi)));
    const V64 rem0 = hn::Sub(hn::ShiftLeft<kSoftmaxPFrac>(e), hn::BitCast(d, qs));  // in [0, 2S)
    const auto fix = hn::Gt(rem0, vs_m1);
    const V64 q = hn::Sub(hn::BitCast(d, q0), hn::VecFromMask(d, fix));
    hn::StoreU(q, d, w.q.data() + i);
    hn::StoreU(hn::IfThenElse(fix, hn::Sub(rem0, vs), rem0), d, w.rem.data() + i);
    qsum = hn::Add(qsum, q);  // pads: e = 0, so q = 0
  }
  const int64_t missing = (int64_t{1} << kSoftmaxPFrac) - hn::GetLane(hn::SumOfLanes(d, qsum));
  if (missing > 0 && n <= sd::kRankRow) {
    int64_t* key = w.z.data();  // z' is no longer needed
    for (std::size_t i = 0; i < nv; i += lanes) {
      const V64 low = hn::Sub(hn::Set(d, 63), hn::Iota(d, static_cast<int64_t>(i)));
      hn::StoreU(hn::Or(hn::ShiftLeft<6>(hn::LoadU(d, w.rem.data() + i)), low), d, key + i);
    }
    const V64 neg_missing = hn::Set(d, -missing);
    for (std::size_t i = 0; i < nv; i += lanes) {
      const V64 k = hn::LoadU(d, key + i);
      V64 neg_rank = hn::Zero(d);  // −#{j < n : key_j > key_i}
      for (std::size_t j = 0; j < n; ++j) neg_rank = hn::Add(neg_rank, hn::VecFromMask(d, hn::Gt(hn::Set(d, key[j]), k)));
      const V64 q = hn::LoadU(d, w.q.data() + i);
      hn::StoreU(hn::Sub(q, hn::VecFromMask(d, hn::Gt(neg_rank, neg_missing))), d, w.q.data() + i);
    }
  }
  for (std::size_t c = 0; c < n; ++c) p[c] = static_cast<int32_t>(w.q[c]);
  if (missing > 0 && n > sd::kRankRow) sd::add_missing<false>(w.rem.data(), n, missing, p, w.order);
}

void SoftmaxForwardI32(const int32_t* HWY_RESTRICT x, const int* q16_shift, const SoftmaxRows& shape, int64_t m,
                       int s, int32_t* HWY_RESTRICT p) {
  const D64 d;
  const D32H dh;
  const std::size_t lanes = hn::Lanes(d);
  RowScratch w(shape.cols);
  HWY_ALIGN int32_t tail[hn::MaxLanes(d)];
  for (std::size_t r = 0; r < shape.rows; ++r) {
    const int32_t* xr = x + r * shape.cols;
    const std::size_t n = shape.visible(r);
    const int sh = q16_shift[r];
    // The Q16 conversion for this row's one shift (int_softmax.h: R_even_sat then the ±2^40 clamp). A left shift by
    // k: clamp to ±2^(40−k) first (±1 and a shift by 40 for k ≥ 40), which is the clamped product exactly.
    const int k = sh >= 0 ? 0 : (sh <= -40 ? 40 : -sh);
    const V64 lim = hn::Set(d, int64_t{1} << (40 - k));
    const auto q16 = [&](V64 v) {
      if (sh >= 32) return hn::Zero(d);  // |x| ≤ 2^31: |x / 2^sh| ≤ ½, and −½ is a tie to 0
      if (sh >= 1) return RoundEvenSame(v, sh);
      return hn::ShiftLeftSame(hn::Min(hn::Max(v, hn::Neg(lim)), lim), k);
    };
    V64 vmax = hn::Set(d, INT64_MIN);
    for (std::size_t i = 0; i < n; i += lanes) {
      const int32_t* src = xr + i;
      if (i + lanes > n) {
        std::fill(tail, tail + lanes, xr[0]);
        std::copy(xr + i, xr + n, tail);
        src = tail;
      }
      const V64 z = RoundEvenSame(MulSmall(q16(hn::PromoteTo(d, hn::LoadU(dh, src))), m), s);
      hn::StoreU(z, d, w.z.data() + i);
      vmax = hn::Max(vmax, z);
    }
    const int64_t zmax = hn::GetLane(hn::MaxOfLanes(d, vmax));
    FinishRow(w, n, zmax, p + r * shape.cols);
  }
}

void SoftmaxForwardQ16(const int64_t* HWY_RESTRICT z, const SoftmaxRows& shape, int64_t m, int s,
                       int32_t* HWY_RESTRICT p) {
  const D64 d;
  const std::size_t lanes = hn::Lanes(d);
  RowScratch w(shape.cols);
  HWY_ALIGN int64_t tail[hn::MaxLanes(d)];
  const V64 lim = hn::Set(d, sd::kZClamp);
  for (std::size_t r = 0; r < shape.rows; ++r) {
    const int64_t* zr = z + r * shape.cols;
    const std::size_t n = shape.visible(r);
    V64 vmax = hn::Set(d, INT64_MIN);
    for (std::size_t i = 0; i < n; i += lanes) {
      const int64_t* src = zr + i;
      if (i + lanes > n) {
        std::fill(tail, tail + lanes, zr[0]);
        std::copy(zr + i, zr + n, tail);
        src = tail;
      }
      const V64 v = hn::Min(hn::Max(hn::LoadU(d, src), hn::Neg(lim)), lim);
      const V64 zs = RoundEvenSame(MulSmall(v, m), s);
      hn::StoreU(zs, d, w.z.data() + i);
      vmax = hn::Max(vmax, zs);
    }
    FinishRow(w, n, hn::GetLane(hn::MaxOfLanes(d, vmax)), p + r * shape.cols);
  }
}

int64_t SoftmaxExpQ30(const int64_t* HWY_RESTRICT z, std::size_t n, int64_t* HWY_RESTRICT e) {
  const D64 d;
  const std::size_t lanes = hn::Lanes(d);
  V64 vmax = hn::Set(d, INT64_MIN);
  std::size_t i = 0;
  for (; i + lanes <= n; i += lanes) vmax = hn::Max(vmax, hn::LoadU(d, z + i));
  int64_t m = hn::GetLane(hn::MaxOfLanes(d, vmax));
  for (; i < n; ++i) m = std::max(m, z[i]);
  // Whole vectors first (E takes any d ≤ 0: the clamp bounds the product), the ragged end by the element formula.
  i = n / lanes * lanes;
  int64_t s = i == 0 ? 0 : ExpRow(z, i, m, e);
  for (; i < n; ++i) s += e[i] = sd::exp_one(z[i] - m);
  return s;
}

// R_even(x, k) for one 1 ≤ k ≤ 31 in int32 lanes: q = x >> k, r = x mod 2^k, q + [r + (q & 1) > 2^(k−1)] (unsigned).
template <class V>
HWY_INLINE V RoundEven32(V x, int k) {
  const hn::DFromV<V> d;
  const hn::RebindToUnsigned<decltype(d)> du;
  const V q = hn::ShiftRightSame(x, k);
  const V r = hn::And(x, hn::Set(d, static_cast<int32_t>((uint32_t{1} << k) - 1)));
  const auto up = hn::Gt(hn::BitCast(du, hn::Add(r, hn::And(q, hn::Set(d, 1)))), hn::Set(du, uint32_t{1} << (k - 1)));
  return hn::Sub(q, hn::VecFromMask(d, hn::RebindMask(d, up)));
}

void SoftmaxBackward(const int32_t* HWY_RESTRICT p, const int32_t* HWY_RESTRICT g, std::size_t rows, std::size_t cols,
                     int k, int64_t m, int64_t* HWY_RESTRICT dout) {
  const hn::ScalableTag<int32_t> d32;
  const D64 d;
  const D32H dh;
  const DU32W du32;
  const std::size_t l32 = hn::Lanes(d32), l64 = hn::Lanes(d);
  std::vector<int32_t> u(cols);
  const auto vm = hn::BitCast(du32, hn::Set(DU64(), static_cast<uint64_t>(m)));
  for (std::size_t r = 0; r < rows; ++r) {
    const int32_t* pr = p + r * cols;
    const int32_t* gr = g + r * cols;
    int64_t* dr = dout + r * cols;
    auto tacc = hn::Zero(d32);  // partial sums of T: |·| ≤ 2^30
    std::size_t j = 0;
    for (; j + l32 <= cols; j += l32) {
      const auto gv = hn::LoadU(d32, gr + j);
      const auto uv = k == 0 ? gv : RoundEven32(gv, k);
      hn::StoreU(uv, d32, u.data() + j);
      tacc = hn::Add(tacc, hn::Mul(hn::LoadU(d32, pr + j), uv));
    }
    int64_t t = hn::GetLane(hn::SumOfLanes(d32, tacc));
    for (; j < cols; ++j) {
      u[j] = static_cast<int32_t>(shift_round_even(gr[j], k));
      t += int64_t{pr[j]} * u[j];
    }
    const V64 vt = hn::Set(d, t);
    for (j = 0; j + l64 <= cols; j += l64) {
      const V64 pv = hn::PromoteTo(d, hn::LoadU(dh, pr + j));
      const V64 wv = hn::Sub(hn::ShiftLeft<kSoftmaxPFrac>(hn::PromoteTo(d, hn::LoadU(dh, u.data() + j))), vt);
      const auto neg = hn::Lt(wv, hn::Zero(d));
      const V64 aw = hn::IfThenElse(neg, hn::Neg(wv), wv);                        // ≤ 2^31
      const auto pm = hn::MulEven(hn::BitCast(du32, pv), vm);                     // P·m ≤ 2^31
      const V64 prod = hn::BitCast(d, hn::MulEven(hn::BitCast(du32, aw), hn::BitCast(du32, pm)));  // < 2^62
      hn::StoreU(hn::IfThenElse(neg, hn::Neg(prod), prod), d, dr + j);
    }
    for (; j < cols; ++j) dr[j] = pr[j] * ((int64_t{u[j]} << kSoftmaxPFrac) - t) * m;
  }
}

#else  // HWY_SCALAR: the references.

void SoftmaxForwardI32(const int32_t* x, const int* q16_shift, const SoftmaxRows& shape, int64_t m, int s,
                       int32_t* p) {
  ref::softmax_forward_i32(x, q16_shift, shape, m, s, p);
}
void SoftmaxForwardQ16(const int64_t* z, const SoftmaxRows& shape, int64_t m, int s, int32_t* p) {
  ref::softmax_forward_q16(z, shape, m, s, p);
}
int64_t SoftmaxExpQ30(const int64_t* z, std::size_t n, int64_t* e) { return ref::softmax_exp_q30(z, n, e); }
void SoftmaxBackward(const int32_t* p, const int32_t* g, std::size_t rows, std::size_t cols, int k, int64_t m,
                     int64_t* d) {
  ref::softmax_backward(p, g, rows, cols, k, m, d);
}

#endif  // HWY_TARGET != HWY_SCALAR

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

// ------------------------------------------------------------------------------------------------------------
// Target-independent part: dispatch and the references.
#if HWY_ONCE
namespace qtrain::kernels {
HWY_EXPORT(SoftmaxForwardI32);
HWY_EXPORT(SoftmaxForwardQ16);
HWY_EXPORT(SoftmaxExpQ30);
HWY_EXPORT(SoftmaxBackward);

namespace detail {
void ensure_dispatch_ready();  // dispatch.cc: applies QTRAIN_KERNEL_TARGET once
}  // namespace detail

namespace {
// The scale the SIMD forward handles (int_softmax.h); to_dyadic's m in [2^15, 2^16], s in [7, 35] always is.
bool simd_scale(int64_t m, int s) { return m >= 1 && m <= (int64_t{1} << 16) && s >= 1 && s <= 62; }
}  // namespace

void softmax_forward_i32(const int32_t* x, const int* q16_shift, const SoftmaxRows& shape, int64_t m, int s,
                         int32_t* p) {
  if (!simd_scale(m, s)) return ref::softmax_forward_i32(x, q16_shift, shape, m, s, p);
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(SoftmaxForwardI32)(x, q16_shift, shape, m, s, p);
}

void softmax_forward_q16(const int64_t* z, const SoftmaxRows& shape, int64_t m, int s, int32_t* p) {
  if (!simd_scale(m, s)) return ref::softmax_forward_q16(z, shape, m, s, p);
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(SoftmaxForwardQ16)(z, shape, m, s, p);
}

int64_t softmax_exp_q30(const int64_t* z, std::size_t n, int64_t* e) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(SoftmaxExpQ30)(z, n, e);
}

void softmax_backward(const int32_t* p, const int32_t* g, std::size_t rows, std::size_t cols, int k, int64_t m,
                      int64_t* d) {
  if (k < 0 || k > 31 || m < 1 || m > (int64_t{1} << 16)) return ref::softmax_backward(p, g, rows, cols, k, m, d);
  detail::ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(SoftmaxBackward)(p, g, rows, cols, k, m, d);
}

namespace ref {
namespace {
namespace sd = softmax_detail;

// Q15 probabilities of one row of n visible columns from its exponentials (sum s > 0): floors, then the missing
// units (0 ≤ missing < n) to the largest remainders (ties: lower column).
void round_row(const int64_t* e, std::size_t n, int64_t s, int32_t* p, std::vector<int64_t>& rem,
               std::vector<uint32_t>& order) {
  int64_t total = 0;
  rem.resize(n);
  for (std::size_t c = 0; c < n; ++c) {
    const int64_t num = e[c] << kSoftmaxPFrac;  // e ≤ 2^30: < 2^45
    p[c] = static_cast<int32_t>(num / s);
    rem[c] = num % s;
    total += p[c];
  }
  const int64_t missing = (int64_t{1} << kSoftmaxPFrac) - total;
  if (missing > 0) sd::add_missing<true>(rem.data(), n, missing, p, order);
}

// One row from its Q16 values z[0, n): scaled in place, exponentials, rounding.
void forward_row(int64_t* z, std::size_t n, int64_t m, int s, int32_t* p, std::vector<int64_t>& e,
                 std::vector<int64_t>& rem, std::vector<uint32_t>& order) {
  for (std::size_t j = 0; j < n; ++j) z[j] = sd::scale_one(z[j], m, s);
  const int64_t sum = softmax_exp_q30(z, n, e.data());
  round_row(e.data(), n, sum, p, rem, order);
}
}  // namespace

void softmax_forward_i32(const int32_t* x, const int* q16_shift, const SoftmaxRows& shape, int64_t m, int s,
                         int32_t* p) {
  std::vector<int64_t> z(shape.cols), e(shape.cols), rem;
  std::vector<uint32_t> order;
  for (std::size_t r = 0; r < shape.rows; ++r) {
    const std::size_t n = shape.visible(r);
    for (std::size_t j = 0; j < n; ++j) z[j] = sd::q16_one(x[r * shape.cols + j], q16_shift[r]);
    forward_row(z.data(), n, m, s, p + r * shape.cols, e, rem, order);
  }
}

void softmax_forward_q16(const int64_t* zq, const SoftmaxRows& shape, int64_t m, int s, int32_t* p) {
  std::vector<int64_t> z(shape.cols), e(shape.cols), rem;
  std::vector<uint32_t> order;
  for (std::size_t r = 0; r < shape.rows; ++r) {
    const std::size_t n = shape.visible(r);
    std::copy(zq + r * shape.cols, zq + r * shape.cols + n, z.begin());
    forward_row(z.data(), n, m, s, p + r * shape.cols, e, rem, order);
  }
}

int64_t softmax_exp_q30(const int64_t* z, std::size_t n, int64_t* e) {
  const int64_t m = *std::max_element(z, z + n);
  int64_t s = 0;  // ≤ n·2^30
  for (std::size_t i = 0; i < n; ++i) s += e[i] = sd::exp_one(z[i] - m);
  return s;
}

void softmax_backward(const int32_t* p, const int32_t* g, std::size_t rows, std::size_t cols, int k, int64_t m,
                      int64_t* d) {
  std::vector<int64_t> u(cols);
  for (std::size_t r = 0; r < rows; ++r) {
    const int32_t* pr = p + r * cols;
    int64_t t = 0;  // Σ P·u: |t| ≤ 2^15·2^15
    for (std::size_t j = 0; j < cols; ++j) {
      u[j] = shift_round_even(g[r * cols + j], k);
      t += pr[j] * u[j];
    }
    for (std::size_t j = 0; j < cols; ++j)  // P ≤ 2^15, |(u << 15) − t| ≤ 2^31, m ≤ 2^16: < 2^62
      d[r * cols + j] = pr[j] * ((u[j] << kSoftmaxPFrac) - t) * m;
  }
}

}  // namespace ref
}  // namespace qtrain::kernels
#endif  // HWY_ONCE
