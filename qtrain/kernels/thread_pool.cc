#include "qtrain/kernels/thread_pool.h"

#include <pthreadpool.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <new>

namespace qtrain::kernels {

std::size_t available_processors() {
  // The affinity mask, not the core count: a container or `taskset` may give us fewer processors than the
  // machine has, and cpuinfo may report fewer cores than the logical processors we can actually use.
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return 1;
  const int count = CPU_COUNT(&set);
  return count > 0 ? static_cast<std::size_t>(count) : 1;
}

void SplitAdvisor::observe(double wall_ns, double busy_ns) {
  const double sample = std::max(0.0, wall_ns - busy_ns / static_cast<double>(threads_));
  const double old = overhead_ns_.load(std::memory_order_relaxed);
  // Up at once, down halfway: one lucky fast call on a busy machine must not re-enable splitting.
  overhead_ns_.store(sample > old ? sample : 0.5 * (old + sample), std::memory_order_relaxed);
}

bool SplitAdvisor::worth_splitting(double work_ns) {
  if (threads_ <= 1) return false;
  const double overhead = overhead_ns();
  if (work_ns * (1.0 - 1.0 / static_cast<double>(threads_)) > overhead) return true;
  if (refused_ns_.fetch_add(work_ns, std::memory_order_relaxed) + work_ns < kProbeRatio * overhead) return false;
  refused_ns_.store(0.0, std::memory_order_relaxed);
  return true;
}

ThreadPool::ThreadPool(std::size_t threads, Split split)
    : threads_(threads == 0 ? available_processors() : threads), split_(split), advisor_(threads_) {
  if (threads_ > 1) {
    pool_ = pthreadpool_create(threads_);
    if (pool_ == nullptr) throw std::bad_alloc();
  }
}

ThreadPool::~ThreadPool() {
  if (pool_ != nullptr) pthreadpool_destroy(pool_);
}

namespace {
using RangeFn = std::function<void(std::size_t, std::size_t)>;

// pthreadpool passes (start, length) of each tile; qtrain's callers think in [begin, end).
void run_tile(void* context, std::size_t start, std::size_t length) {
  (*static_cast<const RangeFn*>(context))(start, start + length);
}
}  // namespace

void ThreadPool::parallel_for(std::size_t n, std::size_t tile, const RangeFn& fn) {
  if (n == 0) return;
  tile = std::max<std::size_t>(tile, 1);
  if (pool_ == nullptr || n <= tile) {
    // Same tiles as the parallel path, so a caller that depends on tile boundaries sees no difference.
    for (std::size_t begin = 0; begin < n; begin += tile) fn(begin, std::min(n, begin + tile));
    return;
  }
  // `fn` must not throw: the exception would have to cross pthreadpool's C frames. Each tile is timed (two
  // clock reads, next to tiles of microseconds or more) so the advisor learns what the call cost beyond them.
  using Clock = std::chrono::steady_clock;
  std::atomic<int64_t> busy_ns{0};
  const RangeFn timed = [&](std::size_t begin, std::size_t end) {
    const auto t0 = Clock::now();
    fn(begin, end);
    busy_ns.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count(),
                      std::memory_order_relaxed);
  };
  const auto start = Clock::now();
  // After the region, workers spin for the next one while the machine is quiet and sleep once it is not
  // (SplitAdvisor::kSpinOverheadNs): on cores shared with other processes a spinning worker steals the time
  // slice the caller needs, and every region's barrier then waits for a reschedule.
  const uint32_t flags = advisor_.spin_workers() ? 0 : PTHREADPOOL_FLAG_YIELD_WORKERS;
  pthreadpool_parallelize_1d_tile_1d(pool_, &run_tile, const_cast<RangeFn*>(&timed), n, tile, flags);
  const auto wall = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - start).count();
  advisor_.observe(static_cast<double>(wall), static_cast<double>(busy_ns.load(std::memory_order_relaxed)));
}

}  // namespace qtrain::kernels
