// IDX labels parser (raw or gzip), paired with a valid images file whose count matches the declared label count
// (when small), so the fuzzer reaches the label checks.
#include "qtrain/engine/data/idx.h"
#include "fuzz/fuzz_util.h"
#include "qtrain/quant/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static qtrain::fuzz::MemFile images("images"), labels("labels");
  const uint32_t count = size >= 8 ? qtrain::fuzz::be32(data + 4) : 1;
  images.set(qtrain::fuzz::idx_images(count >= 1 && count <= 4096 ? count : 1));
  labels.set(data, size);
  try {
    const auto set = qtrain::data::read_idx(images.path(), labels.path());
    for (uint8_t l : set.labels)
      if (l >= set.classes) __builtin_trap();
  } catch (const qtrain::InputError&) {
  }
  return 0;
}
