// Quantization policy files (core/quant_policy.h), a versioned JSON document (docs/policy.md):
//   {"format": "qtrain-policy", "version": 1,
//    "default": {"weight_bits": 4},                                  optional: every layer
//    "layers": {"conv2": {"weight_bits": 4, "act_bits": 4, "grad_bits": 8, "granularity": "per_tensor"}},
//    "passes": [{"default": {...}, "layers": {...}}, ...]}            optional: pass p on top of the above
// A layer entry's keys, each optional: weight_bits, act_bits, grad_bits (2..8), grad_groups (ShiftQuant N_G,
// 0..8; 0 = the most the gradient bits allow), act_groups (0..8; 0 = the most), granularity ("per_channel",
// "per_tensor"), scale ("max", "mse"; the activations' rule).
#pragma once

#include <string>

#include "qtrain/engine/core/quant_policy.h"

namespace qtrain {

inline constexpr int kPolicyFormatVersion = 1;  // the version written and read

// Reads a policy file; InputError naming the file and the key for anything unreadable, not JSON, of another
// format version, with an unknown key, bits outside 2..8, or an unknown granularity or scale rule. The layer names
// are checked against a model by check_policy (core/quant_policy.h). The result's source is `path`.
QuantPolicy load_policy(const std::string& path);
// The same for text in memory; `path` is used in messages only (the fuzz target calls this).
QuantPolicy parse_policy(const std::string& path, const std::string& text);
// The policy as a policy file's text (parse_policy reads it back to an equal policy).
std::string policy_to_json(const QuantPolicy& policy);

}  // namespace qtrain
