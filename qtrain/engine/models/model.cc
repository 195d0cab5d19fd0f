#include "qtrain/engine/models/model.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <utility>

#include "qtrain/engine/core/profile.h"
#include "qtrain/quant/error.h"

namespace qtrain {

Model::Model(ModelSpec spec, std::vector<std::unique_ptr<Layer>> layers)
    : spec_(std::move(spec)), layers_(std::move(layers)) {
  std::map<std::string, std::string> by_layer_name;
  for (Layer* l : named_layers()) {
    const auto [it, fresh] = by_layer_name.try_emplace(l->layer_name(), l->name());
    if (!fresh)
      throw UsageError("model: two modules are named '" + l->layer_name() + "': " + it->second + " and " + l->name());
  }
  // Names key the model file and checkpoints, ids the random streams: two parameters sharing either would read
  // each other's weights or draw the same rounding.
  std::map<std::string, std::pair<std::size_t, const Param*>> by_name;
  std::map<uint32_t, std::pair<std::size_t, const Param*>> by_id;
  auto where = [&](std::size_t layer, const Param* p) {
    return "layer " + std::to_string(layer) + " (" + layers_[layer]->name() + ") parameter '" + p->name + "'";
  };
  for (std::size_t i = 0; i < layers_.size(); ++i)
    for (const Param* p : layers_[i]->params()) {
      const auto [n, new_name] = by_name.try_emplace(p->name, i, p);
      if (!new_name)
        throw UsageError("model: " + where(n->second.first, n->second.second) + " and " + where(i, p) +
                         " have the same name");
      const auto [d, new_id] = by_id.try_emplace(p->id, i, p);
      if (!new_id)
        throw UsageError("model: " + where(d->second.first, d->second.second) + " and " + where(i, p) +
                         " have the same stream id " + std::to_string(p->id));
    }
  for (Layer* c : children())
    for_each_module(*c, [](Layer& m) {
      if (m.layer_name().empty() && !m.own_buffers().empty())
        throw UsageError("model: module " + m.name() + " has buffers but no layer name (files save buffers by it)");
    });
}

VarPtr Model::forward(const StepContext& ctx, const VarPtr& x) {
  VarPtr h = x;
  if (ctx.profile == nullptr) {
    for (auto& l : layers_) h = l->forward(ctx, h);
  } else {
    for (std::size_t i = 0; i < layers_.size(); ++i) {
      if (ctx.tape != nullptr) ctx.tape->set_tag(i);
      const int64_t t0 = StepProfile::now_ns();
      h = layers_[i]->forward(ctx, h);
      ctx.profile->add_forward(i, StepProfile::now_ns() - t0);
    }
    if (ctx.tape != nullptr) ctx.tape->set_tag(layers_.size());  // the loss's closure: not a layer's
  }
  return h;
}

std::vector<Layer*> Model::children() {
  std::vector<Layer*> out;
  for (auto& l : layers_) out.push_back(l.get());
  return out;
}

std::vector<Layer*> Model::named_layers() {
  std::vector<Layer*> out;
  for (Layer* c : children())
    for_each_module(*c, [&](Layer& m) {
      if (!m.layer_name().empty()) out.push_back(&m);
    });
  return out;
}

Layer* Model::find_layer(const std::string& layer_name) {
  for (Layer* l : named_layers())
    if (l->layer_name() == layer_name) return l;
  return nullptr;
}

std::vector<std::pair<std::string, Tensor*>> Model::named_buffers() {
  std::vector<std::pair<std::string, Tensor*>> out;
  for (Layer* c : children())
    for_each_module(*c, [&](Layer& m) {
      const std::vector<Tensor*> own = m.own_buffers();
      for (std::size_t i = 0; i < own.size(); ++i)
        out.emplace_back(m.layer_name() + ".buffer" + std::to_string(i), own[i]);
    });
  return out;
}

std::size_t Model::parameter_count() {
  std::size_t n = 0;
  for (Param* p : params()) n += p->master.size();
  return n;
}

}  // namespace qtrain
