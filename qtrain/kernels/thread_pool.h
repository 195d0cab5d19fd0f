// A thin owner of a pthreadpool (the pool XNNPACK uses). Kernels split work into independent index ranges, so
// results never depend on the number of threads — nor on whether a call is split at all, which lets the pool
// decide that from measurement (SplitAdvisor).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>

struct pthreadpool;

namespace qtrain::kernels {

// Whether splitting work over a pool pays, from what the pool's recent parallel calls cost beyond their work:
// waking the workers and waiting for the last one to finish — a few microseconds on an idle machine, up to a
// scheduler time slice (milliseconds) when other processes hold the other cores, since a fork-join call ends
// only when every worker has run. Pure bookkeeping (the pool feeds it times), so it can be tested as is.
class SplitAdvisor {
 public:
  // After refusing this many times the estimated overhead's worth of work, the advisor splits once anyway (a
  // probe): the estimate recovers when the machine quiets down, and probing costs at most ~1/kProbeRatio of the
  // time spent unsplit.
  static constexpr double kProbeRatio = 16.0;
  // Below this estimated overhead the machine counts as quiet: the other processors are ours, and workers may
  // spin between parallel regions (waking a sleeping worker costs 12–40 µs on a KVM guest, a spinning one
  // starts within a microsecond). Above it other processes hold the processors, and a spinning worker would
  // take the time slice the caller needs, so workers sleep. A contended fork-join costs a scheduler time slice
  // (milliseconds), far above this line.
  static constexpr double kSpinOverheadNs = 100e3;

  explicit SplitAdvisor(std::size_t threads) : threads_(threads) {}
  // A parallel call over all threads took `wall_ns`; its tasks ran for `busy_ns` in total. Its overhead is what
  // it took beyond a perfect split, wall − busy/threads; the estimate rises to a larger sample at once and
  // moves halfway down to a smaller one.
  void observe(double wall_ns, double busy_ns);
  // Whether work of about `work_ns` on one thread should be split: the time saved, work·(1 − 1/threads), must
  // exceed the estimated overhead (0 before any observation, so the first call splits and measures), or it is
  // time for a probe.
  bool worth_splitting(double work_ns);
  double overhead_ns() const { return overhead_ns_.load(std::memory_order_relaxed); }
  // Whether the pool's workers should spin, not sleep, after the next parallel region (see kSpinOverheadNs).
  bool spin_workers() const { return overhead_ns() < kSpinOverheadNs; }

 private:
  std::size_t threads_;
  std::atomic<double> overhead_ns_{0.0};
  std::atomic<double> refused_ns_{0.0};  // work refused since the last probe
};

class ThreadPool {
 public:
  // kMeasured: split work when the SplitAdvisor says it pays. kAlways: whenever there is more than one thread
  // (tests of the parallel paths, benchmarks of scaling).
  enum class Split { kMeasured, kAlways };

  // threads == 0: one thread per processor this process may run on (its affinity mask).
  explicit ThreadPool(std::size_t threads = 0, Split split = Split::kMeasured);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  std::size_t threads() const { return threads_; }
  // Calls fn(begin, end) on disjoint tiles that cover [0, n), each at most `tile` long, in parallel. Parallel
  // calls are timed for the advisor.
  void parallel_for(std::size_t n, std::size_t tile, const std::function<void(std::size_t, std::size_t)>& fn);
  // Whether work of about `work_ns` on one thread is worth a parallel call now (always false with one thread).
  bool worth_splitting(double work_ns) {
    return pool_ != nullptr && (split_ == Split::kAlways || advisor_.worth_splitting(work_ns));
  }
  const SplitAdvisor& advisor() const { return advisor_; }
  pthreadpool* raw() const { return pool_; }

 private:
  std::size_t threads_ = 1;
  pthreadpool* pool_ = nullptr;  // null when single-threaded
  Split split_ = Split::kMeasured;
  SplitAdvisor advisor_;
};

// Processors available to this process (sched_getaffinity), at least 1.
std::size_t available_processors();

// Splitting a pass over a pool (PassSplit, for_tiles) lives in qtrain/kernels/parallel.h, internal to the library.

}  // namespace qtrain::kernels
