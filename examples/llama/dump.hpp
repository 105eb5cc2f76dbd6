#pragma once
/// \file dump.hpp
/// `q2n_llama --dump-linear L.NAME --dump-file F`: one linear layer's calibration inputs,
/// statistics, settings and result, written during the sequential pass. The file is the input
/// format of q2n-layer (X, W) and of llama_layer_check (everything), which recompute the layer
/// outside the pass.

#include "layer_quant.hpp"
#include "method_flags.hpp"
#include "model.hpp"
#include "report.hpp"
#include "sequential.hpp"

#include <q2n/io/safetensors.hpp>

#include <string>
#include <utility>

namespace llama {

/// The linear named by --dump-linear "LAYER.MODULE" (MODULE as in the Hugging Face names).
inline std::pair<int, Proj> parse_dump_target(const std::string& s, int layers) {
  const auto dot = s.find('.');
  const auto layer =
      dot == std::string::npos ? std::nullopt : strict_int(s.substr(0, dot), 0, layers - 1);
  if (!layer)
    fail("q2n_llama: --dump-linear ", s, " must look like 1.self_attn.o_proj with a layer in [0, ",
         layers - 1, "]");
  const std::string name = s.substr(dot + 1);
  for (Proj p : kAllProj)
    if (name == proj_name(p)) return {static_cast<int>(*layer), p};
  fail("q2n_llama: --dump-linear: unknown module ", name,
       " (use self_attn.{q,k,v,o}_proj or mlp.{gate,up,down}_proj)");
}

namespace detail {
inline std::string exact(double v) { return fmt(v, 17); }
inline const char* flag(bool b) { return b ? "1" : "0"; }
}  // namespace detail

/// Every setting of `spec` as metadata, so that a reader can redo the layer exactly.
inline void write_spec_metadata(q2n::io::SafetensorsWriter& w, const MethodSpec& spec) {
  using detail::exact;
  using detail::flag;
  w.set_metadata("method", method_name(spec.method));
  w.set_metadata("bits", std::to_string(spec.grid.bits));
  w.set_metadata("sym", flag(spec.grid.sym));
  w.set_metadata("mse", flag(spec.grid.mse));
  w.set_metadata("groupsize", std::to_string(spec.groupsize));
  w.set_metadata("act_order", flag(spec.act_order));
  w.set_metadata("static_groups", flag(spec.static_groups));
  w.set_metadata("percdamp", exact(spec.damping.percdamp));
  w.set_metadata("blocksize", std::to_string(spec.sweep.blocksize));
  w.set_metadata("owq_columns", std::to_string(spec.owq_columns));
  w.set_metadata("owq_target_bits", exact(spec.owq_target_bits));
  w.set_metadata("owq_extra_bits", exact(spec.owq_extra_bits));
  w.set_metadata("pb_low_frac", exact(spec.pb_low_frac));
  w.set_metadata("pb_high_bit", std::to_string(spec.pb_high.bits));
  w.set_metadata("pb_salience",
                 spec.pb_salience == q2n::Salience::hessian ? "hessian" : "magnitude");
  w.set_metadata("lq_exponent", exact(spec.lq_exponent));
  w.set_metadata("lq_max_iter", std::to_string(spec.lq_max_iter));
  w.set_metadata("quip_transform", std::to_string(static_cast<int>(spec.quip_transform)));
  w.set_metadata("quip_grid", std::to_string(static_cast<int>(spec.quip_grid)));
  w.set_metadata("quip_rescale", flag(spec.quip_rescale));
  w.set_metadata("quip_npasses", std::to_string(spec.quip_npasses));
  w.set_metadata("transform_seed", std::to_string(spec.transform_seed));
  w.set_metadata("threshold", exact(spec.null_space.threshold));
  w.set_metadata("cut_rule", spec.null_space.rule == q2n::CutRule::paper ? "paper" : "plain");
  w.set_metadata("lambda", exact(spec.lambda));
}

/// Writes the dump of one linear (`inputs`: its calibration inputs, windows of `seqlen` rows).
inline void write_dump(const std::string& path, const MethodSpec& spec, Eigen::Index seqlen,
                       int layer, Proj proj, const Matrix& inputs, const InputStats& stats,
                       const Matrix& W, const LinearResult& r) {
  using q2n::io::DType;
  q2n::io::SafetensorsWriter w;
  w.set_metadata("format", "pt");
  write_spec_metadata(w, spec);
  w.set_metadata("q2n", detail::flag(r.q2n_applied()));
  w.set_metadata("seqlen", std::to_string(seqlen));
  w.set_metadata("hessian_shards", std::to_string(kHessianShards));
  w.set_metadata("layer", std::to_string(layer));
  w.set_metadata("module", proj_name(proj));
  // The seed the linear's quantizer used (QuIP), not the run's.
  w.set_metadata("transform_seed", std::to_string(linear_transform_seed(spec.transform_seed, layer,
                                                                        static_cast<int>(proj))));
  // X as samples × seqlen × cols: the layout q2n-layer reads (--input DUMP).
  w.add("X", inputs, DType::F32,
        {inputs.rows() / seqlen, static_cast<std::int64_t>(seqlen), inputs.cols()});
  w.add("W", W, DType::F32);
  w.add("hessian", stats.hessian, DType::F64);
  w.add("abar", stats.abar, DType::F64);
  w.add("Q_before", r.quantized.Q, DType::F32);
  w.add("Q", r.final_result().Q, DType::F32);
  if (r.refined) w.add("m", r.refined->m.transpose(), DType::F32, {r.refined->m.size()});
  w.write(path);
}

}  // namespace llama
