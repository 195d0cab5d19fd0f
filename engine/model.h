// Models: a sequence of layers built from a small spec (which also goes into saved model files).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "engine/layer.h"

namespace qtrain {

// Name and shape of one parameter tensor, as a model of a spec will hold it.
struct ParamShape {
  std::string name;
  std::size_t rows = 0, cols = 0;
};

// Bit-widths of one layer: weights, input activations, output gradients (ShiftQuant).
struct LayerBits {
  int weight = 8, act = 8, grad = 8;
};

struct ModelSpec {
  std::string kind = "mlp";
  std::vector<std::size_t> sizes{784, 256, 128, 10};  // mlp: input, hidden…, classes
  LayerBits bits;                                     // every layer (the first layer's input is the pixels)
  int input_bits = 8;                                 // pixels: signed int8 after normalization
  int groups = 0;                                     // ShiftQuant N_G; 0 = the largest the gradient bits allow
  // The N_G actually used (resolves 0).
  int resolved_groups() const;
  // Throws UsageError naming the flag and the valid range.
  void validate() const;
  std::string describe() const;  // "mlp 784-256-128-10 W4A4G4 N_G=5"
  // The parameters build_model creates for this (valid) spec, in Model::params() order, without allocating them:
  // file readers check the sizes a file declares against its length before building anything. Every model kind
  // must list its parameters here (tests hold it to build_model).
  std::vector<ParamShape> param_shapes() const;
};

// Names the models `build_model` knows, for help texts and errors.
const std::vector<std::string>& model_names();

class Model {
 public:
  Model(ModelSpec spec, std::vector<std::unique_ptr<Layer>> layers);
  VarPtr forward(const StepContext& ctx, const VarPtr& x);
  std::vector<Param*> params();
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
