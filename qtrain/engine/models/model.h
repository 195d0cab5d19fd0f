// Models: the root module, a sequence of layers, which records the registry name and configuration it was built
// from (its ModelSpec) so that model files and checkpoints can rebuild it (registry.h).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "qtrain/engine/core/layer.h"
#include "qtrain/engine/models/model_spec.h"

namespace qtrain {

// The root module: its children are the top-level layers, run in sequence.
class Model : public Layer {
 public:
  // Throws UsageError when two modules share a layer name, or two parameters a name or an id (the id keys their
  // random streams), or a module with buffers has no layer name (buffers are saved by it).
  Model(ModelSpec spec, std::vector<std::unique_ptr<Layer>> layers);
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::vector<Layer*> children() override;
  std::string name() const override { return spec_.describe(); }
  // The module named `layer_name` (Layer::layer_name) anywhere in the model, or null.
  Layer* find_layer(const std::string& layer_name);
  // Every module with a layer name, in the model's order (depth first).
  std::vector<Layer*> named_layers();
  // What the model was built from: its registry name (spec().kind) and configuration (spec().to_config()).
  const ModelSpec& spec() const { return spec_; }
  // Every buffer with its name "<layer_name>.buffer<i>" (the i-th of its module's own_buffers), in buffers() order.
  std::vector<std::pair<std::string, Tensor*>> named_buffers();
  const std::vector<std::unique_ptr<Layer>>& layers() const { return layers_; }
  std::size_t parameter_count();

 private:
  ModelSpec spec_;
  std::vector<std::unique_ptr<Layer>> layers_;
};

// Builds the model the spec names (a built-in or a registered one, registry.h), with weights initialised from
// `seed`. Throws UsageError for an invalid spec or an unknown name.
std::unique_ptr<Model> build_model(const ModelSpec& spec, uint64_t seed);

}  // namespace qtrain
