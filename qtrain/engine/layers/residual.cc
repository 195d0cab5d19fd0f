#include "qtrain/engine/layers/residual.h"

#include "qtrain/engine/ops/add.h"

namespace qtrain {

Residual::Residual(std::vector<std::unique_ptr<Layer>> body, std::vector<std::unique_ptr<Layer>> shortcut)
    : body_(std::move(body)), shortcut_(std::move(shortcut)) {}

VarPtr Residual::forward(const StepContext& ctx, const VarPtr& x) {
  VarPtr h = x;
  for (auto& l : body_) h = l->forward(ctx, h);
  VarPtr s = x;
  for (auto& l : shortcut_) s = l->forward(ctx, s);
  return add_relu(ctx, h, s);  // relu(h + s) in one pass
}

std::vector<Layer*> Residual::children() {
  std::vector<Layer*> out;
  for (auto* layers : {&body_, &shortcut_})
    for (auto& l : *layers) out.push_back(l.get());
  return out;
}

std::string Residual::name() const {
  std::string s = "Residual(";
  for (std::size_t i = 0; i < body_.size(); ++i) s += (i ? ", " : "") + body_[i]->name();
  s += " | ";
  if (shortcut_.empty()) s += "identity";
  for (std::size_t i = 0; i < shortcut_.size(); ++i) s += (i ? ", " : "") + shortcut_[i]->name();
  return s + ")";
}

}  // namespace qtrain
