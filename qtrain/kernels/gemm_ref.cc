// Scalar references for the three GEMM layouts: the definition the SIMD kernels are tested against.
// Deliberately naive — one loop nest over the matrices of a batch and their elements, each layout saying where it
// reads its operands, straight from the formulas in gemm.h; the dense products are a batch of one.
#include <algorithm>
#include <limits>

#include "qtrain/kernels/gemm.h"

namespace qtrain::kernels::ref {

namespace {

// Where matrix j of a batch starts in an operand with strides s.
std::size_t start(const GemmBatch& batch, const MatrixStrides& s, std::size_t j) {
  return j / batch.inner * s.outer_stride + j % batch.inner * s.inner_stride;
}

// C_j[rows × cols] = Σ_r A_j(i, r) · B_j(r, c) for every matrix j of the batch; a_at(i, r) and b_at(r, c) give
// the elements' offsets inside their matrices (each layout reads its operands along its own axes).
template <typename AAt, typename BAt>
void product(const int8_t* a, const int8_t* b, int32_t* c, std::size_t rows, std::size_t cols, std::size_t red,
             const GemmBatch& batch, AAt a_at, BAt b_at) {
  for (std::size_t m = 0; m < batch.count(); ++m) {
    const int8_t* am = a + start(batch, batch.a, m);
    const int8_t* bm = b + start(batch, batch.b, m);
    int32_t* cm = c + start(batch, batch.c, m);
    for (std::size_t i = 0; i < rows; ++i) {
      for (std::size_t j = 0; j < cols; ++j) {
        int32_t acc = 0;
        for (std::size_t r = 0; r < red; ++r) acc += int32_t{am[a_at(i, r)]} * int32_t{bm[b_at(r, j)]};
        cm[i * batch.c.ld + j] = acc;
      }
    }
  }
}

}  // namespace

void gemm_forward_batched(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                          const GemmBatch& batch) {
  const std::size_t lx = batch.a.ld, lw = batch.b.ld;
  product(
      x, w, y, n, m, k, batch, [=](std::size_t i, std::size_t r) { return i * lx + r; },
      [=](std::size_t r, std::size_t j) { return j * lw + r; });
}

void gemm_dgrad_batched(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
                        const GemmBatch& batch) {
  const std::size_t ldy = batch.a.ld, lw = batch.b.ld;
  product(
      dy, w, dx, n, k, m, batch, [=](std::size_t i, std::size_t r) { return i * ldy + r; },
      [=](std::size_t r, std::size_t j) { return r * lw + j; });
}

void gemm_wgrad_batched(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
                        const GemmBatch& batch) {
  const std::size_t ldy = batch.a.ld, lx = batch.b.ld;
  product(
      dy, x, dw, m, k, n, batch, [=](std::size_t i, std::size_t r) { return r * ldy + i; },
      [=](std::size_t r, std::size_t j) { return r * lx + j; });
}

// The dense products: one matrix whose rows are their row lengths apart.
void gemm_forward(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k) {
  gemm_forward_batched(x, w, y, n, m, k, GemmBatch{.a = {.ld = k}, .b = {.ld = k}, .c = {.ld = m}});
}

void gemm_dgrad(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k) {
  gemm_dgrad_batched(dy, w, dx, n, m, k, GemmBatch{.a = {.ld = m}, .b = {.ld = k}, .c = {.ld = k}});
}

void gemm_wgrad(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k) {
  gemm_wgrad_batched(dy, x, dw, n, m, k, GemmBatch{.a = {.ld = m}, .b = {.ld = k}, .c = {.ld = k}});
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
