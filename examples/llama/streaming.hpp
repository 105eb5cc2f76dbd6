#pragma once
/// \file streaming.hpp
/// The sequential pass on a checkpoint read layer by layer (ModelSource) instead of a model
/// held in memory: for a model larger than the machine's memory. At any time the process holds
/// one decoder layer in float, the residual streams of the calibration and evaluation windows,
/// and one group's statistics; the embedding table and the LM head are read in blocks of rows.
///
///   for each layer i:  read layer i → push the float evaluation stream through it →
///                      quantize it on the calibration stream (quantize_layer) → push the
///                      quantized evaluation stream through it → write it → drop it
///   then: final norm and LM head, block by block, on both evaluation streams.
///
/// The numbers are those of quantize_sequential + perplexity on the loaded model: the same
/// products on the same operands, and the LM head's log-sum-exp taken block by block (one block
/// when the vocabulary is at most kRowBlockBytes of floats wide; beyond, the running maximum
/// rescales the sum, which changes its last bits). The output is a sharded checkpoint:
/// embeddings, one shard per decoder layer, final norm and LM head, and the index.

#include "sequential.hpp"

#include <q2n/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <numeric>
#include <string>
#include <tuple>
#include <vector>

namespace llama {

/// Blocks of the embedding table and the LM head are read this many bytes of float at a time.
inline constexpr std::int64_t kRowBlockBytes = std::int64_t{32} << 20;

inline std::int64_t row_block(const Config& c, std::int64_t bytes = kRowBlockBytes) {
  return std::max<std::int64_t>(1, bytes / (4 * std::int64_t{c.hidden_size}));
}

/// Embedding rows of ids[0, n): x.row(t) = embed[ids[t]], reading only the blocks of the table
/// that hold an id, `block` rows at a time. The ids must be in the vocabulary (require_vocab).
inline Matrix embed_ids(const ModelSource& src, const Token* ids, Eigen::Index n,
                        std::int64_t block) {
  const Config& c = src.config();
  Matrix x(n, c.hidden_size);
  std::vector<Eigen::Index> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), Eigen::Index{0});
  std::sort(order.begin(), order.end(), [&](Eigen::Index a, Eigen::Index b) { return ids[a] < ids[b]; });
  for (std::size_t a = 0; a < order.size();) {
    const std::int64_t first = ids[order[a]] / block * block;
    const std::int64_t count = std::min<std::int64_t>(block, c.vocab_size - first);
    const Matrix rows = src.embed_rows(first, count);
    for (; a < order.size() && ids[order[a]] < first + count; ++a)
      x.row(order[a]) = rows.row(ids[order[a]] - first);
  }
  return x;
}

/// The checkpoint a streaming pass writes: `model-XXXXX-of-YYYYY.safetensors` shards (the
/// embeddings; each decoder layer; the final norm with the LM head), then
/// `model.safetensors.index.json` and `config.json`, which load_model reads back. Decoder
/// layers in float32 (as save_model writes them); the embeddings and the LM head keep the
/// source's type, which holds their values exactly. Nothing is written when `dir` is empty.
class ShardWriter {
 public:
  ShardWriter(std::string dir, const Config& c) : dir_(std::move(dir)), config_(c) {
    shards_ = c.num_hidden_layers + 2;
    if (dir_.empty()) return;
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (!std::filesystem::is_directory(dir_))
      fail("llama::ShardWriter: cannot create directory ", dir_, " (", ec.message(), ")");
  }

  bool enabled() const { return !dir_.empty(); }

  /// Writes the next shard with `add` filling it (called with a SafetensorsWriter).
  template <class Add>
  void shard(Add&& add) {
    if (!enabled()) return;
    q2n::io::SafetensorsWriter w;
    w.set_metadata("format", "pt");
    add(w);
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", ++written_, shards_);
    w.write(dir_ + "/" + name);
    const q2n::io::SafetensorsReader back(dir_ + "/" + name);  // its names and sizes
    for (const auto& t : back.names()) {
      weight_map_[t] = name;
      total_size_ += back.info(t).end - back.info(t).begin;
    }
  }

  /// Writes the index and config.json once every shard is written.
  void finish() {
    if (!enabled()) return;
    if (written_ != shards_)
      fail("llama::ShardWriter: ", written_, " of ", shards_, " shards written to ", dir_);
    nlohmann::json index;
    index["metadata"]["total_size"] = total_size_;
    index["weight_map"] = weight_map_;
    write_text(dir_ + "/model.safetensors.index.json", index.dump(2) + "\n");
    nlohmann::json cfg = config_.raw;
    cfg["torch_dtype"] = "float32";
    write_text(dir_ + "/config.json", cfg.dump(2) + "\n");
  }

 private:
  static void write_text(const std::string& path, const std::string& text) {
    std::ofstream out(path);
    out << text;
    if (!out) fail("llama::ShardWriter: cannot write ", path);
  }

  std::string dir_;
  Config config_;
  int shards_ = 0, written_ = 0;
  std::map<std::string, std::string> weight_map_;
  std::uint64_t total_size_ = 0;
};

/// Tensors of decoder layer i as save_model writes them.
inline void add_layer(q2n::io::SafetensorsWriter& w, const DecoderLayer& L, int i) {
  const std::string p = "model.layers." + std::to_string(i) + ".";
  auto add_vec = [&](const std::string& name, const Vector& v) {
    w.add(name, v.transpose(), q2n::io::DType::F32, {static_cast<std::int64_t>(v.size())});
  };
  add_vec(p + "input_layernorm.weight", L.input_norm);
  add_vec(p + "post_attention_layernorm.weight", L.post_norm);
  for (Proj pr : kAllProj) {
    const Linear& l = L.linear(pr);
    w.add(p + proj_name(pr) + ".weight", l.weight, q2n::io::DType::F32);
    if (l.has_bias()) add_vec(p + proj_name(pr) + ".bias", l.bias);
  }
}

/// The residual streams of this process's evaluation windows (rows [wT, (w+1)T) window
/// first + w) and their per-window NLL once finished.
struct EvalStream {
  Matrix x;
  std::vector<double> nll;
};

/// Σ_t −log softmax(norm(x_t) · lm_headᵀ)[target_t] of every window of every stream: the LM
/// head read `block` rows at a time, each block applied to all streams (window_nll's numbers
/// when one block holds the whole vocabulary).
inline void finish_windows(const ModelSource& src, std::vector<EvalStream*> streams,
                           const Token* targets, Eigen::Index T, std::int64_t block) {
  const Config& c = src.config();
  const Vector norm = src.norm();
  const Vector bias = src.lm_head_bias();
  for (EvalStream* s : streams) {
    Matrix xn;
    rms_norm(s->x, norm, c.rms_norm_eps, xn);
    s->x = std::move(xn);
  }
  const Eigen::Index n = streams.empty() ? 0 : streams[0]->x.rows();
  const std::size_t total = streams.size() * static_cast<std::size_t>(n);
  std::vector<double> mx(total, -std::numeric_limits<double>::infinity()), z(total, 0.0),
      target(total, 0.0);
  for (std::int64_t r0 = 0; r0 < c.vocab_size; r0 += block) {
    const std::int64_t count = std::min<std::int64_t>(block, c.vocab_size - r0);
    const Matrix head = src.lm_head_rows(r0, count);
    for (std::size_t k = 0; k < streams.size(); ++k) {
      const Matrix& xn = streams[k]->x;
      LLAMA_OMP_PARALLEL_FOR
      for (Eigen::Index w = 0; w < n / T; ++w) {
        Matrix logits(T, count);
        q2n::detail::panel_product(logits, xn.middleRows(w * T, T), head.transpose(), 1.0f, false);
        if (bias.size() > 0) logits.rowwise() += bias.segment(r0, count).transpose();
        for (Eigen::Index t = 0; t < T; ++t) {
          const std::size_t i = k * static_cast<std::size_t>(n) + static_cast<std::size_t>(w * T + t);
          const auto row = logits.row(t);
          const double m = std::max<double>(mx[i], row.maxCoeff());
          if (m > mx[i]) z[i] *= std::exp(mx[i] - m);  // exp(−inf) = 0 for the first block
          mx[i] = m;
          for (Eigen::Index j = 0; j < count; ++j) z[i] += std::exp(double(row(j)) - m);
          const std::int64_t y = targets[w * T + t];
          if (y >= r0 && y < r0 + count) target[i] = row(y - r0);
        }
      }
    }
  }
  for (std::size_t k = 0; k < streams.size(); ++k) {
    streams[k]->nll.assign(static_cast<std::size_t>(n / T), 0.0);
    for (Eigen::Index w = 0; w < n / T; ++w) {
      double nll = 0;
      for (Eigen::Index t = 0; t < T; ++t) {
        const std::size_t i = k * static_cast<std::size_t>(n) + static_cast<std::size_t>(w * T + t);
        nll += mx[i] + std::log(z[i]) - target[i];
      }
      streams[k]->nll[static_cast<std::size_t>(w)] = nll;
    }
  }
}

/// What a streaming pass computes.
struct StreamOptions {
  PassOptions pass;               ///< the method and its settings (shared_twin not supported)
  std::string save_dir;           ///< where to write the quantized checkpoint ("" = nowhere)
  bool evaluate_float = true;     ///< also the float model's perplexity (one more stream)
  std::int64_t eval_windows = -1; ///< −1: every window of the protocol
  std::int64_t row_block_bytes = kRowBlockBytes;  ///< embedding / LM head blocks
};

struct StreamResult {
  std::vector<LinearRecord> records;
  PassTimes times;
  Perplexity fp, quantized;   ///< fp only with evaluate_float
  double eval_seconds = 0;    ///< the evaluation streams' forward passes and LM head
};

/// The sequential pass of `so.pass` on `src` with the calibration windows drawn as
/// capture_layer0_inputs draws them, and the perplexity of the result (and of the float model)
/// on `eval_tokens`; the quantized checkpoint written layer by layer to so.save_dir (by the
/// first process of an MPI run).
inline StreamResult quantize_streaming(const ModelSource& src, const Tokens& calib_tokens,
                                       Eigen::Index T, int nsamples, std::uint64_t seed,
                                       const Tokens& eval_tokens, const StreamOptions& so) {
  if (so.pass.shared_twin) fail("llama::quantize_streaming: shared_twin is not supported");
  const Config& c = src.config();
  require_vocab(c.vocab_size, eval_tokens, "llama::quantize_streaming");
  StreamResult out;
  ShardWriter writer(processes().root() ? so.save_dir : std::string(), c);
  const std::int64_t block = row_block(c, so.row_block_bytes);
  const auto start = std::chrono::steady_clock::now();

  // The embeddings: copied to the output; the windows of both streams looked up.
  writer.shard([&](q2n::io::SafetensorsWriter& w) {
    const auto dt = src.dtype("model.embed_tokens.weight");
    w.add("model.embed_tokens.weight", src.embed_rows(0, c.vocab_size), dt);
  });
  Calibration calib;
  {
    Tokens ids;
    std::tie(calib, ids) = draw_calibration(calib_tokens, c.vocab_size, T, nsamples, seed,
                                            "llama::quantize_streaming");
    calib.inputs = embed_ids(src, ids.data(), static_cast<Eigen::Index>(ids.size()), block);
  }
  const EvalWindows ew = eval_windows(eval_tokens.size(), T, so.eval_windows);
  const Token* eval_first = eval_tokens.data() + ew.first * T;
  EvalStream q, fp;
  q.x = embed_ids(src, eval_first, (ew.last - ew.first) * T, block);
  if (so.evaluate_float) fp.x = q.x;
  const Rope rope(c, T);
  auto through = [&](const DecoderLayer& L, EvalStream& s) {
    const auto t0 = std::chrono::steady_clock::now();
    LLAMA_OMP_PARALLEL_FOR
    for (std::int64_t w = 0; w < ew.last - ew.first; ++w) {
      Matrix xw = s.x.middleRows(w * T, T);
      decoder_layer(L, c, rope, xw);
      s.x.middleRows(w * T, T) = xw;
    }
    out.eval_seconds += detail::seconds_since(t0);
  };

  // The layers, one at a time.
  Matrix x = std::move(calib.inputs);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    DecoderLayer L = src.layer(i);
    if (so.evaluate_float) through(L, fp);
    quantize_layer(L, nullptr, i, c, rope, x, calib, so.pass, out.records, out.times);
    through(L, q);
    writer.shard([&](q2n::io::SafetensorsWriter& w) { add_layer(w, L, i); });
    // The records keep their figures, not their storage (codes are a byte per weight): the
    // layer is on disk now.
    for (auto r = out.records.end() - static_cast<std::ptrdiff_t>(std::size(kAllProj));
         r != out.records.end(); ++r) {
      r->result.quantized.storage = {};
      if (r->result.refined) r->result.refined->storage = {};
    }
    if (so.pass.on_layer) so.pass.on_layer(i, c.num_hidden_layers);
  }
  x.resize(0, 0);
  out.times.forward = detail::seconds_since(start) - out.times.statistics -
                      out.times.quantization - out.eval_seconds;

  // Final norm and LM head.
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<EvalStream*> streams{&q};
  if (so.evaluate_float) streams.push_back(&fp);
  finish_windows(src, streams, eval_first + 1, T, block);
  out.quantized = sum_windows(q.nll, ew.n, T);
  if (so.evaluate_float) out.fp = sum_windows(fp.nll, ew.n, T);
  out.eval_seconds += detail::seconds_since(t0);
  writer.shard([&](q2n::io::SafetensorsWriter& w) {
    w.add("model.norm.weight", src.norm().transpose(), q2n::io::DType::F32, {c.hidden_size});
    if (c.tie_word_embeddings) return;  // as save_model: the head is the embedding table
    w.add("lm_head.weight", src.lm_head_rows(0, c.vocab_size), src.dtype("lm_head.weight"));
    const Vector bias = src.lm_head_bias();
    if (bias.size() > 0)
      w.add("lm_head.bias", bias.transpose(), src.dtype("lm_head.bias"), {c.vocab_size});
  });
  writer.finish();
  return out;
}

}  // namespace llama
