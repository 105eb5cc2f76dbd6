#pragma once
/// \file detail/stopwatch.hpp
/// Wall-clock phase timing for QuantDiagnostics::seconds.

#include <chrono>

namespace q2n::detail {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace q2n::detail
