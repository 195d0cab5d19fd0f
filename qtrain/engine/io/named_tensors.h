// The tensor lists of model files and checkpoints: each parameter and buffer recorded by name and shape in the
// JSON header, its values stored in the list's order. Loading binds every listed name to the built model's tensor
// of that name, so a file's order need not be the model's; a missing, extra, repeated or wrongly shaped entry is
// refused with a message naming it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "qtrain/engine/core/tensor.h"
#include "qtrain/engine/io/binary_io.h"
#include "qtrain/engine/io/json_io.h"
#include "qtrain/engine/models/model.h"

namespace qtrain::named_tensors {

using Named = std::vector<std::pair<std::string, Tensor*>>;

struct Entry {
  std::string name;
  std::size_t rows = 0, cols = 0;
};

Named params_of(Model& model);   // (name, master) of every parameter, in the model's order
Named buffers_of(Model& model);  // Model::named_buffers
// The entries of `named` as they are (a file written before buffers were listed stored them in the model's order).
std::vector<Entry> entries_of(const Named& named);

// [{"name", "rows", "cols"}] (and "dtype": "i32" when `dtype`, the checkpoints' form).
nlohmann::json to_json(const Named& named, bool dtype);
// Reads a list at `path` ("params"): names of 1..4096 bytes, rows and cols in 0..2^31, at most 2^20 entries;
// with `dtype` each entry's dtype must be "i32". std::runtime_error naming the entry.
std::vector<Entry> from_json(const nlohmann::json& list, const std::string& path, bool dtype);

// Bytes the listed tensors take in a file: per parameter an i32 exponent and rows·cols i32 values; per buffer one
// i32 exponent per column and rows·cols i32 values. Saturates at 2^62.
uint64_t param_bytes(const std::vector<Entry>& listed);
uint64_t buffer_bytes(const std::vector<Entry>& listed);

// The positions in `model` of the listed tensors, in the list's order. std::runtime_error naming the entry (by
// `path`[i] and name) when a listed name is not the model's or is listed twice, or has another shape, and naming the
// model's tensor when it is not listed. `kind` is "parameter" or "buffer".
std::vector<std::size_t> bind(const std::vector<Entry>& listed, const Named& model, const std::string& path,
                              const char* kind);
// named[at[i]].second for every i.
std::vector<Tensor*> tensors_at(const Named& named, const std::vector<std::size_t>& at);

// Values in the list's order. Parameters: i32 exponent in -200..200, then rows·cols i32 values with |v| <= 2^30.
// Buffers (running statistics): one i32 exponent per column (in -200..200), then rows·cols i32 values.
void put_params(std::string& out, const Named& params);
void read_params(binary_io::Reader& r, const std::vector<Tensor*>& tensors, const std::vector<Entry>& listed);
void put_buffers(std::string& out, const Named& buffers);
void read_buffers(binary_io::Reader& r, const std::vector<Tensor*>& tensors);

}  // namespace qtrain::named_tensors
