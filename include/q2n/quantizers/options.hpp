#pragma once
/// \file quantizers/options.hpp
/// The option parts shared by the quantizers: the uniform grid and, for the Hessian-based
/// quantizers (GPTQ, OWQ, PB-LLM), the damping and the column sweep. Each quantizer's options
/// hold these as members, so one setting has one name everywhere:
///
/// \code
/// q2n::GptqOptions o;
/// o.grid.bits = 3;          // UniformOptions
/// o.groupsize = 128;
/// o.damping.percdamp = 0.1; // DampingOptions
/// auto res = q2n::gptq(W, H, o);
/// \endcode

#include <q2n/detail/quant_checks.hpp>
#include <q2n/detail/uniform_fit.hpp>
#include <q2n/storage.hpp>

namespace q2n {

/// GPTQ's uniform affine quantizer (see quantizers/uniform.hpp for the exact rule).
struct UniformOptions {
  int bits = 4;                ///< 2..8
  bool sym = false;            ///< symmetric grid around zero = 2^(bits−1)
  bool mse = false;            ///< grid search over shrunk ranges
  double mse_norm = 2.4;       ///< exponent of the grid-search error
  int mse_grid = 100;          ///< grid resolution: shrink p = 1 − i / mse_grid
  double mse_maxshrink = 0.8;  ///< i < mse_maxshrink · mse_grid
};

/// Damping of the Hessian before `U = chol(H⁻¹)`.
struct DampingOptions {
  double percdamp = 0.01;  ///< damping `percdamp · mean(diag H)` added to the diagonal
  /// Cholesky retries: the relative damping is multiplied by 10 per retry (from 1e-6 when
  /// percdamp = 0), so the default reaches 1e10 · mean(diag H), enough for any PSD H up to
  /// 10⁵ columns; beyond that NumericalError is thrown (H is then not PSD).
  int max_retries = 12;
};

/// GPTQ's column sweep.
struct SweepOptions {
  Eigen::Index blocksize = 128;  ///< lazy-update block width
  /// Reproduce the reference's operation order (chol → inverse → chol for H⁻¹, one rank-1
  /// update per column inside a block): slower, rounds like the float32 reference more often.
  /// The default uses a cheaper H⁻¹ factorization and blocked in-block updates.
  bool reference_arithmetic = false;
};

namespace detail {

inline UniformSpec to_spec(const UniformOptions& o) {
  UniformSpec s;
  s.bits = o.bits;
  s.sym = o.sym;
  s.mse = o.mse;
  s.mse_norm = o.mse_norm;
  s.mse_grid = o.mse_grid;
  s.mse_maxshrink = o.mse_maxshrink;
  return s;
}

/// A uniform grid of `groups` groups per row with every code zero, to be filled by a quantizer.
template <class Scalar>
UniformGrid<Scalar> empty_grid(const UniformOptions& o, Eigen::Index rows, Eigen::Index cols,
                               Eigen::Index groups) {
  UniformGrid<Scalar> u;
  u.bits = o.bits;
  u.sym = o.sym;
  u.codes = CodeMatrix::Zero(rows, cols);
  u.scales.resize(rows, groups);
  u.zeros.resize(rows, groups);
  u.g_idx = Eigen::VectorXi::Zero(cols);
  return u;
}

inline void check_grid(const UniformOptions& o, const char* fn, const char* name = "grid.bits") {
  check_bits(o.bits, fn, name);
  check_mse(o.mse, o.mse_norm, o.mse_grid, o.mse_maxshrink, fn);
}

inline void check_second_order_options(const DampingOptions& d, const SweepOptions& s,
                                       const char* fn) {
  check_percdamp(d.percdamp, fn);
  check_blocksize(s.blocksize, fn);
  if (d.max_retries < 0) fail(fn, ": damping.max_retries = ", d.max_retries, " must be >= 0");
}

}  // namespace detail
}  // namespace q2n
