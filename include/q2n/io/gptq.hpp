#pragma once
/// \file io/gptq.hpp
/// Writing a quantized linear layer as a GPTQ checkpoint module (the layout AutoGPTQ,
/// GPTQModel, transformers/optimum, vLLM, ExLlama and llama.cpp's converter load) and the
/// `quantization_config` that describes it.
///
/// Tensors of module `M` (W is out × in = rows × cols; n_g groups):
///
/// | tensor | dtype | shape | content |
/// |---|---|---|---|
/// | `M.qweight` | I32 | [in·bits/32, out] | codes, one bit stream per output along in (q2n::pack_codes) |
/// | `M.qzeros` | I32 | [n_g, out·bits/32] | zero points along out; v1 stores z − 1, v2 stores z (q2n::pack_zeros) |
/// | `M.scales` | F16 | [n_g, out] | scales (m of Q2N folded in) |
/// | `M.g_idx` | I32 | [in] | group of each input column (act-order groups are permuted) |
///
/// so that `W[r, c] = scales[g_idx[c], r] · (code(c, r) − zero(g_idx[c], r))`.
///
/// Zero-point convention: `gptq` (v1) for symmetric grids (z = 2^(bits−1) everywhere), which
/// every consumer reads alike; `gptq_v2` for asymmetric ones, since v1 cannot store z = 0 and
/// its consumers disagree on the edge cases. v1 is accepted for an asymmetric grid only when
/// every zero point lies in [1, 2^bits − 1].
///
/// Requirements (std::invalid_argument naming the fix otherwise): one uniform grid in
/// zero-point form, nothing else (no full-precision columns, binarized entries, codebook or
/// transforms: write OWQ/PB-LLM/QuIP/QuaRot models densely); bits 2, 3, 4 or 8; rows and cols
/// multiples of 32; equal-sized groups; scales that are fp16 numbers (q2n::round_values).
///
/// \code
/// q2n::io::SafetensorsWriter w;
/// auto layout = q2n::io::gptq_layout(result.storage);
/// q2n::io::add_gptq_linear(w, "model.layers.0.self_attn.q_proj", result.storage);
/// nlohmann::json qc = q2n::io::gptq_quantization_config(layout);  // into config.json too
/// \endcode

#include "packed_grid.hpp"
#include "safetensors.hpp"

#include <q2n/packing.hpp>
#include <q2n/storage.hpp>
#include <q2n/version.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>

namespace q2n::io {

/// GPTQ checkpoint_format values.
enum class GptqFormat {
  v1,  ///< "gptq": qzeros hold z − 1
  v2,  ///< "gptq_v2": qzeros hold z
};

/// What a storage looks like as a GPTQ module.
struct GptqLayout {
  int bits = 4;
  Eigen::Index group_size = -1;  ///< −1: one group per row
  bool desc_act = false;         ///< groups permuted (act-order): g_idx[c] ≠ c / group_size
  bool sym = false;              ///< every zero point is 2^(bits−1)
  GptqFormat format = GptqFormat::v1;  ///< v1 when sym, v2 otherwise (see the file description)
};

/// The GPTQ layout of `s`.
/// \throws std::invalid_argument when `s` has none, saying why
template <class Scalar>
GptqLayout gptq_layout(const QuantStorage<Scalar>& s) {
  const char* fn = "q2n::io::gptq_layout";
  const PackedGrid p = packed_grid(s, fn, "a GPTQ checkpoint");
  if (p.bits != 2 && p.bits != 3 && p.bits != 4 && p.bits != 8)
    q2n::detail::fail(fn, ": bits = ", p.bits, "; GPTQ checkpoints hold 2, 3, 4 or 8 bits");
  if (s.rows % 32 != 0 || s.cols % 32 != 0)
    q2n::detail::fail(fn, ": the layer is ", s.rows, " x ", s.cols,
                      "; GPTQ packing needs both a multiple of 32");
  GptqLayout L;
  L.bits = p.bits;
  L.group_size = p.group_size;
  L.desc_act = p.permuted_groups;
  L.sym = p.symmetric;
  L.format = L.sym ? GptqFormat::v1 : GptqFormat::v2;
  return L;
}

/// Adds `module.qweight`, `.qzeros`, `.scales` and `.g_idx` of `s` to `w`.
/// \param format the zero-point convention; default: gptq_layout(s).format
/// \throws std::invalid_argument as gptq_layout, or for v1 with a zero point of 0
template <class Scalar>
void add_gptq_linear(SafetensorsWriter& w, const std::string& module, const QuantStorage<Scalar>& s,
                     std::optional<GptqFormat> format = std::nullopt) {
  const GptqLayout L = gptq_layout(s);
  const GptqFormat f = format.value_or(L.format);
  const auto& u = *s.uniform;
  if (f == GptqFormat::v1 && u.zeros.minCoeff() < 1)
    q2n::detail::fail("q2n::io::add_gptq_linear: ", module,
                      ": a zero point is 0, which checkpoint_format \"gptq\" (v1) cannot store; "
                      "write GptqFormat::v2 (\"gptq_v2\")");
  w.add(module + ".qweight", pack_codes(u.codes, u.bits), DType::I32);
  w.add(module + ".qzeros",
        pack_zeros(u.zeros.template cast<std::int32_t>(), u.bits,
                   f == GptqFormat::v1 ? ZeroFormat::v1 : ZeroFormat::v2),
        DType::I32);
  w.add(module + ".scales", u.scales.transpose(), DType::F16);
  w.add(module + ".g_idx", u.g_idx.transpose(), DType::I32, {static_cast<std::int64_t>(s.cols)});
}

/// The `quantization_config` object of a GPTQ checkpoint with layout `L` (write it to
/// `quantize_config.json` and to `config.json["quantization_config"]`).
inline nlohmann::ordered_json gptq_quantization_config(const GptqLayout& L) {
  const char* fmt = L.format == GptqFormat::v1 ? "gptq" : "gptq_v2";
  nlohmann::ordered_json j;
  j["quant_method"] = "gptq";
  j["bits"] = L.bits;
  j["group_size"] = L.group_size;
  j["desc_act"] = L.desc_act;
  j["sym"] = L.sym;
  j["checkpoint_format"] = fmt;
  j["format"] = fmt;
  j["static_groups"] = false;
  j["true_sequential"] = true;
  j["lm_head"] = false;
  j["pack_dtype"] = "int32";
  j["meta"] = {{"quantizer", {std::string("q2n:") + std::to_string(Q2N_VERSION_MAJOR) + "." +
                              std::to_string(Q2N_VERSION_MINOR) + "." +
                              std::to_string(Q2N_VERSION_PATCH)}}};
  return j;
}

}  // namespace q2n::io
