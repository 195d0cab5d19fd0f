#include "qtrain/engine/ops/relu.h"

#include <stdexcept>

#include "qtrain/kernels/eltwise.h"

namespace qtrain {

VarPtr Relu::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  if (xv.dtype() != DType::kI32) throw std::logic_error("ReLU expects an int32 input, got " + xv.describe());
  auto out = std::make_shared<Var>();
  out->value = Tensor::uninitialized(xv.rows(), xv.cols(), DType::kI32);  // same shape and exponents
  out->value.set_exponents(xv.axis(), xv.exponents());
  const uint64_t mx = kernels::relu_i32(xv.data<int32_t>(), xv.size(), out->value.data<int32_t>());
  out->value.set_nonnegative_max(mx);
  if (!ctx.training() || !x->requires_grad) return out;
  ctx.tape->record([x, out] {
    if (!out->has_grad) return;
    // dx = dy·[x > 0], masked in place in the gradient this op consumes (take_grad).
    Tensor dx = take_grad(*out);
    kernels::relu_backward_i32(dx.data<int32_t>(), x->value.data<int32_t>(), dx.size(), dx.data<int32_t>());
    accumulate_grad(*x, std::move(dx));
  });
  return out;
}

}  // namespace qtrain
