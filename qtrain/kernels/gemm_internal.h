// What the GEMM's files share (not installed): the operand descriptions the per-target code works on, per-thread
// scratch, cache sizes, and the target-independent doors into the dispatched code (gemm_driver.cc) that gemm.cc and
// gemm_packed.cc call. The per-target code itself is in gemm_tile-inl.h, gemm_pack-inl.h, gemm_kernel-inl.h and
// gemm_driver.cc.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qtrain/kernels/gemm.h"

namespace qtrain::kernels::detail {

// Per-thread scratch that only grows (64-byte aligned); valid until the next call on the same thread. One
// buffer per role, so a call can hold several at once: the k* slots belong to the calling thread (shared with
// the tasks it starts), the kTask* slots to whichever thread runs a task.
enum class Slot {
  kPackedA,
  kPackedB,
  kSums,
  kTransposed,
  kUnpacked,
  kPartial,
  kTaskA,
  kTaskB,
  kTaskSums,
  kTaskTransposed,
  kCount
};
void* scratch(Slot slot, std::size_t bytes);

// The A operand: `rows` × k, stored row-major (A[i][p] at data[i·ld + p]) or transposed (A[i][p] at
// data[p·ld + i]: wgrad's dY). ld counts bytes; int4 rows hold two values per byte (int4.h). Transposed int4
// does not occur (wgrad_s4 unpacks dY first).
struct OperandA {
  const uint8_t* data;
  std::size_t ld;
  bool int4;
  bool transposed;
};

// The B operand: k × cols, stored with the reduction along rows (B[p][j] at data[p·ld + j]: dgrad's W, wgrad's
// X) or along columns (B[p][j] at data[j·ld + p]: forward's W), int8 or int4; or already packed (`packed`
// non-null: the panels of a PackedWeights made for this target).
struct OperandB {
  const uint8_t* data;
  std::size_t ld;
  bool int4;
  bool reduction_rows;
  const void* packed;
};

struct GemmArgs {
  OperandA a;
  OperandB b;
  int32_t* c;       // rows × cols
  std::size_t ldc;  // elements between rows of C (≥ cols)
  std::size_t rows, cols, k;
  GemmEpilogue epilogue = {};
};

// Matrix j = o·inner + i of a batch of int8 products (GemmBatch, gemm.h): the operands and C moved to its first
// element (int8: strides in elements are strides in bytes).
inline GemmArgs matrix_of(const GemmArgs& base, const GemmBatch& batch, std::size_t j) {
  const std::size_t o = j / batch.inner, i = j % batch.inner;
  GemmArgs m = base;
  m.a.data += o * batch.a.outer_stride + i * batch.a.inner_stride;
  m.b.data += o * batch.b.outer_stride + i * batch.b.inner_stride;
  m.c += o * batch.c.outer_stride + i * batch.c.inner_stride;
  return m;
}

// Rows [r0, r1) of C and the rows of A they read (an unpacked int8 or int4 A: a row is `ld` bytes; a transposed
// A's rows are its columns).
inline GemmArgs rows_of(const GemmArgs& args, std::size_t r0, std::size_t r1) {
  GemmArgs r = args;
  r.a.data += args.a.transposed ? r0 : r0 * args.a.ld;
  r.c += r0 * args.ldc;
  r.rows = r1 - r0;
  return r;
}

struct CacheSizes {
  std::size_t l1d, l2;  // bytes, per core
};
const CacheSizes& cache_sizes();

// ---- Implemented in gemm_driver.cc, dispatched to the active target ------------------------------------------

// Applies QTRAIN_KERNEL_TARGET once (dispatch.cc); every entry point calls it before dispatching.
void ensure_dispatch_ready();
// C = A · B on the active target, split over `pool` when that pays.
void run(const GemmArgs& args, ThreadPool* pool);
// The same for every matrix of a batch: `first` is matrix 0 (int8 operands, no epilogue).
void run_batched(const GemmArgs& first, const GemmBatch& batch, ThreadPool* pool);
// The active target's Highway bit (the panel layout PackedWeights records).
int64_t target_bits();
// Bytes of B (k × cols) packed whole for the active target, and the packing itself (split over the pool's panels).
std::size_t packed_bytes(std::size_t k, std::size_t cols);
void pack_panels(const OperandB& b, std::size_t k, std::size_t cols, void* dst, ThreadPool* pool);

// ---- Operands ------------------------------------------------------------------------------------------------

inline const uint8_t* bytes(const int8_t* p) { return reinterpret_cast<const uint8_t*>(p); }

// W (m × k, int8 or int4 rows) as the B operand of forward (reduction along W's rows) or dgrad (reduction down its
// columns).
OperandB weights_operand(const uint8_t* w, std::size_t k, bool int4, PackedWeights::Use use);

}  // namespace qtrain::kernels::detail
