#include "qtrain/engine/io/policy_file.h"

#include <stdexcept>

#include "qtrain/engine/io/binary_io.h"
#include "qtrain/engine/io/json_io.h"
#include "qtrain/engine/io/policy_json.h"
#include "qtrain/quant/error.h"

namespace qtrain {

namespace json_io {

namespace {

constexpr const char* kFormat = "qtrain-policy";
constexpr std::size_t kMaxPasses = 256;  // bounds check_policy's work on a hostile file
constexpr std::size_t kMaxPolicyBytes = std::size_t{1} << 24;
constexpr const char* kLayerKeys = "weight_bits, act_bits, grad_bits, grad_groups, act_groups, granularity, scale";

void known_keys(const Fields& f, std::initializer_list<const char*> keys, const std::string& valid) {
  for (const auto& item : f.json().items()) {
    bool known = false;
    for (const char* k : keys) known |= item.key() == k;
    if (!known) {
      std::string key = item.key();
      if (key.size() > 40) key = key.substr(0, 37) + "...";
      throw std::runtime_error((f.where().empty() ? std::string("the policy") : f.where()) + ": unknown key '" + key +
                               "'; valid keys: " + valid);
    }
  }
}

std::optional<int> optional_int(const Fields& f, const char* key, int lo, int hi) {
  if (!f.json().contains(key)) return std::nullopt;
  return static_cast<int>(f.integer(key, lo, hi));
}

LayerQuantOverride override_from_json(const Fields& f) {
  known_keys(f, {"weight_bits", "act_bits", "grad_bits", "grad_groups", "act_groups", "granularity", "scale"},
             kLayerKeys);
  LayerQuantOverride o;
  o.weight_bits = optional_int(f, "weight_bits", 2, 8);
  o.act_bits = optional_int(f, "act_bits", 2, 8);
  o.grad_bits = optional_int(f, "grad_bits", 2, 8);
  o.grad_groups = optional_int(f, "grad_groups", 0, 8);
  o.act_groups = optional_int(f, "act_groups", 0, 8);
  if (f.json().contains("granularity")) {
    const std::string g = f.string("granularity");
    if (g == "per_channel") {
      o.granularity = WeightGranularity::kPerChannel;
    } else if (g == "per_tensor") {
      o.granularity = WeightGranularity::kPerTensor;
    } else {
      throw std::runtime_error(f.path("granularity") + ": unknown granularity '" + g.substr(0, 40) +
                               "'; valid granularities: per_channel, per_tensor");
    }
  }
  if (f.json().contains("scale")) {
    const std::string s = f.string("scale");
    if (s != "max" && s != "mse")
      throw std::runtime_error(f.path("scale") + ": unknown rule '" + s.substr(0, 40) + "'; valid rules: max, mse");
    o.scale = s == "mse" ? quant::ScaleRule::kMinError : quant::ScaleRule::kCover;
  }
  return o;
}

PolicyLevel level_from_json(const Fields& f) {
  PolicyLevel level;
  if (f.json().contains("default")) level.all = override_from_json(f.object("default"));
  if (f.json().contains("layers")) {
    const Fields layers = f.object("layers");
    for (const auto& item : layers.json().items())
      level.layers[item.key()] = override_from_json(layers.object(item.key().c_str()));
  }
  return level;
}

nlohmann::json override_json(const LayerQuantOverride& o) {
  nlohmann::json j = nlohmann::json::object();
  if (o.weight_bits) j["weight_bits"] = *o.weight_bits;
  if (o.act_bits) j["act_bits"] = *o.act_bits;
  if (o.grad_bits) j["grad_bits"] = *o.grad_bits;
  if (o.grad_groups) j["grad_groups"] = *o.grad_groups;
  if (o.act_groups) j["act_groups"] = *o.act_groups;
  if (o.granularity) j["granularity"] = granularity_name(*o.granularity);
  if (o.scale) j["scale"] = *o.scale == quant::ScaleRule::kMinError ? "mse" : "max";
  return j;
}

nlohmann::json level_json(const PolicyLevel& level) {
  nlohmann::json j = nlohmann::json::object();
  if (!level.all.empty()) j["default"] = override_json(level.all);
  if (!level.layers.empty()) {
    nlohmann::json layers = nlohmann::json::object();
    for (const auto& [name, o] : level.layers) layers[name] = override_json(o);
    j["layers"] = layers;
  }
  return j;
}

}  // namespace

nlohmann::json policy_json(const QuantPolicy& policy) {
  nlohmann::json j = level_json(policy.base);
  j["format"] = kFormat;
  j["version"] = kPolicyFormatVersion;
  if (!policy.passes.empty()) {
    nlohmann::json passes = nlohmann::json::array();
    for (const PolicyLevel& p : policy.passes) passes.push_back(level_json(p));
    j["passes"] = passes;
  }
  return j;
}

QuantPolicy policy_from_json(const nlohmann::json& j, const std::string& path) {
  if (!j.is_object())
    throw std::runtime_error((path.empty() ? std::string("the policy") : path) + " must be a JSON object (found " +
                             type_of(j) + ")");
  const Fields root(j, path);
  const nlohmann::json& format = root.at("format");
  if (!format.is_string() || format.get<std::string>() != kFormat)
    throw std::runtime_error(root.path("format") + " must be \"" + kFormat + "\" (not a qtrain policy)");
  const nlohmann::json& version = root.at("version");
  if (!version.is_number_integer() || version.get<int64_t>() != kPolicyFormatVersion)
    throw std::runtime_error(root.path("version") + ": policy format version " +
                             (version.is_number_integer() ? std::to_string(version.get<int64_t>()) : type_of(version)) +
                             " is not supported; this qtrain reads version " + std::to_string(kPolicyFormatVersion));
  known_keys(root, {"format", "version", "default", "layers", "passes"}, "format, version, default, layers, passes");
  QuantPolicy policy;
  policy.base = level_from_json(root);
  if (j.contains("passes")) {
    const nlohmann::json& passes = root.array("passes");
    if (passes.size() > kMaxPasses)
      throw std::runtime_error(root.path("passes") + " lists " + std::to_string(passes.size()) + " passes; at most " +
                               std::to_string(kMaxPasses) + " are allowed");
    for (std::size_t p = 0; p < passes.size(); ++p) {
      const std::string where = root.path("passes") + "[" + std::to_string(p) + "]";
      if (!passes[p].is_object())
        throw std::runtime_error(where + " must be an object (found " + type_of(passes[p]) + ")");
      const Fields level(passes[p], where);
      known_keys(level, {"default", "layers"}, "default, layers");
      policy.passes.push_back(level_from_json(level));
    }
  }
  return policy;
}

}  // namespace json_io

QuantPolicy parse_policy(const std::string& path, const std::string& text) {
  try {
    QuantPolicy p = json_io::policy_from_json(nlohmann::json::parse(text), "");
    p.source = path;
    return p;
  } catch (const nlohmann::json::parse_error& e) {
    throw InputError(path + ": not valid JSON (" + e.what() + ")");
  } catch (const std::exception& e) {
    throw InputError(path + ": " + e.what());
  }
}

QuantPolicy load_policy(const std::string& path) {
  return parse_policy(path, binary_io::read_file_bounded(path, "policy file", json_io::kMaxPolicyBytes));
}

std::string policy_to_json(const QuantPolicy& policy) { return json_io::policy_json(policy).dump(2) + "\n"; }

}  // namespace qtrain
