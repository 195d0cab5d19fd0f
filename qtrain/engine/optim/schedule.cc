#include "qtrain/engine/optim/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <string>

#include "qtrain/quant/error.h"

namespace qtrain {

ScheduleKind parse_schedule(const std::string& name) {
  if (name == "constant") return ScheduleKind::kConstant;
  if (name == "step") return ScheduleKind::kStep;
  if (name == "cosine") return ScheduleKind::kCosine;
  if (name == "onecycle" || name == "one-cycle") return ScheduleKind::kOneCycle;
  if (name == "warmup-cosine") return ScheduleKind::kWarmupCosine;
  throw UsageError("unknown schedule '" + name + "': valid schedules are constant, step, cosine, onecycle, warmup-cosine");
}

const char* schedule_name(ScheduleKind k) {
  switch (k) {
    case ScheduleKind::kConstant: return "constant";
    case ScheduleKind::kStep: return "step";
    case ScheduleKind::kCosine: return "cosine";
    case ScheduleKind::kOneCycle: return "onecycle";
    case ScheduleKind::kWarmupCosine: return "warmup-cosine";
  }
  return "?";
}

namespace {

__extension__ using U128 = unsigned __int128;  // GCC/Clang extension: the Q124 fixed point below

constexpr int kFrac = 124;  // Q124: values below 16 fit 128 bits

// (a·b) >> 124, truncated, for Q124 values whose product is below 16: the 256-bit product from 64-bit halves.
U128 mul_q124(U128 a, U128 b) {
  const uint64_t a0 = static_cast<uint64_t>(a), a1 = static_cast<uint64_t>(a >> 64);
  const uint64_t b0 = static_cast<uint64_t>(b), b1 = static_cast<uint64_t>(b >> 64);
  const U128 p00 = U128{a0} * b0, p01 = U128{a0} * b1, p10 = U128{a1} * b0, p11 = U128{a1} * b1;
  const U128 mid = (p00 >> 64) + static_cast<uint64_t>(p01) + static_cast<uint64_t>(p10);  // bits 64..
  const U128 hi = p11 + (p01 >> 64) + (p10 >> 64) + (mid >> 64);                           // bits 128..255
  const U128 lo = (mid << 64) | static_cast<uint64_t>(p00);                                // bits 0..127
  return (hi << (128 - kFrac)) | (lo >> kFrac);
}

int bit_length(U128 v) {
  int n = 0;
  for (; v != 0; v >>= 1) ++n;
  return n;
}

// Cosine interpolation from a (t = 0) to b (t = 1).
double cos_anneal(double a, double b, double t) {
  return b + (a - b) * 0.5 * (1.0 + cos_rounded(std::numbers::pi * t));
}

}  // namespace

// The Taylor series Σ (−1)^n x^2n/(2n)! in Q124 fixed point. x < 4 is exact there (x ≥ 2^−27 has no bit below
// 2^−79); x² < 16, every term is below 11 and the even and the odd terms each sum to below 15, so nothing
// overflows. Each of the ≤ 40 terms costs two truncations of 2^−124 (plus x²'s, carried along), so the sum is within
// 2^−116 of cos x. Rounding that to 53 bits gives the correctly rounded cos x unless cos x lies within 2^−116 of a
// midpoint between two doubles: for |cos x| ≥ 2^−40 (ulp ≥ 2^−92) a coincidence of relative size 2^−24 or less.
// The one tiny value a schedule meets, cos of π/2 as a double (6.123233995736766e−17), is checked in the tests.
double cos_rounded(double x) {
  if (!(x >= 0 && x < 4)) throw std::logic_error("cos_rounded: " + std::to_string(x) + " is outside [0, 4)");
  // cos x = 1 − x²/2 + … rounds to 1 when x²/2 < 2^−54, i.e. x < 2^−27.
  if (x < 0x1p-27) return 1.0;
  int e = 0;
  const double f = std::frexp(x, &e);                       // x = f·2^e, f in [0.5, 1): exact
  const auto m = static_cast<uint64_t>(std::ldexp(f, 53));  // x = m·2^(e−53), m < 2^53: exact
  const U128 xq = U128{m} << (kFrac + e - 53);              // shift ≥ 124 − 26 − 53 > 0
  const U128 x2 = mul_q124(xq, xq);
  U128 even = U128{1} << kFrac, odd = 0, term = even;
  for (uint64_t n = 1; term != 0; ++n) {
    term = mul_q124(term / ((2 * n - 1) * (2 * n)), x2);  // divide first: term·x² may exceed 16
    (n % 2 != 0 ? odd : even) += term;
  }
  const bool negative = odd > even;
  const U128 mag = negative ? odd - even : even - odd;
  // Round the magnitude to 53 significant bits, ties to even.
  const int len = bit_length(mag);
  const int drop = std::max(0, len - 53);
  uint64_t q = static_cast<uint64_t>(mag >> drop);
  if (drop > 0) {
    const U128 rest = mag & ((U128{1} << drop) - 1), half = U128{1} << (drop - 1);
    if (rest > half || (rest == half && (q & 1) != 0)) ++q;
  }
  const double r = std::ldexp(static_cast<double>(q), drop - kFrac);  // exact: q ≤ 2^53
  return negative ? -r : r;
}

double LrSchedule::at(uint64_t step) const {
  const double total = static_cast<double>(std::max<uint64_t>(total_steps, 1));
  const double s = std::min(static_cast<double>(step), total);
  switch (kind) {
    case ScheduleKind::kConstant: return peak;
    case ScheduleKind::kStep: return peak * (s >= 0.75 * total ? gamma * gamma : s >= 0.5 * total ? gamma : 1.0);
    case ScheduleKind::kCosine: return cos_anneal(peak, 0.0, s / total);
    case ScheduleKind::kOneCycle: {
      // PyTorch OneCycleLR (anneal_strategy='cos', three_phase=False) phase boundaries.
      const double initial = peak / div_factor, final_lr = initial / final_div_factor;
      const double up_end = pct_start * total - 1.0, down_end = total - 1.0;
      if (s <= up_end) return cos_anneal(initial, peak, up_end > 0 ? s / up_end : 1.0);
      return cos_anneal(peak, final_lr, std::min(1.0, (s - up_end) / std::max(down_end - up_end, 1.0)));
    }
    case ScheduleKind::kWarmupCosine: {
      const double w = static_cast<double>(warmup_steps);
      if (s < w) return peak * (s + 1.0) / w;
      return cos_anneal(peak, 0.0, total > w ? (s - w) / (total - w) : 1.0);
    }
  }
  return peak;
}

}  // namespace qtrain
