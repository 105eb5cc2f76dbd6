#pragma once
/// \file quantizers/pbllm.hpp
/// PB-LLM (Shang et al.): partially binarized weights with GPTQ error feedback.
///
/// 1. A per-row min-max asymmetric quantizer with `high_bits` is fitted once on the original W.
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
/// auto res = q2n::pbllm(W, H, {.low_frac = 0.9, .high_bits = 8});
/// // res.storage.salient (1 = kept at 8 bits), .signs, .bin_alpha, .bin_mean
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

/// How PB-LLM ranks weights for the salient (high-bit) set.
enum class Salience {
  hessian,    ///< W² / U_jj², U = upper Cholesky factor of the damped H⁻¹
  magnitude,  ///< |W|
};

/// Settings of pbllm().
struct PbllmOptions {
  double low_frac = 0.9;                  ///< share of binarized weights per group, in [0, 1]
  int high_bits = 8;                      ///< bits of the salient weights, 2..8
  Eigen::Index groupsize = -1;            ///< salience / binarization group; −1: all columns
  Salience salience = Salience::hessian;  ///< the paper's choice (the script defaults to magnitude)
  double percdamp = 0.01;
  Eigen::Index blocksize = 128;
  int max_damping_retries = 12;       ///< Cholesky retries, relative damping ×10 each
  bool reference_arithmetic = false;  ///< see GptqOptions::reference_arithmetic
  KernelPath kernel = KernelPath::simd;
};

/// Number of binarized entries in a group of n: min(n, ⌊n · low_frac⌋ + 1).
inline Eigen::Index pbllm_binarized_count(Eigen::Index n, double low_frac) {
  const auto k = static_cast<Eigen::Index>(std::floor(static_cast<double>(n) * low_frac)) + 1;
  return std::min(n, k);
}

namespace detail {

/// The algorithm on plain matrices (one instantiation per scalar type): w is W, h is H
/// converted to the weights' type; both are consumed.
template <class Scalar>
QuantResult<Scalar> pbllm_impl(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> w,
                               Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> h,
                               const PbllmOptions& options) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const char* fn = "q2n::pbllm";
  const Index rows = w.rows(), cols = w.cols();
  const Index bg = options.groupsize == -1 ? cols : options.groupsize;
  const Index bin_groups = cols / bg;

  QuantResult<Scalar> res;
  auto& s = res.storage;
  detail::init_uniform_storage(s, QuantMethod::pbllm, rows, cols, options.high_bits, false, -1, 1);
  s.g_idx.setZero();
  for (Index k = 0; k < cols; ++k) s.perm(k) = static_cast<int>(k);
  s.salient.resize(rows, cols);
  s.signs = Eigen::Matrix<std::int8_t, Eigen::Dynamic, Eigen::Dynamic>::Zero(rows, cols);
  s.bin_alpha.resize(rows, bin_groups);
  s.bin_mean.resize(rows, bin_groups);
  s.bin_groupsize = options.groupsize;

  detail::UniformFitter<Scalar> high(
      rows, detail::uniform_spec(options.high_bits, false, false, options.kernel));
  high.fit(w.data(), rows, cols, s.scales.col(0).data(), s.zeros.col(0).data());
  res.diagnostics.dead_columns = detail::fix_dead_columns(w, h);

  std::vector<int> perm(static_cast<std::size_t>(cols));
  std::iota(perm.begin(), perm.end(), 0);
  const Matrix U = detail::damped_inverse_cholesky<Scalar>(
      std::move(h), perm, options.percdamp, options.max_damping_retries,
      options.reference_arithmetic, res.diagnostics, fn);

  // Salient mask and binarizer parameters, per group, from the (dead-fixed) original W.
  const Index n = rows * bg;
  const Index n_bin = pbllm_binarized_count(n, options.low_frac);
  std::vector<std::pair<Scalar, Index>> order(static_cast<std::size_t>(n));
  for (Index g = 0; g < bin_groups; ++g) {
    for (Index c = 0; c < bg; ++c) {
      const Index j = g * bg + c;
      const Scalar ujj = U(j, j);
      for (Index r = 0; r < rows; ++r) {
        const Scalar x = w(r, j);
        const Scalar sal =
            options.salience == Salience::hessian ? x * x / (ujj * ujj) : std::abs(x);
        order[static_cast<std::size_t>(c * rows + r)] = {sal, c * rows + r};
      }
    }
    if (n_bin < n) std::nth_element(order.begin(), order.begin() + n_bin, order.end());
    s.salient.middleCols(g * bg, bg).setOnes();
    for (Index t = 0; t < n_bin; ++t) {
      const Index pos = order[static_cast<std::size_t>(t)].second;
      s.salient(pos % rows, g * bg + pos / rows) = 0;
    }
    for (Index r = 0; r < rows; ++r) {
      double sum = 0;
      for (Index c = 0; c < bg; ++c)
        if (!s.salient(r, g * bg + c)) sum += static_cast<double>(w(r, g * bg + c));
      const Scalar mean = static_cast<Scalar>(sum / static_cast<double>(bg));
      double dev = 0;
      for (Index c = 0; c < bg; ++c) {
        const Scalar v = s.salient(r, g * bg + c) ? Scalar(0) : w(r, g * bg + c);
        dev += std::abs(static_cast<double>(v - mean));
      }
      s.bin_mean(r, g) = mean;
      s.bin_alpha(r, g) = static_cast<Scalar>(dev / static_cast<double>(bg));
    }
  }

  const Scalar maxq = high.maxq();
  const KernelPath path = options.kernel;
  auto quantize = [&](Index k, const Matrix&, const Scalar* col, Scalar* q) {
    detail::quantize_span(col, s.scales.col(0).data(), s.zeros.col(0).data(), maxq, rows, q,
                          s.codes.col(k).data(), path);
    const Index g = k / bg;
    for (Index r = 0; r < rows; ++r) {
      if (s.salient(r, k)) continue;
      const Scalar mean = s.bin_mean(r, g);
      const Scalar d = col[r] - mean;
      const std::int8_t sg = static_cast<std::int8_t>((d > Scalar(0)) - (d < Scalar(0)));
      s.signs(r, k) = sg;
      s.codes(r, k) = 0;
      q[r] = static_cast<Scalar>(sg) * s.bin_alpha(r, g) + mean;
    }
  };
  detail::gptq_sweep<Scalar>(w, U, cols, options.blocksize, options.reference_arithmetic, quantize,
                             res.diagnostics);
  res.Q = dequantize(s, options.kernel);
  return res;
}

}  // namespace detail

/// The same with H given as an rvalue matrix of the weights' scalar type (for example
/// `std::move(h)` or `acc.hessian_as<float>()`): H is consumed, its storage becomes the
/// working copy, which saves one cols × cols matrix at LLM scale. The overload above
/// converts (copies) H and calls this one.
template <class DW>
QuantResult<typename DW::Scalar> pbllm(
    const Eigen::MatrixBase<DW>& W,
    Eigen::Matrix<typename DW::Scalar, Eigen::Dynamic, Eigen::Dynamic>&& H,
    const PbllmOptions& options = {}) {
  const char* fn = "q2n::pbllm";
  detail::check_bits(options.high_bits, fn, "high_bits");
  detail::check_groupsize(options.groupsize, W.cols(), fn);
  if (!(options.low_frac >= 0 && options.low_frac <= 1))
    detail::fail(fn, ": low_frac = ", options.low_frac, " must be in [0, 1] (default 0.9)");
  detail::check_second_order(W, H, options.percdamp, options.blocksize, options.max_damping_retries,
                             fn);
  return detail::pbllm_impl<typename DW::Scalar>(W.derived(), std::move(H), options);
}

/// PB-LLM quantization of W with Hessian H.
/// \param W rows × cols weights, finite
/// \param H cols × cols Hessian, finite, PSD, not all zero
/// \param options see PbllmOptions
/// \return Q and storage (method pbllm: codes / scales / zeros of the high-bit quantizer, one
///         group per row; salient mask, signs, bin_alpha, bin_mean per binarization group)
template <class DW, class DH>
QuantResult<typename DW::Scalar> pbllm(const Eigen::MatrixBase<DW>& W,
                                       const Eigen::MatrixBase<DH>& H,
                                       const PbllmOptions& options = {}) {
  static_assert(!Eigen::NumTraits<typename DH::Scalar>::IsInteger,
                "q2n::pbllm: H must be a floating-point matrix");
  using Matrix = Eigen::Matrix<typename DW::Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  return pbllm(W, Matrix(H.template cast<typename DW::Scalar>()), options);
}

}  // namespace q2n
