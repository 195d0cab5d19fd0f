#include "engine/autograd.h"

#include <algorithm>
#include <stdexcept>

#include "quant/pow2.h"

namespace qtrain {

VarPtr make_input(Tensor value) {
  auto v = std::make_shared<Var>();
  v->value = std::move(value);
  v->requires_grad = false;
  return v;
}

void accumulate_grad(Var& v, Tensor g) {
  if (!v.has_grad) {
    v.grad = std::move(g);
    v.has_grad = true;
    return;
  }
  if (g.size() != v.grad.size()) throw std::logic_error("accumulate_grad: shape mismatch " + g.describe());
  // Sum at the finer exponent in int64, then move to the finest exponent that fits int32 (exact unless it must
  // coarsen, which rounds to nearest even).
  const int ea = v.grad.exponent(), eb = g.exponent(), e = std::min(ea, eb);
  std::vector<int64_t> sum(g.size());
  int64_t maxabs = 0;
  const int32_t* a = v.grad.data<int32_t>();
  const int32_t* b = g.data<int32_t>();
  for (std::size_t i = 0; i < sum.size(); ++i) {
    sum[i] = quant::shift_round_even(a[i], e - ea) + quant::shift_round_even(b[i], e - eb);
    maxabs = std::max(maxabs, sum[i] < 0 ? -sum[i] : sum[i]);
  }
  const int s = std::max(0, quant::bit_length(static_cast<uint64_t>(maxabs)) - 31);
  int32_t* out = v.grad.data<int32_t>();
  for (std::size_t i = 0; i < sum.size(); ++i) out[i] = quant::saturate_i32(quant::shift_round_even(sum[i], s));
  v.grad.set_exponent(e + s);
}

void Tape::backward() {
  for (auto it = nodes_.rbegin(); it != nodes_.rend(); ++it) (*it)();
  nodes_.clear();
}

}  // namespace qtrain
