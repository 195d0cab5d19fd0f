#include "qtrain/engine/core/split_eltwise.h"

#include <algorithm>
#include <vector>

#include "qtrain/kernels/parallel.h"

namespace qtrain {

namespace {
// Element ranges are split in whole blocks of kBlock elements. The aligned-sum kernels try int32 lanes per block of
// 1024 elements and redo a block where a shift or the add overflowed in int64: a task's range and sums are exact
// whatever its bounds (the kernels' contract), so any split is; whole blocks also give every task the blocks of
// the one-pass call, and no short scalar tails inside the tensor.
constexpr std::size_t kBlock = 1024;

kernels::PassSplit element_split(kernels::ThreadPool* pool, std::size_t n) { return {pool, n, kBlock}; }
// The single-thread cost of a pass touching `bytes_per_element` bytes per element.
double work_of(std::size_t n, double bytes_per_element) {
  return kernels::kNsPerByte * bytes_per_element * static_cast<double>(n);
}
}  // namespace

// kernels::aligned_sum_range over element ranges; the range (which includes 0 by definition) is the union of the
// tasks' ranges. out is written at shift 0 (must not alias a or b).
kernels::SumRange aligned_sum_range(kernels::ThreadPool* pool, const int32_t* a, const int32_t* b, std::size_t n,
                                    int la, int lb, int32_t* out, bool relu) {
  const kernels::PassSplit split = element_split(pool, n);
  std::vector<kernels::SumRange> part(std::max<std::size_t>(split.tiles(), 1));  // each {0, 0} until written
  split.run(work_of(n, 3 * sizeof(int32_t)), [&](std::size_t t, std::size_t i0, std::size_t i1) {
    part[t] = kernels::aligned_sum_range(a + i0, b + i0, i1 - i0, la, lb, out + i0, relu);
  });
  kernels::SumRange range;
  for (const kernels::SumRange& r : part) {
    range.min = std::min(range.min, r.min);
    range.max = std::max(range.max, r.max);
  }
  return range;
}

void aligned_sum_narrow(kernels::ThreadPool* pool, const int32_t* a, const int32_t* b, std::size_t n, int la, int lb,
                        int t, int32_t* out, bool relu) {
  element_split(pool, n).run(work_of(n, 3 * sizeof(int32_t)), [&](std::size_t, std::size_t i0, std::size_t i1) {
    kernels::aligned_sum_narrow(a + i0, b + i0, i1 - i0, la, lb, t, out + i0, relu);
  });
}

// kernels::aligned_sum_col_max over row ranges; colmax[c] is the largest of the tasks' maxima.
void aligned_sum_col_max(kernels::ThreadPool* pool, const int32_t* a, const int32_t* b, std::size_t rows,
                         std::size_t cols, const int* la, const int* lb, uint64_t* colmax) {
  std::fill(colmax, colmax + cols, uint64_t{0});
  const kernels::PassSplit split(pool, rows);
  kernels::TilePartials<uint64_t> part(colmax, split, cols);
  const double work = work_of(rows * cols, 2 * sizeof(int32_t));  // a and b read
  split.run(work, [&](std::size_t t, std::size_t r0, std::size_t r1) {
    kernels::aligned_sum_col_max(a + r0 * cols, b + r0 * cols, r1 - r0, cols, la, lb, part.at(t));
  });
  part.merge([](uint64_t& m, uint64_t v) { m = std::max(m, v); });
}

void aligned_sum_narrow_cols(kernels::ThreadPool* pool, const int32_t* a, const int32_t* b, std::size_t rows,
                             std::size_t cols, const int* la, const int* lb, const int* t, int32_t* out) {
  const double work = work_of(rows * cols, 3 * sizeof(int32_t));  // a, b read, out written
  kernels::for_tiles(pool, rows, work, [&](std::size_t r0, std::size_t r1) {
    kernels::aligned_sum_narrow_cols(a + r0 * cols, b + r0 * cols, r1 - r0, cols, la, lb, t, out + r0 * cols);
  });
}

// kernels::relu_i32 in place over element ranges; returns the largest of the tasks' maxima.
uint64_t relu_in_place(kernels::ThreadPool* pool, int32_t* x, std::size_t n) {
  const kernels::PassSplit split = element_split(pool, n);
  std::vector<uint64_t> part(std::max<std::size_t>(split.tiles(), 1), 0);
  split.run(work_of(n, 2 * sizeof(int32_t)), [&](std::size_t t, std::size_t i0, std::size_t i1) {
    part[t] = kernels::relu_i32(x + i0, i1 - i0, x + i0);
  });
  return *std::max_element(part.begin(), part.end());
}

// kernels::relu_backward_i32 over element ranges (dx may alias dy).
void relu_backward(kernels::ThreadPool* pool, const int32_t* dy, const int32_t* x, std::size_t n, int32_t* dx,
                   int32_t* dx2) {
  const double bytes = dx2 != nullptr ? 4 * sizeof(int32_t) : 3 * sizeof(int32_t);  // dy, x read; dx (dx2) written
  element_split(pool, n).run(work_of(n, bytes), [&](std::size_t, std::size_t i0, std::size_t i1) {
    kernels::relu_backward_i32(dy + i0, x + i0, i1 - i0, dx + i0, dx2 != nullptr ? dx2 + i0 : nullptr);
  });
}

}  // namespace qtrain
