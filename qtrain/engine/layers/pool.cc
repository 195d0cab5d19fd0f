#include "qtrain/engine/layers/pool.h"

#include <cstring>
#include <limits>
#include <stdexcept>
#include <vector>

#include "qtrain/engine/core/narrow.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/parallel.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {

std::size_t Pool2dSpec::out_h() const {
  return in_h + 2 * padding < kernel || stride == 0 ? 0 : (in_h + 2 * padding - kernel) / stride + 1;
}
std::size_t Pool2dSpec::out_w() const {
  return in_w + 2 * padding < kernel || stride == 0 ? 0 : (in_w + 2 * padding - kernel) / stride + 1;
}

InverseWindow::InverseWindow(std::size_t window) {
  if (window == 0 || window > (std::size_t{1} << 15))
    throw UsageError("pooling window of " + std::to_string(window) + " elements is out of range 1..32768");
  if ((window & (window - 1)) == 0) {
    shift = quant::bit_length(window) - 1;
    return;
  }
  // Control plane: 1/A as a 16-bit dyadic mantissa, computed once per layer.
  const quant::Dyadic d = quant::to_dyadic(1.0 / static_cast<double>(window), 16);
  mul = d.mantissa;
  shift = d.shift;
}

namespace {

void validate_pool(const Pool2dSpec& s, const char* what) {
  if (s.in_h == 0 || s.in_w == 0 || s.channels == 0 || s.kernel == 0 || s.stride == 0)
    throw UsageError(std::string(what) + " needs a non-empty input geometry H×W×C, kernel ≥ 1 and stride ≥ 1");
  if (s.kernel > 255) throw UsageError(std::string(what) + " kernel " + std::to_string(s.kernel) + " exceeds 255");
  if (2 * s.padding > s.kernel)
    throw UsageError(std::string(what) + " padding " + std::to_string(s.padding) + " exceeds half the kernel " +
                     std::to_string(s.kernel));
  if (s.out_h() == 0 || s.out_w() == 0)
    throw UsageError(std::string(what) + " kernel " + std::to_string(s.kernel) + " is larger than the input " +
                     std::to_string(s.in_h) + "x" + std::to_string(s.in_w));
}

// Checks an NHWC input and returns N.
std::size_t batch_of(const Tensor& x, std::size_t h, std::size_t w, std::size_t c, const std::string& who) {
  if (x.dtype() != DType::kI32 || x.axis() == ScaleAxis::kRow || x.cols() != c || x.rows() == 0 ||
      x.rows() % (h * w) != 0)
    throw std::invalid_argument(who + ": input " + x.describe() + " is not an int32 N·" + std::to_string(h * w) +
                                " × " + std::to_string(c) + " (NHWC) tensor with per-tensor or per-channel exponents");
  return x.rows() / (h * w);
}

// Exact int64 results whose exponents are x's plus `offset` → int32, per column when x is per column.
Tensor narrow_like(const std::vector<int64_t>& v, std::size_t rows, std::size_t cols, const Tensor& x, int offset) {
  if (x.axis() == ScaleAxis::kCol) {
    std::vector<int> e = x.exponents();
    for (int& ei : e) ei += offset;
    return narrow_per_col(v.data(), rows, cols, e);
  }
  return narrow_tensor(v.data(), rows, cols, x.exponent() + offset);
}

// Window row range [i0, i1) inside the image for output row o (input row = o·s − p + i).
void window_range(std::size_t o, std::size_t s, std::size_t p, std::size_t k, std::size_t size, std::size_t* i0,
                  std::size_t* i1) {
  const long start = static_cast<long>(o * s) - static_cast<long>(p);
  *i0 = start < 0 ? std::min(static_cast<std::size_t>(-start), k) : 0;
  const long end = std::min<long>(static_cast<long>(k), static_cast<long>(size) - start);
  *i1 = end < static_cast<long>(*i0) ? *i0 : static_cast<std::size_t>(end);
}

}  // namespace

// ---- MaxPool2d ------------------------------------------------------------------------------------------------

MaxPool2d::MaxPool2d(const Pool2dSpec& spec) : spec_(spec) { validate_pool(spec, "MaxPool2d"); }

std::string MaxPool2d::name() const {
  return "MaxPool2d(" + std::to_string(spec_.kernel) + "/s" + std::to_string(spec_.stride) + "/p" +
         std::to_string(spec_.padding) + ")";
}

VarPtr MaxPool2d::forward(const StepContext& ctx, const VarPtr& x) {
  const Pool2dSpec s = spec_;
  const Tensor& xv = x->value;
  const std::size_t batch = batch_of(xv, s.in_h, s.in_w, s.channels, name());
  const std::size_t ho = s.out_h(), wo = s.out_w(), c = s.channels, k = s.kernel;
  auto out = std::make_shared<Var>();
  out->value = Tensor::uninitialized(batch * ho * wo, c, DType::kI32);  // every window is non-empty (validate_pool)
  out->value.set_exponents(xv.axis(), xv.exponents());
  // Window position (i·k + j) of each output's maximum: what backward routes dy to.
  auto arg = std::make_shared<std::vector<uint16_t>>(out->value.size());
  const int32_t* xd = xv.data<int32_t>();
  int32_t* y = out->value.data<int32_t>();
  const double work = kernels::kNsPerByte * static_cast<double>(xv.size() * sizeof(int32_t));  // the input read
  for_tiles(ctx.pool, batch * ho, work, [&](std::size_t t0, std::size_t t1) {
    std::vector<const int32_t*> src(k * k);
    std::vector<uint16_t> pos(k * k);
    for (std::size_t t = t0; t < t1; ++t) {
      const std::size_t n = t / ho, oh = t % ho;
      std::size_t i0, i1;
      window_range(oh, s.stride, s.padding, k, s.in_h, &i0, &i1);
      for (std::size_t ow = 0; ow < wo; ++ow) {
        std::size_t j0, j1;
        window_range(ow, s.stride, s.padding, k, s.in_w, &j0, &j1);
        // The window's positions inside the image, in order (i, then j): the first maximum wins.
        std::size_t count = 0;
        for (std::size_t i = i0; i < i1; ++i)
          for (std::size_t j = j0; j < j1; ++j) {
            const std::size_t ih = oh * s.stride + i - s.padding, iw = ow * s.stride + j - s.padding;
            src[count] = xd + ((n * s.in_h + ih) * s.in_w + iw) * c;
            pos[count++] = static_cast<uint16_t>(i * k + j);
          }
        kernels::max_argmax_i32(src.data(), pos.data(), count, c, y + (t * wo + ow) * c,
                                arg->data() + (t * wo + ow) * c);
      }
    }
  });
  if (!ctx.training() || !x->requires_grad) return out;
  ctx.tape->record([s, x, out, arg, batch, ho, wo, c, k, pool = ctx.pool] {
    if (!out->has_grad) return;
    const Tensor& dy = out->grad;
    const int32_t* d = dy.data<int32_t>();
    const std::size_t h = s.in_h, w = s.in_w;
    if (k == s.stride && s.padding == 0) {
      // The windows tile the input: every input pixel inside the Ho·k × Wo·k area belongs to exactly one window
      // and receives dy or 0 (one term: the int32 value is the exact sum); the pixels beyond it receive nothing.
      Tensor dx = Tensor::uninitialized(x->value.rows(), c, DType::kI32, dy.exponent());
      int32_t* g = dx.data<int32_t>();
      const double dx_work = kernels::kNsPerByte * static_cast<double>(dx.size() * sizeof(int32_t));  // dx written
      for_tiles(pool, batch * ho, dx_work, [&](std::size_t t0, std::size_t t1) {
        std::vector<int32_t*> dst(k * k);
        for (std::size_t t = t0; t < t1; ++t) {
          const std::size_t n = t / ho, oh = t % ho;
          for (std::size_t ow = 0; ow < wo; ++ow) {
            for (std::size_t i = 0; i < k; ++i)
              for (std::size_t j = 0; j < k; ++j)
                dst[i * k + j] = g + ((n * h + oh * k + i) * w + ow * k + j) * c;
            const std::size_t o = (t * wo + ow) * c;
            kernels::unpool_max_i32(d + o, arg->data() + o, c, dst.data(), k * k);
          }
          // Columns right of the last window, on this window row's input rows.
          for (std::size_t i = 0; i < k && wo * k < w; ++i)
            std::memset(g + ((n * h + oh * k + i) * w + wo * k) * c, 0, (w - wo * k) * c * sizeof(int32_t));
          // Rows below the last window row.
          if (oh + 1 == ho && ho * k < h)
            std::memset(g + (n * h + ho * k) * w * c, 0, (h - ho * k) * w * c * sizeof(int32_t));
        }
      });
      accumulate_grad(*x, std::move(dx));
      return;
    }
    // dx[argmax] += dy, with ≤ ⌈k/s⌉² terms per element; pos → offset of (i, j) from the window origin.
    std::vector<long> offset(k * k);
    for (std::size_t p = 0; p < k * k; ++p)
      offset[p] = (static_cast<long>(p / k) * static_cast<long>(w) + static_cast<long>(p % k)) * static_cast<long>(c);
    auto route = [&](auto* dx) {
      for_tiles(pool, batch, [&](std::size_t n0, std::size_t n1) {  // an image's windows stay inside the image
        for (std::size_t o = n0 * ho * wo; o < n1 * ho * wo; ++o) {
          const std::size_t n = o / (ho * wo), oh = o / wo % ho, ow = o % wo;
          // Index of the window origin (oh·s − p, ow·s − p), which may lie in the padding.
          const long origin = ((static_cast<long>(n * h + oh * s.stride) - static_cast<long>(s.padding)) *
                                   static_cast<long>(w) +
                               static_cast<long>(ow * s.stride) - static_cast<long>(s.padding)) *
                              static_cast<long>(c);
          const uint16_t* a = arg->data() + o * c;
          const int32_t* g = d + o * c;
          for (std::size_t ch = 0; ch < c; ++ch) dx[origin + offset[a[ch]] + static_cast<long>(ch)] += g[ch];
        }
      });
    };
    if (k <= s.stride) {
      // Windows do not overlap: each element receives at most one term, so the int32 result is the exact sum
      // (what narrowing the int64 sums would give, with shift 0).
      Tensor dx(x->value.rows(), c, DType::kI32, dy.exponent());
      route(dx.data<int32_t>());
      accumulate_grad(*x, std::move(dx));
      return;
    }
    std::vector<int64_t> dx(x->value.size(), 0);  // int64: overlapping windows may sum several int32 terms
    route(dx.data());
    accumulate_grad(*x, narrow_tensor(dx.data(), x->value.rows(), c, dy.exponent()));
  });
  return out;
}

// ---- AvgPool2d ------------------------------------------------------------------------------------------------

AvgPool2d::AvgPool2d(const Pool2dSpec& spec) : spec_(spec), inv_(spec.kernel * spec.kernel) {
  validate_pool(spec, "AvgPool2d");
  if (spec.padding != 0) throw UsageError("AvgPool2d supports padding 0 only");
}

std::string AvgPool2d::name() const {
  return "AvgPool2d(" + std::to_string(spec_.kernel) + "/s" + std::to_string(spec_.stride) + ")";
}

VarPtr AvgPool2d::forward(const StepContext& ctx, const VarPtr& x) {
  const Pool2dSpec s = spec_;
  const InverseWindow inv = inv_;
  const Tensor& xv = x->value;
  const std::size_t batch = batch_of(xv, s.in_h, s.in_w, s.channels, name());
  const std::size_t ho = s.out_h(), wo = s.out_w(), c = s.channels, k = s.kernel;
  // Σ_window x·m: |Σ| ≤ k²·2^31 ≤ 2^46, ·m < 2^62.
  std::vector<int64_t> sum(batch * ho * wo * c, 0);
  const int32_t* xd = xv.data<int32_t>();
  for_tiles(ctx.pool, batch * ho, [&](std::size_t t0, std::size_t t1) {
    for (std::size_t t = t0; t < t1; ++t) {
      const std::size_t n = t / ho, oh = t % ho;
      for (std::size_t ow = 0; ow < wo; ++ow) {
        int64_t* acc = sum.data() + (t * wo + ow) * c;
        for (std::size_t i = 0; i < k; ++i)
          for (std::size_t j = 0; j < k; ++j) {
            const int32_t* xr = xd + ((n * s.in_h + oh * s.stride + i) * s.in_w + ow * s.stride + j) * c;
            for (std::size_t ch = 0; ch < c; ++ch) acc[ch] += xr[ch];
          }
        for (std::size_t ch = 0; ch < c; ++ch) acc[ch] *= inv.mul;
      }
    }
  });
  auto out = std::make_shared<Var>();
  out->value = narrow_like(sum, batch * ho * wo, c, xv, -inv.shift);
  if (!ctx.training() || !x->requires_grad) return out;
  ctx.tape->record([s, inv, x, out, batch, ho, wo, c, k, pool = ctx.pool] {
    if (!out->has_grad) return;
    const Tensor& dy = out->grad;
    const int32_t* d = dy.data<int32_t>();
    // dx = (Σ over the windows covering x of dy)·m: ≤ ⌈k/s⌉² ≤ k² terms, ·m < 2^62.
    std::vector<int64_t> dx(x->value.size(), 0);
    for_tiles(pool, batch, [&](std::size_t n0, std::size_t n1) {
      for (std::size_t o = n0 * ho * wo; o < n1 * ho * wo; ++o) {
        const std::size_t n = o / (ho * wo), oh = o / wo % ho, ow = o % wo;
        for (std::size_t i = 0; i < k; ++i)
          for (std::size_t j = 0; j < k; ++j) {
            int64_t* dr = dx.data() + ((n * s.in_h + oh * s.stride + i) * s.in_w + ow * s.stride + j) * c;
            for (std::size_t ch = 0; ch < c; ++ch) dr[ch] += d[o * c + ch];
          }
      }
      const std::size_t per_image = s.in_h * s.in_w * c;
      for (std::size_t e = n0 * per_image; e < n1 * per_image; ++e) dx[e] *= inv.mul;
    });
    accumulate_grad(*x, narrow_tensor(dx.data(), x->value.rows(), c, dy.exponent() - inv.shift));
  });
  return out;
}

// ---- GlobalAvgPool --------------------------------------------------------------------------------------------

GlobalAvgPool::GlobalAvgPool(std::size_t in_h, std::size_t in_w, std::size_t channels)
    : h_(in_h), w_(in_w), c_(channels), inv_(in_h * in_w) {
  if (channels == 0) throw UsageError("GlobalAvgPool needs channels > 0");
}

std::string GlobalAvgPool::name() const {
  return "GlobalAvgPool(" + std::to_string(h_) + "x" + std::to_string(w_) + ")";
}

VarPtr GlobalAvgPool::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  const std::size_t batch = batch_of(xv, h_, w_, c_, name()), hw = h_ * w_, c = c_;
  const InverseWindow inv = inv_;
  // Σ_{h,w} x·m per (n, c): |Σ| ≤ H·W·2^31 ≤ 2^46, ·m < 2^62.
  std::vector<int64_t> sum(batch * c, 0);
  const int32_t* xd = xv.data<int32_t>();
  for_tiles(ctx.pool, batch, [&](std::size_t n0, std::size_t n1) {
    for (std::size_t n = n0; n < n1; ++n) {
      int64_t* acc = sum.data() + n * c;
      for (std::size_t p = 0; p < hw; ++p)
        for (std::size_t ch = 0; ch < c; ++ch) acc[ch] += xd[(n * hw + p) * c + ch];
      for (std::size_t ch = 0; ch < c; ++ch) acc[ch] *= inv.mul;
    }
  });
  auto out = std::make_shared<Var>();
  out->value = narrow_like(sum, batch, c, xv, -inv.shift);
  if (!ctx.training() || !x->requires_grad) return out;
  ctx.tape->record([inv, x, out, batch, hw, c] {
    if (!out->has_grad) return;
    const Tensor& dy = out->grad;
    // dx[n,h,w,c] = dy[n,c]·m, exponent e_dy − t: |dy·m| < 2^47, narrowed once, then repeated over H·W.
    std::vector<int64_t> p(batch * c);
    for (std::size_t i = 0; i < p.size(); ++i) p[i] = int64_t{dy.data<int32_t>()[i]} * inv.mul;
    const Tensor g = narrow_tensor(p.data(), batch, c, dy.exponent() - inv.shift);
    Tensor dx = Tensor::uninitialized(batch * hw, c, DType::kI32, g.exponent());  // every row written below
    for (std::size_t n = 0; n < batch; ++n)
      for (std::size_t q = 0; q < hw; ++q)
        std::memcpy(dx.data<int32_t>() + (n * hw + q) * c, g.data<int32_t>() + n * c, c * sizeof(int32_t));
    accumulate_grad(*x, std::move(dx));
  });
  return out;
}

// ---- Flatten --------------------------------------------------------------------------------------------------

Flatten::Flatten(std::size_t in_h, std::size_t in_w, std::size_t channels) : h_(in_h), w_(in_w), c_(channels) {
  if (in_h == 0 || in_w == 0 || channels == 0) throw UsageError("Flatten needs a non-empty input geometry H×W×C");
}

std::string Flatten::name() const {
  return "Flatten(" + std::to_string(h_) + "x" + std::to_string(w_) + "x" + std::to_string(c_) + ")";
}

VarPtr Flatten::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  const std::size_t hw = h_ * w_;
  if (xv.cols() != c_ || xv.rows() == 0 || xv.rows() % hw != 0 || xv.axis() == ScaleAxis::kRow)
    throw std::invalid_argument(name() + ": input " + xv.describe() + " is not N·" + std::to_string(hw) + " × " +
                                std::to_string(c_) + " (NHWC) with per-tensor or per-channel exponents");
  const std::size_t batch = xv.rows() / hw, cols = hw * c_;
  auto out = std::make_shared<Var>();
  out->value = Tensor::uninitialized(batch, cols, xv.dtype());
  if (xv.size() != 0)
    std::memcpy(xv.dtype() == DType::kI8 ? static_cast<void*>(out->value.data<int8_t>())
                                         : static_cast<void*>(out->value.data<int32_t>()),
                xv.dtype() == DType::kI8 ? static_cast<const void*>(xv.data<int8_t>())
                                         : static_cast<const void*>(xv.data<int32_t>()),
                xv.size() * dtype_size(xv.dtype()));
  if (xv.axis() == ScaleAxis::kCol) {
    std::vector<int> e(cols);
    for (std::size_t j = 0; j < cols; ++j) e[j] = xv.exponents()[j % c_];
    out->value.set_exponents(ScaleAxis::kCol, std::move(e));
  } else {
    out->value.set_exponent(xv.exponent());
  }
  if (!ctx.training() || !x->requires_grad) return out;
  ctx.tape->record([x, out, batch, hw, c = c_] {
    if (!out->has_grad) return;
    Tensor dx = take_grad(*out);  // the same bytes, seen as N·H·W × C
    dx.reshape(batch * hw, c);
    accumulate_grad(*x, std::move(dx));
  });
  return out;
}

}  // namespace qtrain
