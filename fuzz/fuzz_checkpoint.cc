// Checkpoint parser (qtrain/engine/io/checkpoint.h), versions 1 to 3, with a registered user model (fuzz_models.h).
// Every section CRC is recomputed so mutations reach the header, position, tensor and optimizer-state checks;
// anything but qtrain::InputError is a finding.
#include "fuzz/fuzz_models.h"
#include "fuzz/fuzz_util.h"
#include "qtrain/engine/io/checkpoint.h"
#include "qtrain/quant/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  qtrain::fuzz::register_user_model();
  std::string bytes(reinterpret_cast<const char*>(data), size);
  qtrain::fuzz::fix_checkpoint_crcs(bytes);
  try {
    qtrain::Checkpoint c = qtrain::parse_checkpoint("fuzz.qtc", bytes);
    if (!c.model) __builtin_trap();
  } catch (const qtrain::InputError&) {
  }
  return 0;
}
