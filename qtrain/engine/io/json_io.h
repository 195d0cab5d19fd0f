// Reading the JSON headers of qtrain's files (model files, checkpoints) defensively, and writing the parts they
// share (the model spec, the pixel normalization).
//
// Every getter checks the JSON type and the range before converting, so a hostile header cannot trigger an
// out-of-range float→int conversion, a negative size wrapping to a huge one, or a silent truncation. Failures are
// std::runtime_error whose message names the field by its path, e.g. "model.bits.weight must be an integer in
// 2..8 (found \"x\")"; the file readers prefix the file name and byte offset.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "qtrain/engine/data/normalize.h"
#include "qtrain/engine/models/model.h"

namespace qtrain::json_io {

// A JSON object and its path in the document ("model.bits"), for messages.
class Fields {
 public:
  Fields(const nlohmann::json& j, std::string path);
  // The member `key`; throws if it is missing.
  const nlohmann::json& at(const char* key) const;
  Fields object(const char* key) const;  // the member, which must be an object
  const nlohmann::json& array(const char* key) const;  // the member, which must be an array
  int64_t integer(const char* key, int64_t lo, int64_t hi) const;
  uint64_t unsigned_integer(const char* key, uint64_t hi) const;  // 0..hi
  double number(const char* key, double lo, double hi) const;     // finite, lo..hi
  std::string string(const char* key) const;
  std::string path(const char* key) const;  // "model.bits.weight"
  const nlohmann::json& json() const { return j_; }
  const std::string& where() const { return path_; }

 private:
  const nlohmann::json& j_;
  std::string path_;
};

// An array element `j` (the value at `path`) as an integer in lo..hi.
int64_t integer_value(const nlohmann::json& j, const std::string& path, int64_t lo, int64_t hi);

// "integer", "string", "array", … for messages.
std::string type_of(const nlohmann::json& j);

// The model as files record it: {"name": registry name, "config": {key: integer, number, string or array of
// integers}, "input": [h, w, c], "classes": n}.
nlohmann::json model_to_json(const ModelSpec& s);
// Reads and validates it: a known name (else "unknown model 'X': not built in and not registered; call
// qtrain::register_model(\"X\", factory) before loading"), a configuration the model takes (a built-in's keys
// and ranges; a registered model's factory checks its own when it builds), input sides in 1..kMaxImageSide and
// 1..kMaxLayerWidth channels (the MLP reads 1×1×width), 1..kMaxClasses classes.
ModelSpec model_from_json(const Fields& f);
nlohmann::json config_to_json(const ModelConfig& c);
// At most 256 keys; strings of at most 4096 bytes; lists of at most 65536 integers; numbers finite.
ModelConfig config_from_json(const Fields& f);
// The model spec of the files written before the registry (model file version 1, checkpoint versions 1 and 2):
// known kind, bit-widths, group count, layer sizes in 1..kMaxLayerWidth; for the convolutional models input
// geometry, classes, edge bits and norm.
ModelSpec spec_from_json(const Fields& f);
inline constexpr std::size_t kMaxLayerWidth = std::size_t{1} << 24;
inline constexpr int64_t kMaxImageSide = 4096, kMaxImageChannels = 64, kMaxClasses = 65536;

nlohmann::json norm_to_json(const data::PixelNorm& n);
// Reads the statistics and requires the stored exponent and table to be exactly the ones make_pixel_norm derives
// from them (so a file cannot carry an inconsistent or out-of-range table).
data::PixelNorm norm_from_json(const Fields& f);

}  // namespace qtrain::json_io
