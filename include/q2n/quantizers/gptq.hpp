#pragma once
/// \file quantizers/gptq.hpp
/// GPTQ (Frantar et al.): column-by-column quantization with second-order error feedback.
///
/// Steps, as in the reference implementation:
/// 1. per-row quantizer (groupsize −1) fitted on the original W;
/// 2. dead columns (H_jj = 0): H_jj = 1 and W[:, j] = 0;
/// 3. static groups: every group's parameters fitted up front on the (unpermuted) W;
/// 4. act-order: columns processed by diag(H) descending (stable sort);
/// 5. damping `percdamp · mean(diag H)` on the diagonal, `U = chol(H⁻¹)` upper, with retries
///    (×10 relative damping per retry) when the factorization fails;
/// 6. the block sweep (detail/gptq_sweep.hpp); a group's parameters are fitted when its first
///    column comes up, on `W[:, k : k + groupsize]` as left by the lazy updates of the previous
///    blocks.
///
/// \code
/// q2n::HessianAccumulator acc(W.cols());
/// acc.add(X);                                       // calibration tokens × cols
/// q2n::GptqOptions o;
/// o.grid.bits = 4;
/// o.groupsize = 128;
/// auto res = q2n::gptq(W, acc.hessian_as<float>(), o);   // an rvalue H is consumed, not copied
/// // res.Q (original column order), res.storage.uniform (codes, scales, zeros, g_idx),
/// // res.storage.perm, res.diagnostics.loss / damping / retries
/// \endcode
///
/// \note For float inputs all arithmetic is float (like the float32 reference), so the codes
/// match the reference except where a value sits at a rounding boundary. H may be given in any
/// floating type; it is converted to the weights' type. H must be symmetric (one triangle is
/// read).

#include <Eigen/Core>
#include <q2n/detail/gptq_sweep.hpp>
#include <q2n/detail/hessian_inverse.hpp>
#include <q2n/detail/quant_checks.hpp>
#include <q2n/detail/second_order.hpp>
#include <q2n/detail/uniform_fit.hpp>
#include <q2n/detail/uniform_kernels.hpp>
#include <q2n/quantizers/options.hpp>
#include <q2n/storage.hpp>
#include <utility>
#include <vector>

namespace q2n {

/// Settings of gptq().
struct GptqOptions {
  UniformOptions grid;           ///< bits, sym, mse
  Eigen::Index groupsize = -1;   ///< −1: one group per row, else a divisor of cols
  bool act_order = false;        ///< process columns by diag(H) descending
  bool static_groups = false;    ///< fit all groups up front on the unpermuted W
  DampingOptions damping;        ///< percdamp, retries
  SweepOptions sweep;            ///< blocksize, reference arithmetic
};

namespace detail {

/// The algorithm on plain matrices (one instantiation per scalar type); w and h are consumed.
template <class Scalar>
QuantResult<Scalar> gptq_impl(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> w,
                              Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> h,
                              const GptqOptions& options) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const char* fn = "q2n::gptq";
  check_grid(options.grid, fn);
  check_groupsize(options.groupsize, w.cols(), fn);
  check_second_order(w, h, fn);
  check_second_order_options(options.damping, options.sweep, fn);
  const Index rows = w.rows(), cols = w.cols();
  const bool grouped = options.groupsize != -1;
  const Index gs = grouped ? options.groupsize : cols;
  const Index groups = cols / gs;
  const bool static_groups = grouped && options.static_groups;

  QuantDiagnostics diag;
  UniformGrid<Scalar> u = empty_grid<Scalar>(options.grid, rows, cols, groups);
  UniformFitter<Scalar> fitter(rows, to_spec(options.grid), fn);

  if (!grouped) fitter.fit(w.data(), rows, cols, u.scales.col(0).data(), u.zeros.col(0).data());
  diag.dead_columns = fix_dead_columns(w, h, identity_order(cols));
  if (static_groups)
    for (Index g = 0; g < groups; ++g)
      fitter.fit(w.col(g * gs).data(), rows, gs, u.scales.col(g).data(), u.zeros.col(g).data());

  const std::vector<int> perm = options.act_order
                                    ? order_descending([&](int j) { return h(j, j); }, cols)
                                    : identity_order(cols);
  Matrix wp = permute_columns(w, perm);
  w.resize(0, 0);
  const Matrix U = damped_inverse_cholesky<Scalar>(std::move(h), perm, options.damping.percdamp,
                                                   options.damping.max_retries,
                                                   options.sweep.reference_arithmetic, diag, fn);

  const Scalar maxq = fitter.maxq();
  const KernelPath path = kernel_path();
  auto quantize = [&](Index k, const Matrix& Wk, const Scalar* col, Scalar* q) {
    const Index j = perm[static_cast<std::size_t>(k)];
    Index g = 0;
    if (static_groups) {
      g = j / gs;
    } else if (grouped) {
      g = k / gs;
      if (k % gs == 0)
        fitter.fit(Wk.col(k).data(), rows, gs, u.scales.col(g).data(), u.zeros.col(g).data());
    }
    u.g_idx(j) = static_cast<int>(g);
    quantize_span(col, u.scales.col(g).data(), u.zeros.col(g).data(), maxq, rows, q,
                  u.codes.col(j).data(), path);
  };
  gptq_sweep<Scalar>(wp, U, cols, options.sweep.blocksize, options.sweep.reference_arithmetic,
                     quantize, diag);
  return StorageBuilder<Scalar>(rows, cols, "gptq")
      .uniform(std::move(u))
      .perm(Eigen::Map<const Eigen::VectorXi>(perm.data(), cols))
      .result(diag);
}

}  // namespace detail

/// GPTQ quantization of W with Hessian H.
/// \param W rows × cols weights (float or double, any storage order), finite
/// \param H cols × cols Hessian `(2/N) Σ x xᵀ` in any floating type, finite, symmetric (one
///          triangle is read), PSD, not all zero; rank-deficient H is fine (damping). An
///          rvalue matrix of the weights' type (`std::move(h)`, `acc.hessian_as<float>()`) is
///          consumed as the working copy, which saves one cols × cols matrix; anything else is
///          converted.
/// \param options see GptqOptions
/// \return Q (original column order) and its storage (method "gptq": a uniform grid and the
///         processing order perm); diagnostics.loss, .damping, .percdamp, .retries,
///         .dead_columns, .seconds
/// \throws std::invalid_argument for bad options, shapes, non-finite or all-zero input
/// \throws NumericalError when no damping within the retry budget gives a factorization
template <class DW, class DH>
QuantResult<typename DW::Scalar> gptq(const Eigen::MatrixBase<DW>& W, DH&& H,
                                      const GptqOptions& options = {}) {
  using Scalar = typename DW::Scalar;
  detail::static_check_second_order<Scalar, DH>();
  return detail::gptq_impl<Scalar>(W, detail::take_hessian<Scalar>(std::forward<DH>(H)), options);
}

}  // namespace q2n
