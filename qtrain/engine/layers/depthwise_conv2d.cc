#include "qtrain/engine/layers/depthwise_conv2d.h"

#include <algorithm>
#include <stdexcept>

#include "qtrain/engine/core/narrow.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/kernels/parallel.h"
#include "qtrain/quant/error.h"

namespace qtrain {

namespace {

Conv2dSpec checked(Conv2dSpec s) {
  if (s.out_channels != 0 && s.out_channels != s.in_channels)
    throw UsageError("DepthwiseConv2d has as many output channels as input channels (" + std::to_string(s.in_channels) +
                     "), not " + std::to_string(s.out_channels));
  s.out_channels = s.in_channels;
  if (s.in_h == 0 || s.in_w == 0 || s.in_channels == 0 || s.kernel_h == 0 || s.kernel_w == 0 || s.stride == 0)
    throw UsageError("DepthwiseConv2d needs a non-empty input geometry H×W×C, kernel ≥ 1 and stride ≥ 1");
  if (s.out_h() == 0 || s.out_w() == 0)
    throw UsageError("DepthwiseConv2d kernel " + std::to_string(s.kernel_h) + "x" + std::to_string(s.kernel_w) +
                     " is larger than the padded input");
  if (s.kernel_h * s.kernel_w > kernels::kMaxReduction)
    throw UsageError("DepthwiseConv2d kernel has more than " + std::to_string(kernels::kMaxReduction) + " taps");
  return s;
}

QGemmConfig quant_config(const Conv2dSpec& s) {
  return {s.weight_bits, s.act_bits, s.grad_bits, s.groups, s.signed_input, s.scale, s.act_groups};
}

// Calls f(out_row, in_row, tap) for every kernel tap of output line t = (n, oh) that lands inside the image.
template <typename F>
void for_line_taps(const Conv2dSpec& s, std::size_t t, F f) {
  const std::size_t ho = s.out_h(), wo = s.out_w(), n = t / ho, oh = t % ho;
  for (std::size_t i = 0; i < s.kernel_h; ++i) {
    const long ih = static_cast<long>(oh * s.stride + i) - static_cast<long>(s.padding);
    if (ih < 0 || ih >= static_cast<long>(s.in_h)) continue;
    for (std::size_t ow = 0; ow < wo; ++ow)
      for (std::size_t j = 0; j < s.kernel_w; ++j) {
        const long iw = static_cast<long>(ow * s.stride + j) - static_cast<long>(s.padding);
        if (iw < 0 || iw >= static_cast<long>(s.in_w)) continue;
        f(t * wo + ow, (n * s.in_h + static_cast<std::size_t>(ih)) * s.in_w + static_cast<std::size_t>(iw),
          i * s.kernel_w + j);
      }
  }
}

// W_q transposed to taps × C, so the inner loops run over contiguous channels.
std::vector<int8_t> taps_by_channel(const Tensor& wq) {
  const std::size_t c = wq.rows(), kk = wq.cols();
  std::vector<int8_t> t(kk * c);
  for (std::size_t ch = 0; ch < c; ++ch)
    for (std::size_t k = 0; k < kk; ++k) t[k * c + ch] = wq.data<int8_t>()[ch * kk + k];
  return t;
}

}  // namespace

DepthwiseConv2d::DepthwiseConv2d(const Conv2dSpec& spec, uint32_t layer_id, uint64_t seed)
    : spec_(checked(spec)), id_(layer_id), op_(quant_config(spec_)) {
  weight_.name = layer_name() + ".weight";
  weight_.id = layer_id * 2;
  const std::size_t kk = spec_.kernel_h * spec_.kernel_w;
  init_uniform(weight_, spec_.in_channels, kk, kk, seed);
}

std::string DepthwiseConv2d::name() const {
  return "DepthwiseConv2d(" + std::to_string(spec_.in_channels) + ", " + std::to_string(spec_.kernel_h) + "x" +
         std::to_string(spec_.kernel_w) + "/s" + std::to_string(spec_.stride) + "/p" + std::to_string(spec_.padding) +
         ", " + std::to_string(spec_.in_h) + "x" + std::to_string(spec_.in_w) + ", W" +
         std::to_string(spec_.weight_bits) + "A" + std::to_string(spec_.act_bits) + "G" +
         std::to_string(spec_.grad_bits) + ")";
}

VarPtr DepthwiseConv2d::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  const std::size_t hw = spec_.in_h * spec_.in_w, c = spec_.in_channels;
  if (xv.cols() != c || xv.rows() == 0 || xv.rows() % hw != 0)
    throw std::invalid_argument(name() + ": input " + xv.describe() + " is not N·" + std::to_string(hw) + " × " +
                                std::to_string(c) + " (NHWC rows × channels)");
  const std::size_t lines = xv.rows() / hw * spec_.out_h(), rows = lines * spec_.out_w();
  const QGemmConfig qc = op_.resolve(ctx, layer_name());
  const std::shared_ptr<const QuantizedWeights> wq = op_.weights(weight_, qc);
  auto xq = std::make_shared<Tensor>(QGemmOp::quantize_input(xv, qc, ctx.pool));
  const std::vector<int8_t> wt = taps_by_channel(wq->q);

  // y = Σ_taps x·w per channel: ≤ kh·kw products of |·| ≤ 2^14, exact in int32.
  auto out = std::make_shared<Var>();
  out->value = Tensor(rows, c, DType::kI32);
  int32_t* y = out->value.data<int32_t>();
  const int8_t* xd = xq->data<int8_t>();
  const Conv2dSpec s = spec_;
  for_tiles(ctx.pool, lines, [&](std::size_t t0, std::size_t t1) {
    for (std::size_t t = t0; t < t1; ++t)
      for_line_taps(s, t, [&](std::size_t o, std::size_t in, std::size_t tap) {
        int32_t* yr = y + o * c;
        const int8_t* xr = xd + in * c;
        const int8_t* wr = wt.data() + tap * c;
        for (std::size_t ch = 0; ch < c; ++ch) yr[ch] += int32_t{xr[ch]} * wr[ch];
      });
  });
  std::vector<int> e_out(c);
  for (std::size_t ch = 0; ch < c; ++ch) e_out[ch] = xq->exponent() + wq->q.exponents()[ch];
  out->value.set_exponents(ScaleAxis::kCol, std::move(e_out));

  if (!ctx.training()) return out;
  ctx.tape->record([this, ctx, qc, x, out, xq, wq, lines, c] {
    if (!out->has_grad) return;
    const Conv2dSpec sp = spec_;
    const std::size_t kk = sp.kernel_h * sp.kernel_w, ho = sp.out_h();
    const quant::ShiftQuantized g = op_.quantize_grad(ctx, id_, qc, out->grad);
    const int8_t* q = g.q.data();
    const int8_t* xd2 = xq->data<int8_t>();

    if (x->requires_grad && sp.needs_input_grad) {
      // dx per channel at exponent e0 − k_c + e_w[c]: ≤ kh·kw terms of |q·w| ≤ 2^14. Tasks own whole images.
      const std::vector<int8_t> w_t = taps_by_channel(wq->q);
      std::vector<int64_t> dx(xq->size(), 0);
      for_tiles(ctx.pool, lines / ho, [&](std::size_t n0, std::size_t n1) {
        for (std::size_t t = n0 * ho; t < n1 * ho; ++t)
          for_line_taps(sp, t, [&](std::size_t o, std::size_t in, std::size_t tap) {
            int64_t* dr = dx.data() + in * c;
            const int8_t* qr = q + o * c;
            const int8_t* wr = w_t.data() + tap * c;
            for (std::size_t ch = 0; ch < c; ++ch) dr[ch] += int32_t{qr[ch]} * wr[ch];
          });
      });
      std::vector<int> e_col(c);
      for (std::size_t ch = 0; ch < c; ++ch) e_col[ch] = g.channel_exponent(ch) + wq->q.exponents()[ch];
      accumulate_grad(*x, narrow_cols_to_tensor(dx.data(), xq->rows(), c, e_col));
    }

    // dW[c, tap] = Σ q·x over every output: int64. Tasks own channel ranges (accumulated taps × channels locally).
    std::vector<int64_t> dw(c * kk, 0);
    for_tiles(ctx.pool, c, [&](std::size_t c0, std::size_t c1) {
      const std::size_t width = c1 - c0;
      std::vector<int64_t> local(kk * width, 0);
      for (std::size_t t = 0; t < lines; ++t)
        for_line_taps(sp, t, [&](std::size_t o, std::size_t in, std::size_t tap) {
          int64_t* lr = local.data() + tap * width;
          const int8_t* qr = q + o * c + c0;
          const int8_t* xr = xd2 + in * c + c0;
          for (std::size_t ch = 0; ch < width; ++ch) lr[ch] += int32_t{qr[ch]} * xr[ch];
        });
      for (std::size_t tap = 0; tap < kk; ++tap)
        for (std::size_t ch = 0; ch < width; ++ch) dw[(c0 + ch) * kk + tap] = local[tap * width + ch];
    });
    std::vector<int> e_dw(c);
    for (std::size_t ch = 0; ch < c; ++ch) e_dw[ch] = g.channel_exponent(ch) + xq->exponent();
    accumulate_grad(weight_, narrow_per_row(dw.data(), c, kk, e_dw), ctx.pool);
  });
  return out;
}

}  // namespace qtrain
