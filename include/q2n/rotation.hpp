#pragma once
/// \file rotation.hpp
/// Rotating a model's linears without changing what it computes (QuaRot, SpinQuant): fold a
/// norm's weight into the linears that read it, turn a linear's inputs or outputs by an
/// orthogonal transform, and the two head-wise forms of a transform that attention needs.
///
/// For a linear y = W x and an orthogonal T (any OrthogonalTransform: HadamardTransform,
/// DenseTransform for a learned rotation, BlockTransform below):
/// - rotate_inputs(W, T):  W ← W Tᵀ, so (W Tᵀ)(T x) = W x: the layer reads T x.
/// - rotate_outputs(W, T): W ← T W (and b ← T b): the layer writes T y.
/// - transform_rows(X, T): every row x of X (one token per row) becomes T x; what runs
///   online at inference when the producer of x could not absorb T.
/// - fold_scale_into_inputs(W, γ): W ← W diag(γ), the RMSNorm weight moved into the linears
///   that read the norm's output (the norm then has weight 1, and commutes with rotations).
///
/// Row-major and column-major matrices are both accepted and keep their layout.
///
/// \code
/// auto R = q2n::HadamardTransform<double>::randomized(hidden, seed);  // T = had · diag(ε)
/// q2n::fold_scale_into_inputs(Wq, input_norm);                        // W ← W diag(γ)
/// q2n::rotate_inputs(Wq, R);                                          // W ← W Rᵀ
/// q2n::rotate_outputs(Wo, R);                                         // W ← R W
/// // the residual stream is now R x: embeddings rotate like outputs (every row e → R e)
/// q2n::transform_rows(embedding, R);
/// \endcode

#include <q2n/detail/check.hpp>
#include <q2n/storage.hpp>
#include <q2n/transforms.hpp>

#include <Eigen/Core>

#include <memory>
#include <utility>

namespace q2n {

/// `I_count ⊗ T` (T applied to each of `count` consecutive blocks of T.size() entries: a
/// per-head transform) or `T ⊗ I_inner` (T applied across T.size() blocks of `inner` entries,
/// to the entries at the same place in every block: a transform across heads). Size
/// T.size() · count (or · inner).
template <class Scalar>
class BlockTransform final : public OrthogonalTransform<Scalar> {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  /// I_count ⊗ T.
  static BlockTransform per_block(std::shared_ptr<const OrthogonalTransform<Scalar>> t,
                                  Eigen::Index count) {
    return BlockTransform(std::move(t), count, true);
  }
  /// T ⊗ I_inner.
  static BlockTransform across_blocks(std::shared_ptr<const OrthogonalTransform<Scalar>> t,
                                      Eigen::Index inner) {
    return BlockTransform(std::move(t), inner, false);
  }

  Eigen::Index size() const override { return t_->size() * k_; }

  void apply(Eigen::Ref<Matrix> X, bool transpose) const override {
    detail::check_transform_rows(*this, X.rows(), "q2n::BlockTransform::apply");
    const Eigen::Index b = t_->size();
    for (Eigen::Index c = 0; c < X.cols(); ++c) {
      if (per_block_) {
        // The column as b × count (column-major): each column of the view is one block.
        Eigen::Map<Matrix> V(X.col(c).data(), b, k_);
        t_->apply(V, transpose);
      } else {
        // The column as inner × b (column-major): entry (i, a) is block a's i-th entry, so T
        // acts on the view's rows: V ← V Tᵀ.
        Eigen::Map<Matrix> V(X.col(c).data(), k_, b);
        t_->apply_right(V, !transpose);
      }
    }
  }

 private:
  BlockTransform(std::shared_ptr<const OrthogonalTransform<Scalar>> t, Eigen::Index k, bool per)
      : t_(std::move(t)), k_(k), per_block_(per) {
    if (!t_) detail::fail("q2n::BlockTransform: the transform is null; pass one");
    if (k_ <= 0)
      detail::fail("q2n::BlockTransform: the block count is ", k_, "; pass a positive one");
  }

  std::shared_ptr<const OrthogonalTransform<Scalar>> t_;
  Eigen::Index k_;
  bool per_block_;
};

namespace detail {

// The transform's size against the matrix's columns (rows: what the transform acts on).
template <class Scalar>
void check_rotation(const OrthogonalTransform<Scalar>& t, Eigen::Index n, const char* fn,
                    const char* what) {
  if (n != t.size())
    fail(fn, ": ", what, " is ", n, " but the transform has size ", t.size(),
         "; pass a transform of that size");
}

// Every row r of M becomes T r (transpose: Tᵀ r), in M's own layout.
template <class Scalar, int Options>
void rows_times(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Options>& M,
                const OrthogonalTransform<Scalar>& t, bool transpose) {
  if constexpr ((Options & Eigen::RowMajor) != 0) {
    // A row-major M is its transpose column-major: the rows are columns of that view.
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> view(M.data(), M.cols(),
                                                                           M.rows());
    t.apply(view, transpose);
  } else {
    t.apply_right(M, !transpose);  // rows r → T r: M ← M Tᵀ
  }
}

// Every column c of M becomes T c, in M's own layout.
template <class Scalar, int Options>
void cols_times(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Options>& M,
                const OrthogonalTransform<Scalar>& t) {
  if constexpr ((Options & Eigen::RowMajor) != 0) {
    Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>> view(M.data(), M.cols(),
                                                                           M.rows());
    t.apply_right(view, true);  // the view is Mᵀ: Mᵀ ← Mᵀ Tᵀ
  } else {
    t.apply(M, false);
  }
}

}  // namespace detail

/// Every row x of X becomes T x (transpose: Tᵀ x): X ← X Tᵀ. X has T.size() columns.
template <class Scalar, int Options>
void transform_rows(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Options>& X,
                    const OrthogonalTransform<Scalar>& t, bool transpose = false) {
  detail::check_rotation(t, X.cols(), "q2n::transform_rows", "X's column count");
  detail::rows_times(X, t, transpose);
}

/// W ← W Tᵀ (W: out × in, in = T.size()): the linear then reads T x and computes W x.
template <class Scalar, int Options>
void rotate_inputs(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Options>& W,
                   const OrthogonalTransform<Scalar>& t) {
  detail::check_rotation(t, W.cols(), "q2n::rotate_inputs", "W's input count (columns)");
  detail::rows_times(W, t, false);
}

/// W ← T W and b ← T b (W: out × in, out = T.size(); b empty or out entries): the linear then
/// writes T y.
template <class Scalar, int Options>
void rotate_outputs(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Options>& W,
                    const OrthogonalTransform<Scalar>& t,
                    Eigen::Matrix<Scalar, Eigen::Dynamic, 1>* bias = nullptr) {
  const char* fn = "q2n::rotate_outputs";
  detail::check_rotation(t, W.rows(), fn, "W's output count (rows)");
  detail::cols_times(W, t);
  if (bias && bias->size() > 0) {
    if (bias->size() != W.rows())
      detail::fail(fn, ": the bias has ", bias->size(), " entries for ", W.rows(),
                   " outputs; pass one per output or none");
    t.apply(*bias, false);
  }
}

/// W ← W diag(γ) (γ: one entry per input of W, finite): a norm's weight moved into a linear
/// that reads the norm's output.
template <class DW, class DG>
void fold_scale_into_inputs(Eigen::MatrixBase<DW>& W, const Eigen::MatrixBase<DG>& gamma) {
  const char* fn = "q2n::fold_scale_into_inputs";
  if (gamma.size() != W.cols())
    detail::fail(fn, ": gamma has ", gamma.size(), " entries for ", W.cols(),
                 " inputs; pass one per column of W");
  detail::require_finite(gamma, fn, "gamma");
  for (Eigen::Index j = 0; j < W.cols(); ++j) W.col(j) *= gamma(j);
}

}  // namespace q2n
