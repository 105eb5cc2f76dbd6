#pragma once
/// \file quantizers/refine.hpp
/// Q2N plug-in for every quantizer result: the equivalent vector m, folded into the storage.
///
/// m is computed by q2n::equivalent_vector from the ORIGINAL W and the result's Q, both in the
/// original column order (never from GPTQ's working weights, never in act-order / OWQ
/// coordinates — the reference's defects). Folding multiplies, per row r, everything that
/// scales the row linearly by m_r:
///
/// | storage part                    | refined                  |
/// |---------------------------------|--------------------------|
/// | scales(r, :)                    | m_r · scales(r, :)       |
/// | fp_values(r, :) (OWQ / dense)   | m_r · fp_values(r, :)    |
/// | bin_alpha(r, :), bin_mean(r, :) | m_r · … (PB-LLM)         |
/// | codes, zeros, signs, masks      | unchanged                |
///
/// The refined Q is dequantize(refined storage), which equals diag(m) · Q up to one rounding of
/// each folded product (full-precision columns: exactly fl(m_r · Q_rj)).
///
/// \code
/// auto res = q2n::gptq(W, H, {.bits = 3, .act_order = true});
/// auto ns = q2n::NullSpace<float>::compute(abar);
/// auto ref = q2n::refine_quantized(res, W, ns);   // ref.result.Q, ref.m, ref.cut
/// \endcode

#include <Eigen/Core>
#include <q2n/detail/check.hpp>
#include <q2n/projection.hpp>
#include <q2n/quantizers/kernel_path.hpp>
#include <q2n/quantizers/result.hpp>
#include <type_traits>

namespace q2n {

/// Multiplies every per-row linear factor of the storage by m (see the table above).
/// \param storage a quantizer's storage, modified in place
/// \param m       rows entries, finite
template <class Scalar, class DM>
void fold_equivalent_vector(QuantStorage<Scalar>& storage, const Eigen::MatrixBase<DM>& m) {
  const char* fn = "q2n::fold_equivalent_vector";
  static_assert(std::is_same_v<typename DM::Scalar, Scalar>,
                "q2n::fold_equivalent_vector: m must have the storage's scalar type");
  detail::check_storage(storage, fn);
  if (m.cols() != 1 || m.rows() != storage.rows)
    detail::fail(fn, ": m is ", m.rows(), " x ", m.cols(), " but the storage has ", storage.rows,
                 " rows; pass one m entry per row");
  detail::require_finite(m, fn, "m");
  const auto D = m.asDiagonal();
  storage.scales = D * storage.scales;
  storage.fp_values = D * storage.fp_values;
  if (storage.bin_alpha.size() > 0) storage.bin_alpha = D * storage.bin_alpha;
  if (storage.bin_mean.size() > 0) storage.bin_mean = D * storage.bin_mean;
}

/// A refined quantizer result.
template <class Scalar>
struct RefinedResult {
  QuantResult<Scalar> result;                  ///< refined storage; Q = dequantize(storage)
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> m;  ///< the equivalent vector
  Cut cut;                                     ///< the null space's cut (found == false: m = 1)
};

/// Q2N refinement of a quantizer result.
/// \param quantized result of rtn / gptq / owq / pbllm / full_precision_result
/// \param W         the ORIGINAL weights (rows × cols, original column order, same scalar)
/// \param ns        null space of the layer's sample-averaged activations
/// \param lambda    ridge weight toward m = 1 (default 0.2)
/// \param path      kernel implementation for the re-dequantization
template <class Scalar, class DW>
RefinedResult<Scalar> refine_quantized(const QuantResult<Scalar>& quantized,
                                       const Eigen::MatrixBase<DW>& W, const NullSpace<Scalar>& ns,
                                       double lambda = 0.2, KernelPath path = KernelPath::simd) {
  static_assert(std::is_same_v<typename DW::Scalar, Scalar>,
                "q2n::refine_quantized: W must have the result's scalar type; cast it");
  const char* fn = "q2n::refine_quantized";
  detail::check_storage(quantized.storage, fn);
  detail::require_shape(W, quantized.storage.rows, quantized.storage.cols, fn,
                        "W (must be the original weights, shaped like Q)");
  detail::require_shape(quantized.Q, quantized.storage.rows, quantized.storage.cols, fn,
                        "quantized.Q");
  RefinedResult<Scalar> out;
  out.m = equivalent_vector(W, quantized.Q, ns, lambda);
  out.cut = ns.cut();
  out.result.storage = quantized.storage;
  out.result.diagnostics = quantized.diagnostics;
  fold_equivalent_vector(out.result.storage, out.m);
  out.result.Q = dequantize(out.result.storage, path);
  return out;
}

}  // namespace q2n
