#pragma once
/// \file io/gguf_llama.hpp
/// What llama.cpp expects of a Llama model in a GGUF file, beyond the file format itself:
/// the `llama.*` metadata, tensor names, the row order of the q and k projections, and a
/// byte-level tokenizer (token id = byte value) for byte models.
///
/// - Names: `model.embed_tokens.weight` → `token_embd.weight`, `model.layers.N.self_attn.
///   {q,k,v,o}_proj.weight` → `blk.N.attn_{q,k,v,output}.weight`, `model.layers.N.mlp.
///   {gate,up,down}_proj.weight` → `blk.N.ffn_{gate,up,down}.weight`, `model.layers.N.
///   {input,post_attention}_layernorm.weight` → `blk.N.{attn,ffn}_norm.weight`,
///   `model.norm.weight` → `output_norm.weight`, `lm_head.weight` → `output.weight`.
/// - RoPE: Hugging Face checkpoints rotate dimension j of a head together with j + head_dim/2
///   ("rotate half"); llama.cpp's Llama graph rotates the adjacent pair (2j, 2j + 1). The same
///   model in llama.cpp therefore needs the rows of q_proj and k_proj reordered within each
///   head: file row 2j + s of a head is checkpoint row s·head_dim/2 + j (s = 0, 1). Whole rows
///   move, so a quantized storage is reordered without loss (GgufWriter's `row_order`).
/// - Tokenizer: `tokenizer.ggml.model = "gpt2"` with 256 tokens, token b being the byte b in
///   GPT-2's printable byte alphabet, no merges; then llama.cpp maps text to byte ids.
///
/// \code
/// q2n::io::GgufWriter w;
/// q2n::io::LlamaGgufParams p;            // from the model's config.json
/// p.block_count = 4; ...
/// q2n::io::add_llama_metadata(w, p);
/// q2n::io::add_byte_tokenizer(w, 10, 10);
/// w.add_quantized("blk.0.attn_q.weight", q.storage, std::nullopt,
///                 q2n::io::rope_row_order(p.head_count, p.head_dim()));
/// \endcode

#include "gguf.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace q2n::io {

/// The `llama.*` hyper-parameters llama.cpp reads.
struct LlamaGgufParams {
  std::string name = "model";          ///< general.name
  std::uint32_t context_length = 0;    ///< max_position_embeddings
  std::uint32_t embedding_length = 0;  ///< hidden_size
  std::uint32_t block_count = 0;       ///< num_hidden_layers
  std::uint32_t feed_forward_length = 0;  ///< intermediate_size
  std::uint32_t head_count = 0;        ///< num_attention_heads
  std::uint32_t head_count_kv = 0;     ///< num_key_value_heads
  std::uint32_t key_length = 0;        ///< head_dim (0: embedding_length / head_count)
  float rope_freq_base = 10000.0f;     ///< rope_theta
  float rms_norm_eps = 1e-5f;          ///< rms_norm_eps
  std::uint32_t vocab_size = 0;
  std::uint32_t head_dim() const { return key_length ? key_length : embedding_length / head_count; }
};

/// Adds `general.architecture = "llama"`, `general.name`, `general.quantization_version = 2`
/// and the `llama.*` keys of `p`.
/// \throws std::invalid_argument for zero sizes or heads that do not divide
inline void add_llama_metadata(GgufWriter& w, const LlamaGgufParams& p) {
  const char* fn = "q2n::io::add_llama_metadata";
  if (!p.context_length || !p.embedding_length || !p.block_count || !p.feed_forward_length ||
      !p.head_count || !p.head_count_kv || !p.vocab_size)
    q2n::detail::fail(fn, ": a size in LlamaGgufParams is 0; fill every field from config.json");
  if (p.head_count % p.head_count_kv != 0 || p.head_dim() % 2 != 0)
    q2n::detail::fail(fn, ": head_count = ", p.head_count, ", head_count_kv = ", p.head_count_kv,
                      ", head_dim = ", p.head_dim(),
                      "; the KV heads must divide the heads and head_dim must be even");
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", p.name);
  w.set_u32("general.quantization_version", 2);
  w.set_u32("llama.context_length", p.context_length);
  w.set_u32("llama.embedding_length", p.embedding_length);
  w.set_u32("llama.block_count", p.block_count);
  w.set_u32("llama.feed_forward_length", p.feed_forward_length);
  w.set_u32("llama.rope.dimension_count", p.head_dim());
  w.set_f32("llama.rope.freq_base", p.rope_freq_base);
  w.set_u32("llama.attention.head_count", p.head_count);
  w.set_u32("llama.attention.head_count_kv", p.head_count_kv);
  if (p.key_length) {
    w.set_u32("llama.attention.key_length", p.key_length);
    w.set_u32("llama.attention.value_length", p.key_length);
  }
  w.set_f32("llama.attention.layer_norm_rms_epsilon", p.rms_norm_eps);
  w.set_u32("llama.vocab_size", p.vocab_size);
}

/// The text of byte `b` in GPT-2's byte alphabet, UTF-8 encoded: the printable bytes
/// '!'..'~', 0xA1..0xAC and 0xAE..0xFF stand for themselves (as code points), the other 68
/// bytes take the code points 256, 257, … in byte order.
inline std::string byte_token_text(std::uint8_t b) {
  auto printable = [](unsigned c) {
    return (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
  };
  unsigned cp = b;
  if (!printable(b)) {
    unsigned k = 0;
    for (unsigned c = 0; c < b; ++c) k += printable(c) ? 0 : 1;
    cp = 256 + k;
  }
  std::string s;
  if (cp < 0x80) {
    s.push_back(static_cast<char>(cp));
  } else {  // every code point here is below 0x800: two UTF-8 bytes
    s.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    s.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return s;
}

/// Adds a byte-level tokenizer: 256 normal tokens (id = byte value), no merges, no BOS/EOS
/// added to prompts; `bos` and `eos` name ids llama.cpp requires to exist.
inline void add_byte_tokenizer(GgufWriter& w, std::uint32_t bos, std::uint32_t eos) {
  if (bos > 255 || eos > 255)
    q2n::detail::fail("q2n::io::add_byte_tokenizer: bos = ", bos, ", eos = ", eos,
                      " must be byte ids (0..255)");
  std::vector<std::string> tokens;
  for (int b = 0; b < 256; ++b) tokens.push_back(byte_token_text(static_cast<std::uint8_t>(b)));
  w.set_string("tokenizer.ggml.model", "gpt2");
  w.set_string("tokenizer.ggml.pre", "default");
  w.set_strings("tokenizer.ggml.tokens", tokens);
  w.set_i32s("tokenizer.ggml.token_type", std::vector<std::int32_t>(256, 1));
  w.set_strings("tokenizer.ggml.merges", {});  // llama.cpp requires the key for "gpt2"
  w.set_u32("tokenizer.ggml.bos_token_id", bos);
  w.set_u32("tokenizer.ggml.eos_token_id", eos);
  w.set_bool("tokenizer.ggml.add_bos_token", false);
  w.set_bool("tokenizer.ggml.add_eos_token", false);
}

/// Row order of a q or k projection in llama.cpp's RoPE layout: entry i is the checkpoint
/// row that becomes file row i (within head h: 2j + s ← s·head_dim/2 + j).
/// \throws std::invalid_argument for an odd or zero head_dim, or no heads
inline std::vector<Eigen::Index> rope_row_order(Eigen::Index heads, Eigen::Index head_dim) {
  if (heads <= 0 || head_dim <= 0 || head_dim % 2 != 0)
    q2n::detail::fail("q2n::io::rope_row_order: heads = ", heads, ", head_dim = ", head_dim,
                      "; pass a positive head count and an even head dimension");
  std::vector<Eigen::Index> order(static_cast<std::size_t>(heads * head_dim));
  const Eigen::Index half = head_dim / 2;
  for (Eigen::Index h = 0; h < heads; ++h)
    for (Eigen::Index j = 0; j < half; ++j)
      for (Eigen::Index s = 0; s < 2; ++s)
        order[static_cast<std::size_t>(h * head_dim + 2 * j + s)] = h * head_dim + s * half + j;
  return order;
}

/// The GGUF name of a Hugging Face Llama tensor name (see the file description), or "" when
/// the name is not one of them.
inline std::string llama_gguf_tensor_name(const std::string& hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  const std::string pre = "model.layers.";
  if (hf.compare(0, pre.size(), pre) != 0) return "";
  const std::size_t dot = hf.find('.', pre.size());
  if (dot == std::string::npos) return "";
  const std::string n = hf.substr(pre.size(), dot - pre.size());
  if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos) return "";
  const std::string rest = hf.substr(dot + 1);
  static const std::pair<const char*, const char*> kMap[] = {
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
      {"input_layernorm.weight", "attn_norm.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
  };
  for (const auto& [from, to] : kMap)
    if (rest == from) return "blk." + n + "." + to;
  return "";
}

}  // namespace q2n::io
