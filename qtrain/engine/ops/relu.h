// ReLU on the int32 data plane: y = max(x, 0), dx = dy·[x > 0]. Exponents pass through unchanged.
#pragma once

#include "qtrain/engine/core/layer.h"

namespace qtrain {

class Relu : public Layer {
 public:
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::string name() const override { return "ReLU"; }
};

}  // namespace qtrain
