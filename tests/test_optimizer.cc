// The Optimizer interface (qtrain/engine/optim/optimizer.h): the factory, Sgd's own momentum state (created on a
// parameter's first update, exposed and replaced generically for checkpoints, checked), and that moving the state
// to another optimizer continues the run bit for bit.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "qtrain/engine/core/param.h"
#include "qtrain/engine/optim/optimizer.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/rng.h"

namespace qtrain {
namespace {

// A named parameter with init_uniform weights and a fresh pseudo-random gradient.
Param make_param(const std::string& name, uint32_t id, std::size_t rows, std::size_t cols) {
  Param p;
  p.name = name;
  p.id = id;
  init_uniform(p, rows, cols, cols, 11 + id);
  return p;
}

void set_grad(Param& p, uint64_t seed) {
  p.grad = Tensor(p.master.rows(), p.master.cols(), DType::kI32, p.master.exponent() - 2);
  const quant::CounterRng rng(seed, p.id);
  for (std::size_t i = 0; i < p.grad.size(); ++i)
    p.grad.data<int32_t>()[i] = static_cast<int32_t>(rng.below(i, 1u << 21)) - (1 << 20);
  p.has_grad = true;
}

bool same_bits(const Tensor& a, const Tensor& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() && a.exponents() == b.exponents() &&
         std::memcmp(a.data<int32_t>(), b.data<int32_t>(), a.size() * sizeof(int32_t)) == 0;
}

std::string invalid_argument_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "(no std::invalid_argument)";
}

TEST(Optimizer, FactoryBuildsSgdAndRefusesUnknownNamesAndRanges) {
  const std::unique_ptr<Optimizer> opt = make_optimizer("sgd", SgdConfig{0.8, 1e-4});
  EXPECT_EQ(opt->name(), "sgd");
  ASSERT_NE(dynamic_cast<Sgd*>(opt.get()), nullptr);
  EXPECT_EQ(dynamic_cast<Sgd*>(opt.get())->config().momentum, 0.8);
  EXPECT_EQ(make_optimizer("adamw", {})->name(), "adamw");
  try {
    make_optimizer("lamb", {});
    FAIL() << "no error";
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("unknown optimizer 'lamb': valid optimizers are sgd, adamw"),
              std::string::npos)
        << e.what();
  }
  EXPECT_THROW(make_optimizer("sgd", SgdConfig{1.0, 0.0}), UsageError);
  EXPECT_THROW(make_optimizer("sgd", SgdConfig{0.9, 1.0}), UsageError);
  EXPECT_THROW(make_optimizer("sgd", SgdConfig{-0.1, 0.0}), UsageError);
}

// A parameter's momentum appears on its first update, at its shape; a parameter without a gradient gets none.
TEST(Optimizer, SgdCreatesMomentumOnTheFirstUpdateOnly) {
  Param a = make_param("a.weight", 1, 3, 40), b = make_param("b.weight", 2, 1, 7);
  Sgd sgd({0.9, 5e-4});
  EXPECT_TRUE(sgd.state().empty());
  EXPECT_EQ(sgd.momentum("a.weight"), nullptr);
  const int ea = a.master.exponent();
  set_grad(a, 1);
  sgd.step({&a, &b}, 0.05, 0, 3);
  std::vector<NamedState> st = sgd.state();
  ASSERT_EQ(st.size(), 1u);
  EXPECT_EQ(st[0].param, "a.weight");
  EXPECT_EQ(st[0].slot, "momentum");
  EXPECT_EQ(st[0].value.rows(), 3u);
  EXPECT_EQ(st[0].value.cols(), 40u);
  EXPECT_EQ(st[0].value.exponent(), ea);  // the master exponent (the step did not need a store shift)
  EXPECT_EQ(sgd.momentum("b.weight"), nullptr);
  bool nonzero = false;
  for (std::size_t i = 0; i < st[0].value.size(); ++i) nonzero |= st[0].value.data<int32_t>()[i] != 0;
  EXPECT_TRUE(nonzero);
  EXPECT_TRUE(same_bits(st[0].value, *sgd.momentum("a.weight")));
  set_grad(a, 2);
  set_grad(b, 3);
  sgd.step({&a, &b}, 0.05, 1, 3);
  st = sgd.state();
  ASSERT_EQ(st.size(), 2u);
  EXPECT_EQ(st[0].param, "a.weight");  // the order of first updates
  EXPECT_EQ(st[1].param, "b.weight");
}

// The state of one optimizer loaded into another (as a checkpoint does) continues exactly as the first would.
TEST(Optimizer, LoadedStateContinuesBitForBit) {
  std::vector<Param> ps = {make_param("w0", 1, 16, 300), make_param("w1", 2, 1, 5000), make_param("b", 3, 1, 9)};
  std::vector<Param*> params;
  for (Param& p : ps) params.push_back(&p);
  Sgd a({0.9, 5e-4});
  for (uint64_t step = 0; step < 3; ++step) {
    for (Param& p : ps) set_grad(p, 10 + step);
    a.step(params, 0.1, step, 7);
  }
  std::vector<Param> copy = ps;
  std::vector<Param*> copy_params;
  for (Param& p : copy) copy_params.push_back(&p);
  const std::unique_ptr<Optimizer> b = make_optimizer("sgd", SgdConfig{0.9, 5e-4});
  b->load_state(a.state(), copy_params);
  for (uint64_t step = 3; step < 6; ++step) {
    for (Param& p : ps) set_grad(p, 10 + step);
    for (Param& p : copy) set_grad(p, 10 + step);
    a.step(params, 0.1, step, 7);
    b->step(copy_params, 0.1, step, 7);
  }
  const std::vector<NamedState> sa = a.state(), sb = b->state();
  ASSERT_EQ(sa.size(), sb.size());
  for (std::size_t i = 0; i < ps.size(); ++i) {
    EXPECT_TRUE(same_bits(ps[i].master, copy[i].master)) << ps[i].name;
    EXPECT_EQ(sa[i].param, sb[i].param);
    EXPECT_TRUE(same_bits(sa[i].value, sb[i].value)) << sa[i].param;
  }
}

TEST(Optimizer, SgdRefusesStateThatDoesNotFit) {
  Param p = make_param("fc.weight", 1, 4, 6);
  const int e = p.master.exponent();
  Sgd sgd({0.9, 0.0});
  set_grad(p, 1);
  sgd.step({&p}, 0.05, 0, 1);
  const Tensor before = *sgd.momentum("fc.weight");
  auto load = [&](std::vector<NamedState> s) {
    return invalid_argument_of([&] { sgd.load_state(std::move(s), {&p}); });
  };
  const Tensor ok(4, 6, DType::kI32, e);
  EXPECT_NE(load({{"fc.bias", "momentum", ok}}).find("fc.bias momentum: no such parameter"), std::string::npos);
  EXPECT_NE(load({{"fc.weight", "m", ok}}).find("fc.weight m: SGD keeps only a \"momentum\" slot"), std::string::npos);
  EXPECT_NE(load({{"fc.weight", "momentum", Tensor(6, 4, DType::kI32, e)}}).find("is 6x4, the parameter 4x6"),
            std::string::npos);
  EXPECT_NE(load({{"fc.weight", "momentum", Tensor(4, 6, DType::kI8, e)}}).find("must be int32 with one exponent"),
            std::string::npos);
  EXPECT_NE(load({{"fc.weight", "momentum", Tensor(4, 6, DType::kI32, e + 63)}})
                .find("exponent " + std::to_string(e + 63) + " is more than 62 away from its weights' exponent"),
            std::string::npos);
  EXPECT_NE(load({{"fc.weight", "momentum", ok}, {"fc.weight", "momentum", ok}}).find("given twice"),
            std::string::npos);
  // A refused load leaves the state as it was; the edges of the exponent range are accepted.
  EXPECT_TRUE(same_bits(*sgd.momentum("fc.weight"), before));
  EXPECT_NO_THROW(sgd.load_state({{"fc.weight", "momentum", Tensor(4, 6, DType::kI32, e - 62)}}, {&p}));
  EXPECT_NO_THROW(sgd.load_state({{"fc.weight", "momentum", Tensor(4, 6, DType::kI32, e + 62)}}, {&p}));
  // An empty state: every parameter starts again from zero momentum.
  sgd.load_state({}, {&p});
  EXPECT_TRUE(sgd.state().empty());
}

// State is keyed by name: two parameters of one name in one step would share a buffer.
TEST(Optimizer, SgdRefusesTwoParametersOfOneName) {
  Param a = make_param("x", 1, 1, 8), b = make_param("x", 2, 1, 8);
  set_grad(a, 1);
  set_grad(b, 1);
  Sgd sgd({0.9, 0.0});
  EXPECT_THROW(sgd.step({&a, &b}, 0.05, 0, 1), std::logic_error);
}

// The momentum created on the first update is zeros at the master exponent: the first update is the one a
// preloaded zero buffer at that exponent gives (what Param::momentum held before the optimizer owned it).
TEST(Optimizer, FirstUpdateEqualsAZeroBufferAtTheMasterExponent) {
  Param a = make_param("w", 1, 8, 600), b = a;
  set_grad(a, 4);
  set_grad(b, 4);
  Sgd lazy({0.9, 5e-4}), preloaded({0.9, 5e-4});
  preloaded.load_state({{"w", "momentum", Tensor(8, 600, DType::kI32, b.master.exponent())}}, {&b});
  lazy.step({&a}, 0.05, 0, 2);
  preloaded.step({&b}, 0.05, 0, 2);
  EXPECT_TRUE(same_bits(a.master, b.master));
  EXPECT_TRUE(same_bits(*lazy.momentum("w"), *preloaded.momentum("w")));
}

}  // namespace
}  // namespace qtrain
