// Weights packed once for many products (PackedWeights, gemm.h) and the products that use them, int8 and int4.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#include "hwy/aligned_allocator.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/kernels/gemm_internal.h"
#include "qtrain/kernels/int4.h"

namespace qtrain::kernels {
namespace {

using detail::GemmArgs;
using detail::OperandA;
using detail::OperandB;
using Use = PackedWeights::Use;

PackedWeights pack(Use use, const uint8_t* w, std::size_t m, std::size_t k, bool int4, ThreadPool* pool) {
  const OperandB b = detail::weights_operand(w, k, int4, use);
  // forward: B is k × m (cols = m); dgrad: B is m × k (reduction m, cols = k).
  const std::size_t red = use == Use::kForward ? k : m;
  const std::size_t cols = use == Use::kForward ? m : k;
  const std::size_t source_bytes = m * (int4 ? int4_row_bytes(k) : k);
  PackedWeights out =
      PackedWeights::allocate(use, m, k, int4, detail::target_bits(), detail::packed_bytes(red, cols), w, source_bytes);
  if (red > 0 && cols > 0) detail::pack_panels(b, red, cols, out.mutable_panels(), pool);
  return out;
}

// The B operand for a product with packed weights: the panels, or W itself when they were packed for another
// target than the active one.
OperandB packed_operand(const PackedWeights& w, Use use) {
  OperandB b = detail::weights_operand(w.source(), w.k(), w.int4(), use);
  if (w.target() == detail::target_bits()) b.packed = w.panels();
  return b;
}

void check_use(const PackedWeights& w, Use use, const char* fn) {
  if (w.use() != use) {
    throw std::invalid_argument(std::string(fn) + ": the weights were not packed for this product (use " +
                                (use == Use::kForward ? "pack_weights_forward" : "pack_weights_dgrad") + ")");
  }
}

// Y[n × m] = A · Wᵀ (A rows `lda` bytes apart, int8 or int4) with W from pack_weights_forward*.
void forward_packed(const uint8_t* a, std::size_t lda, bool int4, const PackedWeights& w, int32_t* y, std::size_t n,
                    ThreadPool* pool, const GemmEpilogue& epilogue, const char* fn) {
  check_use(w, Use::kForward, fn);
  detail::run(
      GemmArgs{OperandA{a, lda, int4, false}, packed_operand(w, Use::kForward), y, w.m(), n, w.m(), w.k(), epilogue},
      pool);
}

// dX[n × k] = dY · W (dY rows `lda` bytes apart) with W from pack_weights_dgrad*.
void dgrad_packed(const uint8_t* dy, std::size_t lda, bool int4, const PackedWeights& w, int32_t* dx, std::size_t n,
                  ThreadPool* pool, const char* fn) {
  check_use(w, Use::kDgrad, fn);
  detail::run(GemmArgs{OperandA{dy, lda, int4, false}, packed_operand(w, Use::kDgrad), dx, w.k(), n, w.k(), w.m()},
              pool);
}

}  // namespace

void PackedWeights::Free::operator()(void* p) const { hwy::FreeAlignedBytes(p, nullptr, nullptr); }

PackedWeights PackedWeights::allocate(Use use, std::size_t m, std::size_t k, bool int4, int64_t target,
                                      std::size_t panel_bytes, const uint8_t* source, std::size_t source_bytes) {
  PackedWeights w;
  w.use_ = use;
  w.m_ = m;
  w.k_ = k;
  w.int4_ = int4;
  w.target_ = target;
  w.panels_.reset(hwy::AllocateAlignedBytes(std::max<std::size_t>(panel_bytes, 1), nullptr, nullptr));
  if (w.panels_ == nullptr) throw std::bad_alloc();
  w.panel_bytes_ = panel_bytes;
  w.source_ = std::make_unique<uint8_t[]>(std::max<std::size_t>(source_bytes, 1));
  if (source_bytes > 0) std::memcpy(w.source_.get(), source, source_bytes);
  w.source_bytes_ = source_bytes;
  return w;
}

PackedWeights pack_weights_forward(const int8_t* w, std::size_t m, std::size_t k, ThreadPool* pool) {
  return pack(Use::kForward, detail::bytes(w), m, k, false, pool);
}

PackedWeights pack_weights_dgrad(const int8_t* w, std::size_t m, std::size_t k, ThreadPool* pool) {
  return pack(Use::kDgrad, detail::bytes(w), m, k, false, pool);
}

void gemm_forward_packed(const int8_t* x, const PackedWeights& w, int32_t* y, std::size_t n, ThreadPool* pool,
                         const GemmEpilogue& epilogue) {
  forward_packed(detail::bytes(x), w.k(), false, w, y, n, pool, epilogue, "gemm_forward_packed");
}

void gemm_dgrad_packed(const int8_t* dy, const PackedWeights& w, int32_t* dx, std::size_t n, ThreadPool* pool) {
  dgrad_packed(detail::bytes(dy), w.m(), false, w, dx, n, pool, "gemm_dgrad_packed");
}

// ---- int4 (int4.h) ----------------------------------------------------------------------------------------------

PackedWeights pack_weights_forward_s4(const uint8_t* w, std::size_t m, std::size_t k, ThreadPool* pool) {
  return pack(Use::kForward, w, m, k, true, pool);
}

PackedWeights pack_weights_dgrad_s4(const uint8_t* w, std::size_t m, std::size_t k, ThreadPool* pool) {
  return pack(Use::kDgrad, w, m, k, true, pool);
}

void gemm_forward_packed_s4(const uint8_t* x, const PackedWeights& w, int32_t* y, std::size_t n, ThreadPool* pool,
                            const GemmEpilogue& epilogue) {
  forward_packed(x, int4_row_bytes(w.k()), true, w, y, n, pool, epilogue, "gemm_forward_packed_s4");
}

void gemm_dgrad_packed_s4(const uint8_t* dy, const PackedWeights& w, int32_t* dx, std::size_t n, ThreadPool* pool) {
  dgrad_packed(dy, int4_row_bytes(w.m()), true, w, dx, n, pool, "gemm_dgrad_packed_s4");
}

}  // namespace qtrain::kernels
