#pragma once
/// \file io/compressed_tensors.hpp
/// Writing a quantized linear layer in compressed-tensors' `pack-quantized` format (what
/// llm-compressor produces and vLLM's compressed-tensors loader and llama.cpp's converter
/// read), and the `quantization_config` that describes it.
///
/// Tensors of module `M` (W is out × in; n_g groups; `pf = 32 / bits` codes per int32 word,
/// never straddling words: 3-bit packs 10 codes and leaves the top 2 bits zero):
///
/// | tensor | dtype | shape | content |
/// |---|---|---|---|
/// | `M.weight_packed` | I32 | [out, ceil(in/pf)] | code (r, c) in word c / pf at bit (c % pf)·bits, unsigned |
/// | `M.weight_scale` | F16 | [out, n_g] | scales (Q2N's m folded in) |
/// | `M.weight_zero_point` | I32 | [ceil(out/pf), n_g] | asymmetric only: zero (r, g) in word r / pf at bit (r % pf)·bits |
/// | `M.weight_g_idx` | I32 | [in] | only for permuted (act-order) groups |
/// | `M.weight_shape` | I64 | [2] | [out, in] |
///
/// compressed-tensors thinks of signed codes `q − 2^(bits−1)` and signed zero points
/// `z − 2^(bits−1)` and stores both offset by 2^(bits−1): the stored numbers are q2n's unsigned
/// codes and zero points as they are, and `W[r, c] = weight_scale[r, g] · (U(r, c) − UZ(r, g))`
/// with UZ = 2^(bits−1) for symmetric grids.
///
/// Requirements as for GPTQ (io/gptq.hpp) except: any width 2..8 and any shape (words are
/// padded with zeros).
///
/// \code
/// q2n::io::SafetensorsWriter w;
/// q2n::io::add_compressed_tensors_linear(w, "model.layers.0.mlp.up_proj", result.storage);
/// auto qc = q2n::io::compressed_tensors_quantization_config(
///     q2n::io::compressed_tensors_layout(result.storage), {"lm_head"});
/// \endcode

#include "packed_grid.hpp"
#include "safetensors.hpp"

#include <q2n/storage.hpp>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace q2n::io {

/// What a storage looks like in compressed-tensors terms.
struct CompressedTensorsLayout {
  int bits = 4;
  Eigen::Index group_size = -1;  ///< −1: strategy "channel" (one scale per output row)
  bool symmetric = false;        ///< every zero point is 2^(bits−1): no zero-point tensor
  bool actorder_group = false;   ///< permuted groups: weight_g_idx written, actorder "group"
};

/// The compressed-tensors layout of `s`.
/// \throws std::invalid_argument when `s` has none, saying why
template <class Scalar>
CompressedTensorsLayout compressed_tensors_layout(const QuantStorage<Scalar>& s) {
  const char* fn = "q2n::io::compressed_tensors_layout";
  const PackedGrid p = packed_grid(s, fn, "pack-quantized");
  if (p.bits < 2 || p.bits > 8) q2n::detail::fail(fn, ": bits = ", p.bits, " is outside 2..8");
  CompressedTensorsLayout L;
  L.bits = p.bits;
  L.group_size = p.group_size;
  L.symmetric = p.symmetric;
  L.actorder_group = p.permuted_groups;
  return L;
}

/// Adds the `pack-quantized` tensors of `s` as module `module` to `w`.
/// \param symmetric whether the checkpoint declares symmetric weights (no zero-point tensor);
///        default: compressed_tensors_layout(s).symmetric. An asymmetric checkpoint writes the
///        zero points of every module, even one whose zero points happen to be 2^(bits−1).
/// \throws std::invalid_argument as compressed_tensors_layout, or for `symmetric` = true when
///         a zero point differs from 2^(bits−1)
template <class Scalar>
void add_compressed_tensors_linear(SafetensorsWriter& w, const std::string& module,
                                   const QuantStorage<Scalar>& s,
                                   std::optional<bool> symmetric = std::nullopt) {
  CompressedTensorsLayout L = compressed_tensors_layout(s);
  if (symmetric && *symmetric && !L.symmetric)
    q2n::detail::fail("q2n::io::add_compressed_tensors_linear: ", module,
                      ": symmetric = true but a zero point differs from 2^(bits-1); pass "
                      "symmetric = false");
  if (symmetric) L.symmetric = *symmetric;
  const auto& u = *s.uniform;
  const int b = L.bits;
  const Eigen::Index pf = 32 / b;
  const Eigen::Index rows = s.rows, cols = s.cols, groups = u.scales.cols();
  using Words = Eigen::Matrix<std::uint32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  auto as_i32 = [](const Words& m) {
    Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> out(m.rows(), m.cols());
    for (Eigen::Index i = 0; i < m.size(); ++i) {
      const std::uint32_t v = m.data()[i];
      out.data()[i] = v <= 0x7FFFFFFFu ? static_cast<std::int32_t>(v)
                                       : static_cast<std::int32_t>(static_cast<std::int64_t>(v) - (std::int64_t{1} << 32));
    }
    return out;
  };
  Words packed = Words::Zero(rows, (cols + pf - 1) / pf);
  for (Eigen::Index r = 0; r < rows; ++r)
    for (Eigen::Index c = 0; c < cols; ++c)
      packed(r, c / pf) |= static_cast<std::uint32_t>(u.codes(r, c)) << ((c % pf) * b);
  w.add(module + ".weight_packed", as_i32(packed), DType::I32);
  w.add(module + ".weight_scale", u.scales, DType::F16);
  if (!L.symmetric) {
    Words zp = Words::Zero((rows + pf - 1) / pf, groups);
    for (Eigen::Index g = 0; g < groups; ++g)
      for (Eigen::Index r = 0; r < rows; ++r)
        zp(r / pf, g) |= static_cast<std::uint32_t>(u.zeros(r, g)) << ((r % pf) * b);
    w.add(module + ".weight_zero_point", as_i32(zp), DType::I32);
  }
  if (L.actorder_group)
    w.add(module + ".weight_g_idx", u.g_idx.transpose(), DType::I32, {static_cast<std::int64_t>(cols)});
  w.add_flat(module + ".weight_shape", std::vector<std::int64_t>{rows, cols}, DType::I64, {2});
}

/// The `quantization_config` of a checkpoint whose quantized Linear modules all have layout
/// `L` (config.json["quantization_config"]); `ignore` lists the Linear modules left in float.
inline nlohmann::ordered_json compressed_tensors_quantization_config(
    const CompressedTensorsLayout& L, const std::vector<std::string>& ignore) {
  nlohmann::ordered_json weights;
  weights["num_bits"] = L.bits;
  weights["type"] = "int";
  weights["symmetric"] = L.symmetric;
  weights["strategy"] = L.group_size > 0 ? "group" : "channel";
  weights["group_size"] = L.group_size > 0 ? nlohmann::ordered_json(L.group_size) : nlohmann::ordered_json(nullptr);
  weights["block_structure"] = nullptr;
  weights["dynamic"] = false;
  weights["actorder"] = L.actorder_group ? nlohmann::ordered_json("group") : nlohmann::ordered_json(nullptr);
  weights["observer"] = "minmax";
  weights["observer_kwargs"] = nlohmann::ordered_json::object();
  nlohmann::ordered_json group;
  group["targets"] = {"Linear"};
  group["format"] = "pack-quantized";
  group["weights"] = weights;
  group["input_activations"] = nullptr;
  group["output_activations"] = nullptr;
  nlohmann::ordered_json j;
  j["quant_method"] = "compressed-tensors";
  j["format"] = "pack-quantized";
  j["quantization_status"] = "compressed";
  j["config_groups"] = {{"group_0", group}};
  j["ignore"] = ignore;
  j["kv_cache_scheme"] = nullptr;
  j["global_compression_ratio"] = nullptr;
  j["sparsity_config"] = nlohmann::ordered_json::object();
  j["transform_config"] = nlohmann::ordered_json::object();
  return j;
}

}  // namespace q2n::io
