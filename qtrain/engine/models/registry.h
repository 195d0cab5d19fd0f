// The model registry: names → factories that build a model's layers from a configuration. The built-in models
// (mlp, cnn, resnet8, resnet20) are its first entries; a program that links qtrain registers its own, and those
// then train, save, load and resume like the built-ins (model files and checkpoints record the name and the
// configuration, and loading rebuilds the model here before filling its parameters by name).
//
//   qtrain::register_model("tiny_resnet", [](const qtrain::ModelConfig& cfg, const qtrain::InputShape& in,
//                                            std::size_t classes, uint64_t seed) {
//     const auto width = static_cast<std::size_t>(cfg.get_int("width", 16, 1, 1024));
//     std::vector<std::unique_ptr<qtrain::Layer>> layers;
//     …  // conv, residual block, pool, linear: the input is N·H·W × C (NHWC), the output N × classes logits
//     return layers;
//   });
//
// Register before loading a file of that model. A factory must be deterministic: the same configuration, input,
// classes and seed give the same layers, names and initial weights (a loaded model's weights are overwritten by
// the file's, but its structure must be the one that was saved).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "qtrain/engine/core/layer.h"
#include "qtrain/engine/models/model.h"
#include "qtrain/engine/models/model_config.h"

namespace qtrain {

using ModelLayers = std::vector<std::unique_ptr<Layer>>;
// Builds the layers of a model from its configuration, the images it reads and its class count, with weights
// initialised from `seed`. Throws UsageError for a bad configuration (ModelConfig's getters do).
using ModelFactory =
    std::function<ModelLayers(const ModelConfig& config, const InputShape& input, std::size_t classes, uint64_t seed)>;

// Adds `name` (1..64 characters of [A-Za-z0-9_.-]). Throws UsageError if the name is taken (a built-in or
// registered before), invalid, or the factory is empty. Thread-safe.
void register_model(const std::string& name, ModelFactory factory);
bool model_known(const std::string& name);
bool model_built_in(const std::string& name);
// Built-ins first (mlp, cnn, resnet8, resnet20), then the registered models in the order of registration.
std::vector<std::string> known_models();
// The model `name` built from `config`; the Model records its name and configuration (spec().kind,
// spec().to_config()). Throws UsageError naming the model for an unknown name, or the key for a bad configuration.
std::unique_ptr<Model> build_registered_model(const std::string& name, const ModelConfig& config,
                                              const InputShape& input, std::size_t classes, uint64_t seed);

}  // namespace qtrain
