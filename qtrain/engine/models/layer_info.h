// What a model consists of, as `qtrain info` shows it: every named layer with its description, its parameters'
// shapes and, for quantized layers, the quantization it uses after a policy (core/quant_policy.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "qtrain/engine/core/quant_policy.h"
#include "qtrain/engine/models/model.h"

namespace qtrain {

struct ParamShape {
  std::string name;  // "conv0.weight"
  std::size_t rows = 0, cols = 0;
};

struct LayerInfo {
  std::string name;  // Layer::layer_name: "conv0"
  std::string kind;  // Layer::name: "Conv2d(1->32, 3x3/s1/p1, 28x28, W8A8G8)" (the layer's own bits)
  std::vector<ParamShape> params;
  std::optional<QGemmConfig> quant;  // quantized layers: the effective settings (after the policy)
};

// The model's named layers in order, with the settings each uses in `pass` under `policy` (null: their own).
// Throws UsageError when the policy gives a layer an invalid configuration (check_policy names the key).
std::vector<LayerInfo> describe_layers(Model& model, const QuantPolicy* policy, uint32_t pass = 0);
// One line per layer: name, kind, parameter shapes, "W4 A4 G8 N_G=1 act-groups 1 per_channel max".
std::string layers_table(const std::vector<LayerInfo>& layers);
// {"layers": [{"name", "kind", "params": [{"name", "rows", "cols"}], "quantized", "weight_bits", "act_bits",
// "grad_bits", "grad_groups", "act_groups", "granularity", "scale"}]} (the quantization keys only when quantized).
std::string layers_json(const std::vector<LayerInfo>& layers);

}  // namespace qtrain
