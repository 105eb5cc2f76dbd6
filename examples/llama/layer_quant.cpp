/// \file layer_quant.cpp
/// The library calls of layer_quant.hpp: every quantizer, the null space and the Q2N
/// refinement, instantiated once here for all the programs that run the examples' pipeline
/// (q2n_llama, q2n-layer, their tests), instead of once in each of them.

#include "layer_quant.hpp"

#include <q2n/null_space.hpp>
#include <q2n/quantizers.hpp>

#include <chrono>
#include <utility>

namespace llama {
namespace {

// The parts every H-based quantizer shares: damping and the column sweep.
template <class Options>
Options sweep_options(const MethodSpec& s) {
  Options o;
  o.damping = s.damping;
  o.sweep = s.sweep;
  return o;
}
// ... and for GPTQ, OWQ and PB-LLM the groups too.
template <class Options>
Options second_order_options(const MethodSpec& s) {
  Options o = sweep_options<Options>(s);
  o.groupsize = s.groupsize;
  return o;
}

// The dispatch, for a double H (converted by each quantizer) or a float H to consume.
template <class DH>
q2n::QuantResult<float> dispatch(const Eigen::MatrixXf& W, DH&& H, const MethodSpec& s) {
  switch (s.method) {
    case Method::rtn: {
      q2n::RtnOptions o;
      o.grid = s.grid;
      o.groupsize = s.groupsize;
      return q2n::rtn(W, o);
    }
    case Method::gptq:
    case Method::quarot: {  // (the rotation is the model's, rotation.hpp)
      auto o = second_order_options<q2n::GptqOptions>(s);
      o.grid = s.grid;
      o.act_order = s.act_order;
      o.static_groups = s.static_groups;
      return q2n::gptq(W, std::forward<DH>(H), o);
    }
    case Method::owq: {
      auto o = second_order_options<q2n::OwqOptions>(s);
      o.grid = s.grid;
      o.act_order = s.act_order;
      o.outlier_columns = owq_columns(s, W.cols());
      return q2n::owq(W, std::forward<DH>(H), o);
    }
    case Method::pbllm: {
      auto o = second_order_options<q2n::PbllmOptions>(s);
      o.low_frac = s.pb_low_frac;
      o.high = s.pb_high;
      o.salience = s.pb_salience;
      return q2n::pbllm(W, std::forward<DH>(H), o);
    }
    case Method::leanquant: {
      auto o = sweep_options<q2n::LeanQuantOptions>(s);
      o.bits = s.grid.bits;
      o.exponent = s.lq_exponent;
      o.max_iter = s.lq_max_iter;
      o.act_order = s.act_order;
      return q2n::leanquant(W, std::forward<DH>(H), o);
    }
    case Method::quip: {
      auto o = sweep_options<q2n::QuipOptions>(s);
      o.bits = s.grid.bits;
      o.grid = s.quip_grid;
      o.rescale = s.quip_rescale;
      o.incoherence = s.quip_transform;
      o.seed = s.transform_seed;
      o.npasses = s.quip_npasses;
      return q2n::quip(W, std::forward<DH>(H), o);
    }
  }
  fail("llama::run_quantizer: unknown method");
}

}  // namespace

q2n::QuantResult<float> run_quantizer(const Eigen::MatrixXf& W, const Eigen::MatrixXd& H,
                                      const MethodSpec& s) {
  return dispatch(W, H, s);
}

q2n::QuantResult<float> run_quantizer(const Eigen::MatrixXf& W, Eigen::MatrixXf&& H,
                                      const MethodSpec& s) {
  return dispatch(W, std::move(H), s);
}

q2n::NullSpace<float> layer_null_space(const Eigen::MatrixXd& abar,
                                       const q2n::NullSpaceOptions& options) {
  return q2n::NullSpace<float>::compute(abar, options);
}

q2n::NullSpace<float> layer_null_space(const Eigen::MatrixXf& abar,
                                       const q2n::NullSpaceOptions& options) {
  return q2n::NullSpace<float>::compute(abar, options);
}

LinearResult refine_linear(q2n::QuantResult<float> quantized, const Eigen::MatrixXf& W,
                           const q2n::NullSpace<float>* ns, const MethodSpec& spec,
                           const Eigen::MatrixXf* abar) {
  detail::require_null_space(spec, ns, abar, "llama::refine_linear");
  LinearResult out;
  out.quantized = std::move(quantized);
  if (spec.q2n) {
    const auto t0 = std::chrono::steady_clock::now();
    if (out.quantized.storage.transforms.identity()) {
      if (ns) out.refined = q2n::refine(out.quantized, W, *ns, spec.lambda);
      else out.refined = q2n::refine(out.quantized, W, q2n::NullSpace<float>::compute(*abar, spec.null_space), spec.lambda);
    } else {
      if (!abar) fail("llama::refine_linear: the storage is in another basis and abar was not given");
      const auto stored = q2n::NullSpace<float>::compute(
          q2n::activations_to_stored_basis(out.quantized.storage, *abar), spec.null_space);
      out.refined = q2n::refine(out.quantized, W, stored, spec.lambda);
    }
    out.refine_seconds = detail::seconds_since(t0);
  }
  return out;
}

}  // namespace llama
