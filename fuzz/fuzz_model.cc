// Model file parser (engine/serialize.h). The trailing CRC is recomputed so mutations reach the header and
// parameter checks; anything but qtrain::InputError is a finding. A model that loads must evaluate a batch.
#include <algorithm>
#include <memory>

#include "engine/serialize.h"
#include "engine/trainer.h"
#include "fuzz/fuzz_util.h"
#include "quant/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  std::string bytes(reinterpret_cast<const char*>(data), size);
  qtrain::fuzz::fix_model_crc(bytes);
  try {
    qtrain::LoadedModel m = qtrain::parse_model("fuzz.qtm", bytes);
    if (!m.model) __builtin_trap();
    // Small models also run a forward pass, so hostile weights and exponents meet the data plane.
    const std::size_t width = m.model->spec().sizes.front();
    if (width <= 4096 && m.model->parameter_count() <= 200000) {
      qtrain::data::ImageSet set;
      set.count = 2;
      set.rows = 1;
      set.cols = width;
      set.pixels.resize(2 * width);
      for (std::size_t i = 0; i < set.pixels.size(); ++i) set.pixels[i] = static_cast<uint8_t>(i * 97);
      set.labels = {0, static_cast<uint8_t>(std::min<std::size_t>(m.model->spec().sizes.back() - 1, 9))};
      qtrain::evaluate_model(*m.model, set, m.norm, nullptr);
    }
  } catch (const qtrain::InputError&) {
  }
  return 0;
}
