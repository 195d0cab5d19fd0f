// L1BatchNorm and L2BatchNorm (norm.h): the forward, its statistics and output stage, and the backward, over the
// batch-norm kernels (qtrain/kernels/norm.h) split in runs of rows over the step's pool.
#include <algorithm>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "qtrain/engine/layers/norm.h"
#include "qtrain/engine/layers/norm_stage.h"
#include "qtrain/kernels/norm.h"
#include "qtrain/kernels/parallel.h"
#include "qtrain/quant/error.h"

namespace qtrain {
namespace {

using namespace norm_stage;  // NOLINT(build/namespaces): the normalizations' shared pieces

// Every element pass runs over runs of whole rows on the step's pool (kernels::PassSplit): the per-column reductions
// give per-tile partials that are merged after the join (integer sums add, min/max combine: exact, so any split gives
// the single pass's integers), and the element-wise passes write their own rows.

// The batch norm's kernels (qtrain/kernels/norm.h) over a split; a row range is an offset pointer and its row count.
void split_norm_stats(const kernels::PassSplit& split, const int32_t* x, std::size_t rows, std::size_t cols,
                      int64_t* sum, int32_t* mn, int32_t* mx) {
  kernels::TilePartials<int64_t> ps(sum, split, cols);
  kernels::TilePartials<int32_t> pmn(mn, split, cols), pmx(mx, split, cols);
  const double bytes = static_cast<double>(rows * cols * sizeof(int32_t));  // x read
  split.run(kernels::kNsPerByte * bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    kernels::norm_stats(x + r0 * cols, r1 - r0, cols, ps.at(i), pmn.at(i), pmx.at(i));
  });
  ps.merge(add_to);
  pmn.merge(min_to);
  pmx.merge(max_to);
}

void split_abs_dev(const kernels::PassSplit& split, const int32_t* x, std::size_t rows, std::size_t cols,
                   kernels::NormColumns col, int64_t* sum_abs, int64_t* sum_sign) {
  kernels::TilePartials<int64_t> pa(sum_abs, split, cols), ps(sum_sign, split, cols);
  const double bytes = static_cast<double>(rows * cols * sizeof(int32_t));  // x read
  split.run(kernels::kNsPerByte * bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    kernels::norm_abs_dev(x + r0 * cols, r1 - r0, cols, col, pa.at(i), ps.at(i));
  });
  pa.merge(add_to);
  ps.merge(add_to);
}

void split_sq_dev(const kernels::PassSplit& split, const int32_t* x, std::size_t rows, std::size_t cols,
                  kernels::NormColumns col, int64_t* sum_sq) {
  kernels::TilePartials<int64_t> ps(sum_sq, split, cols);
  const double bytes = static_cast<double>(rows * cols * sizeof(int32_t));  // x read
  split.run(kernels::kNsPerByte * bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    kernels::norm_sq_dev(x + r0 * cols, r1 - r0, cols, col, ps.at(i));
  });
  ps.merge(add_to);
}

uint64_t split_apply(const kernels::PassSplit& split, const int32_t* x, std::size_t rows, std::size_t cols,
                     kernels::NormColumns col, kernels::NormAffine aff, int32_t* y, int16_t* d_out, bool relu) {
  std::vector<uint64_t> ymax(std::max<std::size_t>(split.tiles(), 1), 0);
  // x read, y written, d written when stored.
  const double bytes = static_cast<double>(rows * cols * (2 * sizeof(int32_t) + (d_out ? sizeof(int16_t) : 0)));
  split.run(kernels::kNsPerByte * bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    ymax[i] = kernels::norm_apply(x + r0 * cols, r1 - r0, cols, col, aff, y + r0 * cols,
                                  d_out ? d_out + r0 * cols : nullptr, relu);
  });
  return *std::max_element(ymax.begin(), ymax.end());
}

void split_grad_stats(const kernels::PassSplit& split, const int32_t* dy, const int16_t* d, std::size_t rows,
                      std::size_t cols, int64_t* sum_dy, int32_t* mn, int32_t* mx, kernels::WideSum* sum_dy_d,
                      const kernels::NormAffine* relu) {
  kernels::TilePartials<int64_t> ps(sum_dy, split, cols);
  kernels::TilePartials<int32_t> pmn(mn, split, cols), pmx(mx, split, cols);
  kernels::TilePartials<kernels::WideSum> pw(sum_dy_d, split, cols);
  const double bytes = static_cast<double>(rows * cols * (sizeof(int32_t) + sizeof(int16_t)));  // dy, d read
  split.run(kernels::kNsPerByte * bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    kernels::norm_grad_stats(dy + r0 * cols, d + r0 * cols, r1 - r0, cols, ps.at(i), pmn.at(i), pmx.at(i), pw.at(i),
                             relu);
  });
  ps.merge(add_to);
  pmn.merge(min_to);
  pmx.merge(max_to);
  if (split.tiles() > 1) {
    pw.merge(add_wide);
    for (std::size_t c = 0; c < cols; ++c) canonical(sum_dy_d[c]);  // the kernel's (unique) form of the value
  }
}

void split_grad_apply(const kernels::PassSplit& split, bool l1, const int32_t* dy, const int16_t* d, std::size_t rows,
                      std::size_t cols, kernels::NormColumns col, kernels::NormAffine aff, int32_t* dx,
                      const kernels::NormAffine* relu) {
  // dy, d read, dx written.
  const double bytes = static_cast<double>(rows * cols * (2 * sizeof(int32_t) + sizeof(int16_t)));
  split.run(kernels::kNsPerByte * bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    static_cast<void>(i);
    const std::size_t o = r0 * cols;
    if (l1) {
      kernels::norm_grad_apply_l1(dy + o, d + o, r1 - r0, cols, col, aff, dx + o, relu);
    } else {
      kernels::norm_grad_apply_l2(dy + o, d + o, r1 - r0, cols, col, aff, dx + o, relu);
    }
  });
}

// What a batch norm's backward needs from its forward.
struct BatchSaved {
  std::unique_ptr<int16_t[]> d;  // working values, rows×C (written in full by the forward: not zero-filled)
  std::vector<Fx> rho;           // x̂ per unit of d
  std::vector<Fx> gamma;         // the step's 15-bit γ
  std::vector<int> unit;         // exponent of one unit of d: e_c + k_c
  std::vector<uint64_t> dmax;
  std::vector<int64_t> sum_sign;  // L1: Σ sign(d) per channel (the backward's mean(s))
  std::vector<int32_t> a, t, c;   // the forward's output stage, which a fused ReLU's mask recomputes
};

}  // namespace

// ============================================================================================================
// Batch norm (L1 and L2)
// ============================================================================================================

BatchNorm::BatchNorm(NormKind kind, std::size_t channels, uint32_t layer_id, const NormOptions& opt)
    : kind_(kind), channels_(channels), id_(layer_id), opt_(opt) {
  if (channels == 0) throw UsageError("batch norm needs at least one channel");
  check_options(opt);
  init_affine(gamma_, beta_, channels, layer_name(), layer_id);
  running_mean_ = Tensor(1, channels, DType::kI32);
  running_mean_.set_exponents(ScaleAxis::kCol, std::vector<int>(channels, 0));
  running_scale_ = Tensor(1, channels, DType::kI32);
  for (std::size_t c = 0; c < channels; ++c) running_scale_.data<int32_t>()[c] = 1 << 30;
  running_scale_.set_exponents(ScaleAxis::kCol, std::vector<int>(channels, -30));
}

std::string BatchNorm::layer_name() const { return (kind_ == NormKind::kL1 ? "l1bn" : "l2bn") + std::to_string(id_); }

std::string BatchNorm::name() const {
  return std::string(kind_ == NormKind::kL1 ? "L1BatchNorm(" : "L2BatchNorm(") + fmt_count(channels_) + ")" +
         (opt_.relu ? "+ReLU" : "");
}

// Forward, per channel c over the m rows (float formula in norm.h):
//   pass 1  Σx, min x, max x                                  (kernels::norm_stats)
//           k, μ' = R(Σx/m, k)  (eval: μ' = R(running mean, k))  → d = R(x, k) − μ', |d| ≤ 2^15 − 1
//   pass 2  L1: Σ|d| and Σsign(d)   L2: Σd²                   (kernels::norm_abs_dev / norm_sq_dev; training only)
//           ρ = 1/(c·Σ|d|/m + ε/2^(e_c+k))   L2: ρ = 1/sqrt(Σd²/m + ε/2^(2(e_c+k)))     x̂ = d·ρ
//           (eval: σ₁ or the variance from the running statistics, same formulas)
//   pass 3  y = γ·x̂ + β = d·(γρ) + β  →  y_q = R((d·a) / 2^t) + β_q at one output exponent (kernels::norm_apply),
//           storing d as int16 for the backward.
// Backward, per channel (g = γ·dy, u = R(dy, k_dy) the 16-bit working gradient):
//   pass 1  Σdy, max|dy|, Σdy·d                                        (kernels::norm_grad_stats)
//           mean(g·x̂) = γ·ρ·Σdy·d/m
//   L1      dx = γρ/2^(e_c+k)·[dy − mean(dy) − c·mean(dy·x̂)·(s − mean(s))]
//              = u·A + s·K + B   with A = γρ·2^(e_dy+k_dy−e_c−k), K = −γρ·c·mean(dy·x̂)/2^(e_c+k),
//                                     B = −γρ·(mean(dy) − c·mean(dy·x̂)·mean(s))/2^(e_c+k)
//   L2      dx = γρ/2^(e_c+k)·[dy − mean(dy) − x̂·mean(dy·x̂)] = u·A + d·K + B, K = −γρ²·mean(dy·x̂)/2^(e_c+k)
//   pass 2  dx_q = R((u·a + w·b) / 2^t) + b_q   (kernels::norm_grad_apply_l1 / _l2)
//           dγ = Σ dy·x̂ = ρ·Σdy·d,  dβ = Σ dy (exact sums)
VarPtr BatchNorm::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xv = x->value;
  check_input(name(), xv, channels_, "channels");
  if (xv.rows() >= (std::size_t{1} << 30))
    throw UsageError(name() + ": " + fmt_count(xv.rows()) + " rows per channel exceed 2^30 (the int64 sum bound)");
  if (xv.axis() == ScaleAxis::kRow) throw std::logic_error(name() + ": input with per-row exponents");

  const std::size_t m = xv.rows(), nc = channels_;
  const bool training = ctx.training();
  const bool l1 = kind_ == NormKind::kL1;
  const int32_t* xp = xv.data<int32_t>();
  const Fx eps = fx_const(opt_.eps);
  const Fx m_fx{static_cast<int64_t>(m), 0};

  // Pass 1 and the working precision.
  std::vector<int64_t> sum(nc);
  std::vector<int32_t> lo(nc), hi(nc), shift(nc), center(nc);
  const kernels::PassSplit split(ctx.pool, m);
  split_norm_stats(split, xp, m, nc, sum.data(), lo.data(), hi.data());
  auto saved = std::make_shared<BatchSaved>();
  saved->rho.resize(nc);
  saved->gamma.resize(nc);
  saved->unit.resize(nc);
  saved->dmax.resize(nc);
  for (std::size_t c = 0; c < nc; ++c) {
    const int e = xv.exponent_at(0, c);
    int k = 0;
    int64_t mu = 0;
    if (training) {
      k = working_shift(static_cast<uint64_t>(int64_t{hi[c]} - lo[c]));
      mu = mean_half_up(sum[c], static_cast<int64_t>(m), k);
    } else {
      constexpr int64_t kFar = int64_t{1} << 61;  // beyond this the running mean is "infinitely" far anyway
      const int64_t r = std::clamp(fx_to_int(fx_of(running_mean_, c), e), -kFar, kFar);
      k = working_shift(static_cast<uint64_t>(std::max<int64_t>({0, hi[c] - r, r - lo[c]})));
      if (k == 0 && (r > std::numeric_limits<int32_t>::max() || r < std::numeric_limits<int32_t>::min())) k = 1;
      mu = shift_round_half_up(r, k);
    }
    shift[c] = k;
    center[c] = static_cast<int32_t>(mu);
    saved->unit[c] = e + k;
    saved->dmax[c] =
        static_cast<uint64_t>(std::max(shift_round_half_up(hi[c], k) - mu, mu - shift_round_half_up(lo[c], k)));
  }
  const kernels::NormColumns col{shift.data(), center.data()};

  // Pass 2 (training) or the running statistics (eval) → ρ.
  if (training) {
    std::vector<int64_t> dev(nc);
    if (l1) {
      saved->sum_sign.resize(nc);
      split_abs_dev(split, xp, m, nc, col, dev.data(), saved->sum_sign.data());
    } else {
      split_sq_dev(split, xp, m, nc, col, dev.data());
    }
    const Fx alpha = fx_const(opt_.momentum), keep = fx_one_minus(alpha);
    std::vector<int> e_mean(nc), e_scale(nc);
    for (std::size_t c = 0; c < nc; ++c) {
      const int unit = saved->unit[c];
      Fx batch_scale;
      if (l1) {
        const Fx sigma = fx_div({dev[c], 0}, m_fx);  // σ₁ in units of d
        saved->rho[c] = fx_div({1, 0}, fx_add(fx_mul(kC, sigma), {eps.m, eps.e - unit}));
        batch_scale = {sigma.m, sigma.e + unit};
      } else {
        const Fx var = fx_div({dev[c], 0}, m_fx);  // in units of d²
        saved->rho[c] = fx_div({1, 0}, fx_sqrt(fx_add(var, {eps.m, eps.e - 2 * unit})));
        const Fx unbiased = fx_div({dev[c], 0}, {static_cast<int64_t>(m > 1 ? m - 1 : 1), 0});
        batch_scale = {unbiased.m, unbiased.e + 2 * unit};
      }
      // r ← (1 − momentum)·r + momentum·batch, in real units.
      const Fx batch_mean = fx_div({sum[c], xv.exponent_at(0, c)}, m_fx);
      const Fx rm = fx_narrow(fx_add(fx_mul(keep, fx_of(running_mean_, c)), fx_mul(alpha, batch_mean)), 31);
      const Fx rs = fx_narrow(fx_add(fx_mul(keep, fx_of(running_scale_, c)), fx_mul(alpha, batch_scale)), 31);
      running_mean_.data<int32_t>()[c] = static_cast<int32_t>(rm.m);
      running_scale_.data<int32_t>()[c] = static_cast<int32_t>(rs.m);
      e_mean[c] = rm.e;
      e_scale[c] = rs.e;
    }
    running_mean_.set_exponents(ScaleAxis::kCol, std::move(e_mean));
    running_scale_.set_exponents(ScaleAxis::kCol, std::move(e_scale));
  } else {
    for (std::size_t c = 0; c < nc; ++c) {
      const int unit = saved->unit[c];
      const Fx s = fx_of(running_scale_, c);
      if (l1) {
        saved->rho[c] = fx_div({1, 0}, fx_add(fx_mul(kC, {s.m, s.e - unit}), {eps.m, eps.e - unit}));
      } else {
        saved->rho[c] = fx_div({1, 0}, fx_sqrt(fx_add({s.m, s.e - 2 * unit}, {eps.m, eps.e - 2 * unit})));
      }
    }
  }

  // Pass 3: y = d·(γρ) + β at one exponent.
  std::vector<Term> terms(nc);
  std::vector<Fx> bias(nc);
  int e_out = kNoConstraint;
  for (std::size_t c = 0; c < nc; ++c) {
    saved->gamma[c] = fx_narrow(fx_of(gamma_.master, c), 15);
    terms[c] = {fx_mul(saved->gamma[c], saved->rho[c]), saved->dmax[c]};
    bias[c] = fx_of(beta_.master, c);
    e_out = std::max(e_out, stage_exponent(terms[c], Term{}, bias[c]));
  }
  if (e_out == kNoConstraint) e_out = kDefaultExponent;
  std::vector<int32_t>& a = saved->a;
  std::vector<int32_t>& t = saved->t;
  std::vector<int32_t>& cc = saved->c;
  a.resize(nc);
  t.resize(nc);
  cc.resize(nc);
  for (std::size_t c = 0; c < nc; ++c) {
    const Stage s = make_stage(terms[c], Term{}, bias[c], e_out, 29, 30);
    a[c] = static_cast<int32_t>(s.a);
    t[c] = s.t;
    cc[c] = static_cast<int32_t>(s.c);
  }
  auto out = std::make_shared<Var>();
  out->value = Tensor::uninitialized(m, nc, DType::kI32, e_out);  // norm_apply writes every element
  if (training) saved->d.reset(new int16_t[m * nc]);
  const uint64_t ymax = split_apply(split, xp, m, nc, col, {a.data(), nullptr, t.data(), cc.data()},
                                    out->value.data<int32_t>(), training ? saved->d.get() : nullptr, opt_.relu);
  if (opt_.relu) out->value.set_nonnegative_max(ymax);
  if (!training) return out;

  ctx.tape->record([this, x, out, saved, m, nc, l1, split] {
    if (!out->has_grad) return;
    const Tensor& dy = out->grad;
    if (dy.axis() != ScaleAxis::kTensor) throw std::logic_error(name() + ": gradient with several exponents");
    const int e_dy = dy.exponent();
    const Fx mm{static_cast<int64_t>(m), 0};
    std::vector<int64_t> sum_dy(nc);
    std::vector<int32_t> mn(nc), mx(nc), kd(nc), zero(nc, 0);
    std::vector<kernels::WideSum> sum_dy_d(nc);
    const kernels::NormAffine fwd{saved->a.data(), nullptr, saved->t.data(), saved->c.data()};
    const kernels::NormAffine* relu = opt_.relu ? &fwd : nullptr;
    split_grad_stats(split, dy.data<int32_t>(), saved->d.get(), m, nc, sum_dy.data(), mn.data(), mx.data(),
                     sum_dy_d.data(), relu);
    std::vector<Fx> dgamma(nc), dbeta(nc), bias_dx(nc);
    std::vector<Term> ta(nc), tb(nc);
    int e_dx = kNoConstraint;
    for (std::size_t c = 0; c < nc; ++c) {
      const uint64_t amax = std::max(magnitude(mx[c]), magnitude(mn[c]));
      kd[c] = working_shift(amax);
      const Fx rho = saved->rho[c];
      const Fx dot = fx_of_wide(sum_dy_d[c]);                  // Σ dy·d, units 2^e_dy × (unit of d)
      const Fx dot_xhat = fx_mul(rho, {dot.m, dot.e + e_dy});  // Σ dy·x̂ (real)
      dgamma[c] = dot_xhat;
      dbeta[c] = {sum_dy[c], e_dy};
      const Fx mean_dy = fx_div({sum_dy[c], e_dy}, mm);
      const Fx mean_dy_xhat = fx_div(dot_xhat, mm);
      Fx gr = fx_mul(saved->gamma[c], rho);  // γρ per real unit of x:
      gr.e -= saved->unit[c];
      ta[c] = {{gr.m, gr.e + e_dy + kd[c]}, working_bound(amax, kd[c])};
      if (l1) {
        const Fx mean_s = fx_div({saved->sum_sign[c], 0}, mm);
        const Fx c_mean_dy_xhat = fx_mul(kC, mean_dy_xhat);
        tb[c] = {fx_neg(fx_mul(gr, c_mean_dy_xhat)), saved->dmax[c] > 0 ? 1u : 0u};
        bias_dx[c] = fx_neg(fx_mul(gr, fx_sub(mean_dy, fx_mul(c_mean_dy_xhat, mean_s))));
      } else {
        tb[c] = {fx_neg(fx_mul(fx_mul(gr, mean_dy_xhat), rho)), saved->dmax[c]};
        bias_dx[c] = fx_neg(fx_mul(gr, mean_dy));
      }
      e_dx = std::max(e_dx, stage_exponent(ta[c], tb[c], bias_dx[c]));
    }
    if (x->requires_grad) {
      if (e_dx == kNoConstraint) e_dx = kDefaultExponent;
      std::vector<int32_t> a2(nc), b2(nc), t2(nc), c2(nc);
      for (std::size_t c = 0; c < nc; ++c) {
        const Stage s = make_stage(ta[c], tb[c], bias_dx[c], e_dx, 29, 30);
        a2[c] = static_cast<int32_t>(s.a);
        b2[c] = static_cast<int32_t>(s.b);
        t2[c] = s.t;
        c2[c] = static_cast<int32_t>(s.c);
      }
      Tensor dx = Tensor::uninitialized(m, nc, DType::kI32, e_dx);  // the kernel writes every element
      const kernels::NormColumns gcol{kd.data(), zero.data()};
      const kernels::NormAffine aff{a2.data(), b2.data(), t2.data(), c2.data()};
      split_grad_apply(split, l1, dy.data<int32_t>(), saved->d.get(), m, nc, gcol, aff, dx.data<int32_t>(), relu);
      accumulate_grad(*x, std::move(dx));
    }
    // Summed with what an earlier use of this norm in the step left (a layer applied twice on one tape).
    accumulate_grad(gamma_, fx_tensor(dgamma, e_dy));
    accumulate_grad(beta_, fx_tensor(dbeta, e_dy));
  });
  return out;
}

}  // namespace qtrain
