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
/// auto res = q2n::gptq(W, acc.hessian_as<float>(), {.bits = 4, .groupsize = 128});
/// // res.Q (original column order), res.storage.codes / scales / zeros / g_idx / perm,
/// // res.diagnostics.loss / damping / retries
/// \endcode
///
/// \note For float inputs all arithmetic is float (like the float32 reference), so the codes
/// match the reference except where a value sits at a rounding boundary. H may be given in any
/// floating type; it is converted to the weights' type. H must be symmetric (one triangle is
/// read).

#include <Eigen/Core>
#include <algorithm>
#include <numeric>
#include <q2n/detail/gptq_sweep.hpp>
#include <q2n/detail/hessian_inverse.hpp>
#include <q2n/detail/quant_checks.hpp>
#include <q2n/detail/uniform_fit.hpp>
#include <q2n/detail/uniform_kernels.hpp>
#include <q2n/quantizers/kernel_path.hpp>
#include <q2n/quantizers/result.hpp>
#include <utility>
#include <vector>

namespace q2n {

/// Settings of gptq().
struct GptqOptions {
  int bits = 4;                  ///< 2..8
  Eigen::Index groupsize = -1;   ///< −1: one group per row, else a divisor of cols
  bool sym = false;              ///< symmetric grid
  bool mse = false;              ///< MSE grid search when fitting (norm 2.4, 80 steps of 1%)
  bool act_order = false;        ///< process columns by diag(H) descending
  bool static_groups = false;    ///< fit all groups up front on the unpermuted W
  double percdamp = 0.01;        ///< damping relative to mean(diag H)
  Eigen::Index blocksize = 128;  ///< lazy-update block width
  /// Cholesky retries: the relative damping is multiplied by 10 per retry (from 1e-6 when
  /// percdamp = 0), so the default reaches 1e10 · mean(diag H), enough for any PSD H up to
  /// 10⁵ columns; beyond that NumericalError is thrown (H is then not PSD).
  int max_damping_retries = 12;
  /// Reproduce the reference's operation order (chol → inverse → chol for H⁻¹, one rank-1
  /// update per column inside a block): slower, rounds exactly like the float32 reference more
  /// often. The default uses a cheaper H⁻¹ factorization and blocked in-block updates.
  bool reference_arithmetic = false;
  KernelPath kernel = KernelPath::simd;
};

namespace detail {

inline UniformSpec uniform_spec(int bits, bool sym, bool mse, KernelPath kernel) {
  UniformSpec spec;
  spec.bits = bits;
  spec.sym = sym;
  spec.mse = mse;
  spec.kernel = kernel;
  return spec;
}

/// Zeroes the weights of dead columns (H_jj == 0) and sets H_jj = 1; returns their count.
template <class T>
Eigen::Index fix_dead_columns(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& W,
                              Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& H) {
  Eigen::Index dead = 0;
  for (Eigen::Index j = 0; j < H.cols(); ++j)
    if (H(j, j) == T(0)) {
      H(j, j) = T(1);
      W.col(j).setZero();
      ++dead;
    }
  return dead;
}

/// Stable order of indices by key descending.
template <class Key>
std::vector<int> order_descending(const Key& key, Eigen::Index n) {
  std::vector<int> idx(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return key(a) > key(b); });
  return idx;
}

template <class Scalar>
void init_uniform_storage(QuantStorage<Scalar>& s, QuantMethod method, Eigen::Index rows,
                          Eigen::Index cols, int bits, bool sym, Eigen::Index groupsize,
                          Eigen::Index groups) {
  s.method = method;
  s.rows = rows;
  s.cols = cols;
  s.bits = bits;
  s.sym = sym;
  s.groupsize = groupsize;
  s.codes = QuantStorage<Scalar>::Codes::Zero(rows, cols);
  s.scales.resize(rows, groups);
  s.zeros.resize(rows, groups);
  s.g_idx.resize(cols);
  s.perm.resize(cols);
  s.fp_columns.resize(0);
  s.fp_values.resize(rows, 0);
}

}  // namespace detail

namespace detail {

/// The algorithm on plain matrices (one instantiation per scalar type): w is W, h is H
/// converted to the weights' type; both are consumed.
template <class Scalar>
QuantResult<Scalar> gptq_impl(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> w,
                              Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> h,
                              const GptqOptions& options) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const char* fn = "q2n::gptq";
  const Index rows = w.rows(), cols = w.cols();
  const bool grouped = options.groupsize != -1;
  const Index gs = grouped ? options.groupsize : cols;
  const Index groups = cols / gs;
  const bool static_groups = grouped && options.static_groups;

  QuantResult<Scalar> res;
  auto& s = res.storage;
  detail::init_uniform_storage(s, QuantMethod::gptq, rows, cols, options.bits, options.sym,
                               options.groupsize, groups);
  detail::UniformFitter<Scalar> fitter(
      rows, detail::uniform_spec(options.bits, options.sym, options.mse, options.kernel));

  if (!grouped) fitter.fit(w.data(), rows, cols, s.scales.col(0).data(), s.zeros.col(0).data());
  res.diagnostics.dead_columns = detail::fix_dead_columns(w, h);
  if (static_groups)
    for (Index g = 0; g < groups; ++g)
      fitter.fit(w.col(g * gs).data(), rows, gs, s.scales.col(g).data(), s.zeros.col(g).data());

  std::vector<int> perm(static_cast<std::size_t>(cols));
  if (options.act_order) {
    perm = detail::order_descending([&](int j) { return h(j, j); }, cols);
  } else {
    std::iota(perm.begin(), perm.end(), 0);
  }
  for (Index k = 0; k < cols; ++k) s.perm(k) = perm[k];

  Matrix wp(rows, cols);
  for (Index k = 0; k < cols; ++k) wp.col(k) = w.col(perm[k]);
  w.resize(0, 0);

  const Matrix U = detail::damped_inverse_cholesky<Scalar>(
      std::move(h), perm, options.percdamp, options.max_damping_retries,
      options.reference_arithmetic, res.diagnostics, fn);

  const Scalar maxq = fitter.maxq();
  const KernelPath path = options.kernel;
  auto quantize = [&](Index k, const Matrix& Wk, const Scalar* col, Scalar* q) {
    Index g = 0;
    if (static_groups) {
      g = perm[k] / gs;
    } else if (grouped) {
      g = k / gs;
      if (k % gs == 0)
        fitter.fit(Wk.col(k).data(), rows, gs, s.scales.col(g).data(), s.zeros.col(g).data());
    }
    detail::quantize_span(col, s.scales.col(g).data(), s.zeros.col(g).data(), maxq, rows, q,
                          s.codes.col(perm[k]).data(), path);
  };
  detail::gptq_sweep<Scalar>(wp, U, cols, options.blocksize, options.reference_arithmetic, quantize,
                             res.diagnostics);

  for (Index k = 0; k < cols; ++k) {
    const Index j = perm[k];
    s.g_idx(j) = static_cast<int>(!grouped ? 0 : static_groups ? j / gs : k / gs);
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
QuantResult<typename DW::Scalar> gptq(
    const Eigen::MatrixBase<DW>& W,
    Eigen::Matrix<typename DW::Scalar, Eigen::Dynamic, Eigen::Dynamic>&& H,
    const GptqOptions& options = {}) {
  const char* fn = "q2n::gptq";
  detail::check_bits(options.bits, fn);
  detail::check_groupsize(options.groupsize, W.cols(), fn);
  detail::check_second_order(W, H, options.percdamp, options.blocksize, options.max_damping_retries,
                             fn);
  return detail::gptq_impl<typename DW::Scalar>(W.derived(), std::move(H), options);
}

/// GPTQ quantization of W with Hessian H.
/// \param W rows × cols weights (float or double, any storage order), finite
/// \param H cols × cols Hessian `(2/N) Σ x xᵀ` (any floating type), finite, symmetric, PSD,
///          not all zero; rank-deficient H is fine (damping)
/// \param options see GptqOptions
/// \return Q (original column order) and its storage; diagnostics.loss, .damping, .percdamp,
///         .retries, .dead_columns
/// \throws std::invalid_argument for bad options, shapes, non-finite or all-zero input
/// \throws NumericalError when no damping within the retry budget gives a factorization
template <class DW, class DH>
QuantResult<typename DW::Scalar> gptq(const Eigen::MatrixBase<DW>& W,
                                      const Eigen::MatrixBase<DH>& H,
                                      const GptqOptions& options = {}) {
  static_assert(!Eigen::NumTraits<typename DH::Scalar>::IsInteger,
                "q2n::gptq: H must be a floating-point matrix");
  using Matrix = Eigen::Matrix<typename DW::Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  return gptq(W, Matrix(H.template cast<typename DW::Scalar>()), options);
}

}  // namespace q2n
