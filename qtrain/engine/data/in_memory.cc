#include "qtrain/engine/data/in_memory.h"

#include <string>

#include "qtrain/quant/error.h"

namespace qtrain::data {

ImageSet make_in_memory_set(std::span<const int8_t> features, std::span<const int32_t> labels, ExampleShape shape,
                            std::size_t classes, int exponent) {
  const std::string shape_text =
      std::to_string(shape.rows) + "x" + std::to_string(shape.cols) + "x" + std::to_string(shape.channels);
  if (shape.rows == 0 || shape.cols == 0 || shape.channels == 0 || shape.rows > kMaxIdxElements ||
      shape.cols > kMaxIdxElements || shape.channels > kMaxIdxElements || shape.size() > kMaxIdxElements)
    throw UsageError("in-memory data set: example shape " + shape_text +
                     " is out of range (every dimension >= 1, at most " + std::to_string(kMaxIdxElements) +
                     " values per example)");
  if (labels.empty() || labels.size() > UINT32_MAX)
    throw UsageError("in-memory data set: " + std::to_string(labels.size()) +
                     " labels; the number of examples must be in 1..4294967295");
  if (features.size() / shape.size() != labels.size() || features.size() % shape.size() != 0)
    throw UsageError("in-memory data set: " + std::to_string(features.size()) + " feature values do not make " +
                     std::to_string(labels.size()) + " examples of " + shape_text + " (expected " +
                     std::to_string(labels.size()) + " x " + std::to_string(shape.size()) + " values)");
  if (classes < 2 || classes > kMaxClasses)
    throw UsageError("in-memory data set: " + std::to_string(classes) + " classes is out of range 2.." +
                     std::to_string(kMaxClasses));
  if (exponent < -64 || exponent > 64)
    throw UsageError("in-memory data set: exponent " + std::to_string(exponent) + " is out of range -64..64");
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || static_cast<std::size_t>(labels[i]) >= classes)
      throw UsageError("in-memory data set: label " + std::to_string(labels[i]) + " of example " + std::to_string(i) +
                       " is out of range 0.." + std::to_string(classes - 1));
  ImageSet set;
  set.count = labels.size();
  set.rows = shape.rows;
  set.cols = shape.cols;
  set.channels = shape.channels;
  set.classes = classes;
  set.int8_features = true;
  set.feature_exponent = exponent;
  set.labels.assign(labels.begin(), labels.end());
  set.pixels.resize(features.size());
  for (std::size_t i = 0; i < features.size(); ++i) {
    if (features[i] == -128)
      throw UsageError("in-memory data set: feature value -128 at index " + std::to_string(i) + " (example " +
                       std::to_string(i / shape.size()) + ") is out of range -127..127 (symmetric int8)");
    set.pixels[i] = static_cast<uint8_t>(features[i]);
  }
  return set;
}

ImageSet make_feature_set(std::span<const int8_t> features, std::span<const int32_t> labels,
                          std::size_t features_per_example, std::size_t classes, int exponent) {
  return make_in_memory_set(features, labels, ExampleShape{1, features_per_example, 1}, classes, exponent);
}

}  // namespace qtrain::data
