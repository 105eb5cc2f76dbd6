#pragma once
/// \file detail/errors.hpp
/// Definition of q2n::NumericalError. It lives here so that detail code can throw it without
/// including a public header; users include <q2n/errors.hpp>, which documents it.

#include <stdexcept>

namespace q2n {

/// Numerical failure (an eigensolver that did not converge, a factorization that no damping
/// within the budget makes succeed, a basis that cannot be formed accurately). Distinct from
/// std::invalid_argument, which reports bad input.
struct NumericalError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace q2n
