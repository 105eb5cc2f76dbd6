#pragma once
/// \file detail/factor_product.hpp
/// C = L R for the small dense factors of the Kronecker transform and the blocks they act on,
/// read and written in place through strides: no packing, no temporaries.
///
/// Every entry of C is one multiply-add chain over k in order from 0 (xsimd::fma: fused where
/// the target has FMA), computed the same way wherever it sits in C: a tail of rows goes
/// through a zero-padded batch, never a scalar path. So the bits depend on nothing but the
/// operands: not on the blocking, not on the product being part of a larger one, not on the
/// thread count.
///
/// The register block is two batches of rows by NR columns of C, held in registers over the
/// whole k loop (NR = 12 with AVX-512's 32 vector registers, 6 with 16). With the operands in
/// the L1 cache this runs near the machine's FMA peak (bench_scale's BM_FactorProduct, a 64 x 64
/// factor on 64 x 516 blocks, float, AVX-512, two threads: 479-483 GFLOP/s against 344-349 for
/// Eigen's product and 550-560 for FMAs alone, BM_FmaPeak).

#include <algorithm>
#include <cstddef>
#include <xsimd/xsimd.hpp>

namespace q2n::detail {

template <class T>
struct FactorOperand {
  const T* data;
  std::ptrdiff_t row_stride, col_stride;  // entry (i, j) at data[i·row_stride + j·col_stride]
  const int* index = nullptr;  // if set, entry (i, j) is data[index[i·row_stride + j·col_stride]]
};

namespace factor_product_impl {

using Index = std::ptrdiff_t;

template <class T>
using Batch = xsimd::batch<T>;

#if defined(__AVX512F__)
inline constexpr int kColumns = 12;
#else
inline constexpr int kColumns = 6;
#endif

template <class T, bool Indexed>
inline T entry(const FactorOperand<T>& r, Index i, Index j) {
  const Index at = i * r.row_stride + j * r.col_stride;
  if constexpr (Indexed)
    return r.data[r.index[at]];
  else
    return r.data[at];
}

// C[0:R·W, 0:NR] = L[0:R·W, :] R[:, 0:NR], R batches of W rows, rows < R·W valid (the rest
// read from `pad`, a zero-padded copy of L's last rows, when rows < R·W).
template <class T, int R, int NR, bool Indexed>
inline void block(T* c, Index ldc, const T* l, Index ldl, const FactorOperand<T>& r, Index k,
                  Index rows) {
  using B = Batch<T>;
  constexpr Index W = B::size;
  B acc[R][NR];
  for (int a = 0; a < R; ++a)
    for (int j = 0; j < NR; ++j) acc[a][j] = B(T(0));
  if (rows == R * W) {
    for (Index kk = 0; kk < k; ++kk) {
      B lv[R];
      for (int a = 0; a < R; ++a) lv[a] = B::load_unaligned(l + kk * ldl + a * W);
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) {
        const B b(entry<T, Indexed>(r, kk, j));
        for (int a = 0; a < R; ++a) acc[a][j] = xsimd::fma(lv[a], b, acc[a][j]);
      }
    }
    for (int j = 0; j < NR; ++j)
      for (int a = 0; a < R; ++a) acc[a][j].store_unaligned(c + j * ldc + a * W);
    return;
  }
  // A tail of rows (R = 1, rows < W): the same operations on a padded batch.
  alignas(64) T pad[W] = {};
  for (Index kk = 0; kk < k; ++kk) {
    std::copy(l + kk * ldl, l + kk * ldl + rows, pad);
    const B lv = B::load_aligned(pad);
    for (int j = 0; j < NR; ++j)
      acc[0][j] = xsimd::fma(lv, B(entry<T, Indexed>(r, kk, j)), acc[0][j]);
  }
  for (int j = 0; j < NR; ++j) {
    acc[0][j].store_aligned(pad);
    std::copy(pad, pad + rows, c + j * ldc);
  }
}

// Columns [j, j + NR) of C, for the rows [i0, i0 + rows), rows ≤ 2W.
template <class T, int NR, bool Indexed>
void rows_block(T* c, Index ldc, const T* l, Index ldl, const FactorOperand<T>& r, Index k,
                Index rows) {
  constexpr Index W = Batch<T>::size;
  if (rows == 2 * W)
    block<T, 2, NR, Indexed>(c, ldc, l, ldl, r, k, rows);
  else
    for (Index i = 0; i < rows; i += W)
      block<T, 1, NR, Indexed>(c + i, ldc, l + i, ldl, r, k, std::min(W, rows - i));
}

template <class T, int NR, bool Indexed>
void column_tail(int n, T* c, Index ldc, const T* l, Index ldl, const FactorOperand<T>& r, Index k,
                 Index rows) {
  if constexpr (NR > 0) {
    if (n == NR) return rows_block<T, NR, Indexed>(c, ldc, l, ldl, r, k, rows);
    column_tail<T, NR - 1, Indexed>(n, c, ldc, l, ldl, r, k, rows);
  }
}

template <class T, bool Indexed>
void product(T* c, Index ldc, const T* l, Index ldl, const FactorOperand<T>& r, Index m, Index n,
             Index k) {
  constexpr int NR = kColumns;
  constexpr Index MR = 2 * Batch<T>::size;
  // R from its column j on.
  const auto from_column = [&](Index j) {
    if constexpr (Indexed)
      return FactorOperand<T>{r.data, r.row_stride, r.col_stride, r.index + j * r.col_stride};
    else
      return FactorOperand<T>{r.data + j * r.col_stride, r.row_stride, r.col_stride};
  };
  // Rows outermost: a panel of L's rows stays in the L1 cache for all of C's columns.
  for (Index i = 0; i < m; i += MR) {
    const Index rows = std::min(MR, m - i);
    // Full blocks of NR columns; a short tail (at most NR / 2 columns) is merged with the last
    // full block and split into two halves, since narrow blocks leave the FMA units idle.
    const Index tail = n % NR;
    const Index full = (tail > 0 && tail <= NR / 2 && n > NR) ? n / NR - 1 : n / NR;
    Index j = 0;
    for (; j < full * NR; j += NR)
      rows_block<T, NR, Indexed>(c + i + j * ldc, ldc, l + i, ldl, from_column(j), k, rows);
    while (j < n) {  // the rest: under NR columns, or NR + tail in two parts under NR
      const Index left = n - j, width = left > NR ? (left + 1) / 2 : left;
      column_tail<T, NR - 1, Indexed>(static_cast<int>(width), c + i + j * ldc, ldc, l + i, ldl,
                                      from_column(j), k, rows);
      j += width;
    }
  }
}

}  // namespace factor_product_impl

/// C = L R: C is m × n with column stride ldc, L is m × k with unit row stride and column
/// stride ldl, R is k × n (any strides; or its entries gathered through `index`, which is how
/// KroneckerTransform::apply reads a column through its input permutation without a permuted
/// copy). C must not overlap L or R.
template <class T>
void factor_product(T* c, std::ptrdiff_t ldc, const T* l, std::ptrdiff_t ldl,
                    const FactorOperand<T>& r, std::ptrdiff_t m, std::ptrdiff_t n,
                    std::ptrdiff_t k) {
  if (r.index)
    factor_product_impl::product<T, true>(c, ldc, l, ldl, r, m, n, k);
  else
    factor_product_impl::product<T, false>(c, ldc, l, ldl, r, m, n, k);
}

}  // namespace q2n::detail
