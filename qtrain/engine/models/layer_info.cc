#include "qtrain/engine/models/layer_info.h"

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
  std::ostringstream o;
  for (const LayerInfo& l : layers) {
    o << l.name << "  " << l.kind;
    for (const ParamShape& p : l.params) o << "  " << p.name << " " << p.rows << "x" << p.cols;
    if (l.quant) {
      const QGemmConfig& c = *l.quant;
      o << "  W" << c.weight_bits << " A" << c.act_bits << " G" << c.grad_bits << " N_G=" << c.groups << " act-groups "
        << c.act_groups << " " << granularity_name(c.granularity) << " " << scale_name(c.scale);
    }
    o << "\n";
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
