// CIFAR-10 binary reader (qtrain/engine/data/cifar.h): the input as one batch file of 3073-byte records. Anything but
// qtrain::InputError, any crash or sanitizer report is a finding.
#include "qtrain/engine/data/cifar.h"
#include "fuzz/fuzz_util.h"
#include "qtrain/quant/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  static qtrain::fuzz::MemFile batch("cifar");
  batch.set(data, size);
  try {
    const auto set = qtrain::data::read_cifar10({batch.path()});
    if (set.pixels.size() != set.count * set.image_size() || set.labels.size() != set.count) __builtin_trap();
    for (uint8_t l : set.labels)
      if (l >= set.classes) __builtin_trap();
  } catch (const qtrain::InputError&) {
  }
  return 0;
}
