// Uses an installed qtrain: fills a 2×3×4 int8 product from the library's counter-based RNG, runs the dispatched
// SIMD GEMM (single-threaded and on a thread pool) and compares it with the scalar reference. Exit 0 on success.
#include <cstdint>
#include <cstdio>
#include <vector>

#include <qtrain/qtrain.h>

int main() {
  namespace k = qtrain::kernels;
  constexpr std::size_t n = 2, m = 3, kk = 4;
  const qtrain::quant::CounterRng rng(/*seed=*/42, qtrain::quant::StreamKey{.purpose = qtrain::quant::Purpose::kInit});
  std::vector<int8_t> x(n * kk), w(m * kk);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = static_cast<int8_t>(static_cast<int>(rng.below(i, 256)) - 128);
  for (std::size_t i = 0; i < w.size(); ++i) {
    w[i] = static_cast<int8_t>(static_cast<int>(rng.below(x.size() + i, 256)) - 128);
  }

  std::vector<int32_t> expect(n * m, -1), direct(n * m, -1);
  for (std::size_t r = 0; r < n; ++r) {
    for (std::size_t c = 0; c < m; ++c) {
      int32_t s = 0;
      for (std::size_t i = 0; i < kk; ++i) s += int32_t{x[r * kk + i]} * int32_t{w[c * kk + i]};
      direct[r * m + c] = s;
    }
  }
  k::ref::gemm_forward(x.data(), w.data(), expect.data(), n, m, kk);

  std::vector<int32_t> single(n * m, -1), pooled(n * m, -1);
  k::gemm_forward(x.data(), w.data(), single.data(), n, m, kk, nullptr);
  k::ThreadPool pool(2);
  k::gemm_forward(x.data(), w.data(), pooled.data(), n, m, kk, &pool);

  int bad = 0;
  for (std::size_t i = 0; i < n * m; ++i) {
    if (expect[i] != direct[i] || single[i] != expect[i] || pooled[i] != expect[i]) {
      std::fprintf(stderr, "mismatch at %zu: hand %d, ref %d, gemm %d, gemm on pool %d\n", i, direct[i], expect[i],
                   single[i], pooled[i]);
      ++bad;
    }
  }
  if (bad != 0) return 1;
  std::printf("qtrain consumer: 2x3x4 gemm_forward matches the reference (%zu threads)\n", pool.threads());
  return 0;
}
