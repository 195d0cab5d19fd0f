// Fully-connected layer Y = X·Wᵀ + b on integers.
//
// Forward   X (int32 or int8) → X_q: b_a-bit, one power-of-two exponent e_x (nearest-even; unsigned after ReLU)
//           W (int32 master)  → W_q: b_w-bit, one exponent per output channel e_w[c] (nearest-even)
//           Y[n,c] = Σ_k X_q[n,k]·W_q[c,k]  (int8 GEMM, int32 accumulator), exponent e_x + e_w[c]; + b[c] aligned
//           W_q is packed for the forward GEMM once per parameter version (kernels::PackedWeights) and shared
//           by every forward of that version (training batches, evaluation)
// Backward  dY (int32, one exponent) → ShiftQuant (b_g bits, N_G groups, stochastic rounding)
//           dX = dY_shifted · W_aligned          (one int8 GEMM, exact grouped product; straight-through X_q;
//                                                 W_aligned packed for dgrad once per version, at the first
//                                                 training forward that needs it)
//           dW[c,:] = Σ_n dY_q[n,c]·X_q[n,:]     (int8 GEMM; exponent e0 − k_c + e_x per row)
//           db[c]   = Σ_n dY[n,c]                (exact int64 sum of the unquantized int32 gradient)
// Float formula it implements: y = Q(x)·Q(W)ᵀ + b, dx = Q_g(dy)·Q(W), dW = Q_g(dy)ᵀ·Q(x), db = Σ dy.
#pragma once

#include <cstddef>
#include <memory>
#include <vector>

#include "engine/layer.h"
#include "kernels/gemm.h"

namespace qtrain {

struct LinearSpec {
  std::size_t in = 0, out = 0;
  int weight_bits = 8;
  int act_bits = 8;
  int grad_bits = 8;
  int groups = 1;              // ShiftQuant N_G for this layer's output gradient
  bool signed_input = false;   // false: the input is non-negative (after ReLU) and uses the unsigned range
  bool needs_input_grad = true;
  // Pack the quantized weights once per parameter version for the forward and dgrad GEMMs (the default), or
  // let every GEMM pack them itself (kernels::gemm_forward/gemm_dgrad). Results are bit-identical either way.
  bool prepack_weights = true;
};

class Linear : public Layer {
 public:
  Linear(const LinearSpec& spec, uint32_t layer_id, uint64_t seed);
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::vector<Param*> params() override { return {&weight_, &bias_}; }
  std::string name() const override;
  const LinearSpec& spec() const { return spec_; }
  Param& weight() { return weight_; }
  Param& bias() { return bias_; }

 private:
  // W for dgrad: W_q aligned to one exponent, and (with prepack_weights) its packing.
  struct DgradWeights {
    std::vector<int8_t> aligned;  // m × k
    int exponent = 0;
    kernels::PackedWeights packed;
  };

  void quantize_weights(kernels::ThreadPool* pool);
  std::shared_ptr<const DgradWeights> dgrad_weights(kernels::ThreadPool* pool);

  LinearSpec spec_;
  uint32_t id_;
  Param weight_;  // out × in
  Param bias_;    // 1 × out
  // Quantized weights of the current parameter version (reused by forward and dgrad, and across eval batches),
  // their forward packing, and the dgrad weights made from them (shared with the backward closures of the
  // version's steps: the optimizer replaces, never modifies, them).
  Tensor wq_;
  uint64_t wq_version_ = ~uint64_t{0};
  kernels::PackedWeights wq_packed_;
  std::shared_ptr<const DgradWeights> dgrad_;
  uint64_t dgrad_version_ = ~uint64_t{0};
};

}  // namespace qtrain
