// The whole public API of qtrain in one include: #include <qtrain/qtrain.h>.
// The library is layered (docs/architecture.md): kernels/ (SIMD microkernels and their scalar references),
// quant/ (number formats and quantizers), engine/ (tensors, autograd, ops, layers, models, optimizers, training,
// model files, data sets). Each header can also be included on its own.
#pragma once

#include "qtrain/kernels/dispatch.h"
#include "qtrain/kernels/eltwise.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/kernels/int4.h"
#include "qtrain/kernels/int_softmax.h"
#include "qtrain/kernels/layer_norm_rows.h"
#include "qtrain/kernels/norm.h"
#include "qtrain/kernels/philox.h"
#include "qtrain/kernels/rounding.h"
#include "qtrain/kernels/adamw_update.h"
#include "qtrain/kernels/sgd_update.h"
#include "qtrain/kernels/thread_pool.h"

#include "qtrain/quant/error.h"
#include "qtrain/quant/fixed_point.h"
#include "qtrain/quant/pow2.h"
#include "qtrain/quant/rng.h"
#include "qtrain/quant/shiftquant.h"
#include "qtrain/quant/uninit_vector.h"

#include "qtrain/engine/core/aligned_sum.h"
#include "qtrain/engine/core/autograd.h"
#include "qtrain/engine/core/layer.h"
#include "qtrain/engine/core/narrow.h"
#include "qtrain/engine/core/param.h"
#include "qtrain/engine/core/profile.h"
#include "qtrain/engine/core/quant_policy.h"
#include "qtrain/engine/core/tensor.h"

#include "qtrain/engine/data/batcher.h"
#include "qtrain/engine/data/cifar.h"
#include "qtrain/engine/data/datasets.h"
#include "qtrain/engine/data/idx.h"
#include "qtrain/engine/data/in_memory.h"
#include "qtrain/engine/data/normalize.h"

#include "qtrain/engine/ops/add.h"
#include "qtrain/engine/ops/qgemm_op.h"
#include "qtrain/engine/ops/qmatmul.h"
#include "qtrain/engine/ops/softmax.h"
#include "qtrain/engine/ops/gelu.h"
#include "qtrain/engine/ops/relu.h"
#include "qtrain/engine/ops/softmax_ce.h"

#include "qtrain/engine/optim/adamw.h"
#include "qtrain/engine/optim/optimizer.h"
#include "qtrain/engine/optim/schedule.h"
#include "qtrain/engine/optim/state_table.h"

#include "qtrain/engine/layers/conv2d.h"
#include "qtrain/engine/layers/depthwise_conv2d.h"
#include "qtrain/engine/layers/linear.h"
#include "qtrain/engine/layers/norm.h"
#include "qtrain/engine/layers/pool.h"
#include "qtrain/engine/layers/residual.h"
#include "qtrain/engine/layers/class_token.h"
#include "qtrain/engine/layers/pos_embed.h"
#include "qtrain/engine/layers/attention.h"
#include "qtrain/engine/layers/transformer_block.h"

#include "qtrain/engine/models/layer_info.h"
#include "qtrain/engine/models/model.h"
#include "qtrain/engine/models/model_config.h"
#include "qtrain/engine/models/model_spec.h"
#include "qtrain/engine/models/registry.h"

#include "qtrain/engine/train/health.h"
#include "qtrain/engine/train/trainer.h"

#include "qtrain/engine/io/checkpoint.h"
#include "qtrain/engine/io/policy_file.h"
#include "qtrain/engine/io/serialize.h"

#include "qtrain/engine/run/session.h"
