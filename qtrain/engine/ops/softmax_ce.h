// Integer softmax cross-entropy, in fixed point with two passes over each row (the Two-Pass Softmax idea).
//
//   z_i   = logit i as Q16 fixed point (the layer's per-column exponents are folded in here, exactly or rounded)
//   pass 1: m = max_i z_i
//   pass 2: e_i = 2^((z_i − m)·log2 e) as Q30 (integer part → shift, fraction → 257-entry table + linear
//           interpolation; error < 2^−17 relative), S = Σ e_i in int64
//   p_i   = e_i·2^30 / S  (one integer division per element), Q30
//   loss  = ln S − ln e_y  (control plane: a metric, not part of the data plane)
//   dz_i  = (p_i − [i = y]) / B, int32 with one exponent; 1/B is a shift when B is a power of two, else a Q15
//           multiplier times a shift.
// Float formula: p = softmax(z), loss = −mean log p_y, dz = (p − onehot(y)) / B.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "qtrain/engine/core/autograd.h"

namespace qtrain {

struct LossResult {
  double loss = 0;            // mean cross-entropy over the batch (nats)
  std::size_t correct = 0;    // rows whose argmax equals the label
  std::vector<int> predicted; // argmax per row
};

// Records dz on the tape when ctx is training. labels[r] must be in 0..logits.cols()−1 (std::invalid_argument
// otherwise); any int32 label is supported (the exponential sum is int64, see data::kMaxClasses).
// `mean_over` is the B of dz = (p − onehot)/B: 0 means logits.rows(); a micro-batch of a larger update passes the
// update's row count, so each row's dz equals that row's dz in the whole batch. The reported loss is the mean over
// this call's rows either way.
LossResult softmax_cross_entropy(const StepContext& ctx, const VarPtr& logits, const int32_t* labels,
                                 std::size_t mean_over = 0);

// Row-wise softmax probabilities as Q30 (value = p·2^30), for tests and diagnostics.
std::vector<int32_t> softmax_q30(const Tensor& logits);

}  // namespace qtrain
