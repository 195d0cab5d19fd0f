// Checkpoints: everything a training run needs to continue bit-exactly after a crash or a deliberate stop.
//
// File layout (little-endian), format version 3:
//   "QTRNCKPT" | u32 version | u32 section count (4)
//   then each section:  4-byte tag | u64 payload length | payload | u32 CRC-32 of tag, length and payload
//     "HEAD"  JSON: the model (registry name, configuration, input, classes: as in model files), the pixel
//             normalization, the training configuration that matters for resuming (seed, batch, lr, schedule,
//             epochs, warm-up epochs, optimizer, SGD momentum and weight decay, AdamW's betas, eps and weight decay —
//             warm-up, optimizer and AdamW absent in older files —, augmentation), a fingerprint of the training data (image count, rows,
//             cols, channels, CRC-32), the position (epoch, step in the epoch, global step, steps per epoch, the
//             epoch's running loss/accuracy sums), the health monitor's state, the finished epochs' metrics, the
//             quantization policy if the run has one ("policy", io/policy_file.h; optional), the
//             parameters WGHT holds ("tensors": name, rows, cols, dtype "i32") and the buffers BUFS holds
//             ("buffers": name, rows, cols)
//     "WGHT"  per listed parameter: i32 exponent, rows·cols i32 master weights
//     "OPTM"  the optimizer's state (Optimizer::state): string name ("sgd", "adamw"; the one HEAD's config.optimizer names), u32 entry count, then per entry:
//             string parameter name, string slot name ("momentum"; AdamW's "m", "v"), u32 rows, u32 cols, i32 exponent, rows·cols
//             i32 values. A string is a u32 byte count and the bytes. A parameter without entries has no state yet.
//     "BUFS"  per listed buffer (running statistics of the norm layers): one i32 exponent per column, rows·cols i32
//   and nothing after the last section. Loading builds the model through the registry (registry.h: a user's model
//   must be registered first) and binds every listed tensor to the model's tensor of that name.
// Version 2 is read: its HEAD records a built-in's ModelSpec and no buffer list (BUFS follows the model's order).
// Version 1 (qtrain before the Optimizer interface) is read as well: like version 2, but its third section is
// "MOMT" (per tensor of the list: i32 exponent, rows·cols i32 momentum buffer), which becomes the SGD momentum.
// There is no separate random-generator state: the data order is a pure function of (seed, epoch) and every
// stochastic rounding of (seed, global step, tensor id, element), so seed + global step are the whole state.
// The kernels are bit-identical on every SIMD target and thread count, so a checkpoint may be resumed with
// other --threads or --kernel-target values and still continue bit-exactly.
//
// Writing uses write_file_atomic (temporary file, fsync, rename, directory fsync): a process killed at any moment
// leaves the previous checkpoint intact. Reading checks every section's CRC before parsing it, every size against
// the file before allocating, and every value's range; any problem is an InputError naming the file, the byte
// offset and what is wrong.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "qtrain/engine/data/idx.h"
#include "qtrain/engine/data/normalize.h"
#include "qtrain/engine/models/model.h"
#include "qtrain/engine/optim/optimizer.h"
#include "qtrain/engine/train/trainer.h"

namespace qtrain {

inline constexpr uint32_t kCheckpointVersion = 3;  // the version written; versions 1 to 3 are read

struct Checkpoint {
  TrainConfig config;  // model spec, seed, batch, lr, schedule, epochs, optimizer, momentum, weight decay, augmentation
  data::PixelNorm norm;
  std::size_t train_count = 0, image_rows = 0, image_cols = 0, image_channels = 1;
  uint32_t train_crc = 0;  // Trainer::training_data_crc of the run's training set
  std::size_t steps_per_epoch = 0;
  TrainState state;
  std::unique_ptr<Model> model;             // master weights and running statistics as saved
  std::vector<NamedState> optimizer_state;  // config.optimizer's state as saved (checked against the model)
};

// The checkpoint of `trainer`'s current state, as bytes / written atomically to `path` (std::runtime_error
// naming the file if it cannot be written).
std::string encode_checkpoint(Trainer& trainer);
void save_checkpoint(const std::string& path, Trainer& trainer);

// Reads a checkpoint; InputError naming the file, byte offset and problem for anything missing, truncated,
// corrupt, of another version, or out of range.
Checkpoint load_checkpoint(const std::string& path);
// The same for bytes in memory; `path` is used in messages only (the fuzz target calls this).
Checkpoint parse_checkpoint(const std::string& path, const std::string& bytes);

// A trainer that continues the checkpointed run with ckpt.config (its threads and health settings may be changed
// before the call; changing anything else gives a run that is no longer bit-identical to an uninterrupted one).
// Throws InputError if `train` is not the data set the run was trained on (count, image size or CRC differ).
// `path` names the checkpoint in messages. The checkpoint's model and optimizer state are moved into the trainer.
std::unique_ptr<Trainer> resume_trainer(Checkpoint& ckpt, const data::ImageSet& train, const std::string& path);

}  // namespace qtrain
