#include "engine/model.h"

#include <sstream>

#include "engine/linear.h"
#include "engine/relu.h"
#include "quant/error.h"
#include "quant/shiftquant.h"

namespace qtrain {

const std::vector<std::string>& model_names() {
  static const std::vector<std::string> names{"mlp"};
  return names;
}

int ModelSpec::resolved_groups() const { return groups > 0 ? groups : quant::max_groups(bits.grad); }

void ModelSpec::validate() const {
  bool known = false;
  for (const auto& n : model_names()) known |= n == kind;
  if (!known) {
    std::string list;
    for (const auto& n : model_names()) list += (list.empty() ? "" : ", ") + n;
    throw UsageError("--model: unknown model '" + kind + "'; valid models: " + list);
  }
  auto check_bits = [](const char* what, int b) {
    if (b < 2 || b > 8)
      throw UsageError(std::string("--bits: ") + what + " bit-width " + std::to_string(b) + " is out of range 2..8");
  };
  check_bits("weight", bits.weight);
  check_bits("activation", bits.act);
  check_bits("gradient", bits.grad);
  check_bits("input", input_bits);
  const int gmax = quant::max_groups(bits.grad);
  if (groups < 0 || groups > gmax)
    throw UsageError("--groups: N_G=" + std::to_string(groups) + " is out of range 1.." + std::to_string(gmax) +
                     " for " + std::to_string(bits.grad) +
                     "-bit gradients ((2^(b-1)-1)*2^(N_G-1) must be <= 127 to fit the int8 carrier)");
  if (sizes.size() < 2) throw UsageError("model needs at least an input and an output size");
  for (std::size_t s : sizes)
    if (s == 0) throw UsageError("model layer sizes must be positive");
}

std::string ModelSpec::describe() const {
  std::ostringstream o;
  o << kind << ' ';
  for (std::size_t i = 0; i < sizes.size(); ++i) o << (i ? "-" : "") << sizes[i];
  o << " W" << bits.weight << "A" << bits.act << "G" << bits.grad << " N_G=" << resolved_groups();
  return o.str();
}

std::vector<ParamShape> ModelSpec::param_shapes() const {
  std::vector<ParamShape> out;
  for (std::size_t i = 0; i + 1 < sizes.size(); ++i) {
    out.push_back({"linear" + std::to_string(i) + ".weight", sizes[i + 1], sizes[i]});
    out.push_back({"linear" + std::to_string(i) + ".bias", 1, sizes[i + 1]});
  }
  return out;
}

Model::Model(ModelSpec spec, std::vector<std::unique_ptr<Layer>> layers)
    : spec_(std::move(spec)), layers_(std::move(layers)) {}

VarPtr Model::forward(const StepContext& ctx, const VarPtr& x) {
  VarPtr h = x;
  for (auto& l : layers_) h = l->forward(ctx, h);
  return h;
}

std::vector<Param*> Model::params() {
  std::vector<Param*> out;
  for (auto& l : layers_)
    for (Param* p : l->params()) out.push_back(p);
  return out;
}

std::size_t Model::parameter_count() {
  std::size_t n = 0;
  for (Param* p : params()) n += p->master.size();
  return n;
}

std::unique_ptr<Model> build_model(const ModelSpec& spec, uint64_t seed) {
  spec.validate();
  std::vector<std::unique_ptr<Layer>> layers;
  const std::size_t n = spec.sizes.size() - 1;
  for (std::size_t i = 0; i < n; ++i) {
    LinearSpec ls;
    ls.in = spec.sizes[i];
    ls.out = spec.sizes[i + 1];
    ls.weight_bits = spec.bits.weight;
    ls.act_bits = i == 0 ? spec.input_bits : spec.bits.act;
    ls.grad_bits = spec.bits.grad;
    ls.groups = spec.resolved_groups();
    ls.signed_input = i == 0;       // normalized pixels are signed; later inputs follow a ReLU
    ls.needs_input_grad = i != 0;   // nothing consumes the gradient of the pixels
    layers.push_back(std::make_unique<Linear>(ls, static_cast<uint32_t>(i), seed));
    if (i + 1 < n) layers.push_back(std::make_unique<Relu>());
  }
  return std::make_unique<Model>(spec, std::move(layers));
}

}  // namespace qtrain
