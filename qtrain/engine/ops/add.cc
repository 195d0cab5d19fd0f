#include "qtrain/engine/ops/add.h"

#include <stdexcept>
#include <utility>

#include "qtrain/engine/core/aligned_sum.h"
#include "qtrain/engine/core/split_eltwise.h"

namespace qtrain {

namespace {
VarPtr add_impl(const StepContext& ctx, const VarPtr& a, const VarPtr& b, bool relu) {
  auto out = std::make_shared<Var>();
  const Tensor &av = a->value, &bv = b->value;
  if (av.rows() != bv.rows() || av.cols() != bv.cols() || av.axis() == ScaleAxis::kRow || bv.axis() == ScaleAxis::kRow)
    throw std::invalid_argument("add: operands " + av.describe() + " and " + bv.describe() +
                                " must have the same shape and per-tensor or per-column exponents");
  out->value = aligned_sum(ctx.pool, av, bv, relu);
  if (!ctx.training() || (!a->requires_grad && !b->requires_grad)) return out;
  ctx.tape->record([a, b, out, relu, pool = ctx.pool] {
    if (!out->has_grad) return;
    // Both inputs receive dy (masked by y > 0 after a ReLU, i.e. by the sum > 0): a copy for the first, the consumed
    // gradient itself for the second.
    const bool both = a->requires_grad && b->requires_grad;
    Tensor g = take_grad(*out);
    if (!relu) {
      if (both) accumulate_grad(*a, static_cast<const Tensor&>(g), pool);
      accumulate_grad(b->requires_grad ? *b : *a, std::move(g), pool);
      return;
    }
    int32_t* d = g.data<int32_t>();
    const int32_t* y = std::as_const(out->value).data<int32_t>();
    if (both) {
      Tensor ga = Tensor::uninitialized(g.rows(), g.cols(), DType::kI32);
      ga.set_exponents(g.axis(), g.exponents());
      relu_backward(pool, d, y, g.size(), ga.data<int32_t>(), d);  // one pass, both gradients
      accumulate_grad(*a, std::move(ga), pool);
      accumulate_grad(*b, std::move(g), pool);
      return;
    }
    relu_backward(pool, d, y, g.size(), d);
    accumulate_grad(b->requires_grad ? *b : *a, std::move(g), pool);
  });
  return out;
}

}  // namespace

VarPtr add(const StepContext& ctx, const VarPtr& a, const VarPtr& b) { return add_impl(ctx, a, b, false); }

VarPtr add_relu(const StepContext& ctx, const VarPtr& a, const VarPtr& b) { return add_impl(ctx, a, b, true); }

}  // namespace qtrain
