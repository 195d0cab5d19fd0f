// The model registry and model configurations: range-checked config getters, registering and building models by
// name, the built-ins as registry entries (same weights as before), and a user-defined model (conv → residual
// block → pool → linear) that trains, saves, loads and resumes like a built-in one.
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "qtrain/engine/layers/conv2d.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/engine/layers/norm.h"
#include "qtrain/engine/layers/pool.h"
#include "qtrain/engine/layers/residual.h"
#include "qtrain/engine/models/builtin_models.h"
#include "qtrain/engine/models/registry.h"
#include "qtrain/quant/error.h"

namespace qtrain {
namespace {

// Expects `f` to throw UsageError whose message contains every one of `parts`.
template <typename F>
void expect_usage_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no UsageError";
  } catch (const UsageError& e) {
    for (const std::string& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what();
  }
}

TEST(ModelConfig, GettersReturnTheValueOrTheFallback) {
  ModelConfig c;
  c.set("width", 8).set("rate", 0.5).set("act", "relu").set("widths", ModelConfig::Ints{4, 8});
  EXPECT_EQ(c.get_int("width", 1, 1, 16), 8);
  EXPECT_EQ(c.get_int("depth", 3, 1, 16), 3);
  EXPECT_EQ(c.get_number("rate", 0.1, 0, 1), 0.5);
  EXPECT_EQ(c.get_number("width", 0, 0, 100), 8.0);  // an integer reads as a number
  EXPECT_EQ(c.get_string("act", "none", {"none", "relu"}), "relu");
  EXPECT_EQ(c.get_ints("widths", {}, 1, 4, 1, 64), (ModelConfig::Ints{4, 8}));
  EXPECT_EQ(c.describe(), "act=relu rate=0.5 width=8 widths=4,8");
}

TEST(ModelConfig, BadValuesNameTheKeyAndTheRange) {
  ModelConfig c;
  c.set("width", 0).set("rate", 2.0).set("act", "gelu").set("widths", ModelConfig::Ints{4, 99});
  expect_usage_error([&] { c.get_int("width", 1, 1, 16); }, {"'width'", "0 is out of range 1..16"});
  expect_usage_error([&] { c.get_number("rate", 0, 0, 1); }, {"'rate'", "out of range [0, 1]"});
  expect_usage_error([&] { c.get_string("act", "relu", {"none", "relu"}); }, {"'act'", "'gelu'", "none, relu"});
  expect_usage_error([&] { c.get_ints("widths", {}, 1, 4, 1, 64); }, {"'widths[1]'", "99 is out of range 1..64"});
  expect_usage_error([&] { c.get_ints("widths", {}, 3, 4, 1, 128); }, {"'widths'", "2 entries", "3..4 integers"});
  expect_usage_error([&] { c.get_int("act", 1, 1, 16); }, {"'act'", "must be an integer in 1..16", "a string"});
  expect_usage_error([&] { c.set("bad key", 1); }, {"'bad key'"});
}

// Same shape, exponent and int32 values.
bool same_master(const Tensor& a, const Tensor& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() && a.exponent() == b.exponent() &&
         std::equal(a.data<int32_t>(), a.data<int32_t>() + a.size(), b.data<int32_t>());
}

// Linear(ReLU) → Linear on N·1·1 × C inputs, its width from the config.
ModelLayers two_linears(const ModelConfig& cfg, const InputShape& in, std::size_t classes, uint64_t seed) {
  LinearSpec a;
  a.in = in.c;
  a.out = static_cast<std::size_t>(cfg.get_int("hidden", 4, 1, 64));
  a.signed_input = true;
  a.relu = true;
  LinearSpec b;
  b.in = a.out;
  b.out = classes;
  ModelLayers layers;
  layers.push_back(std::make_unique<Linear>(a, 0, seed));
  layers.push_back(std::make_unique<Linear>(b, 1, seed));
  return layers;
}

TEST(Registry, KnowsTheBuiltInsFirstAndRefusesTakenNames) {
  const std::vector<std::string> known = known_models();
  ASSERT_GE(known.size(), 4u);
  EXPECT_EQ(std::vector<std::string>(known.begin(), known.begin() + 4),
            (std::vector<std::string>{"mlp", "cnn", "resnet8", "resnet20"}));
  expect_usage_error([] { register_model("resnet8", two_linears); }, {"'resnet8' is a built-in model"});
  register_model("registry_test_twice", two_linears);
  EXPECT_TRUE(model_known("registry_test_twice"));
  EXPECT_FALSE(model_built_in("registry_test_twice"));
  expect_usage_error([] { register_model("registry_test_twice", two_linears); }, {"already registered"});
  expect_usage_error([] { register_model("no spaces", two_linears); }, {"'no spaces'"});
  expect_usage_error([] { register_model("registry_test_empty", ModelFactory{}); }, {"no factory"});
  expect_usage_error(
      [] {
        build_registered_model("nonesuch", {}, {1, 1, 4}, 2, 0);
      },
      {"unknown model 'nonesuch'", "mlp, cnn, resnet8, resnet20"});
}

TEST(Registry, ARegisteredModelRecordsItsNameAndConfig) {
  register_model("registry_test_record", two_linears);
  ModelConfig cfg;
  cfg.set("hidden", 6);
  const auto m = build_registered_model("registry_test_record", cfg, {1, 1, 4}, 3, 5);
  EXPECT_EQ(m->spec().kind, "registry_test_record");
  EXPECT_EQ(m->spec().to_config(), cfg);
  EXPECT_EQ(m->spec().input(), (InputShape{1, 1, 4}));
  EXPECT_EQ(m->spec().output_classes(), 3u);
  EXPECT_EQ(m->params().size(), 4u);
  EXPECT_EQ(m->params()[0]->master.rows(), 6u);
  // Rebuilding from the recorded spec gives the same structure and weights.
  const auto again = build_model(m->spec(), 5);
  ASSERT_EQ(again->params().size(), 4u);
  for (std::size_t i = 0; i < 4; ++i) EXPECT_TRUE(same_master(again->params()[i]->master, m->params()[i]->master)) << i;
  cfg.set("hidden", 0);
  expect_usage_error(
      [&] {
        build_registered_model("registry_test_record", cfg, {1, 1, 4}, 3, 5);
      },
      {"'hidden'", "1..64"});
}

// The built-ins through the registry: a spec → config → spec round trip, and the same weights as their builders.
TEST(Registry, BuiltInsAreEntriesWithTheirFieldsAsConfig) {
  std::vector<ModelSpec> specs(4);
  specs[0].sizes = {4, 5, 3, 10};
  specs[0].bits = {4, 4, 4};
  specs[1].kind = "cnn";
  specs[1].set_input(8, 8, 3);
  specs[1].norm = "l2";
  specs[1].edge_bits = 6;
  specs[2].kind = "resnet8";
  specs[2].set_input(8, 8, 1);
  specs[2].scale = "max";
  specs[2].act_groups = 1;
  specs[3].kind = "resnet20";
  specs[3].set_input(8, 8, 1);
  specs[3].bits = {6, 6, 6};
  specs[3].groups = 2;
  for (const ModelSpec& s : specs) {
    const ModelSpec back = ModelSpec::from_config(s.kind, s.to_config(), s.input(), s.output_classes());
    EXPECT_EQ(back.describe(), s.describe());
    EXPECT_EQ(back.to_config(), s.to_config());
    const auto via_registry = build_registered_model(s.kind, s.to_config(), s.input(), s.output_classes(), 3);
    const auto direct = build_builtin_layers(s, 3);
    std::vector<Param*> a = via_registry->params();
    std::vector<Param*> b;
    for (const auto& l : direct)
      for (Param* p : l->params()) b.push_back(p);
    ASSERT_EQ(a.size(), b.size()) << s.kind;
    for (std::size_t i = 0; i < a.size(); ++i) {
      EXPECT_EQ(a[i]->name, b[i]->name);
      EXPECT_TRUE(same_master(a[i]->master, b[i]->master)) << s.kind << " " << a[i]->name;
    }
  }
  ModelConfig bad = specs[1].to_config();
  bad.set("hidden", ModelConfig::Ints{8});
  expect_usage_error(
      [&] {
        ModelSpec::from_config("cnn", bad, {8, 8, 3}, 10);
      },
      {"'hidden': not a key of model 'cnn'", "edge_bits, norm"});
  bad = specs[0].to_config();
  bad.set("weight_bits", 9);
  expect_usage_error([&] { ModelSpec::from_config("mlp", bad, {1, 1, 4}, 10); }, {"'weight_bits'", "2..8"});
}

}  // namespace
}  // namespace qtrain
