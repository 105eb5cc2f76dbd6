#pragma once
/// \file accumulators.hpp
/// Streaming calibration statistics: the GPTQ Hessian and the sample-averaged activations.
///
/// Both are sums with counts, so shards accumulated separately (other batches, other machines)
/// combine with merge() into exactly the statistic of all their tokens together. To move a
/// shard between processes, send its sum and its count (HessianAccumulator::packed_sum(),
/// SampleMeanAccumulator::sum()); from_packed_sum() / from_sum() rebuild it bit for bit.

#include <q2n/detail/check.hpp>
#include <q2n/detail/parallel.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace q2n {

/// Accumulates the GPTQ Hessian `H = (2/N) Σ_t x_t x_tᵀ` over calibration tokens.
///
/// Each batch's product `XᵀX` is formed in the batch's own scalar type (GEMMs, so float input
/// runs at float speed) and added into a running sum kept in double, so that N in the hundreds
/// of thousands of tokens does not erode the sum. The sum is symmetric: only its lower triangle
/// is kept, packed (cols·(cols+1)/2 doubles, half a square: eight shards of a 14336-wide
/// input take 6.6 GB, not 13), and computed in column panels of 512, so a batch needs only
/// cols × 512 scalars of scratch beside it.
///
/// \code
/// q2n::HessianAccumulator acc(cols);
/// for (const auto& batch : batches) acc.add(batch);   // batch: tokens × cols
/// Eigen::MatrixXf H = acc.hessian_as<float>();
/// \endcode
class HessianAccumulator {
 public:
  /// \param cols input dimension of the layer (columns of W); must be positive.
  explicit HessianAccumulator(Eigen::Index cols) : cols_(cols) {
    if (cols <= 0)
      detail::fail("q2n::HessianAccumulator: cols = ", cols, " must be positive");
    sum_.setZero(packed_size(cols));
  }

  /// Adds a batch of tokens, one per row (n × cols; n may be 0).
  /// \throws NumericalError when Σ x xᵀ overflows double (the accumulator is then unusable)
  template <class Derived>
  void add(const Eigen::MatrixBase<Derived>& tokens) {
    using S = typename Derived::Scalar;
    static_assert(!Eigen::NumTraits<S>::IsInteger,
                  "q2n::HessianAccumulator::add: pass floating-point activations (cast integers)");
    detail::require_shape(tokens, -1, cols_, "q2n::HessianAccumulator::add", "tokens");
    if (tokens.rows() == 0) return;
    detail::require_finite(tokens, "q2n::HessianAccumulator::add", "tokens");
    // Lower triangle, panel by panel: rows j0.. of columns [j0, j0 + w) of XᵀX. The panel's
    // diagonal block is computed whole; only its lower part is added to the sum.
    // Squares of float tokens leave float's range above ~1.8e19 (or become subnormal below
    // ~1e-19): such batches are accumulated in double, where they are representable.
    if constexpr (std::is_same_v<S, float>) {
      const double amax = static_cast<double>(tokens.cwiseAbs().maxCoeff());
      const double n = static_cast<double>(tokens.rows());
      if (amax > 0 && (amax * amax * n > 1e36 || amax < 1e-18)) {
        add(tokens.template cast<double>());
        return;
      }
    }
    using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
    const auto& x = tokens.derived();  // no copy: GEMM reads row- or column-major operands
    constexpr Eigen::Index kPanel = 512;
    Mat panel(cols_, std::min(kPanel, cols_));
    for (Eigen::Index j0 = 0; j0 < cols_; j0 += kPanel) {
      const Eigen::Index w = std::min(kPanel, cols_ - j0), h = cols_ - j0;
      detail::panel_product(panel.topLeftCorner(h, w), x.rightCols(h).transpose(),
                            x.middleCols(j0, w), S(1), false);  // thread-count independent
      for (Eigen::Index c = 0; c < w; ++c)
        sum_.segment(offset(j0 + c), h - c) += panel.col(c).segment(c, h - c).template cast<double>();
    }
    if (!sum_.allFinite())
      detail::numerical_failure("q2n::HessianAccumulator::add: Σ x xᵀ overflowed double (tokens up to ",
                                static_cast<double>(tokens.cwiseAbs().maxCoeff()),
                                " in magnitude); scale the activations down");
    tokens_ += tokens.rows();
  }

  /// Adds the statistics of another accumulator (same cols) to this one.
  void merge(const HessianAccumulator& other) {
    if (other.cols_ != cols_)
      detail::fail("q2n::HessianAccumulator::merge: other has cols = ", other.cols_,
                   " but this accumulator has cols = ", cols_,
                   "; merge only accumulators of the same layer");
    sum_ += other.sum_;
    tokens_ += other.tokens_;
  }

  Eigen::Index cols() const { return cols_; }
  /// Number of tokens added so far (N).
  std::int64_t tokens() const { return tokens_; }

  /// The running sum Σ x xᵀ as its lower triangle packed column by column (element (i, j),
  /// i ≥ j, at j·cols − j(j−1)/2 + i − j; cols·(cols+1)/2 doubles): with tokens(), the whole
  /// state, e.g. to send to another process.
  const Eigen::VectorXd& packed_sum() const { return sum_; }

  /// Rebuilds an accumulator from another's cols(), packed_sum() and tokens(); merge() and
  /// hessian() then give exactly what the original would.
  /// \throws std::invalid_argument unless cols > 0, `packed` has cols·(cols+1)/2 finite entries
  ///         and tokens ≥ 0
  static HessianAccumulator from_packed_sum(Eigen::Index cols, Eigen::VectorXd packed,
                                            std::int64_t tokens) {
    const char* fn = "q2n::HessianAccumulator::from_packed_sum";
    HessianAccumulator acc(cols);
    if (packed.size() != acc.sum_.size())
      detail::fail(fn, ": packed has ", packed.size(), " entries but cols = ", cols, " needs ",
                   acc.sum_.size(), "; pass the packed_sum() of an accumulator with these cols");
    if (tokens < 0) detail::fail(fn, ": tokens = ", tokens, " must be non-negative");
    detail::require_finite(packed, fn, "packed");
    acc.sum_ = std::move(packed);
    acc.tokens_ = tokens;
    return acc;
  }

  /// \return `(2/N) Σ x xᵀ` as a full symmetric matrix in double.
  Eigen::MatrixXd hessian() const {
    if (tokens_ == 0)
      detail::fail("q2n::HessianAccumulator::hessian: no tokens were added; "
                   "add calibration activations first");
    return scaled<double>();
  }

  /// \return hessian() converted to Scalar, written straight from the double sum (no
  /// cols × cols double temporary).
  template <class Scalar>
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> hessian_as() const {
    if (tokens_ == 0)
      detail::fail("q2n::HessianAccumulator::hessian_as: no tokens were added; "
                   "add calibration activations first");
    detail::require_in_range<Scalar>(sum_.cwiseAbs().maxCoeff() * (2.0 / static_cast<double>(tokens_)),
                                     "q2n::HessianAccumulator::hessian_as", "H", "hessian()");
    return scaled<Scalar>();
  }

 private:
  static Eigen::Index packed_size(Eigen::Index n) { return n * (n + 1) / 2; }
  // Where column j's lower part (rows j … cols−1) starts in sum_.
  Eigen::Index offset(Eigen::Index j) const { return j * cols_ - j * (j - 1) / 2; }

  // (2/N) · the sum, both triangles, in Scalar (each entry rounded once, from double).
  template <class Scalar>
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> scaled() const {
    const double scale = 2.0 / static_cast<double>(tokens_);
    Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> h(cols_, cols_);
    const double* s = sum_.data();
    for (Eigen::Index j = 0; j < cols_; ++j)
      for (Eigen::Index i = j; i < cols_; ++i, ++s) h(i, j) = h(j, i) = static_cast<Scalar>(*s * scale);
    return h;
  }

  Eigen::Index cols_;
  std::int64_t tokens_ = 0;
  Eigen::VectorXd sum_;  // Σ x xᵀ: its lower triangle, packed column by column
};

/// Accumulates the sample-averaged activations `Ā` (positions × cols): position by position,
/// the mean over calibration sequences, every sequence weighted equally (1/S).
///
/// All sequences must have the same length; the first one added fixes it.
///
/// \code
/// q2n::SampleMeanAccumulator acc(cols);
/// for (const auto& seq : sequences) acc.add_sequence(seq);   // seq: seqlen × cols
/// Eigen::MatrixXd abar = acc.mean();
/// \endcode
class SampleMeanAccumulator {
 public:
  /// \param cols input dimension of the layer; must be positive.
  explicit SampleMeanAccumulator(Eigen::Index cols) : cols_(cols) {
    if (cols <= 0)
      detail::fail("q2n::SampleMeanAccumulator: cols = ", cols, " must be positive");
  }

  /// Adds one calibration sequence (seqlen × cols, one token per row).
  template <class Derived>
  void add_sequence(const Eigen::MatrixBase<Derived>& seq) {
    check_block(seq, seq.rows(), "q2n::SampleMeanAccumulator::add_sequence", "seq");
    sum_ += seq.template cast<double>();
    ++samples_;
  }

  /// Adds S sequences stacked by rows ((S·seqlen) × cols), sequence s in rows [s·seqlen, (s+1)·seqlen).
  template <class Derived>
  void add_sequences(const Eigen::MatrixBase<Derived>& tokens, Eigen::Index seqlen) {
    const char* fn = "q2n::SampleMeanAccumulator::add_sequences";
    if (seqlen <= 0) detail::fail(fn, ": seqlen = ", seqlen, " must be positive");
    if (tokens.rows() % seqlen != 0)
      detail::fail(fn, ": tokens has ", tokens.rows(), " rows, not a multiple of seqlen = ",
                   seqlen, "; pass whole sequences stacked by rows");
    check_block(tokens, seqlen, fn, "tokens");
    for (Eigen::Index r = 0; r < tokens.rows(); r += seqlen, ++samples_)
      sum_ += tokens.middleRows(r, seqlen).template cast<double>();
  }

  /// Adds the sequences of another accumulator (same cols and seqlen) to this one.
  void merge(const SampleMeanAccumulator& other) {
    const char* fn = "q2n::SampleMeanAccumulator::merge";
    if (other.cols_ != cols_)
      detail::fail(fn, ": other has cols = ", other.cols_, " but this accumulator has cols = ",
                   cols_, "; merge only accumulators of the same layer");
    if (other.samples_ == 0) return;
    if (samples_ == 0) {
      *this = other;
      return;
    }
    if (other.seqlen() != seqlen())
      detail::fail(fn, ": other has seqlen = ", other.seqlen(), " but this accumulator has seqlen = ",
                   seqlen(), "; all calibration sequences must have the same length");
    sum_ += other.sum_;
    samples_ += other.samples_;
  }

  Eigen::Index cols() const { return cols_; }
  /// Sequence length T fixed by the first sequence (0 before any).
  Eigen::Index seqlen() const { return sum_.rows(); }
  /// Number of sequences added (S).
  std::int64_t samples() const { return samples_; }

  /// The running sum Σ_s X_s (seqlen × cols, double; empty before any sequence): with
  /// samples(), the whole state, e.g. to send to another process.
  const Eigen::MatrixXd& sum() const { return sum_; }

  /// Rebuilds an accumulator from another's sum() and samples(); adding, merging and mean()
  /// then give exactly what the original would.
  /// \throws std::invalid_argument unless `sum` has `cols` columns and is finite, and samples
  ///         is positive exactly when `sum` has rows
  static SampleMeanAccumulator from_sum(Eigen::Index cols, Eigen::MatrixXd sum,
                                        std::int64_t samples) {
    const char* fn = "q2n::SampleMeanAccumulator::from_sum";
    SampleMeanAccumulator acc(cols);
    if (samples < 0 || (samples == 0) != (sum.size() == 0))
      detail::fail(fn, ": samples = ", samples, " with a ", sum.rows(), " x ", sum.cols(),
                   " sum; an accumulator with sequences has a non-empty sum, an empty one none");
    if (sum.size() != 0) detail::require_shape(sum, -1, cols, fn, "sum");
    detail::require_finite(sum, fn, "sum");
    acc.sum_ = std::move(sum);
    acc.samples_ = samples;
    return acc;
  }

  /// \return Ā = (1/S) Σ_s X_s in double (seqlen × cols).
  Eigen::MatrixXd mean() const {
    if (samples_ == 0)
      detail::fail("q2n::SampleMeanAccumulator::mean: no sequences were added; "
                   "add calibration activations first");
    return sum_ / static_cast<double>(samples_);
  }

  /// \return mean() converted to Scalar.
  template <class Scalar>
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> mean_as() const {
    Eigen::MatrixXd m = mean();
    detail::require_in_range<Scalar>(m.cwiseAbs().maxCoeff(), "q2n::SampleMeanAccumulator::mean_as",
                                     "Abar", "mean()");
    return m.cast<Scalar>();
  }

 private:
  template <class Derived>
  void check_block(const Eigen::MatrixBase<Derived>& m, Eigen::Index seqlen, const char* fn,
                   const char* name) {
    static_assert(!Eigen::NumTraits<typename Derived::Scalar>::IsInteger,
                  "q2n::SampleMeanAccumulator: pass floating-point activations (cast integers)");
    detail::require_shape(m, -1, cols_, fn, name);
    if (seqlen == 0) detail::fail(fn, ": ", name, " is empty; pass at least one token");
    if (samples_ > 0 && seqlen != this->seqlen())
      detail::fail(fn, ": sequence length ", seqlen, " differs from the length ", this->seqlen(),
                   " of the sequences already added; all calibration sequences must have the "
                   "same length");
    detail::require_finite(m, fn, name);
    if (samples_ == 0) sum_.setZero(seqlen, cols_);
  }

  Eigen::Index cols_;
  std::int64_t samples_ = 0;
  Eigen::MatrixXd sum_;  // Σ_s X_s (seqlen × cols)
};

}  // namespace q2n
