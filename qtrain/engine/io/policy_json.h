// The JSON value of a quantization policy (policy_file.h), for the files that embed one (model files,
// checkpoints). Internal: not installed.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "qtrain/engine/core/quant_policy.h"

namespace qtrain::json_io {

nlohmann::json policy_json(const QuantPolicy& policy);
// Reads a policy document; std::runtime_error whose message names the key by its path below `path` ("policy" in a
// model header, "" for a policy file), e.g. "policy.layers.conv2.weight_bits must be an integer in 2..8 (found 9)".
QuantPolicy policy_from_json(const nlohmann::json& j, const std::string& path);

}  // namespace qtrain::json_io
