#include "engine/conv2d.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "engine/narrow.h"
#include "engine/parallel.h"
#include "kernels/gemm.h"
#include "quant/error.h"

namespace qtrain {

std::size_t Conv2dSpec::out_h() const {
  return in_h + 2 * padding < kernel_h || stride == 0 ? 0 : (in_h + 2 * padding - kernel_h) / stride + 1;
}
std::size_t Conv2dSpec::out_w() const {
  return in_w + 2 * padding < kernel_w || stride == 0 ? 0 : (in_w + 2 * padding - kernel_w) / stride + 1;
}

namespace {

QGemmConfig gemm_config(const Conv2dSpec& s) {
  if (s.in_h == 0 || s.in_w == 0 || s.in_channels == 0 || s.out_channels == 0)
    throw UsageError("Conv2d needs a non-empty input geometry H×W×C and out_channels > 0");
  if (s.kernel_h == 0 || s.kernel_w == 0 || s.stride == 0) throw UsageError("Conv2d needs kernel ≥ 1 and stride ≥ 1");
  if (s.out_h() == 0 || s.out_w() == 0)
    throw UsageError("Conv2d kernel " + std::to_string(s.kernel_h) + "x" + std::to_string(s.kernel_w) +
                     " is larger than the padded input " + std::to_string(s.in_h + 2 * s.padding) + "x" +
                     std::to_string(s.in_w + 2 * s.padding));
  if (s.patch_size() > kernels::kMaxReduction || s.out_channels > kernels::kMaxReduction ||
      s.out_w() > kernels::kMaxReduction)
    throw UsageError("Conv2d kh·kw·C = " + std::to_string(s.patch_size()) +
                     ", Cout = " + std::to_string(s.out_channels) + " and Wo = " + std::to_string(s.out_w()) +
                     " must each be at most " + std::to_string(kernels::kMaxReduction) +
                     " (the int32 accumulator bound of int8 GEMMs)");
  return {s.weight_bits, s.act_bits, s.grad_bits, s.groups, s.signed_input};
}

struct Geometry {
  std::size_t h, w, c, kh, kw, s, p, ho, wo, k;
  explicit Geometry(const Conv2dSpec& sp)
      : h(sp.in_h),
        w(sp.in_w),
        c(sp.in_channels),
        kh(sp.kernel_h),
        kw(sp.kernel_w),
        s(sp.stride),
        p(sp.padding),
        ho(sp.out_h()),
        wo(sp.out_w()),
        k(sp.patch_size()) {}
  // Input column range [j0, j1) of kernel columns that land inside the image for output column ow.
  void valid_kernel_cols(std::size_t ow, std::size_t* j0, std::size_t* j1) const {
    const long start = static_cast<long>(ow * s) - static_cast<long>(p);  // input column of j = 0
    *j0 = start < 0 ? std::min(static_cast<std::size_t>(-start), kw) : 0;
    const long end = std::min<long>(static_cast<long>(kw), static_cast<long>(w) - start);
    *j1 = end < static_cast<long>(*j0) ? *j0 : static_cast<std::size_t>(end);  // j0 ≤ j1 ≤ kw
  }
};

// Patches of output lines [l0, l1) (a line is one output row (n, oh): Wo patches) into p, row-major
// ((l1 − l0)·Wo × K). Zero outside the image.
void im2col(const int8_t* x, const Geometry& g, std::size_t l0, std::size_t l1, int8_t* p, kernels::ThreadPool* pool) {
  for_tiles(pool, l1 - l0, [&](std::size_t t0, std::size_t t1) {
    for (std::size_t l = l0 + t0; l < l0 + t1; ++l) {
      const std::size_t n = l / g.ho, oh = l % g.ho;
      for (std::size_t ow = 0; ow < g.wo; ++ow) {
        int8_t* row = p + ((l - l0) * g.wo + ow) * g.k;
        std::size_t j0, j1;
        g.valid_kernel_cols(ow, &j0, &j1);
        for (std::size_t i = 0; i < g.kh; ++i) {
          int8_t* dst = row + i * g.kw * g.c;
          const long ih = static_cast<long>(oh * g.s + i) - static_cast<long>(g.p);
          if (ih < 0 || ih >= static_cast<long>(g.h) || j0 == j1) {
            std::memset(dst, 0, g.kw * g.c);
            continue;
          }
          std::memset(dst, 0, j0 * g.c);
          // Kernel columns j0..j1 read adjacent input pixels: one contiguous run of (j1 − j0)·C bytes.
          const std::size_t iw0 = ow * g.s + j0 - g.p;
          std::memcpy(dst + j0 * g.c, x + ((n * g.h + static_cast<std::size_t>(ih)) * g.w + iw0) * g.c,
                      (j1 - j0) * g.c);
          std::memset(dst + j1 * g.c, 0, (g.kw - j1) * g.c);
        }
      }
    }
  });
}

// col2im of the patch gradients of output lines [l0, l1) (dp: (l1 − l0)·Wo × K int32) added into dx
// (N·H·W × C int64). Work is split by input line (n, h): each task writes only its own input line, so tasks
// never share an output. Every dx element receives at most kh·kw terms in total, |sum| < kh·kw·2^31.
void col2im_add(const int32_t* dp, const Geometry& g, std::size_t l0, std::size_t l1, int64_t* dx,
                kernels::ThreadPool* pool) {
  const std::size_t n0 = l0 / g.ho, n1 = (l1 - 1) / g.ho + 1;  // images the block touches
  for_tiles(pool, (n1 - n0) * g.h, [&](std::size_t t0, std::size_t t1) {
    for (std::size_t t = t0; t < t1; ++t) {
      const std::size_t n = n0 + t / g.h, ih = t % g.h;
      int64_t* dline = dx + (n * g.h + ih) * g.w * g.c;
      for (std::size_t i = 0; i < g.kh; ++i) {
        // Output row oh with oh·s − p + i = ih.
        const long num = static_cast<long>(ih + g.p) - static_cast<long>(i);
        if (num < 0 || num % static_cast<long>(g.s) != 0) continue;
        const std::size_t oh = static_cast<std::size_t>(num) / g.s;
        if (oh >= g.ho) continue;
        const std::size_t l = n * g.ho + oh;
        if (l < l0 || l >= l1) continue;
        for (std::size_t ow = 0; ow < g.wo; ++ow) {
          std::size_t j0, j1;
          g.valid_kernel_cols(ow, &j0, &j1);
          if (j0 == j1) continue;
          const int32_t* src = dp + ((l - l0) * g.wo + ow) * g.k + (i * g.kw + j0) * g.c;
          int64_t* dst = dline + (ow * g.s + j0 - g.p) * g.c;
          // Kernel columns j0..j1 hit adjacent input pixels, so source and destination runs are contiguous.
          for (std::size_t e = 0; e < (j1 - j0) * g.c; ++e) dst[e] += src[e];
        }
      }
    }
  });
}

}  // namespace

Conv2d::Conv2d(const Conv2dSpec& spec, uint32_t layer_id, uint64_t seed)
    : spec_(spec), id_(layer_id), op_(gemm_config(spec)) {
  weight_.name = "conv" + std::to_string(layer_id) + ".weight";
  weight_.id = layer_id * 2;
  // PyTorch's Conv2d default, kaiming_uniform_(a=√5), is U(±1/√fan_in) with fan_in = kh·kw·C.
  init_uniform(weight_, spec.out_channels, spec.patch_size(), spec.patch_size(), seed);
}

std::string Conv2d::name() const {
  return "Conv2d(" + std::to_string(spec_.in_channels) + "->" + std::to_string(spec_.out_channels) + ", " +
         std::to_string(spec_.kernel_h) + "x" + std::to_string(spec_.kernel_w) + "/s" + std::to_string(spec_.stride) +
         "/p" + std::to_string(spec_.padding) + ", " + std::to_string(spec_.in_h) + "x" + std::to_string(spec_.in_w) +
         ", W" + std::to_string(spec_.weight_bits) + "A" + std::to_string(spec_.act_bits) + "G" +
         std::to_string(spec_.grad_bits) + ")";
}

std::size_t Conv2d::block_lines() const {
  const std::size_t wo = spec_.out_w();
  std::size_t rows = spec_.max_block_rows != 0 ? spec_.max_block_rows
                                               : std::max<std::size_t>(wo, (std::size_t{1} << 21) / spec_.patch_size());
  rows = std::min(rows, kernels::kMaxReduction);
  return std::max<std::size_t>(1, rows / wo);
}

VarPtr Conv2d::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  const std::size_t hw = spec_.in_h * spec_.in_w;
  if (xv.cols() != spec_.in_channels || xv.rows() == 0 || xv.rows() % hw != 0)
    throw std::invalid_argument(name() + ": input " + xv.describe() + " is not N·" + std::to_string(hw) + " × " +
                                std::to_string(spec_.in_channels) + " (NHWC rows × channels)");
  const Geometry g(spec_);
  const std::size_t batch = xv.rows() / hw, lines = batch * g.ho, rows = lines * g.wo, m = spec_.out_channels;
  const std::shared_ptr<const QuantizedWeights> wq = op_.weights(weight_);
  auto xq = std::make_shared<Tensor>(op_.quantize_input(xv));
  const int ex = xq->exponent();

  auto out = std::make_shared<Var>();
  out->value = Tensor::uninitialized(rows, m, DType::kI32);  // every row is a GEMM output
  int32_t* y = out->value.data<int32_t>();
  if (spec_.pointwise()) {
    kernels::gemm_forward(xq->data<int8_t>(), wq->q.data<int8_t>(), y, rows, m, g.k, ctx.pool);
  } else {
    const std::size_t bl = std::min(block_lines(), lines);
    std::vector<int8_t> patches(bl * g.wo * g.k);
    for (std::size_t l0 = 0; l0 < lines; l0 += bl) {
      const std::size_t l1 = std::min(lines, l0 + bl);
      im2col(xq->data<int8_t>(), g, l0, l1, patches.data(), ctx.pool);
      kernels::gemm_forward(patches.data(), wq->q.data<int8_t>(), y + l0 * g.wo * m, (l1 - l0) * g.wo, m, g.k,
                            ctx.pool);
    }
  }
  std::vector<int> e_out(m);
  for (std::size_t c = 0; c < m; ++c) e_out[c] = ex + wq->q.exponents()[c];
  out->value.set_exponents(ScaleAxis::kCol, std::move(e_out));

  if (!ctx.training()) return out;
  ctx.tape->record([this, ctx, x, out, xq, wq, lines, m] {
    if (!out->has_grad) return;
    const Geometry geo(spec_);
    const quant::ShiftQuantized gq = op_.quantize_grad(ctx, id_ * 4 + 1, out->grad);
    const bool need_dx = x->requires_grad && spec_.needs_input_grad;
    if (spec_.pointwise()) {
      if (need_dx) accumulate_grad(*x, qgemm_dgrad(gq, *wq, ctx.pool));
      weight_.grad = qgemm_wgrad(gq, *xq, ctx.pool);
      weight_.has_grad = true;
      return;
    }
    const std::size_t bl = std::min(block_lines(), lines);
    std::vector<int8_t> patches(bl * geo.wo * geo.k);
    std::vector<int32_t> dp(need_dx ? bl * geo.wo * geo.k : 0);
    std::vector<int64_t> dx(need_dx ? xq->size() : 0, 0);
    WgradAccumulator acc(m, geo.k);
    for (std::size_t l0 = 0; l0 < lines; l0 += bl) {
      const std::size_t l1 = std::min(lines, l0 + bl), r0 = l0 * geo.wo, r1 = l1 * geo.wo;
      im2col(xq->data<int8_t>(), geo, l0, l1, patches.data(), ctx.pool);
      acc.add(gq, r0, r1, patches.data(), ctx.pool);  // r1 − r0 ≤ kMaxReduction (block_lines)
      if (need_dx) {
        qgemm_dgrad_rows(gq, *wq, r0, r1, dp.data(), ctx.pool);
        col2im_add(dp.data(), geo, l0, l1, dx.data(), ctx.pool);
      }
    }
    weight_.grad = acc.finish(gq, xq->exponent());
    weight_.has_grad = true;
    if (need_dx) accumulate_grad(*x, narrow_tensor(dx.data(), xq->rows(), xq->cols(), qgemm_dgrad_exponent(gq, *wq)));
  });
  return out;
}

}  // namespace qtrain
