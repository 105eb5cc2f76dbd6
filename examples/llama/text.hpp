#pragma once
/// \file text.hpp
/// Byte-level text data: the held-out perplexity protocol and the calibration windows.
/// Token id = byte value, so any model with vocab_size ≥ 256 trained on bytes can be evaluated.

#include "forward.hpp"

#include <cmath>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#define LLAMA_OMP_PARALLEL_FOR _Pragma("omp parallel for schedule(dynamic, 1)")
#else
#define LLAMA_OMP_PARALLEL_FOR
#endif

namespace llama {

/// Reads a whole file as bytes; throws std::invalid_argument when it cannot be read or has
/// fewer than `min_bytes` bytes (`what` says what the bytes are needed for).
inline std::vector<std::uint8_t> read_bytes(const std::string& path, std::size_t min_bytes,
                                            const std::string& what) {
  // 1 GiB: far beyond any calibration or evaluation text, far below the machine's memory.
  const std::string text = read_regular_file(path, std::uintmax_t{1} << 30, what);
  const std::vector<std::uint8_t> bytes(text.begin(), text.end());
  if (bytes.size() < min_bytes)
    fail("llama::read_bytes: ", path, " has ", bytes.size(), " bytes but ", what, " needs at least ",
         min_bytes, " (one window of inputs plus its next-byte target)");
  return bytes;
}

/// Result of a perplexity evaluation.
struct Perplexity {
  double nll = 0;             ///< total next-byte negative log-likelihood (nats)
  std::int64_t predictions = 0;
  std::int64_t windows = 0;
  double nll_per_byte() const { return nll / static_cast<double>(predictions); }
  double ppl() const { return std::exp(nll_per_byte()); }
};

/// Number of evaluation windows the protocol takes from `bytes`: starts 0, T, 2T, … while the
/// window and its next-byte target fit.
inline std::int64_t eval_window_count(std::size_t bytes, Eigen::Index T) {
  return bytes < static_cast<std::size_t>(T) + 1
             ? 0
             : static_cast<std::int64_t>((bytes - 1) / static_cast<std::size_t>(T));
}

/// Held-out perplexity with non-overlapping windows: window w has inputs bytes[wT, wT+T) and
/// targets bytes[wT+1, wT+T+1); ppl = exp(Σ NLL / (windows·T)). `max_windows` < 0 means all.
/// Windows run in parallel (OpenMP); the sum is taken in window order, so the result does not
/// depend on the thread count.
inline Perplexity perplexity(const Model& m, const std::vector<std::uint8_t>& text,
                             Eigen::Index T, std::int64_t max_windows = -1) {
  if (m.config.vocab_size < 256)
    fail("llama::perplexity: vocab_size = ", m.config.vocab_size,
         " < 256; byte-level evaluation needs one token per byte value");
  std::int64_t n = eval_window_count(text.size(), T);
  if (max_windows >= 0 && max_windows < n) n = max_windows;
  const Rope rope(m.config, T);
  std::vector<double> nll(static_cast<std::size_t>(n), 0.0);
  LLAMA_OMP_PARALLEL_FOR
  for (std::int64_t w = 0; w < n; ++w) {
    const std::uint8_t* p = text.data() + w * T;
    nll[static_cast<std::size_t>(w)] = window_nll(forward(m, rope, p, T), p + 1);
  }
  Perplexity r;
  for (double v : nll) r.nll += v;
  // Finite weights can still overflow float inside the forward pass: refuse, never print NaN.
  if (!std::isfinite(r.nll))
    throw std::runtime_error("llama::perplexity: the model's log-likelihood is not finite "
                             "(its activations overflow float); the weights are unusable");
  r.windows = n;
  r.predictions = n * T;
  return r;
}

/// Start offsets of `n` calibration windows of T bytes drawn uniformly from `text` with a
/// fixed seed (a 64-bit Mersenne twister; the offset is taken modulo the range so the draw is
/// the same on every standard library).
inline std::vector<std::size_t> calibration_starts(std::size_t text_bytes, Eigen::Index T,
                                                   int n, std::uint64_t seed) {
  if (text_bytes < static_cast<std::size_t>(T) + 1)
    fail("llama::calibration_starts: the calibration text has ", text_bytes,
         " bytes, fewer than one window of ", T, " + 1");
  std::mt19937_64 rng(seed);
  const std::uint64_t range = text_bytes - static_cast<std::size_t>(T);
  std::vector<std::size_t> starts(static_cast<std::size_t>(n));
  for (auto& s : starts) s = static_cast<std::size_t>(rng() % range);
  return starts;
}

}  // namespace llama
