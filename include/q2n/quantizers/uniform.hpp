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
/// auto params = q2n::fit_uniform(block, {.bits = 4});
/// auto q = q2n::quantize_uniform(block, params);   // q.codes, q.dequantized
/// \endcode
///
/// \note Everything is computed in the weights' scalar type, like the float32 reference.
/// The quantizer is exactly the reference's: with `sym` and a row without negative values,
/// xmin stays 0, so only the upper half of the grid is reachable (a known quirk kept for
/// compatibility).

#include <Eigen/Core>
#include <cstdint>
#include <q2n/detail/quant_checks.hpp>
#include <q2n/detail/uniform_fit.hpp>
#include <q2n/detail/uniform_kernels.hpp>
#include <q2n/quantizers/kernel_path.hpp>

namespace q2n {

/// Settings of the uniform quantizer.
struct UniformOptions {
  int bits = 4;                ///< 2..8
  bool sym = false;            ///< symmetric grid around zero = 2^(bits−1)
  bool mse = false;            ///< grid search over shrunk ranges
  double mse_norm = 2.4;       ///< exponent of the grid-search error
  int mse_grid = 100;          ///< grid resolution: p = 1 − i / mse_grid
  double mse_maxshrink = 0.8;  ///< i < mse_maxshrink · mse_grid
  KernelPath kernel = KernelPath::simd;
};

/// Per-row quantizer parameters.
template <class Scalar>
struct UniformParams {
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> scale;  ///< per row, > 0
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> zero;   ///< per row, integer-valued in [0, maxq]
  Scalar maxq = 0;                                 ///< 2^bits − 1
};

/// Codes and dequantized values of a block.
template <class Scalar>
struct UniformCodes {
  Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic> codes;  ///< rows × cols
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> dequantized;  ///< scale · (code − zero)
};

namespace detail {
inline UniformSpec to_spec(const UniformOptions& o) {
  return UniformSpec{o.bits, o.sym, o.mse, o.mse_norm, o.mse_grid, o.mse_maxshrink, o.kernel};
}
inline void check_uniform(const UniformOptions& o, const char* fn) {
  check_bits(o.bits, fn);
  check_mse(o.mse, o.mse_norm, o.mse_grid, o.mse_maxshrink, fn);
}
}  // namespace detail

/// Fits the quantizer to each row of x (all of x's columns form the row's group).
/// \param x rows × n block, finite, float or double, any storage order
/// \return per-row scale and zero
template <class Derived>
UniformParams<typename Derived::Scalar> fit_uniform(const Eigen::MatrixBase<Derived>& x,
                                                    const UniformOptions& options = {}) {
  using Scalar = typename Derived::Scalar;
  detail::static_check_scalar<Scalar>();
  const char* fn = "q2n::fit_uniform";
  detail::check_uniform(options, fn);
  if (x.rows() == 0 || x.cols() == 0)
    detail::fail(fn, ": x is ", x.rows(), " x ", x.cols(), "; pass a non-empty block");
  detail::require_finite(x, fn, "x");
  const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> xc = x;  // column-major copy
  detail::UniformFitter<Scalar> fitter(xc.rows(), detail::to_spec(options));
  UniformParams<Scalar> p;
  p.scale.resize(xc.rows());
  p.zero.resize(xc.rows());
  p.maxq = fitter.maxq();
  fitter.fit(xc.data(), xc.rows(), xc.cols(), p.scale.data(), p.zero.data());
  return p;
}

/// Quantizes each row of x with that row's parameters.
/// \param x      rows × n block, finite
/// \param params from fit_uniform (one entry per row of x)
/// \param path   kernel implementation
template <class Derived>
UniformCodes<typename Derived::Scalar> quantize_uniform(
    const Eigen::MatrixBase<Derived>& x, const UniformParams<typename Derived::Scalar>& params,
    KernelPath path = KernelPath::simd) {
  using Scalar = typename Derived::Scalar;
  detail::static_check_scalar<Scalar>();
  const char* fn = "q2n::quantize_uniform";
  detail::require_finite(x, fn, "x");
  if (params.scale.size() != x.rows() || params.zero.size() != x.rows())
    detail::fail(fn, ": params has ", params.scale.size(), " rows but x has ", x.rows(),
                 "; fit the parameters on a block with the same rows");
  if (!(params.maxq >= 1 && params.maxq <= 255))
    detail::fail(fn, ": params.maxq = ", static_cast<double>(params.maxq),
                 " is outside 1..255; use parameters returned by fit_uniform");
  const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> xc = x;
  UniformCodes<Scalar> out;
  out.codes.resize(xc.rows(), xc.cols());
  out.dequantized.resize(xc.rows(), xc.cols());
  for (Eigen::Index c = 0; c < xc.cols(); ++c)
    detail::quantize_span(xc.col(c).data(), params.scale.data(), params.zero.data(), params.maxq,
                          xc.rows(), out.dequantized.col(c).data(), out.codes.col(c).data(), path);
  return out;
}

}  // namespace q2n
