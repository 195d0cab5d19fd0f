// 2-D convolution of NHWC integer images, as im2col onto the int8 GEMMs of the shared QGemmOp (qgemm_op.h).
//
// Layout: an image batch is a Tensor with rows = N·H·W (image n, row h, column w; row-major) and cols = C.
// The layer knows (H, W, C) from its spec; N = rows / (H·W). The output has rows N·Ho·Wo and cols Cout, with
// Ho = ⌊(H + 2p − kh)/s⌋ + 1 (likewise Wo). Weights are Cout × (kh·kw·C), each row ordered (kernel row i,
// kernel column j, input channel c): the order of a patch, so a patch row times a weight row is one output.
//
// Forward   X → X_q: b_a-bit int8, one exponent e_x (nearest-even; unsigned range after ReLU)
//           P[(n,oh,ow), (i,j,c)] = X_q[n, oh·s − p + i, ow·s − p + j, c], 0 outside the image — zero padding
//                                   is exact because symmetric quantization maps 0 to 0
//           Y = P · W_qᵀ  int32, exponent e_x + e_w[co]; each output sums K = kh·kw·C ≤ kMaxReduction products
// Backward  dY (int32, one exponent) → ShiftQuant (b_g bits, N_G groups, stochastic rounding)
//           dP = dY_shifted · W_aligned          int32, exponent e_d; reduction over Cout ≤ kMaxReduction
//           dX[n,h,w,c] = Σ dP[(n,oh,ow), (i,j,c)] over oh·s − p + i = h, ow·s − p + j = w   (col2im)
//                                                ≤ kh·kw terms of |dP| ≤ Cout·127²: exact in int32 while
//                                                kh·kw·Cout·127² < 2^31 (then it is dX itself); otherwise exact
//                                                in int64, then int32 at the finest exponent that fits (narrow.h)
//           dW = dY_qᵀ · P                       reduction over N·Ho·Wo rows: int8 GEMMs over blocks of
//                                                ≤ kMaxReduction rows, blocks summed exactly (int32 while the
//                                                total is ≤ kMaxReduction rows, int64 beyond)
//           Stride 1 (square kernel, p ≤ k − 1): the same dX sums computed as a convolution, with no dP:
//           dX[n,h,w,c] = Σ_{i',j',co} dY_shifted[n, h − p' + i', w − p' + j', co] · W_aligned[co, k−1−i', k−1−j', c],
//           p' = k − 1 − p: im2col of dY_shifted times the flipped, transposed weights (one int8 GEMM per block,
//           reduction k²·Cout under the same int32 bound).
// Patches are built a block of output rows at a time, in forward and again in backward (from the kept X_q), so
// memory stays bounded by the block whatever the batch. A 1×1, stride-1, unpadded convolution uses X_q itself
// as P and dP itself as dX (no im2col, no col2im).
// Bits, N_G, activation groups, scale rule and weight granularity: the spec's unless ctx.policy overrides them for
// this layer's name and the step's pass (core/quant_policy.h).
// Float formula: y = conv2d(Q(x), Q(W)), dx = conv_transpose2d(Q_g(dy), Q(W)), dW = Q_g(dy) ⋆ Q(x) (the
// correlation conv2d's weight gradient is), with Q(W) replaced by the aligned W in dx (exact when the output
// channels' weight exponents span ≤ int8 headroom: 4 octaves at 4 bits, 0 at 8 bits).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qtrain/engine/core/layer.h"
#include "qtrain/engine/ops/qgemm_op.h"

namespace qtrain {

struct Conv2dSpec {
  std::size_t in_h = 0, in_w = 0, in_channels = 0;  // input geometry H, W, C
  std::size_t out_channels = 0;
  std::size_t kernel_h = 3, kernel_w = 3;
  std::size_t stride = 1;   // both axes
  std::size_t padding = 0;  // zeros on every side, both axes
  int weight_bits = 8;
  int act_bits = 8;
  int grad_bits = 8;
  int groups = 1;             // ShiftQuant N_G for this layer's output gradient (not channel groups)
  bool signed_input = false;  // false: the input is non-negative (after ReLU) and uses the unsigned range
  bool needs_input_grad = true;
  // Rows of patches materialized at once (rounded down to whole output rows Wo, at most kMaxReduction);
  // 0: automatic, about 256 KiB of int8 patches (they stay in L2 while the GEMM reads them). Results do not depend
  // on it.
  std::size_t max_block_rows = 0;
  quant::ScaleRule scale = quant::ScaleRule::kCover;  // how X_q's power of two is chosen
  int act_groups = 1;  // power-of-two channel groups of the quantized input (QGemmConfig::act_groups)

  std::size_t out_h() const;
  std::size_t out_w() const;
  std::size_t patch_size() const { return kernel_h * kernel_w * in_channels; }  // K, the GEMM reduction
  bool pointwise() const { return kernel_h == 1 && kernel_w == 1 && stride == 1 && padding == 0; }
};

class Conv2d : public Layer, public QuantizedLayer {
 public:
  // Throws UsageError for an empty geometry, a kernel larger than the padded input, K or Cout above
  // kMaxReduction, or bit-widths out of range. Weights: Kaiming-uniform U(±1/√K) like PyTorch's Conv2d default.
  Conv2d(const Conv2dSpec& spec, uint32_t layer_id, uint64_t seed);
  // x: N·H·W × C (int8 or int32; per-tensor or per-column exponents). Returns N·Ho·Wo × Cout int32 with
  // per-column exponents.
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::vector<Param*> own_params() override { return {&weight_}; }
  std::string name() const override;
  std::string layer_name() const override { return "conv" + std::to_string(id_); }
  const QGemmConfig& own_quant_config() const override { return op_.config(); }
  const Conv2dSpec& spec() const { return spec_; }
  Param& weight() { return weight_; }

 private:
  std::size_t block_lines() const;  // output rows (n, oh) per im2col block

  Conv2dSpec spec_;
  uint32_t id_;
  Param weight_;  // Cout × kh·kw·C
  QGemmOp op_;
  // The stride-1 dX convolution's flipped, transposed W_aligned (conv2d.cc), made once per weights version: the
  // version it was made from (held, so a newer version can never be mistaken for it), W' and its products.
  std::shared_ptr<const QuantizedWeights> flipped_of_;
  std::vector<int8_t> flipped_;
  WeightProducts flipped_products_{kernels::PackedWeights::Use::kForward};
};

}  // namespace qtrain
