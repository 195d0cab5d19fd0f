// An in-memory data set: a user's own int8 features and int32 labels, trained and evaluated like an IDX set.
//
// The features enter the data plane unchanged: the set is an ImageSet with int8_features, so fit_pixel_norm gives
// it the identity normalization (byte q → int8 q, real value q · 2^exponent) and the Batcher, Trainer,
// evaluate_model, model files and checkpoints treat it like any other set (model files record the identity
// normalization instead of statistics). Values are symmetric int8, −127..127, the range every quantized layer's
// input takes; −128 is refused rather than clamped silently.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "qtrain/engine/data/idx.h"

namespace qtrain::data {

// One example's shape: rows × cols × channels (channels interleaved, NHWC), or a feature vector of F values as
// 1 × F × 1.
struct ExampleShape {
  std::size_t rows = 1, cols = 1, channels = 1;
  std::size_t size() const { return rows * cols * channels; }
};

// Copies `features` (labels.size() examples of shape.size() values each, example-major) and `labels` into a set of
// `classes` classes. Throws UsageError naming what is wrong and the valid range: a zero dimension or more than
// kMaxIdxElements values, no examples or 2^32 or more, a features size that is not labels.size() × shape.size(),
// classes outside 2..kMaxClasses, a label outside 0..classes−1 or a feature value of −128 (each with its index),
// |exponent| > 64.
ImageSet make_in_memory_set(std::span<const int8_t> features, std::span<const int32_t> labels, ExampleShape shape,
                            std::size_t classes, int exponent = 0);

// N × F feature vectors: make_in_memory_set with shape 1 × F × 1.
ImageSet make_feature_set(std::span<const int8_t> features, std::span<const int32_t> labels,
                          std::size_t features_per_example, std::size_t classes, int exponent = 0);

}  // namespace qtrain::data
