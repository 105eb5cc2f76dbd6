#pragma once
/// \file detail/lapack_eigen.hpp
/// Dense symmetric eigensolver through LAPACKE, in stages: the spectrum first, then only the
/// leading eigenvectors the cut keeps. Compiled only with Q2N_WITH_LAPACKE (link q2n::lapack).
///
/// sytrd reduces the matrix to tridiagonal form (half of it in level-3 BLAS), sterf finds every
/// eigenvalue of the tridiagonal matrix in O(n²), stemr (MRRR) its k leading eigenvectors in
/// O(n·k), and ormtr maps them back with blocked Householder products (2·n²·k). MRRR can fail
/// (LAPACK's info 2x); then stedc (divide and conquer, O(n³) at worst, always converging in
/// practice) computes every eigenvector of the tridiagonal matrix and the k leading ones are
/// kept. Eigen's
/// SelfAdjointEigenSolver computes all n vectors by rotations instead: 4 to 8 times slower at
/// n = 2048 with k in the hundreds.
///
/// The rounding follows the BLAS's threading: with a multithreaded BLAS the bits can change
/// with its thread count (for OpenBLAS, OPENBLAS_NUM_THREADS).

#include <q2n/detail/errors.hpp>

#include <Eigen/Core>

#include <lapacke.h>

#include <algorithm>
#include <string>
#include <type_traits>
#include <vector>

namespace q2n::detail {

template <class Work>
class LapackEigen {
  static_assert(std::is_same_v<Work, float> || std::is_same_v<Work, double>,
                "q2n::detail::LapackEigen: float or double");

 public:
  using Matrix = Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic>;
  using Vector = Eigen::Matrix<Work, Eigen::Dynamic, 1>;

  /// Reduces the lower triangle of `m` (n × n, overwritten by the reduction) and finds its
  /// spectrum. `what` names the matrix in error messages.
  LapackEigen(Matrix&& m, std::string what) : a_(std::move(m)), what_(std::move(what)) {
    const lapack_int n = static_cast<lapack_int>(a_.rows());
    d_.resize(n);
    e_.setZero(n);  // stemr wants n entries: the last one is workspace
    tau_.resize(std::max<lapack_int>(n - 1, 1));
    check(sytrd(n), "sytrd");
    Vector w = d_, e = e_.head(std::max<lapack_int>(n - 1, 0));
    check(sterf(n, w.data(), e.data()), "sterf");
    values_ = w.template cast<double>().reverse();
  }

  /// Every eigenvalue, descending.
  const Eigen::VectorXd& descending() const { return values_; }

  /// LAPACK's info from stemr when leading() fell back to stedc, else 0.
  lapack_int mrrr_info() const { return mrrr_info_; }

  /// The k leading eigenvectors (n × k), in descending eigenvalue order. `divide_and_conquer`
  /// skips MRRR and takes the fallback (for tests).
  Matrix leading(Eigen::Index k, bool divide_and_conquer = false) {
    const lapack_int n = static_cast<lapack_int>(a_.rows());
    const lapack_int kk = static_cast<lapack_int>(k);
    if (k == 0) return Matrix(n, 0);
    // The tridiagonal stage runs in double whatever Work is: it costs O(n·k), and single
    // precision MRRR (sstemr) fails on most Wishart-like spectra from n = 512 on (LAPACK
    // 3.11 / OpenBLAS 0.3.21: info 22 for 5 of 6 matrices of 1024 and 2048).
    Eigen::VectorXd d = d_.template cast<double>(), e = e_.template cast<double>(), w(n);
    Eigen::MatrixXd zd(n, k);
    std::vector<lapack_int> support(2 * static_cast<std::size_t>(k));
    lapack_int found = 0;
    lapack_logical tryrac = 1;  // compute to high relative accuracy when the matrix allows it
    lapack_int info = -2000;  // (the requested fallback)
    if (!divide_and_conquer) {
      info = LAPACKE_dstemr(LAPACK_COL_MAJOR, 'V', 'I', n, d.data(), e.data(), 0, 0, n - kk + 1,
                            n, &found, w.data(), zd.data(), n, kk, support.data(), &tryrac);
      if (info == 0 && found != kk) info = -1000;  // (cannot happen)
    }
    if (info != 0) {
      if (!divide_and_conquer) mrrr_info_ = info;
      d = d_.template cast<double>();
      e = e_.template cast<double>();
      Eigen::MatrixXd all(n, n);
      check(LAPACKE_dstedc(LAPACK_COL_MAJOR, 'I', n, d.data(), e.data(), all.data(), n), "stedc");
      zd = all.rightCols(k);
    }
    Matrix z = zd.template cast<Work>();
    if constexpr (std::is_same_v<Work, float>)
      info = LAPACKE_sormtr(LAPACK_COL_MAJOR, 'L', 'L', 'N', n, kk, a_.data(), n, tau_.data(),
                            z.data(), n);
    else
      info = LAPACKE_dormtr(LAPACK_COL_MAJOR, 'L', 'L', 'N', n, kk, a_.data(), n, tau_.data(),
                            z.data(), n);
    check(info, "ormtr");
    return z.rowwise().reverse();  // stemr's order is ascending
  }

 private:
  lapack_int sytrd(lapack_int n) {
    if constexpr (std::is_same_v<Work, float>)
      return LAPACKE_ssytrd(LAPACK_COL_MAJOR, 'L', n, a_.data(), n, d_.data(), e_.data(),
                            tau_.data());
    else
      return LAPACKE_dsytrd(LAPACK_COL_MAJOR, 'L', n, a_.data(), n, d_.data(), e_.data(),
                            tau_.data());
  }
  static lapack_int sterf(lapack_int n, Work* d, Work* e) {
    if constexpr (std::is_same_v<Work, float>)
      return LAPACKE_ssterf(n, d, e);
    else
      return LAPACKE_dsterf(n, d, e);
  }
  void check(lapack_int info, const char* routine) const {
    if (info == 0) return;
    throw NumericalError("q2n: LAPACK " + std::string(routine) + " failed on " + what_ +
                         " (info = " + std::to_string(info) +
                         (info > 0 ? "): the eigensolver did not converge"
                                   : "): bad argument, a q2n defect"));
  }

  Matrix a_;                 // the Householder vectors of the reduction
  Vector d_, e_, tau_;       // tridiagonal diagonal, off-diagonal (+1 workspace), reflectors
  Eigen::VectorXd values_;   // descending
  std::string what_;
  lapack_int mrrr_info_ = 0;
};

}  // namespace q2n::detail
