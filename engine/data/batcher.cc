#include "engine/data/batcher.h"

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <string>
#include <utility>

#include "quant/error.h"
#include "quant/rng.h"

namespace qtrain::data {

Batcher::Batcher(const ImageSet& set, const PixelNorm& norm, std::size_t batch, uint64_t seed, bool shuffle,
                 bool drop_last)
    : set_(&set), norm_(norm), batch_(batch), seed_(seed), shuffle_(shuffle), drop_last_(drop_last) {
  if (batch == 0) throw UsageError("batch size must be at least 1");
  if (set.count > UINT32_MAX) {
    throw UsageError("data set of " + std::to_string(set.count) + " images is too large (at most 2^32 − 1)");
  }
  if (set.pixels.size() != set.count * set.image_size() || set.labels.size() != set.count) {
    throw UsageError("inconsistent ImageSet: " + std::to_string(set.count) + " images of " + std::to_string(set.rows) +
                     "×" + std::to_string(set.cols) + " but " + std::to_string(set.pixels.size()) + " pixels and " +
                     std::to_string(set.labels.size()) + " labels");
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
  const quant::CounterRng rng(seed_, quant::stream_id(quant::Purpose::kShuffle, epoch, 0));
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

std::size_t Batcher::fill(std::size_t b, int8_t* images, uint8_t* labels) const {
  const auto idx = batch_indices(b);
  gather(idx, images, labels);
  return idx.size();
}

void Batcher::gather(std::span<const uint32_t> indices, int8_t* images, uint8_t* labels) const {
  const std::size_t isz = set_->image_size();
  const uint8_t* pixels = set_->pixels.data();
  for (std::size_t k = 0; k < indices.size(); ++k) {
    const std::size_t i = indices[k];
    if (i >= set_->count) {
      throw UsageError("sample index " + std::to_string(i) + " is out of range 0.." + std::to_string(set_->count) +
                       " (exclusive)");
    }
    const uint8_t* src = pixels + i * isz;
    int8_t* dst = images + k * isz;
    for (std::size_t j = 0; j < isz; ++j) dst[j] = norm_.table[src[j]];
    if (labels != nullptr) labels[k] = set_->labels[i];
  }
}

}  // namespace qtrain::data
