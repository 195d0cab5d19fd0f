// Quantization policies (core/quant_policy.h, io/policy_file.h): a policy changes the layer it names and only that
// layer; per-tensor weights have one exponent; the W_q cache is keyed by (version, bits, granularity) and backward
// keeps the W_q and bits of its own pass; the JSON form round-trips and refuses bad input naming the key.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "op_test_util.h"
#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/core/quant_policy.h"
#include "qtrain/engine/io/policy_file.h"
#include "qtrain/engine/layers/conv2d.h"
#include "qtrain/engine/layers/depthwise_conv2d.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/engine/models/layer_info.h"
#include "qtrain/engine/models/model.h"
#include "qtrain/engine/ops/qgemm_op.h"
#include "qtrain/quant/error.h"

namespace qtrain {
namespace {

std::vector<int32_t> values(const Tensor& t) {
  return std::vector<int32_t>(t.data<int32_t>(), t.data<int32_t>() + t.size());
}

// The output of `layer` alone on a fixed input of the shape it takes, under `policy` (values and exponents).
std::pair<std::vector<int32_t>, std::vector<int>> output_of(Layer& layer, const QuantPolicy* policy) {
  Tensor x;
  if (auto* l = dynamic_cast<Linear*>(&layer)) x = random_i32(6, l->spec().in, 1 << 14, -14, 7);
  if (auto* c = dynamic_cast<Conv2d*>(&layer)) {
    const Conv2dSpec& s = c->spec();
    x = random_i32(2 * s.in_h * s.in_w, s.in_channels, 1 << 14, -14, 7);
  }
  if (!dynamic_cast<QuantizedLayer&>(layer).own_quant_config().signed_input)  // a non-negative input (after ReLU)
    for (std::size_t i = 0; i < x.size(); ++i) x.data<int32_t>()[i] = std::abs(x.data<int32_t>()[i]);
  StepContext ctx{nullptr, nullptr, 0, 0};
  ctx.policy = policy;
  const VarPtr y = layer.forward(ctx, var(std::move(x)));
  return {values(y->value), y->value.exponents()};
}

QuantPolicy parse(const std::string& text) { return parse_policy("p.json", text); }

ModelSpec small_cnn() {
  ModelSpec s;
  s.kind = "cnn";
  s.set_input(8, 8, 1);
  s.bits = {8, 8, 8};
  s.validate();
  return s;
}

TEST(QuantPolicy, ChangesTheNamedLayerAndOnlyIt) {
  const std::unique_ptr<Model> model = build_model(small_cnn(), 3);
  const QuantPolicy policy =
      parse(R"({"format": "qtrain-policy", "version": 1, "layers": {"conv2": {"weight_bits": 4, "act_bits": 4}}})");
  check_policy(policy, model->named_layers(), "p.json");
  int quantized = 0;
  for (Layer* l : model->named_layers()) {
    if (dynamic_cast<QuantizedLayer*>(l) == nullptr) continue;
    ++quantized;
    const auto own = output_of(*l, nullptr), with = output_of(*l, &policy);
    if (l->layer_name() == "conv2") {
      EXPECT_NE(own, with) << "the policy did not change conv2";
    } else {
      EXPECT_EQ(own, with) << l->layer_name() << " changed, but the policy names conv2 only";
    }
  }
  EXPECT_EQ(quantized, 4);  // two convolutions, two linear layers
  // qtrain info's listing shows the effective bits.
  for (const LayerInfo& info : describe_layers(*model, &policy)) {
    if (!info.quant) continue;
    EXPECT_EQ(info.quant->weight_bits, info.name == "conv2" ? 4 : 8) << info.name;
    EXPECT_EQ(info.quant->act_bits, info.name == "conv2" ? 4 : 8) << info.name;
    EXPECT_EQ(info.quant->grad_bits, 8) << info.name;
  }
}

TEST(QuantPolicy, NullAndEmptyPoliciesGiveTheLayersOwnSettings) {
  const std::unique_ptr<Model> model = build_model(small_cnn(), 3);
  const QuantPolicy empty = parse(R"({"format": "qtrain-policy", "version": 1})");
  for (Layer* l : model->named_layers()) {
    const auto* q = dynamic_cast<QuantizedLayer*>(l);
    if (q == nullptr) continue;
    EXPECT_EQ(resolve_checked(&empty, q->own_quant_config(), l->layer_name(), 0), q->own_quant_config());
    EXPECT_EQ(output_of(*l, nullptr), output_of(*l, &empty)) << l->layer_name();
  }
}

TEST(QuantPolicy, LookupOrderDefaultThenLayerThenPass) {
  const QuantPolicy p = parse(R"({"format": "qtrain-policy", "version": 1,
      "default": {"weight_bits": 6, "grad_bits": 4, "grad_groups": 0},
      "layers": {"linear1": {"weight_bits": 5}},
      "passes": [{}, {"default": {"weight_bits": 3}, "layers": {"linear1": {"act_bits": 2, "act_groups": 0}}}]})");
  const QGemmConfig own{8, 8, 8, 1, false, quant::ScaleRule::kCover, 1};
  const QGemmConfig a = p.resolve(own, "linear0", 0), b = p.resolve(own, "linear1", 0);
  EXPECT_EQ(a.weight_bits, 6);
  EXPECT_EQ(a.grad_bits, 4);
  EXPECT_EQ(a.groups, quant::max_groups(4));  // 0 = the most the resolved bits allow
  EXPECT_EQ(b.weight_bits, 5);
  const QGemmConfig c = p.resolve(own, "linear1", 1);
  EXPECT_EQ(c.weight_bits, 3);  // the pass's default comes after the base's layer entry
  EXPECT_EQ(c.act_bits, 2);
  EXPECT_EQ(c.act_groups, quant::max_column_groups(quant::unsigned_range(2)));
  EXPECT_EQ(p.resolve(own, "linear1", 7), b);  // passes beyond the list: the base alone
}

TEST(QuantPolicy, PerTensorWeightsHaveOneExponent) {
  Param p;
  p.name = "w";
  init_uniform(p, 6, 10, 10, 1);
  for (std::size_t c = 0; c < 10; ++c) p.master.data<int32_t>()[c] *= 64;  // row 0 is 64× larger: its own octave
  QGemmOp op(QGemmConfig{});
  QGemmConfig per_tensor{4, 8, 8};
  per_tensor.granularity = WeightGranularity::kPerTensor;
  const auto wc = op.weights(p, QGemmConfig{4, 8, 8});
  const auto wt = op.weights(p, per_tensor);
  const std::vector<int>& ec = wc->q.exponents();
  const std::vector<int>& et = wt->q.exponents();
  ASSERT_EQ(et.size(), 6u);
  for (int e : et) EXPECT_EQ(e, et[0]);
  EXPECT_NE(ec[0], ec[1]);  // per channel, the large row has its own exponent
  EXPECT_EQ(et[0], ec[0]);  // the tensor's exponent covers the largest row
  // The dgrad operand shifts every row alike (exactly: the rows share their exponent).
  const int shift = et[0] - wt->aligned_exponent;
  ASSERT_GE(shift, 0);
  for (std::size_t i = 0; i < wt->q.size(); ++i) EXPECT_EQ(wt->aligned[i], wt->q.data<int8_t>()[i] * (1 << shift)) << i;
  int32_t maxq = 0;
  for (std::size_t i = 0; i < wt->q.size(); ++i) maxq = std::max<int32_t>(maxq, std::abs(wt->q.data<int8_t>()[i]));
  EXPECT_LE(maxq, 7);  // 4 bits
  EXPECT_GE(maxq, 4);  // the finest exponent that covers max|w|
  // Through a layer: every output column has the input's exponent plus that one exponent.
  LinearSpec s;
  s.in = 10;
  s.out = 6;
  s.signed_input = true;
  s.weight_bits = 4;
  Linear lin(s, 0, 1);
  const QuantPolicy policy =
      parse(R"({"format": "qtrain-policy", "version": 1, "layers": {"linear0": {"granularity": "per_tensor"}}})");
  const auto [y, e_out] = output_of(lin, &policy);
  for (int e : e_out) EXPECT_EQ(e, e_out[0]);
}

TEST(QuantPolicy, WeightCacheIsKeyedByConfiguration) {
  Param p;
  p.name = "w";
  init_uniform(p, 8, 16, 16, 3);
  QGemmOp op(QGemmConfig{});
  const QGemmConfig c8{8, 8, 8}, c4{4, 8, 8}, c2{2, 8, 8};
  const auto w8 = op.weights(p, c8), w4 = op.weights(p, c4), w2 = op.weights(p, c2);
  EXPECT_EQ(w8->bits, 8);
  EXPECT_EQ(w4->bits, 4);
  EXPECT_NE(w8, w4);
  // A sandwich step alternating three bit-widths hits the cache on every later pass.
  EXPECT_EQ(op.weights(p, c8), w8);
  EXPECT_EQ(op.weights(p, c2), w2);
  EXPECT_EQ(op.weights(p, c4), w4);
  // Beyond kWeightCacheEntries configurations the least recently used is quantized again.
  QGemmConfig pt = c8;
  pt.granularity = WeightGranularity::kPerTensor;
  const QGemmConfig c6{6, 8, 8};
  ASSERT_EQ(QGemmOp::kWeightCacheEntries, 4u);
  op.weights(p, pt);
  op.weights(p, c6);  // evicts w8, the least recently used
  EXPECT_EQ(op.weights(p, c4), w4);
  EXPECT_NE(op.weights(p, c8), w8);
  EXPECT_EQ(op.weights(p, c8)->q.exponents(), w8->q.exponents());  // requantized to the same values
  // A new version drops every entry.
  p.master.data<int32_t>()[0] += 1 << 20;
  EXPECT_NE(op.weights(p, c4), w4);
}

// Two passes of one Linear in one step, pass 0 at its own 8 bits and pass 1 at 4 (the policy's passes[1]): each
// pass's output and input gradient are those of a layer built with those bits, even when the master changes between
// the forward passes and the backward (the closures keep their own W_q and gradient bits).
TEST(QuantPolicy, TwoPassesInOneStepUseTheirOwnWeightsAndBits) {
  LinearSpec s8;
  s8.in = 24;
  s8.out = 7;
  s8.signed_input = true;
  LinearSpec s4 = s8;
  s4.weight_bits = 4;
  s4.grad_bits = 4;
  s4.groups = 3;
  Linear lin(s8, 2, 5), ref8(s8, 2, 5), ref4(s4, 2, 5);
  const QuantPolicy policy = parse(R"({"format": "qtrain-policy", "version": 1,
      "passes": [{}, {"layers": {"linear2": {"weight_bits": 4, "grad_bits": 4, "grad_groups": 3}}}]})");
  const Tensor x = random_i32(5, 24, 1 << 15, -15, 2);
  const Tensor dy = random_i32(5, 7, 1 << 20, -20, 3);
  struct Run {
    std::vector<int32_t> y, dx;
  };
  auto run = [&](Linear& layer, uint32_t pass, const QuantPolicy* pol, bool edit_master) {
    Tape tape;
    StepContext ctx{nullptr, &tape, 9, 4};
    ctx.pass = pass;
    ctx.policy = pol;
    const VarPtr in = var(Tensor(x));
    const VarPtr y = layer.forward(ctx, in);
    if (edit_master) layer.weight().master.data<int32_t>()[0] += 1 << 22;  // a new version before backward
    y->grad = dy;
    y->has_grad = true;
    tape.backward();
    return Run{values(y->value), values(in->grad)};
  };
  const Run a0 = run(lin, 0, &policy, false), b0 = run(ref8, 0, nullptr, false);
  const Run a1 = run(lin, 1, &policy, true), b1 = run(ref4, 1, nullptr, false);
  EXPECT_EQ(a0.y, b0.y);
  EXPECT_EQ(a0.dx, b0.dx);
  EXPECT_EQ(a1.y, b1.y);
  EXPECT_EQ(a1.dx, b1.dx);
  EXPECT_NE(a0.y, a1.y);
}

TEST(QuantPolicy, DepthwiseTakesBothGranularities) {
  Conv2dSpec s;
  s.in_h = s.in_w = 6;
  s.in_channels = 5;
  s.padding = 1;
  s.signed_input = true;
  DepthwiseConv2d dw(s, 4, 2);
  const QuantPolicy policy = parse(R"({"format": "qtrain-policy", "version": 1,
      "layers": {"dwconv4": {"granularity": "per_tensor", "weight_bits": 3}}})");
  StepContext ctx{nullptr, nullptr, 0, 0};
  const Tensor x = random_i32(72, 5, 1 << 12, -12, 4);
  const VarPtr own = dw.forward(ctx, var(Tensor(x)));
  ctx.policy = &policy;
  const VarPtr with = dw.forward(ctx, var(Tensor(x)));
  EXPECT_NE(values(own->value), values(with->value));
  for (int e : with->value.exponents()) EXPECT_EQ(e, with->value.exponents()[0]);
}

TEST(QuantPolicy, LayersRefuseAnInvalidResolvedConfiguration) {
  LinearSpec s;
  s.in = 8;
  s.out = 3;
  s.grad_bits = 4;
  s.groups = 5;
  Linear lin(s, 1, 1);
  // 8-bit gradients take one group only: the layer's own N_G=5 no longer fits.
  const QuantPolicy policy =
      parse(R"({"format": "qtrain-policy", "version": 1, "layers": {"linear1": {"grad_bits": 8}}})");
  StepContext ctx{nullptr, nullptr, 0, 0};
  ctx.policy = &policy;
  try {
    lin.forward(ctx, var(random_i32(2, 8, 100, 0, 1)));
    FAIL() << "expected a UsageError";
  } catch (const UsageError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("linear1"), std::string::npos) << m;
    EXPECT_NE(m.find("grad_groups: N_G=5 is out of range 1..1 for 8-bit gradients"), std::string::npos) << m;
  }
}

void expect_check_error(const std::string& text, const std::string& detail) {
  const std::unique_ptr<Model> model = build_model(small_cnn(), 3);
  try {
    check_policy(parse(text), model->named_layers(), "p.json");
    FAIL() << "expected a UsageError for " << text;
  } catch (const UsageError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("p.json: ", 0), 0u) << e.what();
    EXPECT_NE(std::string(e.what()).find(detail), std::string::npos) << e.what();
  }
}

TEST(QuantPolicy, CheckAgainstTheModelNamesKeyAndValidValues) {
  expect_check_error(R"({"format": "qtrain-policy", "version": 1, "layers": {"conv9": {"weight_bits": 4}}})",
                     "layers.conv9: the model has no quantized layer 'conv9'; valid layer names: conv0, conv2, "
                     "linear4, linear5");
  // A norm layer has a name but no quantization settings.
  expect_check_error(R"({"format": "qtrain-policy", "version": 1, "passes": [{"layers": {"l1bn3": {}}}]})",
                     "passes[0].layers.l1bn3: the model has no quantized layer 'l1bn3'");
  expect_check_error(R"({"format": "qtrain-policy", "version": 1, "layers": {"conv2": {"act_bits": 8,
                         "act_groups": 4}}})",
                     "layers.conv2.act_groups: 4 is out of range 1..1 for 8-bit unsigned activations");
  expect_check_error(R"({"format": "qtrain-policy", "version": 1, "default": {"grad_bits": 6, "grad_groups": 4}})",
                     "default.grad_groups: N_G=4 is out of range 1..3 for 6-bit gradients");
}

void expect_parse_error(const std::string& text, const std::string& detail) {
  try {
    parse(text);
    FAIL() << "expected an InputError for " << text;
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("p.json: ", 0), 0u) << e.what();
    EXPECT_NE(std::string(e.what()).find(detail), std::string::npos) << e.what();
  }
}

TEST(PolicyFile, BadInputNamesTheKey) {
  expect_parse_error(R"({"format": "qtrain-policy", "version": 2})",
                     "version: policy format version 2 is not supported; this qtrain reads version 1");
  expect_parse_error(R"({"format": "qtrain-model", "version": 1})", "format must be \"qtrain-policy\"");
  expect_parse_error(R"({"version": 1})", "format is missing");
  expect_parse_error(R"({"format": "qtrain-policy", "version": 1, "layers": {"conv0": {"weight_bits": 9}}})",
                     "layers.conv0.weight_bits must be an integer in 2..8 (found integer 9)");
  expect_parse_error(R"({"format": "qtrain-policy", "version": 1, "default": {"grad_bits": 1}})",
                     "default.grad_bits must be an integer in 2..8");
  expect_parse_error(R"({"format": "qtrain-policy", "version": 1, "layers": {"conv0": {"granularity": "row"}}})",
                     "layers.conv0.granularity: unknown granularity 'row'; valid granularities: per_channel, "
                     "per_tensor");
  expect_parse_error(R"({"format": "qtrain-policy", "version": 1, "layers": {"conv0": {"bits": 4}}})",
                     "layers.conv0: unknown key 'bits'; valid keys: weight_bits, act_bits");
  expect_parse_error(R"({"format": "qtrain-policy", "version": 1, "layers": {"conv0": {"scale": "l2"}}})",
                     "layers.conv0.scale: unknown rule 'l2'; valid rules: max, mse");
  expect_parse_error(R"({"format": "qtrain-policy", "version": 1, "passes": [3]})",
                     "passes[0] must be an object (found integer)");
  expect_parse_error("{\"format\": ", "not valid JSON");
  expect_parse_error("[]", "the policy must be a JSON object");
  EXPECT_THROW(load_policy("/nonexistent/p.json"), InputError);
}

TEST(PolicyFile, RoundTrips) {
  const QuantPolicy p = parse(R"({"format": "qtrain-policy", "version": 1,
      "default": {"weight_bits": 6, "scale": "max"},
      "layers": {"conv2": {"weight_bits": 4, "act_bits": 4, "grad_bits": 8, "grad_groups": 1, "act_groups": 0,
                           "granularity": "per_tensor", "scale": "mse"}},
      "passes": [{}, {"default": {"weight_bits": 2}}]})");
  EXPECT_EQ(p.source, "p.json");
  EXPECT_EQ(p.passes.size(), 2u);
  ASSERT_EQ(p.base.layers.count("conv2"), 1u);
  EXPECT_EQ(p.base.layers.at("conv2").granularity, WeightGranularity::kPerTensor);
  EXPECT_EQ(p.base.layers.at("conv2").act_groups, 0);
  const QuantPolicy q = parse(policy_to_json(p));
  EXPECT_EQ(q, p);
  EXPECT_EQ(policy_to_json(q), policy_to_json(p));
}

}  // namespace
}  // namespace qtrain
