#pragma once
/// \file quantizers/leanquant.hpp
/// LeanQuant (Zhang et al., arXiv 2407.10032): GPTQ on a non-uniform grid per row, the grid
/// fitted by k-means weighted with each column's loss-error sensitivity.
///
/// Steps, as in the released reference's non-uniform path:
/// 1. dead columns (H_jj = 0): H_jj = 1 and W[:, j] = 0; act-order optionally orders the
///    columns by diag(H) descending;
/// 2. `U = chol(H⁻¹)` (upper) of the damped H, exactly as GPTQ (the reference command damps
///    with percdamp 0.1);
/// 3. each row's grid: 2^bits centroids of a 1-D Lloyd k-means of the row's weights, column j
///    weighted by `U_jj^(−exponent)` (`U_jj² = [(H_FF)⁻¹]_jj`, F the columns from j on: the OBQ
///    loss-error denominator), started at linspace(min, max), at most max_iter steps, stopped
///    at `tol · var(row)` of summed squared centroid shift or an unchanged assignment;
/// 4. the GPTQ sweep, each weight rounded to its row's nearest grid value (ties to the lower
///    value) with the usual error feedback.
///
/// The storage is a Codebook (codes and rows × 2^bits values) with the processing order perm;
/// Q2N's fold scales each row's values, which reproduces diag(m)·Q exactly and costs no memory.
///
/// Where this differs from the reference code: the k-means starts at linspace at every width
/// (scikit-learn's k-means++ at 4 bits and more depends on its random state and cannot be
/// matched); an empty cluster keeps its centroid (scikit-learn moves it to the farthest point);
/// the Lloyd steps are exact but O(K log n) each (detail/kmeans1d.hpp). The reference's Q2N
/// step applies P in act-order coordinates to GPTQ's working W; q2n::refine uses the original
/// W in the original column order.
///
/// \code
/// q2n::LeanQuantOptions o;
/// o.bits = 2;
/// o.act_order = true;
/// o.damping.percdamp = 0.1;
/// auto res = q2n::leanquant(W, H, o);          // res.storage.codebook: codes + per-row grid
/// auto ref = q2n::refine(res, W, q2n::NullSpace<float>::compute(abar));
/// \endcode

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <q2n/detail/gptq_sweep.hpp>
#include <q2n/detail/hessian_inverse.hpp>
#include <q2n/detail/kmeans1d.hpp>
#include <q2n/detail/quant_checks.hpp>
#include <q2n/detail/second_order.hpp>
#include <q2n/detail/stopwatch.hpp>
#include <q2n/quantizers/options.hpp>
#include <q2n/storage.hpp>
#include <utility>
#include <vector>

namespace q2n {

/// Settings of leanquant() and gptq_codebook().
struct LeanQuantOptions {
  int bits = 4;              ///< 2..8: 2^bits grid values per row
  double exponent = 4;       ///< p ≥ 0: k-means weight of column j is U_jj^(−p)
  int max_iter = 100;        ///< Lloyd steps at most (0: the grid is linspace(min, max))
  double tol = 1e-6;         ///< stop when Σ (centroid shift)² ≤ tol · var(row)
  bool act_order = false;    ///< process columns by diag(H) descending
  DampingOptions damping;    ///< percdamp, retries
  SweepOptions sweep;        ///< blocksize, reference arithmetic
};

namespace detail {

inline void check_leanquant_options(const LeanQuantOptions& o, const char* fn) {
  check_bits(o.bits, fn);
  if (!(std::isfinite(o.exponent) && o.exponent >= 0))
    fail(fn, ": exponent = ", o.exponent, " must be finite and >= 0 (the reference uses 4)");
  if (o.max_iter < 0) fail(fn, ": max_iter = ", o.max_iter, " must be >= 0");
  if (!(std::isfinite(o.tol) && o.tol >= 0)) fail(fn, ": tol = ", o.tol, " must be finite and >= 0");
  check_second_order_options(o.damping, o.sweep, fn);
}

/// Row r's grid by weighted k-means: centroids of wp.row(r) with column weights omega.
template <class Scalar>
void fit_codebook(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& wp,
                  const std::vector<double>& omega, const LeanQuantOptions& o,
                  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& values) {
  using Index = Eigen::Index;
  const Index rows = wp.rows(), cols = wp.cols();
  const int K = 1 << o.bits;
  values.resize(rows, K);
  // Rows by blocks of 16, copied out a column at a time: a row of the column-major wp read
  // alone would cost a cache line per value. The copies' rows are 16 entries more than a row
  // apart: at a power-of-two distance, as with 4096 columns, the 16 stores of each column
  // would all fall in one set of the L1 cache. Blocks go to whichever thread is free, since
  // the rows' k-means take unequal times. (Both: 4096², two threads, 0.093-0.097 ->
  // 0.086-0.093 s.)
  constexpr Index kBlock = 16;
  const Index blocks = (rows + kBlock - 1) / kBlock, stride = cols + 16;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic)
#endif
  for (Index b = 0; b < blocks; ++b) {
    const Index r0 = b * kBlock, height = std::min(kBlock, rows - r0);
    std::vector<Scalar> block(static_cast<std::size_t>(height * stride));  // row i at i · stride
    for (Index j = 0; j < cols; ++j)
      for (Index i = 0; i < height; ++i)
        block[static_cast<std::size_t>(i * stride + j)] = wp(r0 + i, j);
    for (Index i = 0; i < height; ++i) {
      const SortedPoints pts(block.data() + i * stride, omega.data(), cols);
      const KMeans1d km = kmeans1d(pts, K, o.max_iter, o.tol);
      for (int k = 0; k < K; ++k)
        values(r0 + i, k) = static_cast<Scalar>(km.centroids[static_cast<std::size_t>(k)]);
    }
  }
}

/// Both entry points on plain matrices; `given` (rows × 2^bits) replaces the k-means grid.
template <class Scalar>
QuantResult<Scalar> leanquant_impl(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> w,
                                   Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> h,
                                   const LeanQuantOptions& o,
                                   const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>* given,
                                   const char* fn) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  check_leanquant_options(o, fn);
  check_second_order(w, h, fn);
  const Index rows = w.rows(), cols = w.cols();
  const Index K = Index(1) << o.bits;
  if (given) {
    require_shape(*given, rows, K, fn, "grid (rows x 2^bits)");
    require_finite(*given, fn, "grid");
  }

  QuantDiagnostics diag;
  diag.dead_columns = fix_dead_columns(w, h, identity_order(cols));
  const std::vector<int> perm =
      o.act_order ? order_descending([&](int j) { return h(j, j); }, cols) : identity_order(cols);
  Matrix wp = permute_columns(w, perm);
  w.resize(0, 0);
  const Matrix U = damped_inverse_cholesky<Scalar>(std::move(h), perm, o.damping.percdamp,
                                                   o.damping.max_retries,
                                                   o.sweep.reference_arithmetic, diag, fn);

  Codebook<Scalar> book;
  book.bits = o.bits;
  book.codes = CodeMatrix::Zero(rows, cols);
  const auto grid_start = Clock::now();
  if (given) {
    book.values = *given;
  } else {
    // ω_j = (U_jj / min U)^(−p) ≤ 1: the largest weight is 1, so no weight overflows, and
    // scaling H by a power of two leaves every ω bit for bit the same.
    double dmin = static_cast<double>(U(0, 0));
    for (Index k = 1; k < cols; ++k) dmin = std::min(dmin, static_cast<double>(U(k, k)));
    std::vector<double> omega(static_cast<std::size_t>(cols));
    for (Index k = 0; k < cols; ++k)
      omega[static_cast<std::size_t>(k)] = std::pow(static_cast<double>(U(k, k)) / dmin, -o.exponent);
    fit_codebook(wp, omega, o, book.values);
  }
  diag.seconds.grid_fit = seconds_since(grid_start);

  // Each row's grid sorted, stored by rank (column k: every row's k-th smallest value), with
  // the code of each rank; equal values (−0 and +0 among them) take the bits and the code of
  // their first copy, the one with the lowest code.
  Matrix ranked(rows, K);
  Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic> code_of(rows, K);
  {
    std::vector<int> idx(static_cast<std::size_t>(K));
    for (Index r = 0; r < rows; ++r) {
      for (Index k = 0; k < K; ++k) idx[static_cast<std::size_t>(k)] = static_cast<int>(k);
      std::stable_sort(idx.begin(), idx.end(),
                       [&](int a, int b) { return book.values(r, a) < book.values(r, b); });
      for (Index k = 0; k < K; ++k) {
        const Scalar v = book.values(r, idx[static_cast<std::size_t>(k)]);
        const bool repeat = k > 0 && v == ranked(r, k - 1);
        ranked(r, k) = repeat ? ranked(r, k - 1) : v;
        code_of(r, k) = repeat ? code_of(r, k - 1)
                               : static_cast<std::uint8_t>(idx[static_cast<std::size_t>(k)]);
      }
    }
  }
  // The nearest value of x's row, ties to the lower: its rank is the number of neighbouring
  // ranks (a, b) with x − a > b − x, a count that is monotone in the rank (so exact), and
  // vectorizes over the rows where a binary search per entry does not.
  std::vector<int> rank(static_cast<std::size_t>(rows));
  auto quantize = [&](Index k, const Matrix&, const Scalar* col, Scalar* q) {
    const Index j = perm[static_cast<std::size_t>(k)];
    std::fill(rank.begin(), rank.end(), 0);
    for (Index g = 1; g < K; ++g) {
      const Scalar* a = ranked.col(g - 1).data();
      const Scalar* b = ranked.col(g).data();
      for (Index r = 0; r < rows; ++r)
        rank[static_cast<std::size_t>(r)] += col[r] - a[r] > b[r] - col[r] ? 1 : 0;
    }
    for (Index r = 0; r < rows; ++r) {
      const Index i = rank[static_cast<std::size_t>(r)];
      q[r] = ranked(r, i);
      book.codes(r, j) = code_of(r, i);
    }
  };
  gptq_sweep<Scalar>(wp, U, cols, o.sweep.blocksize, o.sweep.reference_arithmetic, quantize, diag);
  return StorageBuilder<Scalar>(rows, cols, given ? "gptq-codebook" : "leanquant")
      .codebook(std::move(book))
      .perm(Eigen::Map<const Eigen::VectorXi>(perm.data(), cols))
      .result(diag);
}

}  // namespace detail

/// LeanQuant quantization of W with Hessian H.
/// \param W rows × cols weights (float or double, any storage order), finite
/// \param H cols × cols Hessian `(2/N) Σ x xᵀ` in any floating type, finite, symmetric (one
///          triangle is read), PSD, not all zero; an rvalue of the weights' type is consumed
/// \param options see LeanQuantOptions
/// \return Q (original column order) and its storage (method "leanquant": a codebook of
///         2^bits values per row, and the processing order perm); diagnostics.loss, .damping,
///         .retries, .dead_columns, .seconds (grid_fit: the k-means)
/// \throws std::invalid_argument for bad options, shapes, non-finite or all-zero input
/// \throws NumericalError when no damping within the retry budget gives a factorization
template <class DW, class DH>
QuantResult<typename DW::Scalar> leanquant(const Eigen::MatrixBase<DW>& W, DH&& H,
                                           const LeanQuantOptions& options = {}) {
  using Scalar = typename DW::Scalar;
  detail::static_check_second_order<Scalar, DH>();
  return detail::leanquant_impl<Scalar>(W, detail::take_hessian<Scalar>(std::forward<DH>(H)),
                                        options, nullptr, "q2n::leanquant");
}

/// GPTQ's sweep with each weight rounded to the nearest of its row's given grid values: what
/// leanquant() runs after fitting its grid (options.exponent, max_iter and tol are unused).
/// With the grid of GPTQ's per-row affine quantizer (`s_r · (q − z_r)`, q = 0..2^bits − 1)
/// this is GPTQ with groupsize −1, except where a weight lies exactly halfway between two
/// grid values (GPTQ rounds half away from zero, this rounds to the lower value).
/// \param grid rows × 2^options.bits values, finite, in any order (the code of a value is its
///             column in grid)
/// \return Q and its storage (method "gptq-codebook"); see leanquant()
template <class DW, class DH, class DG>
QuantResult<typename DW::Scalar> gptq_codebook(const Eigen::MatrixBase<DW>& W, DH&& H,
                                               const Eigen::MatrixBase<DG>& grid,
                                               const LeanQuantOptions& options = {}) {
  using Scalar = typename DW::Scalar;
  detail::static_check_second_order<Scalar, DH>();
  const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> g = grid.template cast<Scalar>();
  return detail::leanquant_impl<Scalar>(W, detail::take_hessian<Scalar>(std::forward<DH>(H)),
                                        options, &g, "q2n::gptq_codebook");
}

}  // namespace q2n
