#pragma once
/// \file detail/quant_checks.hpp
/// Argument validation shared by the quantizers (messages name the function, the argument and
/// the fix, as everywhere in q2n).

#include <Eigen/Core>
#include <cmath>
#include <q2n/detail/check.hpp>
#include <type_traits>

namespace q2n::detail {

template <class Scalar>
constexpr void static_check_scalar() {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "q2n quantizers: the weights must be float or double; cast with .cast<float>()");
}

inline void check_bits(int bits, const char* fn, const char* name = "bits") {
  if (bits < 2 || bits > 8)
    fail(fn, ": ", name, " = ", bits, " is outside 2..8; pass ", name, " in [2, 8]");
}

/// groupsize must be -1 (one group per row) or a positive divisor of cols.
inline void check_groupsize(Eigen::Index groupsize, Eigen::Index cols, const char* fn,
                            const char* name = "groupsize") {
  if (groupsize == -1) return;
  if (groupsize <= 0)
    fail(fn, ": ", name, " = ", groupsize,
         " is invalid; pass -1 (one group per row) or a positive divisor of cols = ", cols);
  if (cols % groupsize != 0)
    fail(fn, ": ", name, " = ", groupsize, " does not divide cols = ", cols,
         "; pass a divisor of cols or -1 (one group per row)");
}

template <class Derived>
void check_weights(const Eigen::MatrixBase<Derived>& W, const char* fn) {
  if (W.rows() == 0 || W.cols() == 0)
    fail(fn, ": W is ", W.rows(), " x ", W.cols(), "; pass a non-empty rows x cols weight matrix");
  require_finite(W, fn, "W");
}

/// H must be cols × cols, finite, with a non-negative diagonal and not all zero.
template <class Derived>
void check_hessian(const Eigen::MatrixBase<Derived>& H, Eigen::Index cols, const char* fn) {
  require_shape(H, cols, cols, fn, "H (must be cols x cols, cols = columns of W)");
  require_finite(H, fn, "H");
  bool any_nonzero = false;
  for (Eigen::Index j = 0; j < cols; ++j) {
    const double d = static_cast<double>(H(j, j));
    if (d < 0)
      fail(fn, ": H(", j, ", ", j, ") = ", d,
           " is negative; H must be positive semi-definite (2/N · sum of x xᵀ)");
    if (d > 0) any_nonzero = true;
  }
  if (!any_nonzero)
    fail(fn,
         ": H is all zero (every diagonal entry is 0): the calibration data carries no "
         "signal; accumulate H from non-zero layer inputs");
}

inline void check_percdamp(double percdamp, const char* fn) {
  if (!(percdamp >= 0) || !std::isfinite(percdamp))
    fail(fn, ": percdamp = ", percdamp, " must be finite and >= 0 (default 0.01)");
}

inline void check_blocksize(Eigen::Index blocksize, const char* fn) {
  if (blocksize <= 0) fail(fn, ": blocksize = ", blocksize, " must be positive (default 128)");
}

/// Compile-time checks of the Hessian-based quantizers' arguments (first thing in each
/// entry point, so that a wrong type fails with this message before any other).
template <class Scalar, class HArg>
constexpr void static_check_second_order() {
  static_check_scalar<Scalar>();
  using H = std::remove_cv_t<std::remove_reference_t<HArg>>;
  static_assert(std::is_base_of_v<Eigen::EigenBase<H>, H>,
                "q2n quantizers: H must be an Eigen matrix or expression");
  if constexpr (std::is_base_of_v<Eigen::EigenBase<H>, H>)
    static_assert(!Eigen::NumTraits<typename H::Scalar>::IsInteger,
                  "q2n quantizers: H must be a floating-point matrix");
}

/// The run-time checks shared by the Hessian-based quantizers (GPTQ, OWQ, PB-LLM): W
/// non-empty and finite, H cols × cols, finite, with a non-negative diagonal, not all zero.
template <class DW, class DH>
void check_second_order(const Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DH>& H,
                        const char* fn) {
  check_weights(W, fn);
  check_hessian(H, W.cols(), fn);
}

inline void check_mse(bool mse, double norm, int grid, double maxshrink, const char* fn) {
  if (!mse) return;
  if (!(norm > 0) || !std::isfinite(norm))
    fail(fn, ": mse_norm = ", norm, " must be finite and > 0 (default 2.4)");
  if (grid <= 0) fail(fn, ": mse_grid = ", grid, " must be positive (default 100)");
  if (!(maxshrink > 0 && maxshrink <= 1))
    fail(fn, ": mse_maxshrink = ", maxshrink, " must be in (0, 1] (default 0.8)");
}

}  // namespace q2n::detail
