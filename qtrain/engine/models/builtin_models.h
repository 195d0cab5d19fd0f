// The built-in models' layers (mlp, cnn, resnet8, resnet20; ModelSpec describes them). The registry's entries for
// them call this; everything else builds models through the registry (registry.h).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "qtrain/engine/core/layer.h"
#include "qtrain/engine/models/model_spec.h"

namespace qtrain {

// The layers of the valid built-in `spec`, with weights initialised from `seed`.
std::vector<std::unique_ptr<Layer>> build_builtin_layers(const ModelSpec& spec, uint64_t seed);

}  // namespace qtrain
