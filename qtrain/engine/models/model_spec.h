// What model to build: a registry name and its configuration. For the built-in models (mlp, cnn, resnet8,
// resnet20) ModelSpec is also their typed view: every field below is one of their configuration keys (to_config,
// from_config), and the CLI flags and TrainConfig set them directly. A registered model (registry.h) keeps its
// configuration in `config`.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "qtrain/engine/models/model_config.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {

// Bit-widths of one layer: weights, input activations, output gradients (ShiftQuant).
struct LayerBits {
  int weight = 8, act = 8, grad = 8;
};

// The images a model reads (NHWC), and how many classes it tells apart.
struct InputShape {
  std::size_t h = 0, w = 0, c = 0;
  std::size_t size() const { return h * w * c; }
  bool operator==(const InputShape& o) const { return h == o.h && w == o.w && c == o.c; }
};

// The built-ins. The MLP is `sizes` (input width, hidden widths, classes); the convolutional models take their
// input geometry from in_h × in_w × in_c:
//   cnn       conv3x3(32)-norm-ReLU-maxpool2, conv3x3(64)-norm-ReLU-maxpool2, FC128-ReLU, FC(classes)
//   resnet8   CIFAR-style ResNet: conv3x3(16)-norm-ReLU, one basic block per stage (16, 32/2, 64/2; 1x1 projection
//             shortcuts with norm), global average pool, FC(classes)
//   resnet20  the same with three basic blocks per stage
//   vit       Vision Transformer: patch embedding (a patch×patch convolution of stride `patch`), learned positional
//             embedding, `depth` pre-norm blocks (L1 layer norm, multi-head attention, MLP ×mlp_ratio with GELU or
//             ReLU), final L1 layer norm, mean pooling over the tokens (or, with pool "cls", a learned class token
//             prepended after the patch embedding whose row the head reads), FC(classes)
// A registered model reads in_h × in_w × in_c (as an N·H·W × C tensor, like the convolutional built-ins) and
// writes `classes` logits.
struct ModelSpec {
  std::string kind = "mlp";                           // the registry name
  std::vector<std::size_t> sizes{784, 256, 128, 10};  // mlp: input, hidden…, classes
  std::size_t in_h = 28, in_w = 28, in_c = 1;         // every model but the MLP: input geometry (NHWC)
  std::size_t classes = 10;                           // every model but the MLP
  LayerBits bits;      // every layer but the edges (the first layer's input is the pixels)
  int input_bits = 8;  // pixels: signed int8 after normalization
  // Convolutional models: weight, activation and output-gradient bits of the first conv and the last FC (0 = 8,
  // the usual choice of quantized training). The MLP quantizes every layer with `bits`.
  int edge_bits = 0;
  int groups = 0;           // ShiftQuant N_G; 0 = the largest the gradient bits allow
  std::string norm = "l1";  // convolutional models: l1 or l2 batch norm
  // How every quantized layer picks the power of two of its input activations: "mse" takes the least squared
  // error (quant::ScaleRule::kMinError), "max" covers max|x| (nothing clipped; model files without the field were
  // trained with it). Weights always cover each output channel's max|w|.
  std::string scale = "mse";
  // Power-of-two channel groups of the inner layers' input activations (1 = one step per tensor; at most what the
  // int8 carrier allows for bits.act unsigned values: 4 at 4 bits, 1 at 8). 0 = that most (+0.2 points on 4-bit
  // ResNet-8). Edge layers use one group.
  int act_groups = 0;
  // vit: the transformer's shape (see above). Its linear layers use `bits`; the patch embedding and the head use
  // the edge bits; the attention products Q·Kᵀ and P·V use attn_bits for both operands and their output gradients.
  struct ViT {
    std::size_t patch = 7, dim = 64, depth = 4, heads = 4, mlp_ratio = 4;
    int attn_bits = 8;
    std::string act = "gelu";    // MLP activation: gelu (integer table) or relu
    std::string pool = "mean";   // what the head reads: mean (of the tokens) or cls (a class token's row)
    bool operator==(const ViT& o) const {
      return patch == o.patch && dim == o.dim && depth == o.depth && heads == o.heads && mlp_ratio == o.mlp_ratio &&
             attn_bits == o.attn_bits && act == o.act && pool == o.pool;
    }
  } vit;
  // A registered model's configuration, handed to its factory. Empty for the built-ins (their fields above).
  ModelConfig config;

  // The N_G actually used (resolves 0).
  int resolved_groups() const;
  int resolved_edge_bits() const { return edge_bits > 0 ? edge_bits : 8; }
  int resolved_act_groups() const;
  // ShiftQuant N_G of the edge layers' gradients, which have edge bits like their weights and activations.
  int resolved_edge_groups() const;
  quant::ScaleRule scale_rule() const {
    return scale == "mse" ? quant::ScaleRule::kMinError : quant::ScaleRule::kCover;
  }
  bool built_in() const;
  // The MLP reads N × (H·W·C) rows; every other model N·H·W × C.
  bool convolutional() const { return kind != "mlp"; }
  bool transformer() const { return kind == "vit"; }
  // vit: tokens per image, (in_h/patch)·(in_w/patch).
  std::size_t tokens() const { return (in_h / vit.patch) * (in_w / vit.patch); }  // the patches
  std::size_t sequence() const { return tokens() + (vit.pool == "cls" ? 1 : 0); }   // the blocks' tokens
  // The input geometry and class count, for every kind (the MLP's input is 1×1×sizes.front() unless in_h × in_w ×
  // in_c has that size).
  InputShape input() const;
  std::size_t output_classes() const { return convolutional() ? classes : sizes.back(); }
  // Sets the input geometry from the data (and the MLP's input width).
  void set_input(std::size_t h, std::size_t w, std::size_t c);

  // The configuration the registry builds this model from: the built-ins' fields as keys (mlp: hidden,
  // weight_bits, act_bits, grad_bits, input_bits, groups, scale, act_groups; the convolutional ones also edge_bits
  // and norm; vit edge_bits, patch, dim, depth, heads, mlp_ratio, attn_bits, act),
  // or `config` for a registered model.
  ModelConfig to_config() const;
  // The spec of model `name` built from `config` (the inverse of to_config). Throws UsageError naming the key
  // and its valid range for a built-in's bad key; a registered model's config is checked by its factory.
  static ModelSpec from_config(const std::string& name, const ModelConfig& config, const InputShape& input,
                               std::size_t classes);

  // Throws UsageError naming the flag and the valid range (or the unknown model and the known ones).
  void validate() const;
  std::string describe() const;  // "mlp 784-256-128-10 W4A4G4 N_G=5"
  // An upper bound on the int32 elements (parameters and buffers) build_model allocates for this valid built-in
  // spec, at most about twice the true count plus 2^20, computed without allocating (saturates at SIZE_MAX).
  // File readers compare it with the file's size before building anything, so a header that describes a huge model
  // on a small file is refused without a huge allocation. Every built-in must be covered (tests hold it to
  // build_model). 0 for a registered model: its size is known only from its factory, so the readers bound it by
  // the file's own tensor list instead.
  std::size_t size_bound() const;
};

}  // namespace qtrain
