#pragma once
/// \file diagnostics.hpp
/// What a quantizer reports about its run besides its result: q2n::QuantDiagnostics (loss,
/// damping used and retries, dead columns, seconds per phase).

#include <q2n/detail/diagnostics.hpp>
