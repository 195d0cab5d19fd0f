#include "qtrain/engine/models/model.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <utility>

#include "qtrain/engine/layers/conv2d.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/engine/layers/norm.h"
#include "qtrain/engine/layers/pool.h"
#include "qtrain/engine/core/profile.h"
#include "qtrain/engine/layers/residual.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/shiftquant.h"

namespace qtrain {

const std::vector<std::string>& model_names() {
  static const std::vector<std::string> names{"mlp", "cnn", "resnet8", "resnet20"};
  return names;
}

int ModelSpec::resolved_groups() const { return groups > 0 ? groups : quant::max_groups(bits.grad); }
int ModelSpec::resolved_edge_groups() const { return std::min(resolved_groups(), quant::max_groups(resolved_edge_bits())); }
int ModelSpec::resolved_act_groups() const {
  return act_groups > 0 ? act_groups : quant::max_column_groups(quant::unsigned_range(bits.act));
}

void ModelSpec::set_input(std::size_t h, std::size_t w, std::size_t c) {
  in_h = h;
  in_w = w;
  in_c = c;
  if (!sizes.empty()) sizes.front() = h * w * c;
}

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
  if (norm != "l1" && norm != "l2") throw UsageError("--norm: unknown norm '" + norm + "'; valid norms: l1, l2");
  const int agmax = quant::max_column_groups(quant::unsigned_range(bits.act));
  if (act_groups < 0 || act_groups > agmax)
    throw UsageError("--act-groups " + std::to_string(act_groups) + " is out of range 0.." + std::to_string(agmax) +
                     " for " + std::to_string(bits.act) +
                     "-bit activations (0 = the most; (2^b-1)*2^(groups-1) must be <= 127)");
  if (scale != "max" && scale != "mse") throw UsageError("--scale: unknown rule '" + scale + "'; valid rules: max, mse");
  check_bits("edge", resolved_edge_bits());
  if (convolutional() && (in_h < 4 || in_w < 4 || in_c == 0 || classes < 2))
    throw UsageError("convolutional models need images of at least 4x4 pixels and 2 classes");
}

std::string ModelSpec::describe() const {
  std::ostringstream o;
  o << kind << ' ';
  if (convolutional())
    o << in_h << 'x' << in_w << 'x' << in_c << ' ' << norm << "-norm";
  else
    for (std::size_t i = 0; i < sizes.size(); ++i) o << (i ? "-" : "") << sizes[i];
  o << " W" << bits.weight << "A" << bits.act << "G" << bits.grad << " N_G=" << resolved_groups();
  if (convolutional())
    o << " edges W" << resolved_edge_bits() << "A" << resolved_edge_bits() << "G" << resolved_edge_bits();
  if (scale != "mse") o << " scale " << scale;
  // The MLP's hidden activations carry per-column exponents (Linear outputs), which always use the covering rule.
  if (convolutional() && resolved_act_groups() > 1) o << " act-groups " << resolved_act_groups();
  return o.str();
}

std::size_t ModelSpec::size_bound() const {
  constexpr uint64_t kCap = uint64_t{1} << 62;
  auto mul = [](uint64_t a, uint64_t b) { return a != 0 && b > kCap / a ? kCap : a * b; };
  auto add = [](uint64_t a, uint64_t b) { return a + b > kCap ? kCap : a + b; };
  uint64_t n = 0;
  if (kind == "mlp") {
    for (std::size_t i = 0; i + 1 < sizes.size(); ++i) n = add(n, mul(sizes[i] + 1, sizes[i + 1]));
  } else if (kind == "cnn") {
    // conv3x3(in_c→32), conv3x3(32→64) with norms, FC((h/4)(w/4)·64 → 128), FC(128 → classes).
    n = add(mul(9 * 32, in_c), mul(mul(in_h / 4 + 2, in_w / 4 + 2), 64 * 128 + 128));
    n = add(n, add(mul(129, classes), uint64_t{1} << 18));
  } else {
    // resnet8/resnet20: the first conv reads in_c channels, the FC writes `classes`; the blocks are fixed (the
    // 64-channel stage of resnet20 is about 0.27 M parameters with its norms).
    n = add(add(mul(9 * 16, in_c), mul(65, classes)), uint64_t{1} << 19);
  }
  return n >= kCap ? SIZE_MAX : static_cast<std::size_t>(n);
}

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

std::size_t Model::parameter_count() {
  std::size_t n = 0;
  for (Param* p : params()) n += p->master.size();
  return n;
}

namespace {

// Builds the convolutional models layer by layer, tracking the feature-map geometry and handing out layer ids
// (which key each layer's parameters and random streams).
class ConvBuilder {
 public:
  explicit ConvBuilder(const ModelSpec& spec, uint64_t seed)
      : spec_(spec), seed_(seed), h_(spec.in_h), w_(spec.in_w), c_(spec.in_c) {}

  // conv (kernel k, stride s, "same" padding) into `out`; the first conv of the model reads the signed pixels.
  std::unique_ptr<Layer> conv(std::size_t cout, std::size_t k, std::size_t stride, std::size_t& h, std::size_t& w,
                              std::size_t& c) {
    Conv2dSpec cs;
    cs.in_h = h;
    cs.in_w = w;
    cs.in_channels = c;
    cs.out_channels = cout;
    cs.kernel_h = cs.kernel_w = k;
    cs.stride = stride;
    cs.padding = k / 2;
    const bool first = next_id_ == 0;
    cs.weight_bits = first ? spec_.resolved_edge_bits() : spec_.bits.weight;
    cs.act_bits = first ? spec_.input_bits : spec_.bits.act;
    cs.grad_bits = first ? spec_.resolved_edge_bits() : spec_.bits.grad;
    cs.groups = first ? spec_.resolved_edge_groups() : spec_.resolved_groups();
    cs.signed_input = first;
    cs.scale = spec_.scale_rule();
    cs.act_groups = first ? 1 : spec_.resolved_act_groups();
    cs.needs_input_grad = !first;
    auto layer = std::make_unique<Conv2d>(cs, next_id_++, seed_);
    h = cs.out_h();
    w = cs.out_w();
    c = cout;
    return layer;
  }
  // A batch norm, with a ReLU fused into it when `relu` (NormOptions::relu).
  std::unique_ptr<Layer> norm(std::size_t channels, bool relu = false) {
    NormOptions opt;
    opt.relu = relu;
    if (spec_.norm == "l2") return std::make_unique<L2BatchNorm>(channels, next_id_++, opt);
    return std::make_unique<L1BatchNorm>(channels, next_id_++, opt);
  }
  // conv-norm(-ReLU) appended to `out`, on the builder's current geometry.
  void conv_norm(std::vector<std::unique_ptr<Layer>>& out, std::size_t cout, std::size_t k, std::size_t stride,
                 bool relu) {
    out.push_back(conv(cout, k, stride, h_, w_, c_));
    out.push_back(norm(c_, relu));
  }
  void max_pool(std::vector<std::unique_ptr<Layer>>& out) {
    Pool2dSpec ps;
    ps.in_h = h_;
    ps.in_w = w_;
    ps.channels = c_;
    auto pool = std::make_unique<MaxPool2d>(ps);
    h_ = ps.out_h();
    w_ = ps.out_w();
    out.push_back(std::move(pool));
  }
  // A basic block: conv3x3(stride)-norm-ReLU-conv3x3-norm, plus a 1x1 projection shortcut when the shape changes.
  // The builder's geometry moves to the block's output; the shortcut starts from the block's input.
  std::unique_ptr<Layer> basic_block(std::size_t cout, std::size_t stride) {
    std::size_t h = h_, w = w_, c = c_;
    std::vector<std::unique_ptr<Layer>> body, shortcut;
    conv_norm(body, cout, 3, stride, true);
    conv_norm(body, cout, 3, 1, false);
    if (stride != 1 || c != cout) {
      shortcut.push_back(conv(cout, 1, stride, h, w, c));
      shortcut.push_back(norm(cout));
    }
    return std::make_unique<Residual>(std::move(body), std::move(shortcut));
  }
  std::unique_ptr<Layer> linear(std::size_t in, std::size_t out, bool last, bool relu = false) {
    LinearSpec ls;
    ls.in = in;
    ls.out = out;
    ls.weight_bits = last ? spec_.resolved_edge_bits() : spec_.bits.weight;
    ls.act_bits = last ? spec_.resolved_edge_bits() : spec_.bits.act;
    ls.grad_bits = last ? spec_.resolved_edge_bits() : spec_.bits.grad;
    ls.groups = last ? spec_.resolved_edge_groups() : spec_.resolved_groups();
    ls.scale = spec_.scale_rule();
    ls.act_groups = last ? 1 : spec_.resolved_act_groups();
    ls.relu = relu;
    return std::make_unique<Linear>(ls, next_id_++, seed_);
  }
  std::size_t h() const { return h_; }
  std::size_t w() const { return w_; }
  std::size_t c() const { return c_; }

 private:
  const ModelSpec& spec_;
  uint64_t seed_;
  std::size_t h_, w_, c_;
  uint32_t next_id_ = 0;
};

std::vector<std::unique_ptr<Layer>> build_cnn(const ModelSpec& spec, uint64_t seed) {
  ConvBuilder b(spec, seed);
  std::vector<std::unique_ptr<Layer>> layers;
  b.conv_norm(layers, 32, 3, 1, true);
  b.max_pool(layers);
  b.conv_norm(layers, 64, 3, 1, true);
  b.max_pool(layers);
  layers.push_back(std::make_unique<Flatten>(b.h(), b.w(), b.c()));
  layers.push_back(b.linear(b.h() * b.w() * b.c(), 128, false, true));  // Linear + ReLU, one op
  layers.push_back(b.linear(128, spec.classes, true));
  return layers;
}

std::vector<std::unique_ptr<Layer>> build_resnet(const ModelSpec& spec, uint64_t seed, int blocks_per_stage) {
  ConvBuilder b(spec, seed);
  std::vector<std::unique_ptr<Layer>> layers;
  b.conv_norm(layers, 16, 3, 1, true);
  const std::pair<std::size_t, std::size_t> stages[] = {{16, 1}, {32, 2}, {64, 2}};
  for (const auto& [cout, stride] : stages)
    for (int i = 0; i < blocks_per_stage; ++i) layers.push_back(b.basic_block(cout, i == 0 ? stride : 1));
  layers.push_back(std::make_unique<GlobalAvgPool>(b.h(), b.w(), b.c()));
  layers.push_back(b.linear(b.c(), spec.classes, true));
  return layers;
}

std::vector<std::unique_ptr<Layer>> build_mlp(const ModelSpec& spec, uint64_t seed) {
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
    ls.scale = spec.scale_rule();
    ls.act_groups = i == 0 ? 1 : spec.resolved_act_groups();
    ls.needs_input_grad = i != 0;   // nothing consumes the gradient of the pixels
    ls.relu = i + 1 < n;            // hidden layers: Linear + ReLU as one op
    layers.push_back(std::make_unique<Linear>(ls, static_cast<uint32_t>(i), seed));
  }
  return layers;
}

}  // namespace

std::unique_ptr<Model> build_model(const ModelSpec& spec, uint64_t seed) {
  spec.validate();
  std::vector<std::unique_ptr<Layer>> layers;
  if (spec.kind == "cnn")
    layers = build_cnn(spec, seed);
  else if (spec.kind == "resnet8")
    layers = build_resnet(spec, seed, 1);
  else if (spec.kind == "resnet20")
    layers = build_resnet(spec, seed, 3);
  else
    layers = build_mlp(spec, seed);
  return std::make_unique<Model>(spec, std::move(layers));
}

}  // namespace qtrain
