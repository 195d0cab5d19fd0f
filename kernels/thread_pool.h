// A thin owner of a pthreadpool (the pool XNNPACK uses). Kernels split work into independent index ranges, so
// results never depend on the number of threads.
#pragma once

#include <cstddef>
#include <functional>

struct pthreadpool;

namespace qtrain::kernels {

class ThreadPool {
 public:
  // threads == 0: one thread per processor this process may run on (its affinity mask).
  explicit ThreadPool(std::size_t threads = 0);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  std::size_t threads() const { return threads_; }
  // Calls fn(begin, end) on disjoint tiles that cover [0, n), each at most `tile` long, in parallel.
  void parallel_for(std::size_t n, std::size_t tile, const std::function<void(std::size_t, std::size_t)>& fn);
  pthreadpool* raw() const { return pool_; }

 private:
  std::size_t threads_ = 1;
  pthreadpool* pool_ = nullptr;  // null when single-threaded
};

// Processors available to this process (sched_getaffinity), at least 1.
std::size_t available_processors();

}  // namespace qtrain::kernels
