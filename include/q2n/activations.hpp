#pragma once
/// \file activations.hpp
/// The activation quantizer of W4A4 inference (QuaRot): every token's input vector rounded to
/// a symmetric b-bit grid of its own, at run time. Simulated here ("fake" quantization): the
/// result holds the dequantized values.
///
/// For a row x (one token) and maxq = 2^(b−1) − 1:
///   s = clip · max_j |x_j| / maxq   (s = 1 for a zero row),
///   x̂_j = s · clamp(round(x_j / s), −(maxq + 1), maxq),
/// round to nearest, ties to even (torch.round's rule, so a run matches the reference's).
/// With clip = 1 the largest magnitude is on the grid exactly; clip < 1 trades clipping of the
/// largest entries for a finer grid.
///
/// \code
/// q2n::ActivationOptions a;                      // 4 bits, clip 1
/// Eigen::MatrixXf Xq = q2n::quantize_per_token(X, a);  // X: tokens × features
/// \endcode

#include <q2n/detail/check.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>

namespace q2n {

/// Per-token symmetric activation quantization.
struct ActivationOptions {
  int bits = 4;       ///< 2..16
  double clip = 1.0;  ///< in (0, 1]: the grid's top is clip · max |x| of the token
};

namespace detail {
inline void check_activation_options(const ActivationOptions& o, const char* fn) {
  if (o.bits < 2 || o.bits > 16)
    fail(fn, ": bits = ", o.bits, " is outside 2..16; pass a width in that range");
  if (!(o.clip > 0 && o.clip <= 1))
    fail(fn, ": clip = ", o.clip, " is outside (0, 1]; pass a ratio in that range");
}
}  // namespace detail

/// X with every row (token) quantized on its own symmetric grid (see the file comment).
/// \throws std::invalid_argument for options out of range or a non-finite entry of X
template <class Derived>
typename Derived::PlainObject quantize_per_token(const Eigen::MatrixBase<Derived>& X,
                                                 const ActivationOptions& o = {}) {
  const char* fn = "q2n::quantize_per_token";
  detail::check_activation_options(o, fn);
  detail::require_finite(X, fn, "X");
  using Scalar = typename Derived::Scalar;
  const Scalar maxq = static_cast<Scalar>((1 << (o.bits - 1)) - 1);
  typename Derived::PlainObject out(X.rows(), X.cols());
  if (X.cols() == 0) return out;
  for (Eigen::Index r = 0; r < X.rows(); ++r) {
    const Scalar amax = X.row(r).cwiseAbs().maxCoeff();
    Scalar s = static_cast<Scalar>(o.clip) * amax / maxq;
    if (!(s > 0)) s = 1;  // a zero row (or one whose scale underflows) stays zero
    for (Eigen::Index j = 0; j < X.cols(); ++j) {
      const Scalar q = std::nearbyint(X(r, j) / s);
      out(r, j) = s * std::clamp(q, -maxq - 1, maxq);
    }
  }
  return out;
}

}  // namespace q2n
