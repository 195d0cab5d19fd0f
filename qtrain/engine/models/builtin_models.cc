#include "qtrain/engine/models/builtin_models.h"

#include <algorithm>
#include <cstdint>
#include <utility>

#include "qtrain/engine/layers/class_token.h"
#include "qtrain/engine/layers/conv2d.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/engine/layers/norm.h"
#include "qtrain/engine/layers/pool.h"
#include "qtrain/engine/layers/pos_embed.h"
#include "qtrain/engine/layers/residual.h"
#include "qtrain/engine/layers/transformer_block.h"
#include "qtrain/quant/shiftquant.h"

namespace qtrain {

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
    ls.signed_input = i == 0;  // normalized pixels are signed; later inputs follow a ReLU
    ls.scale = spec.scale_rule();
    ls.act_groups = i == 0 ? 1 : spec.resolved_act_groups();
    ls.needs_input_grad = i != 0;  // nothing consumes the gradient of the pixels
    ls.relu = i + 1 < n;           // hidden layers: Linear + ReLU as one op
    layers.push_back(std::make_unique<Linear>(ls, static_cast<uint32_t>(i), seed));
  }
  return layers;
}

// The Vision Transformer (model_spec.h): patch embedding as a patch×patch convolution of stride `patch` (its
// N·(H/p)·(W/p) × dim output rows are the tokens in raster order), the class token (pool "cls"), positional
// embedding, blocks, final norm, mean pooling over the tokens or the class token's row, head. Edge layers (patch embedding, head) use the edge bits, as in the CNNs.
std::vector<std::unique_ptr<Layer>> build_vit(const ModelSpec& spec, uint64_t seed) {
  const ModelSpec::ViT& v = spec.vit;
  const std::size_t tokens = spec.tokens();
  const int edge = spec.resolved_edge_bits();
  std::vector<std::unique_ptr<Layer>> layers;
  uint32_t id = 0;
  Conv2dSpec pe;
  pe.in_h = spec.in_h;
  pe.in_w = spec.in_w;
  pe.in_channels = spec.in_c;
  pe.out_channels = v.dim;
  pe.kernel_h = pe.kernel_w = v.patch;
  pe.stride = v.patch;
  pe.padding = 0;
  pe.weight_bits = pe.grad_bits = edge;
  pe.act_bits = spec.input_bits;
  pe.groups = spec.resolved_edge_groups();
  pe.signed_input = true;
  pe.scale = spec.scale_rule();
  pe.needs_input_grad = false;
  layers.push_back(std::make_unique<Conv2d>(pe, id++, seed));
  if (v.pool == "cls") layers.push_back(std::make_unique<ClassToken>(tokens, v.dim, id++, seed));
  const std::size_t seq = spec.sequence();
  layers.push_back(std::make_unique<PositionalEmbedding>(seq, v.dim, id++, seed));

  TransformerBlockSpec bs;
  bs.attention.dim = v.dim;
  bs.attention.heads = v.heads;
  bs.attention.tokens = seq;
  bs.attention.attn_bits = bs.attention.attn_grad_bits = v.attn_bits;
  bs.attention.attn_grad_groups = std::min(spec.resolved_groups(), quant::max_groups(v.attn_bits));
  LinearSpec& ls = bs.attention.projection;
  ls.weight_bits = spec.bits.weight;
  ls.act_bits = spec.bits.act;
  ls.grad_bits = spec.bits.grad;
  ls.groups = spec.resolved_groups();
  ls.signed_input = true;  // layer-norm outputs
  ls.scale = spec.scale_rule();
  ls.act_groups = 1;
  bs.mlp_ratio = v.mlp_ratio;
  bs.act = v.act == "relu" ? MlpActivation::kRelu : MlpActivation::kGelu;
  bs.gelu_bits = spec.bits.act;
  for (std::size_t i = 0; i < v.depth; ++i) {
    layers.push_back(std::make_unique<TransformerBlock>(bs, id, seed));
    id += TransformerBlock::kLayerIds;
  }
  layers.push_back(std::make_unique<L1LayerNorm>(v.dim, id++));
  if (v.pool == "cls")
    layers.push_back(std::make_unique<ClassTokenRow>(seq, v.dim));
  else
    layers.push_back(std::make_unique<GlobalAvgPool>(seq, 1, v.dim));
  LinearSpec head;
  head.in = v.dim;
  head.out = spec.classes;
  head.weight_bits = head.act_bits = head.grad_bits = edge;
  head.groups = spec.resolved_edge_groups();
  head.signed_input = true;
  head.scale = spec.scale_rule();
  layers.push_back(std::make_unique<Linear>(head, id++, seed));
  return layers;
}

}  // namespace

std::vector<std::unique_ptr<Layer>> build_builtin_layers(const ModelSpec& spec, uint64_t seed) {
  if (spec.kind == "cnn") return build_cnn(spec, seed);
  if (spec.kind == "resnet8") return build_resnet(spec, seed, 1);
  if (spec.kind == "resnet20") return build_resnet(spec, seed, 3);
  if (spec.kind == "vit") return build_vit(spec, seed);
  return build_mlp(spec, seed);
}

}  // namespace qtrain
