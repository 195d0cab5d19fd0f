// The element-wise kernels of qtrain/kernels/eltwise.h that a training step runs on whole tensors (aligned sums, ReLU),
// split over the step's thread pool when its SplitAdvisor says it pays (qtrain/kernels/parallel.h). Tasks write
// disjoint parts of the output; what they reduce (ranges, column maxima) is merged after the join with integer min/max,
// which no order or split changes, so every result equals the one-pass kernel call's. `pool` may be null.
#pragma once

#include <cstddef>
#include <cstdint>

#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/thread_pool.h"

namespace qtrain {

// kernels::aligned_sum_range over element ranges: out written at shift 0 (must not alias a or b); the range
// (which includes 0) is the union of the tasks' ranges.
kernels::SumRange aligned_sum_range(kernels::ThreadPool* pool, const int32_t* a, const int32_t* b, std::size_t n,
                                    int la, int lb, int32_t* out, bool relu);
// kernels::aligned_sum_narrow over element ranges.
void aligned_sum_narrow(kernels::ThreadPool* pool, const int32_t* a, const int32_t* b, std::size_t n, int la, int lb,
                        int t, int32_t* out, bool relu);
// kernels::aligned_sum_col_max over row ranges; colmax[c] is the largest of the tasks' maxima.
void aligned_sum_col_max(kernels::ThreadPool* pool, const int32_t* a, const int32_t* b, std::size_t rows,
                         std::size_t cols, const int* la, const int* lb, uint64_t* colmax);
// kernels::aligned_sum_narrow_cols over row ranges.
void aligned_sum_narrow_cols(kernels::ThreadPool* pool, const int32_t* a, const int32_t* b, std::size_t rows,
                             std::size_t cols, const int* la, const int* lb, const int* t, int32_t* out);
// kernels::relu_i32 in place over element ranges; returns the largest of the tasks' maxima.
uint64_t relu_in_place(kernels::ThreadPool* pool, int32_t* x, std::size_t n);
// kernels::relu_backward_i32 over element ranges (dx may alias dy).
void relu_backward(kernels::ThreadPool* pool, const int32_t* dy, const int32_t* x, std::size_t n, int32_t* dx,
                   int32_t* dx2 = nullptr);

}  // namespace qtrain
