#include "kernels/thread_pool.h"

#include <pthreadpool.h>
#include <sched.h>

#include <algorithm>
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

ThreadPool::ThreadPool(std::size_t threads) : threads_(threads == 0 ? available_processors() : threads) {
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
  // `fn` must not throw: the exception would have to cross pthreadpool's C frames.
  // Workers sleep between regions instead of spinning: on a machine whose cores are shared with other processes a
  // spinning worker steals the time slice the caller needs, and every region's barrier then waits for a reschedule.
  pthreadpool_parallelize_1d_tile_1d(pool_, &run_tile, const_cast<RangeFn*>(&fn), n, tile,
                                     PTHREADPOOL_FLAG_YIELD_WORKERS);
}

}  // namespace qtrain::kernels
