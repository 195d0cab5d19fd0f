// A module of a model: an operator that owns its parameters, may hold child modules, and turns its inputs into one
// output, recording its backward on the step's tape. A layer (Linear, Conv2d, a norm) is a module without
// children; a residual block is a module whose children are its branches' layers; a Model is the root.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/core/param.h"

namespace qtrain {

class Layer {
 public:
  virtual ~Layer() = default;
  virtual VarPtr forward(const StepContext& ctx, const VarPtr& x) = 0;
  // Modules of several inputs (a product of two activations, attention) override this; by default the module
  // takes exactly one input. Throws std::invalid_argument for another count.
  virtual VarPtr forward_inputs(const StepContext& ctx, const std::vector<VarPtr>& inputs);
  // The child modules, in a fixed order (their parameters, buffers and names follow it).
  virtual std::vector<Layer*> children() { return {}; }
  std::vector<const Layer*> children() const;
  // This module's parameters, then its children's in order. Modules with parameters of their own override
  // own_params(); params() collects.
  std::vector<Param*> params();
  // State that is not trained by the optimizer but belongs to the model (a norm's running statistics): saved
  // with the model, restored on load. Own buffers, then the children's.
  std::vector<Tensor*> buffers();
  virtual std::vector<Param*> own_params() { return {}; }
  virtual std::vector<Tensor*> own_buffers() { return {}; }
  // What the module is, for messages: "Linear(784->256, W4A4G4, ReLU)".
  virtual std::string name() const = 0;
  // The stable name that keys quantization policies, parameter names ("<layer_name>.weight") and `qtrain info`:
  // "linear0", "conv3", "l1bn4". Empty for a module without parameters of its own (pooling, a residual block).
  virtual std::string layer_name() const { return {}; }
};
using Module = Layer;

// Calls f on `root` and every module below it, depth first, parents before children.
void for_each_module(Layer& root, const std::function<void(Layer&)>& f);
void for_each_module(const Layer& root, const std::function<void(const Layer&)>& f);

}  // namespace qtrain
