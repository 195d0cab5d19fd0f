// Seeded shuffling, mini-batching and optional augmentation of an ImageSet into int8 input batches.
//
// The order of an epoch is a pure function of (seed, epoch): Fisher–Yates from the last position down, position i
// swapping with j = CounterRng(seed, StreamKey{kShuffle, step = epoch}).below(i, i + 1). Nothing depends on
// earlier epochs, threads or call order, so a run can resume at any epoch and stay bit-exact.
//
// Augmentation (off by default), on the int8 values: a random crop with zero padding P — the image is padded by
// P on every side with int8 0, which is the normalized zero, i.e. each channel's mean (not black) — then cropped
// back to rows×cols at a uniform shift (dy, dx) ∈ [−P, P]², then mirrored left–right with probability 1/2:
//   out(r, c) = in(r + dy, c' + dx), c' = flip ? cols−1−c : c, and 0 where (r + dy, c' + dx) is outside the image.
// The draw of data-set image i in epoch e is a pure function of (seed, e, i): with rng = CounterRng(seed,
// StreamKey{kAugment, step = e}), dy = rng.below(4i, 2P+1) − P, dx = rng.below(4i+1, 2P+1) − P,
// flip = rng.u32(4i+2) >> 31 (if enabled). So fill(b) equals gather(batch_indices(b)), and a run stays a pure
// function of the seed for any batch split and thread count.
//
// Lifetime: a Batcher holds a reference to the ImageSet it was built from (it never copies the pixels). The set
// must outlive the Batcher and must not be modified while the Batcher exists; binding to a temporary set does not
// compile. The PixelNorm is copied.
//
// Threads: fill(), gather(), batches(), order() are const and may run concurrently with each other; start_epoch()
// must not run concurrently with any of them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

#include "qtrain/engine/data/idx.h"
#include "qtrain/engine/data/normalize.h"

namespace qtrain::data {

struct Augment {
  int pad = 0;        // P: crop shifts in [−P, P]; 0..min(rows, cols)
  bool flip = false;  // random horizontal flip
};

// One image's augmentation draw.
struct AugmentDraw {
  int dy = 0, dx = 0;
  bool flip = false;
};

class Batcher {
 public:
  // batch ≥ 1 (UsageError otherwise); `set` must be consistent (pixels.size() == count·image_size(),
  // labels.size() == count, count < 2^32) and `norm` must have one table per channel of the set. Without
  // `shuffle` every epoch is in file order. With `drop_last` a final partial batch is skipped; otherwise it is
  // returned short. Starts at epoch 0.
  Batcher(const ImageSet& set, const PixelNorm& norm, std::size_t batch, uint64_t seed, bool shuffle, bool drop_last,
          Augment augment = {});
  Batcher(ImageSet&& set, const PixelNorm& norm, std::size_t batch, uint64_t seed, bool shuffle, bool drop_last,
          Augment augment = {}) = delete;  // would dangle

  std::size_t batches() const;  // per epoch
  std::size_t batch_size() const { return batch_; }
  std::size_t image_size() const;  // rows·cols·channels int8 values per image
  std::size_t size() const { return set_->count; }
  uint64_t epoch() const { return epoch_; }

  // Makes `epoch`'s order (and augmentation draws) current, a pure function of (seed, epoch).
  void start_epoch(uint64_t epoch);

  // Batch b (< batches()) of the current epoch: writes n·image_size() int8 values (image-major, each image HWC,
  // value of channel c is norm.channels[c].table[p], augmented if enabled) to `images` and n labels to `labels`
  // (skipped if null), where n = the returned image count (batch_size(), or fewer for the last batch unless
  // drop_last). Real value of images[k] is images[k]·2^norm.exponent.
  std::size_t fill(std::size_t b, int8_t* images, int32_t* labels) const;

  // The data-set indices of batch b of the current epoch (what fill(b, …) returns, in the same order).
  std::span<const uint32_t> batch_indices(std::size_t b) const;
  // The whole permutation of the current epoch.
  std::span<const uint32_t> order() const { return order_; }

  // Like fill, for arbitrary data-set indices (e.g. samples drawn by an importance sampler); each index < size().
  void gather(std::span<const uint32_t> indices, int8_t* images, int32_t* labels) const;

  // The augmentation of data-set image `index` in the current epoch (all zero / false when augmentation is off).
  AugmentDraw augment_draw(uint32_t index) const;

  const PixelNorm& norm() const { return norm_; }
  const Augment& augment() const { return augment_; }

 private:
  const ImageSet* set_;
  PixelNorm norm_;
  std::size_t batch_;
  uint64_t seed_;
  bool shuffle_, drop_last_;
  Augment augment_;
  uint64_t epoch_ = 0;
  std::vector<uint32_t> order_;
};

}  // namespace qtrain::data
