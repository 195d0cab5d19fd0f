#include "qtrain/engine/io/json_io.h"

#include <cmath>
#include <stdexcept>
#include <variant>

#include "qtrain/engine/models/registry.h"
#include "qtrain/quant/error.h"

namespace qtrain::json_io {

namespace {
[[noreturn]] void bad(const std::string& path, const std::string& want, const nlohmann::json& found) {
  // Only scalars are shown (dumping a hostile nested value would recurse as deep as it is nested).
  std::string shown = found.is_structured() ? "" : " " + found.dump();
  if (shown.size() > 40) shown = shown.substr(0, 37) + "...";
  throw std::runtime_error(path + " must be " + want + " (found " + type_of(found) + shown + ")");
}
}  // namespace

std::string type_of(const nlohmann::json& j) {
  if (j.is_number_integer()) return "integer";
  if (j.is_number_float()) return "number";
  if (j.is_string()) return "string";
  if (j.is_boolean()) return "boolean";
  if (j.is_array()) return "array";
  if (j.is_object()) return "object";
  if (j.is_null()) return "null";
  return "value";
}

Fields::Fields(const nlohmann::json& j, std::string path) : j_(j), path_(std::move(path)) {
  if (!j.is_object()) bad(path_.empty() ? "the header" : path_, "an object", j);
}

std::string Fields::path(const char* key) const { return path_.empty() ? key : path_ + "." + key; }

const nlohmann::json& Fields::at(const char* key) const {
  const auto it = j_.find(key);
  if (it == j_.end()) throw std::runtime_error(path(key) + " is missing");
  return *it;
}

Fields Fields::object(const char* key) const { return Fields(at(key), path(key)); }

const nlohmann::json& Fields::array(const char* key) const {
  const nlohmann::json& v = at(key);
  if (!v.is_array()) bad(path(key), "an array", v);
  return v;
}

int64_t integer_value(const nlohmann::json& j, const std::string& path, int64_t lo, int64_t hi) {
  const std::string want = "an integer in " + std::to_string(lo) + ".." + std::to_string(hi);
  if (j.is_number_unsigned()) {
    const auto u = j.get<uint64_t>();
    if (hi < 0 || u > static_cast<uint64_t>(hi) || (lo > 0 && u < static_cast<uint64_t>(lo))) bad(path, want, j);
    return static_cast<int64_t>(u);
  }
  if (j.is_number_integer()) {
    const auto v = j.get<int64_t>();
    if (v < lo || v > hi) bad(path, want, j);
    return v;
  }
  bad(path, want, j);
}

int64_t Fields::integer(const char* key, int64_t lo, int64_t hi) const {
  return integer_value(at(key), path(key), lo, hi);
}

uint64_t Fields::unsigned_integer(const char* key, uint64_t hi) const {
  const nlohmann::json& v = at(key);
  const std::string want = "an integer in 0.." + std::to_string(hi);
  if (v.is_number_unsigned()) {
    const auto u = v.get<uint64_t>();
    if (u > hi) bad(path(key), want, v);
    return u;
  }
  if (v.is_number_integer() && v.get<int64_t>() == 0) return 0;  // nlohmann parses "0" as unsigned; be safe
  bad(path(key), want, v);
}

double Fields::number(const char* key, double lo, double hi) const {
  const nlohmann::json& v = at(key);
  if (!v.is_number()) bad(path(key), "a number", v);
  const auto d = v.get<double>();
  if (!std::isfinite(d) || d < lo || d > hi)
    bad(path(key), "a finite number in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]", v);
  return d;
}

std::string Fields::string(const char* key) const {
  const nlohmann::json& v = at(key);
  if (!v.is_string()) bad(path(key), "a string", v);
  return v.get<std::string>();
}

nlohmann::json config_to_json(const ModelConfig& c) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [key, value] : c.values()) {
    if (const int64_t* i = std::get_if<int64_t>(&value)) j[key] = *i;
    if (const double* d = std::get_if<double>(&value)) j[key] = *d;
    if (const std::string* str = std::get_if<std::string>(&value)) j[key] = *str;
    if (const ModelConfig::Ints* l = std::get_if<ModelConfig::Ints>(&value)) j[key] = *l;
  }
  return j;
}

ModelConfig config_from_json(const Fields& f) {
  constexpr std::size_t kMaxKeys = 256, kMaxString = 4096, kMaxList = 65536;
  const nlohmann::json& j = f.json();
  if (j.size() > kMaxKeys)
    throw std::runtime_error(f.where() + " has " + std::to_string(j.size()) + " keys (at most " +
                             std::to_string(kMaxKeys) + ")");
  ModelConfig c;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& key = it.key();
    const nlohmann::json& v = it.value();
    if (!ModelConfig::valid_key(key))
      throw std::runtime_error(f.where() + ": key '" + key.substr(0, 64) +
                               "' is not 1..64 characters of letters, digits, '_', '.', '-'");
    const std::string path = f.path(key.c_str());
    if (v.is_number_integer()) {
      c.set(key, integer_value(v, path, INT64_MIN, INT64_MAX));
    } else if (v.is_number_float()) {
      const double d = v.get<double>();
      if (!std::isfinite(d)) bad(path, "a finite number", v);
      c.set(key, d);
    } else if (v.is_string()) {
      if (v.get_ref<const std::string&>().size() > kMaxString)
        throw std::runtime_error(path + " is longer than " + std::to_string(kMaxString) + " bytes");
      c.set(key, v.get<std::string>());
    } else if (v.is_array()) {
      if (v.size() > kMaxList)
        throw std::runtime_error(path + " has more than " + std::to_string(kMaxList) + " entries");
      ModelConfig::Ints list;
      for (std::size_t i = 0; i < v.size(); ++i)
        list.push_back(integer_value(v[i], path + "[" + std::to_string(i) + "]", INT64_MIN, INT64_MAX));
      c.set(key, std::move(list));
    } else {
      bad(path, "an integer, a number, a string or an array of integers", v);
    }
  }
  return c;
}

nlohmann::json model_to_json(const ModelSpec& s) {
  const InputShape in = s.input();
  return {{"name", s.kind},
          {"config", config_to_json(s.to_config())},
          {"input", {in.h, in.w, in.c}},
          {"classes", s.output_classes()}};
}

ModelSpec model_from_json(const Fields& f) {
  const std::string name = f.string("name");
  if (!model_known(name))
    throw std::runtime_error("unknown model '" + name + "': not built in and not registered; call " +
                             "qtrain::register_model(\"" + name + "\", factory) before loading");
  const nlohmann::json& in = f.array("input");
  if (in.size() != 3)
    throw std::runtime_error(f.path("input") + " must be [height, width, channels] (found " +
                             std::to_string(in.size()) + " entries)");
  InputShape shape;
  shape.h = static_cast<std::size_t>(integer_value(in[0], f.path("input") + "[0]", 1, kMaxImageSide));
  shape.w = static_cast<std::size_t>(integer_value(in[1], f.path("input") + "[1]", 1, kMaxImageSide));
  shape.c =
      static_cast<std::size_t>(integer_value(in[2], f.path("input") + "[2]", 1, static_cast<int64_t>(kMaxLayerWidth)));
  const auto classes = static_cast<std::size_t>(f.integer("classes", 1, kMaxClasses));
  const ModelConfig config = config_from_json(f.object("config"));
  try {
    ModelSpec s = ModelSpec::from_config(name, config, shape, classes);
    s.validate();
    return s;
  } catch (const UsageError& e) {
    throw std::runtime_error((f.where().empty() ? std::string("the model") : f.where()) +
                             " is not a valid model: " + e.what());
  }
}

ModelSpec spec_from_json(const Fields& f) {
  ModelSpec s;
  s.kind = f.string("kind");
  const nlohmann::json& sizes = f.array("sizes");
  if (sizes.size() < 2 || sizes.size() > 1024)
    throw std::runtime_error(f.path("sizes") + " must list 2..1024 layer sizes (found " +
                             std::to_string(sizes.size()) + ")");
  s.sizes.clear();
  for (std::size_t i = 0; i < sizes.size(); ++i)
    s.sizes.push_back(static_cast<std::size_t>(integer_value(
        sizes[i], f.path("sizes") + "[" + std::to_string(i) + "]", 1, static_cast<int64_t>(kMaxLayerWidth))));
  const Fields bits = f.object("bits");
  s.bits.weight = static_cast<int>(bits.integer("weight", 2, 8));
  s.bits.act = static_cast<int>(bits.integer("act", 2, 8));
  s.bits.grad = static_cast<int>(bits.integer("grad", 2, 8));
  s.input_bits = static_cast<int>(f.integer("input_bits", 2, 8));
  s.groups = static_cast<int>(f.integer("groups", 0, 8));
  if (f.json().contains("input")) {  // convolutional models
    const nlohmann::json& in = f.array("input");
    if (in.size() != 3)
      throw std::runtime_error(f.path("input") + " must be [height, width, channels] (found " +
                               std::to_string(in.size()) + " entries)");
    s.in_h = static_cast<std::size_t>(integer_value(in[0], f.path("input") + "[0]", 1, kMaxImageSide));
    s.in_w = static_cast<std::size_t>(integer_value(in[1], f.path("input") + "[1]", 1, kMaxImageSide));
    s.in_c = static_cast<std::size_t>(integer_value(in[2], f.path("input") + "[2]", 1, kMaxImageChannels));
    s.classes = static_cast<std::size_t>(f.integer("classes", 1, kMaxClasses));
    s.edge_bits = static_cast<int>(f.integer("edge_bits", 0, 8));
    s.norm = f.string("norm");
  }
  s.scale = f.json().contains("scale") ? f.string("scale") : "max";  // files from before the field: max
  // Files from before the field were trained with one group.
  s.act_groups = f.json().contains("act_groups") ? static_cast<int>(f.integer("act_groups", 0, 8)) : 1;
  try {
    s.validate();
  } catch (const UsageError& e) {
    throw std::runtime_error((f.where().empty() ? std::string("the model") : f.where()) +
                             " is not a valid model: " + e.what());
  }
  return s;
}

// One channel: scalars and one table (the original single-channel form, kept so those files do not change);
// several: an array entry per channel for mean, stddev and table.
nlohmann::json norm_to_json(const data::PixelNorm& n) {
  if (n.identity) return {{"identity", true}, {"channels", n.channels.size()}, {"exponent", n.exponent}};
  nlohmann::json mean = nlohmann::json::array(), stddev = nlohmann::json::array(), table = nlohmann::json::array();
  for (const data::ChannelNorm& c : n.channels) {
    mean.push_back(c.mean);
    stddev.push_back(c.stddev);
    table.push_back(std::vector<int>(c.table.begin(), c.table.end()));
  }
  if (n.channels.size() == 1)
    return {{"mean", mean[0]}, {"stddev", stddev[0]}, {"exponent", n.exponent}, {"table", table[0]}};
  return {{"mean", mean}, {"stddev", stddev}, {"exponent", n.exponent}, {"table", table}};
}

data::PixelNorm norm_from_json(const Fields& f) {
  if (f.json().contains("identity")) {  // int8 features (data/in_memory.h): no statistics, no table to check
    if (f.at("identity") != true) throw std::runtime_error(f.path("identity") + " must be true when present");
    return data::identity_pixel_norm(static_cast<std::size_t>(f.integer("channels", 1, 4096)),
                                     static_cast<int>(f.integer("exponent", -64, 64)));
  }
  // Pixels are in [0, 1]: so is each channel's mean, and its standard deviation is at most 1/2.
  constexpr double kMinStddev = 1e-9;
  const bool single = !f.at("mean").is_array();
  std::vector<double> mean, stddev;
  std::vector<const nlohmann::json*> tables;
  std::vector<std::string> table_paths;
  if (single) {
    mean.push_back(f.number("mean", 0.0, 1.0));
    stddev.push_back(f.number("stddev", kMinStddev, 1.0));
    tables.push_back(&f.array("table"));
    table_paths.push_back(f.path("table"));
  } else {
    const nlohmann::json& m = f.array("mean");
    const nlohmann::json& s = f.array("stddev");
    const nlohmann::json& t = f.array("table");
    if (m.empty() || m.size() > 64 || s.size() != m.size() || t.size() != m.size())
      throw std::runtime_error(f.path("mean") + ", " + f.path("stddev") + " and " + f.path("table") +
                               " need one entry per channel (1..64 channels)");
    for (std::size_t c = 0; c < m.size(); ++c) {
      std::string i = "[";
      i += std::to_string(c);
      i += ']';
      const nlohmann::json pair = {{"mean", m[c]}, {"stddev", s[c]}};
      const Fields one(pair, f.where());
      // Checked through a one-channel object so the messages name the field; the path gets the index.
      try {
        mean.push_back(one.number("mean", 0.0, 1.0));
        stddev.push_back(one.number("stddev", kMinStddev, 1.0));
      } catch (const std::runtime_error& e) {
        throw std::runtime_error(std::string(e.what()) + " (channel " + std::to_string(c) + ")");
      }
      if (!t[c].is_array()) throw std::runtime_error(f.path("table") + i + " must be an array");
      tables.push_back(&t[c]);
      table_paths.push_back(f.path("table") + i);
    }
  }
  const data::PixelNorm n = data::make_pixel_norm(mean, stddev);
  const int64_t e = f.integer("exponent", -64, 64);
  if (e != n.exponent)
    throw std::runtime_error(f.path("exponent") + " is " + std::to_string(e) + " but the statistics give " +
                             std::to_string(n.exponent));
  for (std::size_t c = 0; c < tables.size(); ++c) {
    const nlohmann::json& table = *tables[c];
    if (table.size() != 256)
      throw std::runtime_error(table_paths[c] + " must have 256 entries (found " + std::to_string(table.size()) + ")");
    for (std::size_t i = 0; i < 256; ++i) {
      const std::string p = table_paths[c] + "[" + std::to_string(i) + "]";
      if (integer_value(table[i], p, -128, 127) != n.channels[c].table[i])
        throw std::runtime_error(p + " is " + table[i].dump() + " but the statistics give " +
                                 std::to_string(n.channels[c].table[i]));
    }
  }
  return n;
}

}  // namespace qtrain::json_io
