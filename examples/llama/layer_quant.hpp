#pragma once
/// \file layer_quant.hpp
/// Quantizing ONE linear layer from its calibration statistics: the single function both
/// q2n_llama (through sequential.hpp) and q2n-layer (q2n_layer/q2n_layer.cpp) call, so the two
/// cannot drift apart.
///
///   quantize_linear(W, H, null_space, spec):
///     1. run the selected quantizer (RTN / GPTQ / OWQ / PB-LLM / LeanQuant / QuIP) on W with
///        Hessian H;
///     2. if spec.q2n, refine its result with the Q2N plug-in (m folded into a copy of the
///        storage: refine_linear, which q2n-layer also applies to a Q given from outside). A
///        storage in another basis (QuIP) is refined there, with the null space of Ā mapped
///        into that basis.
///   measure_errors(result, error): the relative output error before and after Q2N, with the
///   caller's measure (from H; q2n-layer uses the stored activations when they are fewer
///   than the inputs).
///
/// MethodSpec holds the library's option parts (grid, damping, sweep, null space), and the
/// mapping to each quantizer's options is written once, here.

#include "config.hpp"

#include <q2n/detail/parallel.hpp>
#include <q2n/quantizers.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

namespace llama {

/// The quantization algorithms the examples compare. QuaRot is GPTQ on a rotated model
/// (rotation.hpp): per linear it is GPTQ with the symmetric grid and the MSE clip search.
enum class Method { rtn, gptq, owq, pbllm, leanquant, quip, quarot };

/// Every method, in the order of the report.
inline constexpr Method kAllMethods[] = {Method::rtn,       Method::gptq, Method::owq,
                                         Method::pbllm,     Method::leanquant,
                                         Method::quip,      Method::quarot};
/// q2n_llama's default: the weight-only methods (QuaRot rotates the model and is run by name).
inline constexpr Method kWeightOnlyMethods[] = {Method::rtn,   Method::gptq,      Method::owq,
                                                Method::pbllm, Method::leanquant, Method::quip};

inline const char* method_name(Method m) {
  switch (m) {
    case Method::rtn: return "rtn";
    case Method::gptq: return "gptq";
    case Method::owq: return "owq";
    case Method::pbllm: return "pbllm";
    case Method::leanquant: return "leanquant";
    case Method::quip: return "quip";
    case Method::quarot: return "quarot";
  }
  return "";
}

/// The method called `name` ("pb-llm" is accepted for PB-LLM), or nothing.
inline std::optional<Method> find_method(const std::string& name) {
  for (Method m : kAllMethods)
    if (name == method_name(m)) return m;
  if (name == "pb-llm") return Method::pbllm;
  return std::nullopt;
}

/// Everything that defines how one linear layer is quantized. The command-line vocabulary
/// that fills it is in method_flags.hpp.
struct MethodSpec {
  Method method = Method::gptq;
  q2n::UniformOptions grid = {3};   ///< RTN / GPTQ / OWQ grid: bits, sym, mse
  Eigen::Index groupsize = 128;     ///< −1: one group per row (PB-LLM: its salience groups;
                                    ///< LeanQuant, QuIP: always −1, no groups)
  bool act_order = false;           ///< GPTQ / OWQ / LeanQuant: columns by decreasing diag(H)
  bool static_groups = false;       ///< GPTQ: fit all groups up front
  q2n::DampingOptions damping;      ///< GPTQ / OWQ / PB-LLM
  q2n::SweepOptions sweep;          ///< GPTQ / OWQ / PB-LLM
  /// OWQ's full-precision columns, first that is set: a count (≥ 0), an average bit target
  /// (> 0), else a target of grid.bits + owq_extra_bits (relative, so that it follows a sweep
  /// over bits).
  Eigen::Index owq_columns = -1;
  double owq_target_bits = 0;
  double owq_extra_bits = 0.1;
  double pb_low_frac = 0.9;         ///< PB-LLM: fraction of weights binarized
  q2n::UniformOptions pb_high = {8};  ///< PB-LLM: grid of the salient weights
  q2n::Salience pb_salience = q2n::Salience::hessian;
  double lq_exponent = 4;           ///< LeanQuant: k-means weight U_jj^(−exponent)
  int lq_max_iter = 100;            ///< LeanQuant: Lloyd steps at most
  q2n::Incoherence quip_transform = q2n::Incoherence::kronecker;  ///< QuIP: U and V
  q2n::QuipGrid quip_grid = q2n::QuipGrid::balanced;               ///< QuIP: its grid
  bool quip_rescale = true;         ///< QuIP: diagonal rescaling
  int quip_npasses = 1;             ///< QuIP: greedy passes after LDLQ
  std::uint64_t transform_seed = 0; ///< QuIP: seed of U and V (q2n_llama mixes in the
                                    ///< calibration seed and the linear's place)
  bool q2n = false;                 ///< apply the Q2N refinement
  double lambda = 0.2;              ///< Q2N ridge weight
  q2n::NullSpaceOptions null_space; ///< Q2N threshold and cut rule
};

/// The transform seed of one linear (QuIP): every linear gets its own random transforms.
inline std::uint64_t linear_transform_seed(std::uint64_t base, int layer, int proj) {
  return base * 1000003u + static_cast<std::uint64_t>(layer) * 16u + static_cast<std::uint64_t>(proj);
}

/// Short label such as "gptq w3 g128 +q2n".
inline std::string spec_label(const MethodSpec& s) {
  std::string l = method_name(s.method);
  if (s.method == Method::pbllm) {
    l += " low" + std::to_string(static_cast<int>(s.pb_low_frac * 100 + 0.5)) + "% hi" +
         std::to_string(s.pb_high.bits);
  } else if (s.method == Method::quip) {
    l += " w" + std::to_string(s.grid.bits) +
         (s.quip_grid == q2n::QuipGrid::balanced ? " per-matrix" : " per-row");
  } else {
    l += " w" + std::to_string(s.grid.bits) +
         (s.groupsize > 0 ? " g" + std::to_string(s.groupsize) : std::string(" per-row")) +
         (s.grid.sym ? " sym" : "");
  }
  return l + (s.q2n ? " +q2n" : "");
}

/// OWQ's full-precision column count for a layer with `cols` inputs.
inline Eigen::Index owq_columns(const MethodSpec& s, Eigen::Index cols) {
  if (s.owq_columns >= 0) return s.owq_columns;
  const double target = s.owq_target_bits > 0 ? s.owq_target_bits : s.grid.bits + s.owq_extra_bits;
  return q2n::owq_outlier_count(cols, s.grid.bits, target);
}

/// Average stored bits per weight the method spends on weight values (scales excluded).
inline double weight_bits(const MethodSpec& s, Eigen::Index cols) {
  switch (s.method) {
    case Method::pbllm: return s.pb_low_frac * 1.0 + (1.0 - s.pb_low_frac) * s.pb_high.bits;
    case Method::owq: {
      const double n_out = static_cast<double>(owq_columns(s, cols));
      return (s.grid.bits * (cols - n_out) + 16.0 * n_out) / cols;
    }
    default: return s.grid.bits;
  }
}

namespace detail {
inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

inline void require_null_space(const MethodSpec& spec, const q2n::NullSpace<float>* ns,
                               const Eigen::MatrixXf* abar, const char* fn) {
  if (spec.q2n && ns == nullptr && abar == nullptr)
    fail(fn, ": spec.q2n is set but neither a null space nor the inputs' Ā was given");
}
}  // namespace detail

/// Runs the selected quantizer (no Q2N) on W (out × in) with Hessian H (in × in): a double H
/// is converted to a float working copy; an rvalue float H is consumed as that copy. RTN
/// ignores H. Compiled once, in layer_quant.cpp, for every program that runs the examples'
/// pipeline.
q2n::QuantResult<float> run_quantizer(const Eigen::MatrixXf& W, const Eigen::MatrixXd& H,
                                      const MethodSpec& s);
q2n::QuantResult<float> run_quantizer(const Eigen::MatrixXf& W, Eigen::MatrixXf&& H,
                                      const MethodSpec& s);

/// The null space of a layer's sample-averaged inputs Ā (positions × in), float or double.
q2n::NullSpace<float> layer_null_space(const Eigen::MatrixXd& abar,
                                       const q2n::NullSpaceOptions& options);
q2n::NullSpace<float> layer_null_space(const Eigen::MatrixXf& abar,
                                       const q2n::NullSpaceOptions& options);

/// Result of quantizing one linear layer. Both storages are kept: the quantizer's, and with
/// Q2N the refined one, so that a shared ±Q2N pass can hand each model its own.
struct LinearResult {
  q2n::QuantResult<float> quantized;              ///< the quantizer's output, before Q2N
  std::optional<q2n::Refinement<float>> refined;  ///< with Q2N: m folded into its storage
  double err_before = 0;  ///< relative output error of quantized.Q
  double err_after = 0;   ///< ... of final_result().Q (= err_before without Q2N)
  double refine_seconds = 0;

  bool q2n_applied() const { return refined.has_value(); }
  /// What the layer ends up with: the refined result when Q2N ran, else the quantizer's.
  const q2n::QuantResult<float>& final_result() const {
    return refined ? *refined : quantized;
  }
  q2n::QuantResult<float>& final_result() { return refined ? *refined : quantized; }
};

/// Step 2 alone: with spec.q2n, refines `quantized` (any storage, e.g. a Q given from outside
/// wrapped by q2n::full_precision_result) with the null space `ns` (or, when ns is null, that of
/// `abar`); a storage in another basis (storage.transforms, QuIP) with the null space of `abar`
/// mapped into that basis instead (ns is not used).
/// \param W    original weights (out × in), the ones `quantized` was made from
/// \param abar the layer's sample-averaged inputs (positions × in); needed for a storage in
///             another basis
LinearResult refine_linear(q2n::QuantResult<float> quantized, const Eigen::MatrixXf& W,
                           const q2n::NullSpace<float>* ns, const MethodSpec& spec,
                           const Eigen::MatrixXf* abar = nullptr);

/// Quantizes one linear layer: the quantizer of `spec`, then Q2N when spec.q2n.
/// \param W  weights (out × in)
/// \param H  calibration Hessian of the layer's inputs (in × in), in any form (see run_quantizer)
/// \param ns null space of the layer's sample-averaged inputs; with spec.q2n, this or abar
/// \param abar those inputs themselves: what a quantizer that stores another basis (QuIP) needs
template <class DH>
LinearResult quantize_linear(const Eigen::MatrixXf& W, DH&& H, const q2n::NullSpace<float>* ns,
                             const MethodSpec& spec, const Eigen::MatrixXf* abar = nullptr) {
  // Checked before the quantizer runs, which may take minutes.
  detail::require_null_space(spec, ns, abar, "llama::quantize_linear");
  return refine_linear(run_quantizer(W, std::forward<DH>(H), spec), W, ns, spec, abar);
}

/// Fills r.err_before and r.err_after with `error(Q)`, the caller's relative output error of a
/// quantized Q (the tools measure it differently: from H, or on the activations).
template <class ErrorFn>
void measure_errors(LinearResult& r, ErrorFn&& error) {
  r.err_before = error(r.quantized.Q);
  r.err_after = r.refined ? error(r.refined->Q) : r.err_before;
}

/// ‖X Aᵀ‖²_F up to the constant N/2, computed from H ∝ XᵀX (double or float) as tr(A H Aᵀ)
/// (no activations), a panel of H's columns at a time: no rows × cols product is held, and a
/// float H (the low-memory pass hands its quantizers H in float) is taken in double a panel at
/// a time, never as a cols × cols double copy.
template <class HMatrix>
double output_energy(const Eigen::MatrixXd& A, const HMatrix& H) {
  double e = 0;
  Eigen::MatrixXd ah, hp;
  for (Eigen::Index a = 0; a < H.cols(); a += q2n::detail::kPanel) {
    const Eigen::Index n = std::min(q2n::detail::kPanel, H.cols() - a);
    ah.resize(A.rows(), n);  // the product in fixed panels: the same bits on any thread count
    if constexpr (std::is_same_v<typename HMatrix::Scalar, double>) {
      q2n::detail::panel_product(ah, A, H.middleCols(a, n), 1.0, false);
    } else {
      hp = H.middleCols(a, n).template cast<double>();
      q2n::detail::panel_product(ah, A, hp, 1.0, false);
    }
    e += ah.cwiseProduct(A.middleCols(a, n)).sum();
  }
  return e;
}

/// Relative output error on the calibration inputs, ‖X(Q−W)ᵀ‖²_F / ‖XWᵀ‖²_F, computed from
/// H ∝ XᵀX (double, or float) as tr(D H Dᵀ) / tr(W H Wᵀ) with D = Q − W; the denominator is
/// computed once per W. W and H are referenced, not copied: they must outlive the object.
template <class HMatrix = Eigen::MatrixXd>
class HessianOutputError {
 public:
  HessianOutputError(const Eigen::MatrixXf& W, const HMatrix& H)
      : w_(W), h_(H), den_(output_energy(W.cast<double>(), H)) {}
  double operator()(const Eigen::MatrixXf& Q) const {
    // Exact in double (a float difference is not); no double copy of W is kept.
    return den_ > 0 ? output_energy(Q.cast<double>() - w_.cast<double>(), h_) / den_ : 0.0;
  }

 private:
  const Eigen::MatrixXf& w_;
  const HMatrix& h_;
  double den_;
};

inline double relative_output_error(const Eigen::MatrixXf& W, const Eigen::MatrixXf& Q,
                                    const Eigen::MatrixXd& H) {
  return HessianOutputError(W, H)(Q);
}

}  // namespace llama
