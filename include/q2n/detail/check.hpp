#pragma once
/// \file detail/check.hpp
/// Argument validation shared by the public headers. Every message starts with the public
/// function's name, names the argument, and says what to pass instead.

#include <q2n/detail/errors.hpp>

#include <Eigen/Core>

#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace q2n::detail {

/// Builds a message from streamable parts and throws std::invalid_argument with it.
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw std::invalid_argument(os.str());
}

/// Builds a message from streamable parts and throws q2n::NumericalError with it.
template <class... Parts>
[[noreturn]] void numerical_failure(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw NumericalError(os.str());
}

template <class Scalar>
const char* scalar_name() {
  return std::is_same_v<Scalar, float> ? "float" : std::is_same_v<Scalar, double> ? "double" : "the scalar";
}

/// Throws NumericalError when a result computed in double, whose largest magnitude is
/// `maxabs`, cannot be converted to Scalar: beyond its range, or nonzero but below its normal
/// range (where it would become subnormal or zero). `in_double` names the call that returns
/// the double values.
template <class Scalar>
void require_in_range(double maxabs, const char* function, const char* name, const char* in_double) {
  using L = std::numeric_limits<Scalar>;
  if (maxabs > static_cast<double>(L::max()))
    numerical_failure(function, ": the largest entry of ", name, ", ", maxabs, ", is beyond ",
                      scalar_name<Scalar>(), "'s range (", static_cast<double>(L::max()),
                      "); call ", in_double, " for double values, or scale the activations down");
  if (maxabs > 0 && maxabs < static_cast<double>(L::min()))
    numerical_failure(function, ": the largest entry of ", name, ", ", maxabs, ", is below ",
                      scalar_name<Scalar>(), "'s normal range (", static_cast<double>(L::min()),
                      "), where it would be rounded to subnormal numbers or zero; call ",
                      in_double, " for double values, or scale the activations up");
}

/// Throws unless every entry of `m` is finite; reports the first offending (row, col).
template <class Derived>
void require_finite(const Eigen::DenseBase<Derived>& m, const char* function, const char* name) {
  // A fast all-finite test first; the loop that locates the entry runs only on failure.
  if (m.derived().allFinite()) return;
  for (Eigen::Index j = 0; j < m.cols(); ++j)
    for (Eigen::Index i = 0; i < m.rows(); ++i)
      if (!std::isfinite(static_cast<double>(m(i, j))))
        fail(function, ": ", name, "(", i, ", ", j, ") = ", static_cast<double>(m(i, j)),
             " is not finite; remove NaN/Inf values from ", name, " before calling");
}

/// Throws unless `m` is rows × cols (a negative expectation means "any").
template <class Derived>
void require_shape(const Eigen::EigenBase<Derived>& m, Eigen::Index rows, Eigen::Index cols,
                   const char* function, const char* name) {
  if ((rows >= 0 && m.rows() != rows) || (cols >= 0 && m.cols() != cols))
    fail(function, ": ", name, " is ", m.rows(), " x ", m.cols(), " but must be ",
         rows >= 0 ? std::to_string(rows) : std::string("any"), " x ",
         cols >= 0 ? std::to_string(cols) : std::string("any"));
}

}  // namespace q2n::detail
