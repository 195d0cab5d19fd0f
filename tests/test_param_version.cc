// Parameter versions without hand bumps (a tensor's generation changes with every mutable access, and the
// quantized-weight cache follows it), and models that refuse two parameters with one name or one stream id.
#include <gtest/gtest.h>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "op_test_util.h"
#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/layers/conv2d.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/engine/models/model.h"
#include "qtrain/engine/ops/qgemm_op.h"
#include "qtrain/quant/error.h"

namespace qtrain {
namespace {

TEST(Generation, ChangesWithEveryMutableAccessOnly) {
  Tensor t(4, 6, DType::kI32, -3);
  const Tensor u(4, 6, DType::kI32, -3);
  EXPECT_NE(t.generation(), u.generation());  // two tensors alive at once
  uint64_t g = t.generation();
  auto changed = [&] {
    const bool c = t.generation() != g;
    g = t.generation();
    return c;
  };
  (void)std::as_const(t).data<int32_t>();
  (void)t.exponents();
  (void)t.to_double();
  t.set_nonnegative_max(0);
  EXPECT_FALSE(changed());  // reads
  t.data<int32_t>()[0] = 1;
  EXPECT_TRUE(changed());
  t.set_exponent(2);
  EXPECT_TRUE(changed());
  t.set_exponents(ScaleAxis::kRow, {1, 2, 3, 4});
  EXPECT_TRUE(changed());
  t.set_exponent(0);
  t.reshape(6, 4);
  EXPECT_TRUE(changed());
  t = u;
  EXPECT_TRUE(changed());
  EXPECT_NE(t.generation(), u.generation());
  t = Tensor(2, 2, DType::kI8);
  EXPECT_TRUE(changed());
  (void)t.data<int8_t>();
  EXPECT_TRUE(changed());
  const Tensor copy(t);
  EXPECT_NE(copy.generation(), t.generation());
  Tensor moved(std::move(t));
  EXPECT_NE(moved.generation(), copy.generation());
}

TEST(ParamVersion, WeightCacheFollowsTheMaster) {
  Param p;
  p.name = "w";
  init_uniform(p, 8, 16, 16, 3);
  QGemmOp op(QGemmConfig{});
  const auto w0 = op.weights(p);
  EXPECT_EQ(op.weights(p), w0);  // no change: the cached quantization
  EXPECT_EQ(w0->version, p.version());
  p.master.data<int32_t>()[5] = 1 << 20;
  const auto w1 = op.weights(p);
  EXPECT_NE(w1, w0);
  EXPECT_EQ(op.weights(p), w1);
  p.master.set_exponent(p.master.exponent() + 1);
  const auto w2 = op.weights(p);
  EXPECT_NE(w2, w1);
  EXPECT_EQ(w2->q.exponents()[0], w1->q.exponents()[0] + 1);
  p.master = random_i32(8, 16, 1 << 24, -24, 9);
  EXPECT_NE(op.weights(p), w2);
}

TEST(ParamVersion, EditingTheMasterChangesTheNextForward) {
  LinearSpec s;
  s.in = 12;
  s.out = 5;
  s.signed_input = true;
  Linear lin(s, 0, 4), other(s, 1, 8);
  const Tensor x = random_i32(3, 12, 1 << 16, -16, 1);
  const StepContext ctx{nullptr, nullptr, 0, 0};
  auto forward = [&](Linear& l) {
    const VarPtr y = l.forward(ctx, var(Tensor(x)));
    return std::make_pair(y->value.exponents(),
                          std::vector<int32_t>(y->value.data<int32_t>(), y->value.data<int32_t>() + y->value.size()));
  };
  const auto before = forward(lin);
  EXPECT_EQ(forward(lin), before);
  // Through the public API only: copy another layer's weights into this one's master, then write one weight.
  const Tensor& src = other.weight().master;
  lin.weight().master = src;
  lin.bias().master = other.bias().master;
  const auto copied = forward(lin);
  EXPECT_NE(copied, before);
  EXPECT_EQ(copied, forward(other));
  lin.weight().master.data<int32_t>()[0] = -lin.weight().master.data<int32_t>()[0] + 12345;
  EXPECT_NE(forward(lin), copied);
}

std::unique_ptr<Linear> linear(uint32_t id) {
  LinearSpec s;
  s.in = 4;
  s.out = 3;
  return std::make_unique<Linear>(s, id, 0);
}

// Building a model of `layers` throws UsageError whose message contains every one of `texts`.
void expect_refused(std::vector<std::unique_ptr<Layer>> layers, const std::vector<std::string>& texts) {
  try {
    Model m(ModelSpec{}, std::move(layers));
    ADD_FAILURE() << "accepted";
  } catch (const UsageError& e) {
    for (const std::string& t : texts) EXPECT_NE(std::string(e.what()).find(t), std::string::npos) << e.what();
  }
}

TEST(ModelNames, DuplicateNamesAndStreamIdsAreRefused) {
  {
    std::vector<std::unique_ptr<Layer>> layers;
    layers.push_back(linear(0));
    layers.push_back(linear(1));
    layers.push_back(linear(0));
    expect_refused(std::move(layers), {"two modules are named 'linear0'", "Linear(4->3"});
  }
  {
    // Different names, one id: a convolution and a linear layer built with the same layer id.
    Conv2dSpec cs;
    cs.in_h = cs.in_w = 4;
    cs.in_channels = 2;
    cs.out_channels = 3;
    std::vector<std::unique_ptr<Layer>> layers;
    layers.push_back(std::make_unique<Conv2d>(cs, 5, 0));
    layers.push_back(linear(5));
    expect_refused(std::move(layers),
                   {"layer 0 (", "'conv5.weight'", "layer 1 (Linear", "'linear5.weight'", "the same stream id 10"});
  }
  std::vector<std::unique_ptr<Layer>> ok;
  ok.push_back(linear(0));
  ok.push_back(linear(1));
  EXPECT_NO_THROW(Model(ModelSpec{}, std::move(ok)));
}

TEST(ModelNames, LayerNamesReachEveryModuleOfTheTree) {
  ModelSpec spec;
  spec.kind = "resnet8";
  spec.set_input(16, 16, 3);
  const std::unique_ptr<Model> m = build_model(spec, 1);
  std::vector<std::string> names;
  for (Layer* l : m->named_layers()) names.push_back(l->layer_name());
  // conv0, l1bn1, then the first block's body (conv2, l1bn3, conv4, l1bn5); blocks 2 and 3 add a projection.
  ASSERT_GE(names.size(), 6u);
  EXPECT_EQ(std::vector<std::string>(names.begin(), names.begin() + 6),
            (std::vector<std::string>{"conv0", "l1bn1", "conv2", "l1bn3", "conv4", "l1bn5"}));
  EXPECT_EQ(names.back(), "linear" + std::to_string(names.size() - 1));
  // Every parameter belongs to the named module its name starts with.
  for (Layer* l : m->named_layers())
    for (Param* p : l->own_params()) EXPECT_EQ(p->name.substr(0, p->name.find('.')), l->layer_name());
  ASSERT_NE(m->find_layer("l1bn3"), nullptr);
  EXPECT_EQ(m->find_layer("l1bn3")->name(), "L1BatchNorm(16)+ReLU");
  EXPECT_EQ(m->find_layer("conv99"), nullptr);
  // The children's parameters, collected by the root, are the model's parameters in order.
  std::size_t count = 0;
  for_each_module(*m, [&](Layer& l) { count += l.own_params().size(); });
  EXPECT_EQ(count, m->params().size());
}

TEST(ModelNames, BuiltInModelsKeepTheirNames) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> first = {
      {"mlp", {"linear0.weight", "linear0.bias", "linear1.weight"}},
      {"cnn", {"conv0.weight", "l1bn1.gamma", "l1bn1.beta", "conv2.weight"}},
      {"resnet8", {"conv0.weight", "l1bn1.gamma", "l1bn1.beta", "conv2.weight"}},
  };
  for (const auto& [kind, names] : first) {
    ModelSpec spec;
    spec.kind = kind;
    if (kind != "mlp") spec.set_input(32, 32, 3);
    const std::unique_ptr<Model> m = build_model(spec, 1);
    const std::vector<Param*> params = m->params();
    ASSERT_GE(params.size(), names.size());
    for (std::size_t i = 0; i < names.size(); ++i) EXPECT_EQ(params[i]->name, names[i]) << kind << " " << i;
    std::set<std::string> unique;
    for (const Param* p : params) unique.insert(p->name);
    EXPECT_EQ(unique.size(), params.size()) << kind;
  }
}

}  // namespace
}  // namespace qtrain
