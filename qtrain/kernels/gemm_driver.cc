// The GEMM driver: blocking and threading of the packed-panel product behind every entry point of gemm.h and
// int4.h, compiled once per Highway target (packing in gemm_pack-inl.h, micro-kernels in gemm_kernel-inl.h, tile
// geometry in gemm_tile-inl.h; the public functions in gemm.cc and gemm_packed.cc).
//
// All layouts run one product, C[i][j] = Σ_p A[i][p] · B[p][j], on operands packed for the micro-kernels:
//   forward  Y[n×m]  = X · Wᵀ    A = X,    B(p, j) = W[j][p]   (B packed from W's rows: a 32-bit transpose)
//   dgrad    dX[n×k] = dY · W    A = dY,   B(p, j) = W[p][j]   (B packed by interleaving W's rows)
//   wgrad    dW[m×k] = dYᵀ · X   A = dYᵀ,  B(p, j) = X[p][j]   (dY transposed, B by interleaving X's rows)
//
// Packing. B is cut into panels of PanelWidth() columns. Within a panel, the reduction is grouped by kGroup
// consecutive p, and one group of one column is a 32-bit lane: [panel][group][column][kGroup]. A is copied
// row by row with its reduction zero-padded to whole groups — except on AVX3_DL for an int8 row-major A whose
// reduction is whole groups, which the kernel reads where it is (PrepareA). Padding contributes nothing, so k,
// m and n need not be multiples of anything. int4 operands are unpacked by these packing routines (nibble → int8 in
// registers), so the micro-kernels are the same for both widths. PackedWeights (gemm.h) is B packed once.
//
// Micro-kernel: an MR-row × NR-vector tile of C lives in MR·NR vector accumulators, one output per lane, so
// there is never a horizontal sum. (A first version reduced dot products of K-contiguous rows and summed each
// accumulator at the end: those sums dominated the short reductions of dgrad and wgrad, and even the forward
// product ran ~1.5× slower than this on AVX3_DL.) Per group, the kernel loads NR
// vectors of the panel and broadcasts A[i][group] (kGroup values in one 32-bit lane) to each row i:
//  * AVX3_DL: kGroup = 4, `vpdpbusd` (VNNI) adds four u8×s8 products into each int32 lane. B is the
//    unsigned operand, so the packer stores b+128 (b xor 0x80) and the kernel subtracts 128·Σ_p A[i][p] at the
//    end. vpdpbusd wraps modulo 2^32 (the non-saturating form), as does the int32 subtraction; the true result
//    fits int32 (reductions ≤ kMaxReduction, gemm.h), so it is exact although Σ(b+128)·a alone may not fit.
//  * Other SIMD targets: kGroup = 2, int8 widened to int16 at packing time, `ReorderWidenMulAccumulate`
//    (pmaddwd: two int16 products per int32 lane, |2·128·128| = 2^15 cannot overflow).
//  * SCALAR: the same packing and tiling with a plain C++ kernel (one column per "vector").
//
// Blocking. The reduction is cut into K blocks of KcGroups() groups, sized from cpuinfo's L1d so that one
// panel's block of B (e.g. 384 × 64 bytes on AVX3_DL with a 48 KiB L1d) stays in L1 while every row tile of A
// streams past it; the first K block stores C, the later ones add to it. Work is split three ways:
//  * by panels (square-ish products, the default): A prepared once; each task packs the B blocks of its panels
//    and multiplies them by all of A while they are hot, so packed B never moves between cores;
//  * by row blocks (tall A — the im2col products of a CNN — or too few panels for the threads): B packed once
//    (in parallel), each task prepares its rows of A (a quarter of L2) and multiplies them by all of B;
//  * by reduction ranges (few output tiles, long reduction — wgrad of a tall-skinny product): each task
//    multiplies its K range into a partial C and the partials are added. Integer sums are exact and the true
//    result fits int32, so every partial (and every prefix of their sum) does too: any split gives the same bits.
// A batch of strided matrices (GemmBatched) is split over (matrix × row block) tasks, or runs its matrices in turn.
// Every element is computed with the same integer operations whatever the split, so the result is
// bit-identical for any thread count and any target.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "qtrain/kernels/gemm_driver.cc"
#include "hwy/aligned_allocator.h"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/kernels/gemm_internal.h"
#include "qtrain/kernels/gemm_kernel-inl.h"
#include "qtrain/kernels/gemm_pack-inl.h"
#include "qtrain/kernels/gemm_tile-inl.h"
#include "qtrain/kernels/thread_pool.h"

HWY_BEFORE_NAMESPACE();
namespace qtrain::kernels::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// ---- Blocking ------------------------------------------------------------------------------------------------

// The epilogue of the product's last K block, for the columns a call writes: `bias` at C's column 0.
struct Epilogue {
  const int32_t* bias;
  bool relu;
};

// C[rows × ncols] (leading dimension ldc) = A (packed rows, leading dimension lda, at this K block) · one
// panel's block of `groups` groups; stored, or added when `accumulate`. Row tiles one after the other against
// the same panel block, which stays in L1; each tile gets the epilogue `ep` (null: none; its bias at this
// panel's first column) right after the kernel wrote it.
void PanelRows(const PackedA* a, std::size_t lda, const int32_t* sums, const PackedB* b, std::size_t groups, int32_t* c,
               std::size_t ldc, std::size_t rows, std::size_t ncols, bool accumulate, const Epilogue* ep) {
  const std::size_t lanes = hn::Lanes(D32());
  const std::size_t nr = (ncols + lanes - 1) / lanes;
  const std::size_t tile = MaxRows(nr);
  for (std::size_t i = 0; i < rows; i += tile) {
    const std::size_t mr = std::min(tile, rows - i);
    const int32_t* s = sums != nullptr ? sums + i : nullptr;
    if (mr == kMR && nr == kNR) {
      KernelNN<kMR, kNR>(a + i * lda, lda, b, groups, s, c + i * ldc, ldc, ncols, accumulate);
    } else {
      kKernels[(mr - 1) * kNR + (nr - 1)](a + i * lda, lda, b, groups, s, c + i * ldc, ldc, ncols, accumulate);
    }
    if (ep != nullptr) TileEpilogue(c + i * ldc, ldc, mr, ncols, ep->bias, ep->relu);
  }
}

// The same epilogue shifted to the panel whose first column is `col` (null stays null).
HWY_INLINE const Epilogue* AtColumn(const Epilogue* ep, std::size_t col, Epilogue* storage) {
  if (ep == nullptr) return nullptr;
  *storage = {ep->bias != nullptr ? ep->bias + col : nullptr, ep->relu};
  return storage;
}

// A K block of at most this many groups is "short": C's traffic outweighs B's (see MultiplyBlock).
constexpr std::size_t kShortBlock = 32;

// One K block of `groups` groups over panels [p0, p1): C[rows × cols] (at column 0, leading dimension ldc) =/+=
// A (packed, at this K block) · the panels' blocks, found at b + (p − p0)·stride. When the blocks of all these
// panels fit in half of L1 (a narrow C), or the block is short and they fit in a quarter of L2, the rows go in
// the outer loop: C is then written one row chunk at a time across its full width, not panel by panel (which
// made the int32 output of a short-reduction dgrad go to memory several times). Otherwise panel by panel, each
// block staying in L1.
void MultiplyBlock(const PackedA* a, std::size_t lda, const int32_t* sums, const PackedB* b, std::size_t stride,
                   std::size_t p0, std::size_t p1, std::size_t groups, int32_t* c, std::size_t ldc, std::size_t rows,
                   std::size_t cols, bool accumulate, const Epilogue* ep) {
  Epilogue at;
  const std::size_t pw = PanelWidth();
  const std::size_t bytes = (p1 - p0) * groups * GroupElems() * sizeof(PackedB);
  const bool rows_outer = p1 - p0 > 1 && (bytes <= detail::cache_sizes().l1d / 2 ||
                                          (groups <= kShortBlock && bytes <= detail::cache_sizes().l2 / 4));
  if (rows_outer) {
    for (std::size_t i = 0; i < rows; i += kRowQuantum) {
      const std::size_t mr = std::min(kRowQuantum, rows - i);
      for (std::size_t p = p0; p < p1; ++p) {
        PanelRows(a + i * lda, lda, sums != nullptr ? sums + i : nullptr, b + (p - p0) * stride, groups,
                  c + i * ldc + p * pw, ldc, mr, std::min(pw, cols - p * pw), accumulate, AtColumn(ep, p * pw, &at));
      }
    }
  } else {
    for (std::size_t p = p0; p < p1; ++p) {
      PanelRows(a, lda, sums, b + (p - p0) * stride, groups, c + p * pw, ldc, rows, std::min(pw, cols - p * pw),
                accumulate, AtColumn(ep, p * pw, &at));
    }
  }
}

// Multiply-adds per nanosecond one thread of this target sustains on mid-sized products (bench/README.md): the
// time estimate the pool weighs against its fork-join overhead.
constexpr double MacsPerNs() {
#if HWY_TARGET == HWY_AVX3_DL
  return 300.0;
#elif HWY_TARGET == HWY_AVX3
  return 85.0;
#elif HWY_TARGET == HWY_AVX2
  return 60.0;
#elif HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
  return 2.0;
#else
  return 25.0;
#endif
}

// C (rows × cols, leading dimension ldc) =/+= A (packed, lda; reduction groups [g0, g1) of B) · panels
// [p0, p1) of B, K block by K block: the first block of the range stores (subtracting the VNNI offset `sums`),
// later ones add. When one K block of all the panels fits in half of L1, each K block's panels are packed
// together and multiplied rows-outer (MultiplyBlock); otherwise panel by panel, each block packed just before
// its rows stream past it.
void MultiplyPanels(const OperandB& b, const PackedB* prepacked, std::size_t k, std::size_t n, std::size_t p0,
                    std::size_t p1, std::size_t g0, std::size_t g1, const PackedA* a, std::size_t lda,
                    const int32_t* sums, int32_t* c, std::size_t ldc, std::size_t rows, Slot slot, const Epilogue* ep) {
  const std::size_t kc = KcGroups();
  const std::size_t np = p1 - p0;
  const std::size_t len0 = std::min(kc, g1 - g0);
  const std::size_t bytes = np * len0 * GroupElems() * sizeof(PackedB);
  const bool together = np > 1 && (bytes <= detail::cache_sizes().l1d / 2 ||
                                   (len0 <= kShortBlock && bytes <= detail::cache_sizes().l2 / 4));
  std::size_t stride = 0;
  if (together) {
    for (std::size_t g = g0; g < g1; g += kc) {
      const std::size_t len = std::min(kc, g1 - g);
      const PackedB* bb = PanelBlocks(b, prepacked, k, n, p0, p1, g, len, slot, &stride);
      MultiplyBlock(a + (g - g0) * kGroup, lda, g == g0 ? sums : nullptr, bb, stride, p0, p1, len, c, ldc, rows, n,
                    g > g0, g + len == g1 ? ep : nullptr);
    }
    return;
  }
  for (std::size_t p = p0; p < p1; ++p) {
    for (std::size_t g = g0; g < g1; g += kc) {
      const std::size_t len = std::min(kc, g1 - g);
      const PackedB* bb = PanelBlocks(b, prepacked, k, n, p, p + 1, g, len, slot, &stride);
      MultiplyBlock(a + (g - g0) * kGroup, lda, g == g0 ? sums : nullptr, bb, stride, p, p + 1, len, c, ldc, rows, n,
                    g > g0, g + len == g1 ? ep : nullptr);
    }
  }
}

// How Gemm splits a product over `threads` threads (see the top of the file); `threads` is already 1 below
// kMinParallelMacs.
GemmSplit ChooseSplit(std::size_t rows, std::size_t cols, std::size_t k, std::size_t threads) {
  const std::size_t kp = DivUp(k, kGroup) * kGroup;
  const std::size_t panels = DivUp(cols, PanelWidth()), tiles = DivUp(rows, kMR);
  // A reduction much longer than C is wide or tall (wgrad of a tall-skinny product): output tiles are too few
  // to balance over the threads, and adding the partial sums costs next to nothing.
  if (threads > 1 && k >= 4 * std::max(rows, cols)) return GemmSplit::kReduction;
  // A larger than a quarter of L2 (it is read once per panel), or too few panels for the threads.
  const std::size_t a_bytes = rows * kp * sizeof(PackedA);
  if (tiles >= 2 * threads && (a_bytes > detail::cache_sizes().l2 / 2 || (threads > 1 && panels < 2 * threads))) {
    return GemmSplit::kRows;
  }
  return GemmSplit::kPanels;
}

void Gemm(const detail::GemmArgs& args, ThreadPool* pool) {
  const std::size_t rows = args.rows, cols = args.cols, k = args.k, ldc = args.ldc;
  if (rows == 0 || cols == 0) return;
  const Epilogue epilogue{args.epilogue.bias, args.epilogue.relu};
  const Epilogue* const ep = args.epilogue.empty() ? nullptr : &epilogue;
  if (k == 0) {
    for (std::size_t i = 0; i < rows; ++i) std::memset(args.c + i * ldc, 0, cols * sizeof(int32_t));
    if (ep != nullptr) TileEpilogue(args.c, ldc, rows, cols, ep->bias, ep->relu);
    return;
  }
  const std::size_t groups = DivUp(k, kGroup), kp = groups * kGroup;
  const std::size_t panels = DivUp(cols, PanelWidth());
  const bool vnni = HWY_TARGET == HWY_AVX3_DL;
  std::size_t threads = pool != nullptr ? pool->threads() : 1;
  const std::size_t macs = rows * cols * k;
  if (macs < kMinParallelMacs || (threads > 1 && !pool->worth_splitting(static_cast<double>(macs) / MacsPerNs()))) {
    threads = 1;
  }
  ThreadPool* const par = threads > 1 ? pool : nullptr;
  const OperandB& b = args.b;
  const auto* prepacked = static_cast<const PackedB*>(b.packed);
  const GemmSplit split = ChooseSplit(rows, cols, k, threads);

  // By reduction ranges: each task multiplies its K range (whole K blocks where possible) into a partial C.
  if (split == GemmSplit::kReduction) {
    const std::size_t per = DivUp(groups, threads), chunks = DivUp(groups, per);
    auto* partial =
        static_cast<int32_t*>(detail::scratch(Slot::kPartial, (chunks - 1) * rows * cols * sizeof(int32_t)));
    par->parallel_for(chunks, 1, [&](std::size_t c0, std::size_t c1) {
      for (std::size_t ci = c0; ci < c1; ++ci) {
        const std::size_t g0 = ci * per, g1 = std::min(groups, g0 + per);
        int32_t* out = ci == 0 ? args.c : partial + (ci - 1) * rows * cols;  // partials: leading dimension cols
        auto* sums = vnni ? static_cast<int32_t*>(detail::scratch(Slot::kTaskSums, rows * sizeof(int32_t))) : nullptr;
        const ReadyA ra =
            PrepareA(args.a, 0, rows, g0 * kGroup, std::min(k, g1 * kGroup), sums, Slot::kTaskA, Slot::kTaskTransposed);
        MultiplyPanels(b, prepacked, k, cols, 0, panels, g0, g1, ra.a, ra.lda, sums, out, ci == 0 ? ldc : cols, rows,
                       Slot::kTaskB, nullptr);
      }
    });
    for (std::size_t ci = 1; ci < chunks; ++ci) {
      const int32_t* src = partial + (ci - 1) * rows * cols;
      for (std::size_t i = 0; i < rows; ++i) {  // every prefix fits int32 (see top)
        for (std::size_t j = 0; j < cols; ++j) args.c[i * ldc + j] += src[i * cols + j];
      }
    }
    if (ep != nullptr) TileEpilogue(args.c, ldc, rows, cols, ep->bias, ep->relu);  // only the sum is final
    return;
  }

  // By row blocks: B packed whole, each task packs and multiplies its rows of A.
  if (split == GemmSplit::kRows) {
    const PackedB* bp = prepacked;
    if (bp == nullptr) {
      auto* dst =
          static_cast<PackedB*>(detail::scratch(Slot::kPackedB, panels * groups * GroupElems() * sizeof(PackedB)));
      PackAllPanels(b, k, cols, dst, par);
      bp = dst;
    }
    // Rows per task: a quarter of L2 of packed A, and at least two tasks per thread for balance.
    const std::size_t l2_rows = detail::cache_sizes().l2 / 4 / (kp * sizeof(PackedA));
    std::size_t mc = std::max<std::size_t>(1, l2_rows / kRowQuantum) * kRowQuantum;
    if (threads > 1) mc = std::min(mc, DivUp(DivUp(rows, kRowQuantum), 2 * threads) * kRowQuantum);
    const auto task = [&](std::size_t i0, std::size_t i1) {
      auto* sums =
          vnni ? static_cast<int32_t*>(detail::scratch(Slot::kTaskSums, (i1 - i0) * sizeof(int32_t))) : nullptr;
      const ReadyA ra = PrepareA(args.a, i0, i1, 0, k, sums, Slot::kTaskA, Slot::kTaskTransposed);
      MultiplyPanels(b, bp, k, cols, 0, panels, 0, groups, ra.a, ra.lda, sums, args.c + i0 * ldc, ldc, i1 - i0,
                     Slot::kTaskB, ep);
    };
    if (par != nullptr) {
      par->parallel_for(rows, mc, task);
    } else {
      for (std::size_t i = 0; i < rows; i += mc) task(i, std::min(rows, i + mc));
    }
    return;
  }

  // By panels: A prepared once here; each task packs (or finds prepacked) the blocks of its panels.
  auto* sums = vnni ? static_cast<int32_t*>(detail::scratch(Slot::kSums, rows * sizeof(int32_t))) : nullptr;
  const ReadyA ra = PrepareA(args.a, 0, rows, 0, k, sums, Slot::kPackedA, Slot::kTransposed);
  const auto task = [&](std::size_t p0, std::size_t p1) {
    MultiplyPanels(b, prepacked, k, cols, p0, p1, 0, groups, ra.a, ra.lda, sums, args.c, ldc, rows, Slot::kTaskB, ep);
  };
  if (par != nullptr) {
    par->parallel_for(panels, 1, task);
  } else {
    task(0, panels);
  }
}

// Every matrix of a batch (gemm.h's GemmBatch; `first` is matrix 0). Whether to split is decided for the whole
// batch's work. A batch of at least as many matrices as threads is cut into (matrix × row block) tasks, at least
// two per thread, each a single-threaded Gemm on its rows (the attention products: many matrices, each too small
// to split on its own); a smaller batch runs its matrices one after the other, each split over its tiles.
void GemmBatched(const detail::GemmArgs& first, const GemmBatch& batch, ThreadPool* pool) {
  const std::size_t count = batch.count(), rows = first.rows;
  if (count == 0 || rows == 0 || first.cols == 0) return;
  std::size_t threads = pool != nullptr ? pool->threads() : 1;
  const std::size_t macs = count * rows * first.cols * first.k;
  if (macs < kMinParallelMacs || (threads > 1 && !pool->worth_splitting(static_cast<double>(macs) / MacsPerNs()))) {
    threads = 1;
  }
  if (threads == 1 || count < threads) {
    for (std::size_t j = 0; j < count; ++j) Gemm(detail::matrix_of(first, batch, j), threads == 1 ? nullptr : pool);
    return;
  }
  const std::size_t quanta = DivUp(rows, kRowQuantum);
  const std::size_t blocks_wanted = std::min(quanta, DivUp(2 * threads, count));
  const std::size_t mc = DivUp(quanta, blocks_wanted) * kRowQuantum;  // rows per task
  const std::size_t blocks = DivUp(rows, mc);
  pool->parallel_for(count * blocks, 1, [&](std::size_t t0, std::size_t t1) {
    for (std::size_t t = t0; t < t1; ++t) {
      const std::size_t r0 = t % blocks * mc;
      Gemm(detail::rows_of(detail::matrix_of(first, batch, t / blocks), r0, std::min(rows, r0 + mc)), nullptr);
    }
  });
}

// ---- This target's entry points ------------------------------------------------------------------------------

int64_t TargetBits() { return HWY_TARGET; }

void GemmEntry(const detail::GemmArgs& args, ThreadPool* pool) { Gemm(args, pool); }

void BatchedEntry(const detail::GemmArgs& first, const GemmBatch& batch, ThreadPool* pool) {
  GemmBatched(first, batch, pool);
}

GemmSplit SplitEntry(std::size_t rows, std::size_t cols, std::size_t k, std::size_t threads) {
  if (rows * cols * k < kMinParallelMacs) threads = 1;
  return ChooseSplit(rows, cols, k, std::max<std::size_t>(threads, 1));
}

// Bytes of B (k × n) packed whole for this target.
std::size_t PackedBytes(std::size_t k, std::size_t n) {
  return DivUp(n, PanelWidth()) * DivUp(k, kGroup) * GroupElems() * sizeof(PackedB);
}

void PackEntry(const OperandB& b, std::size_t k, std::size_t n, void* dst, ThreadPool* pool) {
  PackAllPanels(b, k, n, static_cast<PackedB*>(dst), pool);
}

}  // namespace qtrain::kernels::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

// ---- Target-independent part: dispatch, scratch, cache sizes ---------------------------------------------------
#if HWY_ONCE
#include <cpuinfo.h>

#include <new>

namespace qtrain::kernels {
HWY_EXPORT(TargetBits);
HWY_EXPORT(GemmEntry);
HWY_EXPORT(BatchedEntry);
HWY_EXPORT(PackedBytes);
HWY_EXPORT(PackEntry);
HWY_EXPORT(SplitEntry);

namespace detail {
namespace {
class Scratch {
 public:
  void* get(std::size_t bytes) {
    if (bytes > capacity_) {
      data_ = hwy::AllocateAligned<uint8_t>(bytes);
      if (data_ == nullptr) throw std::bad_alloc();
      capacity_ = bytes;
    }
    return data_.get();
  }

 private:
  hwy::AlignedFreeUniquePtr<uint8_t[]> data_;
  std::size_t capacity_ = 0;
};

thread_local Scratch tl_scratch[static_cast<int>(Slot::kCount)];

}  // namespace

void* scratch(Slot slot, std::size_t bytes) { return tl_scratch[static_cast<int>(slot)].get(bytes); }

const CacheSizes& cache_sizes() {
  // cpuinfo's per-core data caches; the defaults (32 KiB, 1 MiB) when it cannot tell.
  static const CacheSizes sizes = [] {
    CacheSizes s{32 * 1024, 1024 * 1024};
    if (cpuinfo_initialize()) {
      if (cpuinfo_get_l1d_caches_count() > 0 && cpuinfo_get_l1d_cache(0)->size >= 16 * 1024) {
        s.l1d = cpuinfo_get_l1d_cache(0)->size;
      }
      if (cpuinfo_get_l2_caches_count() > 0 && cpuinfo_get_l2_cache(0)->size >= 128 * 1024) {
        s.l2 = cpuinfo_get_l2_cache(0)->size;
      }
    }
    return s;
  }();
  return sizes;
}

void ensure_dispatch_ready();  // dispatch.cc: applies QTRAIN_KERNEL_TARGET once

void run(const GemmArgs& args, ThreadPool* pool) {
  ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(GemmEntry)(args, pool);
}

void run_batched(const GemmArgs& first, const GemmBatch& batch, ThreadPool* pool) {
  ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(BatchedEntry)(first, batch, pool);
}

int64_t target_bits() {
  ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(TargetBits)();
}

std::size_t packed_bytes(std::size_t k, std::size_t cols) {
  ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(PackedBytes)(k, cols);
}

void pack_panels(const OperandB& b, std::size_t k, std::size_t cols, void* dst, ThreadPool* pool) {
  ensure_dispatch_ready();
  HWY_DYNAMIC_DISPATCH(PackEntry)(b, k, cols, dst, pool);
}

}  // namespace detail

GemmSplit gemm_split(std::size_t rows, std::size_t cols, std::size_t k, std::size_t threads) {
  detail::ensure_dispatch_ready();
  return HWY_DYNAMIC_DISPATCH(SplitEntry)(rows, cols, k, threads);
}

}  // namespace qtrain::kernels
#endif  // HWY_ONCE
