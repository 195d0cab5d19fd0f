// A layer of a model: an operator that owns its parameters and turns one variable into another, recording its
// backward on the step's tape.
#pragma once

#include <string>
#include <vector>

#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/core/param.h"

namespace qtrain {

class Layer {
 public:
  virtual ~Layer() = default;
  virtual VarPtr forward(const StepContext& ctx, const VarPtr& x) = 0;
  virtual std::vector<Param*> params() { return {}; }
  // State that is not trained by the optimizer but belongs to the model (a norm's running statistics): saved
  // with the model, restored on load.
  virtual std::vector<Tensor*> buffers() { return {}; }
  virtual std::string name() const = 0;
};

}  // namespace qtrain
