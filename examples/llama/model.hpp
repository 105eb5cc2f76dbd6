#pragma once
/// \file model.hpp
/// Weights of a Llama / Qwen2-style decoder, loaded from (and saved to) a Hugging Face
/// safetensors checkpoint. Every weight is held in float32 whatever its stored type.

#include "config.hpp"

#include <q2n/detail/parallel.hpp>
#include <q2n/io/safetensors.hpp>
#include <q2n/storage.hpp>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace llama {

/// Activations and weights: row-major float32, one token (or one output channel) per row.
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vector = Eigen::VectorXf;

/// A linear layer `y = x Wᵀ + b` with W stored [out, in] as in PyTorch.
struct Linear {
  Matrix weight;  ///< out × in
  Vector bias;    ///< empty when the checkpoint has none (Llama); q/k/v have one in Qwen2

  bool has_bias() const { return bias.size() > 0; }
  Eigen::Index in_features() const { return weight.cols(); }
  Eigen::Index out_features() const { return weight.rows(); }

  /// y = x Wᵀ + b for a batch of tokens x (n × in). The product is split into fixed panels
  /// (q2n's thread-count-independent product), so the example's numbers are the same on any
  /// number of cores.
  void apply(const Matrix& x, Matrix& y) const {
    y.resize(x.rows(), weight.rows());
    q2n::detail::panel_product(y, x, weight.transpose(), 1.0f, false);
    if (has_bias()) y.rowwise() += bias.transpose();
  }
};

/// The seven linear layers of a decoder layer, in the order the sequential calibration visits
/// them (true-sequential groups: q,k,v | o | up,gate | down).
enum class Proj { q, k, v, o, up, gate, down };
inline constexpr Proj kAllProj[] = {Proj::q, Proj::k, Proj::v, Proj::o,
                                    Proj::up, Proj::gate, Proj::down};

/// Hugging Face module name of a projection inside `model.layers.{i}`.
inline const char* proj_name(Proj p) {
  switch (p) {
    case Proj::q: return "self_attn.q_proj";
    case Proj::k: return "self_attn.k_proj";
    case Proj::v: return "self_attn.v_proj";
    case Proj::o: return "self_attn.o_proj";
    case Proj::up: return "mlp.up_proj";
    case Proj::gate: return "mlp.gate_proj";
    case Proj::down: return "mlp.down_proj";
  }
  return "";
}

/// What is quantized at inference besides the weights (16 bits: nothing); set on a model's
/// layers by set_inference_bits (rotation.hpp).
struct InferenceBits {
  int act_bits = 16;  ///< every linear's input but lm_head's, per token (q2n/activations.hpp)
  double act_clip = 1.0;
  int kv_bits = 16;   ///< the K and V caches: each token's keys, resp. values, of all KV heads
  double kv_clip = 1.0;
};

/// What a layer runs at inference besides its weights: the online transforms a rotated model
/// needs (rotation.hpp) and the quantizers of W·A· inference. The defaults run nothing.
struct OnlineOps {
  /// Applied to every token of o_proj's input (the heads' outputs) before o_proj reads it.
  std::shared_ptr<const q2n::OrthogonalTransform<float>> before_o;
  /// Applied to every token of down_proj's input.
  std::shared_ptr<const q2n::OrthogonalTransform<float>> before_down;
  /// Applied to every head of q and k after RoPE (q·k unchanged), so that the K cache
  /// quantizes as the linears' inputs do; only with kv_bits < 16.
  std::shared_ptr<const q2n::OrthogonalTransform<float>> head;
  /// Per-token symmetric quantization of the linears' inputs (after the transforms) and of
  /// the K and V caches.
  InferenceBits bits;
};

/// One decoder layer: pre-norm attention block and pre-norm SwiGLU block.
struct DecoderLayer {
  Vector input_norm;  ///< RMSNorm weight before attention
  Vector post_norm;   ///< RMSNorm weight before the MLP
  Linear q, k, v, o, gate, up, down;
  OnlineOps online;

  Linear& linear(Proj p) {
    switch (p) {
      case Proj::q: return q;
      case Proj::k: return k;
      case Proj::v: return v;
      case Proj::o: return o;
      case Proj::up: return up;
      case Proj::gate: return gate;
      case Proj::down: return down;
    }
    return q;
  }
  const Linear& linear(Proj p) const { return const_cast<DecoderLayer*>(this)->linear(p); }
};

/// A whole causal LM.
struct Model {
  Config config;
  Matrix embed;  ///< vocab × hidden
  std::vector<DecoderLayer> layers;
  Vector norm;     ///< final RMSNorm weight
  Linear lm_head;  ///< vocab × hidden; a copy of `embed` when tie_word_embeddings
};

namespace detail {

/// Tensor lookup over a single-file or sharded (`model.safetensors.index.json`) checkpoint.
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir) {
    namespace fs = std::filesystem;
    const std::string single = dir + "/model.safetensors";
    const std::string index = dir + "/model.safetensors.index.json";
    if (fs::is_regular_file(single)) {
      open(single);
      for (const auto& n : readers_.back()->names()) where_[n] = 0;
    } else if (fs::is_regular_file(index)) {
      const nlohmann::json j = read_json(index, 64 << 20, "the checkpoint's shard index");
      if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
        fail("llama::load_model: ", index, " has no \"weight_map\" object");
      std::map<std::string, std::size_t> shard_of_file;
      for (const auto& [name, file] : j["weight_map"].items()) {
        if (!file.is_string())
          fail("llama::load_model: ", index, ": weight_map[\"", name, "\"] is not a file name");
        const std::string f = file.get<std::string>();
        // Shards are files of the model directory itself: a name with a path separator (or
        // "..") could point anywhere on the machine.
        if (f.empty() || f == "." || f == ".." || f.find('/') != std::string::npos ||
            f.find('\\') != std::string::npos)
          fail("llama::load_model: ", index, ": weight_map[\"", name, "\"] = \"", f,
               "\" is not a file name inside ", dir);
        auto it = shard_of_file.find(f);
        if (it == shard_of_file.end()) {
          open(dir + "/" + f);
          it = shard_of_file.emplace(f, readers_.size() - 1).first;
        }
        where_[name] = it->second;
      }
    } else {
      fail("llama::load_model: ", dir, " holds neither model.safetensors nor "
           "model.safetensors.index.json; pass --model DIR with a Hugging Face checkpoint");
    }
  }

  bool contains(const std::string& name) const { return where_.count(name) > 0; }

  /// Reads a tensor as a float matrix after checking its shape.
  Matrix matrix(const std::string& name, std::int64_t rows, std::int64_t cols,
                const char* why) const {
    const auto& [reader, path] = locate(name);
    const auto& info = reader->info(name);
    const std::vector<std::int64_t> want{rows, cols};
    check(info, path, name, want, why);
    Matrix m = reader->template read_matrix<float>(name);
    require_finite(m, path, name);
    return m;
  }

  /// Rows [first, first + count) of a rows × cols tensor as a float matrix (shape checked).
  Matrix rows(const std::string& name, std::int64_t rows, std::int64_t cols, std::int64_t first,
              std::int64_t count, const char* why) const {
    const auto& [reader, path] = locate(name);
    check(reader->info(name), path, name, {rows, cols}, why);
    Matrix m = reader->template read_rows<float>(name, first, count);
    require_finite(m, path, name);
    return m;
  }

  /// The stored type of a tensor.
  q2n::io::DType dtype(const std::string& name) const {
    return locate(name).first->info(name).dtype;
  }

  /// Number of decoder layers the checkpoint holds: i such that model.layers.{i}.* exist for
  /// every i below it.
  int layer_count() const {
    int n = 0;
    while (contains("model.layers." + std::to_string(n) + ".input_layernorm.weight")) ++n;
    return n;
  }

  /// Reads a 1-D tensor as a float vector after checking its length.
  Vector vector(const std::string& name, std::int64_t n, const char* why) const {
    const auto& [reader, path] = locate(name);
    check(reader->info(name), path, name, {n}, why);
    const std::vector<float> flat = reader->template read_flat<float>(name);
    Vector v = Eigen::Map<const Vector>(flat.data(), static_cast<Eigen::Index>(flat.size()));
    require_finite(v, path, name);
    return v;
  }

 private:
  void open(const std::string& path) {
    if (!std::filesystem::is_regular_file(path))
      fail("llama::load_model: checkpoint file ", path, " does not exist");
    try {
      readers_.push_back(std::make_unique<q2n::io::SafetensorsReader>(path));
    } catch (const std::exception& e) {
      fail("llama::load_model: cannot read ", path, ": ", e.what());
    }
    paths_.push_back(path);
  }

  std::pair<const q2n::io::SafetensorsReader*, const std::string&> locate(
      const std::string& name) const {
    auto it = where_.find(name);
    if (it == where_.end())
      fail("llama::load_model: tensor \"", name, "\" is missing from ",
           paths_.empty() ? std::string("the checkpoint") : paths_.front(),
           "; the checkpoint does not match the Llama/Qwen2 layout");
    return {readers_[it->second].get(), paths_[it->second]};
  }

  // A NaN or Inf weight (or one that overflows float) would turn every perplexity into NaN.
  template <class M>
  static void require_finite(const M& m, const std::string& path, const std::string& name) {
    if (!m.allFinite())
      fail("llama::load_model: ", path, ": tensor \"", name,
           "\" holds NaN or Inf values (or values beyond float's range)");
  }

  static std::string shape_str(const std::vector<std::int64_t>& s) {
    std::string out = "[";
    for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  }

  static void check(const q2n::io::TensorInfo& info, const std::string& path,
                    const std::string& name, const std::vector<std::int64_t>& want,
                    const char* why) {
    using q2n::io::DType;
    if (info.dtype != DType::BF16 && info.dtype != DType::F16 && info.dtype != DType::F32 &&
        info.dtype != DType::F64)
      fail("llama::load_model: ", path, ": tensor \"", name,
           "\" is not floating point (BF16/F16/F32/F64); quantized checkpoints cannot be loaded");
    if (info.shape != want)
      fail("llama::load_model: ", path, ": tensor \"", name, "\" has shape ",
           shape_str(info.shape), " but config.json implies ", shape_str(want), " (", why,
           "); the config and the weights disagree");
  }

  std::vector<std::unique_ptr<q2n::io::SafetensorsReader>> readers_;
  std::vector<std::string> paths_;
  std::map<std::string, std::size_t> where_;
};

inline Linear load_linear(const Checkpoint& ck, const std::string& prefix, std::int64_t out,
                          std::int64_t in, const char* why) {
  Linear l;
  l.weight = ck.matrix(prefix + ".weight", out, in, why);
  if (ck.contains(prefix + ".bias")) l.bias = ck.vector(prefix + ".bias", out, why);
  return l;
}

inline DecoderLayer load_layer(const Checkpoint& ck, const Config& c, int i) {
  const std::int64_t h = c.hidden_size, inter = c.intermediate_size;
  const std::int64_t qdim = std::int64_t{c.num_attention_heads} * c.head_dim;
  const std::int64_t kvdim = std::int64_t{c.num_key_value_heads} * c.head_dim;
  const std::string p = "model.layers." + std::to_string(i) + ".";
  DecoderLayer L;
  L.input_norm = ck.vector(p + "input_layernorm.weight", h, "hidden_size");
  L.post_norm = ck.vector(p + "post_attention_layernorm.weight", h, "hidden_size");
  L.q = load_linear(ck, p + "self_attn.q_proj", qdim, h,
                    "num_attention_heads*head_dim x hidden_size");
  L.k = load_linear(ck, p + "self_attn.k_proj", kvdim, h,
                    "num_key_value_heads*head_dim x hidden_size");
  L.v = load_linear(ck, p + "self_attn.v_proj", kvdim, h,
                    "num_key_value_heads*head_dim x hidden_size");
  L.o = load_linear(ck, p + "self_attn.o_proj", h, qdim,
                    "hidden_size x num_attention_heads*head_dim");
  L.gate = load_linear(ck, p + "mlp.gate_proj", inter, h, "intermediate_size x hidden_size");
  L.up = load_linear(ck, p + "mlp.up_proj", inter, h, "intermediate_size x hidden_size");
  L.down = load_linear(ck, p + "mlp.down_proj", h, inter, "hidden_size x intermediate_size");
  return L;
}

// The checkpoint of DIR with its config, the layer count checked against the file before
// anything is allocated for the layers.
inline std::pair<Config, std::unique_ptr<Checkpoint>> open_checkpoint(const std::string& dir) {
  if (!std::filesystem::is_directory(dir))
    fail("llama::load_model: model directory ", dir,
         " does not exist; pass --model DIR with a directory that holds config.json and "
         "model.safetensors");
  Config c = load_config(dir + "/config.json");
  auto ck = std::make_unique<Checkpoint>(dir);
  if (const int present = ck->layer_count(); present != c.num_hidden_layers)
    fail("llama::load_model: ", dir, "/config.json says num_hidden_layers = ",
         c.num_hidden_layers, " but the checkpoint holds ", present, " layers");
  return {std::move(c), std::move(ck)};
}

// Whether the LM head is the embedding table (tied and not stored on its own).
inline bool lm_head_is_embed(const Checkpoint& ck, const Config& c) {
  return c.tie_word_embeddings && !ck.contains("lm_head.weight");
}

}  // namespace detail

/// Loads `DIR/config.json` and `DIR/model.safetensors` (or a sharded checkpoint).
/// Throws std::invalid_argument naming the file and the problem: missing directory or file,
/// malformed config, missing tensor, a tensor whose shape disagrees with the config.
inline Model load_model(const std::string& dir) {
  auto [config, ck] = detail::open_checkpoint(dir);
  Model m;
  m.config = std::move(config);
  const Config& c = m.config;
  const std::int64_t h = c.hidden_size;
  m.embed = ck->matrix("model.embed_tokens.weight", c.vocab_size, h, "vocab_size x hidden_size");
  m.layers.reserve(static_cast<std::size_t>(c.num_hidden_layers));
  for (int i = 0; i < c.num_hidden_layers; ++i) m.layers.push_back(detail::load_layer(*ck, c, i));
  m.norm = ck->vector("model.norm.weight", h, "hidden_size");
  if (detail::lm_head_is_embed(*ck, c)) {
    m.lm_head.weight = m.embed;
  } else {
    m.lm_head = detail::load_linear(*ck, "lm_head", c.vocab_size, h, "vocab_size x hidden_size");
  }
  return m;
}

/// A checkpoint read on demand (streaming.hpp): the config at once, every tensor when asked
/// for, converted to float then; nothing is kept. The checks are load_model's.
class ModelSource {
 public:
  explicit ModelSource(const std::string& dir) {
    auto [config, ck] = detail::open_checkpoint(dir);
    config_ = std::move(config);
    ck_ = std::move(ck);
    const std::int64_t h = config_.hidden_size;
    // Shapes are checked now, before any work: a bad file fails at once, not after hours.
    (void)ck_->rows("model.embed_tokens.weight", config_.vocab_size, h, 0, 0,
                    "vocab_size x hidden_size");
    (void)ck_->rows(lm_head_name(), config_.vocab_size, h, 0, 0, "vocab_size x hidden_size");
  }

  const Config& config() const { return config_; }

  DecoderLayer layer(int i) const { return detail::load_layer(*ck_, config_, i); }
  Vector norm() const { return ck_->vector("model.norm.weight", config_.hidden_size, "hidden_size"); }

  /// Rows [first, first + count) of the embedding table / of the LM head (vocab × hidden).
  Matrix embed_rows(std::int64_t first, std::int64_t count) const {
    return ck_->rows("model.embed_tokens.weight", config_.vocab_size, config_.hidden_size, first,
                     count, "vocab_size x hidden_size");
  }
  Matrix lm_head_rows(std::int64_t first, std::int64_t count) const {
    return ck_->rows(lm_head_name(), config_.vocab_size, config_.hidden_size, first, count,
                     "vocab_size x hidden_size");
  }
  /// The LM head's bias (empty when it has none).
  Vector lm_head_bias() const {
    return ck_->contains("lm_head.bias") ? ck_->vector("lm_head.bias", config_.vocab_size,
                                                       "vocab_size")
                                         : Vector();
  }
  q2n::io::DType dtype(const std::string& name) const { return ck_->dtype(name); }

 private:
  std::string lm_head_name() const {
    return detail::lm_head_is_embed(*ck_, config_) ? "model.embed_tokens.weight"
                                                   : "lm_head.weight";
  }

  Config config_;
  std::unique_ptr<detail::Checkpoint> ck_;
};

/// Writes `DIR/config.json` and `DIR/model.safetensors` (all tensors in `dtype`, Hugging Face
/// names), loadable again by load_model. Creates DIR if needed.
inline void save_model(const Model& m, const std::string& dir,
                       q2n::io::DType dtype = q2n::io::DType::F32) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir))
    fail("llama::save_model: cannot create directory ", dir, " (", ec.message(), ")");
  q2n::io::SafetensorsWriter w;
  w.set_metadata("format", "pt");
  auto add_vec = [&](const std::string& name, const Vector& v) {
    w.add(name, v.transpose(), dtype, {static_cast<std::int64_t>(v.size())});
  };
  auto add_lin = [&](const std::string& prefix, const Linear& l) {
    w.add(prefix + ".weight", l.weight, dtype);
    if (l.has_bias()) add_vec(prefix + ".bias", l.bias);
  };
  w.add("model.embed_tokens.weight", m.embed, dtype);
  for (std::size_t i = 0; i < m.layers.size(); ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const DecoderLayer& L = m.layers[i];
    add_vec(p + "input_layernorm.weight", L.input_norm);
    add_vec(p + "post_attention_layernorm.weight", L.post_norm);
    for (Proj pr : kAllProj) add_lin(p + proj_name(pr), L.linear(pr));
  }
  add_vec("model.norm.weight", m.norm);
  if (!m.config.tie_word_embeddings) add_lin("lm_head", m.lm_head);
  w.write(dir + "/model.safetensors");

  nlohmann::json cfg = m.config.raw;
  cfg["torch_dtype"] = dtype == q2n::io::DType::BF16   ? "bfloat16"
                       : dtype == q2n::io::DType::F16 ? "float16"
                                                      : "float32";
  std::ofstream out(dir + "/config.json");
  out << cfg.dump(2) << "\n";
  if (!out) fail("llama::save_model: cannot write ", dir, "/config.json");
}

}  // namespace llama
