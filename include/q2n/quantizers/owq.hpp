#pragma once
/// \file quantizers/owq.hpp
/// OWQ (Lee et al.): GPTQ with a few input columns kept in full precision.
///
/// Column j's sensitivity is `score_j = H_jj · Σ_rows (W − RTN(W))²_j` (H before the
/// dead-column fix; RTN = the uniform quantizer per row with the same bits / sym / mse). The
/// n_out highest scores are kept. GPTQ then runs over the other columns, placed first in the
/// processing order (original order, or by score descending with act_order, as the reference
/// does), with the kept columns last (by score descending). The kept columns are never
/// quantized, but the lazy block updates still flow into them, so they keep their
/// compensated values — stored in full precision (storage.full_precision).
///
/// Groups are formed over the quantized columns in processing order; the last group may be
/// shorter (as in the reference). Per-row parameters (groupsize −1) are fitted on the
/// quantized columns only.
///
/// \code
/// q2n::OwqOptions o;
/// o.grid.bits = 3;
/// o.target_bits = 3.01;
/// auto res = q2n::owq(W, H, o);
/// // res.storage.full_precision->columns: original indices of the kept columns
/// \endcode

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
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

/// Settings of owq().
struct OwqOptions {
  UniformOptions grid;               ///< bits, sym, mse
  Eigen::Index groupsize = -1;       ///< −1: one group per row, else a divisor of cols
  bool act_order = false;            ///< quantized columns by score descending (OWQ's act-order)
  Eigen::Index outlier_columns = 0;  ///< n_out, used when target_bits == 0
  double target_bits = 0;            ///< > 0: n_out from owq_outlier_count(cols, bits, target_bits)
  DampingOptions damping;            ///< percdamp, retries
  SweepOptions sweep;                ///< blocksize, reference arithmetic
};

/// Number of full-precision columns for a target average bit width.
///
/// Storing n_out of cols columns in 16 bits instead of `bits` costs
/// `n_out · (16 − bits) / cols` extra bits per weight, so
/// `n_out = round(cols · (target_bits − bits) / (16 − bits))`, rounded half to even (Python's
/// round) and then bumped to the next even number when odd, as OWQ does.
/// \note OWQ's script spreads one model-wide budget over the layer types it treats:
/// `r = 12 / (16 − wbits) · (target − wbits) / n_owq_layers`, `n_out = round(cols · r · ratio)`
/// with per-model ratios, then `+1` when odd. For a single layer, the formula above is the
/// same rounding applied to the layer's own bit budget.
/// \throws std::invalid_argument unless bits ≤ target_bits < 16 and the count fits in cols
inline Eigen::Index owq_outlier_count(Eigen::Index cols, int bits, double target_bits) {
  const char* fn = "q2n::owq_outlier_count";
  detail::check_bits(bits, fn);
  if (cols <= 0) detail::fail(fn, ": cols = ", cols, " must be positive");
  if (!(target_bits >= bits && target_bits < 16))
    detail::fail(fn, ": target_bits = ", target_bits, " must be in [bits, 16) with bits = ", bits);
  const double raw = static_cast<double>(cols) * (target_bits - bits) / (16.0 - bits);
  auto n = static_cast<Eigen::Index>(std::nearbyint(raw));
  if (n % 2 == 1) ++n;
  if (n > cols)
    detail::fail(fn, ": target_bits = ", target_bits, " asks for ", n,
                 " full-precision columns but the layer has ", cols);
  return n;
}

namespace detail {

/// The algorithm on plain matrices (one instantiation per scalar type); w and h are consumed.
template <class Scalar>
QuantResult<Scalar> owq_impl(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> w,
                             Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> h,
                             const OwqOptions& options) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const char* fn = "q2n::owq";
  check_grid(options.grid, fn);
  check_groupsize(options.groupsize, w.cols(), fn);
  check_second_order(w, h, fn);
  check_second_order_options(options.damping, options.sweep, fn);
  const Index rows = w.rows(), cols = w.cols();
  Index n_out = options.outlier_columns;
  if (options.target_bits != 0) {
    if (options.outlier_columns != 0)
      fail(fn, ": both outlier_columns = ", options.outlier_columns,
           " and target_bits = ", options.target_bits, " are set; pass only one");
    n_out = owq_outlier_count(cols, options.grid.bits, options.target_bits);
  }
  if (n_out < 0 || n_out > cols) fail(fn, ": outlier_columns = ", n_out, " is outside 0..", cols);
  const Index n_quant = cols - n_out;
  const bool grouped = options.groupsize != -1;
  const Index gs = grouped ? options.groupsize : std::max<Index>(n_quant, 1);
  const Index groups = grouped ? (n_quant + gs - 1) / gs : 1;

  UniformFitter<Scalar> fitter(rows, to_spec(options.grid), fn);
  const Scalar maxq = fitter.maxq();
  const KernelPath path = kernel_path();

  // Sensitivity: H_jj · squared RTN error of column j (per-row RTN on the original W).
  std::vector<double> score(static_cast<std::size_t>(cols));
  {
    Eigen::Matrix<Scalar, Eigen::Dynamic, 1> sc(rows), ze(rows), xh(rows);
    fitter.fit(w.data(), rows, cols, sc.data(), ze.data());
    for (Index j = 0; j < cols; ++j) {
      quantize_span(w.col(j).data(), sc.data(), ze.data(), maxq, rows, xh.data(),
                    static_cast<std::uint8_t*>(nullptr), path);
      const double err = (xh - w.col(j)).template cast<double>().squaredNorm();
      score[static_cast<std::size_t>(j)] = static_cast<double>(h(j, j)) * err;
    }
  }
  const std::vector<int> by_score =
      order_descending([&](int j) { return score[static_cast<std::size_t>(j)]; }, cols);
  std::vector<char> kept(static_cast<std::size_t>(cols), 0);
  for (Index k = 0; k < n_out; ++k) kept[static_cast<std::size_t>(by_score[k])] = 1;
  std::vector<int> perm;
  perm.reserve(static_cast<std::size_t>(cols));
  if (options.act_order) {
    for (Index k = n_out; k < cols; ++k) perm.push_back(by_score[k]);
  } else {
    for (Index j = 0; j < cols; ++j)
      if (!kept[static_cast<std::size_t>(j)]) perm.push_back(static_cast<int>(j));
  }
  for (Index k = 0; k < n_out; ++k) perm.push_back(by_score[k]);

  QuantDiagnostics diag;
  UniformGrid<Scalar> u = empty_grid<Scalar>(options.grid, rows, cols, groups);
  u.g_idx.setConstant(-1);  // set as the columns are quantized; kept columns stay -1

  Matrix wp = permute_columns(w, perm);
  w.resize(0, 0);
  if (!grouped && n_quant > 0) {
    fitter.fit(wp.data(), rows, n_quant, u.scales.col(0).data(), u.zeros.col(0).data());
  } else if (!grouped) {  // every column kept: the per-row group is unused
    u.scales.col(0).setOnes();
    u.zeros.col(0).setZero();
  }
  diag.dead_columns = fix_dead_columns(wp, h, perm);
  const Matrix U = damped_inverse_cholesky<Scalar>(std::move(h), perm, options.damping.percdamp,
                                                   options.damping.max_retries,
                                                   options.sweep.reference_arithmetic, diag, fn);

  auto quantize = [&](Index k, const Matrix& Wk, const Scalar* col, Scalar* q) {
    Index g = 0;
    if (grouped) {
      g = k / gs;
      if (k % gs == 0)
        fitter.fit(Wk.col(k).data(), rows, std::min(gs, n_quant - k), u.scales.col(g).data(),
                   u.zeros.col(g).data());
    }
    const int j = perm[static_cast<std::size_t>(k)];
    u.g_idx(j) = static_cast<int>(g);
    quantize_span(col, u.scales.col(g).data(), u.zeros.col(g).data(), maxq, rows, q,
                  u.codes.col(j).data(), path);
  };
  gptq_sweep<Scalar>(wp, U, n_quant, options.sweep.blocksize, options.sweep.reference_arithmetic,
                     quantize, diag);

  FullPrecisionColumns<Scalar> fp;
  fp.columns.resize(n_out);
  fp.values = wp.rightCols(n_out);
  for (Index k = 0; k < n_out; ++k) fp.columns(k) = perm[static_cast<std::size_t>(n_quant + k)];
  return StorageBuilder<Scalar>(rows, cols, "owq")
      .uniform(std::move(u))
      .full_precision(std::move(fp))
      .perm(Eigen::Map<const Eigen::VectorXi>(perm.data(), cols))
      .result(diag);
}

}  // namespace detail

/// OWQ quantization of W with Hessian H.
/// \param W rows × cols weights, finite
/// \param H cols × cols Hessian, finite, PSD, not all zero; an rvalue matrix of the weights'
///          type is consumed (see gptq())
/// \param options see OwqOptions (n_out = outlier_columns, or from target_bits)
/// \return Q (kept columns = their compensated full-precision values) and storage (method
///         "owq": a uniform grid with g_idx −1 on the kept columns, the kept columns as a
///         full-precision part, perm with the quantized columns first and the kept last)
template <class DW, class DH>
QuantResult<typename DW::Scalar> owq(const Eigen::MatrixBase<DW>& W, DH&& H,
                                     const OwqOptions& options = {}) {
  using Scalar = typename DW::Scalar;
  detail::static_check_second_order<Scalar, DH>();
  return detail::owq_impl<Scalar>(W, detail::take_hessian<Scalar>(std::forward<DH>(H)), options);
}

}  // namespace q2n
