#pragma once
/// \file detail/check.hpp
/// Argument validation shared by the public headers. Every message starts with the public
/// function's name, names the argument, and says what to pass instead.

#include <Eigen/Core>

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

namespace q2n::detail {

/// Builds a message from streamable parts and throws std::invalid_argument with it.
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw std::invalid_argument(os.str());
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
