// Models: a sequence of layers built from a small spec (which also goes into saved model files).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "qtrain/engine/core/layer.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {

// Bit-widths of one layer: weights, input activations, output gradients (ShiftQuant).
struct LayerBits {
  int weight = 8, act = 8, grad = 8;
};

// What to build. The MLP is `sizes` (input width, hidden widths, classes); the convolutional models take their
// input geometry from in_h × in_w × in_c:
//   cnn       conv3x3(32)-norm-ReLU-maxpool2, conv3x3(64)-norm-ReLU-maxpool2, FC128-ReLU, FC(classes)
//   resnet8   CIFAR-style ResNet: conv3x3(16)-norm-ReLU, one basic block per stage (16, 32/2, 64/2; 1x1 projection
//             shortcuts with norm), global average pool, FC(classes)
//   resnet20  the same with three basic blocks per stage
struct ModelSpec {
  std::string kind = "mlp";
  std::vector<std::size_t> sizes{784, 256, 128, 10};  // mlp: input, hidden…, classes
  std::size_t in_h = 28, in_w = 28, in_c = 1;         // convolutional models: input geometry (NHWC)
  std::size_t classes = 10;                           // convolutional models
  LayerBits bits;                                     // every layer but the edges (the first layer's input is the pixels)
  int input_bits = 8;                                 // pixels: signed int8 after normalization
  // Convolutional models: weight, activation and output-gradient bits of the first conv and the last FC (0 = 8,
  // the usual choice of quantized training). The MLP quantizes every layer with `bits`.
  int edge_bits = 0;
  int groups = 0;                                     // ShiftQuant N_G; 0 = the largest the gradient bits allow
  std::string norm = "l1";                            // convolutional models: l1 or l2 batch norm
  // How every quantized layer picks the power of two of its input activations: "mse" takes the least squared
  // error (quant::ScaleRule::kMinError), "max" covers max|x| (nothing clipped; model files without the field were
  // trained with it). Weights always cover each output channel's max|w|.
  std::string scale = "mse";
  // Power-of-two channel groups of the inner layers' input activations (1 = one step per tensor; at most what the
  // int8 carrier allows for bits.act unsigned values: 4 at 4 bits, 1 at 8). 0 = that most (+0.2 points on 4-bit
  // ResNet-8). Edge layers use one group.
  int act_groups = 0;
  // The N_G actually used (resolves 0).
  int resolved_groups() const;
  int resolved_edge_bits() const { return edge_bits > 0 ? edge_bits : 8; }
  int resolved_act_groups() const;
  // ShiftQuant N_G of the edge layers' gradients, which have edge bits like their weights and activations.
  int resolved_edge_groups() const;
  quant::ScaleRule scale_rule() const { return scale == "mse" ? quant::ScaleRule::kMinError : quant::ScaleRule::kCover; }
  bool convolutional() const { return kind != "mlp"; }
  // Sets the input geometry from the data (and the MLP's input width).
  void set_input(std::size_t h, std::size_t w, std::size_t c);
  // Throws UsageError naming the flag and the valid range.
  void validate() const;
  std::string describe() const;  // "mlp 784-256-128-10 W4A4G4 N_G=5"
  // An upper bound on the int32 elements (parameters and buffers) build_model allocates for this valid spec, at
  // most about twice the true count plus 2^20, computed without allocating (saturates at SIZE_MAX). File readers
  // compare it with the file's size before building anything, so a header that describes a huge model on a small
  // file is refused without a huge allocation. Every model kind must be covered (tests hold it to build_model).
  std::size_t size_bound() const;
};

// Names the models `build_model` knows, for help texts and errors.
const std::vector<std::string>& model_names();

// The root module: its children are the top-level layers, run in sequence.
class Model : public Layer {
 public:
  // Throws UsageError when two modules share a layer name, or two parameters a name or an id (the id keys their
  // random streams).
  Model(ModelSpec spec, std::vector<std::unique_ptr<Layer>> layers);
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::vector<Layer*> children() override;
  std::string name() const override { return spec_.describe(); }
  // The module named `layer_name` (Layer::layer_name) anywhere in the model, or null.
  Layer* find_layer(const std::string& layer_name);
  // Every module with a layer name, in the model's order (depth first).
  std::vector<Layer*> named_layers();
  const ModelSpec& spec() const { return spec_; }
  const std::vector<std::unique_ptr<Layer>>& layers() const { return layers_; }
  std::size_t parameter_count();

 private:
  ModelSpec spec_;
  std::vector<std::unique_ptr<Layer>> layers_;
};

// Builds the model the spec names, with weights initialised from `seed`.
std::unique_ptr<Model> build_model(const ModelSpec& spec, uint64_t seed);

}  // namespace qtrain
