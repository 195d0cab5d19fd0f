// GEMM throughput in the three layouts of a training step: qtrain's int8 and int4 kernels next to XNNPACK's
// fp32 and qs8 fully-connected operators and (when libdnnl-dev was found at configure time) oneDNN's int8
// matmul, all single thread unless a name says threads; plus the machine's int8 peak.
//
//   ./bench_gemm                                   best kernel target
//   QTRAIN_KERNEL_TARGET=AVX2 ./bench_gemm          a lower target (see qtrain/kernels/dispatch.h)
//
// Shapes are (n, m, k) as in qtrain/kernels/gemm.h: batch (or im2col rows) n, m outputs, k inputs. Every case reports
// GOP/s counting 2·n·m·k operations (one multiply and one add per product), whatever the layout and type, and
// "peak%": that rate as a share of BM_peak, the best int8 dot-product instruction of the active target in a
// register-only loop (bench/peak.h), measured at startup (times the thread count for threaded cases).
//
// Who packs what, and when (only the timed loop counts):
//   qtrain_s8 / qtrain_s4     both operands packed on every call (gemm.h, int4.h: plain matrices in)
//   qtrain_s8_packed / _s4_packed   weights packed once (PackedWeights), activations/gradients per call;
//                             forward and dgrad only (wgrad's B operand is this step's activations)
//   xnnpack_f32 / xnnpack_qs8, onednn_s8   weights packed once at create time, for every layout — generous for
//                             wgrad, whose "weights" are this step's activations, and wgrad's dYᵀ is taken as
//                             already transposed
//   onednn_s8_plain           oneDNN with plain row-major weights (it packs them inside each call)
//   qtrain_attention          per-head activation products: batched in place, or copied per head (see there)
// XNNPACK qs8 requantizes to int8 output (its only int8 GEMM); qtrain and oneDNN produce int32.
#include <benchmark/benchmark.h>
#include <xnnpack.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#ifdef QTRAIN_HAVE_ONEDNN
#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>
#endif

#include "bench/peak.h"
#include "qtrain/kernels/dispatch.h"
#include "qtrain/kernels/gemm.h"
#include "qtrain/kernels/int4.h"
#include "qtrain/kernels/thread_pool.h"

namespace {

namespace qk = qtrain::kernels;

double g_peak_gops = 0.0;  // BM_peak's rate, measured once in main()

template <typename T>
std::vector<T> random_vector(std::size_t size, int lo, int hi, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(lo, hi);
  std::vector<T> v(size);
  for (auto& x : v) x = static_cast<T>(dist(rng));
  return v;
}

void set_counters(benchmark::State& state, std::size_t n, std::size_t m, std::size_t k, std::size_t threads = 1) {
  state.counters["GOP"] =
      benchmark::Counter(2e-9 * static_cast<double>(n * m * k), benchmark::Counter::kIsIterationInvariantRate);
  if (threads > 1) state.counters["threads"] = static_cast<double>(threads);
}

enum class Layout { kForward, kDgrad, kWgrad };

// Operand sizes of a layout: forward X[n×k], W[m×k] → Y[n×m]; dgrad dY[n×m], W[m×k] → dX[n×k];
// wgrad dY[n×m], X[n×k] → dW[m×k].
struct Sizes {
  std::size_t a, b, c;
};
Sizes sizes_of(Layout l, std::size_t n, std::size_t m, std::size_t k) {
  if (l == Layout::kForward) return {n * k, m * k, n * m};
  if (l == Layout::kDgrad) return {n * m, m * k, n * k};
  return {n * m, n * k, m * k};
}

struct Dims {
  std::size_t n, m, k;
};
Dims dims_of(const benchmark::State& state) {
  return {static_cast<std::size_t>(state.range(0)), static_cast<std::size_t>(state.range(1)),
          static_cast<std::size_t>(state.range(2))};
}

// ---- The machine's int8 peak ------------------------------------------------------------------------------------
void BM_peak(benchmark::State& state) {
  if (!qtrain::bench::peak_supported()) {
    state.SkipWithError("no int8 dot-product instruction on this target");
    return;
  }
  constexpr uint64_t kIterations = 1 << 16;
  uint64_t ops = 0;
  for (auto _ : state) ops = qtrain::bench::peak_loop(kIterations);
  state.counters["GOP"] = benchmark::Counter(1e-9 * static_cast<double>(ops), benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(qtrain::bench::peak_instruction());
}

// ---- qtrain ------------------------------------------------------------------------------------------------------
void run_s8(Layout l, const int8_t* a, const int8_t* b, int32_t* c, const Dims& d, qk::ThreadPool* pool) {
  if (l == Layout::kForward) qk::gemm_forward(a, b, c, d.n, d.m, d.k, pool);
  if (l == Layout::kDgrad) qk::gemm_dgrad(a, b, c, d.n, d.m, d.k, pool);
  if (l == Layout::kWgrad) qk::gemm_wgrad(a, b, c, d.n, d.m, d.k, pool);
}

template <Layout L>
void BM_qtrain_s8(benchmark::State& state) {
  const Dims d = dims_of(state);
  const Sizes z = sizes_of(L, d.n, d.m, d.k);
  const auto a = random_vector<int8_t>(z.a, -128, 127, 1);
  const auto b = random_vector<int8_t>(z.b, -128, 127, 2);
  std::vector<int32_t> c(z.c);
  for (auto _ : state) {
    run_s8(L, a.data(), b.data(), c.data(), d, nullptr);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, d.n, d.m, d.k);
}

template <Layout L>
void BM_qtrain_s8_packed(benchmark::State& state) {
  static_assert(L != Layout::kWgrad);
  const Dims d = dims_of(state);
  const Sizes z = sizes_of(L, d.n, d.m, d.k);
  const auto a = random_vector<int8_t>(z.a, -128, 127, 1);
  const auto w = random_vector<int8_t>(z.b, -128, 127, 2);
  std::vector<int32_t> c(z.c);
  const qk::PackedWeights packed = L == Layout::kForward ? qk::pack_weights_forward(w.data(), d.m, d.k, nullptr)
                                                         : qk::pack_weights_dgrad(w.data(), d.m, d.k, nullptr);
  for (auto _ : state) {
    if constexpr (L == Layout::kForward) qk::gemm_forward_packed(a.data(), packed, c.data(), d.n, nullptr);
    if constexpr (L == Layout::kDgrad) qk::gemm_dgrad_packed(a.data(), packed, c.data(), d.n, nullptr);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, d.n, d.m, d.k);
}

// Forward with packed weights followed by bias + ReLU: in the GEMM's epilogue (fused = 1, as each output tile is
// finished) or as a separate pass over Y afterwards (fused = 0, what the epilogue replaces).
void BM_qtrain_s8_epilogue(benchmark::State& state) {
  const Dims d = dims_of(state);
  const bool fused = state.range(3) != 0;
  const auto x = random_vector<int8_t>(d.n * d.k, -128, 127, 1);
  const auto w = random_vector<int8_t>(d.m * d.k, -128, 127, 2);
  const auto bias = random_vector<int32_t>(d.m, -100000, 100000, 3);
  std::vector<int32_t> y(d.n * d.m);
  const qk::PackedWeights packed = qk::pack_weights_forward(w.data(), d.m, d.k, nullptr);
  const qk::GemmEpilogue ep{bias.data(), true};
  for (auto _ : state) {
    if (fused) {
      qk::gemm_forward_packed(x.data(), packed, y.data(), d.n, nullptr, ep);
    } else {
      qk::gemm_forward_packed(x.data(), packed, y.data(), d.n, nullptr);
      for (std::size_t i = 0; i < d.n; ++i) {
        int32_t* row = y.data() + i * d.m;
        for (std::size_t j = 0; j < d.m; ++j) {
          const int64_t v = std::clamp<int64_t>(int64_t{row[j]} + bias[j], std::numeric_limits<int32_t>::min(), std::numeric_limits<int32_t>::max());
          row[j] = static_cast<int32_t>(std::max<int64_t>(v, 0));
        }
      }
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, d.n, d.m, d.k);
}

// int4 operands: the int8 test data reduced to [−8, 7], packed two per byte outside the timed loop.
std::vector<uint8_t> int4_matrix(std::size_t rows, std::size_t cols, unsigned seed) {
  const auto v = random_vector<int8_t>(rows * cols, -8, 7, seed);
  std::vector<uint8_t> out(rows * qk::int4_row_bytes(cols) + 1);
  qk::pack_int4(v.data(), rows, cols, out.data());
  return out;
}

template <Layout L>
void BM_qtrain_s4(benchmark::State& state) {
  const Dims d = dims_of(state);
  const Sizes z = sizes_of(L, d.n, d.m, d.k);
  // Row lengths of A and B as stored: forward X (k), W (k); dgrad dY (m), W (k); wgrad dY (m), X (k).
  const std::size_t a_cols = L == Layout::kForward ? d.k : d.m;
  const auto a = int4_matrix(z.a / a_cols, a_cols, 1);
  const auto b = int4_matrix(z.b / d.k, d.k, 2);
  std::vector<int32_t> c(z.c);
  for (auto _ : state) {
    if constexpr (L == Layout::kForward) qk::gemm_forward_s4(a.data(), b.data(), c.data(), d.n, d.m, d.k, nullptr);
    if constexpr (L == Layout::kDgrad) qk::gemm_dgrad_s4(a.data(), b.data(), c.data(), d.n, d.m, d.k, nullptr);
    if constexpr (L == Layout::kWgrad) qk::gemm_wgrad_s4(a.data(), b.data(), c.data(), d.n, d.m, d.k, nullptr);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, d.n, d.m, d.k);
}

template <Layout L>
void BM_qtrain_s4_packed(benchmark::State& state) {
  static_assert(L != Layout::kWgrad);
  const Dims d = dims_of(state);
  const std::size_t a_cols = L == Layout::kForward ? d.k : d.m;
  const auto a = int4_matrix(d.n, a_cols, 1);
  const auto w = int4_matrix(d.m, d.k, 2);
  std::vector<int32_t> c(sizes_of(L, d.n, d.m, d.k).c);
  const qk::PackedWeights packed = L == Layout::kForward ? qk::pack_weights_forward_s4(w.data(), d.m, d.k, nullptr)
                                                         : qk::pack_weights_dgrad_s4(w.data(), d.m, d.k, nullptr);
  for (auto _ : state) {
    if constexpr (L == Layout::kForward) qk::gemm_forward_packed_s4(a.data(), packed, c.data(), d.n, nullptr);
    if constexpr (L == Layout::kDgrad) qk::gemm_dgrad_packed_s4(a.data(), packed, c.data(), d.n, nullptr);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, d.n, d.m, d.k);
}

// Threads: (n, m, k, threads), wall-clock time. threads = 1 runs without a pool, as a caller would. kAlways: the
// pool splits every product (the kernels' scaling); kMeasured: it splits when its advisor says it pays (what a
// user gets, qtrain/kernels/thread_pool.h).
template <Layout L, bool kPacked, qk::ThreadPool::Split kSplit = qk::ThreadPool::Split::kAlways>
void BM_qtrain_s8_threads(benchmark::State& state) {
  const Dims d = dims_of(state);
  const auto threads = static_cast<std::size_t>(state.range(3));
  const Sizes z = sizes_of(L, d.n, d.m, d.k);
  const auto a = random_vector<int8_t>(z.a, -128, 127, 1);
  const auto b = random_vector<int8_t>(z.b, -128, 127, 2);
  std::vector<int32_t> c(z.c);
  std::unique_ptr<qk::ThreadPool> pool = threads > 1 ? std::make_unique<qk::ThreadPool>(threads, kSplit) : nullptr;
  qk::PackedWeights packed;
  if constexpr (kPacked) packed = qk::pack_weights_forward(b.data(), d.m, d.k, pool.get());
  for (auto _ : state) {
    if constexpr (kPacked) {
      qk::gemm_forward_packed(a.data(), packed, c.data(), d.n, pool.get());
    } else {
      run_s8(L, a.data(), b.data(), c.data(), d, pool.get());
    }
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, d.n, d.m, d.k, threads);
}

// When splitting pays (kernels::kMinParallelMacs, the pool's SplitAdvisor): forward with packed weights at
// (n, m, k), either one call on this thread (split = 1) or the rows cut in two halves run as two tasks of a
// 2-thread pool (split = 2) — a fork-join the kernels' own split decision does not see.
void BM_qtrain_split(benchmark::State& state) {
  const Dims d = dims_of(state);
  const auto split = static_cast<std::size_t>(state.range(3));
  const auto x = random_vector<int8_t>(d.n * d.k, -128, 127, 1);
  const auto w = random_vector<int8_t>(d.m * d.k, -128, 127, 2);
  std::vector<int32_t> y(d.n * d.m);
  const qk::PackedWeights packed = qk::pack_weights_forward(w.data(), d.m, d.k, nullptr);
  qk::ThreadPool pool(2);
  const std::size_t half = (d.n / 2 + 7) / 8 * 8;
  for (auto _ : state) {
    if (split == 1) {
      qk::gemm_forward_packed(x.data(), packed, y.data(), d.n, nullptr);
    } else {
      pool.parallel_for(2, 1, [&](std::size_t t, std::size_t) {
        const std::size_t r0 = t == 0 ? 0 : half, r1 = t == 0 ? half : d.n;
        qk::gemm_forward_packed(x.data() + r0 * d.k, packed, y.data() + r0 * d.m, r1 - r0, nullptr);
      });
    }
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, d.n, d.m, d.k, split);
}

// ---- Attention's activation products (gemm.h's batched GEMMs) ---------------------------------------------------
// (batch, heads, seq, d, mode): per-head products of activations [batch·seq × heads·d] as QMatMul runs them.
//   scores  S_bh[seq×seq] = Q_bh · K_bhᵀ  into a stack [batch·heads·seq × seq]      (the forward layout)
//   values  O_bh[seq×d]   = P_bh · V_bh   from that stack into [batch·seq × heads·d]  (the dgrad layout)
// mode 0: one batched call reading the heads in place; mode 1: what a caller without strides would do — copy each
// head's operands into contiguous matrices, one dense GEMM per head (and copy the values' output back).
enum class Attention { kScores, kValues };

// Copies matrix rows × cols at src (rows ld apart) to a contiguous dst, or back.
template <typename T>
void copy_matrix(const T* src, std::size_t ld_src, T* dst, std::size_t ld_dst, std::size_t rows, std::size_t cols) {
  for (std::size_t r = 0; r < rows; ++r) std::memcpy(dst + r * ld_dst, src + r * ld_src, cols * sizeof(T));
}

template <Attention A>
void BM_qtrain_attention(benchmark::State& state) {
  const auto batch = static_cast<std::size_t>(state.range(0)), heads = static_cast<std::size_t>(state.range(1));
  const auto seq = static_cast<std::size_t>(state.range(2)), d = static_cast<std::size_t>(state.range(3));
  const bool copy = state.range(4) == 1;
  const std::size_t count = batch * heads, ld = heads * d;
  // scores: first = Q, second = K (per head); values: first = P (stacked), second = V (per head).
  const auto first =
      random_vector<int8_t>(A == Attention::kScores ? batch * seq * ld : count * seq * seq, -128, 127, 1);
  const auto second = random_vector<int8_t>(batch * seq * ld, -128, 127, 2);
  std::vector<int32_t> out(A == Attention::kScores ? count * seq * seq : batch * seq * ld);
  const qk::MatrixStrides per_head{ld, seq * ld, d};
  const qk::MatrixStrides scores{seq, heads * seq * seq, seq * seq};
  const qk::MatrixStrides head_out{ld, seq * ld, d};
  std::vector<int8_t> a(seq * std::max(seq, d)), b(seq * d);
  std::vector<int32_t> c(seq * d);
  for (auto _ : state) {
    if (!copy && A == Attention::kScores) {
      qk::gemm_forward_batched(first.data(), second.data(), out.data(), seq, seq, d,
                               qk::GemmBatch{batch, heads, per_head, per_head, scores}, nullptr);
    } else if (!copy) {
      qk::gemm_dgrad_batched(first.data(), second.data(), out.data(), seq, seq, d,
                             qk::GemmBatch{batch, heads, scores, per_head, head_out}, nullptr);
    } else {
      for (std::size_t j = 0; j < count; ++j) {
        const std::size_t head = j / heads * seq * ld + j % heads * d;  // offset of head j in a per-head tensor
        if constexpr (A == Attention::kScores) {
          copy_matrix(first.data() + head, ld, a.data(), d, seq, d);
          copy_matrix(second.data() + head, ld, b.data(), d, seq, d);
          qk::gemm_forward(a.data(), b.data(), out.data() + j * seq * seq, seq, seq, d, nullptr);
        } else {
          copy_matrix(second.data() + head, ld, b.data(), d, seq, d);
          qk::gemm_dgrad(first.data() + j * seq * seq, b.data(), c.data(), seq, seq, d, nullptr);
          copy_matrix(c.data(), d, out.data() + head, ld, seq, d);
        }
      }
    }
    benchmark::DoNotOptimize(out.data());
    benchmark::ClobberMemory();
  }
  set_counters(state, count * seq, seq, d);
}

// ---- XNNPACK fully-connected (fp32, qs8) ----------------------------------------------------------------------------
// Each layout as the fully-connected product XNNPACK would run for it, weights packed once at create time:
//   forward  Y[n×m]  = X[n×k]·W[m×k]ᵀ   batch n, k → m
//   dgrad    dX[n×k] = dY[n×m]·W[m×k]   batch n, m → k, weights given input-major (XNN_FLAG_TRANSPOSE_WEIGHTS)
//   wgrad    dW[m×k] = dYᵀ[m×n]·X[n×k]  batch m, n → k, weights X input-major
struct FcShape {
  std::size_t batch, in, out;
  uint32_t flags;
};
FcShape fc_shape(Layout l, const Dims& d) {
  if (l == Layout::kDgrad) return {d.n, d.m, d.k, XNN_FLAG_TRANSPOSE_WEIGHTS};
  if (l == Layout::kWgrad) return {d.m, d.n, d.k, XNN_FLAG_TRANSPOSE_WEIGHTS};
  return {d.n, d.k, d.m, 0};
}

void run_xnn(benchmark::State& state, xnn_operator_t op, const char* what) {
  for (auto _ : state) {
    if (xnn_run_operator(op, /*threadpool=*/nullptr) != xnn_status_success) {
      state.SkipWithError(what);
      break;
    }
    benchmark::ClobberMemory();
  }
  xnn_delete_operator(op);
}

template <Layout L>
void BM_xnnpack_f32(benchmark::State& state) {
  const Dims d = dims_of(state);
  const FcShape s = fc_shape(L, d);
  const auto input = random_vector<float>(s.batch * s.in, -8, 8, 1);
  const auto weights = random_vector<float>(s.in * s.out, -8, 8, 2);
  std::vector<float> output(s.batch * s.out);
  xnn_operator_t op = nullptr;
  const float inf = std::numeric_limits<float>::infinity();
  if (xnn_create_fully_connected_nc_f32(s.in, s.out, s.in, s.out, weights.data(), /*bias=*/nullptr, -inf, inf, s.flags,
                                        &op) != xnn_status_success ||
      xnn_setup_fully_connected_nc_f32(op, s.batch, input.data(), output.data(), nullptr) != xnn_status_success) {
    state.SkipWithError("XNNPACK fully-connected f32: create/setup failed");
    if (op != nullptr) xnn_delete_operator(op);
    return;
  }
  run_xnn(state, op, "XNNPACK fully-connected f32: run failed");
  set_counters(state, d.n, d.m, d.k);
}

template <Layout L>
void BM_xnnpack_qs8(benchmark::State& state) {
  const Dims d = dims_of(state);
  const FcShape s = fc_shape(L, d);
  const auto input = random_vector<int8_t>(s.batch * s.in, -128, 127, 1);
  const auto weights = random_vector<int8_t>(s.in * s.out, -127, 127, 2);
  std::vector<int8_t> output(s.batch * s.out);
  xnn_operator_t op = nullptr;
  // Scales 1 × 1 → output scale 2^16: a requantization scale of 2^-16, inside XNNPACK's accepted range.
  if (xnn_create_fully_connected_nc_qs8(s.in, s.out, s.in, s.out, /*input_zero_point=*/0, /*input_scale=*/1.0f,
                                        /*kernel_scale=*/1.0f, weights.data(), /*bias=*/nullptr,
                                        /*output_zero_point=*/0, /*output_scale=*/65536.0f, -128, 127, s.flags,
                                        &op) != xnn_status_success ||
      xnn_setup_fully_connected_nc_qs8(op, s.batch, input.data(), output.data(), nullptr) != xnn_status_success) {
    state.SkipWithError("XNNPACK fully-connected qs8: create/setup failed");
    if (op != nullptr) xnn_delete_operator(op);
    return;
  }
  run_xnn(state, op, "XNNPACK fully-connected qs8: run failed");
  set_counters(state, d.n, d.m, d.k);
}

// ---- oneDNN int8 matmul ------------------------------------------------------------------------------------------------
#ifdef QTRAIN_HAVE_ONEDNN
// C[rows×cols] (s32) = A[rows×red] (s8) · B[red×cols] (s8): forward A = X, B = Wᵀ (W's rows as columns: tag ba);
// dgrad A = dY, B = W; wgrad A = dYᵀ (given transposed), B = X. `prepacked`: weights in oneDNN's own layout
// (format_tag::any, reordered once outside the timed loop); else plain row-major, packed inside each call.
template <Layout L, bool kPrepacked>
void BM_onednn_s8(benchmark::State& state) {
  using dnnl::memory;
  using tag = memory::format_tag;
  const Dims d = dims_of(state);
  memory::dim rows = static_cast<memory::dim>(d.n), red = static_cast<memory::dim>(d.k),
              cols = static_cast<memory::dim>(d.m);
  tag b_tag = tag::ba;  // forward: W[m×k] is B = Wᵀ [k×m] stored column-major
  if (L == Layout::kDgrad) red = static_cast<memory::dim>(d.m), cols = static_cast<memory::dim>(d.k), b_tag = tag::ab;
  if (L == Layout::kWgrad) {
    rows = static_cast<memory::dim>(d.m), red = static_cast<memory::dim>(d.n), cols = static_cast<memory::dim>(d.k);
    b_tag = tag::ab;
  }
  try {
    const dnnl::engine eng(dnnl::engine::kind::cpu, 0);
    dnnl::stream strm(eng);
    const memory::desc a_md({rows, red}, memory::data_type::s8, tag::ab);
    const memory::desc b_user_md({red, cols}, memory::data_type::s8, b_tag);
    const memory::desc c_md({rows, cols}, memory::data_type::s32, tag::ab);
    const memory::desc b_md = kPrepacked ? memory::desc({red, cols}, memory::data_type::s8, tag::any) : b_user_md;
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a_md, b_md, c_md), eng);
    const auto a_data = random_vector<int8_t>(static_cast<std::size_t>(rows * red), -128, 127, 1);
    const auto b_data = random_vector<int8_t>(static_cast<std::size_t>(red * cols), -128, 127, 2);
    memory a_mem(a_md, eng, const_cast<int8_t*>(a_data.data()));
    memory b_user(b_user_md, eng, const_cast<int8_t*>(b_data.data()));
    memory b_mem = b_user;
    if (pd.weights_desc() != b_user_md) {
      b_mem = memory(pd.weights_desc(), eng);
      dnnl::reorder(b_user, b_mem).execute(strm, b_user, b_mem);
      strm.wait();
    }
    memory c_mem(c_md, eng);
    const dnnl::matmul mm(pd);
    for (auto _ : state) {
      mm.execute(strm, {{DNNL_ARG_SRC, a_mem}, {DNNL_ARG_WEIGHTS, b_mem}, {DNNL_ARG_DST, c_mem}});
      strm.wait();
      benchmark::ClobberMemory();
    }
    state.SetLabel(pd.impl_info_str());
  } catch (const dnnl::error& e) {
    state.SkipWithError((std::string("oneDNN: ") + e.what()).c_str());
    return;
  }
  set_counters(state, d.n, d.m, d.k);
}
#endif

// ---- Shapes ------------------------------------------------------------------------------------------------------------
// (n, m, k): the MLP 784-256-128-10 at batch 64; im2col products of a small CNN/ResNet at batch 64
// (28×28×16 ← 3×3×16, 14×14×32 ← 3×3×32, 7×7×64 ← 3×3×64; in wgrad they are tall-skinny: a reduction over
// all 50176/12544/3136 rows); the MLP's first layer at batch 4096 (wgrad: a 4096-long reduction); 256×1024×1024.
void shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "m", "k"});
  b->Args({64, 256, 784});
  b->Args({64, 128, 256});
  b->Args({64, 10, 128});
  b->Args({64 * 28 * 28, 16, 9 * 16});
  b->Args({64 * 14 * 14, 32, 9 * 32});
  b->Args({64 * 7 * 7, 64, 9 * 64});
  b->Args({4096, 256, 784});
  b->Args({256, 1024, 1024});
  b->Unit(benchmark::kMicrosecond);
}

// 1 and 2 threads (and 3 where the machine has them: the pool must not oversubscribe to look good).
void thread_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "m", "k", "threads"});
  const int64_t max_threads = static_cast<int64_t>(qk::available_processors());
  for (const auto& s : std::vector<std::vector<int64_t>>{{64, 256, 784},
                                                         {64, 128, 256},
                                                         {64, 10, 128},
                                                         {64 * 28 * 28, 16, 9 * 16},
                                                         {64 * 7 * 7, 64, 9 * 64},
                                                         {256, 1024, 1024}}) {
    for (int64_t t = 1; t <= std::min<int64_t>(max_threads, 4); ++t) b->Args({s[0], s[1], s[2], t});
  }
  b->UseRealTime();
  b->Unit(benchmark::kMicrosecond);
}

// (n, m, k, split): a hidden layer 256 → 256 over growing batches (0.5M … 16M multiply-adds), and the MLP's layers.
void split_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"n", "m", "k", "split"});
  for (int64_t n : {8, 16, 32, 64, 128, 256}) {
    for (int64_t split : {1, 2}) b->Args({n, 256, 256, split});
  }
  for (const auto& s : std::vector<std::vector<int64_t>>{{64, 256, 784}, {64, 128, 256}, {64, 10, 128}}) {
    for (int64_t split : {1, 2}) b->Args({s[0], s[1], s[2], split});
  }
  b->UseRealTime();
  b->Unit(benchmark::kMicrosecond);
}

// (batch, heads, seq, d_head, copy): a small text model (8 × 4 heads of 64 × 32), BERT-base at sequence 128
// (12 heads of 128 × 64), ViT-B/16 (197 tokens, 12 heads of 64).
void attention_shapes(benchmark::internal::Benchmark* b) {
  b->ArgNames({"batch", "heads", "seq", "d", "copy"});
  b->ArgsProduct({{8}, {4}, {64}, {32}, {0, 1}});
  b->ArgsProduct({{2}, {12}, {128}, {64}, {0, 1}});
  b->ArgsProduct({{1}, {12}, {197}, {64}, {0, 1}});
  b->Unit(benchmark::kMicrosecond);
}

BENCHMARK(BM_peak)->Unit(benchmark::kMicrosecond);

BENCHMARK(BM_qtrain_s8<Layout::kForward>)->Apply(shapes);
BENCHMARK(BM_qtrain_s8_packed<Layout::kForward>)->Apply(shapes);
BENCHMARK(BM_qtrain_s4<Layout::kForward>)->Apply(shapes);
BENCHMARK(BM_qtrain_s4_packed<Layout::kForward>)->Apply(shapes);
#ifdef QTRAIN_HAVE_ONEDNN
BENCHMARK(BM_onednn_s8<Layout::kForward, true>)->Name("BM_onednn_s8<Layout::kForward>")->Apply(shapes);
BENCHMARK(BM_onednn_s8<Layout::kForward, false>)->Name("BM_onednn_s8_plain<Layout::kForward>")->Apply(shapes);
#endif
BENCHMARK(BM_xnnpack_qs8<Layout::kForward>)->Apply(shapes);
BENCHMARK(BM_xnnpack_f32<Layout::kForward>)->Apply(shapes);

BENCHMARK(BM_qtrain_s8<Layout::kDgrad>)->Apply(shapes);
BENCHMARK(BM_qtrain_s8_packed<Layout::kDgrad>)->Apply(shapes);
BENCHMARK(BM_qtrain_s4<Layout::kDgrad>)->Apply(shapes);
BENCHMARK(BM_qtrain_s4_packed<Layout::kDgrad>)->Apply(shapes);
#ifdef QTRAIN_HAVE_ONEDNN
BENCHMARK(BM_onednn_s8<Layout::kDgrad, true>)->Name("BM_onednn_s8<Layout::kDgrad>")->Apply(shapes);
BENCHMARK(BM_onednn_s8<Layout::kDgrad, false>)->Name("BM_onednn_s8_plain<Layout::kDgrad>")->Apply(shapes);
#endif
BENCHMARK(BM_xnnpack_qs8<Layout::kDgrad>)->Apply(shapes);
BENCHMARK(BM_xnnpack_f32<Layout::kDgrad>)->Apply(shapes);

BENCHMARK(BM_qtrain_s8<Layout::kWgrad>)->Apply(shapes);
BENCHMARK(BM_qtrain_s4<Layout::kWgrad>)->Apply(shapes);
#ifdef QTRAIN_HAVE_ONEDNN
BENCHMARK(BM_onednn_s8<Layout::kWgrad, true>)->Name("BM_onednn_s8<Layout::kWgrad>")->Apply(shapes);
BENCHMARK(BM_onednn_s8<Layout::kWgrad, false>)->Name("BM_onednn_s8_plain<Layout::kWgrad>")->Apply(shapes);
#endif
BENCHMARK(BM_xnnpack_qs8<Layout::kWgrad>)->Apply(shapes);
BENCHMARK(BM_xnnpack_f32<Layout::kWgrad>)->Apply(shapes);

BENCHMARK(BM_qtrain_s8_threads<Layout::kForward, true>)
    ->Name("BM_qtrain_s8_packed_threads<Layout::kForward>")
    ->Apply(thread_shapes);
BENCHMARK(BM_qtrain_s8_threads<Layout::kForward, true, qk::ThreadPool::Split::kMeasured>)
    ->Name("BM_qtrain_s8_packed_auto_threads<Layout::kForward>")
    ->Apply(thread_shapes);
BENCHMARK(BM_qtrain_s8_threads<Layout::kForward, false>)
    ->Name("BM_qtrain_s8_threads<Layout::kForward>")
    ->Apply(thread_shapes);
BENCHMARK(BM_qtrain_s8_threads<Layout::kDgrad, false>)->Name("BM_qtrain_s8_threads<Layout::kDgrad>")->Apply(thread_shapes);
BENCHMARK(BM_qtrain_s8_threads<Layout::kWgrad, false>)->Name("BM_qtrain_s8_threads<Layout::kWgrad>")->Apply(thread_shapes);
BENCHMARK(BM_qtrain_split)->Apply(split_shapes);
BENCHMARK(BM_qtrain_attention<Attention::kScores>)->Apply(attention_shapes);
BENCHMARK(BM_qtrain_attention<Attention::kValues>)->Apply(attention_shapes);
BENCHMARK(BM_qtrain_s8_epilogue)
    ->ArgNames({"n", "m", "k", "fused"})
    ->ArgsProduct({{64}, {256}, {784}, {0, 1}})
    ->ArgsProduct({{64}, {128}, {256}, {0, 1}})
    ->ArgsProduct({{256}, {1024}, {1024}, {0, 1}})
    ->ArgsProduct({{4096}, {256}, {784}, {0, 1}})
    ->Unit(benchmark::kMicrosecond);

// Adds "peak%" (GOP/s over the measured peak, times the thread count) to every run that has a GOP counter.
template <typename Base>
class PeakShareReporter : public Base {
 public:
  void ReportRuns(const std::vector<benchmark::BenchmarkReporter::Run>& runs) override {
    std::vector<benchmark::BenchmarkReporter::Run> out = runs;
    for (auto& run : out) {
      const auto gop = run.counters.find("GOP");
      if (gop == run.counters.end() || g_peak_gops <= 0.0 || run.error_occurred) continue;
      const auto t = run.counters.find("threads");
      const double threads = t != run.counters.end() ? t->second.value : 1.0;
      run.counters["peak%"] = benchmark::Counter(100.0 * gop->second.value / (g_peak_gops * threads));
    }
    Base::ReportRuns(out);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (xnn_initialize(/*allocator=*/nullptr) != xnn_status_success) {
    std::fprintf(stderr, "bench_gemm: xnn_initialize failed (XNNPACK does not support this CPU?)\n");
    return EXIT_FAILURE;
  }
#ifdef QTRAIN_HAVE_ONEDNN
  omp_set_num_threads(1);  // oneDNN's OpenMP runtime: one thread, like every other single-thread case
  benchmark::AddCustomContext("onednn", "int8 matmul comparator enabled (libdnnl " +
                                            std::to_string(dnnl_version()->major) + "." +
                                            std::to_string(dnnl_version()->minor) + ")");
#else
  std::fprintf(stderr, "bench_gemm: built without oneDNN (install libdnnl-dev and reconfigure): its int8 matmul "
                       "comparator is skipped.\n");
  benchmark::AddCustomContext("onednn", "not found at configure time: comparator skipped");
#endif
  const std::string target = qk::active_target().name;  // applies QTRAIN_KERNEL_TARGET
  g_peak_gops = 1e-9 * qtrain::bench::measure_peak_ops_per_second();
  benchmark::AddCustomContext("qtrain_kernel_target", target);
  if (g_peak_gops > 0.0) {
    char peak[128];
    std::snprintf(peak, sizeof peak, "%.1f GOP/s (%s, one thread)", g_peak_gops,
                  qtrain::bench::peak_instruction().c_str());
    benchmark::AddCustomContext("int8_peak", peak);
  }

  std::string format = "console";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--benchmark_format=", 0) == 0) format = arg.substr(std::strlen("--benchmark_format="));
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return EXIT_FAILURE;
  std::unique_ptr<benchmark::BenchmarkReporter> reporter;
  if (format == "json") {
    reporter = std::make_unique<PeakShareReporter<benchmark::JSONReporter>>();
  } else {  // console (Google Benchmark's CSV output is deprecated)
    reporter = std::make_unique<PeakShareReporter<benchmark::ConsoleReporter>>();
  }
  benchmark::RunSpecifiedBenchmarks(reporter.get());
  benchmark::Shutdown();
  xnn_deinitialize();
  return EXIT_SUCCESS;
}
