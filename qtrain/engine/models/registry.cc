#include "qtrain/engine/models/registry.h"

#include <mutex>
#include <utility>

#include "qtrain/engine/models/builtin_models.h"
#include "qtrain/quant/error.h"

namespace qtrain {

namespace {

constexpr const char* kBuiltIns[] = {"mlp", "cnn", "resnet8", "resnet20", "vit"};

struct Registry {
  std::mutex mutex;
  std::vector<std::pair<std::string, ModelFactory>> entries;  // built-ins first, then in order of registration

  Registry() {
    for (const char* name : kBuiltIns)
      entries.emplace_back(name, [kind = std::string(name)](const ModelConfig& config, const InputShape& input,
                                                            std::size_t classes, uint64_t seed) {
        const ModelSpec spec = ModelSpec::from_config(kind, config, input, classes);
        spec.validate();
        return build_builtin_layers(spec, seed);
      });
  }
  // The entry's factory, or null; the caller holds `mutex`.
  const ModelFactory* find(const std::string& name) const {
    for (const auto& [n, f] : entries)
      if (n == name) return &f;
    return nullptr;
  }
};

Registry& registry() {
  static Registry r;
  return r;
}

// A copy of the factory (so it runs without the lock: a factory may build other registered models).
ModelFactory factory_of(const std::string& name) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  const ModelFactory* f = r.find(name);
  if (f == nullptr) {
    std::string list;
    for (const auto& e : r.entries) list += (list.empty() ? "" : ", ") + e.first;
    throw UsageError("unknown model '" + name + "'; valid models: " + list);
  }
  return *f;
}

}  // namespace

void register_model(const std::string& name, ModelFactory factory) {
  if (!ModelConfig::valid_key(name))
    throw UsageError("register_model: model name '" + name +
                     "' is not 1..64 characters of letters, digits, '_', '.', '-'");
  if (!factory) throw UsageError("register_model: model '" + name + "' has no factory");
  if (model_built_in(name)) throw UsageError("register_model: '" + name + "' is a built-in model");
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  if (r.find(name) != nullptr) throw UsageError("register_model: model '" + name + "' is already registered");
  r.entries.emplace_back(name, std::move(factory));
}

bool model_built_in(const std::string& name) {
  for (const char* n : kBuiltIns)
    if (name == n) return true;
  return false;
}

bool model_known(const std::string& name) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  return r.find(name) != nullptr;
}

std::vector<std::string> known_models() {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mutex);
  std::vector<std::string> out;
  for (const auto& e : r.entries) out.push_back(e.first);
  return out;
}

std::unique_ptr<Model> build_registered_model(const std::string& name, const ModelConfig& config,
                                              const InputShape& input, std::size_t classes, uint64_t seed) {
  const ModelSpec spec = ModelSpec::from_config(name, config, input, classes);
  return build_model(spec, seed);
}

// Every model, built-in or registered, is built by its registry entry from its configuration.
std::unique_ptr<Model> build_model(const ModelSpec& spec, uint64_t seed) {
  spec.validate();
  const ModelFactory factory = factory_of(spec.kind);
  ModelLayers layers = factory(spec.to_config(), spec.input(), spec.output_classes(), seed);
  if (layers.empty()) throw UsageError("model '" + spec.kind + "': its factory built no layers");
  for (const auto& l : layers)
    if (!l) throw UsageError("model '" + spec.kind + "': its factory returned a null layer");
  return std::make_unique<Model>(spec, std::move(layers));
}

}  // namespace qtrain
