#pragma once
/// \file io/format_error.hpp
/// The error every q2n reader raises for malformed, truncated or unsupported file content.

#include <stdexcept>

namespace q2n::io {

/// Malformed, truncated or unsupported file content. The message names the file and the
/// problem (and, where there is one, the tensor or key).
struct FormatError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

}  // namespace q2n::io
