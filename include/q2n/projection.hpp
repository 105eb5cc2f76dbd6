#pragma once
/// \file projection.hpp
/// Q2N refinement: the closed-form per-row equivalent vector and its application.
///
/// This is the one header a quantizer author needs; it brings in the calibration
/// accumulators (accumulators.hpp), the cut rule (spectrum.hpp), the null-space projector
/// (null_space.hpp), the storage model with its builder, dequantize and fold (storage.hpp),
/// the error types (errors.hpp) and pin_product_blocking (reproducibility.hpp).
///
/// For original weights W and a quantizer's output Q (both rows × cols, original column
/// order), the target is `B = W (I − P) + Q P` and m minimizes
/// `‖B − diag(m) Q‖_F² + λ ‖m − 1‖²`, which per row is
/// `m_r = (⟨B_r, Q_r⟩ + λ) / (‖Q_r‖² + λ)`. Since `B − Q = (W − Q) U1 U1ᵀ`,
/// `⟨B_r, Q_r⟩ = ‖Q_r‖² + ⟨(W_r − Q_r) U1, Q_r U1⟩`, so
/// `m_r = 1 + ⟨(W_r − Q_r) U1, Q_r U1⟩ / (‖Q_r‖² + λ)` in O(rows · cols · r).
///
/// \code
/// #include <q2n/projection.hpp>
/// q2n::SampleMeanAccumulator abar(cols);      // add the layer's calibration sequences
/// auto ns = q2n::NullSpace<float>::compute(abar.mean());
/// auto refined = q2n::refine(W, Q, ns);        // refined.Q = diag(m) Q, refined.m
/// q2n::fold(scales, refined.m);                // keep your codes, fold m into your scales
/// // or, with a quantizer result (any q2n quantizer, or StorageBuilder::result()):
/// auto folded = q2n::refine(result, W, ns);    // folded.storage: m folded into its parts
/// \endcode
///
/// \note Differences from the released reference code: m is computed from the original W in
/// the original column order (the reference uses GPTQ's working weights and, under act-order
/// or OWQ, applies P in permuted coordinates), the closed form is exact (no 20-step Adam, no
/// `+1e-8` in the denominator), and `1 + correction` is evaluated instead of `num / den` so
/// that float keeps the small deviation of m from 1 accurate.

#include <q2n/accumulators.hpp>
#include <q2n/detail/check.hpp>
#include <q2n/detail/parallel.hpp>
#include <q2n/detail/stopwatch.hpp>
#include <q2n/errors.hpp>
#include <q2n/null_space.hpp>
#include <q2n/reproducibility.hpp>
#include <q2n/spectrum.hpp>
#include <q2n/storage.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>

namespace q2n {

namespace detail {
template <class DW, class DQ>
void check_pair(const Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DQ>& Q, Eigen::Index cols,
                const char* fn) {
  if (W.cols() != cols)
    fail(fn, ": W has ", W.cols(), " columns but the null space has cols = ", cols,
         "; compute the null space from this layer's inputs");
  require_shape(Q, W.rows(), W.cols(), fn, "Q (must match W)");
  require_finite(W, fn, "W");
  require_finite(Q, fn, "Q");
}

/// True when a row's ‖Q_r‖² or ⟨(W_r − Q_r)U1, Q_r U1⟩ overflowed, or ‖Q_r‖² of a non-zero row
/// fell below the normal range (its digits lost to underflow).
template <class DQ, class Scalar>
bool extreme_row(const Eigen::MatrixBase<DQ>& q, Scalar inner, Scalar norm2) {
  if (!std::isfinite(inner) || !std::isfinite(norm2)) return true;
  return norm2 < std::numeric_limits<Scalar>::min() && q.cwiseAbs().maxCoeff() > Scalar(0);
}

/// inner and den of one row, from the row scaled by 2^−e with 2^e just above Q_r's largest
/// magnitude (W_r's when Q_r is zero): ‖Q_r‖² is then of order one, and the scaling is exact.
/// What can still overflow is W_r's scale relative to Q_r's, where m itself is out of range.
template <class DW, class DQ, class Basis, class Scalar>
void scaled_row(const Eigen::MatrixBase<DW>& w, const Eigen::MatrixBase<DQ>& q, const Basis& u1,
                double lambda, Scalar& inner, Scalar& den) {
  using Row = Eigen::Matrix<Scalar, 1, Eigen::Dynamic>;
  const Scalar qmax = q.cwiseAbs().maxCoeff(), wmax = w.cwiseAbs().maxCoeff();
  const Scalar big = qmax > Scalar(0) ? qmax : wmax;
  const int e = big > Scalar(0) ? std::ilogb(big) + 1 : 0;
  const Row ws = w.unaryExpr([e](Scalar x) { return std::ldexp(x, -e); });
  const Row qs = q.unaryExpr([e](Scalar x) { return std::ldexp(x, -e); });
  const Row qu = qs * u1;
  const Row du = ws * u1 - qu;
  inner = du.dot(qu);
  // λ / 2^(2e) in double first: it may be far outside Scalar's range (then it dominates or
  // vanishes, which is the right limit either way).
  den = qs.squaredNorm() + static_cast<Scalar>(std::ldexp(lambda, -2 * e));
}

inline void check_lambda(double lambda, const char* fn) {
  if (!(lambda >= 0) || !std::isfinite(lambda))
    fail(fn, ": lambda = ", lambda, " must be finite and >= 0 (default 0.2)");
}
}  // namespace detail

/// Closed-form Q2N equivalent vector.
/// \param W  original weights (rows × cols), original column order
/// \param Q  quantized weights (rows × cols), same order
/// \param ns null-space projector of the layer's inputs
/// \param lambda ridge weight pulling m toward 1 (≥ 0, default 0.2)
/// \return m (rows); all ones when ns has no cut (P = I)
template <class DW, class DQ, class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, 1> equivalent_vector(const Eigen::MatrixBase<DW>& W,
                                                           const Eigen::MatrixBase<DQ>& Q,
                                                           const NullSpace<Scalar>& ns,
                                                           double lambda = 0.2) {
  static_assert(std::is_same_v<typename DW::Scalar, Scalar> &&
                    std::is_same_v<typename DQ::Scalar, Scalar>,
                "q2n::equivalent_vector: W, Q and the NullSpace must share one scalar type; cast "
                "with .cast<T>()");
  const char* fn = "q2n::equivalent_vector";
  detail::check_pair(W, Q, ns.cols(), fn);
  detail::check_lambda(lambda, fn);
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  if (ns.kept() == 0) return Vector::Ones(W.rows());
  const auto& u1 = ns.kept_basis();
  // Thread-count-independent products (detail/parallel.hpp).
  Matrix qu(W.rows(), u1.cols()), du(W.rows(), u1.cols());
  detail::panel_product(qu, Q, u1, Scalar(1), false);  // Q U1, rows × r
  detail::panel_product(du, W, u1, Scalar(1), false);
  du -= qu;                                            // (W − Q) U1
  Vector inner = du.cwiseProduct(qu).rowwise().sum();
  Vector den = Q.rowwise().squaredNorm().array() + static_cast<Scalar>(lambda);
  // Rows whose squares overflowed or lost precision to underflow are recomputed from rows
  // scaled by a power of two (exact), so that any finite input gives a finite m.
  for (Eigen::Index r = 0; r < W.rows(); ++r)
    if (detail::extreme_row(Q.row(r), inner(r), den(r) - static_cast<Scalar>(lambda)))
      detail::scaled_row(W.row(r), Q.row(r), u1, lambda, inner(r), den(r));
  // den == 0 only for a zero row with λ = 0: then every m fits equally; keep m = 1.
  const Vector m = (den.array() > 0).select(Vector::Ones(W.rows()).array() + inner.array() / den.array(),
                                  Scalar(1));
  if (!m.allFinite())
    throw NumericalError(std::string(fn) + ": m is out of the scalar type's range in some "
                         "row: its Q row is negligible next to its W row; pass lambda > 0 or "
                         "compute in double");
  return m;
}

/// Result of refine(): a quantizer result with its Q2N equivalent vector.
///
/// From refine(result, W, ns): `storage` is the input's storage with m folded in and
/// `Q = dequantize(storage)`. From refine(W, Q, ns): `Q = diag(m) Q` and `storage` is empty
/// (rows = 0: there was none to fold into).
template <class Scalar>
struct Refinement : QuantResult<Scalar> {
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> m;  ///< the equivalent vector
  Cut cut;                                     ///< the null space's cut (found = false: m = 1)
  /// Wall-clock seconds of refine(): m itself (the closed form, the cost the Q2N method adds),
  /// and the result's assembly (copying the storage, folding m in, dequantizing Q).
  struct Seconds {
    double m = 0;
    double assembly = 0;
  } seconds;
};

/// Q2N for any (W, Q) pair: m from equivalent_vector(), then `diag(m) Q`.
/// \param W original weights, \param Q quantized weights (rows × cols, original column order)
/// \param ns null space of the layer's sample-averaged inputs, \param lambda ridge weight
template <class DW, class DQ, class Scalar>
Refinement<Scalar> refine(const Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DQ>& Q,
                          const NullSpace<Scalar>& ns, double lambda = 0.2) {
  static_assert(std::is_same_v<typename DW::Scalar, Scalar> &&
                    std::is_same_v<typename DQ::Scalar, Scalar>,
                "q2n::refine: W, Q and the NullSpace must share one scalar type; cast with "
                ".cast<T>()");
  Refinement<Scalar> out;
  const auto t0 = detail::Clock::now();
  out.m = equivalent_vector(W, Q, ns, lambda);
  const auto t1 = detail::Clock::now();
  out.Q = out.m.asDiagonal() * Q;
  out.cut = ns.cut();
  out.seconds = {std::chrono::duration<double>(t1 - t0).count(), detail::seconds_since(t1)};
  return out;
}

/// Q2N for a quantizer result: m is computed from the ORIGINAL W in the original column
/// order (never from GPTQ's working weights, never in act-order / OWQ coordinates: the
/// reference's defects) and folded into the storage (fold(storage, m)), so the refinement
/// costs no memory. For a storage quantized in another basis (storage.transforms), W is mapped
/// into that basis (to_stored_basis) and `ns` must be the null space of the activations mapped
/// the same way (activations_to_stored_basis).
/// \param quantized a result of any q2n quantizer or of StorageBuilder::result()
/// \param W         original weights (rows × cols, original basis and column order)
/// \param ns        null space of the layer's sample-averaged inputs (in the storage's basis)
/// \param lambda    ridge weight toward m = 1 (default 0.2)
template <class Scalar, class DW>
Refinement<Scalar> refine(const QuantResult<Scalar>& quantized, const Eigen::MatrixBase<DW>& W,
                          const NullSpace<Scalar>& ns, double lambda = 0.2) {
  static_assert(std::is_same_v<typename DW::Scalar, Scalar>,
                "q2n::refine: W must have the result's scalar type; cast with .cast<T>()");
  const char* fn = "q2n::refine";
  detail::check_storage(quantized.storage, fn);
  detail::require_shape(W, quantized.storage.rows, quantized.storage.cols, fn,
                        "W (must be the original weights, shaped like Q)");
  Refinement<Scalar> out;
  const auto t0 = detail::Clock::now();
  if (quantized.storage.transforms.identity()) {
    detail::require_shape(quantized.Q, W.rows(), W.cols(), fn, "quantized.Q");
    out.m = equivalent_vector(W, quantized.Q, ns, lambda);
  } else {
    out.m = equivalent_vector(to_stored_basis(quantized.storage, W),
                              dequantize_stored(quantized.storage), ns, lambda);
  }
  const auto t1 = detail::Clock::now();
  out.storage = quantized.storage;
  out.diagnostics = quantized.diagnostics;
  out.cut = ns.cut();
  fold(out.storage, out.m);
  out.Q = dequantize(out.storage);
  out.seconds = {std::chrono::duration<double>(t1 - t0).count(), detail::seconds_since(t1)};
  return out;
}

/// Output-error-optimal per-row scale under the calibration Hessian:
/// `m_r = ⟨Q_r H, W_r⟩ / ⟨Q_r H, Q_r⟩`, the least-squares fit of `diag(m) Q` to W in the
/// `‖(·) X‖` norm. Offered to measure against the Q2N scale; rows with `⟨Q_r H, Q_r⟩ = 0` get 1.
template <class DW, class DQ, class DH>
Eigen::Matrix<typename DW::Scalar, Eigen::Dynamic, 1> output_optimal_scale(
    const Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DQ>& Q, const Eigen::MatrixBase<DH>& H) {
  using Scalar = typename DW::Scalar;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  const char* fn = "q2n::output_optimal_scale";
  static_assert(std::is_same_v<typename DQ::Scalar, Scalar> &&
                    std::is_same_v<typename DH::Scalar, Scalar>,
                "q2n::output_optimal_scale: W, Q and H must share one scalar type");
  detail::require_shape(Q, W.rows(), W.cols(), fn, "Q (must match W)");
  detail::require_shape(H, W.cols(), W.cols(), fn, "H (must be cols x cols)");
  detail::require_finite(W, fn, "W");
  detail::require_finite(Q, fn, "Q");
  detail::require_finite(H, fn, "H");
  const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> qh = Q * H;
  const Vector num = qh.cwiseProduct(W).rowwise().sum();
  const Vector den = qh.cwiseProduct(Q).rowwise().sum();
  return (den.array() > 0).select(num.array() / den.array(), Scalar(1));
}

}  // namespace q2n
