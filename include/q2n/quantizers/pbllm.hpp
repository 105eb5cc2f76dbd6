#pragma once
/// \file quantizers/pbllm.hpp
/// PB-LLM (Shang et al.): partially binarized weights with GPTQ error feedback.
///
/// 1. A per-row quantizer (`high`: min-max asymmetric 8-bit by default) is fitted once on the
///    original W.
/// 2. Dead columns are fixed as in GPTQ; `U = chol(H⁻¹)` upper of the damped Hessian.
/// 3. Per group of `groupsize` columns (the whole row when −1), over all rows × group columns,
///    salience is `W² / U_jj²` (Salience::hessian) or `|W|` (Salience::magnitude). The
///    `min(n, ⌊n · low_frac⌋ + 1)` least salient entries of the n in the group are binarized —
///    the reference thresholds at the ⌊n · low_frac⌋-th smallest value (0-based) and binarizes
///    everything at or below it; ties are broken here by position (column-major) so that the
///    count is exact. The other entries are salient and use the high-bit quantizer.
/// 4. XNOR binarizer per (row, group), fitted once on `v = W · mask` (salient entries count as
///    0, as in the reference): `mean = Σ v / g`, `alpha = Σ |v − mean| / g` over the group's g
///    columns; `x̂ = sign(x − mean) · alpha + mean` (sign(0) = 0).
/// 5. The GPTQ sweep with this fixed mask and these fixed quantizers.
///
/// \code
/// q2n::PbllmOptions o;
/// o.low_frac = 0.9;
/// o.high.bits = 8;
/// auto res = q2n::pbllm(W, H, o);
/// // res.storage.binarized: salient (1 = kept at 8 bits), signs, alpha, mean
/// // res.storage.uniform: the high-bit grid of the salient entries
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

/// How PB-LLM ranks weights for the salient (high-bit) set.
enum class Salience {
  hessian,    ///< W² / U_jj², U = upper Cholesky factor of the damped H⁻¹
  magnitude,  ///< |W|
};

/// Settings of pbllm().
struct PbllmOptions {
  double low_frac = 0.9;                  ///< share of binarized weights per group, in [0, 1]
  UniformOptions high = {8};              ///< grid of the salient weights (8-bit min-max)
  Eigen::Index groupsize = -1;            ///< salience / binarization group; −1: all columns
  Salience salience = Salience::hessian;  ///< the paper's choice (the script defaults to magnitude)
  DampingOptions damping;                 ///< percdamp, retries
  SweepOptions sweep;                     ///< blocksize, reference arithmetic
};

/// Number of binarized entries in a group of n: min(n, ⌊n · low_frac⌋ + 1).
inline Eigen::Index pbllm_binarized_count(Eigen::Index n, double low_frac) {
  const auto k = static_cast<Eigen::Index>(std::floor(static_cast<double>(n) * low_frac)) + 1;
  return std::min(n, k);
}

namespace detail {

/// The algorithm on plain matrices (one instantiation per scalar type); w and h are consumed.
template <class Scalar>
QuantResult<Scalar> pbllm_impl(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> w,
                               Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> h,
                               const PbllmOptions& options) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const char* fn = "q2n::pbllm";
  check_grid(options.high, fn, "high.bits");
  check_groupsize(options.groupsize, w.cols(), fn);
  if (!(options.low_frac >= 0 && options.low_frac <= 1))
    fail(fn, ": low_frac = ", options.low_frac, " must be in [0, 1] (default 0.9)");
  check_second_order(w, h, fn);
  check_second_order_options(options.damping, options.sweep, fn);
  const Index rows = w.rows(), cols = w.cols();
  const Index bg = options.groupsize == -1 ? cols : options.groupsize;
  const Index bin_groups = cols / bg;

  QuantDiagnostics diag;
  UniformGrid<Scalar> u = empty_grid<Scalar>(options.high, rows, cols, 1);
  BinarizedEntries<Scalar> b;
  b.salient.resize(rows, cols);
  b.signs = Eigen::Matrix<std::int8_t, Eigen::Dynamic, Eigen::Dynamic>::Zero(rows, cols);
  b.alpha.resize(rows, bin_groups);
  b.mean.resize(rows, bin_groups);
  b.groupsize = bg;

  UniformFitter<Scalar> high(rows, to_spec(options.high), fn);
  high.fit(w.data(), rows, cols, u.scales.col(0).data(), u.zeros.col(0).data());
  const std::vector<int> order = identity_order(cols);
  diag.dead_columns = fix_dead_columns(w, h, order);
  const Matrix U = damped_inverse_cholesky<Scalar>(std::move(h), order, options.damping.percdamp,
                                                   options.damping.max_retries,
                                                   options.sweep.reference_arithmetic, diag, fn);

  // Salient mask and binarizer parameters, per group, from the (dead-fixed) original W.
  const Index n = rows * bg;
  const Index n_bin = pbllm_binarized_count(n, options.low_frac);
  std::vector<std::pair<Scalar, Index>> rank(static_cast<std::size_t>(n));
  for (Index g = 0; g < bin_groups; ++g) {
    for (Index c = 0; c < bg; ++c) {
      const Index j = g * bg + c;
      const Scalar ujj = U(j, j);
      for (Index r = 0; r < rows; ++r) {
        const Scalar x = w(r, j);
        const Scalar sal =
            options.salience == Salience::hessian ? x * x / (ujj * ujj) : std::abs(x);
        rank[static_cast<std::size_t>(c * rows + r)] = {sal, c * rows + r};
      }
    }
    if (n_bin < n) std::nth_element(rank.begin(), rank.begin() + n_bin, rank.end());
    b.salient.middleCols(g * bg, bg).setOnes();
    for (Index t = 0; t < n_bin; ++t) {
      const Index pos = rank[static_cast<std::size_t>(t)].second;
      b.salient(pos % rows, g * bg + pos / rows) = 0;
    }
    for (Index r = 0; r < rows; ++r) {
      double sum = 0;
      for (Index c = 0; c < bg; ++c)
        if (!b.salient(r, g * bg + c)) sum += static_cast<double>(w(r, g * bg + c));
      const Scalar mean = static_cast<Scalar>(sum / static_cast<double>(bg));
      double dev = 0;
      for (Index c = 0; c < bg; ++c) {
        const Scalar v = b.salient(r, g * bg + c) ? Scalar(0) : w(r, g * bg + c);
        dev += std::abs(static_cast<double>(v - mean));
      }
      b.mean(r, g) = mean;
      b.alpha(r, g) = static_cast<Scalar>(dev / static_cast<double>(bg));
    }
  }

  const Scalar maxq = high.maxq();
  const KernelPath path = kernel_path();
  auto quantize = [&](Index k, const Matrix&, const Scalar* col, Scalar* q) {
    quantize_span(col, u.scales.col(0).data(), u.zeros.col(0).data(), maxq, rows, q,
                  u.codes.col(k).data(), path);
    const Index g = k / bg;
    for (Index r = 0; r < rows; ++r) {
      if (b.salient(r, k)) continue;
      const Scalar mean = b.mean(r, g);
      const Scalar d = col[r] - mean;
      const auto sg = static_cast<std::int8_t>((d > Scalar(0)) - (d < Scalar(0)));
      b.signs(r, k) = sg;
      u.codes(r, k) = 0;
      q[r] = static_cast<Scalar>(sg) * b.alpha(r, g) + mean;
    }
  };
  gptq_sweep<Scalar>(w, U, cols, options.sweep.blocksize, options.sweep.reference_arithmetic,
                     quantize, diag);
  return StorageBuilder<Scalar>(rows, cols, "pbllm")
      .uniform(std::move(u))
      .binarized(std::move(b))
      .result(diag);
}

}  // namespace detail

/// PB-LLM quantization of W with Hessian H.
/// \param W rows × cols weights, finite
/// \param H cols × cols Hessian, finite, PSD, not all zero; an rvalue matrix of the weights'
///          type is consumed (see gptq())
/// \param options see PbllmOptions
/// \return Q and storage (method "pbllm": the high-bit uniform grid, one group per row, and
///         the binarized entries with their salient mask, signs, alpha and mean per group)
template <class DW, class DH>
QuantResult<typename DW::Scalar> pbllm(const Eigen::MatrixBase<DW>& W, DH&& H,
                                       const PbllmOptions& options = {}) {
  using Scalar = typename DW::Scalar;
  detail::static_check_second_order<Scalar, DH>();
  return detail::pbllm_impl<Scalar>(W, detail::take_hessian<Scalar>(std::forward<DH>(H)), options);
}

}  // namespace q2n
