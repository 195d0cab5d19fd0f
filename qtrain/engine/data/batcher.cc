#include "qtrain/engine/data/batcher.h"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <utility>

#include "qtrain/quant/error.h"
#include "qtrain/quant/rng.h"

namespace qtrain::data {

namespace {

// Maps n pixels of interleaved channels (one table per channel) to int8.
void normalize_pixels(const PixelNorm& norm, const uint8_t* src, int8_t* dst, std::size_t n) {
  const std::size_t channels = norm.channels.size();
  for (std::size_t j = 0; j < n; ++j)
    for (std::size_t c = 0; c < channels; ++c) dst[j * channels + c] = norm.channels[c].table[src[j * channels + c]];
}

// One image, cropped at shift (dy, dx) with int8 0 outside and optionally mirrored (the formula in batcher.h).
void crop_flip(const PixelNorm& norm, const ImageSet& set, const AugmentDraw& d, const uint8_t* src, int8_t* dst) {
  const auto rows = static_cast<std::ptrdiff_t>(set.rows), cols = static_cast<std::ptrdiff_t>(set.cols);
  const std::size_t channels = set.channels;
  for (std::ptrdiff_t r = 0; r < rows; ++r) {
    const std::ptrdiff_t sr = r + d.dy;
    for (std::ptrdiff_t c = 0; c < cols; ++c) {
      const std::ptrdiff_t sc = (d.flip ? cols - 1 - c : c) + d.dx;
      int8_t* out = dst + static_cast<std::size_t>(r * cols + c) * channels;
      if (sr < 0 || sr >= rows || sc < 0 || sc >= cols) {
        std::fill_n(out, channels, int8_t{0});
      } else {
        normalize_pixels(norm, src + static_cast<std::size_t>(sr * cols + sc) * channels, out, 1);
      }
    }
  }
}

}  // namespace

Batcher::Batcher(const ImageSet& set, const PixelNorm& norm, std::size_t batch, uint64_t seed, bool shuffle,
                 bool drop_last, Augment augment)
    : set_(&set), norm_(norm), batch_(batch), seed_(seed), shuffle_(shuffle), drop_last_(drop_last), augment_(augment) {
  if (batch == 0) throw UsageError("batch size must be at least 1");
  if (set.count > UINT32_MAX) {
    throw UsageError("data set of " + std::to_string(set.count) + " images is too large (at most 2^32 − 1)");
  }
  if (set.channels == 0 || set.pixels.size() != set.count * set.image_size() || set.labels.size() != set.count) {
    throw UsageError("inconsistent ImageSet: " + std::to_string(set.count) + " images of " + std::to_string(set.rows) +
                     "×" + std::to_string(set.cols) + "×" + std::to_string(set.channels) + " but " +
                     std::to_string(set.pixels.size()) + " pixels and " + std::to_string(set.labels.size()) +
                     " labels");
  }
  if (norm.channels.size() != set.channels) {
    throw UsageError("the pixel normalization has " + std::to_string(norm.channels.size()) +
                     " channel(s), the images have " + std::to_string(set.channels));
  }
  const std::size_t side = std::min(set.rows, set.cols);
  if (augment.pad < 0 || static_cast<std::size_t>(augment.pad) > side) {
    throw UsageError("augmentation padding " + std::to_string(augment.pad) + " is out of range 0.." +
                     std::to_string(side) + " (the image side)");
  }
  order_.resize(set.count);
  start_epoch(0);
}

std::size_t Batcher::batches() const {
  const std::size_t n = set_->count;
  return drop_last_ ? n / batch_ : (n + batch_ - 1) / batch_;
}

std::size_t Batcher::image_size() const { return set_->image_size(); }

void Batcher::start_epoch(uint64_t epoch) {
  epoch_ = epoch;
  std::iota(order_.begin(), order_.end(), uint32_t{0});
  if (!shuffle_) return;
  const quant::CounterRng rng(seed_, quant::StreamKey{.purpose = quant::Purpose::kShuffle, .step = epoch});
  for (std::size_t i = order_.size(); i-- > 1;) {
    const uint32_t j = rng.below(i, static_cast<uint32_t>(i + 1));
    std::swap(order_[i], order_[j]);
  }
}

std::span<const uint32_t> Batcher::batch_indices(std::size_t b) const {
  if (b >= batches()) {
    throw UsageError("batch " + std::to_string(b) + " is out of range 0.." + std::to_string(batches()) +
                     " (exclusive)");
  }
  const std::size_t first = b * batch_;
  const std::size_t n = std::min(batch_, order_.size() - first);
  return std::span<const uint32_t>(order_).subspan(first, n);
}

std::size_t Batcher::fill(std::size_t b, int8_t* images, int32_t* labels) const {
  const auto idx = batch_indices(b);
  gather(idx, images, labels);
  return idx.size();
}

void Batcher::gather(std::span<const uint32_t> indices, int8_t* images, int32_t* labels) const {
  const std::size_t isz = set_->image_size(), npix = set_->rows * set_->cols;
  const bool augmenting = augment_.pad > 0 || augment_.flip;
  const uint8_t* pixels = set_->pixels.data();
  for (std::size_t k = 0; k < indices.size(); ++k) {
    const uint32_t i = indices[k];
    if (i >= set_->count) {
      throw UsageError("sample index " + std::to_string(i) + " is out of range 0.." + std::to_string(set_->count) +
                       " (exclusive)");
    }
    const uint8_t* src = pixels + std::size_t{i} * isz;
    int8_t* dst = images + k * isz;
    if (augmenting) {
      crop_flip(norm_, *set_, augment_draw(i), src, dst);
    } else {
      normalize_pixels(norm_, src, dst, npix);
    }
    if (labels != nullptr) labels[k] = set_->labels[i];
  }
}

AugmentDraw Batcher::augment_draw(uint32_t index) const {
  AugmentDraw d;
  const quant::CounterRng rng(seed_, quant::StreamKey{.purpose = quant::Purpose::kAugment, .step = epoch_});
  const uint64_t base = uint64_t{4} * index;
  if (augment_.pad > 0) {
    const auto span = static_cast<uint32_t>(2 * augment_.pad + 1);
    d.dy = static_cast<int>(rng.below(base, span)) - augment_.pad;
    d.dx = static_cast<int>(rng.below(base + 1, span)) - augment_.pad;
  }
  if (augment_.flip) d.flip = (rng.u32(base + 2) >> 31) != 0;
  return d;
}

}  // namespace qtrain::data
