#pragma once
/// \file detail/diagnostics.hpp
/// Definition of q2n::QuantDiagnostics, here so that the detail routines that fill it need no
/// public header; users include <q2n/diagnostics.hpp>.

#include <cstdint>

namespace q2n {

/// Diagnostics of a quantizer run (all zero for RTN).
struct QuantDiagnostics {
  /// GPTQ objective over the quantized columns: Σ (w − q)² / d², with w the working weight,
  /// q its quantized value and d the diagonal of the upper Cholesky factor of H⁻¹.
  /// (The reference code prints half of this sum.)
  double loss = 0;
  double percdamp = 0;            ///< relative damping finally used (fraction of mean diag H)
  double damping = 0;             ///< absolute damping finally added to diag(H)
  int retries = 0;                ///< Cholesky retries with grown damping (0 = first try worked)
  std::int64_t dead_columns = 0;  ///< columns with H_jj = 0 (their weights were zeroed)
  /// Wall-clock seconds of the Hessian-based quantizers' phases: the change of basis (QuIP's
  /// rescaling and incoherence transforms), the damped H⁻¹ factorization, the fitting of a grid
  /// before the sweep (LeanQuant's k-means), the in-block column sweep (quantization and
  /// in-block error feedback), the lazy updates of the later columns (one matrix product per
  /// block) and QuIP's greedy passes.
  struct Seconds {
    double transform = 0;
    double factorization = 0;
    double grid_fit = 0;
    double sweep = 0;
    double lazy_update = 0;
    double greedy = 0;
  } seconds;
};

}  // namespace q2n
