// Model file parser (qtrain/engine/io/serialize.h), versions 1 and 2, with a registered user model
// (fuzz_models.h) beside the built-ins. The trailing CRC is recomputed so mutations reach the header and
// parameter checks; anything but qtrain::InputError is a finding. A model that loads must evaluate a batch.
#include <algorithm>
#include <memory>

#include "fuzz/fuzz_models.h"
#include "fuzz/fuzz_util.h"
#include "qtrain/engine/io/serialize.h"
#include "qtrain/engine/train/trainer.h"
#include "qtrain/quant/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, std::size_t size) {
  qtrain::fuzz::register_user_model();
  std::string bytes(reinterpret_cast<const char*>(data), size);
  qtrain::fuzz::fix_model_crc(bytes);
  try {
    qtrain::LoadedModel m = qtrain::parse_model("fuzz.qtm", bytes);
    if (!m.model) __builtin_trap();
    // Small models also run a forward pass, so hostile weights and exponents meet the data plane.
    const qtrain::ModelSpec& spec = m.model->spec();
    const qtrain::InputShape in = spec.input();
    qtrain::data::ImageSet set;
    set.count = 2;
    set.rows = in.h;
    set.cols = in.w;
    set.channels = in.c;
    const std::size_t classes = spec.output_classes();
    if (set.image_size() <= 4096 && m.model->parameter_count() <= 200000 &&
        m.norm.channels.size() == set.channels) {
      set.pixels.resize(2 * set.image_size());
      for (std::size_t i = 0; i < set.pixels.size(); ++i) set.pixels[i] = static_cast<uint8_t>(i * 97);
      set.labels = {0, static_cast<uint8_t>(std::min<std::size_t>(classes - 1, 9))};
      set.classes = std::min<std::size_t>(classes, 10);
      qtrain::evaluate_model(*m.model, set, m.norm, nullptr);
    }
  } catch (const qtrain::InputError&) {
  }
  return 0;
}
