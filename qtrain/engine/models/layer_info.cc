#include "qtrain/engine/models/layer_info.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <sstream>

namespace qtrain {

namespace {
const char* scale_name(quant::ScaleRule s) { return s == quant::ScaleRule::kMinError ? "mse" : "max"; }
}  // namespace

std::vector<LayerInfo> describe_layers(Model& model, const QuantPolicy* policy, uint32_t pass) {
  std::vector<LayerInfo> out;
  for (Layer* l : model.named_layers()) {
    LayerInfo info{l->layer_name(), l->name(), {}, std::nullopt};
    for (Param* p : l->own_params()) info.params.push_back({p->name, p->master.rows(), p->master.cols()});
    if (const auto* q = dynamic_cast<const QuantizedLayer*>(l))
      info.quant = resolve_checked(policy, q->own_quant_config(), info.name, pass);
    out.push_back(std::move(info));
  }
  return out;
}

std::string layers_table(const std::vector<LayerInfo>& layers) {
  // One row per layer, columns padded to their widest cell. The module column is the layer as built (its own
  // bits); the bits columns are what it trains with after the policy.
  std::vector<std::vector<std::string>> rows{
      {"layer", "module", "parameters", "bits W/A/G", "N_G", "act groups", "weights", "scale"}};
  for (const LayerInfo& l : layers) {
    std::string params;
    for (const ParamShape& p : l.params)
      params += (params.empty() ? "" : ", ") + p.name + " " + std::to_string(p.rows) + "x" + std::to_string(p.cols);
    std::vector<std::string> row{l.name, l.kind, params.empty() ? "-" : params};
    if (l.quant) {
      const QGemmConfig& c = *l.quant;
      row.insert(row.end(),
                 {std::to_string(c.weight_bits) + "/" + std::to_string(c.act_bits) + "/" + std::to_string(c.grad_bits),
                  std::to_string(c.groups), std::to_string(c.act_groups), granularity_name(c.granularity),
                  scale_name(c.scale)});
    } else {
      row.insert(row.end(), 5, "-");
    }
    rows.push_back(std::move(row));
  }
  std::vector<std::size_t> width(rows.front().size(), 0);
  for (const auto& row : rows)
    for (std::size_t i = 0; i < row.size(); ++i) width[i] = std::max(width[i], row[i].size());
  std::ostringstream o;
  for (const auto& row : rows) {
    std::string line;
    for (std::size_t i = 0; i < row.size(); ++i)
      line += row[i] + (i + 1 < row.size() ? std::string(width[i] - row[i].size() + 2, ' ') : "");
    o << line << "\n";
  }
  return o.str();
}

std::string layers_json(const std::vector<LayerInfo>& layers) {
  nlohmann::json list = nlohmann::json::array();
  for (const LayerInfo& l : layers) {
    nlohmann::json params = nlohmann::json::array();
    for (const ParamShape& p : l.params) params.push_back({{"name", p.name}, {"rows", p.rows}, {"cols", p.cols}});
    nlohmann::json j = {{"name", l.name}, {"kind", l.kind}, {"params", params}, {"quantized", l.quant.has_value()}};
    if (l.quant) {
      const QGemmConfig& c = *l.quant;
      j["weight_bits"] = c.weight_bits;
      j["act_bits"] = c.act_bits;
      j["grad_bits"] = c.grad_bits;
      j["grad_groups"] = c.groups;
      j["act_groups"] = c.act_groups;
      j["granularity"] = granularity_name(c.granularity);
      j["scale"] = scale_name(c.scale);
    }
    list.push_back(j);
  }
  return nlohmann::json{{"layers", list}}.dump() + "\n";
}

}  // namespace qtrain
