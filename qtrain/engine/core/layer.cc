#include "qtrain/engine/core/layer.h"

#include <stdexcept>

namespace qtrain {

VarPtr Layer::forward_inputs(const StepContext& ctx, const std::vector<VarPtr>& inputs) {
  if (inputs.size() != 1)
    throw std::invalid_argument(name() + " takes one input, got " + std::to_string(inputs.size()));
  return forward(ctx, inputs.front());
}

std::vector<const Layer*> Layer::children() const {
  // The mutable children() does not change the module; it only hands out pointers.
  const std::vector<Layer*> c = const_cast<Layer*>(this)->children();
  return {c.begin(), c.end()};
}

std::vector<Param*> Layer::params() {
  std::vector<Param*> out = own_params();
  for (Layer* c : children())
    for (Param* p : c->params()) out.push_back(p);
  return out;
}

std::vector<Tensor*> Layer::buffers() {
  std::vector<Tensor*> out = own_buffers();
  for (Layer* c : children())
    for (Tensor* t : c->buffers()) out.push_back(t);
  return out;
}

void for_each_module(Layer& root, const std::function<void(Layer&)>& f) {
  f(root);
  for (Layer* c : root.children()) for_each_module(*c, f);
}

void for_each_module(const Layer& root, const std::function<void(const Layer&)>& f) {
  f(root);
  for (const Layer* c : root.children()) for_each_module(*c, f);
}

}  // namespace qtrain
