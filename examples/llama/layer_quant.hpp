#pragma once
/// \file layer_quant.hpp
/// Quantizing ONE linear layer from its calibration statistics: the single function both the
/// end-to-end example and a standalone per-layer tool call, so the two cannot drift apart.
///
///   quantize_linear(W, H, null_space, spec):
///     1. run the selected quantizer (RTN / GPTQ / OWQ / PB-LLM) on W with Hessian H;
///     2. if spec.q2n, refine its result with the Q2N plug-in (scales multiplied by m);
///     3. measure the relative output error on the calibration inputs before and after.

#include "model.hpp"

#include <q2n/projection.hpp>
#include <q2n/quantizers.hpp>

#include <Eigen/Core>

#include <chrono>
#include <string>

namespace llama {

/// The quantization algorithms the example compares.
enum class Method { rtn, gptq, owq, pbllm };

inline const char* method_name(Method m) {
  switch (m) {
    case Method::rtn: return "rtn";
    case Method::gptq: return "gptq";
    case Method::owq: return "owq";
    case Method::pbllm: return "pbllm";
  }
  return "";
}

/// Everything that defines how one linear layer is quantized.
struct MethodSpec {
  Method method = Method::gptq;
  int bits = 3;                   ///< RTN / GPTQ / OWQ weight bits
  Eigen::Index groupsize = 128;   ///< −1: one group per row
  double percdamp = 0.01;         ///< GPTQ / OWQ / PB-LLM relative damping
  bool act_order = false;         ///< GPTQ / OWQ: process columns by decreasing diag(H)
  double owq_extra_bits = 0.1;    ///< OWQ: average extra bits spent on full-precision columns
  double pb_low_frac = 0.9;       ///< PB-LLM: fraction of weights binarized
  int pb_high_bit = 8;            ///< PB-LLM: bits of the salient weights
  bool q2n = false;               ///< apply the Q2N refinement
  double lambda = 0.2;            ///< Q2N ridge weight
  q2n::NullSpaceOptions null_space;  ///< Q2N threshold and cut rule
};

/// Short label such as "gptq w3 g128 +q2n".
inline std::string spec_label(const MethodSpec& s) {
  std::string l = method_name(s.method);
  if (s.method == Method::pbllm) {
    l += " low" + std::to_string(static_cast<int>(s.pb_low_frac * 100 + 0.5)) + "% hi" +
         std::to_string(s.pb_high_bit);
  } else {
    l += " w" + std::to_string(s.bits) +
         (s.groupsize > 0 ? " g" + std::to_string(s.groupsize) : std::string(" per-row"));
  }
  return l + (s.q2n ? " +q2n" : "");
}

/// OWQ's full-precision column count for a layer with `cols` inputs (target = bits + extra).
inline Eigen::Index owq_columns(const MethodSpec& s, Eigen::Index cols) {
  return q2n::owq_outlier_count(cols, s.bits, s.bits + s.owq_extra_bits);
}

/// Runs the selected quantizer (no Q2N) on W (out × in) with Hessian H.
template <class DW, class DH>
q2n::QuantResult<float> run_quantizer(const Eigen::MatrixBase<DW>& W,
                                      const Eigen::MatrixBase<DH>& H, const MethodSpec& s) {
  switch (s.method) {
    case Method::rtn: {
      q2n::RtnOptions o;
      o.bits = s.bits;
      o.groupsize = s.groupsize;
      return q2n::rtn(W, o);
    }
    case Method::gptq: {
      q2n::GptqOptions o;
      o.bits = s.bits;
      o.groupsize = s.groupsize;
      o.act_order = s.act_order;
      o.percdamp = s.percdamp;
      return q2n::gptq(W, H, o);
    }
    case Method::owq: {
      q2n::OwqOptions o;
      o.bits = s.bits;
      o.groupsize = s.groupsize;
      o.act_order = s.act_order;
      o.percdamp = s.percdamp;
      o.outlier_columns = owq_columns(s, W.cols());
      return q2n::owq(W, H, o);
    }
    case Method::pbllm: {
      q2n::PbllmOptions o;
      o.low_frac = s.pb_low_frac;
      o.high_bits = s.pb_high_bit;
      o.groupsize = s.groupsize;
      o.percdamp = s.percdamp;
      return q2n::pbllm(W, H, o);
    }
  }
  fail("llama::run_quantizer: unknown method");
}

/// Average stored bits per weight the method spends on weight values (scales excluded).
inline double weight_bits(const MethodSpec& s, Eigen::Index cols) {
  switch (s.method) {
    case Method::pbllm: return s.pb_low_frac * 1.0 + (1.0 - s.pb_low_frac) * s.pb_high_bit;
    case Method::owq: {
      const double n_out = static_cast<double>(owq_columns(s, cols));
      return (s.bits * (cols - n_out) + 16.0 * n_out) / cols;
    }
    default: return s.bits;
  }
}

/// ‖X Aᵀ‖²_F up to the constant N/2, computed from H ∝ XᵀX as tr(A H Aᵀ) (no activations).
inline double output_energy(const Eigen::MatrixXd& A, const Eigen::MatrixXd& H) {
  return ((A * H).cwiseProduct(A)).sum();
}

/// Relative output error on the calibration inputs, ‖X(Q−W)ᵀ‖²_F / ‖XWᵀ‖²_F, computed from
/// H ∝ XᵀX as tr(D H Dᵀ) / tr(W H Wᵀ) with D = Q − W.
inline double relative_output_error(const Matrix& W, const Matrix& Q, const Eigen::MatrixXd& H) {
  const Eigen::MatrixXd w = W.cast<double>();
  const double den = output_energy(w, H);
  return den > 0 ? output_energy(Q.cast<double>() - w, H) / den : 0.0;
}

/// Result of quantizing one linear layer.
struct LinearResult {
  Matrix Q;                 ///< final fake-quantized weights (refined when Q2N ran)
  Matrix Q_before;          ///< the quantizer's output before Q2N (equal to Q without Q2N)
  Eigen::VectorXf m;        ///< Q2N equivalent vector (empty without Q2N)
  q2n::Cut cut;             ///< Q2N cut (found = false without Q2N)
  bool q2n_applied = false;
  double err_before = 0;    ///< relative output error of Q_before
  double err_after = 0;     ///< relative output error of Q
  q2n::QuantDiagnostics diagnostics;
  double seconds = 0;
};

/// Quantizes one linear layer.
/// \param W  weights (out × in), float
/// \param H  calibration Hessian of the layer's inputs (in × in), double
/// \param ns null space of the layer's sample-averaged inputs; required when spec.q2n
/// \param spec method and settings
inline LinearResult quantize_linear(const Matrix& W, const Eigen::MatrixXd& H,
                                    const q2n::NullSpace<float>* ns, const MethodSpec& spec) {
  const auto t0 = std::chrono::steady_clock::now();
  if (spec.q2n && ns == nullptr)
    fail("llama::quantize_linear: spec.q2n is set but no null space was given");
  const Eigen::MatrixXf w = W;
  q2n::QuantResult<float> res = run_quantizer(w, H, spec);
  LinearResult out;
  out.diagnostics = res.diagnostics;
  out.Q_before = res.Q;
  if (spec.q2n) {
    q2n::RefinedResult<float> ref = q2n::refine_quantized(res, w, *ns, spec.lambda);
    res = std::move(ref.result);
    out.m = std::move(ref.m);
    out.q2n_applied = true;
    out.cut = ref.cut;
  }
  out.Q = res.Q;
  const Eigen::MatrixXd wd = W.cast<double>();
  const double den = output_energy(wd, H);
  auto rel = [&](const Matrix& q) {
    return den > 0 ? output_energy(q.cast<double>() - wd, H) / den : 0.0;
  };
  out.err_before = rel(out.Q_before);
  out.err_after = spec.q2n ? rel(out.Q) : out.err_before;
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace llama
