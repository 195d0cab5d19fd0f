#include "engine/relu.h"

#include <algorithm>
#include <stdexcept>

namespace qtrain {

VarPtr Relu::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  if (xv.dtype() != DType::kI32) throw std::logic_error("ReLU expects an int32 input, got " + xv.describe());
  auto out = std::make_shared<Var>();
  out->value = xv;  // same shape and exponents
  int32_t* y = out->value.data<int32_t>();
  for (std::size_t i = 0; i < xv.size(); ++i) y[i] = std::max(y[i], 0);
  if (!ctx.training() || !x->requires_grad) return out;
  ctx.tape->record([x, out] {
    if (!out->has_grad) return;
    Tensor dx = out->grad;
    const int32_t* xin = x->value.data<int32_t>();
    int32_t* d = dx.data<int32_t>();
    for (std::size_t i = 0; i < dx.size(); ++i)
      if (xin[i] <= 0) d[i] = 0;
    accumulate_grad(*x, std::move(dx));
  });
  return out;
}

}  // namespace qtrain
