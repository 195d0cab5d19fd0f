// Quantization settings per call: a layer's own configuration (QGemmConfig), overridden field by field by a
// QuantPolicy looked up by the layer's stable name (Layer::layer_name) and the step's pass (StepContext::pass).
//
// Lookup, for layer L in pass p (later wins, field by field; an unset field keeps what came before):
//   L's own settings  →  policy.base.all  →  policy.base.layers[L]  →  policy.passes[p].all  →
//   policy.passes[p].layers[L]
// A null policy (or one that sets nothing for L) gives exactly L's own settings. Group counts of 0 in a policy
// mean "the most the resolved bits allow", like ModelSpec's --groups 0 and --act-groups 0.
// The JSON form of a policy is io/policy_file.h; docs/policy.md describes both.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "qtrain/quant/pow2.h"

namespace qtrain {

class Layer;

// How W_q's power-of-two exponents are chosen: one per output channel (row), or one for the whole matrix.
enum class WeightGranularity : uint8_t { kPerChannel, kPerTensor };
const char* granularity_name(WeightGranularity g);  // "per_channel", "per_tensor"

// The quantization of one quantized GEMM layer (Linear, Conv2d, DepthwiseConv2d; ops/qgemm_op.h).
struct QGemmConfig {
  int weight_bits = 8;
  int act_bits = 8;
  int grad_bits = 8;
  int groups = 1;             // ShiftQuant N_G of the output gradient
  bool signed_input = false;  // false: the input is non-negative (after ReLU) and uses the unsigned range
  // How the power of two of X_q is chosen (quant::ScaleRule): covering max|x|, or least squared error. W_q always
  // covers each exponent's max|w| (per channel or per tensor, `granularity`).
  quant::ScaleRule scale = quant::ScaleRule::kCover;
  // Power-of-two channel groups of X_q (quant::quantize_column_groups); 1 = one step for the whole tensor.
  int act_groups = 1;
  WeightGranularity granularity = WeightGranularity::kPerChannel;
  // Throws UsageError naming the valid range.
  void validate() const;
  bool operator==(const QGemmConfig&) const = default;
};

// A policy's settings for one layer (or for every layer): each field unset = keep what the lookup has so far.
struct LayerQuantOverride {
  std::optional<int> weight_bits, act_bits, grad_bits;
  std::optional<int> grad_groups;  // ShiftQuant N_G; 0 = the most grad bits allow
  std::optional<int> act_groups;   // 0 = the most act bits allow
  std::optional<WeightGranularity> granularity;
  std::optional<quant::ScaleRule> scale;  // the activations' rule
  bool empty() const;
  // `cfg` with the set fields replaced (groups of 0 resolved against the resulting bits).
  void apply_to(QGemmConfig& cfg) const;
  bool operator==(const LayerQuantOverride&) const = default;
};

// Overrides for every layer and for layers by name.
struct PolicyLevel {
  LayerQuantOverride all;
  std::map<std::string, LayerQuantOverride> layers;
  bool operator==(const PolicyLevel&) const = default;
};

struct QuantPolicy {
  PolicyLevel base;                 // every pass
  std::vector<PolicyLevel> passes;  // passes[p] applies in pass p on top of base (none beyond the list)
  std::string source = "policy";    // where it came from (a file name), for messages; not part of the policy

  // The configuration of layer `layer` (own settings `own`) in pass `pass`; not validated.
  QGemmConfig resolve(const QGemmConfig& own, const std::string& layer, uint32_t pass) const;
  // Every layer name the policy mentions, with where ("layers.conv2", "passes[1].layers.conv2").
  std::vector<std::pair<std::string, std::string>> named_keys() const;
  bool operator==(const QuantPolicy& o) const { return base == o.base && passes == o.passes; }
};

// A layer whose quantization a policy can set (Linear, Conv2d, DepthwiseConv2d, or a user's own).
class QuantizedLayer {
 public:
  virtual ~QuantizedLayer() = default;
  // The layer's own settings: what it uses where no policy overrides them.
  virtual const QGemmConfig& own_quant_config() const = 0;
};

// The configuration layer `layer` uses in `pass`: `own` when policy is null, else resolved and validated (throws
// UsageError "layer conv2 (pass 1): <what is wrong>").
QGemmConfig resolve_checked(const QuantPolicy* policy, const QGemmConfig& own, const std::string& layer, uint32_t pass);

// Checks `policy` against the layers of a model (Model::named_layers()): every layer name it mentions must be a
// quantized layer, and every layer's resolved configuration in every pass the policy lists must be valid. Throws
// UsageError "<source>: <key>: <what is wrong>; valid …" (source: a file name, or "policy").
void check_policy(const QuantPolicy& policy, const std::vector<Layer*>& layers, const std::string& source);

}  // namespace qtrain
