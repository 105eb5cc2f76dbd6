#pragma once
/// \file config.hpp
/// The architecture description of a Llama / Qwen2-style causal LM, read from a Hugging Face
/// `config.json`.

#include "files.hpp"

#include <nlohmann/json.hpp>

#include <cmath>
#include <string>

namespace llama {

/// Architecture hyper-parameters (the subset of a Hugging Face config this forward pass uses).
struct Config {
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_attention_heads = 0;
  int num_key_value_heads = 0;
  int num_hidden_layers = 0;
  int vocab_size = 0;
  int head_dim = 0;                    ///< hidden_size / num_attention_heads unless given
  int max_position_embeddings = 0;     ///< 0 when absent (no limit checked)
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  std::string model_type;
  nlohmann::json raw;                  ///< the whole file, kept so that a saved model keeps it
};

namespace detail {

inline int positive_int(const nlohmann::json& j, const std::string& path, const char* key) {
  if (!j.contains(key))
    fail("llama::load_config: ", path, ": key \"", key, "\" is missing; add it to config.json");
  const auto& v = j.at(key);
  if (!v.is_number_integer() || v.get<long long>() <= 0 || v.get<long long>() > (1LL << 30))
    fail("llama::load_config: ", path, ": \"", key, "\" = ", v.dump(),
         " must be a positive integer");
  return static_cast<int>(v.get<long long>());
}

/// An optional number in [lo, hi] (the range where the forward pass stays finite).
inline double number_in(const nlohmann::json& j, const std::string& path, const char* key,
                        double fallback, double lo, double hi) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  const auto& v = j.at(key);
  if (!v.is_number() || !(v.get<double>() >= lo && v.get<double>() <= hi))
    fail("llama::load_config: ", path, ": \"", key, "\" = ", v.dump(), " must be a number in [",
         lo, ", ", hi, "]");
  return v.get<double>();
}

}  // namespace detail

/// Reads and validates `config.json`.
/// \param path the file
/// \return the configuration; throws std::invalid_argument naming the file and the problem when
///         the file is missing, is not JSON, lacks a key, or describes something this forward
///         pass does not implement (another activation, RoPE scaling, sliding windows).
inline Config load_config(const std::string& path) {
  const nlohmann::json j = read_json(path, 1 << 20, "the model's config.json");
  if (!j.is_object()) fail("llama::load_config: ", path, " must hold a JSON object");

  Config c;
  c.raw = j;
  c.hidden_size = detail::positive_int(j, path, "hidden_size");
  c.intermediate_size = detail::positive_int(j, path, "intermediate_size");
  c.num_attention_heads = detail::positive_int(j, path, "num_attention_heads");
  c.num_hidden_layers = detail::positive_int(j, path, "num_hidden_layers");
  c.vocab_size = detail::positive_int(j, path, "vocab_size");
  c.num_key_value_heads = j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
                              ? detail::positive_int(j, path, "num_key_value_heads")
                              : c.num_attention_heads;
  if (j.contains("head_dim") && !j["head_dim"].is_null()) {
    c.head_dim = detail::positive_int(j, path, "head_dim");
  } else {
    if (c.hidden_size % c.num_attention_heads != 0)
      fail("llama::load_config: ", path, ": hidden_size = ", c.hidden_size,
           " is not a multiple of num_attention_heads = ", c.num_attention_heads,
           "; give head_dim explicitly");
    c.head_dim = c.hidden_size / c.num_attention_heads;
  }
  if (c.head_dim % 2 != 0)
    fail("llama::load_config: ", path, ": head_dim = ", c.head_dim,
         " is odd; rotary embeddings need an even head dimension");
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail("llama::load_config: ", path, ": num_attention_heads = ", c.num_attention_heads,
         " is not a multiple of num_key_value_heads = ", c.num_key_value_heads);
  if (j.contains("max_position_embeddings") && !j["max_position_embeddings"].is_null())
    c.max_position_embeddings = detail::positive_int(j, path, "max_position_embeddings");
  // RMSNorm's epsilon is a small positive number; RoPE's base is > 1 (its inverse powers must
  // stay in float's range: 1e-300 would make every angle infinite).
  c.rms_norm_eps = detail::number_in(j, path, "rms_norm_eps", 1e-6, 1e-30, 1);
  c.rope_theta = detail::number_in(j, path, "rope_theta", 10000.0, 1, 1e12);
  if (j.contains("tie_word_embeddings")) {
    if (!j["tie_word_embeddings"].is_boolean())
      fail("llama::load_config: ", path, ": \"tie_word_embeddings\" must be true or false");
    c.tie_word_embeddings = j["tie_word_embeddings"].get<bool>();
  }
  if (j.contains("model_type") && j["model_type"].is_string())
    c.model_type = j["model_type"].get<std::string>();
  if (j.contains("hidden_act") && j["hidden_act"] != "silu")
    fail("llama::load_config: ", path, ": hidden_act = ", j["hidden_act"].dump(),
         " is not supported; only \"silu\" (SwiGLU) is implemented");
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null())
    fail("llama::load_config: ", path, ": rope_scaling = ", j["rope_scaling"].dump(),
         " is not supported; only plain RoPE is implemented");
  if (j.contains("use_sliding_window") && j["use_sliding_window"] == true)
    fail("llama::load_config: ", path,
         ": use_sliding_window = true is not supported; only full causal attention is "
         "implemented");
  return c;
}

}  // namespace llama
