#pragma once
/// \file detail/transpose.hpp
/// Cache-blocked transposition of large matrices (Eigen's `B = A.transpose()` walks one of the
/// two matrices with a stride of a whole column: 0.18 s at 4096², against 0.02 s blocked).
/// Pure copies, shared among threads by blocks: the result does not depend on the thread count.

#include <Eigen/Core>

#include <algorithm>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace q2n::detail {

inline constexpr Eigen::Index kTransposeBlock = 32;

/// dst = srcᵀ (dst must have srcᵀ's shape; src and dst must not overlap).
template <class Src, class Dst>
void transpose_into(const Src& src, Dst&& dst) {
  const Eigen::Index rows = src.rows(), cols = src.cols(), b = kTransposeBlock;
  const Eigen::Index col_blocks = (cols + b - 1) / b;
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) if (rows * cols > (1 << 16) && !omp_in_parallel())
#endif
  for (Eigen::Index jb = 0; jb < col_blocks; ++jb)
    for (Eigen::Index i0 = 0; i0 < rows; i0 += b) {
      const Eigen::Index j0 = jb * b, j1 = std::min(j0 + b, cols), i1 = std::min(i0 + b, rows);
      for (Eigen::Index j = j0; j < j1; ++j)
        for (Eigen::Index i = i0; i < i1; ++i) dst(j, i) = src(i, j);
    }
}

/// A ← (A + Aᵀ) / 2 for a square A.
template <class T>
void symmetrize_in_place(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& A) {
  const Eigen::Index n = A.rows(), b = kTransposeBlock;
  const Eigen::Index blocks = (n + b - 1) / b;
#if defined(_OPENMP)
#pragma omp parallel for schedule(dynamic) if (n * n > (1 << 16) && !omp_in_parallel())
#endif
  for (Eigen::Index jb = 0; jb < blocks; ++jb)
    for (Eigen::Index i0 = 0; i0 <= jb * b; i0 += b) {
      const Eigen::Index j0 = jb * b, j1 = std::min(j0 + b, n), i1 = std::min(i0 + b, n);
      for (Eigen::Index j = j0; j < j1; ++j)
        for (Eigen::Index i = i0; i < std::min(i1, j); ++i) {
          const T v = (A(i, j) + A(j, i)) / T(2);
          A(i, j) = v;
          A(j, i) = v;
        }
    }
}

}  // namespace q2n::detail
