// A one-line progress bar on stderr (epoch, step, loss, images/s, ETA), redrawn at most 10 times a second.
// Silent when stderr is not a terminal, so logs and pipes get only the per-epoch lines from stdout.
#pragma once

#include <chrono>
#include <cstdio>

#include "qtrain/engine/train/trainer.h"

namespace qtrain::tools {

class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled) {}
  void update(const Progress& p) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (p.step != p.steps && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    constexpr int kWidth = 28;
    const int filled = static_cast<int>(kWidth * static_cast<double>(p.step) / static_cast<double>(p.steps));
    char bar[kWidth + 1];
    for (int i = 0; i < kWidth; ++i) bar[i] = i < filled ? '#' : '.';
    bar[kWidth] = 0;
    const long eta = static_cast<long>(p.eta_seconds + 0.5);
    std::fprintf(stderr, "\repoch %d/%d [%s] %zu/%zu  loss %.4f  %.0f img/s  ETA %ld:%02ld ", p.epoch, p.epochs, bar,
                 p.step, p.steps, p.loss, p.images_per_second, eta / 60, eta % 60);
    std::fflush(stderr);
    drawn_ = true;
  }
  // Clears the line so the epoch summary on stdout starts clean.
  void finish() {
    if (!enabled_ || !drawn_) return;
    std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
    drawn_ = false;
  }

 private:
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace qtrain::tools
