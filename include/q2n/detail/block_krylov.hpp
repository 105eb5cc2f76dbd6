#pragma once
/// \file detail/block_krylov.hpp
/// Leading eigenpairs of a symmetric positive semidefinite matrix by block Krylov iteration
/// with Rayleigh–Ritz, and a residual bound for every Ritz pair.

#include <Eigen/Core>
#include <Eigen/Eigenvalues>
#include <Eigen/QR>

#include <cstdint>
#include <random>

namespace q2n::detail {

template <class Scalar>
struct RitzPairs {
  Eigen::VectorXd values;                                      ///< descending
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> vectors;  ///< n × k, orthonormal
  Eigen::VectorXd residuals;  ///< ‖M z_j − θ_j z_j‖: an eigenvalue of M lies within it of θ_j
  bool ok = true;             ///< the small eigenproblem converged
};

/// Rayleigh–Ritz on the block Krylov space span[V, MV, …, M^(blocks−1) V] of a random
/// n × block start V (fixed seed), fully re-orthogonalized (two Gram–Schmidt passes and a QR
/// per block), so the result is deterministic for a given M, block and blocks.
/// M is given by its action: `apply(x, y)` sets y = M x for an n × b block x (y a block of
/// the same shape), so M can be an n × n matrix or a product never formed (Āᵀ(Ā x)).
template <class Scalar, class Apply>
RitzPairs<Scalar> block_krylov(Eigen::Index n, const Apply& apply, Eigen::Index block,
                               Eigen::Index blocks, std::uint32_t seed = 12345) {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const Eigen::Index width = std::min(n, block * blocks);
  Matrix basis(n, width), image(n, width);  // Q and M·Q
  {
    std::mt19937 gen(seed);
    std::normal_distribution<double> nd;
    Matrix v(n, std::min(block, width));
    for (Eigen::Index i = 0; i < v.size(); ++i) v.data()[i] = static_cast<Scalar>(nd(gen));
    Eigen::HouseholderQR<Matrix> qr(v);
    basis.leftCols(v.cols()) = qr.householderQ() * Matrix::Identity(n, v.cols());
  }
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
  out.vectors.noalias() = basis * y;
  Matrix r = image * y;
  r -= out.vectors * out.values.template cast<Scalar>().asDiagonal();
  out.residuals = r.colwise().norm().transpose().template cast<double>();
  return out;
}

}  // namespace q2n::detail
