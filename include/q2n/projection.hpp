#pragma once
/// \file projection.hpp
/// Q2N refinement: the closed-form per-row equivalent vector and its application.
///
/// This is the one header a quantizer author needs; it brings in the calibration
/// accumulators, the cut rule and the null-space projector.
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
/// q2n::fold_into_scales(scales, refined.m);    // or keep codes and fold m into the scales
/// \endcode
///
/// \note Differences from the released reference code: m is computed from the original W in
/// the original column order (the reference uses GPTQ's working weights and, under act-order
/// or OWQ, applies P in permuted coordinates), the closed form is exact (no 20-step Adam, no
/// `+1e-8` in the denominator), and `1 + correction` is evaluated instead of `num / den` so
/// that float keeps the small deviation of m from 1 accurate.

#include <q2n/accumulators.hpp>
#include <q2n/detail/check.hpp>
#include <q2n/null_space.hpp>
#include <q2n/spectrum.hpp>

#include <Eigen/Core>

#include <cmath>
#include <type_traits>

namespace q2n {

namespace detail {
template <class DW, class DQ, class Scalar>
void check_pair(const Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DQ>& Q, Eigen::Index cols,
                const char* fn) {
  static_assert(std::is_same_v<typename DW::Scalar, Scalar> &&
                    std::is_same_v<typename DQ::Scalar, Scalar>,
                "q2n: W, Q and the NullSpace must share one scalar type; cast with .cast<T>()");
  if (W.cols() != cols)
    fail(fn, ": W has ", W.cols(), " columns but the null space has cols = ", cols,
         "; compute the null space from this layer's inputs");
  require_shape(Q, W.rows(), W.cols(), fn, "Q (must match W)");
  require_finite(W, fn, "W");
  require_finite(Q, fn, "Q");
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
  const char* fn = "q2n::equivalent_vector";
  detail::check_pair<DW, DQ, Scalar>(W, Q, ns.cols(), fn);
  detail::check_lambda(lambda, fn);
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  if (ns.kept() == 0) return Vector::Ones(W.rows());
  const auto& u1 = ns.kept_basis();
  Matrix qu = Q * u1;                 // rows × r
  Matrix du = W * u1;
  du -= qu;                           // (W − Q) U1
  const Vector inner = du.cwiseProduct(qu).rowwise().sum();
  const Vector den = Q.rowwise().squaredNorm().array() + static_cast<Scalar>(lambda);
  // den == 0 only for a zero row with λ = 0: then every m fits equally; keep m = 1.
  return (den.array() > 0).select(Vector::Ones(W.rows()).array() + inner.array() / den.array(),
                                  Scalar(1));
}

/// Result of refine().
template <class Scalar>
struct Refinement {
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> Q;  ///< diag(m) · Q
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> m;               ///< the equivalent vector
  Cut cut;                                                  ///< the null space's cut
};

/// Applies Q2N to any (W, Q) pair: m from equivalent_vector(), then `diag(m) Q`.
template <class DW, class DQ, class Scalar>
Refinement<Scalar> refine(const Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DQ>& Q,
                          const NullSpace<Scalar>& ns, double lambda = 0.2) {
  Refinement<Scalar> out;
  out.m = equivalent_vector(W, Q, ns, lambda);
  out.Q = out.m.asDiagonal() * Q;
  out.cut = ns.cut();
  return out;
}

/// Folds m into per-row or per-(row, group) scales: `scales.row(r) *= m(r)`.
/// Codes and zero points are unchanged, so refinement costs no extra memory.
/// \param scales rows × groups (writable: a Matrix, a Map or a Ref)
/// \param m      rows
template <class DS, class DM>
void fold_into_scales(const Eigen::MatrixBase<DS>& scales, const Eigen::MatrixBase<DM>& m) {
  auto& s = const_cast<Eigen::MatrixBase<DS>&>(scales);  // Eigen's idiom for writable expressions
  if (m.cols() != 1 || m.rows() != s.rows())
    detail::fail("q2n::fold_into_scales: m is ", m.rows(), " x ", m.cols(),
                 " but scales has ", s.rows(), " rows; pass one m entry per row of scales");
  detail::require_finite(m, "q2n::fold_into_scales", "m");
  s = m.asDiagonal() * s;
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
