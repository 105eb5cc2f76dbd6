#pragma once
/// \file detail/gptq_sweep.hpp
/// The GPTQ column sweep shared by GPTQ, OWQ and PB-LLM.
///
/// Columns are processed in blocks of `blocksize`. Inside a block every column is quantized in
/// turn, its scaled error `err = (w − q) / U_kk` is fed back into the block's remaining columns
/// (`W1[:, k+1:] −= err · U[k, k+1:]`), and after the block all later columns, including
/// columns that are never quantized (OWQ's kept columns), receive the lazy update
/// `W[:, i2:] −= Err1 · U[i1:i2, i2:]` as one matrix product.
///
/// Within a block, feedback is applied by rank-1 updates inside sub-blocks of kSubBlock
/// columns and by one small matrix product per sub-block for the block's remaining columns.
/// That is the same arithmetic as the reference's per-column rank-1 updates (only the order of
/// summation differs) at a fraction of the memory traffic; reference_order = true makes the
/// whole block one sub-block, which is exactly the reference's order. The working matrix W itself only
/// changes at block boundaries, so a quantizer callback that refits group parameters on
/// W[:, k : k + groupsize] sees the columns "as left by the lazy updates of previous blocks",
/// exactly as in the reference.

#include <Eigen/Core>
#include <algorithm>
#include <q2n/detail/diagnostics.hpp>
#include <q2n/detail/parallel.hpp>
#include <q2n/detail/stopwatch.hpp>

namespace q2n::detail {

inline constexpr Eigen::Index kSubBlock = 16;

/// Runs the sweep over the first n_quant columns of W (in processing order).
/// \param W        rows × cols working weights (modified: lazy updates)
/// \param U        cols × cols upper Cholesky factor of the damped H⁻¹ (same order as W)
/// \param reference_order one rank-1 update per column over the whole block (the reference's
///                 order) instead of sub-blocks of kSubBlock columns
/// \param quantize callable `(Index k, const Matrix& W, const T* w, T* q)` that writes the
///                 quantized values of the working column w (position k) into q
/// \param diag     receives loss (the GPTQ objective Σ (w − q)² / U_kk²), seconds.sweep and
///                 seconds.lazy_update
template <class T, class Quantize>
void gptq_sweep(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& W,
                const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& U, Eigen::Index n_quant,
                Eigen::Index blocksize, bool reference_order, Quantize&& quantize,
                QuantDiagnostics& diag) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  const Index rows = W.rows(), cols = W.cols();
  const Index bs = std::min(blocksize, std::max<Index>(n_quant, 1));
  const Index sub_block = reference_order ? bs : kSubBlock;
  Matrix W1(rows, bs), Err1(rows, bs);
  Eigen::Matrix<T, Eigen::Dynamic, 1> q(rows);
  double loss = 0, lazy = 0;
  const auto start = Clock::now();

  for (Index i1 = 0; i1 < n_quant; i1 += bs) {
    const Index i2 = std::min(i1 + bs, n_quant);
    const Index count = i2 - i1;
    W1.leftCols(count) = W.middleCols(i1, count);
    for (Index s0 = 0; s0 < count; s0 += sub_block) {
      const Index s1 = std::min(s0 + sub_block, count);
      for (Index i = s0; i < s1; ++i) {
        const Index k = i1 + i;
        const T d = U(k, k);
        quantize(k, static_cast<const Matrix&>(W), W1.col(i).data(), q.data());
        Err1.col(i) = (W1.col(i) - q) / d;
        loss += Err1.col(i).template cast<double>().squaredNorm();
        for (Index c = i + 1; c < s1; ++c) W1.col(c) -= U(k, i1 + c) * Err1.col(i);
      }
      if (s1 < count)
        panel_product(W1.middleCols(s1, count - s1), Err1.middleCols(s0, s1 - s0),
                      U.block(i1 + s0, i1 + s1, s1 - s0, count - s1), T(-1), true);
    }
    if (i2 < cols) {
      const auto t0 = Clock::now();
      panel_product(W.rightCols(cols - i2), Err1.leftCols(count), U.block(i1, i2, count, cols - i2),
                    T(-1), true);
      lazy += seconds_since(t0);
    }
  }
  diag.loss = loss;
  diag.seconds.lazy_update = lazy;
  diag.seconds.sweep = seconds_since(start) - lazy;
}

}  // namespace q2n::detail
