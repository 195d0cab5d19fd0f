// Helpers shared by the operator gradient-check tests.
#pragma once

#include <cstdint>
#include <memory>

#include "qtrain/engine/core/autograd.h"
#include "qtrain/quant/rng.h"

namespace qtrain {

// A rows×cols int32 tensor of uniform values in [−range, range] with one exponent, reproducible from `seed`.
inline Tensor random_i32(std::size_t rows, std::size_t cols, int32_t range, int exponent, uint64_t seed) {
  Tensor t(rows, cols, DType::kI32, exponent);
  const quant::CounterRng rng(seed, 5);
  for (std::size_t i = 0; i < t.size(); ++i)
    // In int64: a draw above 2^31 minus range (up to INT32_MAX) would overflow int32.
    t.data<int32_t>()[i] =
        static_cast<int32_t>(static_cast<int64_t>(rng.below(i, 2 * static_cast<uint32_t>(range) + 1)) - range);
  return t;
}

// A graph variable holding `t` (gradient required).
inline VarPtr var(Tensor t) {
  auto v = std::make_shared<Var>();
  v->value = std::move(t);
  return v;
}

}  // namespace qtrain
