// The integer AdamW (qtrain/engine/optim/adamw.h): against AdamW written here in doubles from PyTorch's formula
// (not from the library's quantizers), its bounds at extreme gradients, its bits over thread counts and through
// a state round trip, its refusals, the exact integer square root it uses, and the warm-up + cosine schedule.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "qtrain/engine/core/param.h"
#include "qtrain/engine/optim/adamw.h"
#include "qtrain/engine/optim/schedule.h"
#include "qtrain/kernels/adamw_update.h"
#include "qtrain/kernels/thread_pool.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/rng.h"

namespace qtrain {
namespace {

Param make_param(const std::string& name, uint32_t id, std::size_t rows, std::size_t cols) {
  Param p;
  p.name = name;
  p.id = id;
  init_uniform(p, rows, cols, cols, 40 + id);
  return p;
}

double value(const Tensor& t, std::size_t i) {
  const std::size_t r = i / t.cols(), c = i % t.cols();
  return std::ldexp(static_cast<double>(t.data<int32_t>()[i]), t.exponent_at(r, c));
}

// A gradient of uniform integers in ±2^bits at `exponent`, or one exponent per row (exponent + row % 3) when
// per_row: the shapes the trainer hands the optimizer.
void set_grad(Param& p, uint64_t seed, int bits, int exponent, bool per_row) {
  p.grad = Tensor(p.master.rows(), p.master.cols(), DType::kI32, exponent);
  if (per_row) {
    std::vector<int> e(p.master.rows());
    for (std::size_t r = 0; r < e.size(); ++r) e[r] = exponent + static_cast<int>(r % 3);
    p.grad.set_exponents(ScaleAxis::kRow, e);
  }
  const quant::CounterRng rng(seed, p.id);
  const uint32_t span = 2u << bits;
  for (std::size_t i = 0; i < p.grad.size(); ++i)
    p.grad.data<int32_t>()[i] = static_cast<int32_t>(rng.below(i, span)) - static_cast<int32_t>(span / 2);
  p.has_grad = true;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() && a.exponents() == b.exponents() &&
         std::memcmp(a.data<int32_t>(), b.data<int32_t>(), a.size() * sizeof(int32_t)) == 0;
}

// torch.optim.AdamW, one tensor, in doubles.
struct DoubleAdamW {
  double b1, b2, eps, wd;
  std::vector<double> w, m, v;
  void step(const std::vector<double>& g, double lr, uint64_t t, bool decay) {
    const double bc1 = 1 - std::pow(b1, static_cast<double>(t)), bc2 = 1 - std::pow(b2, static_cast<double>(t));
    for (std::size_t i = 0; i < w.size(); ++i) {
      if (decay) w[i] -= lr * wd * w[i];
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      w[i] -= lr * (m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps);
    }
  }
};

// 30 steps with gradients whose scale moves by 2^±6 between steps (the state's exponents follow), per-tensor and
// per-row gradient exponents, a warm-up-like learning rate and weight decay on one tensor only. Per step the
// integer update differs from the exact one by the square root's 2^−15 and the stochastic roundings (below one
// master step on average): so after 30 steps every weight is within 30·(|Δ|·2^−13 + 2 steps) of the doubles, and
// the mean signed error is far below one step per step.
TEST(AdamW, FollowsDoubleAdamW) {
  const AdamWConfig cfg{0.9, 0.999, 1e-8, 0.05};
  AdamW opt(cfg);
  std::vector<Param> ps = {make_param("fc.weight", 1, 12, 50), make_param("fc.bias", 2, 1, 333)};
  ps[1].decay = false;
  std::vector<DoubleAdamW> ref;
  for (Param& p : ps) {
    DoubleAdamW d{cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, {}, {}, {}};
    for (std::size_t i = 0; i < p.master.size(); ++i) d.w.push_back(value(p.master, i));
    d.m.assign(d.w.size(), 0);
    d.v.assign(d.w.size(), 0);
    ref.push_back(d);
  }
  std::vector<double> max_delta(ps.size(), 0), hist_m(ps.size(), 0), hist_v(ps.size(), 0);
  const int kSteps = 30;
  for (int s = 0; s < kSteps; ++s) {
    const double lr = 2e-3 * std::min(1.0, (s + 1) / 5.0);
    for (std::size_t k = 0; k < ps.size(); ++k) {
      const int shift = (s * 7 % 13) - 6;
      set_grad(ps[k], 100 + s, 12, -30 + shift, k == 0);
      std::vector<double> g(ps[k].grad.size());
      for (std::size_t i = 0; i < g.size(); ++i) g[i] = value(ps[k].grad, i);
      const std::vector<double> before = ref[k].w;
      ref[k].step(g, lr, s + 1, ps[k].decay);
      for (std::size_t i = 0; i < g.size(); ++i) {
        max_delta[k] = std::max(max_delta[k], std::abs(ref[k].w[i] - before[i]));
        hist_m[k] = std::max(hist_m[k], std::abs(ref[k].m[i]));
        hist_v[k] = std::max(hist_v[k], ref[k].v[i]);
      }
    }
    std::vector<Param*> params;
    for (Param& p : ps) params.push_back(&p);
    opt.step(params, lr, s, 9);
  }
  for (std::size_t k = 0; k < ps.size(); ++k) {
    const double unit = std::ldexp(1.0, ps[k].master.exponent());
    const double tol = kSteps * (max_delta[k] * 0x1p-13 + 2 * unit);
    double worst = 0, signed_sum = 0;
    for (std::size_t i = 0; i < ref[k].w.size(); ++i) {
      const double err = value(ps[k].master, i) - ref[k].w[i];
      worst = std::max(worst, std::abs(err));
      signed_sum += err;
    }
    EXPECT_LE(worst, tol) << ps[k].name << ": worst error " << worst << ", largest step " << max_delta[k];
    EXPECT_LT(std::abs(signed_sum) / static_cast<double>(ref[k].w.size()), kSteps * unit) << ps[k].name;
    // The update really moved the weights (by about lr per step: Adam's normalised step).
    EXPECT_GT(max_delta[k], 1e-3);
    // The state matches too: each step's rounding errs by less than 2^−29 of the largest value the state has held,
    // and the dyadic 1 − β (21 significant bits for 0.001, 24 for 0.1) by a relative 2^−22 at most.
    const Tensor* m = opt.moment(ps[k].name, "m");
    const Tensor* v = opt.moment(ps[k].name, "v");
    ASSERT_NE(m, nullptr);
    ASSERT_NE(v, nullptr);
    const double mmax = hist_m[k], vmax = hist_v[k];
    for (std::size_t i = 0; i < m->size(); ++i) {
      ASSERT_NEAR(value(*m, i), ref[k].m[i], kSteps * mmax * 0x1p-29 + std::abs(ref[k].m[i]) * 0x1p-21) << ps[k].name << " m[" << i << "]";
      ASSERT_NEAR(value(*v, i), ref[k].v[i], kSteps * vmax * 0x1p-29 + ref[k].v[i] * 0x1p-21) << ps[k].name << " v[" << i << "]";
    }
  }
}

// No gradient signal at all (zero gradients from the first step): m = v = 0, and only the decoupled decay moves
// the weights, w·(1 − ηλ)^t, to within a master step per step.
TEST(AdamW, ZeroGradientsLeaveOnlyTheDecoupledDecay) {
  AdamW opt({0.9, 0.999, 1e-8, 0.1});
  Param p = make_param("w", 1, 4, 64);
  const Tensor w0 = p.master;
  const double lr = 0.05;
  for (int s = 0; s < 20; ++s) {
    p.grad = Tensor(p.master.rows(), p.master.cols(), DType::kI32, -20);
    std::memset(p.grad.data<int32_t>(), 0, p.grad.size() * sizeof(int32_t));
    p.has_grad = true;
    opt.step({&p}, lr, s, 3);
  }
  const double f = std::pow(1 - lr * 0.1, 20), unit = std::ldexp(1.0, p.master.exponent());
  for (std::size_t i = 0; i < p.master.size(); ++i) ASSERT_NEAR(value(p.master, i), value(w0, i) * f, 20 * unit);
  for (std::size_t i = 0; i < p.master.size(); ++i) {
    EXPECT_EQ(opt.moment("w", "m")->data<int32_t>()[i], 0);
    EXPECT_EQ(opt.moment("w", "v")->data<int32_t>()[i], 0);
  }
}

// Gradients of INT32_MIN, INT32_MAX, 0, ±1 at exponents far apart from step to step (2^+60 to 2^−90): the state
// stays in its bounds (|m|, v ≤ 2^30, v ≥ 0), the weights within 2^30 and each step moves a weight by at most
// Adam's bound (below; plus the decay and two steps).
TEST(AdamW, ExtremeGradientsStayInBounds) {
  const AdamWConfig cfg{0.9, 0.999, 1e-8, 0.05};
  AdamW opt(cfg);
  Param p = make_param("w", 1, 3, 2048);
  const int32_t pattern[] = {INT32_MIN, INT32_MAX, 0, 1, -1, INT32_MAX - 1, INT32_MIN + 1};
  const int exps[] = {60, -90, 0, -90, 60, 30, -60};
  const double lr = 0.01;
  for (int s = 0; s < 14; ++s) {
    p.grad = Tensor(p.master.rows(), p.master.cols(), DType::kI32, exps[s % 7]);
    for (std::size_t i = 0; i < p.grad.size(); ++i) p.grad.data<int32_t>()[i] = pattern[(i + s) % 7];
    p.has_grad = true;
    std::vector<double> before(p.master.size());
    for (std::size_t i = 0; i < before.size(); ++i) before[i] = value(p.master, i);
    opt.step({&p}, lr, s, 5);
    const double t = s + 1;
    // |m_t|/√v_t ≤ (1 − β1)/√(1 − β2)·√(Σ_{k<t} (β1²/β2)^k) by Cauchy–Schwarz over the gradients' history.
    double sum = 0;
    for (int k = 0; k < s + 1; ++k) sum += std::pow(cfg.beta1 * cfg.beta1 / cfg.beta2, k);
    const double bound = lr * std::sqrt(1 - std::pow(cfg.beta2, t)) / (1 - std::pow(cfg.beta1, t)) *
                             (1 - cfg.beta1) / std::sqrt(1 - cfg.beta2) * std::sqrt(sum) * 1.001 +
                         lr * cfg.weight_decay * 2 + 2 * std::ldexp(1.0, p.master.exponent());
    const Tensor* m = opt.moment("w", "m");
    const Tensor* v = opt.moment("w", "v");
    for (std::size_t i = 0; i < p.master.size(); ++i) {
      ASSERT_LE(std::abs(int64_t{m->data<int32_t>()[i]}), int64_t{1} << 30) << "step " << s;
      ASSERT_GE(v->data<int32_t>()[i], 0) << "step " << s;
      ASSERT_LE(v->data<int32_t>()[i], 1 << 30) << "step " << s;
      ASSERT_LE(std::abs(int64_t{p.master.data<int32_t>()[i]}), int64_t{1} << 30);
      ASSERT_LE(std::abs(value(p.master, i) - before[i]), bound) << "step " << s << " element " << i;
    }
  }
}

// The same run on 1 and 2 threads (a tensor large enough to be split) and through state() / load_state into a
// second optimizer midway: the same bits.
TEST(AdamW, BitsDoNotDependOnThreadsOrOnAStateRoundTrip) {
  kernels::ThreadPool one(1), two(2, kernels::ThreadPool::Split::kAlways);
  auto run = [](kernels::ThreadPool& pool, bool round_trip, std::vector<Param>& ps, std::vector<NamedState>& state) {
    std::vector<Param*> params;
    for (Param& p : ps) params.push_back(&p);
    auto opt = std::make_unique<AdamW>(AdamWConfig{});
    for (int s = 0; s < 6; ++s) {
      if (round_trip && s == 3) {
        auto fresh = std::make_unique<AdamW>(AdamWConfig{});
        fresh->load_state(opt->state(), params);
        opt = std::move(fresh);
      }
      for (std::size_t k = 0; k < ps.size(); ++k) set_grad(ps[k], 7 + s, 14, -28 + s % 3, k == 0);
      opt->step(params, 1e-3, s, 11, &pool);
    }
    state = opt->state();
  };
  auto fresh_params = [] {
    return std::vector<Param>{make_param("big.weight", 1, 256, 300), make_param("small.bias", 2, 1, 77)};
  };
  std::vector<Param> a = fresh_params(), b = fresh_params(), c = fresh_params();
  std::vector<NamedState> sa, sb, sc;
  run(one, false, a, sa);
  run(two, false, b, sb);
  run(two, true, c, sc);
  ASSERT_EQ(sa.size(), 4u);
  ASSERT_EQ(sb.size(), 4u);
  ASSERT_EQ(sc.size(), 4u);
  for (std::size_t k = 0; k < a.size(); ++k) {
    EXPECT_TRUE(same_bits(a[k].master, b[k].master)) << a[k].name << " 1 vs 2 threads";
    EXPECT_TRUE(same_bits(a[k].master, c[k].master)) << a[k].name << " round trip";
  }
  for (std::size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].param + sa[i].slot, sb[i].param + sb[i].slot);
    EXPECT_TRUE(same_bits(sa[i].value, sb[i].value)) << sa[i].param << " " << sa[i].slot;
    EXPECT_TRUE(same_bits(sa[i].value, sc[i].value)) << sa[i].param << " " << sa[i].slot;
  }
}

std::string invalid_argument_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no std::invalid_argument)";
}

TEST(AdamW, RefusesStateThatDoesNotFit) {
  Param p = make_param("fc.weight", 1, 4, 6);
  AdamW opt({});
  set_grad(p, 1, 10, -30, false);
  opt.step({&p}, 1e-3, 0, 1);
  const std::vector<NamedState> good = opt.state();
  ASSERT_EQ(good.size(), 2u);
  EXPECT_EQ(good[0].slot, "m");
  EXPECT_EQ(good[1].slot, "v");
  auto load = [&](std::vector<NamedState> s) {
    return invalid_argument_of([&] { opt.load_state(std::move(s), {&p}); });
  };
  auto contains = [](const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; };
  std::vector<NamedState> neg = good;
  neg[1].value.data<int32_t>()[2] = -5;
  EXPECT_TRUE(contains(load(neg), "fc.weight v: element 2 is -5")) << load(neg);
  EXPECT_TRUE(contains(load({good[0]}), "fc.weight")) << load({good[0]});  // v missing
  std::vector<NamedState> momentum = good;
  momentum[0].slot = "momentum";
  EXPECT_TRUE(contains(load(momentum), "momentum")) << load(momentum);
  std::vector<NamedState> far = good;
  far[0].value.set_exponent(p.master.exponent() + 251);
  EXPECT_TRUE(contains(load(far), "fc.weight m")) << load(far);
  std::vector<NamedState> twice = good;
  twice.push_back(good[0]);
  EXPECT_NE(load(twice), "(no std::invalid_argument)");
  // A refused load leaves the state as it was.
  EXPECT_TRUE(same_bits(*opt.moment("fc.weight", "v"), good[1].value));
  EXPECT_EQ(load(good), "(no std::invalid_argument)");
}

TEST(AdamW, RefusesHyperparametersOutOfRange) {
  auto message = [](const AdamWConfig& c) {
    try {
      AdamW a(c);
    } catch (const UsageError& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message({1.0, 0.999, 1e-8, 0.05}).find("--beta1 1 is out of range"), std::string::npos);
  EXPECT_NE(message({0.9, -0.1, 1e-8, 0.05}).find("--beta2 -0.1 is out of range"), std::string::npos);
  EXPECT_NE(message({0.9, 0.999, 0, 0.05}).find("--adam-eps 0 is out of range (0, 1]"), std::string::npos);
  EXPECT_NE(message({0.9, 0.999, 1e-8, 1.0}).find("--wd 1 is out of range [0, 1)"), std::string::npos);
  EXPECT_EQ(message({0.0, 1 - 1e-6, 1.0, 0.0}), "(no error)");  // the range's edges
}

TEST(AdamWKernel, IsqrtIsTheExactFloor) {
  const uint64_t top = (uint64_t{1} << 62) - 1;
  for (uint64_t x : {uint64_t{0}, uint64_t{1}, uint64_t{2}, uint64_t{3}, uint64_t{4}, uint64_t{15}, uint64_t{16}, top})
    EXPECT_EQ(kernels::isqrt(x), static_cast<uint64_t>(std::sqrt(static_cast<long double>(x)))) << x;
  EXPECT_EQ(kernels::isqrt(top), (uint64_t{1} << 31) - 1);
  const quant::CounterRng rng(5, 5);
  for (uint64_t i = 0; i < 20000; ++i) {
    const uint64_t k = (rng.u32(i) >> 1) | 1;  // < 2^31
    for (uint64_t x : {k * k - 1, k * k, k * k + 1, k * k + 2 * k}) {
      const uint64_t r = kernels::isqrt(x);
      ASSERT_LE(r * r, x) << x;
      ASSERT_GT((r + 1) * (r + 1), x) << x;
    }
  }
}

// Linear warm-up from peak/W (never 0) to the peak at step W − 1, then cosine to 0 at the last step.
TEST(Schedule, WarmupCosine) {
  LrSchedule s;
  s.kind = parse_schedule("warmup-cosine");
  EXPECT_STREQ(schedule_name(s.kind), "warmup-cosine");
  s.peak = 1e-3;
  s.total_steps = 100;
  s.warmup_steps = 10;
  EXPECT_DOUBLE_EQ(s.at(0), 1e-4);
  EXPECT_DOUBLE_EQ(s.at(4), 5e-4);
  EXPECT_DOUBLE_EQ(s.at(9), 1e-3);
  EXPECT_DOUBLE_EQ(s.at(10), 1e-3);
  EXPECT_NEAR(s.at(55), 5e-4, 1e-12);
  EXPECT_NEAR(s.at(100), 0.0, 1e-18);
  for (uint64_t i = 11; i <= 100; ++i) EXPECT_LT(s.at(i), s.at(i - 1));
  s.warmup_steps = 0;  // no warm-up: the cosine from the first step
  EXPECT_DOUBLE_EQ(s.at(0), 1e-3);
  try {
    parse_schedule("warmup");
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("warmup-cosine"), std::string::npos);
  }
}

}  // namespace
}  // namespace qtrain
