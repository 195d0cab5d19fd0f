// A residual block: y = ReLU(body(x) + shortcut(x)), with an identity shortcut when none is given. The block
// runs its sub-layers on the same tape, so their backward closures interleave correctly; x receives the sum of
// both branches' gradients (accumulate_grad aligns their exponents exactly).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "qtrain/engine/core/layer.h"

namespace qtrain {

class Residual : public Layer {
 public:
  Residual(std::vector<std::unique_ptr<Layer>> body, std::vector<std::unique_ptr<Layer>> shortcut);
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::vector<Layer*> children() override;  // the body's layers, then the shortcut's
  std::string name() const override;

 private:
  std::vector<std::unique_ptr<Layer>> body_, shortcut_;  // shortcut_ empty: identity
};

}  // namespace qtrain
