// Depthwise 2-D convolution of NHWC integer images: one kh×kw filter per channel (channel multiplier 1, the
// MobileNet block's spatial filter). Geometry, stride and padding as in Conv2d (conv2d.h); out_channels = C.
//
// Weights: C × (kh·kw), row c = channel c's filter in kernel order (i, j).
// Forward   X → X_q: b_a-bit int8, one exponent e_x;  W → W_q: b_w-bit, one exponent per channel e_w[c]
//           y[n,oh,ow,c] = Σ_{i,j} X_q[n, oh·s − p + i, ow·s − p + j, c]·W_q[c,(i,j)]
//                          int32 (kh·kw ≤ kMaxReduction products), exponent e_x + e_w[c]; zero padding exact
// Backward  dY (int32, one exponent) → ShiftQuant: q[·,c] with channel exponent e0 − k_c
//           dx[n,h,w,c] = Σ_{taps with oh·s − p + i = h, ow·s − p + j = w} q[n,oh,ow,c]·W_q[c,(i,j)]
//                          Channels are not reduced, so no weight alignment is needed: exact in int64 at the
//                          channel's exponent e0 − k_c + e_w[c], then one exponent for the tensor
//                          (narrow_cols_to_tensor: exact unless a value must be rounded to fit int32)
//           dW[c,(i,j)] = Σ_{n,oh,ow} q[n,oh,ow,c]·X_q[n, oh·s − p + i, ow·s − p + j, c]
//                          exact in int64 (N·Ho·Wo·2^14 < 2^63), exponent e0 − k_c + e_x, narrowed per row
// The work is kh·kw multiply-adds per output and channel, so it runs as direct integer loops (contiguous over
// channels), not as a GEMM.
// Bits, N_G, activation groups, scale rule and weight granularity: the spec's unless ctx.policy overrides them for
// this layer's name and the step's pass (core/quant_policy.h); both granularities apply (per channel is per filter).
// Float formula: y = depthwise_conv2d(Q(x), Q(W)), dx = depthwise_conv_transpose2d(Q_g(dy), Q(W)),
//                dW = per-channel correlation of Q_g(dy) and Q(x).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "qtrain/engine/layers/conv2d.h"
#include "qtrain/engine/core/layer.h"
#include "qtrain/engine/ops/qgemm_op.h"

namespace qtrain {

class DepthwiseConv2d : public Layer, public QuantizedLayer {
 public:
  // spec.out_channels must be 0 or in_channels. Weights: U(±1/√(kh·kw)) like PyTorch's Conv2d(groups = C).
  DepthwiseConv2d(const Conv2dSpec& spec, uint32_t layer_id, uint64_t seed);
  // x: N·H·W × C (int8 or int32) → N·Ho·Wo × C int32 with per-column exponents.
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::vector<Param*> own_params() override { return {&weight_}; }
  std::string name() const override;
  std::string layer_name() const override { return "dwconv" + std::to_string(id_); }
  const QGemmConfig& own_quant_config() const override { return op_.config(); }
  const Conv2dSpec& spec() const { return spec_; }
  Param& weight() { return weight_; }

 private:
  Conv2dSpec spec_;
  uint32_t id_;
  Param weight_;  // C × kh·kw
  QGemmOp op_;    // the input and weight quantizers, the W_q cache and the gradient ShiftQuant
};

}  // namespace qtrain
