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
/// The register block is a few batches of rows by a few columns of C, held in registers over
/// the whole k loop: with AVX-512's 32 vector registers four batches by 6 columns wherever four
/// batches of rows are left, else two by 12; with 16 registers two by 6. Four batches load R's
/// entries half as often as two, which matters most where each load is two (R gathered through
/// an index) and where L's rows come from beyond the L1 cache (QuIP's change of basis at 4096²,
/// float, two threads, warm: 49-54 -> 46-49 ms). With the operands in the L1 cache this runs
/// near the machine's FMA peak (bench_scale's BM_FactorProduct, a 64 x 64 factor on 64 x 516
/// blocks, float, AVX-512, two threads, five runs: 468-509 GFLOP/s against 333-351 for Eigen's
/// product and 520-553 for FMAs alone, BM_FmaPeak, 89-92 % of it; two batches by 12 reached
/// 86-88 %).

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
inline constexpr int kColumns = 12;  // with two batches of rows
inline constexpr int kTallRows = 4;  // batches of rows in the tall block, with kTallColumns
inline constexpr int kTallColumns = 6;
#else
inline constexpr int kColumns = 6;
inline constexpr int kTallRows = 0;  // no tall block
inline constexpr int kTallColumns = 0;
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

// NR columns of C for a panel of rows: R = kTallRows batches of them, or (R = 2) at most two.
template <class T, int R, int NR, bool Indexed>
void rows_block(T* c, Index ldc, const T* l, Index ldl, const FactorOperand<T>& r, Index k,
                Index rows) {
  constexpr Index W = Batch<T>::size;
  if (rows == R * W)
    block<T, R, NR, Indexed>(c, ldc, l, ldl, r, k, rows);
  else
    for (Index i = 0; i < rows; i += W)
      block<T, 1, NR, Indexed>(c + i, ldc, l + i, ldl, r, k, std::min(W, rows - i));
}

template <class T, int R, int NR, bool Indexed>
void column_tail(int n, T* c, Index ldc, const T* l, Index ldl, const FactorOperand<T>& r, Index k,
                 Index rows) {
  if constexpr (NR > 0) {
    if (n == NR) return rows_block<T, R, NR, Indexed>(c, ldc, l, ldl, r, k, rows);
    column_tail<T, R, NR - 1, Indexed>(n, c, ldc, l, ldl, r, k, rows);
  }
}

// All of C's columns for the panel of rows from L's pointer l on: full blocks of NR columns; a
// short tail (at most NR / 2 columns) is merged with the last full block and split into two
// halves, since narrow blocks leave the FMA units idle.
template <class T, int R, int NR, bool Indexed, class FromColumn>
void panel(T* c, Index ldc, const T* l, Index ldl, const FromColumn& from_column, Index n, Index k,
           Index rows) {
  const Index tail = n % NR;
  const Index full = (tail > 0 && tail <= NR / 2 && n > NR) ? n / NR - 1 : n / NR;
  Index j = 0;
  for (; j < full * NR; j += NR)
    rows_block<T, R, NR, Indexed>(c + j * ldc, ldc, l, ldl, from_column(j), k, rows);
  while (j < n) {  // the rest: under NR columns, or NR + tail in two parts under NR
    const Index left = n - j, width = left > NR ? (left + 1) / 2 : left;
    column_tail<T, R, NR - 1, Indexed>(static_cast<int>(width), c + j * ldc, ldc, l, ldl,
                                       from_column(j), k, rows);
    j += width;
  }
}

template <class T, bool Indexed>
void product(T* c, Index ldc, const T* l, Index ldl, const FactorOperand<T>& r, Index m, Index n,
             Index k) {
  constexpr Index W = Batch<T>::size;
  // R from its column j on.
  const auto from_column = [&](Index j) {
    if constexpr (Indexed)
      return FactorOperand<T>{r.data, r.row_stride, r.col_stride, r.index + j * r.col_stride};
    else
      return FactorOperand<T>{r.data + j * r.col_stride, r.row_stride, r.col_stride};
  };
  // Rows outermost: a panel of L's rows stays in the L1 cache for all of C's columns. Tall
  // panels while kTallRows batches of rows are left, then panels of two batches.
  Index i = 0;
  if constexpr (kTallRows > 0)
    for (; i + kTallRows * W <= m; i += kTallRows * W)
      panel<T, kTallRows, kTallColumns, Indexed>(c + i, ldc, l + i, ldl, from_column, n, k,
                                                 kTallRows * W);
  for (; i < m; i += 2 * W)
    panel<T, 2, kColumns, Indexed>(c + i, ldc, l + i, ldl, from_column, n, k,
                                   std::min(2 * W, m - i));
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
