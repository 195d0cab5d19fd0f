// What the normalization layers (batch_norm.cc, layer_norm.cc) share, internal to the engine: the 16-bit working
// precision, the integer output stage, per-channel scalars to and from tensors, the merges of per-tile partials,
// and the layers' common set-up. The float formulas and the integer pipeline are described in norm.h.
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "qtrain/engine/core/param.h"
#include "qtrain/engine/core/tensor.h"
#include "qtrain/engine/layers/norm.h"
#include "qtrain/kernels/norm.h"
#include "qtrain/kernels/rounding.h"
#include "qtrain/quant/fixed_point.h"

namespace qtrain::norm_stage {

using kernels::bit_length;
using kernels::magnitude;
using kernels::shift_round_even;
using kernels::shift_round_half_up;  // R(v, k) = floor(v/2^k + ½) (qtrain/kernels/norm.h)
using quant::Fx;
using quant::fx_add;
using quant::fx_const;
using quant::fx_div;
using quant::fx_mul;
using quant::fx_narrow;
using quant::fx_neg;
using quant::fx_one_minus;
using quant::fx_sqrt;
using quant::fx_sub;
using quant::fx_to_int;
using quant::fx_top;

// ---- Per-channel scalars and tensors --------------------------------------------------------------------------

// Entry c of a 1×n int32 tensor with per-column (or one) exponents.
Fx fx_of(const Tensor& t, std::size_t c);
// A 1×n int32 tensor with one exponent holding values (the finest exponent with every |q| ≤ 2^30).
Tensor fx_tensor(const std::vector<Fx>& v, int fallback_exponent);
Fx fx_of_wide(const kernels::WideSum& w);
// c = sqrt(π/2), so that c·σ₁ = σ for a Gaussian.
extern const Fx kC;

// ---- Merges of per-tile partials (kernels::TilePartials) ----------------------------------------------------

void add_to(int64_t& a, int64_t b);
void min_to(int32_t& a, int32_t b);
void max_to(int32_t& a, int32_t b);
// Adds WideSums part by part. A partial covers fewer rows than the whole, so every bound on a full sum (norm.h)
// holds for it. The batch norm's kernels return canonical partials (0 ≤ lo < 2^32): their lo parts add to less
// than tiles·2^32, and canonical() then gives the one representation a single pass returns (fx_of_wide rounds,
// so the representation, not only the value, must match). The layer norm's sums are never canonicalized: their
// parts add to exactly the hi and lo of one accumulation over all rows.
void add_wide(kernels::WideSum& a, const kernels::WideSum& b);
void canonical(kernels::WideSum& w);

// ---- Working precision --------------------------------------------------------------------------------------

// R(S/m, k) = floor(S/(m·2^k) + ½) = floor((2S + m·2^k) / (m·2^(k+1))). |S| < 2^31·m, m < 2^30, k ≤ 17.
int64_t mean_half_up(int64_t sum, int64_t m, int k);
// The smallest k ≥ 0 such that values spanning `range` have working values R(·, k) − center within ±(2^15 − 1):
// k = 0 keeps them exact when range ≤ 2^15 − 1; otherwise R's rounding may add one unit, so (range >> k) + 1 must fit.
int working_shift(uint64_t range);
// The bound on |R(v, k)| for |v| ≤ vmax.
uint64_t working_bound(uint64_t vmax, int k);

// ---- Output stages --------------------------------------------------------------------------------------------

inline constexpr int kNoConstraint = INT_MIN / 4;
inline constexpr int kDefaultExponent = -30;  // an all-zero output

// One term coef·u of an output stage, with |u| ≤ umax.
struct Term {
  Fx coef;
  uint64_t umax = 0;
};

// An output stage out = R(u·a + w·b, t) + c (R rounds half up) representing out·2^E ≈ coef_a·u + coef_b·w + bias.
struct Stage {
  int64_t a = 0, b = 0, c = 0;
  int t = 0;
};

// The smallest output exponent E a stage allows: each term's real magnitude below 2^(29+E) and |bias| ≤ 2^(29+E),
// so that the shifted products (< 2^29 each) plus c (≤ 2^29) stay below 2^31.
int stage_exponent(const Term& ta, const Term& tb, const Fx& bias);
// The integers of a stage at output exponent E ≥ stage_exponent: the largest t ≤ t_max such that every
// |coef_int|·umax ≤ 2^prod_bits (coef_int = round(coef·2^(t−E))); t ≥ prod_bits − 29 ≥ 0 follows from E.
Stage make_stage(const Term& ta, const Term& tb, const Fx& bias, int e_out, int prod_bits, int t_max);

// ---- Set-up ---------------------------------------------------------------------------------------------------

std::string fmt_count(std::size_t n);
// γ = 1 and β = 0 (1×n, no weight decay), named <layer_name>.gamma / .beta.
void init_affine(Param& gamma, Param& beta, std::size_t n, const std::string& layer_name, uint32_t layer_id);
// Throws UsageError naming the option and its valid range.
void check_options(const NormOptions& opt);
// A forward's input: int32, `width` columns (`what`: "channels" or "features"), at least one row; throws naming
// the layer otherwise.
void check_input(const std::string& layer, const Tensor& x, std::size_t width, const char* what);

}  // namespace qtrain::norm_stage
