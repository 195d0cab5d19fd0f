// The SGD update kernels (qtrain/kernels/sgd_update.h) against their scalar references, on every Highway target this
// machine can run; and the references against the optimizer's original formulas (qtrain/quant/pow2.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "qtrain/kernels/dispatch.h"
#include "tests/target_test_util.h"
#include "qtrain/kernels/sgd_update.h"
#include "qtrain/quant/pow2.h"

namespace qtrain::kernels {
namespace {

constexpr int32_t kI32Min = std::numeric_limits<int32_t>::min();
constexpr int32_t kI32Max = std::numeric_limits<int32_t>::max();
constexpr int64_t kSat = int64_t{1} << 62;

// Lengths around every vector width (2, 4, 8 int64 lanes) and a few long ones.
const std::size_t kLengths[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 100, 257, 1023};

// int64 values with |x| ≤ 2^62 (the range of the int64 scratch), every bit length.
int64_t random_acc(std::mt19937_64& rng) {
  if (rng() % 8 == 0) {
    constexpr int64_t kSpecial[] = {kSat, -kSat, kSat - 1, -kSat + 1, 0, 1, -1, int64_t{1} << 30, -(int64_t{1} << 30)};
    return kSpecial[rng() % std::size(kSpecial)];
  }
  const int bits = static_cast<int>(rng() % 63);
  const int64_t mag = static_cast<int64_t>(rng() & ((uint64_t{1} << bits) - 1));
  return (rng() & 1) ? -mag : mag;
}

uint32_t random_draw(std::mt19937_64& rng) {
  switch (rng() % 8) {
    case 0:
      return 0;
    case 1:
      return 0xFFFFFFFFu;
    default:
      return static_cast<uint32_t>(rng());
  }
}

template <typename T, typename F>
std::vector<T> fill(std::size_t n, F&& f) {
  std::vector<T> out(n);
  for (T& x : out) x = f();
  return out;
}


struct AccumulateCase {
  int64_t mu_m;
  int mu_s;
  int v_shift;
  int g_shift;
  int64_t lambda_m;
  int lambda_s;
  bool decay;
};

std::string describe(const AccumulateCase& c, std::size_t n) {
  return "n=" + std::to_string(n) + " mu=" + std::to_string(c.mu_m) + "/2^" + std::to_string(c.mu_s) +
         " v_shift=" + std::to_string(c.v_shift) + " g_shift=" + std::to_string(c.g_shift) +
         " lambda=" + std::to_string(c.lambda_m) + "/2^" + std::to_string(c.lambda_s) +
         (c.decay ? " decay" : " no-decay");
}

// Runs the kernel and the reference on the same random inputs; the kernel's output is guarded against writes
// past the end.
void check_accumulate(const AccumulateCase& c, std::size_t n, std::mt19937_64& rng) {
  const auto v = fill<int32_t>(n, [&] { return random_i32(rng); });
  const auto g = fill<int32_t>(n, [&] { return random_i32(rng); });
  const auto w = fill<int32_t>(n, [&] { return random_i32(rng); });
  const auto draws = fill<uint32_t>(n, [&] { return random_draw(rng); });
  constexpr int64_t kGuard = 0x5A5A5A5A5A5A5A5A;
  std::vector<int64_t> want(n), got(n + 4, kGuard);
  const int32_t* wp = c.decay ? w.data() : nullptr;
  const uint64_t want_max = ref::sgd_accumulate(v.data(), g.data(), wp, draws.data(), n, c.mu_m, c.mu_s, c.v_shift,
                                                c.g_shift, c.lambda_m, c.lambda_s, want.data());
  const uint64_t got_max = sgd_accumulate(v.data(), g.data(), wp, draws.data(), n, c.mu_m, c.mu_s, c.v_shift,
                                          c.g_shift, c.lambda_m, c.lambda_s, got.data());
  EXPECT_EQ(got_max, want_max) << describe(c, n);
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(got[i], want[i]) << describe(c, n) << " element " << i << ": v=" << v[i] << " g=" << g[i]
                               << " w=" << w[i] << " draw=" << draws[i];
  }
  for (std::size_t i = n; i < n + 4; ++i) ASSERT_EQ(got[i], kGuard) << describe(c, n) << ": wrote past the end";
}

struct ApplyCase {
  int64_t eta_m;
  int eta_s;
  int v_store_shift;
};

std::string describe(const ApplyCase& c, std::size_t n) {
  return "n=" + std::to_string(n) + " eta=" + std::to_string(c.eta_m) + "/2^" + std::to_string(c.eta_s) +
         " v_store_shift=" + std::to_string(c.v_store_shift);
}

// acc: int64 values of every magnitude (`coarse`: scaled like a real momentum buffer, < 2^(30 + shift)).
void check_apply(const ApplyCase& c, std::size_t n, bool in_place, bool realistic, std::mt19937_64& rng) {
  auto acc = fill<int64_t>(n, [&] {
    if (!realistic) return random_acc(rng);
    const int bits = static_cast<int>(rng() % (31 + std::min(c.v_store_shift, 32)));
    const int64_t mag = static_cast<int64_t>(rng() & ((uint64_t{1} << bits) - 1));
    return (rng() & 1) ? -mag : mag;
  });
  const auto w = fill<int32_t>(n, [&] { return realistic ? random_i32(rng) / 4 : random_i32(rng); });
  const auto draws = fill<uint32_t>(n, [&] { return random_draw(rng); });
  std::vector<int32_t> want_v(n), want_w(n);
  std::vector<int64_t> want_acc(n);
  const uint64_t want_max = ref::sgd_apply(acc.data(), w.data(), draws.data(), n, c.eta_m, c.eta_s, c.v_store_shift,
                                           want_v.data(), want_acc.data(), want_w.data());
  constexpr int32_t kGuard32 = 0x5A5A5A5A;
  constexpr int64_t kGuard64 = 0x5A5A5A5A5A5A5A5A;
  std::vector<int32_t> got_v(n + 4, kGuard32), got_w(n + 4, kGuard32);
  std::vector<int64_t> got_acc(n + 4, kGuard64);
  uint64_t got_max = 0;
  if (in_place) {  // as the optimizer calls it: acc and w updated where they are
    std::copy(acc.begin(), acc.end(), got_acc.begin());
    std::copy(w.begin(), w.end(), got_w.begin());
    got_max = sgd_apply(got_acc.data(), got_w.data(), draws.data(), n, c.eta_m, c.eta_s, c.v_store_shift,
                        got_v.data(), got_acc.data(), got_w.data());
  } else {
    got_max = sgd_apply(acc.data(), w.data(), draws.data(), n, c.eta_m, c.eta_s, c.v_store_shift, got_v.data(),
                        got_acc.data(), got_w.data());
  }
  EXPECT_EQ(got_max, want_max) << describe(c, n);
  for (std::size_t i = 0; i < n; ++i) {
    ASSERT_EQ(got_v[i], want_v[i]) << describe(c, n) << " v, element " << i << ": acc=" << acc[i];
    ASSERT_EQ(got_acc[i], want_acc[i]) << describe(c, n) << " acc, element " << i << ": acc=" << acc[i]
                                       << " w=" << w[i] << " draw=" << draws[i];
    ASSERT_EQ(got_w[i], want_w[i]) << describe(c, n) << " w, element " << i;
  }
  for (std::size_t i = n; i < n + 4; ++i) {
    ASSERT_EQ(got_v[i], kGuard32) << describe(c, n) << ": wrote past the end of v";
    ASSERT_EQ(got_w[i], kGuard32) << describe(c, n) << ": wrote past the end of w";
    ASSERT_EQ(got_acc[i], kGuard64) << describe(c, n) << ": wrote past the end of acc";
  }
}

class SgdKernelTarget : public PerTargetTest {};

// Momentum and decay constants as the optimizer makes them (quant::to_dyadic), and edge cases: zero, the largest
// mantissa the SIMD path takes, shifts of 0, 62, ≥ 63 (the term vanishes), negative (folded into the mantissa,
// or the reference path when it does not fit).
const std::pair<int64_t, int> kProductConstants[] = {
    {58982, 16}, {65536, 16}, {32768, 26}, {0, 0},     {1, 1},         {kI32Max, 62}, {kI32Max, 1},
    {3, 0},      {5, -3},     {kI32Max, -1}, {40000, 63}, {40000, 70}, {int64_t{1} << 33, 20}};

TEST_P(SgdKernelTarget, AccumulateMatchesReferenceOverShiftsAndLengths) {
  std::mt19937_64 rng(7);
  // Exponent differences: finer and coarser than E, around the 32-bit draw boundary, the saturation limit (62),
  // and beyond (momentum term vanishes at ≤ −63; gradient stochastic shift caps at 62).
  const int kShifts[] = {-80, -64, -63, -62, -45, -33, -32, -31, -17, -1, 0, 1, 2, 17, 29, 31, 32, 33, 45, 61, 62, 63, 80};
  for (int vs : kShifts) {
    for (int gs : kShifts) {
      const AccumulateCase c{58982, 16, vs, gs, 32768, 26, (vs + gs) % 2 == 0};
      check_accumulate(c, kLengths[rng() % std::size(kLengths)], rng);
      if (HasFatalFailure()) return;
    }
  }
  for (std::size_t n : kLengths) {
    for (const auto& [mm, ms] : kProductConstants) {
      for (const auto& [lm, ls] : kProductConstants) {
        const AccumulateCase c{mm, ms, kShifts[rng() % std::size(kShifts)], kShifts[rng() % std::size(kShifts)], lm,
                               ls, (rng() & 3) != 0};
        check_accumulate(c, n, rng);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST_P(SgdKernelTarget, ApplyMatchesReferenceOverShiftsAndLengths) {
  std::mt19937_64 rng(11);
  // η as the schedule makes it (16-bit mantissa; shifts from 16 up to ~60 for tiny learning rates), a learning
  // rate ≥ 1 (negative shift: η·v shifted left, saturating), and mantissas up to the int32 limit.
  const std::pair<int64_t, int> kEta[] = {{52429, 20}, {65536, 16}, {32768, 16}, {40000, 33}, {40000, 48},
                                          {50000, 60}, {50000, 62}, {50000, 80}, {40000, 10}, {40000, 0},
                                          {40000, -5}, {kI32Max, 40}, {kI32Max, -40}, {0, 16}, {1, 0}};
  const int kStoreShifts[] = {0, 1, 2, 5, 16, 31, 32, 33, 34, 40, 62, 63};
  for (std::size_t n : kLengths) {
    for (const auto& [m, s] : kEta) {
      for (int vs : kStoreShifts) {
        const ApplyCase c{m, s, vs};
        check_apply(c, n, (rng() & 1) != 0, (rng() & 1) != 0, rng);
        if (HasFatalFailure()) return;
      }
    }
  }
}

TEST_P(SgdKernelTarget, NarrowMatchesReference) {
  std::mt19937_64 rng(13);
  for (std::size_t n : kLengths) {
    for (int s : {0, 1, 2, 3, 7, 31, 32, 33, 61, 62, 63, 70}) {
      const auto x = fill<int64_t>(n, [&] { return random_acc(rng); });
      std::vector<int32_t> want(n), got(n + 4, 0x5A5A5A5A);
      ref::sgd_narrow(x.data(), n, s, want.data());
      sgd_narrow(x.data(), n, s, got.data());
      for (std::size_t i = 0; i < n; ++i) ASSERT_EQ(got[i], want[i]) << "s=" << s << " x=" << x[i];
      for (std::size_t i = n; i < n + 4; ++i) ASSERT_EQ(got[i], 0x5A5A5A5A) << "wrote past the end";
    }
  }
}

TEST_P(SgdKernelTarget, TiesRoundToEvenAndSaturationIsExact) {
  // Hand-picked elements: exact ties (x = (2k+1)·2^(s−1)), values one below/above saturation, int32 limits.
  const int64_t xs[] = {3, 5, -3, -5, 6, -6, 1, -1, (int64_t{1} << 40) + (int64_t{1} << 19), -(int64_t{3} << 19),
                        kSat, -kSat, kSat - 1, -kSat + 1, 0, 7, -7, 9, -9};
  const std::size_t n = std::size(xs);
  for (int s : {1, 2, 20, 40, 62}) {
    std::vector<int32_t> want(n), got(n);
    ref::sgd_narrow(xs, n, s, want.data());
    sgd_narrow(xs, n, s, got.data());
    EXPECT_EQ(got, want) << "s=" << s;
  }
  const std::vector<int32_t> v = {kI32Max, kI32Min, kI32Max, kI32Min, 1, -1, 0, 123456789, -123456789};
  const std::vector<int32_t> g = {kI32Min, kI32Max, kI32Max, kI32Min, -1, 1, 0, -987654321, 987654321};
  const std::vector<uint32_t> draws(v.size(), 0xFFFFFFFFu);
  for (int shift : {0, 30, 31, 32, 33, 62, 63}) {  // g·2^shift and the momentum's saturating shift
    std::vector<int64_t> want(v.size()), got(v.size());
    const uint64_t a = ref::sgd_accumulate(v.data(), g.data(), v.data(), draws.data(), v.size(), 65536, 16, shift,
                                           shift, 65536, 16, want.data());
    const uint64_t b = sgd_accumulate(v.data(), g.data(), v.data(), draws.data(), v.size(), 65536, 16, shift, shift,
                                      65536, 16, got.data());
    EXPECT_EQ(got, want) << "shift=" << shift;
    EXPECT_EQ(a, b) << "shift=" << shift;
  }
}

INSTANTIATE_TEST_SUITE_P(AllTargets, SgdKernelTarget, ::testing::ValuesIn(target_names()),
                         [](const ::testing::TestParamInfo<std::string>& p) { return p.param; });

// ---- The references against the optimizer's original per-element formulas (qtrain/quant/pow2.h), as they were
// written before the kernels existed: same results wherever the original is defined behaviour.
int64_t old_shl_sat(int64_t x, int s) {
  if (x == 0) return 0;
  const uint64_t mag = static_cast<uint64_t>(x < 0 ? -x : x);
  if (s >= 62 || quant::bit_length(mag) + s > 62) return x < 0 ? -kSat : kSat;
  return x * (int64_t{1} << s);
}
int64_t old_move_exponent(int64_t x, int from, int to) {
  return from >= to ? old_shl_sat(x, from - to) : quant::shift_round_even(x, to - from);
}

TEST(SgdKernelReference, MatchesTheOriginalOptimizerFormulas) {
  std::mt19937_64 rng(17);
  const quant::Dyadic mus[] = {quant::to_dyadic(0.9), quant::to_dyadic(0.0), quant::to_dyadic(0.5),
                               quant::to_dyadic(0.999)};
  const quant::Dyadic lambdas[] = {quant::to_dyadic(5e-4), quant::to_dyadic(0.0), quant::to_dyadic(0.3)};
  const quant::Dyadic etas[] = {quant::to_dyadic(0.05), quant::to_dyadic(1e-9), quant::to_dyadic(3.0),
                                quant::to_dyadic(1e-17), quant::to_dyadic(0.0)};
  const std::size_t n = 257;
  for (int trial = 0; trial < 400; ++trial) {
    const quant::Dyadic mu = mus[trial % 4], lambda = lambdas[trial % 3], eta = etas[trial % 5];
    const bool decay = (trial / 5) % 2 == 0;
    const int e = 0;
    // Exponents from far finer to far coarser than E (the momentum term saturates above +30); ranges where the
    // original's int64 sums cannot overflow.
    const int ev = static_cast<int>(rng() % 81) - 40;
    const int eg = static_cast<int>(rng() % 66) - 40;
    auto v = fill<int32_t>(n, [&] { return random_i32(rng); });
    const auto g = fill<int32_t>(n, [&] { return random_i32(rng); });
    auto w = fill<int32_t>(n, [&] { return random_i32(rng) / 2; });
    const auto draws_g = fill<uint32_t>(n, [&] { return random_draw(rng); });
    const auto draws_u = fill<uint32_t>(n, [&] { return random_draw(rng); });
    // The original loop (qtrain/engine/optim/optimizer.cc before the kernels).
    std::vector<int64_t> old_acc(n);
    uint64_t old_vmax = 0;
    for (std::size_t i = 0; i < n; ++i) {
      int64_t acc = old_move_exponent(quant::shift_round_even(int64_t{v[i]} * mu.mantissa, mu.shift), ev, e);
      acc += eg >= e ? old_shl_sat(g[i], eg - e) : quant::shift_round_stochastic(g[i], e - eg, draws_g[i]);
      if (decay) acc += quant::shift_round_even(int64_t{w[i]} * lambda.mantissa, lambda.shift);
      old_acc[i] = std::clamp(acc, -kSat, kSat);
      old_vmax = std::max(old_vmax, static_cast<uint64_t>(old_acc[i] < 0 ? -old_acc[i] : old_acc[i]));
    }
    std::vector<int64_t> acc(n);
    const uint64_t vmax = ref::sgd_accumulate(v.data(), g.data(), decay ? w.data() : nullptr, draws_g.data(), n,
                                              mu.mantissa, mu.shift, ev - e, eg - e, lambda.mantissa, lambda.shift,
                                              acc.data());
    ASSERT_EQ(acc, old_acc) << "trial " << trial;
    ASSERT_EQ(vmax, old_vmax);
    const int sv = std::max(0, quant::bit_length(vmax) - 30);
    std::vector<int32_t> old_v(n), old_w(n);
    std::vector<int64_t> old_s(n);
    uint64_t old_wmax = 0;
    for (std::size_t i = 0; i < n; ++i) {
      old_v[i] = static_cast<int32_t>(quant::shift_round_even(old_acc[i], sv));
      const int64_t prod = int64_t{old_v[i]} * eta.mantissa, su = eta.shift - sv;
      const int64_t u = su >= 0 ? quant::shift_round_stochastic(prod, static_cast<int>(su), draws_u[i])
                                : old_shl_sat(prod, static_cast<int>(-su));
      old_s[i] = std::clamp(int64_t{w[i]} - u, -kSat, kSat);
      old_wmax = std::max(old_wmax, static_cast<uint64_t>(old_s[i] < 0 ? -old_s[i] : old_s[i]));
    }
    const int sw = std::max(0, quant::bit_length(old_wmax) - 30);
    for (std::size_t i = 0; i < n; ++i) old_w[i] = static_cast<int32_t>(quant::shift_round_even(old_s[i], sw));
    // The same through the references, in place as the optimizer calls them.
    const uint64_t wmax = ref::sgd_apply(acc.data(), w.data(), draws_u.data(), n, eta.mantissa, eta.shift, sv,
                                         v.data(), acc.data(), w.data());
    ASSERT_EQ(wmax, old_wmax) << "trial " << trial;
    ASSERT_EQ(v, old_v) << "trial " << trial;
    ASSERT_EQ(acc, old_s) << "trial " << trial;
    if (sw > 0) ref::sgd_narrow(acc.data(), n, sw, w.data());
    ASSERT_EQ(w, old_w) << "trial " << trial;
  }
}

}  // namespace
}  // namespace qtrain::kernels
