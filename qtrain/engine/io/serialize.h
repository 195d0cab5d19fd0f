// Saved models: the model's registry name and configuration, the pixel normalization, every parameter's int32
// master weights and every buffer (running statistics), by name, in one file.
//
// Layout (little-endian), version 2:  "QTRNMDL1" | u32 version | u32 header bytes | JSON header | per listed
// parameter: i32 exponent, rows·cols × i32 | per listed buffer: one i32 exponent per column, rows·cols × i32 |
// u32 CRC-32 of everything before it. The header is {"model": {"name", "config", "input", "classes"},
// "pixel_norm", "params": [{"name", "rows", "cols"}], "buffers": [the same]}; loading builds the model through
// the registry (registry.h: a user's model must be registered first) and fills each tensor by its name.
// Version 1 (written before the registry) is read too: its "model" is a built-in's ModelSpec and its buffers
// follow the model's order without a list.
// The header's pixel_norm holds exponent, mean, stddev and table: numbers and one 256-entry table for single-channel
// data (the form of the first files), arrays with one entry per channel otherwise; both are read.
// Writing goes to a temporary file in the same directory, which is fsynced and renamed over the target, so a
// crash never leaves a half-written model behind.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "qtrain/engine/core/quant_policy.h"
#include "qtrain/engine/data/normalize.h"
#include "qtrain/engine/models/model.h"

namespace qtrain {

struct LoadedModel {
  std::unique_ptr<Model> model;
  data::PixelNorm norm;
  std::optional<QuantPolicy> policy;  // the quantization policy it was trained with (the header's "policy")
};

// Throws std::runtime_error naming the file when it cannot be written. A policy (the one the model was trained
// with) goes into the header's optional "policy" field; files without it load as before.
void save_model(const std::string& path, Model& model, const data::PixelNorm& norm,
                const QuantPolicy* policy = nullptr);
// Throws InputError naming the file and byte offset when it is missing, truncated, corrupt or of another version,
// or when its header is invalid (a model neither built in nor registered, a configuration out of range,
// non-numbers, a parameter or buffer the model does not have or has in another shape, or one it has missing, sizes
// that do not match the file). Nothing is allocated beyond the file's own size before the sizes are checked.
LoadedModel load_model(const std::string& path);
// The same for a file already in memory; `path` is only used in messages (the fuzz target calls this).
LoadedModel parse_model(const std::string& path, const std::string& bytes);

// Writes `bytes` to `path` atomically: a temporary file `path.tmp.<pid>` in the same directory, fsync, rename over
// `path`, fsync of the directory. A crash at any moment leaves either the old file or the new one, never a mix
// (at worst a stray temporary file). Shared by every writer of result files and checkpoints.
void write_file_atomic(const std::string& path, const std::string& bytes);

}  // namespace qtrain
