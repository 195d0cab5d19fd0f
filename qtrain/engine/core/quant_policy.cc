#include "qtrain/engine/core/quant_policy.h"

#include <set>

#include "qtrain/engine/core/layer.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/shiftquant.h"

namespace qtrain {

namespace {

quant::IntRange act_range(const QGemmConfig& c) {
  return c.signed_input ? quant::signed_range(c.act_bits) : quant::unsigned_range(c.act_bits);
}

// The rules of ModelSpec::validate, worded as there but naming the policy's keys.
std::string config_error(const QGemmConfig& c) {
  const std::pair<const char*, int> bits[] = {
      {"weight_bits", c.weight_bits}, {"act_bits", c.act_bits}, {"grad_bits", c.grad_bits}};
  for (const auto& [key, b] : bits)
    if (b < 2 || b > 8) return std::string(key) + ": bit-width " + std::to_string(b) + " is out of range 2..8";
  const int gmax = quant::max_groups(c.grad_bits);
  if (c.groups < 1 || c.groups > gmax)
    return "grad_groups: N_G=" + std::to_string(c.groups) + " is out of range 1.." + std::to_string(gmax) + " for " +
           std::to_string(c.grad_bits) +
           "-bit gradients ((2^(b-1)-1)*2^(N_G-1) must be <= 127 to fit the int8 carrier; 0 = the most)";
  const int agmax = quant::max_column_groups(act_range(c));
  if (c.act_groups < 1 || c.act_groups > agmax)
    return "act_groups: " + std::to_string(c.act_groups) + " is out of range 1.." + std::to_string(agmax) + " for " +
           std::to_string(c.act_bits) + "-bit " + (c.signed_input ? "signed" : "unsigned") +
           " activations ((2^b-1)*2^(groups-1) must be <= 127; 0 = the most)";
  return {};
}

void merge(const std::optional<int>& v, int& into) {
  if (v) into = *v;
}

}  // namespace

const char* granularity_name(WeightGranularity g) {
  return g == WeightGranularity::kPerTensor ? "per_tensor" : "per_channel";
}

void QGemmConfig::validate() const {
  const std::string e = config_error(*this);
  if (!e.empty()) throw UsageError(e);
}

bool LayerQuantOverride::empty() const { return *this == LayerQuantOverride{}; }

void LayerQuantOverride::apply_to(QGemmConfig& cfg) const {
  merge(weight_bits, cfg.weight_bits);
  merge(act_bits, cfg.act_bits);
  merge(grad_bits, cfg.grad_bits);
  merge(grad_groups, cfg.groups);
  merge(act_groups, cfg.act_groups);
  if (granularity) cfg.granularity = *granularity;
  if (scale) cfg.scale = *scale;
  // 0 = the most the (resolved) bits allow; out-of-range bits are left for validate to name.
  const bool bits_ok = cfg.grad_bits >= 2 && cfg.grad_bits <= 8 && cfg.act_bits >= 2 && cfg.act_bits <= 8;
  if (grad_groups == 0 && bits_ok) cfg.groups = quant::max_groups(cfg.grad_bits);
  if (act_groups == 0 && bits_ok) cfg.act_groups = quant::max_column_groups(act_range(cfg));
}

QGemmConfig QuantPolicy::resolve(const QGemmConfig& own, const std::string& layer, uint32_t pass) const {
  QGemmConfig c = own;
  auto apply = [&](const PolicyLevel& level) {
    level.all.apply_to(c);
    if (const auto it = level.layers.find(layer); it != level.layers.end()) it->second.apply_to(c);
  };
  apply(base);
  if (pass < passes.size()) apply(passes[pass]);
  return c;
}

std::vector<std::pair<std::string, std::string>> QuantPolicy::named_keys() const {
  std::vector<std::pair<std::string, std::string>> keys;
  for (const auto& [name, o] : base.layers) keys.emplace_back(name, "layers." + name);
  for (std::size_t p = 0; p < passes.size(); ++p)
    for (const auto& [name, o] : passes[p].layers)
      keys.emplace_back(name, "passes[" + std::to_string(p) + "].layers." + name);
  return keys;
}

QGemmConfig resolve_checked(const QuantPolicy* policy, const QGemmConfig& own, const std::string& layer,
                            uint32_t pass) {
  if (policy == nullptr) return own;
  const QGemmConfig c = policy->resolve(own, layer, pass);
  const std::string e = config_error(c);
  if (!e.empty()) throw UsageError("layer " + layer + " (pass " + std::to_string(pass) + "): policy " + e);
  return c;
}

void check_policy(const QuantPolicy& policy, const std::vector<Layer*>& layers, const std::string& source) {
  std::map<std::string, const QGemmConfig*> quantized;
  std::string valid;
  for (Layer* l : layers)
    if (const auto* q = dynamic_cast<const QuantizedLayer*>(l)) {
      quantized.emplace(l->layer_name(), &q->own_quant_config());
      valid += (valid.empty() ? "" : ", ") + l->layer_name();
    }
  for (const auto& [name, key] : policy.named_keys())
    if (quantized.count(name) == 0) {
      // A hostile file's key may be huge: the message shows its start.
      const std::string shown = name.size() > 40 ? name.substr(0, 37) + "..." : name;
      const std::string at = key.substr(0, key.size() - name.size()) + shown;
      throw UsageError(source + ": " + at + ": the model has no quantized layer '" + shown +
                       "'; valid layer names: " + (valid.empty() ? "(none)" : valid));
    }
  // Every pass the policy distinguishes (and the passes beyond its list, which use the base alone).
  for (uint32_t pass = 0; pass <= policy.passes.size(); ++pass)
    for (const auto& [name, own] : quantized) {
      const std::string e = config_error(policy.resolve(*own, name, pass));
      if (e.empty()) continue;
      const bool in_pass = pass < policy.passes.size();
      const bool by_name = in_pass ? policy.passes[pass].layers.count(name) != 0 : policy.base.layers.count(name) != 0;
      const std::string level = in_pass ? "passes[" + std::to_string(pass) + "]." : "";
      throw UsageError(source + ": " + level + (by_name ? "layers." + name : "default") + "." + e + " (layer " + name +
                       ")");
    }
}

}  // namespace qtrain
