// Scalar references for the three GEMM layouts: the definition the SIMD kernels are tested against.
// Deliberately naive — one loop nest per layout, written straight from the formulas in gemm.h.
#include "qtrain/kernels/gemm.h"

#include <algorithm>
#include <limits>

namespace qtrain::kernels::ref {

void gemm_forward(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k) {
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < m; ++j) {
      int32_t acc = 0;
      for (std::size_t r = 0; r < k; ++r) acc += int32_t{x[i * k + r]} * int32_t{w[j * k + r]};
      y[i * m + j] = acc;
    }
  }
}

void gemm_dgrad(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k) {
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < k; ++j) {
      int32_t acc = 0;
      for (std::size_t r = 0; r < m; ++r) acc += int32_t{dy[i * m + r]} * int32_t{w[r * k + j]};
      dx[i * k + j] = acc;
    }
  }
}

void gemm_wgrad(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k) {
  for (std::size_t i = 0; i < m; ++i) {
    for (std::size_t j = 0; j < k; ++j) {
      int32_t acc = 0;
      for (std::size_t r = 0; r < n; ++r) acc += int32_t{dy[r * m + i]} * int32_t{x[r * k + j]};
      dw[i * k + j] = acc;
    }
  }
}

void gemm_epilogue(int32_t* y, std::size_t n, std::size_t m, const GemmEpilogue& epilogue) {
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t j = 0; j < m; ++j) {
      int64_t v = y[i * m + j];
      if (epilogue.bias != nullptr) v += epilogue.bias[j];
      v = std::clamp<int64_t>(v, std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max());
      if (epilogue.relu) v = std::max<int64_t>(v, 0);
      y[i * m + j] = static_cast<int32_t>(v);
    }
  }
}

}  // namespace qtrain::kernels::ref
