#pragma once
/// \file detail/hessian_inverse.hpp
/// GPTQ's `U = chol(H⁻¹)` (upper) of the damped Hessian, with damping retries.
///
/// Route: with J the reversal permutation, factor `J H J = L Lᵀ` (one Cholesky), then
/// `H⁻¹ = (J L⁻ᵀ J)(J L⁻¹ J)`, and `U = J L⁻¹ J` is upper triangular with a positive diagonal,
/// i.e. exactly the upper Cholesky factor of H⁻¹. Cost n³/3 (Cholesky) + n³/3 (triangular
/// inverse), against n³/3 + 2n³/3 + n³/3 for the reference's chol → cholesky_inverse → chol.

#include <Eigen/Cholesky>
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <limits>
#include <q2n/detail/check.hpp>
#include <q2n/detail/diagnostics.hpp>
#include <q2n/detail/errors.hpp>
#include <q2n/detail/parallel.hpp>
#include <q2n/detail/stopwatch.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace q2n::detail {

/// In-place inverse of a lower-triangular matrix with a non-zero diagonal (upper part ignored
/// and left untouched). Recursive 2 × 2 blocking: inv([A 0; B C]) = [A⁻¹ 0; −C⁻¹ B A⁻¹ C⁻¹].
template <class T>
void invert_lower_in_place(Eigen::Ref<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>> L) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  const Index n = L.rows();
  constexpr Index kBase = 48;
  if (n <= kBase) {
    // Column by column from the right: X(j+1:, j) = −X(j+1:, j+1:) L(j+1:, j) / L(j, j).
    T buf[kBase];
    for (Index j = n - 1; j >= 0; --j) {
      const T inv = T(1) / L(j, j);
      L(j, j) = inv;
      const Index m = n - 1 - j;
      if (m > 0) {
        Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>> col(buf, m);
        col.noalias() =
            L.bottomRightCorner(m, m).template triangularView<Eigen::Lower>() * L.col(j).tail(m);
        L.col(j).tail(m) = -inv * col;
      }
    }
    return;
  }
  const Index n1 = n / 2, n2 = n - n1;
  invert_lower_in_place<T>(L.topLeftCorner(n1, n1));
  invert_lower_in_place<T>(L.bottomRightCorner(n2, n2));
  Matrix ba =
      L.bottomLeftCorner(n2, n1) * L.topLeftCorner(n1, n1).template triangularView<Eigen::Lower>();
  L.bottomLeftCorner(n2, n1).noalias() =
      -(L.bottomRightCorner(n2, n2).template triangularView<Eigen::Lower>() * ba);
}

/// Width of the blocks of the factorization and the inversion: deep enough for GEMM-speed
/// updates, narrow enough that the serial diagonal-block work stays a few percent.
inline constexpr Eigen::Index kFactorBlock = 256;
/// Height of the row panels the parallel updates are cut into.
inline constexpr Eigen::Index kFactorPanel = 256;
/// Smaller matrices are factored and inverted in one block (serially, in milliseconds).
inline constexpr Eigen::Index kBlockedFrom = 1024;

/// In-place lower Cholesky factor of the symmetric positive definite A (lower triangle read and
/// overwritten; the strictly upper part is scratch). Right-looking and blocked: each diagonal
/// block by Eigen's LLT, the panel below it by a triangular solve in row chunks, the trailing
/// matrix by GEMMs on column panels of its lower part. The chunks and panels depend on n only
/// and are dealt to the threads whole (Eigen serial inside), so the rounding does not depend on
/// the thread count. Returns false at a non-positive pivot.
template <class T>
bool cholesky_lower_in_place(Eigen::Ref<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>> A) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  const Index n = A.rows(), nb = n < kBlockedFrom ? n : kFactorBlock, w = kFactorPanel;
  for (Index k = 0; k < n; k += nb) {
    const Index b = std::min(nb, n - k), m = n - k - b;
    Eigen::Ref<Matrix> A11 = A.block(k, k, b, b);
    Eigen::LLT<Eigen::Ref<Matrix>, Eigen::Lower> llt(A11);  // in place
    if (llt.info() != Eigen::Success) return false;
    if (m == 0) break;
    // A21 ← A21 L11⁻ᵀ.
    for_each_index((m + w - 1) / w, [&](Index c) {
      const Index r0 = k + b + c * w, h = std::min(w, n - r0);
      A11.transpose().template triangularView<Eigen::Upper>().template solveInPlace<Eigen::OnTheRight>(
          A.block(r0, k, h, b));
    });
    // A22 ← A22 − A21 A21ᵀ, lower part, by column panels (each from its diagonal down: the
    // first is the tallest).
    for_each_index((m + w - 1) / w, [&](Index c) {
      const Index c0 = k + b + c * w, cw = std::min(w, n - c0), h = n - c0;
      A.block(c0, c0, h, cw).noalias() -= A.block(c0, k, h, b) * A.block(c0, k, cw, b).transpose();
    });
  }
  return true;
}

/// In-place inverse of a lower-triangular matrix with a non-zero diagonal, blocked for large n
/// (the strictly upper part is set to zero). Block columns from the last to the first: with the
/// trailing X22 = L22⁻¹ already in place, X11 = L11⁻¹ and X21 = −X22 L21 X11, the product
/// computed by row panels that stop at the triangle's edge. Panels depend on n only: the
/// rounding does not depend on the thread count.
template <class T>
void invert_lower_blocked(Eigen::Ref<Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>> L) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  const Index n = L.rows(), nb = n < kBlockedFrom ? n : kFactorBlock, w = kFactorPanel;
  L.template triangularView<Eigen::StrictlyUpper>().setZero();
  const Index blocks = (n + nb - 1) / nb;
  for (Index kb = blocks - 1; kb >= 0; --kb) {
    const Index k = kb * nb, b = std::min(nb, n - k), m = n - k - b;
    invert_lower_in_place<T>(L.block(k, k, b, b));
    if (m == 0) continue;
    const Matrix X11 = L.block(k, k, b, b);
    const Matrix L21 = L.block(k + b, k, m, b);
    const Index panels = (m + w - 1) / w;
    for_each_index(panels, [&](Index p) {  // the lowest panel, the longest product, first
      const Index i0 = (panels - 1 - p) * w, h = std::min(w, m - i0), i1 = i0 + h;
      const Matrix t = L.block(k + b + i0, k + b, h, i1) * L21.topRows(i1);
      L.block(k + b + i0, k, h, b).noalias() = -(t * X11);  // X11's upper part is 0
    });
  }
}

/// A ← J A J (J the reversal permutation) in one pass shared among the threads by column
/// panels; returns whether every entry is finite.
template <class T>
bool reverse_in_place_all_finite(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& A) {
  using Index = Eigen::Index;
  const Index n = A.rows(), half = (n + 1) / 2, panels = (half + kFactorPanel - 1) / kFactorPanel;
  std::vector<char> finite(static_cast<std::size_t>(panels), 1);
  for_each_index(panels, [&](Index p) {
    bool ok = true;
    for (Index j = p * kFactorPanel; j < std::min(half, (p + 1) * kFactorPanel); ++j) {
      auto left = A.col(j), right = A.col(n - 1 - j);
      if (j == n - 1 - j) {
        left.reverseInPlace();
      } else {
        left.swap(right);
        left.reverseInPlace();
        right.reverseInPlace();
      }
      ok = ok && left.allFinite() && right.allFinite();
    }
    finite[static_cast<std::size_t>(p)] = ok;
  });
  return std::all_of(finite.begin(), finite.end(), [](char f) { return f != 0; });
}

/// Computes U for the Hessian H (dead columns already fixed) taken in the column order perm
/// (processing position k ↔ original column perm[k]). H is consumed (released on return);
/// diag receives percdamp, damping, retries and seconds.factorization.
///
/// Damping schedule: first `percdamp · mean(diag H)`; after a failure the relative damping is
/// multiplied by 10 (starting from 1e-6 when percdamp = 0), at most max_retries times. A try
/// fails when Eigen's LLT meets a non-positive pivot, when a pivot L_jj² falls below
/// ε · (H_jj + damping) (the column is numerically dependent on the earlier ones: its value is
/// rounding noise), or when U is not finite.
///
/// reference_route = true computes U as the reference does (chol, inverse from the factor,
/// chol of the inverse: 4n³/3 flops instead of 2n³/3), which reproduces its rounding more
/// closely.
/// \throws NumericalError when every try failed
template <class T, class Perm>
Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> damped_inverse_cholesky(
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>&& hessian, const Perm& perm, double percdamp,
    int max_retries, bool reference_route, QuantDiagnostics& diag, const char* fn) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  const auto start = Clock::now();
  const Matrix H = std::move(hessian);  // consumed: released on return
  const Index n = H.rows();
  double mean = 0;
  for (Index j = 0; j < n; ++j) mean += static_cast<double>(H(j, j));
  mean /= static_cast<double>(n);

  // Fast route: reversed, permuted copy A(a, b) = H(perm[n−1−a], perm[n−1−b]) = (J Hp J)(a, b).
  // Reference route: the permuted copy Hp itself. Only the lower triangle is read. The copy is
  // rebuilt from H on every attempt (O(n²) against the factorization's O(n³)), so the peak is
  // H plus one n × n working matrix.
  double rel = percdamp, last = percdamp;
  const T eps = std::numeric_limits<T>::epsilon();
  Matrix A(n, n);
  for (int attempt = 0; attempt <= max_retries; ++attempt) {
    const T damp = static_cast<T>(rel * mean);
    // (Column panels, the widest triangle part first; a gather bound by memory latency, which
    // two threads nearly halve.)
    for_each_index((n + kFactorPanel - 1) / kFactorPanel, [&](Index p) {
      for (Index b = p * kFactorPanel; b < std::min(n, (p + 1) * kFactorPanel); ++b) {
        const Index cb = reference_route ? perm[b] : perm[n - 1 - b];
        for (Index a = b; a < n; ++a) A(a, b) = H(reference_route ? perm[a] : perm[n - 1 - a], cb);
      }
    });
    A.diagonal().array() += damp;
    const Eigen::Matrix<T, Eigen::Dynamic, 1> d0 = A.diagonal();
    bool ok = reference_route ? Eigen::LLT<Eigen::Ref<Matrix>, Eigen::Lower>(A).info() == Eigen::Success
                              : cholesky_lower_in_place<T>(A);
    for (Index j = 0; ok && j < n; ++j) {
      const T p = A(j, j);
      ok = std::isfinite(p) && p * p > eps * d0(j);
    }
    if (ok && reference_route) {
      Matrix inv = Matrix::Identity(n, n);
      A.template triangularView<Eigen::Lower>().solveInPlace(inv);
      A.template triangularView<Eigen::Lower>().transpose().solveInPlace(inv);
      Eigen::LLT<Eigen::Ref<Matrix>, Eigen::Lower> llt2(inv);  // in place; U = Lᵀ
      ok = llt2.info() == Eigen::Success;
      if (ok) {
        A.setZero();
        A.template triangularView<Eigen::Upper>() =
            inv.template triangularView<Eigen::Lower>().transpose();
        ok = A.allFinite();
      }
    } else if (ok) {
      invert_lower_blocked<T>(A);
      ok = reverse_in_place_all_finite<T>(A);  // J L⁻¹ J: upper triangular
    }
    if (ok) {
      diag.percdamp = rel;
      diag.damping = static_cast<double>(damp);
      diag.retries = attempt;
      diag.seconds.factorization = seconds_since(start);
      return A;
    }
    last = rel;
    rel = rel > 0 ? rel * 10 : 1e-6;
  }
  std::ostringstream os;
  os << fn << ": the Cholesky factorization of the damped Hessian failed " << (max_retries + 1)
     << " times (last relative damping " << last
     << " of mean diag H); H is far from positive semi-definite — check how it was accumulated";
  throw NumericalError(os.str());
}

}  // namespace q2n::detail
