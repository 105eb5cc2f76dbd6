#pragma once
/// \file detail/block_krylov.hpp
/// Leading eigenpairs of a symmetric positive semidefinite matrix by block Krylov iteration
/// with Rayleigh–Ritz, and a residual bound for every Ritz pair.

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/QR>

#include <algorithm>
#include <cstdint>
#include <random>

namespace q2n::detail {

template <class Scalar>
struct RitzPairs {
  Eigen::VectorXd values;                                      ///< descending
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> vectors;  ///< n × k, orthonormal
  Eigen::VectorXd residuals;  ///< ‖M z_j − θ_j z_j‖: an eigenvalue of M lies within it of θ_j
  /// (n / b)·Σ_c (z_jᵀ v_c)² over the b random start vectors v_c: the Gauss quadrature of
  /// their spectral measure (stochastic Lanczos quadrature), i.e. an estimate of how many of
  /// M's eigenvalues θ_j stands for; the weights sum to n.
  Eigen::VectorXd weights;
  bool ok = true;             ///< the small eigenproblem converged
};

/// The block Krylov iteration's start: an n × b block of Gaussian entries from `seed`,
/// orthonormalized (QR).
template <class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> krylov_start(Eigen::Index n, Eigen::Index b,
                                                                   std::uint32_t seed) {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  std::mt19937 gen(seed);
  std::normal_distribution<double> nd;
  Matrix v(n, b);
  for (Eigen::Index i = 0; i < v.size(); ++i) v.data()[i] = static_cast<Scalar>(nd(gen));
  Eigen::HouseholderQR<Matrix> qr(v);
  return qr.householderQ() * Matrix::Identity(n, b);
}

/// Rayleigh–Ritz on the block Krylov space span[V, MV, …, M^(blocks−1) V] of the random
/// n × block start V = krylov_start(n, block, seed), fully re-orthogonalized (two Gram–Schmidt
/// passes and a QR per block), so the result is deterministic for a given M, block and blocks.
/// M is given by its action: `apply(x, y)` sets y = M x for an n × b block x (y a block of
/// the same shape), so M can be an n × n matrix or a product never formed (Āᵀ(Ā x)).
template <class Scalar, class Apply>
RitzPairs<Scalar> block_krylov(Eigen::Index n, const Apply& apply, Eigen::Index block,
                               Eigen::Index blocks, std::uint32_t seed = 12345) {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const Eigen::Index width = std::min(n, block * blocks);
  Matrix basis(n, width), image(n, width);  // Q and M·Q
  basis.leftCols(std::min(block, width)) = krylov_start<Scalar>(n, std::min(block, width), seed);
  Eigen::Index filled = std::min(block, width);
  Eigen::Index start = 0;
  while (true) {
    const Eigen::Index b = filled - start;
    apply(basis.middleCols(start, b), image.middleCols(start, b));
    if (filled == width) break;
    const Eigen::Index next = std::min(b, width - filled);
    Matrix w = image.middleCols(start, next);
    for (int pass = 0; pass < 2; ++pass)
      w.noalias() -= basis.leftCols(filled) * (basis.leftCols(filled).transpose() * w);
    Eigen::HouseholderQR<Matrix> qr(w);
    basis.middleCols(filled, next) = qr.householderQ() * Matrix::Identity(n, next);
    // One more pass against the existing basis keeps the new block orthogonal in float.
    auto nb = basis.middleCols(filled, next);
    nb -= basis.leftCols(filled) * (basis.leftCols(filled).transpose() * nb);
    nb.colwise().normalize();
    start = filled;
    filled += next;
  }
  Matrix t = basis.transpose() * image;
  t = (t + t.transpose()).eval() * Scalar(0.5);
  Eigen::SelfAdjointEigenSolver<Matrix> es(t);
  RitzPairs<Scalar> out;
  if (es.info() != Eigen::Success) {
    out.ok = false;
    return out;
  }
  const Matrix y = es.eigenvectors().rowwise().reverse();
  out.values = es.eigenvalues().reverse().template cast<double>();
  // The start block is the basis' first columns, so its overlaps are y's first rows.
  const Eigen::Index b0 = std::min(block, width);
  out.weights = y.topRows(b0).template cast<double>().colwise().squaredNorm().transpose() *
                (static_cast<double>(n) / static_cast<double>(b0));
  out.vectors.noalias() = basis * y;
  Matrix r = image * y;
  r -= out.vectors * out.values.template cast<Scalar>().asDiagonal();
  out.residuals = r.colwise().norm().transpose().template cast<double>();
  return out;
}

}  // namespace q2n::detail
