#pragma once
/// \file quantizers/uniform.hpp
/// GPTQ's uniform affine quantizer, per row of a block of columns.
///
/// Per row: `xmin = min(row, 0)`, `xmax = max(row, 0)`; symmetric: `xmax = max(|xmin|, xmax)`
/// and `xmin = −xmax` when xmin < 0; both 0 → [−1, 1]. `maxq = 2^bits − 1`,
/// `scale = (xmax − xmin) / maxq`, `zero = (maxq + 1) / 2` (symmetric) or
/// `round(−xmin / scale)`. Then `q = clamp(round(x / scale) + zero, 0, maxq)` and
/// `x̂ = scale · (q − zero)`, with round half to even (torch.round).
///
/// Optional MSE grid: for i = 0 … ⌊maxshrink · grid⌋ − 1, shrink the range by
/// `p = 1 − i / grid`, refit scale and zero (the symmetric zero stays) and keep, per row, the
/// pair with the smallest `Σ |x̂ − x|^norm` (first one on ties).
///
/// \code
/// Eigen::MatrixXf block = W.leftCols(128);
/// q2n::UniformOptions grid;
/// grid.bits = 4;
/// auto params = q2n::fit_uniform(block, grid);
/// auto q = q2n::quantize_uniform(block, params);   // q.codes, q.dequantized
/// \endcode
///
/// \note Everything is computed in the weights' scalar type, like the float32 reference.
/// The quantizer is exactly the reference's: with `sym` and a row without negative values,
/// xmin stays 0, so only the upper half of the grid is reachable (a known quirk kept for
/// compatibility).

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <q2n/detail/quant_checks.hpp>
#include <q2n/detail/uniform_fit.hpp>
#include <q2n/detail/uniform_kernels.hpp>
#include <q2n/quantizers/options.hpp>
#include <q2n/storage.hpp>

namespace q2n {

/// Per-row quantizer parameters.
template <class Scalar>
struct UniformParams {
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> scale;  ///< per row, finite, > 0
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> zero;   ///< per row, an integer in [0, maxq]
  Scalar maxq = 0;                                 ///< 2^bits − 1
};

/// Codes and dequantized values of a block.
template <class Scalar>
struct UniformCodes {
  CodeMatrix codes;                                                   ///< rows × cols
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> dequantized;  ///< scale · (code − zero)
};

/// Fits the quantizer to each row of x (all of x's columns form the row's group).
/// \param x rows × n block, finite, float or double, any storage order
/// \return per-row scale and zero
/// \throws std::invalid_argument for bad options, empty or non-finite x, or a row whose range
///         overflows the scalar type
template <class Derived>
UniformParams<typename Derived::Scalar> fit_uniform(const Eigen::MatrixBase<Derived>& x,
                                                    const UniformOptions& options = {}) {
  using Scalar = typename Derived::Scalar;
  detail::static_check_scalar<Scalar>();
  const char* fn = "q2n::fit_uniform";
  detail::check_grid(options, fn, "bits");
  if (x.rows() == 0 || x.cols() == 0)
    detail::fail(fn, ": x is ", x.rows(), " x ", x.cols(), "; pass a non-empty block");
  detail::require_finite(x, fn, "x");
  const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> xc = x;  // column-major copy
  detail::UniformFitter<Scalar> fitter(xc.rows(), detail::to_spec(options), fn);
  UniformParams<Scalar> p;
  p.scale.resize(xc.rows());
  p.zero.resize(xc.rows());
  p.maxq = fitter.maxq();
  fitter.fit(xc.data(), xc.rows(), xc.cols(), p.scale.data(), p.zero.data());
  return p;
}

/// Quantizes each row of x with that row's parameters.
/// \param x      rows × n block, finite
/// \param params one entry per row of x: maxq = 2^bits − 1 (bits 1..8), scales finite and
///               positive, zeros integers in [0, maxq] (what fit_uniform returns)
template <class Derived>
UniformCodes<typename Derived::Scalar> quantize_uniform(
    const Eigen::MatrixBase<Derived>& x, const UniformParams<typename Derived::Scalar>& params) {
  using Scalar = typename Derived::Scalar;
  detail::static_check_scalar<Scalar>();
  const char* fn = "q2n::quantize_uniform";
  detail::require_finite(x, fn, "x");
  if (params.scale.size() != x.rows() || params.zero.size() != x.rows())
    detail::fail(fn, ": params has ", params.scale.size(), " rows but x has ", x.rows(),
                 "; fit the parameters on a block with the same rows");
  const double maxq = static_cast<double>(params.maxq);
  if (!(maxq == 1 || maxq == 3 || maxq == 7 || maxq == 15 || maxq == 31 || maxq == 63 ||
        maxq == 127 || maxq == 255))
    detail::fail(fn, ": params.maxq = ", maxq,
                 " is not 2^bits − 1 for bits in 1..8; use parameters returned by fit_uniform");
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const double s = static_cast<double>(params.scale(r)), z = static_cast<double>(params.zero(r));
    if (!(std::isfinite(s) && s > 0))
      detail::fail(fn, ": params.scale(", r, ") = ", s, " must be finite and positive");
    if (!(z >= 0 && z <= maxq && z == std::floor(z)))
      detail::fail(fn, ": params.zero(", r, ") = ", z, " must be an integer in [0, maxq = ", maxq,
                   "]");
  }
  const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> xc = x;
  UniformCodes<Scalar> out;
  out.codes.resize(xc.rows(), xc.cols());
  out.dequantized.resize(xc.rows(), xc.cols());
  for (Eigen::Index c = 0; c < xc.cols(); ++c)
    detail::quantize_span(xc.col(c).data(), params.scale.data(), params.zero.data(), params.maxq,
                          xc.rows(), out.dequantized.col(c).data(), out.codes.col(c).data(),
                          detail::kernel_path());
  return out;
}

}  // namespace q2n
