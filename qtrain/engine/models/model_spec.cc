#include "qtrain/engine/models/model_spec.h"

#include <algorithm>
#include <cstdint>
#include <sstream>

#include "qtrain/engine/models/registry.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/shiftquant.h"

namespace qtrain {

namespace {
// The largest layer width and image side a built-in's configuration may give (the file readers' limits too).
constexpr int64_t kMaxWidth = int64_t{1} << 24;
}  // namespace

int ModelSpec::resolved_groups() const { return groups > 0 ? groups : quant::max_groups(bits.grad); }
int ModelSpec::resolved_edge_groups() const {
  return std::min(resolved_groups(), quant::max_groups(resolved_edge_bits()));
}
int ModelSpec::resolved_act_groups() const {
  return act_groups > 0 ? act_groups : quant::max_column_groups(quant::unsigned_range(bits.act));
}

bool ModelSpec::built_in() const { return model_built_in(kind); }

InputShape ModelSpec::input() const {
  if (convolutional() || in_h * in_w * in_c == sizes.front()) return {in_h, in_w, in_c};
  return {1, 1, sizes.front()};
}

void ModelSpec::set_input(std::size_t h, std::size_t w, std::size_t c) {
  in_h = h;
  in_w = w;
  in_c = c;
  if (!sizes.empty()) sizes.front() = h * w * c;
}

ModelConfig ModelSpec::to_config() const {
  if (!built_in()) return config;
  ModelConfig c;
  c.set("weight_bits", bits.weight).set("act_bits", bits.act).set("grad_bits", bits.grad);
  c.set("input_bits", input_bits).set("groups", groups).set("scale", scale).set("act_groups", act_groups);
  if (transformer()) {
    c.set("edge_bits", edge_bits).set("patch", static_cast<int64_t>(vit.patch)).set("dim", static_cast<int64_t>(vit.dim));
    c.set("depth", static_cast<int64_t>(vit.depth)).set("heads", static_cast<int64_t>(vit.heads));
    c.set("mlp_ratio", static_cast<int64_t>(vit.mlp_ratio)).set("attn_bits", vit.attn_bits).set("act", vit.act);
    if (vit.pool != "mean") c.set("pool", vit.pool);  // absent: mean (files written before the option stay the same)
  } else if (convolutional()) {
    c.set("edge_bits", edge_bits).set("norm", norm);
  } else {
    ModelConfig::Ints hidden;
    for (std::size_t i = 1; i + 1 < sizes.size(); ++i) hidden.push_back(static_cast<int64_t>(sizes[i]));
    c.set("hidden", std::move(hidden));
  }
  return c;
}

ModelSpec ModelSpec::from_config(const std::string& name, const ModelConfig& config, const InputShape& input,
                                 std::size_t classes) {
  ModelSpec s;
  s.kind = name;
  s.in_h = input.h;
  s.in_w = input.w;
  s.in_c = input.c;
  s.classes = classes;
  if (!s.built_in()) {
    s.config = config;
    return s;
  }
  // Only the keys a built-in reads: a misspelt one would otherwise be ignored silently.
  const char* const common[] = {"weight_bits", "act_bits", "grad_bits", "input_bits", "groups", "scale", "act_groups"};
  const char* const conv_only[] = {"edge_bits", "norm"};
  const char* const vit_only[] = {"edge_bits", "patch",     "dim", "depth", "heads",
                                  "mlp_ratio", "attn_bits", "act", "pool"};
  for (const auto& [key, value] : config.values()) {
    bool known = std::find(std::begin(common), std::end(common), key) != std::end(common);
    if (s.transformer())
      known |= std::find(std::begin(vit_only), std::end(vit_only), key) != std::end(vit_only);
    else if (s.convolutional())
      known |= std::find(std::begin(conv_only), std::end(conv_only), key) != std::end(conv_only);
    else
      known |= key == "hidden";
    if (!known) {
      std::string list = s.transformer()       ? "edge_bits, patch, dim, depth, heads, mlp_ratio, attn_bits, act, pool"
                         : s.convolutional() ? "edge_bits, norm"
                                             : "hidden";
      for (const char* k : common) list += std::string(", ") + k;
      throw UsageError("model config '" + key + "': not a key of model '" + name + "' (valid keys: " + list + ")");
    }
  }
  s.bits.weight = static_cast<int>(config.get_int("weight_bits", s.bits.weight, 2, 8));
  s.bits.act = static_cast<int>(config.get_int("act_bits", s.bits.act, 2, 8));
  s.bits.grad = static_cast<int>(config.get_int("grad_bits", s.bits.grad, 2, 8));
  s.input_bits = static_cast<int>(config.get_int("input_bits", s.input_bits, 2, 8));
  s.groups = static_cast<int>(config.get_int("groups", s.groups, 0, 8));
  s.scale = config.get_string("scale", s.scale, {"max", "mse"});
  s.act_groups = static_cast<int>(config.get_int("act_groups", s.act_groups, 0, 8));
  if (s.transformer()) {
    s.edge_bits = static_cast<int>(config.get_int("edge_bits", s.edge_bits, 0, 8));
    s.vit.patch = static_cast<std::size_t>(config.get_int("patch", 7, 1, 1024));
    s.vit.dim = static_cast<std::size_t>(config.get_int("dim", 64, 1, 65536));
    s.vit.depth = static_cast<std::size_t>(config.get_int("depth", 4, 1, 256));
    s.vit.heads = static_cast<std::size_t>(config.get_int("heads", 4, 1, 1024));
    s.vit.mlp_ratio = static_cast<std::size_t>(config.get_int("mlp_ratio", 4, 1, 64));
    s.vit.attn_bits = static_cast<int>(config.get_int("attn_bits", 8, 2, 8));
    s.vit.act = config.get_string("act", "gelu", {"gelu", "relu"});
    s.vit.pool = config.get_string("pool", "mean", {"mean", "cls"});
  } else if (s.convolutional()) {
    s.edge_bits = static_cast<int>(config.get_int("edge_bits", s.edge_bits, 0, 8));
    s.norm = config.get_string("norm", s.norm, {"l1", "l2"});
  } else {
    const ModelConfig::Ints hidden = config.get_ints("hidden", {256, 128}, 0, 1022, 1, kMaxWidth);
    s.sizes = {input.size()};
    for (int64_t h : hidden) s.sizes.push_back(static_cast<std::size_t>(h));
    s.sizes.push_back(classes);
  }
  return s;
}

void ModelSpec::validate() const {
  if (!model_known(kind)) {
    std::string list;
    for (const auto& n : known_models()) list += (list.empty() ? "" : ", ") + n;
    throw UsageError("--model: unknown model '" + kind + "'; valid models: " + list);
  }
  if (!built_in()) {
    if (in_h == 0 || in_w == 0 || in_c == 0 || classes < 1)
      throw UsageError("model '" + kind + "' needs an input of at least 1x1x1 pixels and at least 1 class");
    return;  // its factory checks its configuration
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
  if (scale != "max" && scale != "mse")
    throw UsageError("--scale: unknown rule '" + scale + "'; valid rules: max, mse");
  check_bits("edge", resolved_edge_bits());
  if (transformer()) {
    if (vit.patch < 1 || in_h % vit.patch != 0 || in_w % vit.patch != 0 || in_h < vit.patch || in_w < vit.patch)
      throw UsageError("--patch " + std::to_string(vit.patch) + " must divide the image sides " + std::to_string(in_h) +
                       "x" + std::to_string(in_w));
    if (tokens() > 4096)
      throw UsageError("--patch " + std::to_string(vit.patch) + " gives " + std::to_string(tokens()) +
                       " tokens per image; at most 4096 are supported");
    if (vit.dim < 1 || vit.dim > 65536) throw UsageError("--dim " + std::to_string(vit.dim) + " is out of range 1..65536");
    if (vit.heads < 1 || vit.dim % vit.heads != 0)
      throw UsageError("--heads " + std::to_string(vit.heads) + " must divide --dim " + std::to_string(vit.dim));
    if (vit.depth < 1 || vit.depth > 256) throw UsageError("--depth " + std::to_string(vit.depth) + " is out of range 1..256");
    if (vit.mlp_ratio < 1 || vit.mlp_ratio > 64)
      throw UsageError("--mlp-ratio " + std::to_string(vit.mlp_ratio) + " is out of range 1..64");
    if (vit.dim * vit.mlp_ratio > 131071)
      throw UsageError("--dim × --mlp-ratio " + std::to_string(vit.dim * vit.mlp_ratio) +
                       " exceeds 131071 (the int32 accumulator bound)");
    check_bits("attention", vit.attn_bits);
    if (vit.pool != "mean" && vit.pool != "cls")
      throw UsageError("--pool: unknown pooling '" + vit.pool + "'; valid: mean, cls");
    if (vit.act != "gelu" && vit.act != "relu")
      throw UsageError("--mlp-act: unknown activation '" + vit.act + "'; valid: gelu, relu");
    if (classes < 2) throw UsageError("vit needs at least 2 classes");
    return;
  }
  if (convolutional() && (in_h < 4 || in_w < 4 || in_c == 0 || classes < 2))
    throw UsageError("convolutional models need images of at least 4x4 pixels and 2 classes");
}

std::string ModelSpec::describe() const {
  std::ostringstream o;
  o << kind << ' ';
  if (!built_in()) {
    o << in_h << 'x' << in_w << 'x' << in_c << "->" << classes;
    if (!config.values().empty()) o << ' ' << config.describe();
    return o.str();
  }
  if (transformer())
    o << in_h << 'x' << in_w << 'x' << in_c << " patch " << vit.patch << " dim " << vit.dim << " depth " << vit.depth
      << " heads " << vit.heads << " mlp x" << vit.mlp_ratio << ' ' << vit.act << (vit.pool == "cls" ? " cls" : "");
  else if (convolutional())
    o << in_h << 'x' << in_w << 'x' << in_c << ' ' << norm << "-norm";
  else
    for (std::size_t i = 0; i < sizes.size(); ++i) o << (i ? "-" : "") << sizes[i];
  o << " W" << bits.weight << "A" << bits.act << "G" << bits.grad << " N_G=" << resolved_groups();
  if (transformer()) o << " attention A" << vit.attn_bits << "G" << vit.attn_bits;
  if (convolutional())
    o << " edges W" << resolved_edge_bits() << "A" << resolved_edge_bits() << "G" << resolved_edge_bits();
  if (scale != "mse") o << " scale " << scale;
  // The MLP's hidden activations carry per-column exponents (Linear outputs), which always use the covering rule.
  if (convolutional() && !transformer() && resolved_act_groups() > 1) o << " act-groups " << resolved_act_groups();
  return o.str();
}

std::size_t ModelSpec::size_bound() const {
  constexpr uint64_t kCap = uint64_t{1} << 62;
  auto mul = [](uint64_t a, uint64_t b) { return a != 0 && b > kCap / a ? kCap : a * b; };
  auto add = [](uint64_t a, uint64_t b) { return a + b > kCap ? kCap : a + b; };
  uint64_t n = 0;
  if (!built_in()) return 0;
  if (kind == "mlp") {
    for (std::size_t i = 0; i + 1 < sizes.size(); ++i) n = add(n, mul(sizes[i] + 1, sizes[i + 1]));
  } else if (kind == "cnn") {
    // conv3x3(in_c→32), conv3x3(32→64) with norms, FC((h/4)(w/4)·64 → 128), FC(128 → classes).
    n = add(mul(9 * 32, in_c), mul(mul(in_h / 4 + 2, in_w / 4 + 2), 64 * 128 + 128));
    n = add(n, add(mul(129, classes), uint64_t{1} << 18));
  } else if (kind == "vit") {
    // patch embedding, positional embedding, per block 4·d² + 2·r·d² weights (+ biases, norms), head.
    const uint64_t d = vit.dim, t = sequence(), r = vit.mlp_ratio;
    n = add(mul(vit.patch * vit.patch * in_c + 1, d), mul(t, d));
    n = add(n, mul(vit.depth, add(mul(mul(d, d), 4 + 2 * r), mul(d, 16 + 2 * r))));
    n = add(n, add(mul(d + 1, classes), uint64_t{1} << 18));
  } else {
    // resnet8/resnet20: the first conv reads in_c channels, the FC writes `classes`; the blocks are fixed (the
    // 64-channel stage of resnet20 is about 0.27 M parameters with its norms).
    n = add(add(mul(9 * 16, in_c), mul(65, classes)), uint64_t{1} << 19);
  }
  return n >= kCap ? SIZE_MAX : static_cast<std::size_t>(n);
}

}  // namespace qtrain
