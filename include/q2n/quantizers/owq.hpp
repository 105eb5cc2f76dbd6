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
/// compensated values — stored in full precision (storage.fp_columns / fp_values).
///
/// Groups are formed over the quantized columns in processing order; the last group may be
/// shorter (as in the reference). Per-row parameters (groupsize −1) are fitted on the
/// quantized columns only.
///
/// \code
/// auto res = q2n::owq(W, H, {.bits = 3, .target_bits = 3.01});
/// // res.storage.fp_columns: original indices of the kept columns
/// \endcode

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <numeric>
#include <q2n/detail/gptq_sweep.hpp>
#include <q2n/detail/hessian_inverse.hpp>
#include <q2n/detail/quant_checks.hpp>
#include <q2n/detail/uniform_fit.hpp>
#include <q2n/detail/uniform_kernels.hpp>
#include <q2n/quantizers/gptq.hpp>
#include <q2n/quantizers/kernel_path.hpp>
#include <q2n/quantizers/result.hpp>
#include <utility>
#include <vector>

namespace q2n {

/// Settings of owq().
struct OwqOptions {
  int bits = 4;                 ///< 2..8
  Eigen::Index groupsize = -1;  ///< −1: one group per row, else a divisor of cols
  bool sym = false;
  bool mse = false;
  bool act_order = false;            ///< quantized columns by score descending (OWQ's act-order)
  Eigen::Index outlier_columns = 0;  ///< n_out, used when target_bits == 0
  double target_bits = 0;            ///< > 0: n_out from owq_outlier_count(cols, bits, target_bits)
  double percdamp = 0.01;
  Eigen::Index blocksize = 128;
  int max_damping_retries = 12;       ///< Cholesky retries, relative damping ×10 each
  bool reference_arithmetic = false;  ///< see GptqOptions::reference_arithmetic
  KernelPath kernel = KernelPath::simd;
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

/// The algorithm on plain matrices (one instantiation per scalar type): w is W, h is H
/// converted to the weights' type; both are consumed.
template <class Scalar>
QuantResult<Scalar> owq_impl(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> w,
                             Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> h,
                             const OwqOptions& options) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const char* fn = "q2n::owq";
  const Index rows = w.rows(), cols = w.cols();
  Index n_out = options.outlier_columns;
  if (options.target_bits != 0) {
    if (options.outlier_columns != 0)
      detail::fail(fn, ": both outlier_columns = ", options.outlier_columns,
                   " and target_bits = ", options.target_bits, " are set; pass only one");
    n_out = owq_outlier_count(cols, options.bits, options.target_bits);
  }
  if (n_out < 0 || n_out > cols)
    detail::fail(fn, ": outlier_columns = ", n_out, " is outside 0..", cols);
  const Index n_quant = cols - n_out;
  const bool grouped = options.groupsize != -1;
  const Index gs = grouped ? options.groupsize : std::max<Index>(n_quant, 1);
  const Index groups = grouped ? (n_quant + gs - 1) / gs : 1;

  const detail::UniformSpec spec =
      detail::uniform_spec(options.bits, options.sym, options.mse, options.kernel);
  detail::UniformFitter<Scalar> fitter(rows, spec);
  const Scalar maxq = fitter.maxq();

  // Sensitivity: H_jj · squared RTN error of column j (per-row RTN on the original W).
  std::vector<double> score(static_cast<std::size_t>(cols));
  {
    Eigen::Matrix<Scalar, Eigen::Dynamic, 1> sc(rows), ze(rows), xh(rows);
    fitter.fit(w.data(), rows, cols, sc.data(), ze.data());
    for (Index j = 0; j < cols; ++j) {
      detail::quantize_span(w.col(j).data(), sc.data(), ze.data(), maxq, rows, xh.data(),
                            static_cast<std::uint8_t*>(nullptr), options.kernel);
      const double err = (xh - w.col(j)).template cast<double>().squaredNorm();
      score[j] = static_cast<double>(h(j, j)) * err;
    }
  }
  const std::vector<int> by_score = detail::order_descending([&](int j) { return score[j]; }, cols);
  std::vector<char> kept(static_cast<std::size_t>(cols), 0);
  for (Index k = 0; k < n_out; ++k) kept[by_score[k]] = 1;
  std::vector<int> perm;
  perm.reserve(static_cast<std::size_t>(cols));
  if (options.act_order) {
    for (Index k = n_out; k < cols; ++k) perm.push_back(by_score[k]);
  } else {
    for (Index j = 0; j < cols; ++j)
      if (!kept[j]) perm.push_back(static_cast<int>(j));
  }
  for (Index k = 0; k < n_out; ++k) perm.push_back(by_score[k]);

  QuantResult<Scalar> res;
  auto& s = res.storage;
  detail::init_uniform_storage(s, QuantMethod::owq, rows, cols, options.bits, options.sym,
                               options.groupsize, groups);
  for (Index k = 0; k < cols; ++k) s.perm(k) = perm[k];

  Matrix wp(rows, cols);
  for (Index k = 0; k < cols; ++k) wp.col(k) = w.col(perm[k]);
  w.resize(0, 0);
  if (!grouped && n_quant > 0) {
    fitter.fit(wp.data(), rows, n_quant, s.scales.col(0).data(), s.zeros.col(0).data());
  } else if (!grouped) {  // every column kept: the per-row group is unused
    s.scales.col(0).setOnes();
    s.zeros.col(0).setZero();
  }
  // Dead columns, in processing order (H's diagonal is read through perm).
  Index dead = 0;
  for (Index k = 0; k < cols; ++k)
    if (h(perm[k], perm[k]) == Scalar(0)) {
      h(perm[k], perm[k]) = Scalar(1);
      wp.col(k).setZero();
      ++dead;
    }
  res.diagnostics.dead_columns = dead;

  const Matrix U = detail::damped_inverse_cholesky<Scalar>(
      std::move(h), perm, options.percdamp, options.max_damping_retries,
      options.reference_arithmetic, res.diagnostics, fn);

  const KernelPath path = options.kernel;
  auto quantize = [&](Index k, const Matrix& Wk, const Scalar* col, Scalar* q) {
    Index g = 0;
    if (grouped) {
      g = k / gs;
      if (k % gs == 0)
        fitter.fit(Wk.col(k).data(), rows, std::min(gs, n_quant - k), s.scales.col(g).data(),
                   s.zeros.col(g).data());
    }
    detail::quantize_span(col, s.scales.col(g).data(), s.zeros.col(g).data(), maxq, rows, q,
                          s.codes.col(perm[k]).data(), path);
  };
  detail::gptq_sweep<Scalar>(wp, U, n_quant, options.blocksize, options.reference_arithmetic,
                             quantize, res.diagnostics);

  for (Index k = 0; k < n_quant; ++k) s.g_idx(perm[k]) = static_cast<int>(grouped ? k / gs : 0);
  s.fp_columns.resize(n_out);
  s.fp_values.resize(rows, n_out);
  for (Index k = 0; k < n_out; ++k) {
    s.g_idx(perm[n_quant + k]) = -1;
    s.fp_columns(k) = perm[n_quant + k];
    s.fp_values.col(k) = wp.col(n_quant + k);
  }
  res.Q = dequantize(s, options.kernel);
  return res;
}

}  // namespace detail

/// The same with H given as an rvalue matrix of the weights' scalar type (for example
/// `std::move(h)` or `acc.hessian_as<float>()`): H is consumed, its storage becomes the
/// working copy, which saves one cols × cols matrix at LLM scale. The overload above
/// converts (copies) H and calls this one.
template <class DW>
QuantResult<typename DW::Scalar> owq(
    const Eigen::MatrixBase<DW>& W,
    Eigen::Matrix<typename DW::Scalar, Eigen::Dynamic, Eigen::Dynamic>&& H,
    const OwqOptions& options = {}) {
  const char* fn = "q2n::owq";
  detail::check_bits(options.bits, fn);
  detail::check_groupsize(options.groupsize, W.cols(), fn);
  detail::check_second_order(W, H, options.percdamp, options.blocksize, options.max_damping_retries,
                             fn);
  return detail::owq_impl<typename DW::Scalar>(W.derived(), std::move(H), options);
}

/// OWQ quantization of W with Hessian H.
/// \param W rows × cols weights, finite
/// \param H cols × cols Hessian, finite, PSD, not all zero
/// \param options see OwqOptions (n_out = outlier_columns, or from target_bits)
/// \return Q (kept columns = their compensated full-precision values) and storage with
///         perm (quantized columns first, kept last), fp_columns, fp_values, g_idx (−1 for
///         kept columns)
template <class DW, class DH>
QuantResult<typename DW::Scalar> owq(const Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DH>& H,
                                     const OwqOptions& options = {}) {
  static_assert(!Eigen::NumTraits<typename DH::Scalar>::IsInteger,
                "q2n::owq: H must be a floating-point matrix");
  using Matrix = Eigen::Matrix<typename DW::Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  return owq(W, Matrix(H.template cast<typename DW::Scalar>()), options);
}

}  // namespace q2n
