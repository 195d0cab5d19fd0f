#include "qtrain/engine/core/autograd.h"

#include <algorithm>
#include <stdexcept>

#include "qtrain/engine/core/profile.h"
#include "qtrain/engine/core/split_eltwise.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {

VarPtr make_input(Tensor value) {
  auto v = std::make_shared<Var>();
  v->value = std::move(value);
  v->requires_grad = false;
  return v;
}

namespace {
// v.grad ← v.grad + g at the finer exponent, then narrowed (see autograd.h).
void add_into(Var& v, const Tensor& g, kernels::ThreadPool* pool) {
  if (g.size() != v.grad.size()) throw std::logic_error("accumulate_grad: shape mismatch " + g.describe());
  const int ea = v.grad.exponent(), eb = g.exponent(), e = std::min(ea, eb);
  const int la = ea - e, lb = eb - e;
  const int32_t* a = v.grad.data<int32_t>();
  const int32_t* b = g.data<int32_t>();
  if (la <= 31 && lb <= 31) {
    // a·2^la + b·2^lb < 2^63: the kernels' int64 lanes hold every sum exactly. One pass writes the sums at shift 0
    // into a new tensor (a and b stay intact); a second one only if some sum needs a coarser exponent.
    Tensor sum = Tensor::uninitialized(v.grad.rows(), v.grad.cols(), DType::kI32);
    int32_t* out = sum.data<int32_t>();
    const uint64_t maxabs = aligned_sum_range(pool, a, b, g.size(), la, lb, out, false).max_abs();
    const int s = std::max(0, quant::bit_length(maxabs) - 31);
    if (s != 0) aligned_sum_narrow(pool, a, b, g.size(), la, lb, s, out, false);
    sum.set_exponent(e + s);
    v.grad = std::move(sum);
    return;
  }
  int32_t* out = v.grad.data<int32_t>();
  // Exponents more than 31 octaves apart (not met in practice): the plain int64 loop.
  std::vector<int64_t> sum(g.size());
  int64_t maxabs = 0;
  for (std::size_t i = 0; i < sum.size(); ++i) {
    sum[i] = quant::shift_round_even(a[i], e - ea) + quant::shift_round_even(b[i], e - eb);
    maxabs = std::max(maxabs, sum[i] < 0 ? -sum[i] : sum[i]);
  }
  const int s = std::max(0, quant::bit_length(static_cast<uint64_t>(maxabs)) - 31);
  for (std::size_t i = 0; i < sum.size(); ++i) out[i] = quant::saturate_i32(quant::shift_round_even(sum[i], s));
  v.grad.set_exponent(e + s);
}
}  // namespace

void accumulate_grad(Var& v, Tensor&& g, kernels::ThreadPool* pool) {
  if (!v.has_grad) {
    v.grad = std::move(g);
    v.has_grad = true;
    return;
  }
  add_into(v, g, pool);
}

void accumulate_grad(Var& v, const Tensor& g, kernels::ThreadPool* pool) {
  if (!v.has_grad) {
    v.grad = g;
    v.has_grad = true;
    return;
  }
  add_into(v, g, pool);
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
