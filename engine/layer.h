// A layer of a model: an operator that owns its parameters and turns one variable into another, recording its
// backward on the step's tape.
#pragma once

#include <string>
#include <vector>

#include "engine/autograd.h"
#include "engine/param.h"

namespace qtrain {

class Layer {
 public:
  virtual ~Layer() = default;
  virtual VarPtr forward(const StepContext& ctx, const VarPtr& x) = 0;
  virtual std::vector<Param*> params() { return {}; }
  virtual std::string name() const = 0;
};

}  // namespace qtrain
