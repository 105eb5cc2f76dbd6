#pragma once
// A small random Llama/Qwen2-style model for the example's tests: grouped-query attention,
// optional q/k/v biases (Qwen2), optional tied embeddings.

#include "llama/model.hpp"

#include <random>

namespace llama_test {

struct TinySpec {
  int hidden = 16, intermediate = 24, heads = 4, kv_heads = 2, layers = 2, vocab = 256;
  bool qkv_bias = true;
  bool tied = true;
  double theta = 500.0;
  double eps = 1e-6;
  unsigned seed = 1;
};

inline llama::Model make_tiny_model(const TinySpec& t) {
  std::mt19937 rng(t.seed);
  std::normal_distribution<float> n(0.f, 1.f);
  auto mat = [&](int r, int c, float s) {
    return llama::Matrix(llama::Matrix::NullaryExpr(r, c, [&] { return s * n(rng); }));
  };
  auto vec = [&](int k, float mean, float s) {
    return llama::Vector(llama::Vector::NullaryExpr(k, [&] { return mean + s * n(rng); }));
  };
  llama::Model m;
  auto& c = m.config;
  c.hidden_size = t.hidden;
  c.intermediate_size = t.intermediate;
  c.num_attention_heads = t.heads;
  c.num_key_value_heads = t.kv_heads;
  c.num_hidden_layers = t.layers;
  c.vocab_size = t.vocab;
  c.head_dim = t.hidden / t.heads;
  c.max_position_embeddings = 512;
  c.rms_norm_eps = t.eps;
  c.rope_theta = t.theta;
  c.tie_word_embeddings = t.tied;
  c.model_type = t.qkv_bias ? "qwen2" : "llama";
  c.raw = {{"model_type", c.model_type},
           {"hidden_size", t.hidden},
           {"intermediate_size", t.intermediate},
           {"num_attention_heads", t.heads},
           {"num_key_value_heads", t.kv_heads},
           {"num_hidden_layers", t.layers},
           {"vocab_size", t.vocab},
           {"max_position_embeddings", 512},
           {"rms_norm_eps", t.eps},
           {"rope_theta", t.theta},
           {"tie_word_embeddings", t.tied},
           {"hidden_act", "silu"}};
  const int hd = c.head_dim, h = t.hidden;
  const float ws = 1.0f / std::sqrt(static_cast<float>(h));
  m.embed = mat(t.vocab, h, 1.0f);
  m.layers.resize(static_cast<std::size_t>(t.layers));
  for (auto& L : m.layers) {
    L.input_norm = vec(h, 1.0f, 0.1f);
    L.post_norm = vec(h, 1.0f, 0.1f);
    L.q.weight = mat(t.heads * hd, h, ws);
    L.k.weight = mat(t.kv_heads * hd, h, ws);
    L.v.weight = mat(t.kv_heads * hd, h, ws);
    if (t.qkv_bias) {
      L.q.bias = vec(t.heads * hd, 0.f, 0.3f);
      L.k.bias = vec(t.kv_heads * hd, 0.f, 0.3f);
      L.v.bias = vec(t.kv_heads * hd, 0.f, 0.3f);
    }
    L.o.weight = mat(h, t.heads * hd, ws);
    L.gate.weight = mat(t.intermediate, h, ws);
    L.up.weight = mat(t.intermediate, h, ws);
    L.down.weight = mat(h, t.intermediate, 1.0f / std::sqrt(static_cast<float>(t.intermediate)));
  }
  m.norm = vec(h, 1.0f, 0.1f);
  m.lm_head.weight = t.tied ? m.embed : mat(t.vocab, h, ws);
  return m;
}

}  // namespace llama_test
