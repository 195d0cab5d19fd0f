#include "qtrain/engine/io/checkpoint.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

#include "qtrain/engine/io/binary_io.h"
#include "qtrain/engine/io/json_io.h"
#include "qtrain/engine/io/named_tensors.h"
#include "qtrain/engine/io/policy_json.h"
#include "qtrain/engine/io/serialize.h"
#include "qtrain/quant/error.h"

namespace qtrain {

namespace {

constexpr char kMagic[8] = {'Q', 'T', 'R', 'N', 'C', 'K', 'P', 'T'};
constexpr const char* kFormat = "qtrain checkpoint";
constexpr uint32_t kSections = 4;
// The sections of versions 2 and 3 and of version 1 (whose third held the SGD momentum of every tensor).
constexpr const char* kTags[kSections] = {"HEAD", "WGHT", "OPTM", "BUFS"};
constexpr const char* kTagsV1[kSections] = {"HEAD", "WGHT", "MOMT", "BUFS"};
constexpr std::size_t kMaxFileBytes = std::size_t{1} << 32;
constexpr int kMaxExponent = 200;
constexpr uint32_t kMaxNameBytes = 4096;  // an optimizer, parameter or slot name in OPTM
constexpr int64_t kMaxEpochs = 1000000;

using binary_io::put;
using binary_io::Reader;
using json_io::Fields;

void put_string(std::string& out, const std::string& s) {
  put<uint32_t>(out, static_cast<uint32_t>(s.size()));
  out += s;
}

std::string get_string(Reader& r, const char* what) {
  const std::size_t at = r.pos();
  const auto n = r.get<uint32_t>(what);
  if (n > kMaxNameBytes)
    r.fail_at(
        at, std::string(what) + " of " + std::to_string(n) + " bytes (at most " + std::to_string(kMaxNameBytes) + ")");
  return r.take(n, what);
}

// A number in [0, 1) (momentum, weight decay and AdamW's betas exclude 1), named by its key.
double unit_fraction(const Fields& f, const char* key) {
  const double v = f.number(key, 0, 1);
  if (v >= 1) throw std::runtime_error(f.path(key) + " must be a number in [0, 1) (found 1)");
  return v;
}

void put_section(std::string& out, const char* tag, const std::string& payload) {
  const std::size_t start = out.size();
  out.append(tag, 4);
  put<uint64_t>(out, payload.size());
  out += payload;
  put<uint32_t>(out, binary_io::crc32_of(out.data() + start, out.size() - start));
}

nlohmann::json metrics_to_json(const EpochMetrics& m) {
  return {{"epoch", m.epoch},
          {"loss", m.loss},
          {"train_accuracy", m.train_accuracy},
          {"test_accuracy", m.test_accuracy},
          {"images_per_second", m.images_per_second},
          {"seconds", m.seconds},
          {"lr", m.lr}};
}

EpochMetrics metrics_from_json(const Fields& f) {
  EpochMetrics m;
  m.epoch = static_cast<int>(f.integer("epoch", 1, kMaxEpochs));
  m.loss = f.number("loss", 0, 1e9);
  m.train_accuracy = f.number("train_accuracy", 0, 1);
  m.test_accuracy = f.number("test_accuracy", 0, 1);
  m.images_per_second = f.number("images_per_second", 0, 1e15);
  m.seconds = f.number("seconds", 0, 1e15);
  m.lr = f.number("lr", 0, 100);
  return m;
}

// The tensor lists of the header: parameters (all versions) and buffers (from version 3 on; before, the model's
// order without a list).
struct Listed {
  std::vector<named_tensors::Entry> params, buffers;
};

// The header's contents, checked field by field (std::runtime_error naming the field).
void header_from_json(const nlohmann::json& h, uint32_t version, Checkpoint& c, Listed& listed) {
  const Fields root(h, "");
  if (root.string("format") != kFormat) throw std::runtime_error("format is not \"" + std::string(kFormat) + "\"");
  // Versions 1 and 2 recorded a built-in's spec; version 3 the registry name and configuration.
  c.config.model =
      version >= 3 ? json_io::model_from_json(root.object("model")) : json_io::spec_from_json(root.object("model"));
  c.norm = json_io::norm_from_json(root.object("pixel_norm"));

  const Fields cfg = root.object("config");
  c.config.seed = cfg.unsigned_integer("seed", UINT64_MAX);
  c.config.batch = static_cast<std::size_t>(cfg.integer("batch", 1, 65536));
  c.config.lr = cfg.number("lr", 0, 100);
  try {
    c.config.schedule = parse_schedule(cfg.string("schedule"));
  } catch (const UsageError& e) {
    throw std::runtime_error(cfg.path("schedule") + ": " + e.what());
  }
  c.config.epochs = static_cast<int>(cfg.integer("epochs", 1, kMaxEpochs));
  c.config.sgd.momentum = unit_fraction(cfg, "momentum");
  c.config.sgd.weight_decay = unit_fraction(cfg, "weight_decay");
  // Absent in files written before AdamW: SGD, with the defaults for the rest.
  if (cfg.json().contains("optimizer")) c.config.optimizer = cfg.string("optimizer");
  if (cfg.json().contains("warmup_epochs")) c.config.warmup_epochs = cfg.number("warmup_epochs", 0, kMaxEpochs);
  if (cfg.json().contains("adamw")) {
    const Fields a = cfg.object("adamw");
    c.config.adamw.beta1 = unit_fraction(a, "beta1");
    c.config.adamw.beta2 = unit_fraction(a, "beta2");
    c.config.adamw.eps = a.number("eps", 0, 1);
    c.config.adamw.weight_decay = unit_fraction(a, "weight_decay");
  }
  c.config.augment.pad = static_cast<int>(cfg.integer("augment_pad", 0, 16));
  const nlohmann::json& flip = cfg.at("augment_flip");
  if (!flip.is_boolean()) throw std::runtime_error(cfg.path("augment_flip") + " must be true or false");
  c.config.augment.flip = flip.get<bool>();
  c.config.threads = 1;
  if (h.contains("policy")) c.config.policy = json_io::policy_from_json(h.at("policy"), "policy");
  try {
    c.config.validate();
  } catch (const UsageError& e) {
    throw std::runtime_error(std::string("config is not a valid training configuration: ") + e.what());
  }

  const Fields data = root.object("data");
  c.train_count = static_cast<std::size_t>(data.integer("count", 1, UINT32_MAX));
  c.image_rows = static_cast<std::size_t>(data.integer("rows", 1, 1 << 16));
  c.image_cols = static_cast<std::size_t>(data.integer("cols", 1, 1 << 16));
  c.image_channels = static_cast<std::size_t>(data.integer("channels", 1, json_io::kMaxImageChannels));
  c.train_crc = static_cast<uint32_t>(data.integer("crc32", 0, UINT32_MAX));
  const ModelSpec& ms = c.config.model;
  const bool fits = ms.convolutional()
                        ? ms.in_h == c.image_rows && ms.in_w == c.image_cols && ms.in_c == c.image_channels
                        : ms.sizes.front() == c.image_rows * c.image_cols * c.image_channels;
  if (!fits)
    throw std::runtime_error("data.rows x data.cols x data.channels (" + std::to_string(c.image_rows) + "x" +
                             std::to_string(c.image_cols) + "x" + std::to_string(c.image_channels) +
                             ") does not match the model's input (" + ms.describe() + ")");
  if (c.norm.channels.size() != c.image_channels)
    throw std::runtime_error("pixel_norm has " + std::to_string(c.norm.channels.size()) + " channels, the data " +
                             std::to_string(c.image_channels));

  const Fields pos = root.object("position");
  c.steps_per_epoch = static_cast<std::size_t>(pos.integer("steps_per_epoch", 1, UINT32_MAX));
  if (c.steps_per_epoch != c.train_count / c.config.batch)
    throw std::runtime_error("position.steps_per_epoch " + std::to_string(c.steps_per_epoch) + " does not match " +
                             std::to_string(c.train_count) + " images in batches of " +
                             std::to_string(c.config.batch));
  TrainState& st = c.state;
  st.epoch = static_cast<int>(pos.integer("epoch", 1, c.config.epochs + 1));
  st.step_in_epoch = static_cast<std::size_t>(
      pos.integer("step_in_epoch", 0, st.epoch == c.config.epochs + 1 ? 0 : static_cast<int64_t>(c.steps_per_epoch)));
  st.global_step = pos.unsigned_integer("global_step", UINT64_MAX);
  const uint64_t expect = static_cast<uint64_t>(st.epoch - 1) * c.steps_per_epoch + st.step_in_epoch;
  if (st.global_step != expect)
    throw std::runtime_error("position.global_step " + std::to_string(st.global_step) + " does not match epoch " +
                             std::to_string(st.epoch) + ", step " + std::to_string(st.step_in_epoch) + " (expected " +
                             std::to_string(expect) + ")");
  st.loss_sum = pos.number("loss_sum", 0, 1e18);
  st.seen = static_cast<std::size_t>(pos.integer("seen", 0, INT64_MAX));
  if (st.seen != st.step_in_epoch * c.config.batch)
    throw std::runtime_error("position.seen " + std::to_string(st.seen) + " does not match " +
                             std::to_string(st.step_in_epoch) + " steps of " + std::to_string(c.config.batch));
  st.correct = static_cast<std::size_t>(pos.integer("correct", 0, static_cast<int64_t>(st.seen)));

  const Fields health = root.object("health");
  st.health.reference = health.number("reference", 0, 1e9);
  st.health.diverge_streak = static_cast<int>(health.integer("diverge_streak", 0, 1 << 30));
  st.health.zero_grad_history = health.unsigned_integer("zero_grad_history", UINT64_MAX);
  st.health.steps_seen = static_cast<int>(health.integer("steps_seen", 0, 64));

  const nlohmann::json& history = root.array("history");
  if (history.size() != static_cast<std::size_t>(st.epoch - 1))
    throw std::runtime_error("history has " + std::to_string(history.size()) + " entries, epoch " +
                             std::to_string(st.epoch) + " needs " + std::to_string(st.epoch - 1));
  for (std::size_t i = 0; i < history.size(); ++i) {
    st.history.push_back(metrics_from_json(Fields(history[i], "history[" + std::to_string(i) + "]")));
    if (st.history.back().epoch != static_cast<int>(i + 1))
      throw std::runtime_error("history[" + std::to_string(i) + "].epoch must be " + std::to_string(i + 1));
  }

  listed.params = named_tensors::from_json(root.array("tensors"), "tensors", true);
  if (version >= 3) listed.buffers = named_tensors::from_json(root.array("buffers"), "buffers", false);
}

struct Section {
  std::size_t begin = 0, end = 0;  // payload
};

}  // namespace

std::string encode_checkpoint(Trainer& trainer) {
  const TrainConfig& cfg = trainer.config();
  const TrainState& st = trainer.state();
  const data::ImageSet& train = trainer.train_set();
  Model& model = trainer.model();
  nlohmann::json h;
  h["format"] = kFormat;
  h["model"] = json_io::model_to_json(model.spec());
  h["pixel_norm"] = json_io::norm_to_json(trainer.norm());
  h["config"] = {{"seed", cfg.seed},
                 {"batch", cfg.batch},
                 {"lr", cfg.lr},
                 {"schedule", schedule_name(cfg.schedule)},
                 {"epochs", cfg.epochs},
                 {"warmup_epochs", cfg.warmup_epochs},
                 {"optimizer", cfg.optimizer},
                 {"momentum", cfg.sgd.momentum},
                 {"weight_decay", cfg.sgd.weight_decay},
                 {"adamw",
                  {{"beta1", cfg.adamw.beta1},
                   {"beta2", cfg.adamw.beta2},
                   {"eps", cfg.adamw.eps},
                   {"weight_decay", cfg.adamw.weight_decay}}},
                 {"augment_pad", cfg.augment.pad},
                 {"augment_flip", cfg.augment.flip}};
  if (cfg.policy) h["policy"] = json_io::policy_json(*cfg.policy);
  h["data"] = {{"count", train.count},
               {"rows", train.rows},
               {"cols", train.cols},
               {"channels", train.channels},
               {"crc32", trainer.training_data_crc()}};
  h["position"] = {{"global_step", st.global_step}, {"epoch", st.epoch},       {"step_in_epoch", st.step_in_epoch},
                   {"steps_per_epoch", trainer.steps_per_epoch()},            {"loss_sum", st.loss_sum},
                   {"correct", st.correct},          {"seen", st.seen}};
  h["health"] = {{"reference", st.health.reference},
                 {"diverge_streak", st.health.diverge_streak},
                 {"zero_grad_history", st.health.zero_grad_history},
                 {"steps_seen", st.health.steps_seen}};
  nlohmann::json history = nlohmann::json::array();
  for (const EpochMetrics& m : st.history) history.push_back(metrics_to_json(m));
  h["history"] = history;
  const named_tensors::Named params = named_tensors::params_of(model), buffers = named_tensors::buffers_of(model);
  h["tensors"] = named_tensors::to_json(params, true);
  h["buffers"] = named_tensors::to_json(buffers, false);
  std::string weights;
  named_tensors::put_params(weights, params);
  std::string optimizer;
  put_string(optimizer, trainer.optimizer().name());
  const std::vector<NamedState> state = trainer.optimizer().state();
  put<uint32_t>(optimizer, static_cast<uint32_t>(state.size()));
  for (const NamedState& e : state) {
    put_string(optimizer, e.param);
    put_string(optimizer, e.slot);
    put<uint32_t>(optimizer, static_cast<uint32_t>(e.value.rows()));
    put<uint32_t>(optimizer, static_cast<uint32_t>(e.value.cols()));
    put<int32_t>(optimizer, e.value.exponent());
    binary_io::put_i32_values(optimizer, e.value);
  }

  std::string out(kMagic, sizeof kMagic);
  put<uint32_t>(out, kCheckpointVersion);
  put<uint32_t>(out, kSections);
  put_section(out, kTags[0], h.dump());
  put_section(out, kTags[1], weights);
  put_section(out, kTags[2], optimizer);
  std::string statistics;
  named_tensors::put_buffers(statistics, buffers);
  put_section(out, kTags[3], statistics);
  return out;
}

void save_checkpoint(const std::string& path, Trainer& trainer) { write_file_atomic(path, encode_checkpoint(trainer)); }

Checkpoint load_checkpoint(const std::string& path) {
  return parse_checkpoint(path, binary_io::read_file_bounded(path, "checkpoint", kMaxFileBytes));
}

namespace {

// Version 1's MOMT section: per tensor of the model, the SGD momentum (i32 exponent, rows·cols i32).
void read_momentum_v1(Reader& m, const std::vector<Param*>& params, Checkpoint& c) {
  const std::unique_ptr<Optimizer> sgd = make_optimizer("sgd", c.config.optimizer_config());
  c.config.optimizer = sgd->name();
  for (Param* p : params) {
    const std::size_t at = m.pos();
    const int32_t exponent = m.get<int32_t>("exponent");
    NamedState e{p->name, "momentum", Tensor(p->master.rows(), p->master.cols(), DType::kI32, exponent)};
    try {
      sgd->check_state(e, *p);
    } catch (const std::invalid_argument& err) {
      m.fail_at(at, err.what());
    }
    m.read_i32_values(e.value, p->name + " momentum");
    c.optimizer_state.push_back(std::move(e));
  }
}

// The OPTM section: the optimizer's name and its state entries, each checked against the model (a parameter it
// has, that parameter's shape: so the allocation is bounded by the model) and by the optimizer (check_state).
void read_optimizer_state(Reader& o, const std::vector<Param*>& params, Checkpoint& c) {
  const std::size_t at_name = o.pos();
  const std::string name = get_string(o, "optimizer name");
  std::unique_ptr<Optimizer> opt;
  try {
    opt = make_optimizer(name, c.config.optimizer_config());
  } catch (const UsageError& e) {
    o.fail_at(at_name, std::string("section OPTM: ") + e.what());
  }
  if (name != c.config.optimizer)
    o.fail_at(at_name, "section OPTM holds the state of optimizer '" + name + "', section HEAD names '" +
                           c.config.optimizer + "'");
  const std::size_t at_count = o.pos();
  const auto count = o.get<uint32_t>("state entry count");
  constexpr std::size_t kMinEntryBytes = 4 + 4 + 4 + 4 + 4;  // two empty names, rows, cols, exponent
  if (count > o.remaining() / kMinEntryBytes)
    o.fail_at(at_count, "section OPTM declares " + std::to_string(count) + " state entries, its " +
                            std::to_string(o.remaining()) + " remaining bytes hold at most " +
                            std::to_string(o.remaining() / kMinEntryBytes));
  std::unordered_map<std::string, Param*> by_name;
  for (Param* p : params) by_name.emplace(p->name, p);
  std::set<std::pair<std::string, std::string>> seen;
  for (uint32_t i = 0; i < count; ++i) {
    const std::size_t at = o.pos();
    std::string param = get_string(o, "parameter name"), slot = get_string(o, "slot name");
    const std::string what = "section OPTM: entry " + std::to_string(i) + " (" + param + " " + slot + ")";
    const auto found = by_name.find(param);
    if (found == by_name.end()) o.fail_at(at, what + ": the model has no parameter " + param);
    if (!seen.emplace(param, slot).second) o.fail_at(at, what + ": given twice");
    const Param& p = *found->second;
    const std::size_t at_dims = o.pos();
    const auto rows = o.get<uint32_t>("rows"), cols = o.get<uint32_t>("cols");
    if (rows != p.master.rows() || cols != p.master.cols())
      o.fail_at(at_dims, what + " is " + std::to_string(rows) + "x" + std::to_string(cols) + ", the parameter " +
                             std::to_string(p.master.rows()) + "x" + std::to_string(p.master.cols()));
    const std::size_t at_e = o.pos();
    const auto e = o.get<int32_t>("exponent");
    if (e < -kMaxExponent || e > kMaxExponent)
      o.fail_at(at_e, what + " exponent " + std::to_string(e) + " is out of range " + std::to_string(-kMaxExponent) +
                          ".." + std::to_string(kMaxExponent));
    if (uint64_t{rows} * cols * sizeof(int32_t) > o.remaining())
      o.fail(what + ": the section ends inside its " + std::to_string(uint64_t{rows} * cols) + " values (truncated)");
    NamedState entry{std::move(param), std::move(slot), Tensor(rows, cols, DType::kI32, e)};
    try {
      opt->check_state(entry, p);
    } catch (const std::invalid_argument& err) {
      o.fail_at(at, std::string("section OPTM: ") + err.what());
    }
    o.read_i32_values(entry.value, entry.param + " " + entry.slot);
    c.optimizer_state.push_back(std::move(entry));
  }
  if (o.remaining() != 0)
    o.fail(std::to_string(o.remaining()) + " unexpected bytes after the last state entry of section OPTM");
}

}  // namespace

Checkpoint parse_checkpoint(const std::string& path, const std::string& bytes) {
  Reader r(path, bytes);
  if (bytes.size() < sizeof kMagic || bytes.compare(0, sizeof kMagic, kMagic, sizeof kMagic) != 0)
    r.fail("not a qtrain checkpoint (bad magic)");
  r.take(sizeof kMagic, "magic");
  const uint32_t version = r.get<uint32_t>("version");
  if (version < 1 || version > kCheckpointVersion)
    r.fail_at(8, "checkpoint format version " + std::to_string(version) + "; this build reads versions 1 to " +
                     std::to_string(kCheckpointVersion) + " (" +
                     (version > kCheckpointVersion
                          ? "written by a newer qtrain? resume it with that qtrain, or start the run again"
                          : "not a file qtrain wrote; start the run again") +
                     ")");
  const char* const* tags = version == 1 ? kTagsV1 : kTags;
  const uint32_t count = r.get<uint32_t>("section count");
  if (count != kSections)
    r.fail_at(12, "section count " + std::to_string(count) + ", version " + std::to_string(version) + " has " +
                      std::to_string(kSections));

  // Frame every section and check its CRC before interpreting any of it.
  Section sec[kSections];
  for (uint32_t i = 0; i < kSections; ++i) {
    const std::size_t start = r.pos();
    const std::string tag = r.take(4, "section tag");
    if (tag != tags[i]) {
      std::string shown;
      for (char ch : tag) shown += (ch >= 32 && ch < 127) ? ch : '?';
      r.fail_at(start, "expected section " + std::string(tags[i]) + ", found '" + shown + "'");
    }
    const uint64_t len = r.get<uint64_t>("section length");
    if (len > r.remaining() || r.remaining() - len < 4)
      r.fail_at(start + 4, "section " + tag + " declares " + std::to_string(len) + " bytes, the file holds " +
                               std::to_string(r.remaining()) + " after its header (truncated)");
    sec[i].begin = r.pos();
    sec[i].end = sec[i].begin + static_cast<std::size_t>(len);
    r.take(static_cast<std::size_t>(len), "section");
    const std::size_t crc_at = r.pos();
    const auto stored = r.get<uint32_t>("section checksum");
    if (stored != binary_io::crc32_of(bytes.data() + start, crc_at - start))
      r.fail_at(crc_at, "section " + tag + ": checksum mismatch (the file is corrupt)");
  }
  if (r.remaining() != 0)
    r.fail(std::to_string(r.remaining()) + " unexpected bytes after the last section (the file should end here)");

  Checkpoint c;
  Listed listed;
  try {
    const nlohmann::json h = nlohmann::json::parse(bytes.begin() + static_cast<std::ptrdiff_t>(sec[0].begin),
                                                   bytes.begin() + static_cast<std::ptrdiff_t>(sec[0].end));
    header_from_json(h, version, c, listed);
    binary_io::check_size_bound(c.config.model, bytes.size());
  } catch (const nlohmann::json::parse_error& e) {
    r.fail_at(sec[0].begin, std::string("section HEAD is not valid JSON (") + e.what() + ")");
  } catch (const std::exception& e) {
    r.fail_at(sec[0].begin, std::string("section HEAD: ") + e.what());
  }
  // The listed tensors' sizes against their sections, before the model is built (a registered model has no size
  // bound of its own); OPTM's entries are checked one by one.
  auto check_section = [&](uint32_t i, uint64_t need) {
    const uint64_t have = sec[i].end - sec[i].begin;
    if (have != need)
      r.fail_at(sec[i].begin, std::string("section ") + tags[i] + " holds " + std::to_string(have) +
                                  " bytes, the listed tensors need " + std::to_string(need));
  };
  check_section(1, named_tensors::param_bytes(listed.params));
  if (version == 1) check_section(2, named_tensors::param_bytes(listed.params));
  if (version >= 3) check_section(3, named_tensors::buffer_bytes(listed.buffers));
  try {
    c.model = build_model(c.config.model, 0);
  } catch (const std::exception& e) {
    r.fail_at(sec[0].begin, "section HEAD: model '" + c.config.model.kind +
                                "' cannot be built from the file's configuration: " + e.what());
  }
  if (c.config.policy) {
    try {
      check_policy(*c.config.policy, c.model->named_layers(), "policy");
    } catch (const std::exception& e) {
      r.fail_at(sec[0].begin, std::string("section HEAD: ") + e.what());
    }
    c.config.policy->source = path;
  }
  const named_tensors::Named model_params = named_tensors::params_of(*c.model);
  const named_tensors::Named model_buffers = named_tensors::buffers_of(*c.model);
  if (version < 3) listed.buffers = named_tensors::entries_of(model_buffers);
  std::vector<std::size_t> param_at, buffer_at;
  try {
    param_at = named_tensors::bind(listed.params, model_params, "tensors", "parameter");
    buffer_at = named_tensors::bind(listed.buffers, model_buffers, "buffers", "buffer");
  } catch (const std::exception& e) {
    r.fail_at(sec[0].begin, std::string("section HEAD: ") + e.what());
  }
  if (version < 3) check_section(3, named_tensors::buffer_bytes(listed.buffers));
  const std::vector<Param*> all = c.model->params();
  std::vector<Param*> params;  // in the list's order
  for (std::size_t i : param_at) params.push_back(all[i]);
  Reader w(path, bytes, sec[1].begin, sec[1].end);
  named_tensors::read_params(w, named_tensors::tensors_at(model_params, param_at), listed.params);
  Reader o(path, bytes, sec[2].begin, sec[2].end);
  if (version == 1)
    read_momentum_v1(o, params, c);
  else
    read_optimizer_state(o, params, c);
  Reader b(path, bytes, sec[3].begin, sec[3].end);
  named_tensors::read_buffers(b, named_tensors::tensors_at(model_buffers, buffer_at));
  return c;
}

std::unique_ptr<Trainer> resume_trainer(Checkpoint& c, const data::ImageSet& train, const std::string& path) {
  if (!c.model) throw std::logic_error("resume_trainer: the checkpoint's model was already used");
  if (train.count != c.train_count || train.rows != c.image_rows || train.cols != c.image_cols ||
      train.channels != c.image_channels)
    throw InputError(path + ": the run was trained on " + std::to_string(c.train_count) + " images of " +
                     std::to_string(c.image_rows) + "x" + std::to_string(c.image_cols) + "x" +
                     std::to_string(c.image_channels) + ", the training data now has " + std::to_string(train.count) +
                     " of " + std::to_string(train.rows) + "x" + std::to_string(train.cols) + "x" +
                     std::to_string(train.channels) + " (same --dataset, --data and --train-limit as the run?)");
  TrainConfig cfg = c.config;
  auto trainer = std::make_unique<Trainer>(cfg, train, std::move(c.model), c.norm);
  if (trainer->training_data_crc() != c.train_crc)
    throw InputError(path + ": the training data differs from the run's (CRC-32 of the images and labels does not "
                            "match; same --data as the original run?)");
  try {
    trainer->optimizer().load_state(std::move(c.optimizer_state), trainer->model().params());
    trainer->restore(c.state);
  } catch (const std::invalid_argument& e) {
    throw InputError(path + ": " + e.what());
  }
  return trainer;
}

}  // namespace qtrain
