#include "qtrain/engine/layers/conv2d.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <memory>
#include <optional>
#include <stdexcept>

#include "qtrain/engine/core/narrow.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/kernels/parallel.h"
#include "qtrain/quant/error.h"

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
  return {s.weight_bits, s.act_bits, s.grad_bits, s.groups, s.signed_input, s.scale, s.act_groups};
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

// Short copies and zero-fills (a kernel row of a patch is kw·C bytes: 48 for 3×3 over 16 channels), as inline
// 16-byte moves rather than library calls.
inline void copy_bytes(int8_t* dst, const int8_t* src, std::size_t n) {
  std::size_t e = 0;
  for (; e + 16 <= n; e += 16) std::memcpy(dst + e, src + e, 16);
  for (; e + 4 <= n; e += 4) std::memcpy(dst + e, src + e, 4);
  for (; e < n; ++e) dst[e] = src[e];
}
inline void zero_bytes(int8_t* dst, std::size_t n) {
  static constexpr int8_t kZero[16] = {};
  std::size_t e = 0;
  for (; e + 16 <= n; e += 16) std::memcpy(dst + e, kZero, 16);
  for (; e < n; ++e) dst[e] = 0;
}

// Interior patches: `count` consecutive patch rows (K = kh·N bytes each, k apart), row r made of kernel rows
// i = 0..kh−1, each N bytes from src[i] + off + r·step, or zeros when src[i] is null (an input row outside the
// image). N is a compile-time constant for the common kernel rows (3×3 over 1, 16, 32 or 64 channels), so every
// kernel row is a few straight moves and each patch row is written front to back.
template <std::size_t N>
void interior_rows_n(int8_t* d, std::size_t k, const int8_t* const* src, std::size_t kh, std::size_t off,
                     std::size_t step, std::size_t count) {
  for (std::size_t r = 0; r < count; ++r, d += k, off += step)
    for (std::size_t i = 0; i < kh; ++i) {
      if (src[i] != nullptr) {
        std::memcpy(d + i * N, src[i] + off, N);
      } else {
        std::memset(d + i * N, 0, N);
      }
    }
}
void interior_rows(int8_t* d, std::size_t k, const int8_t* const* src, std::size_t kh, std::size_t n, std::size_t off,
                   std::size_t step, std::size_t count) {
  switch (n) {
    case 3:
      return interior_rows_n<3>(d, k, src, kh, off, step, count);
    case 16:
      return interior_rows_n<16>(d, k, src, kh, off, step, count);
    case 32:
      return interior_rows_n<32>(d, k, src, kh, off, step, count);
    case 48:
      return interior_rows_n<48>(d, k, src, kh, off, step, count);
    case 64:
      return interior_rows_n<64>(d, k, src, kh, off, step, count);
    case 96:
      return interior_rows_n<96>(d, k, src, kh, off, step, count);
    case 192:
      return interior_rows_n<192>(d, k, src, kh, off, step, count);
    default:
      for (std::size_t r = 0; r < count; ++r, d += k, off += step)
        for (std::size_t i = 0; i < kh; ++i) {
          if (src[i] != nullptr) {
            copy_bytes(d + i * n, src[i] + off, n);
          } else {
            zero_bytes(d + i * n, n);
          }
        }
  }
}

// Patches of output lines [l0, l1) (a line is one output row (n, oh): Wo patches) into p, row-major
// ((l1 − l0)·Wo × K). Zero outside the image. Kernel row i of every patch of the line reads input row oh·s − p + i,
// its kernel columns j0..j1 a contiguous run of (j1 − j0)·C bytes; interior patches (j0 = 0, j1 = kw) are whole runs.
void im2col(const int8_t* x, const Geometry& g, std::size_t l0, std::size_t l1, int8_t* p, kernels::ThreadPool* pool) {
  const std::size_t run = g.kw * g.c;  // bytes of one kernel row of a patch
  // Output columns [ow_in0, ow_in1) whose kernel rows lie wholly inside the image: 0 ≤ ow·s − p, ow·s − p + kw ≤ W.
  const std::size_t ow_in0 = (g.p + g.s - 1) / g.s;
  const std::size_t ow_in1 = g.w + g.p < g.kw ? 0 : std::min(g.wo, (g.w + g.p - g.kw) / g.s + 1);
  const double work = kernels::kNsPerByte * static_cast<double>((l1 - l0) * g.wo * g.k);  // patch bytes written
  for_tiles(pool, l1 - l0, work, [&](std::size_t t0, std::size_t t1) {
    std::vector<const int8_t*> src(g.kh);
    for (std::size_t l = l0 + t0; l < l0 + t1; ++l) {
      const std::size_t n = l / g.ho, oh = l % g.ho;
      int8_t* line = p + (l - l0) * g.wo * g.k;
      for (std::size_t i = 0; i < g.kh; ++i) {
        const long ih = static_cast<long>(oh * g.s + i) - static_cast<long>(g.p);
        src[i] =
            ih < 0 || ih >= static_cast<long>(g.h) ? nullptr : x + (n * g.h + static_cast<std::size_t>(ih)) * g.w * g.c;
      }
      for (std::size_t ow = 0; ow < g.wo; ++ow) {
        if (ow == ow_in0 && ow_in0 < ow_in1) {  // interior: whole kernel rows inside the image
          interior_rows(line + ow * g.k, g.k, src.data(), g.kh, run, (ow * g.s - g.p) * g.c, g.s * g.c,
                        ow_in1 - ow_in0);
          ow = ow_in1 - 1;
          continue;
        }
        std::size_t j0, j1;
        g.valid_kernel_cols(ow, &j0, &j1);
        for (std::size_t i = 0; i < g.kh; ++i) {
          int8_t* d = line + ow * g.k + i * run;
          if (src[i] == nullptr || j0 == j1) {
            zero_bytes(d, run);
            continue;
          }
          zero_bytes(d, j0 * g.c);
          copy_bytes(d + j0 * g.c, src[i] + (ow * g.s + j0 - g.p) * g.c, (j1 - j0) * g.c);
          zero_bytes(d + j1 * g.c, (g.kw - j1) * g.c);
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
  const double work = kernels::kNsPerByte * static_cast<double>((l1 - l0) * g.wo * g.k * 12);  // dP read, dx updated
  for_tiles(pool, (n1 - n0) * g.h, work, [&](std::size_t t0, std::size_t t1) {
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

// Whether col2im sums fit int32: every dP value is a reduction of Cout products of int8 values of magnitude
// ≤ 127 (the shifted ShiftQuant operand and the aligned weights), |dP| ≤ Cout·127², and a dx element receives at
// most kh·kw of them. When kh·kw·Cout·127² ≤ 2^31 − 1 (Cout ≤ 14793 for 3×3 kernels) the int32 sums are exact,
// and they are already the gradient: narrowing them (narrow.h) would shift by 0 and change nothing.
bool col2im_fits_i32(const Geometry& g, std::size_t cout) {
  constexpr uint64_t kMaxProduct = 127 * 127;
  return static_cast<uint64_t>(g.kh * g.kw) * cout * kMaxProduct <= static_cast<uint64_t>(INT32_MAX);
}

// The output row oh of kernel row i that reads input row ih (oh·s − p + i = ih), or false.
bool output_row_of(const Geometry& g, std::size_t ih, std::size_t i, std::size_t* oh) {
  const long num = static_cast<long>(ih + g.p) - static_cast<long>(i);
  if (num < 0 || num % static_cast<long>(g.s) != 0) return false;
  *oh = static_cast<std::size_t>(num) / g.s;
  return *oh < g.ho;
}

// For each input column iw, the offsets ow·K + j·C (within one output line of dP, from its kernel row's first
// column) of the (ow, j) pairs with ow·s − p + j = iw, 0 ≤ ow < Wo: the terms col2im gathers for that column.
struct Col2imTaps {
  std::vector<std::size_t> offset;  // W × kw
  std::vector<uint32_t> count;      // W
  explicit Col2imTaps(const Geometry& g) : offset(g.w * g.kw), count(g.w, 0) {
    for (std::size_t iw = 0; iw < g.w; ++iw)
      for (std::size_t j = 0; j < g.kw; ++j) {
        if (iw + g.p < j || (iw + g.p - j) % g.s != 0) continue;
        const std::size_t ow = (iw + g.p - j) / g.s;
        if (ow < g.wo) offset[iw * g.kw + count[iw]++] = ow * g.k + j * g.c;
      }
  }
};

// col2im into int32 (col2im_fits_i32) as a gather: each pixel of an input line sums its terms from the kernel
// rows i whose output line oh (oh·s − p + i = ih) is in [l0, l1), and is written once (kernels::gather_sum_i32) —
// no zero-fill and no read-modify-write of dX, except on lines whose terms span two blocks: the block holding the
// line's first contributing output line (or, with no contributor at all, the image's first output line) stores,
// later blocks add. Tasks own whole input lines, as above.
void col2im_gather_i32(const int32_t* dp, const Geometry& g, const Col2imTaps& taps, std::size_t l0, std::size_t l1,
                       int32_t* dx, kernels::ThreadPool* pool) {
  const std::size_t n0 = l0 / g.ho, n1 = (l1 - 1) / g.ho + 1;
  const double work = kernels::kNsPerByte * static_cast<double>((l1 - l0) * g.wo * g.k * sizeof(int32_t));  // dP read
  for_tiles(pool, (n1 - n0) * g.h, work, [&](std::size_t t0, std::size_t t1) {
    std::vector<const int32_t*> src(g.kh);
    for (std::size_t t = t0; t < t1; ++t) {
      const std::size_t n = n0 + t / g.h, ih = t % g.h;
      std::size_t first = n * g.ho;  // first contributing output line; the image's first line if none
      bool any = false;
      std::size_t nsrc = 0;
      for (std::size_t i = 0; i < g.kh; ++i) {
        std::size_t oh;
        if (!output_row_of(g, ih, i, &oh)) continue;
        const std::size_t l = n * g.ho + oh;
        if (!any || l < first) first = l;
        any = true;
        if (l >= l0 && l < l1) src[nsrc++] = dp + (l - l0) * g.wo * g.k + i * g.kw * g.c;
      }
      const bool store = first >= l0 && first < l1;
      if (nsrc == 0 && !store) continue;
      kernels::gather_sum_i32(src.data(), nsrc, taps.offset.data(), taps.count.data(), g.kw, g.w, g.c,
                              /*accumulate=*/!store, dx + (n * g.h + ih) * g.w * g.c);
    }
  });
}

// Stride-1 convolutions (square kernel, p ≤ k − 1) compute dX as a convolution of dY_shifted with the flipped,
// transposed aligned weights — conv_transpose2d at stride 1 is a correlation over dY zero-padded by p' = k − 1 − p:
//   dX[n,ih,iw,c] = Σ_{i',j',co} dYs[n, ih − p' + i', iw − p' + j', co] · W'[c, (i', j', co)]
//   W'[c, (i', j', co)] = W_aligned[co, (k − 1 − i', k − 1 − j', c)]
// These are exactly the terms of dP + col2im (each product dYs·W once; zero padding adds zero products), summed
// by one int8 GEMM per block of input lines, whose reduction k²·Cout obeys the same int32 bound
// (col2im_fits_i32): no int32 dP is ever materialized and dX is written once. That reduction may exceed the GEMM's
// general bound kernels::kMaxReduction (131071 terms of magnitude ≤ 128²; 9·14793 = 133137 for a 3×3 kernel): it is
// exact because both operands here are ≤ 127 in magnitude (ShiftQuant's shifted values and the aligned weights are
// symmetric), so k²·Cout·127² ≤ 2^31 − 1 is the bound that applies (tested: GemmTarget.SymmetricOperandsBeyondMaxReductionAreExact).
bool dgrad_as_conv(const Conv2dSpec& s) {
  return s.stride == 1 && s.kernel_h == s.kernel_w && s.padding + 1 <= s.kernel_h;
}

// W' (C × k²·Cout) of the aligned weights.
std::vector<int8_t> dgrad_conv_weights(const Conv2dSpec& s, const QuantizedWeights& w) {
  const std::size_t k = s.kernel_h, c = s.in_channels, co_n = s.out_channels, kk = k * k * co_n, kf = s.patch_size();
  std::vector<int8_t> wt(c * kk);
  for (std::size_t ch = 0; ch < c; ++ch)
    for (std::size_t i = 0; i < k; ++i)
      for (std::size_t j = 0; j < k; ++j)
        for (std::size_t co = 0; co < co_n; ++co)
          wt[ch * kk + (i * k + j) * co_n + co] = w.aligned[co * kf + ((k - 1 - i) * k + (k - 1 - j)) * c + ch];
  return wt;
}

// dX of `batch` images with W' = wt from dgrad_conv_weights, whose products are `wp`.
void dgrad_conv(const Conv2dSpec& s, const quant::ShiftQuantized& g, const std::vector<int8_t>& wt, WeightProducts& wp,
                std::size_t batch, int32_t* dx, kernels::ThreadPool* pool) {
  // The transposed convolution as a forward one: input dY (Ho × Wo × Cout), output dX (H × W × C).
  Conv2dSpec t;
  t.in_h = s.out_h();
  t.in_w = s.out_w();
  t.in_channels = s.out_channels;
  t.out_channels = s.in_channels;
  t.kernel_h = t.kernel_w = s.kernel_h;
  t.stride = 1;
  t.padding = s.kernel_h - 1 - s.padding;
  const Geometry gt(t);  // gt.ho = H, gt.wo = W, gt.k = k²·Cout
  const std::size_t c = s.in_channels, kk = gt.k;
  const std::size_t lines = batch * gt.ho;
  const std::size_t bl = std::min(lines, std::max<std::size_t>(1, (std::size_t{1} << 18) / (gt.wo * kk)));
  const auto patches = std::make_unique_for_overwrite<int8_t[]>(bl * gt.wo * kk);
  for (std::size_t l0 = 0; l0 < lines; l0 += bl) {
    const std::size_t l1 = std::min(lines, l0 + bl);
    im2col(g.shifted.data(), gt, l0, l1, patches.get(), pool);
    wp.multiply(patches.get(), wt.data(), c, kk, dx + l0 * gt.wo * c, (l1 - l0) * gt.wo, pool);
  }
}

}  // namespace

Conv2d::Conv2d(const Conv2dSpec& spec, uint32_t layer_id, uint64_t seed)
    : spec_(spec), id_(layer_id), op_(gemm_config(spec)) {
  weight_.name = layer_name() + ".weight";
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
                                               : std::max<std::size_t>(wo, (std::size_t{1} << 18) / spec_.patch_size());
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
  const QGemmConfig qc = op_.resolve(ctx, layer_name());
  const std::shared_ptr<const QuantizedWeights> wq = op_.weights(weight_, qc);
  const std::shared_ptr<const Tensor> xq = op_.quantize_input(*x, qc, ctx.pool);
  const int ex = xq->exponent();

  auto out = std::make_shared<Var>();
  out->value = Tensor::uninitialized(rows, m, DType::kI32);  // every row is a GEMM output
  int32_t* y = out->value.data<int32_t>();
  if (spec_.pointwise()) {
    wq->forward(xq->data<int8_t>(), y, rows, ctx.pool);
  } else {
    const std::size_t bl = std::min(block_lines(), lines);
    const auto patches = std::make_unique_for_overwrite<int8_t[]>(bl * g.wo * g.k);  // im2col writes every byte
    for (std::size_t l0 = 0; l0 < lines; l0 += bl) {
      const std::size_t l1 = std::min(lines, l0 + bl);
      im2col(xq->data<int8_t>(), g, l0, l1, patches.get(), ctx.pool);
      wq->forward(patches.get(), y + l0 * g.wo * m, (l1 - l0) * g.wo, ctx.pool);
    }
  }
  std::vector<int> e_out(m);
  for (std::size_t c = 0; c < m; ++c) e_out[c] = ex + wq->q.exponents()[c];
  out->value.set_exponents(ScaleAxis::kCol, std::move(e_out));

  if (!ctx.training()) return out;
  ctx.tape->record([this, ctx, qc, x, out, xq, wq, lines, m] {
    if (!out->has_grad) return;
    const Geometry geo(spec_);
    const quant::ShiftQuantized gq = op_.quantize_grad(ctx, id_, qc, out->grad);
    const bool need_dx = x->requires_grad && spec_.needs_input_grad;
    if (spec_.pointwise()) {
      if (need_dx) accumulate_grad(*x, qgemm_dgrad(gq, *wq, ctx.pool), ctx.pool);
      accumulate_grad(weight_, qgemm_wgrad(gq, *xq, ctx.pool), ctx.pool);
      return;
    }
    const std::size_t bl = std::min(block_lines(), lines);
    const auto patches = std::make_unique_for_overwrite<int8_t[]>(bl * geo.wo * geo.k);
    const bool dx_i32 = col2im_fits_i32(geo, m);
    const bool as_conv = need_dx && dx_i32 && dgrad_as_conv(spec_);
    // Otherwise dX comes from dP and col2im, run over sub-blocks of ~1 MiB of dP, so dP is still in cache when
    // col2im reads it.
    const bool via_col2im = need_dx && !as_conv;
    const std::size_t sub = std::max<std::size_t>(1, (std::size_t{1} << 20) / (geo.wo * geo.k * sizeof(int32_t)));
    const std::size_t dp_lines = via_col2im ? std::min(sub, bl) : 0;
    const auto dp = std::make_unique_for_overwrite<int32_t[]>(dp_lines * geo.wo * geo.k);
    Tensor dx32;  // the gradient itself when the int32 sums are exact; every line is written once
    std::optional<Col2imTaps> taps;
    std::vector<int64_t> dx64;
    if (need_dx && dx_i32) dx32 = Tensor::uninitialized(xq->rows(), xq->cols(), DType::kI32);
    if (via_col2im && dx_i32) taps.emplace(geo);
    if (via_col2im && !dx_i32) dx64.assign(xq->size(), 0);
    WgradAccumulator acc(m, geo.k);
    for (std::size_t l0 = 0; l0 < lines; l0 += bl) {
      const std::size_t l1 = std::min(lines, l0 + bl), r0 = l0 * geo.wo, r1 = l1 * geo.wo;
      im2col(xq->data<int8_t>(), geo, l0, l1, patches.get(), ctx.pool);
      acc.add(gq, r0, r1, patches.get(), ctx.pool);  // r1 − r0 ≤ kMaxReduction (block_lines)
      for (std::size_t s0 = l0; via_col2im && s0 < l1; s0 += dp_lines) {
        const std::size_t s1 = std::min(l1, s0 + dp_lines);
        qgemm_dgrad_rows(gq, *wq, s0 * geo.wo, s1 * geo.wo, dp.get(), ctx.pool);
        if (dx_i32) {
          col2im_gather_i32(dp.get(), geo, *taps, s0, s1, dx32.data<int32_t>(), ctx.pool);
        } else {
          col2im_add(dp.get(), geo, s0, s1, dx64.data(), ctx.pool);
        }
      }
    }
    accumulate_grad(weight_, acc.finish(gq, xq->exponent()), ctx.pool);
    if (!need_dx) return;
    if (as_conv) {
      if (flipped_of_ != wq) {
        flipped_ = dgrad_conv_weights(spec_, *wq);
        flipped_products_ = WeightProducts(kernels::PackedWeights::Use::kForward);
        flipped_of_ = wq;
      }
      dgrad_conv(spec_, gq, flipped_, flipped_products_, xq->rows() / (spec_.in_h * spec_.in_w), dx32.data<int32_t>(),
                 ctx.pool);
    }
    const int e_dx = qgemm_dgrad_exponent(gq, *wq);
    if (dx_i32) {
      dx32.set_exponent(e_dx);
      accumulate_grad(*x, std::move(dx32), ctx.pool);
    } else {
      accumulate_grad(*x, narrow_tensor(dx64.data(), xq->rows(), xq->cols(), e_dx), ctx.pool);
    }
  });
  return out;
}

}  // namespace qtrain
