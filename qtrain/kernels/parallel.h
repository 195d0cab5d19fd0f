// Splitting a pass over the step's thread pool: the one splitter kernels/, quant/ and engine/ share (internal,
// not installed).
//
// A pass over [0, n) (elements, rows, image lines, channels) is cut into tiles of whole multiples of `align`, about
// four per thread; each parallel task runs one tile. Tasks must write disjoint outputs, and what they reduce is
// merged after the join with integer sums, minima or maxima (TilePartials), which no order or split changes: so
// every result is the one-pass result whatever the thread count, and whether the pass was split at all — which
// lets the pool's SplitAdvisor decide that from measurement.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <vector>

#include "qtrain/kernels/thread_pool.h"

namespace qtrain::kernels {

// A rough single-thread cost of a memory-bound pass, per byte it reads or writes (~10 GB/s): the work estimate
// callers give the pool's SplitAdvisor to decide whether a parallel call pays.
inline constexpr double kNsPerByte = 0.1;

class PassSplit {
 public:
  // One tile (no parallel call) without a pool, with one thread, or for n ≤ align.
  PassSplit(ThreadPool* pool, std::size_t n, std::size_t align = 1)
      : pool_(pool), n_(n), tile_(std::max<std::size_t>(n, 1)) {
    align = std::max<std::size_t>(align, 1);
    if (pool == nullptr || pool->threads() <= 1 || n <= align) {
      pool_ = nullptr;
      return;
    }
    const std::size_t per_thread = std::max<std::size_t>(1, n / (4 * pool->threads()));
    tile_ = (per_thread + align - 1) / align * align;
  }

  std::size_t size() const { return n_; }
  // The number of tiles: the length of per-tile partial arrays. Tile t is [t·tile, min(n, (t + 1)·tile)).
  std::size_t tiles() const { return n_ == 0 ? 0 : (n_ + tile_ - 1) / tile_; }

  // fn(t, begin, end) over every tile on the pool, when work of about `work_ns` on one thread is worth a parallel
  // call (the pool's SplitAdvisor); otherwise one call fn(0, 0, n) on this thread. An exception in a task is
  // rethrown here (the first by tile order) after every task has finished: the pool runs tasks behind C frames.
  template <class Fn>
  void run(double work_ns, Fn&& fn) const {
    if (n_ == 0) return;
    if (tiles() <= 1 || !pool_->worth_splitting(work_ns)) {
      fn(std::size_t{0}, std::size_t{0}, n_);
      return;
    }
    run_tiles(fn);
  }
  // The same, split whenever the pool has threads (passes too cheap to measure, or tests of the split path).
  template <class Fn>
  void run(Fn&& fn) const {
    if (n_ == 0) return;
    if (tiles() <= 1) {
      fn(std::size_t{0}, std::size_t{0}, n_);
      return;
    }
    run_tiles(fn);
  }

 private:
  template <class Fn>
  void run_tiles(Fn& fn) const {
    std::vector<std::exception_ptr> errors(tiles());
    pool_->parallel_for(tiles(), 1, [&](std::size_t t0, std::size_t t1) {
      for (std::size_t t = t0; t < t1; ++t) {
        try {
          fn(t, t * tile_, std::min(n_, (t + 1) * tile_));
        } catch (...) {
          errors[t] = std::current_exception();
        }
      }
    });
    for (const std::exception_ptr& e : errors)
      if (e) std::rethrow_exception(e);
  }

  ThreadPool* pool_;
  std::size_t n_, tile_;
};

// fn(begin, end) over the tiles of [0, n): PassSplit without the tile index.
inline void for_tiles(ThreadPool* pool, std::size_t n, const std::function<void(std::size_t, std::size_t)>& fn) {
  PassSplit(pool, n).run([&](std::size_t, std::size_t b, std::size_t e) { fn(b, e); });
}
inline void for_tiles(ThreadPool* pool, std::size_t n, double work_ns,
                      const std::function<void(std::size_t, std::size_t)>& fn) {
  PassSplit(pool, n).run(work_ns, [&](std::size_t, std::size_t b, std::size_t e) { fn(b, e); });
}

// Per-tile partials of a reduction with `width` outputs (per-column sums, minima, maxima) over a PassSplit: the
// task of tile 0 — the whole pass when it is not split — writes the caller's array `out`, every other task a
// scratch row of its own; merge() then folds the rows that were written into out, in tile order.
template <class T>
class TilePartials {
 public:
  TilePartials(T* out, const PassSplit& split, std::size_t width)
      : out_(out),
        width_(width),
        scratch_(split.tiles() > 1 ? (split.tiles() - 1) * width : 0),
        written_(std::max<std::size_t>(split.tiles(), 1), 0) {}

  // The array of the task of tile t (called from that task only).
  T* at(std::size_t t) {
    written_[t] = 1;
    return t == 0 ? out_ : scratch_.data() + (t - 1) * width_;
  }

  // out[c] = combine(out[c], partial[c]) for every other task's partial.
  template <class Combine>
  void merge(Combine&& combine) {
    for (std::size_t t = 1; t < written_.size(); ++t) {
      if (!written_[t]) continue;
      const T* p = scratch_.data() + (t - 1) * width_;
      for (std::size_t c = 0; c < width_; ++c) combine(out_[c], p[c]);
    }
  }

 private:
  T* out_;
  std::size_t width_;
  std::vector<T> scratch_;
  std::vector<uint8_t> written_;  // one byte per tile: tasks never share one
};

}  // namespace qtrain::kernels
