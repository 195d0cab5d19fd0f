// Spatial pooling and flattening of NHWC integer images (rows = N·H·W, cols = C; the layer knows H, W, C).
//
// MaxPool2d  y[n,oh,ow,c] = max over the window of x[n, oh·s − p + i, ow·s − p + j, c] (padding never wins)
//            Exact: one channel has one exponent, so integers compare directly; exponents pass through.
//            dx[argmax] += dy (ties → the first position in window order i, then j), summed in int64 where
//            windows overlap (≤ ⌈k/s⌉² terms of |dy| < 2^31), then int32 at the finest exponent that fits.
// AvgPool2d  y = (Σ_window x) / k²  (no padding).  GlobalAvgPool  y[n,c] = (Σ_{h,w} x[n,h,w,c]) / (H·W).
//            Sums in int64 (window·2^31 < 2^46). Division by the window size A: when A = 2^a it is the exponent
//            shift e − a (exact); otherwise multiplication by the dyadic m·2^−t ≈ 1/A (quant::to_dyadic, 16-bit m,
//            relative error ≤ 2^−16) — product < 2^62 — and then int32 at the finest exponent that fits,
//            round-to-nearest-even (narrow.h). Backward spreads dy·(1/A) over the window the same way:
//            dx = (Σ over windows covering x of dy)·m, exponent e_dy − t, then narrowed.
//            The window is at most 2^15 elements (keeps every product inside int64).
// Flatten    N·H·W × C → N × H·W·C: the same bytes (NHWC is already image-major); per-channel exponents are
//            repeated for each of the H·W pixels; backward reshapes dy back.
// Float formulas: y = maxpool(x), dx = scatter(dy → argmax); y = avgpool(x), dx = avgpool_backward(dy) =
//            Σ_windows dy/A; flatten is a reshape.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "qtrain/engine/core/layer.h"

namespace qtrain {

struct Pool2dSpec {
  std::size_t in_h = 0, in_w = 0, channels = 0;  // input geometry H, W, C
  std::size_t kernel = 2;
  std::size_t stride = 2;
  std::size_t padding = 0;  // MaxPool2d only (≤ kernel/2, like PyTorch); padded positions never win
  std::size_t out_h() const;
  std::size_t out_w() const;
};

// 1/A for a pooling window of A elements: an exponent shift when A is a power of two, else a dyadic multiplier.
// value·(1/A) ≈ value·mul·2^−shift.
struct InverseWindow {
  explicit InverseWindow(std::size_t window);  // throws UsageError for 0 or A > 2^15
  int64_t mul = 1;                             // 1 when A is a power of two (exact)
  int shift = 0;
};

class MaxPool2d : public Layer {
 public:
  explicit MaxPool2d(const Pool2dSpec& spec);
  // x: N·H·W × C int32 (per-tensor or per-column exponents) → N·Ho·Wo × C, same exponents.
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::string name() const override;
  const Pool2dSpec& spec() const { return spec_; }

 private:
  Pool2dSpec spec_;
};

class AvgPool2d : public Layer {
 public:
  explicit AvgPool2d(const Pool2dSpec& spec);  // padding must be 0
  // x: N·H·W × C int32 → N·Ho·Wo × C int32 (per-column exponents stay per column).
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::string name() const override;
  const Pool2dSpec& spec() const { return spec_; }

 private:
  Pool2dSpec spec_;
  InverseWindow inv_;
};

class GlobalAvgPool : public Layer {
 public:
  GlobalAvgPool(std::size_t in_h, std::size_t in_w, std::size_t channels);
  // x: N·H·W × C int32 → N × C int32 (per-column exponents stay per column).
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::string name() const override;

 private:
  std::size_t h_, w_, c_;
  InverseWindow inv_;
};

class Flatten : public Layer {
 public:
  Flatten(std::size_t in_h, std::size_t in_w, std::size_t channels);
  // x: N·H·W × C (int8 or int32) → N × H·W·C, column (h·W + w)·C + c; per-column exponents repeated per pixel.
  VarPtr forward(const StepContext& ctx, const VarPtr& x) override;
  std::string name() const override;

 private:
  std::size_t h_, w_, c_;
};

}  // namespace qtrain
