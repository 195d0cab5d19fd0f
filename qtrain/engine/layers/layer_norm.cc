// L1LayerNorm (norm.h): per-row statistics, x̂ in 15-bit fixed point, the γ/β stage and the backward, split in runs
// of rows over the step's pool (rows are independent groups).
#include <algorithm>
#include <limits>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "qtrain/engine/layers/norm.h"
#include "qtrain/engine/layers/norm_stage.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/layer_norm_rows.h"
#include "qtrain/kernels/norm.h"
#include "qtrain/kernels/parallel.h"
#include "qtrain/quant/error.h"
#include "qtrain/quant/pow2.h"

namespace qtrain {
namespace {
using namespace norm_stage;  // NOLINT(build/namespaces): the normalizations' shared pieces
}  // namespace

// ============================================================================================================
// L1 layer norm
// ============================================================================================================

L1LayerNorm::L1LayerNorm(std::size_t features, uint32_t layer_id, const NormOptions& opt)
    : features_(features), id_(layer_id), opt_(opt) {
  if (features == 0) throw UsageError("layer norm needs at least one feature");
  if (features > (std::size_t{1} << 16))
    throw UsageError("layer norm over " + fmt_count(features) + " features exceeds 65536 (the int64 row-sum bound)");
  check_options(opt);
  init_affine(gamma_, beta_, features, layer_name(), layer_id);
}

std::string L1LayerNorm::name() const { return "L1LayerNorm(" + fmt_count(features_) + ")"; }

namespace {

// A layer norm reduces across columns, so per-column exponents are brought to one: the finest exponent at which
// every column still fits int32 (exact left shifts; columns finer than it are rounded to nearest even).
Tensor align_columns(const Tensor& x, kernels::ThreadPool* pool) {
  const std::size_t rows = x.rows(), cols = x.cols();
  const kernels::PassSplit split(pool, rows);
  std::vector<uint64_t> mx(cols, 0);
  const int32_t* p = x.data<int32_t>();
  kernels::TilePartials<uint64_t> pmx(mx.data(), split, cols);
  split.run(kernels::kNsPerByte * static_cast<double>(rows * cols * sizeof(int32_t)),  // x read
            [&](std::size_t i, std::size_t r0, std::size_t r1) {
              uint64_t* m = pmx.at(i);
              std::fill(m, m + cols, 0);
              for (std::size_t r = r0; r < r1; ++r)
                for (std::size_t c = 0; c < cols; ++c) m[c] = std::max(m[c], magnitude(p[r * cols + c]));
            });
  pmx.merge([](uint64_t& a, uint64_t b) { a = std::max(a, b); });
  int e = INT_MIN, e_any = INT_MIN;
  for (std::size_t c = 0; c < cols; ++c) {
    e_any = std::max(e_any, x.exponent_at(0, c));
    if (mx[c] != 0) e = std::max(e, x.exponent_at(0, c) + bit_length(mx[c]) - 31);
  }
  if (e == INT_MIN) e = e_any;
  std::vector<int> shift(cols);
  for (std::size_t c = 0; c < cols; ++c) shift[c] = e - x.exponent_at(0, c);
  Tensor out = Tensor::uninitialized(rows, cols, DType::kI32, e);  // every element written below
  int32_t* q = out.data<int32_t>();
  split.run(kernels::kNsPerByte * static_cast<double>(rows * cols * 2 * sizeof(int32_t)),  // x read, out written
            [&](std::size_t, std::size_t r0, std::size_t r1) {
              for (std::size_t r = r0; r < r1; ++r)
                for (std::size_t c = 0; c < cols; ++c)
                  q[r * cols + c] = static_cast<int32_t>(shift_round_even(p[r * cols + c], shift[c]));
            });
  return out;
}

struct LayerSaved {
  std::vector<int16_t> d;   // working values, rows×F
  std::vector<int32_t> xh;  // x̂ at exponent e_xh, |x̂_q| ≤ 2^15
  int e_xh = 0;
  std::vector<Fx> rho;    // per row, x̂ per unit of d
  std::vector<int> unit;  // per row, exponent of one unit of d
  std::vector<uint64_t> dmax;
  std::vector<int32_t> gq;  // γ at 15 bits with one exponent
  int e_gq = 0;
};

}  // namespace

// Forward, per row over its F features (float formula in norm.h):
//   S = Σx, min, max → k, μ' = R(S/F, k), d = R(x, k) − μ', T = Σ|d|, ρ = 1/(c·T/F + ε/2^(e+k)), x̂ = d·ρ
//   x̂_q = round(x̂ / 2^e_xh) with one exponent e_xh for the tensor (|x̂_q| ≤ 2^15: 15-bit fixed point)
//   y = γ·x̂ + β:  y_q = round(x̂_q·γ_q / 2^(e_y − e_xh − e_γ)) + β_q   (γ_q: 15 bits, one exponent)
// Backward, per row (g = γ·dy, G = γ_q·R(dy, k_dy) the integer g, s = sign(d)):
//   dx = ρ/2^(e+k)·[g − mean(g) − c·mean(g·x̂)·(s − mean(s))],  mean(g·x̂) = ρ·ΣG·d/F (in units of G)
//      = G·A + s·K + B   (int64 products: |G| < 2^30)
//   dγ_j = Σ_rows dy·x̂ (exact wide sums of dy·x̂_q), dβ_j = Σ_rows dy (exact)
VarPtr L1LayerNorm::forward(const StepContext& ctx, const VarPtr& x) {
  const Tensor& xin = x->value;
  check_input(name(), xin, features_, "features");
  Tensor aligned;
  const Tensor* src = &xin;
  if (xin.axis() == ScaleAxis::kCol) {
    aligned = align_columns(xin, ctx.pool);
    src = &aligned;
  }
  const std::size_t n = src->rows(), nf = features_;
  const int32_t* xp = src->data<int32_t>();
  const Fx eps = fx_const(opt_.eps);
  const quant::FxDivisor per_feature(Fx{static_cast<int64_t>(nf), 0});  // x/F, exactly fx_div(x, F)
  // Rows are independent groups: every pass over them is split in runs of rows. Per element, the statistics pass
  // reads x twice and writes d; the output pass reads d and writes x̂ and y.
  const kernels::PassSplit split(ctx.pool, n);
  const double pass_ns = kernels::kNsPerByte * static_cast<double>(n * nf * (2 * sizeof(int32_t) + sizeof(int16_t)));

  auto saved = std::make_shared<LayerSaved>();
  saved->d.resize(n * nf);
  saved->xh.resize(n * nf);
  saved->rho.resize(n);
  saved->unit.resize(n);
  saved->dmax.resize(n);
  std::vector<int> e_xh_part(std::max<std::size_t>(split.tiles(), 1), kNoConstraint);  // per task: max over its rows
  split.run(pass_ns, [&](std::size_t i, std::size_t r0, std::size_t r1) {
    int e_xh = kNoConstraint;
    for (std::size_t r = r0; r < r1; ++r) {
      const int32_t* row = xp + r * nf;
      const kernels::LnRowStats st = kernels::ln_row_stats(row, nf);
      const int32_t lo = st.lo, hi = st.hi;
      const int k = working_shift(static_cast<uint64_t>(int64_t{hi} - lo));
      // R_up's mean of values R_up(x, k) ∈ [R_up(lo, k), R_up(hi, k)]: an int32.
      const int64_t mu = mean_half_up(st.sum, static_cast<int64_t>(nf), k);
      const int64_t t = kernels::ln_row_center(row, nf, k, static_cast<int32_t>(mu), saved->d.data() + r * nf);
      const int unit = src->exponent_at(r, 0) + k;
      saved->unit[r] = unit;
      saved->rho[r] = fx_div({1, 0}, fx_add(fx_mul(kC, per_feature({t, 0})), {eps.m, eps.e - unit}));
      saved->dmax[r] =
          static_cast<uint64_t>(std::max(shift_round_half_up(hi, k) - mu, mu - shift_round_half_up(lo, k)));
      const Fx xmax = fx_mul(saved->rho[r], {static_cast<int64_t>(saved->dmax[r]), 0});
      if (xmax.m != 0) e_xh = std::max(e_xh, fx_top(xmax) - 15);
    }
    e_xh_part[i] = e_xh;
  });
  int e_xh = *std::max_element(e_xh_part.begin(), e_xh_part.end());
  if (e_xh == kNoConstraint) e_xh = -15;
  saved->e_xh = e_xh;

  // γ to 15 bits with one exponent; β to the output's exponent.
  const Tensor& gm = gamma_.master;
  uint64_t gmax = 0, bmax = 0;
  for (std::size_t j = 0; j < nf; ++j) {
    gmax = std::max(gmax, magnitude(gm.data<int32_t>()[j]));
    bmax = std::max(bmax, magnitude(beta_.master.data<int32_t>()[j]));
  }
  const int sg = gmax > 0 ? quant::covering_shift(gmax, 32767) : 0;
  saved->gq.resize(nf);
  uint64_t gqmax = 0;
  for (std::size_t j = 0; j < nf; ++j) {
    saved->gq[j] = static_cast<int32_t>(shift_round_even(gm.data<int32_t>()[j], sg));
    gqmax = std::max(gqmax, magnitude(saved->gq[j]));
  }
  saved->e_gq = gm.exponent() + sg;
  // |y| ≤ (2^15 + 1)·2^e_xh·max|γ| + max|β|, at 30 bits.
  const Fx ybound = fx_add(fx_mul({(int64_t{1} << 15) + 1, e_xh}, {static_cast<int64_t>(gqmax), saved->e_gq}),
                           {static_cast<int64_t>(bmax), beta_.master.exponent()});
  const int e_y = ybound.m != 0 ? fx_top(ybound) - 30 : kDefaultExponent;
  const int sy = e_y - e_xh - saved->e_gq;
  std::vector<int64_t> bq(nf);
  for (std::size_t j = 0; j < nf; ++j) bq[j] = fx_to_int(fx_of(beta_.master, j), e_y);
  auto out = std::make_shared<Var>();
  out->value = Tensor::uninitialized(n, nf, DType::kI32, e_y);  // every element written below
  int32_t* y = out->value.data<int32_t>();
  // x̂ and y, row by row.
  split.run(pass_ns, [&](std::size_t, std::size_t r0, std::size_t r1) {
    for (std::size_t r = r0; r < r1; ++r) {
      const Fx rho = fx_narrow(saved->rho[r], 31);
      kernels::ln_row_affine(saved->d.data() + r * nf, nf, rho.m, e_xh - rho.e, saved->gq.data(), sy, bq.data(),
                             saved->xh.data() + r * nf, y + r * nf);
    }
  });
  if (!ctx.training()) return out;

  ctx.tape->record([this, x, out, saved, n, nf, split, per_feature] {
    if (!out->has_grad) return;
    const Tensor& dy = out->grad;
    if (dy.axis() != ScaleAxis::kTensor) throw std::logic_error(name() + ": gradient with several exponents");
    const int e_dy = dy.exponent();
    const int32_t* g = dy.data<int32_t>();
    const bool need_dx = x->requires_grad;

    // One pass over the rows: per feature dγ_j = Σ_r dy·x̂, dβ_j = Σ_r dy (per-task partials, merged exactly: the
    // WideSums part by part as one accumulation adds them); per row (input gradient) the stage's terms.
    std::vector<int64_t> dot_lo(nf, 0), dot_hi(nf, 0), sdy(nf, 0);  // dγ as WideSum halves, dβ
    kernels::TilePartials<int64_t> plo(dot_lo.data(), split, nf), phi(dot_hi.data(), split, nf);
    kernels::TilePartials<int64_t> psdy(sdy.data(), split, nf);
    std::vector<Term> ta(need_dx ? n : 0), tb(need_dx ? n : 0);
    std::vector<Fx> bias(need_dx ? n : 0);
    std::vector<int> kd(need_dx ? n : 0);
    std::vector<int> e_dx_part(std::max<std::size_t>(split.tiles(), 1), kNoConstraint);
    // dy read (twice with dx), x̂ read, d read with dx.
    const double stats_bytes =
        static_cast<double>(n * nf * (2 * sizeof(int32_t) + (need_dx ? sizeof(int32_t) + sizeof(int16_t) : 0)));
    split.run(kernels::kNsPerByte * stats_bytes, [&](std::size_t i, std::size_t r0, std::size_t r1) {
      int64_t* lo = plo.at(i);
      int64_t* hi = phi.at(i);
      int64_t* sd = psdy.at(i);
      std::fill(lo, lo + nf, 0);
      std::fill(hi, hi + nf, 0);
      std::fill(sd, sd + nf, 0);
      for (std::size_t r = r0; r < r1; ++r)  // |g·x̂| ≤ 2^46
        kernels::ln_row_accumulate(g + r * nf, saved->xh.data() + r * nf, nf, lo, hi, sd);
      if (!need_dx) return;
      int e_dx = kNoConstraint;
      for (std::size_t r = r0; r < r1; ++r) {
        const int32_t* gr_row = g + r * nf;
        const int16_t* d = saved->d.data() + r * nf;
        kd[r] = working_shift(kernels::max_abs_i32(gr_row, nf, false));
        // |G| < 2^30, |G·d| < 2^45, F ≤ 2^16 terms: exact int64 sums.
        const kernels::LnGradSums gs = kernels::ln_row_grad_sums(gr_row, d, nf, saved->gq.data(), kd[r]);
        const int64_t sum_g = gs.sum_g, sum_gd = gs.sum_gd, sum_s = gs.sum_s;
        const uint64_t gmax_row = gs.gmax;
        const Fx rho = saved->rho[r];
        // A: dx per unit of G; G's unit is 2^(e_γ + e_dy + k_dy).
        Fx a_coef = fx_narrow(rho, 31);
        a_coef.e += saved->e_gq + e_dy + kd[r] - saved->unit[r];
        const Fx mean_g = per_feature({sum_g, 0});
        const Fx mean_gx = fx_mul(kC, per_feature(fx_mul(rho, {sum_gd, 0})));  // c·mean(G·x̂), units of G
        const Fx mean_s = per_feature({sum_s, 0});
        ta[r] = {a_coef, gmax_row};
        tb[r] = {fx_neg(fx_mul(a_coef, mean_gx)), saved->dmax[r] > 0 ? 1u : 0u};
        bias[r] = fx_neg(fx_mul(a_coef, fx_sub(mean_g, fx_mul(mean_gx, mean_s))));
        e_dx = std::max(e_dx, stage_exponent(ta[r], tb[r], bias[r]));
      }
      e_dx_part[i] = e_dx;
    });
    plo.merge(add_to);
    phi.merge(add_to);
    psdy.merge(add_to);
    std::vector<Fx> dgamma(nf), dbeta(nf);
    for (std::size_t j = 0; j < nf; ++j) {
      kernels::WideSum w;
      w.hi = dot_hi[j];
      w.lo = dot_lo[j];
      const Fx v = fx_of_wide(w);
      dgamma[j] = {v.m, v.e + e_dy + saved->e_xh};
      dbeta[j] = {sdy[j], e_dy};
    }

    if (need_dx) {
      int e_dx = *std::max_element(e_dx_part.begin(), e_dx_part.end());
      if (e_dx == kNoConstraint) e_dx = kDefaultExponent;
      Tensor dx = Tensor::uninitialized(n, nf, DType::kI32, e_dx);  // every element written below
      int32_t* out_dx = dx.data<int32_t>();
      // dy, d read, dx written.
      const double dx_bytes = static_cast<double>(n * nf * (2 * sizeof(int32_t) + sizeof(int16_t)));
      split.run(kernels::kNsPerByte * dx_bytes, [&](std::size_t, std::size_t r0, std::size_t r1) {
        for (std::size_t r = r0; r < r1; ++r) {
          const Stage s = make_stage(ta[r], tb[r], bias[r], e_dx, 60, 61);
          kernels::ln_row_dx(g + r * nf, saved->d.data() + r * nf, nf, saved->gq.data(), kd[r], s.a, s.b, s.t, s.c,
                             out_dx + r * nf);
        }
      });
      accumulate_grad(*x, std::move(dx));
    }
    // Summed with what an earlier use of this norm in the step left (a layer applied twice on one tape).
    accumulate_grad(gamma_, fx_tensor(dgamma, e_dy));
    accumulate_grad(beta_, fx_tensor(dbeta, e_dy));
  });
  return out;
}

}  // namespace qtrain
