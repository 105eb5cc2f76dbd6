#pragma once
/// \file text.hpp
/// The data: token streams read from text (token id = byte value, for byte-level models) or
/// from token-id files (any tokenizer), the held-out perplexity protocol and the calibration
/// windows, both cut from a stream the same way whatever it was read from.

#include "dist.hpp"
#include "forward.hpp"

#include <q2n/io/safetensors.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#define LLAMA_OMP_PARALLEL_FOR _Pragma("omp parallel for schedule(dynamic, 1)")
#else
#define LLAMA_OMP_PARALLEL_FOR
#endif

namespace llama {

/// The most bytes a text or token file may have: 1 GiB, far beyond any calibration or
/// evaluation set (WikiText-2's test split is 0.3 M tokens), far below the machine's memory.
inline constexpr std::uintmax_t kMaxDataFileBytes = std::uintmax_t{1} << 30;

/// Width of the ids in a raw token stream (a file that is not safetensors).
enum class RawTokens { unspecified, uint16, uint32 };

namespace detail {

// Throws naming the file unless 0 <= id < vocab (`i` is the id's position in the file). A
// negative id converts to an unsigned value beyond any vocabulary.
template <class Id>
void check_id(Id id, std::size_t i, std::int64_t vocab, const std::string& path,
              const std::string& what, const char* hint = "") {
  if (static_cast<std::uint64_t>(id) >= static_cast<std::uint64_t>(vocab))
    fail(path, " (", what, "): token ", i, " is ", id, ", outside the model's vocabulary [0, ",
         vocab, ")", hint);
}

inline bool is_safetensors_path(const std::string& path) {
  const std::string ext = ".safetensors";
  return path.size() > ext.size() &&
         path.compare(path.size() - ext.size(), ext.size(), ext) == 0;
}

}  // namespace detail

/// Reads a whole file as byte-level tokens (token id = byte value); throws
/// std::invalid_argument when it cannot be read, has fewer than `min_tokens` bytes, or holds a
/// byte ≥ `vocab` (`what` says what the tokens are needed for).
inline Tokens read_text_tokens(const std::string& path, std::int64_t vocab,
                               std::size_t min_tokens, const std::string& what) {
  const std::string text = read_regular_file(path, kMaxDataFileBytes, what);
  Tokens t(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) t[i] = static_cast<unsigned char>(text[i]);
  if (t.size() < min_tokens)
    fail(path, " has ", t.size(), " bytes but ", what, " needs at least ", min_tokens,
         " (one window of inputs plus its next-byte target)");
  for (std::size_t i = 0; i < t.size(); ++i)
    detail::check_id(t[i], i, vocab, path, what,
                     "; byte-level text needs a byte-level model (or pass token ids)");
  return t;
}

/// Reads token ids written by any tokenizer, as one stream:
/// - `*.safetensors`: one integer tensor (or, among several, the one named "input_ids"), any
///   shape, read in row-major order, so `[windows, seqlen]` is its rows one after another;
/// - any other file: a raw little-endian stream of `raw` ids (uint16 or uint32).
/// Windows are then cut from the stream exactly as from bytes, so a file holding the bytes of
/// a text as ids drives the same run as the text. Throws std::invalid_argument naming the file
/// for an unreadable file, a float tensor, an id outside [0, vocab), a raw file whose size is
/// not a multiple of the id width, or fewer than `min_tokens` ids.
inline Tokens read_token_file(const std::string& path, RawTokens raw, std::int64_t vocab,
                              std::size_t min_tokens, const std::string& what) {
  Tokens t;
  if (detail::is_safetensors_path(path)) {
    std::vector<std::int64_t> ids;
    {
      check_regular_file(path, kMaxDataFileBytes, what);  // no FIFO, directory, huge file
      std::unique_ptr<q2n::io::SafetensorsReader> r;
      try {
        r = std::make_unique<q2n::io::SafetensorsReader>(path);
      } catch (const std::exception& e) {
        fail(path, " (", what, ") is not a readable safetensors file: ", e.what());
      }
      const auto& names = r->names();
      std::string name;
      if (names.size() == 1) name = names.front();
      else if (std::find(names.begin(), names.end(), "input_ids") != names.end()) name = "input_ids";
      else
        fail(path, " (", what, ") holds ", names.size(),
             " tensors; a token file holds one, or names its ids \"input_ids\"");
      const q2n::io::DType d = r->info(name).dtype;
      if (q2n::io::detail::is_float_dtype(d) || d == q2n::io::DType::BOOL)
        fail(path, " (", what, "): tensor \"", name, "\" is ", q2n::io::dtype_name(d),
             "; token ids are integers (I32 or I64)");
      try {
        ids = r->read_flat<std::int64_t>(name);
      } catch (const std::exception& e) {
        fail(path, " (", what, "): ", e.what());
      }
    }
    t.resize(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      detail::check_id(ids[i], i, vocab, path, what);
      t[i] = static_cast<Token>(ids[i]);
    }
  } else {
    if (raw == RawTokens::unspecified)
      fail(path, " (", what, ") is not a .safetensors file; for a raw stream of token ids say "
           "its width with --token-dtype uint16 or --token-dtype uint32");
    const std::size_t width = raw == RawTokens::uint16 ? 2 : 4;
    const std::string bytes = read_regular_file(path, kMaxDataFileBytes, what);
    if (bytes.size() % width != 0)
      fail(path, " (", what, ") has ", bytes.size(), " bytes, not a whole number of ", width,
           "-byte token ids");
    t.resize(bytes.size() / width);
    const auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
    for (std::size_t i = 0; i < t.size(); ++i) {
      std::uint32_t v = 0;
      for (std::size_t k = 0; k < width; ++k) v |= std::uint32_t{b[i * width + k]} << (8 * k);
      detail::check_id(v, i, vocab, path, what,
                       width == 2 ? "; was the stream written for another model's tokenizer?"
                                  : "; is the stream uint16 rather than uint32?");
      t[i] = static_cast<Token>(v);
    }
  }
  if (t.size() < min_tokens)
    fail(path, " has ", t.size(), " tokens but ", what, " needs at least ", min_tokens,
         " (one window of inputs plus its next-token target)");
  return t;
}

/// Result of a perplexity evaluation.
struct Perplexity {
  double nll = 0;             ///< total next-token negative log-likelihood (nats)
  std::int64_t predictions = 0;
  std::int64_t windows = 0;
  double nll_per_token() const { return nll / static_cast<double>(predictions); }
  double ppl() const { return std::exp(nll_per_token()); }
};

/// Number of evaluation windows the protocol takes from `tokens` tokens: starts 0, T, 2T, …
/// while the window and its next-token target fit.
inline std::int64_t eval_window_count(std::size_t tokens, Eigen::Index T) {
  return tokens < static_cast<std::size_t>(T) + 1
             ? 0
             : static_cast<std::int64_t>((tokens - 1) / static_cast<std::size_t>(T));
}

/// Throws std::invalid_argument unless every id is in [0, vocab) (`who` names the caller).
/// The readers above check ids with the file's name; this guards the lookups.
inline void require_vocab(std::int64_t vocab, const Tokens& tokens, const char* who) {
  for (std::size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      fail(who, ": token ", i, " is ", tokens[i], ", outside the model's vocabulary [0, ", vocab,
           ")");
}

/// The windows [first, last) of this process and their number n: eval_window_count, capped at
/// `max_windows` when that is ≥ 0, in blocks over the processes of an MPI run.
struct EvalWindows {
  std::int64_t n = 0, first = 0, last = 0;
};
inline EvalWindows eval_windows(std::size_t tokens, Eigen::Index T, std::int64_t max_windows) {
  EvalWindows w;
  w.n = eval_window_count(tokens, T);
  if (max_windows >= 0 && max_windows < w.n) w.n = max_windows;
  std::tie(w.first, w.last) = processes().block(w.n);
  return w;
}

/// Σ of the per-window NLLs of all processes (`mine`: this process's windows) in window order.
inline Perplexity sum_windows(const std::vector<double>& mine, std::int64_t n, Eigen::Index T) {
  Perplexity r;
  for (double v : processes().gather(mine, n)) r.nll += v;
  // Finite weights can still overflow float inside the forward pass: refuse, never print NaN.
  if (!std::isfinite(r.nll))
    throw std::runtime_error("llama::perplexity: the model's log-likelihood is not finite "
                             "(its activations overflow float); the weights are unusable");
  r.windows = n;
  r.predictions = n * T;
  return r;
}

/// Held-out perplexity with non-overlapping windows: window w has inputs tokens[wT, wT+T) and
/// targets tokens[wT+1, wT+T+1); ppl = exp(Σ NLL / (windows·T)). `max_windows` < 0 means all.
/// Windows run in parallel (OpenMP threads, and the ranks of an MPI run: dist.hpp); the sum is
/// taken in window order, so the result depends on neither.
inline Perplexity perplexity(const Model& m, const Tokens& tokens, Eigen::Index T,
                             std::int64_t max_windows = -1) {
  require_vocab(m.config.vocab_size, tokens, "llama::perplexity");
  const EvalWindows w = eval_windows(tokens.size(), T, max_windows);
  const Rope rope(m.config, T);
  std::vector<double> mine(static_cast<std::size_t>(w.last - w.first), 0.0);
  LLAMA_OMP_PARALLEL_FOR
  for (std::int64_t k = w.first; k < w.last; ++k) {
    const Token* p = tokens.data() + k * T;
    mine[static_cast<std::size_t>(k - w.first)] = window_nll(forward(m, rope, p, T), p + 1);
  }
  return sum_windows(mine, w.n, T);
}

/// Start offsets of `n` calibration windows of T tokens drawn uniformly from a stream of
/// `tokens` tokens with a fixed seed (a 64-bit Mersenne twister; the offset is taken modulo the
/// range so the draw is the same on every standard library).
inline std::vector<std::size_t> calibration_starts(std::size_t tokens, Eigen::Index T, int n,
                                                   std::uint64_t seed) {
  if (tokens < static_cast<std::size_t>(T) + 1)
    fail("llama::calibration_starts: the calibration stream has ", tokens,
         " tokens, fewer than one window of ", T, " + 1");
  std::mt19937_64 rng(seed);
  const std::uint64_t range = tokens - static_cast<std::size_t>(T);
  std::vector<std::size_t> starts(static_cast<std::size_t>(n));
  for (auto& s : starts) s = static_cast<std::size_t>(rng() % range);
  return starts;
}

}  // namespace llama
