// The integer AdamW passes (see adamw_update.h).
#include "qtrain/kernels/adamw_update.h"

#include <algorithm>
#include <cmath>

#include "qtrain/kernels/rounding.h"

namespace qtrain::kernels {
namespace {

__extension__ using i128 = __int128;  // GCC/Clang extension: the moments' 93-bit products
__extension__ using u128 = unsigned __int128;
constexpr int64_t kLimit62 = int64_t{1} << 62;
constexpr i128 kLimit94 = i128{1} << 94;

// R_even for int128, s ≥ 1: floor plus a remainder above half, or exactly half with an odd quotient.
[[gnu::always_inline]] inline i128 round_even(i128 x, int s) {
  if (s >= 126) return 0;  // |x| < 2^125 here: |x / 2^s| < ½
  const i128 q = x >> s;
  const auto r = static_cast<u128>(x) & ((static_cast<u128>(1) << s) - 1);
  const auto half = static_cast<u128>(1) << (s - 1);
  return q + ((r > half || (r == half && (q & 1) != 0)) ? 1 : 0);
}

// T(x, k): x·2^k for k ≥ 0 (the caller's bound keeps it below 2^62 — clamped there as a guard), else R_even(x, −k).
[[gnu::always_inline]] inline i128 term(i128 x, int k) {
  if (k < 0) return round_even(x, -k);
  if (x == 0) return 0;
  if (k >= 62) return x < 0 ? -kLimit62 : kLimit62;
  const i128 y = x * (i128{1} << k);
  return std::clamp<i128>(y, -kLimit62, kLimit62);
}
// The same for a product that fits int64 (|x| < 2^63): T(x, k) = R_even(x, −k), saturating at ±2^62 for k ≥ 0
// (clamping to ±2^(62−k) first is shift_left_sat without its bit count: the same value, no branch).
[[gnu::always_inline]] inline int64_t term64(int64_t x, int k) {
  if (k < 0) return shift_round_even(x, -k);
  if (k >= 62) return x == 0 ? 0 : (x < 0 ? -kLimit62 : kLimit62);
  const int64_t lim = int64_t{1} << (62 - k);
  return std::clamp(x, -lim, lim) << k;
}

[[gnu::always_inline]] inline int64_t clamp62(i128 x) {
  return static_cast<int64_t>(std::clamp<i128>(x, -kLimit62, kLimit62));
}

// ⌊a / b⌋ exactly for a < 2^53, 1 ≤ b < 2^53: both are exact doubles, the IEEE quotient is correctly rounded
// and rounding never crosses an integer downwards, so its floor is the answer or one above it (when a / b lies
// just below an integer); q·b ≤ a + b < 2^54 tells which. Several times the throughput of a 64-bit divide.
[[gnu::always_inline]] inline uint64_t quotient(uint64_t a, uint64_t b) {
  auto q = static_cast<uint64_t>(static_cast<double>(a) / static_cast<double>(b));
  if (q * b > a) --q;
  return q;
}

}  // namespace

uint64_t isqrt(uint64_t x) {
  // The double square root only seeds the search (within a few units of the answer); the fix-up makes the
  // result the exact integer floor, whatever the floating-point unit returns.
  auto r = static_cast<uint64_t>(std::sqrt(static_cast<double>(x)));
  while (r > 0 && r * r > x) --r;
  while ((r + 1) * (r + 1) <= x) ++r;
  return r;
}

void adamw_moments(const int32_t* m, const int32_t* v, const int32_t* g, std::size_t n, const AdamMoments& k,
                   int gm_shift, int gv_shift, int64_t* mz, int64_t* vz, uint64_t* max_m, uint64_t* max_v) {
  uint64_t mm = *max_m, mv = *max_v;
  for (std::size_t j = 0; j < n; ++j) {
    // |a·m| < 2^62 and |c1·g| < 2^55 are int64 products; c2·g² (< 2^86) needs int128.
    const int64_t gj = g[j];
    const auto g2 = static_cast<uint64_t>(gj * gj);
    const int64_t mj = clamp62(i128{term64(k.a1 * m[j], k.m_shift)} + term64(k.c1 * gj, gm_shift));
    const int64_t vj = clamp62(i128{term64(k.a2 * v[j], k.v_shift)} + term(i128{k.c2} * g2, gv_shift));
    mz[j] = mj;
    vz[j] = vj;
    mm = std::max(mm, magnitude(mj));
    mv = std::max(mv, magnitude(vj));
  }
  *max_m = mm;
  *max_v = mv;
}

uint64_t adamw_apply(const int64_t* mz, const int64_t* vz, const int32_t* w, const uint32_t* dm, const uint32_t* dv,
                     const uint32_t* du, std::size_t n, const AdamApply& k, int32_t* m_out, int32_t* v_out,
                     int64_t* w_wide, int32_t* w_out) {
  const int t = 32 - k.f_s;
  uint64_t wmax = 0;
  // In chunks, phase by phase: each phase is a short loop of independent iterations, so the square roots and the
  // divisions of many elements are in flight at once (one fused loop chains them element by element).
  constexpr std::size_t kChunk = 256;
  uint64_t num[kChunk], rad[kChunk], q[kChunk];
  int lz[kChunk];
  for (std::size_t c0 = 0; c0 < n; c0 += kChunk) {
    const std::size_t len = std::min(kChunk, n - c0);
    // Phase 1: the new state, the numerator and the radicand.
    for (std::size_t i = 0; i < len; ++i) {
      const std::size_t j = c0 + i;
      const auto mj = static_cast<int32_t>(shift_round_stochastic(mz[j], k.m_store, dm[j]));
      const auto vj = static_cast<int32_t>(shift_round_stochastic(vz[j], k.v_store, dv[j]));
      m_out[j] = mj;
      v_out[j] = vj;
      num[i] = magnitude(mj) * static_cast<uint64_t>(k.f_m);
      rad[i] = static_cast<uint64_t>(std::max(vj, int32_t{1})) << k.sh;
    }
    // Phase 2: the roots, D = r + eps, and the quotients (num = 0: no Adam step).
    for (std::size_t i = 0; i < len; ++i) rad[i] = isqrt(rad[i]) + static_cast<uint64_t>(k.eps);
    for (std::size_t i = 0; i < len; ++i) {
      lz[i] = num[i] == 0 ? 0 : 52 - bit_length(num[i]);  // num·2^lz in [2^51, 2^52): exact in a double
      q[i] = quotient(lz[i] >= 0 ? num[i] << lz[i] : num[i] >> -lz[i], rad[i]);
    }
    // Phase 3: the step and the decay, rounded into the master step.
    for (std::size_t i = 0; i < len; ++i) {
      const std::size_t j = c0 + i;
      const int32_t wj = w[j];
      // The common case in int64: |x| < 2^61 and |decay| < 2^56, so |total + du| < 2^62 and |w − u| < 2^32.
      if (k.dl_s >= 32 && (num[i] == 0 || t - lz[i] <= 24)) {
        int64_t tot = num[i] == 0 ? 0 : shift_round_even(static_cast<int64_t>(q[i]), lz[i] - t);
        if (m_out[j] < 0) tot = -tot;
        if (k.decay) tot += shift_round_even(int64_t{wj} * k.dl_m, k.dl_s - 32);
        const int64_t wn = int64_t{wj} - ((tot + du[j]) >> 32);
        w_wide[j] = wn;
        w_out[j] = static_cast<int32_t>(wn);
        wmax = std::max(wmax, magnitude(wn));
        continue;
      }
      i128 total = 0;
      if (num[i] != 0) {
        const int up = t - lz[i];
        i128 x;
        if (up <= 24)  // q < 2^37 (den ≥ 2^15): q·2^up < 2^61, the common case, in int64
          x = shift_round_even(static_cast<int64_t>(q[i]), -up);
        else
          x = up >= 64 ? kLimit94 : std::min<i128>(i128{static_cast<int64_t>(q[i])} << up, kLimit94);
        total = m_out[j] < 0 ? -x : x;
      }
      if (k.decay) {  // |w·dl_m| < 2^56 and dl_s ≥ 17 (η·λ < 2^7): the left shift stays below 2^71
        const int64_t x = int64_t{wj} * k.dl_m;
        total += k.dl_s >= 32 ? i128{shift_round_even(x, k.dl_s - 32)} : i128{x} * (int64_t{1} << (32 - k.dl_s));
      }
      // R_stoch(total, 32, du): floor((total + du) / 2^32); |total| ≤ 2^94 + 2^62.
      const int64_t u = clamp62((total + du[j]) >> 32);
      const int64_t wn = clamp62(i128{wj} - u);
      w_wide[j] = wn;
      w_out[j] = static_cast<int32_t>(wn);
      wmax = std::max(wmax, magnitude(wn));
    }
  }
  return wmax;
}

}  // namespace qtrain::kernels
