// IDX images parser (raw, and gzip when the input is a gzip stream: detection is by content), paired with a
// valid labels file. Any exception other than qtrain::InputError, any crash or sanitizer report is a finding.
#include "qtrain/engine/data/idx.h"
#include "fuzz/fuzz_util.h"
#include "qtrain/quant/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static qtrain::fuzz::MemFile images("images"), labels("labels");
  images.set(data, size);
  // Labels that match the declared image count (when small), so a valid images file parses to the end.
  const uint32_t count = size >= 8 ? qtrain::fuzz::be32(data + 4) : 1;
  labels.set(qtrain::fuzz::idx_labels(count >= 1 && count <= 4096 ? count : 1));
  try {
    const auto set = qtrain::data::read_idx(images.path(), labels.path());
    if (set.pixels.size() != set.count * set.rows * set.cols || set.labels.size() != set.count) __builtin_trap();
  } catch (const qtrain::InputError&) {
  }
  return 0;
}
