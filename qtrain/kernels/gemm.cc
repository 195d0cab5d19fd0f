// The public GEMM entry points of gemm.h and int4.h whose weights are not prepacked: each describes its operands
// for the dispatched product (gemm_driver.cc) and runs it.
#include "qtrain/kernels/gemm.h"

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "qtrain/kernels/gemm_internal.h"
#include "qtrain/kernels/int4.h"

namespace qtrain::kernels {

using detail::bytes;
using detail::GemmArgs;
using detail::OperandA;
using detail::OperandB;
using Use = PackedWeights::Use;

namespace detail {

OperandB weights_operand(const uint8_t* w, std::size_t k, bool int4, PackedWeights::Use use) {
  return OperandB{w, int4 ? int4_row_bytes(k) : k, int4, use == PackedWeights::Use::kDgrad, nullptr};
}

}  // namespace detail

void gemm_forward(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                  ThreadPool* pool, const GemmEpilogue& epilogue) {
  detail::run(GemmArgs{OperandA{bytes(x), k, false, false}, detail::weights_operand(bytes(w), k, false, Use::kForward),
                       y, m, n, m, k, epilogue},
              pool);
}

void gemm_dgrad(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
                ThreadPool* pool) {
  detail::run(GemmArgs{OperandA{bytes(dy), m, false, false}, detail::weights_operand(bytes(w), k, false, Use::kDgrad),
                       dx, k, n, k, m},
              pool);
}

void gemm_wgrad(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
                ThreadPool* pool) {
  // A = dYᵀ (m × n, read transposed from dY), B = X (n × k, reduction along its rows).
  detail::run(
      GemmArgs{OperandA{bytes(dy), m, false, true}, OperandB{bytes(x), k, false, true, nullptr}, dw, k, m, k, n}, pool);
}

// ---- Strided and batched ---------------------------------------------------------------------------------------

namespace {

// The operands of a batched product in the order of GemmBatch (first, second, output): names for messages, and
// the row lengths their leading dimensions must reach.
struct BatchedOperands {
  const char* names[3];
  std::size_t row_lengths[3];
};

// Runs `first` for every matrix of the batch; throws std::invalid_argument when a leading dimension is shorter than
// its operand's rows.
void run_checked(const char* fn, const BatchedOperands& ops, const GemmArgs& first, const GemmBatch& batch,
                 ThreadPool* pool) {
  const MatrixStrides* strides[3] = {&batch.a, &batch.b, &batch.c};
  for (int i = 0; i < 3; ++i) {
    if (strides[i]->ld < ops.row_lengths[i]) {
      throw std::invalid_argument(std::string(fn) + ": " + ops.names[i] + " has leading dimension " +
                                  std::to_string(strides[i]->ld) + ", shorter than its rows of " +
                                  std::to_string(ops.row_lengths[i]));
    }
  }
  detail::run_batched(first, batch, pool);
}

}  // namespace

void gemm_forward_batched(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                          const GemmBatch& batch, ThreadPool* pool) {
  const OperandA a{bytes(x), batch.a.ld, false, false};
  const OperandB b{bytes(w), batch.b.ld, false, false, nullptr};
  run_checked("gemm_forward_batched", {{"X", "W", "Y"}, {k, k, m}}, GemmArgs{a, b, y, batch.c.ld, n, m, k}, batch,
              pool);
}

void gemm_dgrad_batched(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
                        const GemmBatch& batch, ThreadPool* pool) {
  const OperandA a{bytes(dy), batch.a.ld, false, false};
  const OperandB b{bytes(w), batch.b.ld, false, true, nullptr};
  run_checked("gemm_dgrad_batched", {{"dY", "W", "dX"}, {m, k, k}}, GemmArgs{a, b, dx, batch.c.ld, n, k, m}, batch,
              pool);
}

void gemm_wgrad_batched(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
                        const GemmBatch& batch, ThreadPool* pool) {
  // A = dYᵀ (read transposed), B = X (reduction along its rows), as gemm_wgrad.
  const OperandA a{bytes(dy), batch.a.ld, false, true};
  const OperandB b{bytes(x), batch.b.ld, false, true, nullptr};
  run_checked("gemm_wgrad_batched", {{"dY", "X", "dW"}, {m, k, k}}, GemmArgs{a, b, dw, batch.c.ld, m, k, n}, batch,
              pool);
}

// ---- int4 (int4.h) ----------------------------------------------------------------------------------------------

void gemm_forward_s4(const uint8_t* x, const uint8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                     ThreadPool* pool, const GemmEpilogue& epilogue) {
  detail::run(GemmArgs{OperandA{x, int4_row_bytes(k), true, false}, detail::weights_operand(w, k, true, Use::kForward),
                       y, m, n, m, k, epilogue},
              pool);
}

void gemm_dgrad_s4(const uint8_t* dy, const uint8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
                   ThreadPool* pool) {
  detail::run(GemmArgs{OperandA{dy, int4_row_bytes(m), true, false}, detail::weights_operand(w, k, true, Use::kDgrad),
                       dx, k, n, k, m},
              pool);
}

void gemm_wgrad_s4(const uint8_t* dy, const uint8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
                   ThreadPool* pool) {
  // dY is read transposed: unpacked to int8 first (it is the small operand), then as gemm_wgrad.
  auto* dy8 = static_cast<int8_t*>(detail::scratch(detail::Slot::kUnpacked, n * m));
  unpack_int4(dy, n, m, dy8);
  detail::run(GemmArgs{OperandA{bytes(dy8), m, false, true}, OperandB{x, int4_row_bytes(k), true, true, nullptr}, dw, k,
                       m, k, n},
              pool);
}

}  // namespace qtrain::kernels
