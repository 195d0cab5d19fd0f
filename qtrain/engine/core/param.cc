#include "qtrain/engine/core/param.h"

#include <cmath>

#include "qtrain/quant/rng.h"

namespace qtrain {

void init_uniform(Param& p, std::size_t rows, std::size_t cols, std::size_t fan_in, uint64_t seed) {
  init_uniform_bound(p, rows, cols, 1.0 / std::sqrt(static_cast<double>(fan_in)), seed);
}

void init_uniform_bound(Param& p, std::size_t rows, std::size_t cols, double bound, uint64_t seed) {
  // Control plane: the bound is a float; the draws are integers in [−R, R] with R = bound·2^−e ≈ 2^24.
  int e2 = 0;
  std::frexp(bound, &e2);  // bound in [2^(e2−1), 2^e2)
  const int exponent = e2 - 24;
  const auto range = static_cast<uint32_t>(std::llround(std::ldexp(bound, -exponent)));
  p.master = Tensor(rows, cols, DType::kI32, exponent);
  const quant::CounterRng rng(seed, quant::StreamKey{.purpose = quant::Purpose::kInit, .owner = p.id});
  int32_t* w = p.master.data<int32_t>();
  for (std::size_t i = 0; i < rows * cols; ++i)
    w[i] = static_cast<int32_t>(rng.below(i, 2 * range + 1)) - static_cast<int32_t>(range);
  p.has_grad = false;
}

}  // namespace qtrain
