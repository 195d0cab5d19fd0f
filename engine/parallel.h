// Splitting an op's loop over the step's thread pool. Tasks must write disjoint outputs; integer results then do
// not depend on the number of threads.
#pragma once

#include <algorithm>
#include <cstddef>
#include <functional>

#include "kernels/thread_pool.h"

namespace qtrain {

// A rough single-thread cost of a memory-bound pass, per byte it reads or writes (~10 GB/s): what for_tiles'
// callers give the pool's SplitAdvisor to decide whether a parallel call pays.
inline constexpr double kNsPerByte = 0.1;

// Runs fn(begin, end) over tiles covering [0, n): on the pool (about four tiles per thread) when there is one.
// fn must not throw (the pool runs it behind C frames).
inline void for_tiles(kernels::ThreadPool* pool, std::size_t n,
                      const std::function<void(std::size_t, std::size_t)>& fn) {
  if (n == 0) return;
  if (pool == nullptr || pool->threads() <= 1) {
    fn(0, n);
    return;
  }
  pool->parallel_for(n, std::max<std::size_t>(1, n / (4 * pool->threads())), fn);
}

// The same for work the caller estimates at `work_ns` on one thread: split only when the pool's SplitAdvisor says
// it pays (a fork-join costs microseconds on an idle machine, a scheduler time slice on a shared one). Results
// never depend on it.
inline void for_tiles(kernels::ThreadPool* pool, std::size_t n, double work_ns,
                      const std::function<void(std::size_t, std::size_t)>& fn) {
  if (pool != nullptr && !pool->worth_splitting(work_ns)) pool = nullptr;
  for_tiles(pool, n, fn);
}

}  // namespace qtrain
