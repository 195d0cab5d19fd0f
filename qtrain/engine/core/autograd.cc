#include "qtrain/engine/core/autograd.h"

#include <stdexcept>

#include "qtrain/engine/core/aligned_sum.h"
#include "qtrain/engine/core/profile.h"

namespace qtrain {

VarPtr make_input(Tensor value) {
  auto v = std::make_shared<Var>();
  v->value = std::move(value);
  v->requires_grad = false;
  return v;
}

void accumulate_grad(Var& v, Tensor&& g, kernels::ThreadPool* pool) {
  if (!v.has_grad) {
    v.grad = std::move(g);
    v.has_grad = true;
    return;
  }
  v.grad = aligned_sum(pool, v.grad, g);
}

void accumulate_grad(Var& v, const Tensor& g, kernels::ThreadPool* pool) {
  if (!v.has_grad) {
    v.grad = g;
    v.has_grad = true;
    return;
  }
  v.grad = aligned_sum(pool, v.grad, g);
}

namespace {
void check_param_grad(const Param& p, const Tensor& g) {
  if (g.rows() != p.master.rows() || g.cols() != p.master.cols() || g.dtype() != DType::kI32 ||
      g.axis() == ScaleAxis::kCol)
    throw std::logic_error("accumulate_grad: gradient " + g.describe() + " for parameter " + p.name + " " +
                           p.master.describe() + " (int32, one exponent or one per row)");
}
}  // namespace

void accumulate_grad(Param& p, Tensor&& g, kernels::ThreadPool* pool) {
  check_param_grad(p, g);
  if (!p.has_grad) {
    p.grad = std::move(g);
    p.has_grad = true;
    return;
  }
  p.grad = aligned_sum(pool, p.grad, g);
}

Tensor take_grad(Var& out) {
  if (out.retain_grad) return out.grad;
  Tensor g = std::move(out.grad);
  out.grad = Tensor();
  out.has_grad = false;
  return g;
}

void Tape::backward(StepProfile* profile) {
  for (auto it = nodes_.rbegin(); it != nodes_.rend(); ++it) {
    if (profile == nullptr) {
      it->backward();
      continue;
    }
    const int64_t t0 = StepProfile::now_ns();
    it->backward();
    const int64_t ns = StepProfile::now_ns() - t0;
    if (it->tag < profile->layers()) {
      profile->add_backward(it->tag, ns);
    } else {
      profile->add(StepProfile::Phase::kLoss, ns);  // recorded after the last layer: the loss's gradient
    }
  }
  nodes_.clear();
}

}  // namespace qtrain
