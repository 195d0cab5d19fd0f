// The model registry and model configurations: range-checked config getters, registering and building models by
// name, the built-ins as registry entries (same weights as before), and a user-defined model (conv → residual
// block → pool → linear) that trains, saves, loads and resumes like a built-in one.
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fuzz/fuzz_models.h"
#include "qtrain/engine/io/checkpoint.h"
#include "qtrain/engine/io/serialize.h"
#include "qtrain/engine/layers/conv2d.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/engine/layers/norm.h"
#include "qtrain/engine/layers/pool.h"
#include "qtrain/engine/layers/residual.h"
#include "qtrain/engine/models/builtin_models.h"
#include "qtrain/engine/models/registry.h"
#include "qtrain/engine/train/trainer.h"
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

// ---------------------------------------------------------------------------------------------------------------
// A user-defined model: conv3x3 → norm+ReLU → residual block (conv-norm-ReLU-conv-norm, identity shortcut) →
// global average pool → linear, its width from the config.

ModelLayers tiny_resnet(const ModelConfig& cfg, const InputShape& in, std::size_t classes, uint64_t seed) {
  const auto width = static_cast<std::size_t>(cfg.get_int("width", 8, 1, 256));
  const int bits = static_cast<int>(cfg.get_int("bits", 8, 2, 8));
  uint32_t id = 0;
  auto conv = [&](std::size_t cin, bool first) {
    Conv2dSpec cs;
    cs.in_h = in.h;
    cs.in_w = in.w;
    cs.in_channels = cin;
    cs.out_channels = width;
    cs.padding = 1;
    cs.weight_bits = cs.act_bits = cs.grad_bits = first ? 8 : bits;
    cs.groups = quant::max_groups(cs.grad_bits);
    cs.signed_input = first;
    cs.needs_input_grad = !first;
    return std::make_unique<Conv2d>(cs, id++, seed);
  };
  auto norm = [&](bool relu) {
    NormOptions opt;
    opt.relu = relu;
    return std::make_unique<L1BatchNorm>(width, id++, opt);
  };
  ModelLayers layers;
  layers.push_back(conv(in.c, true));
  layers.push_back(norm(true));
  ModelLayers body;
  body.push_back(conv(width, false));
  body.push_back(norm(true));
  body.push_back(conv(width, false));
  body.push_back(norm(false));
  layers.push_back(std::make_unique<Residual>(std::move(body), ModelLayers{}));
  layers.push_back(std::make_unique<GlobalAvgPool>(in.h, in.w, width));
  LinearSpec ls;
  ls.in = width;
  ls.out = classes;
  layers.push_back(std::make_unique<Linear>(ls, id++, seed));
  return layers;
}

const char* kTiny = "registry_test_tiny_resnet";

// Registers the user model once per process.
void register_tiny() {
  static const bool done = (register_model(kTiny, tiny_resnet), true);
  (void)done;
}

// 96 synthetic 6x6x2 images of 3 classes (a class brightens one corner).
const data::ImageSet& images() {
  static const data::ImageSet set = [] {
    data::ImageSet s;
    s.count = 96;
    s.rows = s.cols = 6;
    s.channels = 2;
    s.classes = 3;
    for (std::size_t i = 0; i < s.count; ++i) {
      const auto label = static_cast<uint8_t>(i % 3);
      s.labels.push_back(label);
      for (std::size_t p = 0; p < 72; ++p) {
        const std::size_t y = p / 12, x = (p / 2) % 6;
        const bool hot =
            (label == 0 && y < 3 && x < 3) || (label == 1 && y >= 3 && x >= 3) || (label == 2 && y < 3 && x >= 3);
        s.pixels.push_back(static_cast<uint8_t>((hot ? 160 : 40) + (i * 37 + p * 11) % 64));
      }
    }
    return s;
  }();
  return set;
}

TrainConfig tiny_config(int epochs) {
  TrainConfig cfg;
  cfg.epochs = epochs;
  cfg.batch = 16;
  cfg.lr = 0.1;
  cfg.seed = 11;
  return cfg;
}

std::unique_ptr<Model> tiny_model(uint64_t seed) {
  register_tiny();
  ModelConfig cfg;
  cfg.set("width", 8).set("bits", 4);
  return build_registered_model(kTiny, cfg, {6, 6, 2}, 3, seed);
}

// Master weights and running statistics with their exponents, in the model's order.
std::string state_of(Model& m) {
  std::string s;
  for (Param* p : m.params()) {
    s += p->name;
    const int e = p->master.exponent();
    s.append(reinterpret_cast<const char*>(&e), sizeof e);
    s.append(reinterpret_cast<const char*>(p->master.data<int32_t>()), 4 * p->master.size());
  }
  for (const auto& [name, t] : m.named_buffers()) {
    s += name;
    for (std::size_t c = 0; c < t->cols(); ++c) {
      const int e = t->exponent_at(0, c);
      s.append(reinterpret_cast<const char*>(&e), sizeof e);
    }
    s.append(reinterpret_cast<const char*>(t->data<int32_t>()), 4 * t->size());
  }
  return s;
}

std::string temp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("qtrain_registry_" + std::to_string(::getpid()) + "_" + name))
      .string();
}

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// The model file's bytes with its header edited (and its data reordered by `reorder`), the CRC fixed.
std::string edit_model_file(const std::string& bytes, const std::function<void(nlohmann::json&)>& edit) {
  uint32_t hlen;
  std::memcpy(&hlen, bytes.data() + 12, 4);
  nlohmann::json h = nlohmann::json::parse(bytes.substr(16, hlen));
  edit(h);
  const std::string text = h.dump();
  std::string out = bytes.substr(0, 12);
  const auto n = static_cast<uint32_t>(text.size());
  out.append(reinterpret_cast<const char*>(&n), 4);
  out += text + bytes.substr(16 + hlen, bytes.size() - 16 - hlen - 4);
  const auto crc =
      static_cast<uint32_t>(crc32(0L, reinterpret_cast<const Bytef*>(out.data()), static_cast<uInt>(out.size())));
  out.append(reinterpret_cast<const char*>(&crc), 4);
  return out;
}

void expect_input_error(const std::string& path, const std::string& bytes, const std::vector<std::string>& parts) {
  try {
    parse_model(path, bytes);
    ADD_FAILURE() << "no InputError";
  } catch (const InputError& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind(path + ": ", 0), 0u) << m;
    for (const std::string& p : parts) EXPECT_NE(m.find(p), std::string::npos) << "expected '" << p << "' in: " << m;
  }
}

TEST(UserModel, TrainsSavesAndLoadsThroughTheRegistry) {
  Trainer t(tiny_config(2), images(), tiny_model(11), data::fit_pixel_norm(images()));
  const EpochMetrics m1 = t.train_epoch(1, &images());
  const EpochMetrics m2 = t.train_epoch(2, &images());
  EXPECT_LT(m2.loss, m1.loss);
  EXPECT_GT(m2.test_accuracy, 0.5);  // three classes: chance is 1/3
  const std::string path = temp_path("tiny.qtm");
  save_model(path, t.model(), t.norm());
  LoadedModel loaded = load_model(path);
  std::filesystem::remove(path);
  EXPECT_EQ(loaded.model->spec().kind, kTiny);
  EXPECT_EQ(loaded.model->spec().to_config(), t.model().spec().to_config());
  EXPECT_EQ(loaded.model->spec().describe(), t.model().spec().describe());
  EXPECT_EQ(state_of(*loaded.model), state_of(t.model()));
  EXPECT_EQ(evaluate_model(*loaded.model, images(), loaded.norm, nullptr), t.evaluate(images()));
}

TEST(UserModel, CheckpointResumeGivesTheBitsOfAnUninterruptedRun) {
  Trainer straight(tiny_config(2), images(), tiny_model(11), data::fit_pixel_norm(images()));
  straight.train_epoch(1, nullptr);
  straight.train_epoch(2, nullptr);
  for (std::size_t at : {2u, 6u}) {  // mid-epoch and at the end of epoch 1 (6 steps of 16)
    SCOPED_TRACE("checkpoint after step " + std::to_string(at));
    Trainer first(tiny_config(2), images(), tiny_model(11), data::fit_pixel_norm(images()));
    std::string bytes;
    first.train_epoch(1, nullptr, [&](const Progress& p) {
      if (p.step == at) bytes = encode_checkpoint(first);
    });
    ASSERT_FALSE(bytes.empty());
    Checkpoint c = parse_checkpoint("tiny.qtc", bytes);
    EXPECT_EQ(c.config.model.kind, kTiny);
    std::unique_ptr<Trainer> resumed = resume_trainer(c, images(), "tiny.qtc");
    if (resumed->state().step_in_epoch != 0 || resumed->state().epoch == 1) resumed->train_epoch(1, nullptr);
    resumed->train_epoch(2, nullptr);
    EXPECT_EQ(state_of(resumed->model()), state_of(straight.model()));
    EXPECT_EQ(resumed->state().global_step, straight.state().global_step);
  }
}

TEST(UserModel, AnUnregisteredModelIsNamedWithHowToRegisterIt) {
  const std::unique_ptr<Model> m = tiny_model(1);
  const std::string path = temp_path("ghost.qtm");
  save_model(path, *m, data::fit_pixel_norm(images()));
  const std::string bytes = read_all(path);
  std::filesystem::remove(path);
  expect_input_error("ghost.qtm", edit_model_file(bytes, [](nlohmann::json& h) { h["model"]["name"] = "ghost"; }),
                     {"unknown model 'ghost': not built in and not registered; call "
                      "qtrain::register_model(\"ghost\", factory) before loading"});
}

TEST(UserModel, TensorsAreBoundByNameNotPosition) {
  const std::unique_ptr<Model> m = tiny_model(2);
  const std::string path = temp_path("order.qtm");
  save_model(path, *m, data::fit_pixel_norm(images()));
  const std::string bytes = read_all(path);
  std::filesystem::remove(path);
  // The same file with its first two parameters swapped, in the list and in the data.
  uint32_t hlen;
  std::memcpy(&hlen, bytes.data() + 12, 4);
  const std::vector<Param*> params = m->params();
  const std::size_t a = 4 + 4 * params[0]->master.size(), b = 4 + 4 * params[1]->master.size();
  const std::size_t data = 16 + hlen;
  std::string swapped = edit_model_file(bytes, [](nlohmann::json& h) { std::swap(h["params"][0], h["params"][1]); });
  uint32_t new_hlen;
  std::memcpy(&new_hlen, swapped.data() + 12, 4);
  swapped = swapped.substr(0, 16 + new_hlen) + bytes.substr(data + a, b) + bytes.substr(data, a) +
            bytes.substr(data + a + b, bytes.size() - 4 - data - a - b);
  const auto crc = static_cast<uint32_t>(
      crc32(0L, reinterpret_cast<const Bytef*>(swapped.data()), static_cast<uInt>(swapped.size())));
  swapped.append(reinterpret_cast<const char*>(&crc), 4);
  EXPECT_EQ(state_of(*parse_model("swapped.qtm", swapped).model), state_of(*m));

  using J = nlohmann::json;
  expect_input_error("missing.qtm", edit_model_file(bytes, [](J& h) { h["params"][2]["name"] = "conv9.weight"; }),
                     {"params[2] 'conv9.weight': the model has no parameter of that name"});
  expect_input_error("shape.qtm", edit_model_file(bytes, [](J& h) { h["model"]["config"]["width"] = 4; }),
                     {"params[0] 'conv0.weight' is 8x18, the model's parameter is 4x18"});
  expect_input_error("extra.qtm", edit_model_file(bytes, [](J& h) { h["buffers"].erase(1); }),
                     {"buffers: the model's buffer 'l1bn1.buffer1' is missing (5 listed, the model has 6)"});
  expect_input_error("config.qtm", edit_model_file(bytes, [](J& h) { h["model"]["config"]["width"] = 0; }),
                     {"model 'registry_test_tiny_resnet' cannot be built", "'width': 0 is out of range 1..256"});
}

// Files written before the registry (model file version 1: a built-in's spec, buffers without a list) load with
// the same tensors, and saving them again in the current format keeps every bit.
TEST(OldFormats, Version1ModelFilesLoadBitExactly) {
  const std::string dir = QTRAIN_FUZZ_CORPUS;
  const std::string bytes = read_all(dir + "/model/v1_tiny");
  ASSERT_EQ(bytes[8], 1);
  LoadedModel old = load_model(dir + "/model/v1_tiny");
  // Its parameters are stored right after the header, in the model's order: exponent, values.
  uint32_t hlen;
  std::memcpy(&hlen, bytes.data() + 12, 4);
  std::size_t at = 16 + hlen;
  for (Param* p : old.model->params()) {
    int32_t e;
    std::memcpy(&e, bytes.data() + at, 4);
    EXPECT_EQ(e, p->master.exponent()) << p->name;
    EXPECT_EQ(0, std::memcmp(bytes.data() + at + 4, p->master.data<int32_t>(), 4 * p->master.size())) << p->name;
    at += 4 + 4 * p->master.size();
  }
  const std::string path = temp_path("v2.qtm");
  save_model(path, *old.model, old.norm);
  const std::string v2 = read_all(path);
  LoadedModel again = load_model(path);
  std::filesystem::remove(path);
  EXPECT_EQ(v2[8], 2);
  EXPECT_EQ(state_of(*again.model), state_of(*old.model));
  EXPECT_EQ(again.model->spec().describe(), old.model->spec().describe());
}

TEST(OldFormats, Version2CheckpointsLoad) {
  const std::string dir = QTRAIN_FUZZ_CORPUS;
  for (const char* f : {"checkpoint/v2_start", "checkpoint/v2_mid_epoch", "checkpoint/v2_epoch_end"}) {
    SCOPED_TRACE(f);
    ASSERT_EQ(read_all(dir + "/" + f)[8], 2);
    const Checkpoint c = load_checkpoint(dir + "/" + f);
    EXPECT_EQ(c.config.model.kind, "mlp");
    EXPECT_EQ(c.model->params().size(), 4u);
  }
}

// The fuzz targets' seeds of their registered user model load once it is registered (and name it before).
TEST(FuzzCorpus, UserModelSeedsLoad) {
  const std::string dir = QTRAIN_FUZZ_CORPUS;
  fuzz::register_user_model();
  const LoadedModel m = load_model(dir + "/model/user_conv");
  EXPECT_EQ(m.model->spec().kind, fuzz::kUserModel);
  EXPECT_EQ(m.model->named_buffers().size(), 2u);
  const Checkpoint c = load_checkpoint(dir + "/checkpoint/user_mid_epoch");
  EXPECT_EQ(c.config.model.describe(), m.model->spec().describe());
  EXPECT_EQ(c.state.global_step, 1u);
}

}  // namespace
}  // namespace qtrain
