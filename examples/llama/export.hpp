#pragma once
/// \file export.hpp
/// Writing a quantized model in the formats inference engines load:
///   - GGUF (llama.cpp): the linears of RTN/GPTQ in the exact block carrier of their codes
///     (Q4_0 / Q4_1 / Q5_0 / Q8_0, q2n::io::gguf_carrier), everything else F32; `gguf-f32`
///     writes every tensor F32 (the "twin" holding the same weights densely);
///   - GPTQ (`qweight/qzeros/scales/g_idx`, checkpoint_format gptq or gptq_v2) and
///     compressed-tensors `pack-quantized` checkpoints (config.json, model.safetensors).
/// Methods whose storage no format packs (OWQ, PB-LLM) are written densely (F32): GGUF F32
/// tensors, or a plain safetensors checkpoint in place of GPTQ/compressed-tensors.
///
/// Every writer first checks that the storage it writes dequantizes to exactly the weights the
/// model holds (the ones the example evaluated), so what the report says is what the file holds.

#include "sequential.hpp"

#include <q2n/io/compressed_tensors.hpp>
#include <q2n/io/gguf.hpp>
#include <q2n/io/gguf_llama.hpp>
#include <q2n/io/gptq.hpp>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace llama {

/// What --export writes.
enum class ExportFormat { none, gguf, gguf_f32, gptq, ct };

inline const char* export_format_name(ExportFormat f) {
  switch (f) {
    case ExportFormat::none: return "none";
    case ExportFormat::gguf: return "gguf";
    case ExportFormat::gguf_f32: return "gguf-f32";
    case ExportFormat::gptq: return "gptq";
    case ExportFormat::ct: return "ct";
  }
  return "";
}

/// The file (GGUF) or folder (GPTQ, compressed-tensors) stem of a configuration:
/// `<method>-w<bits>-g<group>[-q2n]`, g0 for one group per row; "float" for the float model.
inline std::string export_stem(const MethodSpec* s) {
  if (!s) return "float";
  const int bits = s->method == Method::pbllm ? s->pb_high.bits : s->grid.bits;
  return std::string(method_name(s->method)) + "-w" + std::to_string(bits) + "-g" +
         std::to_string(s->groupsize > 0 ? s->groupsize : 0) + (s->q2n ? "-q2n" : "");
}

/// Whether the method's storage has a packed export (a single uniform grid).
inline bool has_packed_export(Method m) { return m == Method::rtn || m == Method::gptq; }

/// Checks, before any work, that `spec` can be exported as `f`; names the flag to change.
inline void check_exportable(ExportFormat f, const MethodSpec& s, const Config& c) {
  if (f == ExportFormat::none) return;
  if (f == ExportFormat::gguf || f == ExportFormat::gguf_f32) {
    if (c.model_type != "llama" && !c.model_type.empty())
      fail("q2n_llama: --export ", export_format_name(f), ": model_type \"", c.model_type,
           "\" is not llama; the GGUF writer knows the Llama layout only");
  }
  if (!has_packed_export(s.method) || f == ExportFormat::gguf_f32) return;
  if (f == ExportFormat::gguf) {
    if (s.act_order && !s.static_groups)
      fail("q2n_llama: --export gguf: act-order groups are permuted, and GGUF blocks hold 32 "
           "consecutive columns; add --static-groups or export with --export gguf-f32");
    if (s.groupsize > 0 && s.groupsize % 32 != 0)
      fail("q2n_llama: --export gguf: --group ", s.groupsize,
           " is not a multiple of 32, the GGUF block length; pass a multiple of 32 or 0");
    if (!s.grid.sym && s.grid.bits == 8)
      fail("q2n_llama: --export gguf: asymmetric 8-bit codes have no GGUF carrier; add --sym "
           "or use at most 7 bits");
  }
  if (f == ExportFormat::gptq && s.grid.bits != 2 && s.grid.bits != 3 && s.grid.bits != 4 &&
      s.grid.bits != 8)
    fail("q2n_llama: --export gptq: GPTQ checkpoints hold 2, 3, 4 or 8 bits, not ", s.grid.bits);
}

namespace detail {

// The record of (layer, proj), or null.
inline const LinearRecord* find_record(const std::vector<LinearRecord>& records, int layer, Proj p) {
  for (const auto& r : records)
    if (r.layer == layer && r.proj == p) return &r;
  return nullptr;
}

// Throws unless `storage` dequantizes to exactly `W` (what the model evaluated).
inline void require_same_weights(const q2n::QuantStorage<float>& storage, const Matrix& W,
                                 const std::string& name) {
  const Eigen::MatrixXf Q = q2n::dequantize(storage);
  if (Q.rows() != W.rows() || Q.cols() != W.cols() || !(Q.array() == W.array()).all())
    throw std::logic_error("llama::export: the storage of " + name +
                           " does not dequantize to the evaluated weights");
}

inline void make_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (!std::filesystem::is_directory(dir))
    fail("llama::export: cannot create directory ", dir, " (", ec.message(), ")");
}

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) fail("llama::export: cannot write ", path);
}

}  // namespace detail

/// llama.cpp's hyper-parameters of a model.
inline q2n::io::LlamaGgufParams gguf_params(const Config& c, const std::string& name,
                                            Eigen::Index seqlen) {
  q2n::io::LlamaGgufParams p;
  p.name = name;
  p.context_length = static_cast<std::uint32_t>(c.max_position_embeddings > 0 ? c.max_position_embeddings : seqlen);
  p.embedding_length = static_cast<std::uint32_t>(c.hidden_size);
  p.block_count = static_cast<std::uint32_t>(c.num_hidden_layers);
  p.feed_forward_length = static_cast<std::uint32_t>(c.intermediate_size);
  p.head_count = static_cast<std::uint32_t>(c.num_attention_heads);
  p.head_count_kv = static_cast<std::uint32_t>(c.num_key_value_heads);
  if (c.head_dim * c.num_attention_heads != c.hidden_size) p.key_length = static_cast<std::uint32_t>(c.head_dim);
  p.rope_freq_base = static_cast<float>(c.rope_theta);
  p.rms_norm_eps = static_cast<float>(c.rms_norm_eps);
  p.vocab_size = static_cast<std::uint32_t>(c.vocab_size);
  return p;
}

/// Writes `m` as a GGUF file at `path`. With `records` and `packed`, every linear whose storage
/// has an exact block carrier is written in it; all other tensors are F32.
/// \return per linear tensor name, the ggml type written
inline std::map<std::string, std::string> write_gguf(const Model& m,
                                                     const std::vector<LinearRecord>* records,
                                                     bool packed, const std::string& name,
                                                     Eigen::Index seqlen, const std::string& path) {
  const Config& c = m.config;
  q2n::io::GgufWriter w;
  q2n::io::add_llama_metadata(w, gguf_params(c, name, seqlen));
  q2n::io::add_byte_tokenizer(w, 0, 0);  // NUL: never in text, so generation never stops early
  std::map<std::string, std::string> types;
  auto vec = [&](const std::string& n, const Vector& v) { w.add_dense(n, v); };
  w.add_dense("token_embd.weight", m.embed);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const DecoderLayer& L = m.layers[static_cast<std::size_t>(i)];
    const std::string blk = "blk." + std::to_string(i) + ".";
    vec(blk + "attn_norm.weight", L.input_norm);
    vec(blk + "ffn_norm.weight", L.post_norm);
    for (Proj p : kAllProj) {
      const Linear& lin = L.linear(p);
      const std::string hf = "model.layers." + std::to_string(i) + "." + proj_name(p) + ".weight";
      const std::string gname = q2n::io::llama_gguf_tensor_name(hf);
      if (lin.has_bias())
        fail("llama::write_gguf: ", hf, " has a bias, which llama.cpp's Llama graph lacks; "
             "export a model without biases");
      std::vector<Eigen::Index> order;
      if (p == Proj::q) order = q2n::io::rope_row_order(c.num_attention_heads, c.head_dim);
      if (p == Proj::k) order = q2n::io::rope_row_order(c.num_key_value_heads, c.head_dim);
      const LinearRecord* rec = records ? detail::find_record(*records, i, p) : nullptr;
      if (rec) detail::require_same_weights(rec->result.final_result().storage, lin.weight, hf);
      if (packed && rec && !q2n::io::gguf_carrier_refusal(rec->result.final_result().storage)) {
        const auto& st = rec->result.final_result().storage;
        w.add_quantized(gname, st, std::nullopt, order);
        types[gname] = q2n::io::ggml_type_name(q2n::io::gguf_carrier(st));
      } else {
        w.add_dense(gname, lin.weight, q2n::io::GgmlType::F32, order);
        types[gname] = "F32";
      }
    }
  }
  vec("output_norm.weight", m.norm);
  if (!c.tie_word_embeddings) w.add_dense("output.weight", m.lm_head.weight);
  w.write(path);
  return types;
}

/// The narrowest dtype among F16, BF16 and F32 that holds every value of `tensors` exactly
/// (the unquantized tensors of a GPTQ / compressed-tensors checkpoint: a BF16-trained model
/// keeps its values bit for bit).
inline q2n::io::DType exact_dense_dtype(const std::vector<const Matrix*>& tensors) {
  bool f16 = true, bf16 = true;
  for (const Matrix* t : tensors)
    for (Eigen::Index i = 0; i < t->size(); ++i) {
      const float v = t->data()[i];
      f16 = f16 && q2n::detail::half_to_float(q2n::detail::float_to_half(v)) == v;
      bf16 = bf16 && q2n::detail::bf16_to_float(q2n::detail::float_to_bf16(v)) == v;
    }
  return f16 ? q2n::io::DType::F16 : bf16 ? q2n::io::DType::BF16 : q2n::io::DType::F32;
}

/// Writes a GPTQ (`gptq`) or compressed-tensors (`ct`) checkpoint folder: config.json with
/// its quantization_config (and quantize_config.json for GPTQ), model.safetensors with the
/// packed linears and the other tensors in exact_dense_dtype. The zero-point convention and
/// symmetry come from the configuration (--sym): v1 / symmetric, else gptq_v2 / zero points.
inline void write_packed_checkpoint(ExportFormat f, const Model& m,
                                    const std::vector<LinearRecord>& records,
                                    const MethodSpec& spec, const std::string& dir) {
  const Config& c = m.config;
  detail::make_dir(dir);
  q2n::io::SafetensorsWriter w;
  w.set_metadata("format", "pt");
  std::vector<const Matrix*> dense{&m.embed};
  Matrix norms(2 * c.num_hidden_layers + 1, c.hidden_size);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    norms.row(2 * i) = m.layers[static_cast<std::size_t>(i)].input_norm.transpose();
    norms.row(2 * i + 1) = m.layers[static_cast<std::size_t>(i)].post_norm.transpose();
  }
  norms.row(2 * c.num_hidden_layers) = m.norm.transpose();
  dense.push_back(&norms);
  if (!c.tie_word_embeddings) dense.push_back(&m.lm_head.weight);
  const q2n::io::DType dt = exact_dense_dtype(dense);
  auto vec = [&](const std::string& n, const Vector& v) {
    w.add(n, v.transpose(), dt, {static_cast<std::int64_t>(v.size())});
  };
  w.add("model.embed_tokens.weight", m.embed, dt);
  std::optional<q2n::io::GptqLayout> gl;
  std::optional<q2n::io::CompressedTensorsLayout> cl;
  const auto gf = spec.grid.sym ? q2n::io::GptqFormat::v1 : q2n::io::GptqFormat::v2;
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    const DecoderLayer& L = m.layers[static_cast<std::size_t>(i)];
    const std::string p = "model.layers." + std::to_string(i) + ".";
    vec(p + "input_layernorm.weight", L.input_norm);
    vec(p + "post_attention_layernorm.weight", L.post_norm);
    for (Proj pr : kAllProj) {
      const std::string module = p + proj_name(pr);
      const LinearRecord* rec = detail::find_record(records, i, pr);
      if (!rec) fail("llama::write_packed_checkpoint: no quantization record for ", module);
      const auto& st = rec->result.final_result().storage;
      detail::require_same_weights(st, L.linear(pr).weight, module);
      if (f == ExportFormat::gptq) {
        auto layout = q2n::io::gptq_layout(st);
        q2n::io::add_gptq_linear(w, module, st, gf);
        if (!gl) gl = layout;
        gl->desc_act = gl->desc_act || layout.desc_act;
      } else {
        auto layout = q2n::io::compressed_tensors_layout(st);
        q2n::io::add_compressed_tensors_linear(w, module, st, spec.grid.sym);
        if (!cl) cl = layout;
        cl->actorder_group = cl->actorder_group || layout.actorder_group;
      }
      if (L.linear(pr).has_bias()) vec(module + ".bias", L.linear(pr).bias);
    }
  }
  vec("model.norm.weight", m.norm);
  if (!c.tie_word_embeddings) w.add("lm_head.weight", m.lm_head.weight, dt);
  w.write(dir + "/model.safetensors");

  nlohmann::ordered_json qc;
  if (gl) {
    gl->sym = spec.grid.sym;
    gl->format = gf;
    qc = q2n::io::gptq_quantization_config(*gl);
    detail::write_text(dir + "/quantize_config.json", qc.dump(2) + "\n");
  } else {
    cl->symmetric = spec.grid.sym;
    qc = q2n::io::compressed_tensors_quantization_config(*cl, {"lm_head"});
  }
  nlohmann::ordered_json cfg = nlohmann::ordered_json::parse(c.raw.dump());
  cfg["torch_dtype"] = "float16";
  cfg["quantization_config"] = qc;
  detail::write_text(dir + "/config.json", cfg.dump(2) + "\n");
}

/// Writes the export of one evaluated model (`spec` null: the float model) into `dir` and
/// returns the file or folder written; says on stderr what was written densely.
inline std::string export_model(ExportFormat f, const Model& m,
                                const std::vector<LinearRecord>* records, const MethodSpec* spec,
                                const std::string& dir, Eigen::Index seqlen) {
  detail::make_dir(dir);
  const std::string stem = export_stem(spec);
  const bool packed_method = spec && has_packed_export(spec->method);
  if (f == ExportFormat::gguf || f == ExportFormat::gguf_f32) {
    const bool packed = f == ExportFormat::gguf && packed_method;
    const std::string path =
        dir + "/" + stem + (f == ExportFormat::gguf_f32 && spec ? "-f32" : "") + ".gguf";
    const auto types = write_gguf(m, records, packed, stem, seqlen, path);
    std::map<std::string, int> count;
    for (const auto& kv : types) ++count[kv.second];
    std::string summary;
    for (const auto& kv : count) summary += (summary.empty() ? "" : ", ") + std::to_string(kv.second) + " " + kv.first;
    std::cerr << "q2n_llama: wrote " << path << " (linears: " << summary
              << (spec && !packed_method && f == ExportFormat::gguf
                      ? "; " + std::string(method_name(spec->method)) + " has no packed GGUF form"
                      : std::string())
              << ")\n";
    return path;
  }
  const std::string path = dir + "/" + stem + "-" + export_format_name(f);
  if (!packed_method) {
    save_model(m, path);
    std::cerr << "q2n_llama: wrote " << path << " as a dense F32 checkpoint ("
              << (spec ? method_name(spec->method) : "the float model")
              << " has no packed " << export_format_name(f) << " form)\n";
    return path;
  }
  write_packed_checkpoint(f, m, *records, *spec, path);
  std::cerr << "q2n_llama: wrote " << path << " (" << export_format_name(f) << ")\n";
  return path;
}

}  // namespace llama
