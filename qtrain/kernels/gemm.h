// int8 × int8 → int32 GEMMs in the three layouts a training step needs.
//
// The matrices of the functions below are dense row-major (leading dimension = row length); the *_batched
// functions take a batch of strided matrices (GemmBatch).
//   forward  Y[N×M]  = X[N×K]  · W[M×K]ᵀ     (reduction over K)
//   dgrad    dX[N×K] = dY[N×M] · W[M×K]      (reduction over M)
//   wgrad    dW[M×K] = dY[N×M]ᵀ · X[N×K]     (reduction over N)
//
// Accumulator bound: every output is a sum of `R` products of int8 values, |a·b| ≤ 128·128 = 2^14, so the
// int32 accumulator cannot overflow while R ≤ kMaxReduction (R · 2^14 ≤ 2^31 − 1 is not guaranteed at R = 2^17).
// Callers (the engine's operators) check R against kMaxReduction; the kernels themselves do no validation.
//
// Each function picks the best Highway target compiled in (see dispatch.h) and splits the work over the pool's
// threads when that pays (kMinParallelMacs below). The result is bit-identical for every thread count and every
// target, split or not: integer sums are exact.
//
// int4 operands (two per byte) have their own entry points in int4.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace qtrain::kernels {

class ThreadPool;

// Largest reduction length for which an int32 accumulator of int8·int8 products provably cannot overflow:
// 131071 · 128 · 128 = 2^31 − 2^14 < 2^31.
inline constexpr std::size_t kMaxReduction = 131071;

// What a forward product does to each output right after its last reduction step, while the output tile is
// still in L1 (instead of another pass over Y):  y[i][j] = sat32(y[i][j] + bias[j]), then max(y[i][j], 0) when
// `relu`. `bias` (one int32 per output column, already at the output's exponent) may be null; sat32 saturates
// at the int32 range.
struct GemmEpilogue {
  const int32_t* bias = nullptr;
  bool relu = false;
  bool empty() const { return bias == nullptr && !relu; }
};

// Y = X · Wᵀ, then the epilogue. `pool` may be null (single thread).
void gemm_forward(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                  ThreadPool* pool, const GemmEpilogue& epilogue = {});
// dX = dY · W.
void gemm_dgrad(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
                ThreadPool* pool);
// dW = dYᵀ · X.
void gemm_wgrad(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
                ThreadPool* pool);

// ---- Strided and batched products ----------------------------------------------------------------------------
// The same three layouts over a batch of matrices read where they are: rows of each operand `ld` elements apart
// (ld ≥ its row length), and matrix j = o·inner + i (o < outer, i < inner) at o·outer_stride + i·inner_stride
// elements from the operand's base. Two levels let per-head operands be read in place: Q, K and V of attention
// are [tokens × heads·d_head] activations (tokens = batch·seq), and the seq × d_head matrix of head h of sequence b
// starts at b·seq·ld + h·d_head with ld = heads·d_head: outer = batch (stride seq·ld), inner = heads (stride
// d_head). A stacked operand [batch·heads·rows × cols] is outer stride heads·rows·cols, inner stride rows·cols.
// Output matrices must not overlap. Accumulator bound as above: exact while the reduction ≤ kMaxReduction. The
// one check made: an ld shorter than its operand's rows throws std::invalid_argument naming the operand.
// Work is split over (matrix × row block) tasks when the batch has enough matrices, else over each matrix's
// tiles; each output element is the same integer sum either way, so the bits do not depend on the thread count.
struct MatrixStrides {
  std::size_t ld = 0;            // elements between consecutive rows of one matrix
  std::size_t outer_stride = 0;  // elements between matrices o and o + 1 (same i)
  std::size_t inner_stride = 0;  // elements between matrices i and i + 1 (same o)
};
struct GemmBatch {
  std::size_t outer = 1, inner = 1;  // outer · inner matrices
  MatrixStrides a, b, c;             // the first operand, the second, the output (names as in each layout)
  std::size_t count() const { return outer * inner; }
};

// Y_j[n×m] = X_j[n×k] · W_jᵀ (W_j m × k) for every matrix j of the batch (a = X, b = W, c = Y).
void gemm_forward_batched(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                          const GemmBatch& batch, ThreadPool* pool);
// dX_j[n×k] = dY_j[n×m] · W_j[m×k]  (a = dY, b = W, c = dX).
void gemm_dgrad_batched(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
                        const GemmBatch& batch, ThreadPool* pool);
// dW_j[m×k] = dY_j[n×m]ᵀ · X_j[n×k]  (a = dY, b = X, c = dW).
void gemm_wgrad_batched(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
                        const GemmBatch& batch, ThreadPool* pool);

// ---- Weights packed once, used by many products ---------------------------------------------------------------
// A layer's weights W[M×K] change once per optimizer step but feed every forward product of the step (and of an
// evaluation pass) and the step's dgrad. The functions above repack W on every call; PackedWeights holds W in
// the micro-kernels' panel layout instead, for one of the two products:
//   pack_weights_forward(w) → gemm_forward_packed(x, packed)   Y  = X · Wᵀ
//   pack_weights_dgrad(w)   → gemm_dgrad_packed(dy, packed)     dX = dY · W
// (forward and dgrad read W along different axes, so each has its own packing; a layer that needs both packs
// twice per step, once each). Results are bit-identical to the unpacked functions.
//
// The panel layout belongs to the kernel target active at packing time. A product run under another target
// (after force_target) repacks from a copy of W kept for that purpose: slower, still exact.
class PackedWeights {
 public:
  enum class Use { kNone, kForward, kDgrad };

  PackedWeights() = default;
  PackedWeights(PackedWeights&&) noexcept = default;
  PackedWeights& operator=(PackedWeights&&) noexcept = default;

  Use use() const { return use_; }
  bool empty() const { return use_ == Use::kNone; }
  std::size_t m() const { return m_; }
  std::size_t k() const { return k_; }
  bool int4() const { return int4_; }                // packed from int4 weights (int4.h)
  int64_t target() const { return target_; }         // Highway target bit of the panel layout
  const void* panels() const { return panels_.get(); }
  const uint8_t* source() const { return source_.get(); }  // W as given: int8, or int4 rows (int4.h)
  std::size_t bytes() const { return panel_bytes_ + source_bytes_; }  // memory held

  // For the packing functions (gemm.cc, int4.cc): allocate and fill.
  struct Free {
    void operator()(void* p) const;
  };
  static PackedWeights allocate(Use use, std::size_t m, std::size_t k, bool int4, int64_t target,
                                std::size_t panel_bytes, const uint8_t* source, std::size_t source_bytes);
  void* mutable_panels() { return panels_.get(); }

 private:
  Use use_ = Use::kNone;
  std::size_t m_ = 0, k_ = 0;
  bool int4_ = false;
  int64_t target_ = 0;
  std::unique_ptr<void, Free> panels_;  // 64-byte aligned
  std::size_t panel_bytes_ = 0;
  std::unique_ptr<uint8_t[]> source_;
  std::size_t source_bytes_ = 0;
};

// W[m×k] packed for gemm_forward_packed / gemm_dgrad_packed. Packing is split over the pool's panels.
PackedWeights pack_weights_forward(const int8_t* w, std::size_t m, std::size_t k, ThreadPool* pool);
PackedWeights pack_weights_dgrad(const int8_t* w, std::size_t m, std::size_t k, ThreadPool* pool);
// Y[n×m] = X[n×k] · Wᵀ with `w` from pack_weights_forward (m, k taken from it).
void gemm_forward_packed(const int8_t* x, const PackedWeights& w, int32_t* y, std::size_t n, ThreadPool* pool,
                         const GemmEpilogue& epilogue = {});
// dX[n×k] = dY[n×m] · W with `w` from pack_weights_dgrad.
void gemm_dgrad_packed(const int8_t* dy, const PackedWeights& w, int32_t* dx, std::size_t n, ThreadPool* pool);

// When a product uses the pool: never below this many multiply-adds (n·m·k, ~3 µs on AVX3_DL: less than waking a
// pool thread costs even on an idle machine); above it, when the pool's SplitAdvisor (thread_pool.h) says the
// time saved exceeds what its recent parallel calls cost beyond their work — measured at run time, because on a
// shared machine that cost goes from microseconds to a scheduler time slice (bench/README.md, "Threads").
inline constexpr std::size_t kMinParallelMacs = std::size_t{1} << 20;

// How a product C[rows×cols] = A[rows×k]·B[k×cols] is split over `threads` threads on the active target (for
// tests and benchmarks; qtrain/kernels/gemm_driver.cc describes the three ways). forward: (n, m, k); dgrad: (n, k, m);
// wgrad: (m, k, n).
enum class GemmSplit { kPanels, kRows, kReduction };
GemmSplit gemm_split(std::size_t rows, std::size_t cols, std::size_t k, std::size_t threads);

// Plain scalar references (no SIMD, no threads): what the tests compare the kernels against.
namespace ref {
void gemm_forward(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k);
void gemm_dgrad(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k);
void gemm_wgrad(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k);
// The batched products, one matrix and one element at a time.
void gemm_forward_batched(const int8_t* x, const int8_t* w, int32_t* y, std::size_t n, std::size_t m, std::size_t k,
                          const GemmBatch& batch);
void gemm_dgrad_batched(const int8_t* dy, const int8_t* w, int32_t* dx, std::size_t n, std::size_t m, std::size_t k,
                        const GemmBatch& batch);
void gemm_wgrad_batched(const int8_t* dy, const int8_t* x, int32_t* dw, std::size_t n, std::size_t m, std::size_t k,
                        const GemmBatch& batch);
// The epilogue over Y[n×m], one element at a time.
void gemm_epilogue(int32_t* y, std::size_t n, std::size_t m, const GemmEpilogue& epilogue);
}  // namespace ref

}  // namespace qtrain::kernels
