#pragma once
/// \file errors.hpp
/// The two kinds of error every q2n function reports.
///
/// - `std::invalid_argument`: bad shapes, parameters or non-finite input. The message starts
///   with the function's name, names the argument and says what to pass instead.
/// - `q2n::NumericalError` (a `std::runtime_error`): valid input on which the computation
///   failed, e.g. a Hessian that no damping within the retry budget makes factorizable.
///
/// No q2n function returns NaN or Inf silently.

#include <q2n/detail/errors.hpp>
