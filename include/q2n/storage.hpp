#pragma once
/// \file storage.hpp
/// How a quantized weight matrix is stored: composable parts, each with its own dequantization
/// and its own exact fold of a per-row factor m. Every quantizer in q2n returns this form, and
/// any other quantizer can build it with StorageBuilder.
///
/// Parts (all matrices column-major, columns in the ORIGINAL order of W, rows × cols = the
/// layer's shape in the stored basis):
///
/// - `UniformGrid`: integer codes on an affine grid per (row, group): `x̂ = s·(q − z)`
///   (zero-point form: GPTQ, RTN, ggml Q4_0/Q8_0) or `x̂ = s·q + o` (offset form: ggml Q4_1's
///   `d·q + min`). Folding m scales s (and o).
/// - `Codebook`: integer codes indexing a grid of 2^bits values per row (LeanQuant-style
///   non-uniform grids). Folding m scales the row's values.
/// - `FullPrecisionColumns`: whole columns kept in full precision (OWQ). Folding m scales them.
/// - `BinarizedEntries`: entries replaced by `sign·α + μ` per (row, group), chosen by a
///   salient mask (PB-LLM: salient entries stay on the base grid). Folding m scales α and μ.
/// - `Transforms`: optional orthogonal output/input transforms U, V and an input scale s, for
///   methods that quantize in another basis (QuIP, QuaRot): the layer computes
///   `y = Uᵀ Q̃ V (x / s)`, where Q̃ is what the other parts store.
///
/// Invariants (checked by StorageBuilder::build and by every function taking a storage):
/// - at most one base grid (uniform or codebook);
/// - every column is covered by exactly one of: the uniform grid (g_idx(j) ≥ 0), the codebook
///   (every column not kept in full precision), a full-precision column;
/// - precedence where parts overlap: a full-precision column, then a binarized entry, then the
///   base grid;
/// - codes lie in [0, 2^bits − 1], zero points are integers in [0, 2^bits − 1], every
///   floating-point value is finite, `perm` is empty or a permutation of 0..cols−1.
///
/// Folding m (fold(storage, m)) multiplies every per-row linear factor of the stored matrix Q̃,
/// so `dequantize_stored(folded) = diag(m) · dequantize_stored(storage)`: exactly when m is a
/// power of two, otherwise up to one rounding of each folded product (the codebook and
/// full-precision parts: exactly `fl(m_r · Q̃_rj)` for any m). The storage costs no extra
/// memory after a fold.
///
/// \code
/// // A 4-bit absmax quantizer with groups of 32 (ggml Q4_0 style), written by a user:
/// q2n::UniformGrid<float> grid;
/// grid.bits = 4;
/// grid.codes = codes;                                    // rows × cols, 0..15
/// grid.scales = d;                                       // rows × cols/32
/// grid.zeros = Eigen::MatrixXf::Constant(rows, cols / 32, 8.0f);
/// grid.g_idx = q2n::group_index(cols, 32);
/// q2n::QuantResult<float> res =
///     q2n::StorageBuilder<float>(rows, cols, "absmax-q4").uniform(std::move(grid)).result();
/// // res.Q == q2n::dequantize(res.storage), bit for bit
/// \endcode

#include <q2n/detail/check.hpp>
#include <q2n/detail/half.hpp>
#include <q2n/detail/transpose.hpp>
#include <q2n/diagnostics.hpp>
#include <q2n/errors.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace q2n {

/// Integer codes of a quantized matrix, one byte per weight (rows × cols).
using CodeMatrix = Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic>;

/// How a uniform grid maps a code q to a value.
enum class AffineForm {
  zero_point,  ///< x̂ = scale · (q − zero), zero an integer in [0, 2^bits − 1]
  offset,      ///< x̂ = scale · q + offset
};

/// Uniform affine grid per (row, group) of columns.
template <class Scalar>
struct UniformGrid {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  int bits = 4;                               ///< 1..8; codes lie in [0, 2^bits − 1]
  AffineForm form = AffineForm::zero_point;
  CodeMatrix codes;                           ///< rows × cols (ignored where g_idx(j) = −1)
  Matrix scales;                              ///< rows × groups
  Matrix zeros;                               ///< rows × groups (zero_point form) or empty
  Matrix offsets;                             ///< rows × groups (offset form) or empty
  Eigen::VectorXi g_idx;                      ///< cols: group of column j; −1 = not on the grid
  bool sym = false;                           ///< informational: the grid is symmetric
};

/// A grid of 2^bits values per row, indexed by the codes.
template <class Scalar>
struct Codebook {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  int bits = 4;      ///< 1..8
  CodeMatrix codes;  ///< rows × cols
  Matrix values;     ///< rows × 2^bits: x̂(r, j) = values(r, codes(r, j))
};

/// Columns stored in full precision.
template <class Scalar>
struct FullPrecisionColumns {
  Eigen::VectorXi columns;  ///< original column indices, distinct
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> values;  ///< rows × columns.size()
};

/// Entries binarized to `sign · alpha + mean` per (row, group of `groupsize` columns).
template <class Scalar>
struct BinarizedEntries {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  CodeMatrix salient;  ///< rows × cols: 1 = the entry stays on the base grid, 0 = binarized
  Eigen::Matrix<std::int8_t, Eigen::Dynamic, Eigen::Dynamic> signs;  ///< rows × cols, −1/0/+1
  Matrix alpha;                 ///< rows × cols/groupsize
  Matrix mean;                  ///< rows × cols/groupsize
  Eigen::Index groupsize = 0;   ///< columns per group, a divisor of cols
};

/// An orthogonal n × n transform that can apply itself without being formed.
template <class Scalar>
class OrthogonalTransform {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  virtual ~OrthogonalTransform() = default;
  /// n.
  virtual Eigen::Index size() const = 0;
  /// X ← T X (transpose = false) or X ← Tᵀ X, for X with size() rows.
  virtual void apply(Eigen::Ref<Matrix> X, bool transpose) const = 0;
  /// M ← M T (transpose = false) or M ← M Tᵀ, for M with size() columns. This default goes
  /// through apply() on Mᵀ (two transposed copies); fast transforms act on the rows directly.
  virtual void apply_right(Eigen::Ref<Matrix> M, bool transpose) const {
    Matrix Mt(M.cols(), M.rows());
    detail::transpose_into(M, Mt);
    apply(Mt, !transpose);  // (M T)ᵀ = Tᵀ Mᵀ, (M Tᵀ)ᵀ = T Mᵀ
    detail::transpose_into(Mt, M);
  }
};

/// An orthogonal transform given as a dense matrix (e.g. a learned rotation read from a file).
template <class Scalar>
class DenseTransform final : public OrthogonalTransform<Scalar> {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  /// \param T square, finite; orthogonality is checked to 1e-4 (float) / 1e-10 (double)
  ///          times n in the max norm of Tᵀ T − I.
  explicit DenseTransform(Matrix T) : t_(std::move(T)) {
    const char* fn = "q2n::DenseTransform";
    if (t_.rows() == 0 || t_.rows() != t_.cols())
      detail::fail(fn, ": T is ", t_.rows(), " x ", t_.cols(), "; pass a square orthogonal matrix");
    detail::require_finite(t_, fn, "T");
    const double tol = (std::is_same_v<Scalar, float> ? 1e-4 : 1e-10) * static_cast<double>(t_.rows());
    const double dev = static_cast<double>(
        (t_.transpose() * t_ - Matrix::Identity(t_.rows(), t_.cols())).cwiseAbs().maxCoeff());
    if (dev > tol)
      detail::fail(fn, ": T is not orthogonal (max |TᵀT − I| = ", dev, " > ", tol,
                   "); pass an orthogonal matrix");
  }
  Eigen::Index size() const override { return t_.rows(); }
  void apply(Eigen::Ref<Matrix> X, bool transpose) const override {
    if (transpose) X = t_.transpose() * X;
    else X = t_ * X;
  }
  const Matrix& matrix() const { return t_; }

 private:
  Matrix t_;
};

/// The basis the storage is quantized in: the layer computes `y = Uᵀ Q̃ V (x / s)`.
/// Every member is optional (null / empty = identity).
template <class Scalar>
struct Transforms {
  std::shared_ptr<const OrthogonalTransform<Scalar>> output;  ///< U, rows × rows
  std::shared_ptr<const OrthogonalTransform<Scalar>> input;   ///< V, cols × cols
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> input_scale;       ///< s, cols entries, non-zero
  bool identity() const { return !output && !input && input_scale.size() == 0; }
};

/// Storage form of a quantized weight matrix: the parts above and an open method tag.
template <class Scalar>
struct QuantStorage {
  std::string method;   ///< who made it: "rtn", "gptq", or any name a user's quantizer picks
  Eigen::Index rows = 0;
  Eigen::Index cols = 0;
  std::optional<UniformGrid<Scalar>> uniform;
  std::optional<Codebook<Scalar>> codebook;
  std::optional<FullPrecisionColumns<Scalar>> full_precision;
  std::optional<BinarizedEntries<Scalar>> binarized;
  Transforms<Scalar> transforms;
  /// Processing order of a sequential quantizer (perm[k] = column quantized k-th), or empty.
  Eigen::VectorXi perm;
};

/// Result of every quantizer: Q (rows × cols, original basis and column order) =
/// dequantize(storage), bit for bit.
template <class Scalar>
struct QuantResult {
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> Q;
  QuantStorage<Scalar> storage;
  QuantDiagnostics diagnostics;
};

/// g_idx for contiguous groups: column j in group j / groupsize (−1: one group per row).
/// \throws std::invalid_argument unless groupsize is −1 or a positive divisor of cols
inline Eigen::VectorXi group_index(Eigen::Index cols, Eigen::Index groupsize) {
  const char* fn = "q2n::group_index";
  if (cols <= 0) detail::fail(fn, ": cols = ", cols, " must be positive");
  if (groupsize != -1 && (groupsize <= 0 || cols % groupsize != 0))
    detail::fail(fn, ": groupsize = ", groupsize, " must be -1 or a positive divisor of cols = ",
                 cols);
  Eigen::VectorXi g(cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    g(j) = groupsize == -1 ? 0 : static_cast<int>(j / groupsize);
  return g;
}

namespace detail {

template <class Scalar>
void check_codes(const CodeMatrix& codes, int bits, Eigen::Index rows, Eigen::Index cols,
                 const char* fn, const char* name) {
  require_shape(codes, rows, cols, fn, name);
  if (bits < 1 || bits > 8) fail(fn, ": ", name, ": bits = ", bits, " is outside 1..8");
  const int maxq = (1 << bits) - 1;
  if (codes.size() > 0 && codes.maxCoeff() > maxq)
    fail(fn, ": ", name, " holds ", int(codes.maxCoeff()), " > 2^bits − 1 = ", maxq);
}

template <class Scalar>
void check_storage(const QuantStorage<Scalar>& s, const char* fn) {
  using Index = Eigen::Index;
  const Index rows = s.rows, cols = s.cols;
  if (rows <= 0 || cols <= 0)
    fail(fn, ": storage is ", rows, " x ", cols, "; build it with q2n::StorageBuilder");
  if (s.uniform && s.codebook)
    fail(fn, ": storage has both a uniform grid and a codebook; keep one base grid");
  std::vector<char> fp(static_cast<std::size_t>(cols), 0);
  if (const auto& f = s.full_precision) {
    require_shape(f->values, rows, f->columns.size(), fn,
                  "storage.full_precision->values (rows x columns.size())");
    require_finite(f->values, fn, "storage.full_precision->values");
    for (Index k = 0; k < f->columns.size(); ++k) {
      const int j = f->columns(k);
      if (j < 0 || j >= cols || fp[static_cast<std::size_t>(j)])
        fail(fn, ": storage.full_precision->columns(", k, ") = ", j,
             " is outside 0..", cols - 1, " or repeated");
      fp[static_cast<std::size_t>(j)] = 1;
    }
  }
  if (const auto& u = s.uniform) {
    check_codes<Scalar>(u->codes, u->bits, rows, cols, fn, "storage.uniform->codes");
    require_shape(u->scales, rows, -1, fn, "storage.uniform->scales");
    const Index groups = u->scales.cols();
    const bool zp = u->form == AffineForm::zero_point;
    require_shape(zp ? u->zeros : u->offsets, rows, groups, fn,
                  zp ? "storage.uniform->zeros (zero_point form: like scales)"
                     : "storage.uniform->offsets (offset form: like scales)");
    require_finite(u->scales, fn, "storage.uniform->scales");
    if (zp) {
      const double maxq = static_cast<double>((1 << u->bits) - 1);
      for (Index g = 0; g < groups; ++g)
        for (Index r = 0; r < rows; ++r) {
          const double z = static_cast<double>(u->zeros(r, g));
          if (!(z >= 0 && z <= maxq && z == std::floor(z)))
            fail(fn, ": storage.uniform->zeros(", r, ", ", g, ") = ", z,
                 " is not an integer in [0, 2^bits − 1]");
        }
    } else {
      require_finite(u->offsets, fn, "storage.uniform->offsets");
    }
    if (u->g_idx.size() != cols)
      fail(fn, ": storage.uniform->g_idx has ", u->g_idx.size(), " entries but cols = ", cols);
    for (Index j = 0; j < cols; ++j) {
      const int g = u->g_idx(j);
      if (g < -1 || g >= groups)
        fail(fn, ": storage.uniform->g_idx(", j, ") = ", g, " is outside -1..", groups - 1);
      if ((g >= 0) == static_cast<bool>(fp[static_cast<std::size_t>(j)]))
        fail(fn, ": column ", j, g >= 0 ? " is both on the uniform grid and full precision"
                                        : " is neither on the uniform grid nor full precision");
    }
  } else if (const auto& c = s.codebook) {
    check_codes<Scalar>(c->codes, c->bits, rows, cols, fn, "storage.codebook->codes");
    require_shape(c->values, rows, Index(1) << c->bits, fn, "storage.codebook->values (rows x 2^bits)");
    require_finite(c->values, fn, "storage.codebook->values");
  } else {
    for (Index j = 0; j < cols; ++j)
      if (!fp[static_cast<std::size_t>(j)])
        fail(fn, ": column ", j, " is covered by no part; add a grid or keep it in full precision");
  }
  if (const auto& b = s.binarized) {
    require_shape(b->salient, rows, cols, fn, "storage.binarized->salient");
    require_shape(b->signs, rows, cols, fn, "storage.binarized->signs");
    if (b->groupsize <= 0 || cols % b->groupsize != 0)
      fail(fn, ": storage.binarized->groupsize = ", b->groupsize, " does not divide cols = ", cols);
    require_shape(b->alpha, rows, cols / b->groupsize, fn, "storage.binarized->alpha");
    require_shape(b->mean, rows, cols / b->groupsize, fn, "storage.binarized->mean");
    require_finite(b->alpha, fn, "storage.binarized->alpha");
    require_finite(b->mean, fn, "storage.binarized->mean");
  }
  const auto& t = s.transforms;
  if (t.output && t.output->size() != rows)
    fail(fn, ": storage.transforms.output is ", t.output->size(), " x ", t.output->size(),
         " but rows = ", rows);
  if (t.input && t.input->size() != cols)
    fail(fn, ": storage.transforms.input is ", t.input->size(), " x ", t.input->size(),
         " but cols = ", cols);
  if (t.input_scale.size() != 0) {
    if (t.input_scale.size() != cols)
      fail(fn, ": storage.transforms.input_scale has ", t.input_scale.size(),
           " entries but cols = ", cols);
    require_finite(t.input_scale, fn, "storage.transforms.input_scale");
    if ((t.input_scale.array() == Scalar(0)).any())
      fail(fn, ": storage.transforms.input_scale has a zero entry");
  }
  if (s.perm.size() != 0) {
    if (s.perm.size() != cols)
      fail(fn, ": storage.perm has ", s.perm.size(), " entries but cols = ", cols);
    std::vector<char> seen(static_cast<std::size_t>(cols), 0);
    for (Index k = 0; k < cols; ++k) {
      const int j = s.perm(k);
      if (j < 0 || j >= cols || seen[static_cast<std::size_t>(j)])
        fail(fn, ": storage.perm is not a permutation of 0..", cols - 1, " (entry ", k, ")");
      seen[static_cast<std::size_t>(j)] = 1;
    }
  }
}

}  // namespace detail

/// The stored matrix Q̃ (rows × cols, in the storage's own basis: no transforms applied).
/// Per column: a full-precision column copies its values; otherwise the base grid's value,
/// replaced by `signs · alpha + mean` for binarized entries.
template <class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> dequantize_stored(
    const QuantStorage<Scalar>& storage) {
  using Index = Eigen::Index;
  detail::check_storage(storage, "q2n::dequantize");
  const Index rows = storage.rows, cols = storage.cols;
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> Q(rows, cols);
  std::vector<Index> fp_of(static_cast<std::size_t>(cols), -1);
  if (const auto& f = storage.full_precision)
    for (Index k = 0; k < f->columns.size(); ++k) fp_of[static_cast<std::size_t>(f->columns(k))] = k;
  const auto* u = storage.uniform ? &*storage.uniform : nullptr;
  const auto* c = storage.codebook ? &*storage.codebook : nullptr;
  const auto* b = storage.binarized ? &*storage.binarized : nullptr;
  for (Index j = 0; j < cols; ++j) {
    if (fp_of[static_cast<std::size_t>(j)] >= 0) {
      Q.col(j) = storage.full_precision->values.col(fp_of[static_cast<std::size_t>(j)]);
      continue;
    }
    if (u) {
      const int g = u->g_idx(j);
      if (u->form == AffineForm::zero_point)
        for (Index r = 0; r < rows; ++r)
          Q(r, j) = u->scales(r, g) * (static_cast<Scalar>(u->codes(r, j)) - u->zeros(r, g));
      else
        for (Index r = 0; r < rows; ++r)
          Q(r, j) = u->scales(r, g) * static_cast<Scalar>(u->codes(r, j)) + u->offsets(r, g);
    } else {
      for (Index r = 0; r < rows; ++r) Q(r, j) = c->values(r, c->codes(r, j));
    }
    if (b) {
      const Index g = j / b->groupsize;
      for (Index r = 0; r < rows; ++r)
        if (!b->salient(r, j))
          Q(r, j) = static_cast<Scalar>(b->signs(r, j)) * b->alpha(r, g) + b->mean(r, g);
    }
  }
  return Q;
}

/// The weights the storage represents, in the original basis: `Uᵀ Q̃ V diag(s)⁻¹` (just Q̃
/// without transforms). Every quantizer's result.Q equals this, bit for bit.
template <class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> dequantize(const QuantStorage<Scalar>& storage) {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  Matrix Q = dequantize_stored(storage);
  const auto& t = storage.transforms;
  if (t.output) t.output->apply(Q, /*transpose=*/true);           // Uᵀ Q̃
  if (t.input) t.input->apply_right(Q, /*transpose=*/false);   // Uᵀ Q̃ V
  if (t.input_scale.size() != 0) Q = Q * t.input_scale.cwiseInverse().asDiagonal();
  return Q;
}

/// Maps weights W (rows × cols, original basis) into the storage's basis: `U W diag(s) Vᵀ`.
template <class Scalar, class DW>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> to_stored_basis(
    const QuantStorage<Scalar>& storage, const Eigen::MatrixBase<DW>& W) {
  static_assert(std::is_same_v<typename DW::Scalar, Scalar>,
                "q2n::to_stored_basis: W must have the storage's scalar type; cast it");
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  detail::require_shape(W, storage.rows, storage.cols, "q2n::to_stored_basis", "W");
  const auto& t = storage.transforms;
  Matrix out = W;
  if (t.input_scale.size() != 0) out = out * t.input_scale.asDiagonal();
  if (t.input) t.input->apply_right(out, /*transpose=*/true);  // W diag(s) Vᵀ
  if (t.output) t.output->apply(out, /*transpose=*/false);
  return out;
}

/// Maps calibration activations (tokens × cols, one token per row) into the storage's input
/// basis, `A diag(s)⁻¹ Vᵀ`: the null space for Q2N in that basis is computed from these.
template <class Scalar, class DA>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> activations_to_stored_basis(
    const QuantStorage<Scalar>& storage, const Eigen::MatrixBase<DA>& A) {
  static_assert(std::is_same_v<typename DA::Scalar, Scalar>,
                "q2n::activations_to_stored_basis: A must have the storage's scalar type");
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  detail::require_shape(A, -1, storage.cols, "q2n::activations_to_stored_basis", "A");
  const auto& t = storage.transforms;
  Matrix out = A;
  if (t.input_scale.size() != 0) out = out * t.input_scale.cwiseInverse().asDiagonal();
  if (t.input) t.input->apply_right(out, /*transpose=*/true);
  return out;
}

/// Folds a per-row factor m (in the storage's basis) into the storage: scales and offsets of
/// the uniform grid, codebook values, full-precision values, and the binarized α and μ are
/// multiplied by m_r row by row; codes, zero points, masks, signs and transforms are unchanged.
/// \param storage modified in place
/// \param m rows entries, finite
/// \throws NumericalError when a folded value overflows the scalar type
template <class Scalar, class DM>
void fold(QuantStorage<Scalar>& storage, const Eigen::MatrixBase<DM>& m) {
  static_assert(std::is_same_v<typename DM::Scalar, Scalar>,
                "q2n::fold: m must have the storage's scalar type; cast it");
  const char* fn = "q2n::fold";
  detail::check_storage(storage, fn);
  if (m.cols() != 1 || m.rows() != storage.rows)
    detail::fail(fn, ": m is ", m.rows(), " x ", m.cols(), " but the storage has ", storage.rows,
                 " rows; pass one m entry per row");
  detail::require_finite(m, fn, "m");
  const auto D = m.asDiagonal();
  // A product can overflow although m and the part are finite: say so, naming the row.
  auto scale = [&](auto& part, const char* name) {
    part = D * part;
    if (part.allFinite()) return;
    Eigen::Index r = 0;
    part.cwiseAbs().rowwise().maxCoeff().maxCoeff(&r);
    throw NumericalError(std::string(fn) + ": m(" + std::to_string(r) + ") = " +
                         std::to_string(static_cast<double>(m(r))) + " times " + name +
                         " overflows the scalar type; refine in double");
  };
  if (auto& u = storage.uniform) {
    scale(u->scales, "storage.uniform->scales");
    if (u->form == AffineForm::offset) scale(u->offsets, "storage.uniform->offsets");
  }
  if (auto& c = storage.codebook) scale(c->values, "storage.codebook->values");
  if (auto& f = storage.full_precision) scale(f->values, "storage.full_precision->values");
  if (auto& b = storage.binarized) {
    scale(b->alpha, "storage.binarized->alpha");
    scale(b->mean, "storage.binarized->mean");
  }
}

/// Folds m into per-row or per-(row, group) scales: `scales.row(r) *= m(r)`.
/// \param scales rows × groups (writable: a Matrix, a Map or a Ref)
/// \param m      rows entries, finite
template <class DS, class DM>
void fold(const Eigen::MatrixBase<DS>& scales, const Eigen::MatrixBase<DM>& m) {
  static_assert(std::is_same_v<typename DS::Scalar, typename DM::Scalar>,
                "q2n::fold: scales and m must share one scalar type; cast one");
  auto& s = const_cast<Eigen::MatrixBase<DS>&>(scales);  // Eigen's idiom for writable expressions
  if (m.cols() != 1 || m.rows() != s.rows())
    detail::fail("q2n::fold: m is ", m.rows(), " x ", m.cols(), " but scales has ", s.rows(),
                 " rows; pass one m entry per row of scales");
  detail::require_finite(m, "q2n::fold", "m");
  s = m.asDiagonal() * s;
}

/// The 16-bit floating-point formats a checkpoint stores scales and other values in.
enum class ValuePrecision {
  f16,   ///< IEEE binary16 (GPTQ, compressed-tensors with float16, every GGUF block scale)
  bf16,  ///< bfloat16
};

/// Rounds every floating-point value the storage keeps to `precision` (nearest, ties to even),
/// as a checkpoint holding the storage in that precision does: uniform scales and offsets,
/// codebook values, full-precision columns, binarized α and μ. Codes, zero points, masks,
/// signs, `perm` and transforms are unchanged. Afterwards `dequantize(storage)` is exactly what
/// such a file decodes to; apply it after `fold` (m is then rounded together with the scale
/// it was folded into) and before evaluating the weights that are exported.
/// \return the number of values that changed
/// \throws NumericalError when a value lies beyond the format's range (f16: |x| > 65504)
template <class Scalar>
Eigen::Index round_values(QuantStorage<Scalar>& storage,
                          ValuePrecision precision = ValuePrecision::f16) {
  const char* fn = "q2n::round_values";
  detail::check_storage(storage, fn);
  Eigen::Index changed = 0;
  auto round_part = [&](auto& part, const char* name) {
    for (Eigen::Index j = 0; j < part.cols(); ++j)
      for (Eigen::Index i = 0; i < part.rows(); ++i) {
        const double v = static_cast<double>(part(i, j));
        const float r = precision == ValuePrecision::f16
                            ? detail::half_to_float(detail::double_to_half(v))
                            : detail::bf16_to_float(detail::double_to_bf16(v));
        if (!std::isfinite(r))
          throw NumericalError(std::string(fn) + ": " + name + "(" + std::to_string(i) + ", " +
                               std::to_string(j) + ") = " + std::to_string(v) + " exceeds the " +
                               (precision == ValuePrecision::f16 ? "f16" : "bf16") +
                               " range; keep this storage in a wider format");
        if (static_cast<double>(r) != v) ++changed;
        part(i, j) = static_cast<Scalar>(r);
      }
  };
  if (auto& u = storage.uniform) {
    round_part(u->scales, "storage.uniform->scales");
    if (u->form == AffineForm::offset) round_part(u->offsets, "storage.uniform->offsets");
  }
  if (auto& c = storage.codebook) round_part(c->values, "storage.codebook->values");
  if (auto& f = storage.full_precision) round_part(f->values, "storage.full_precision->values");
  if (auto& b = storage.binarized) {
    round_part(b->alpha, "storage.binarized->alpha");
    round_part(b->mean, "storage.binarized->mean");
  }
  return changed;
}

/// Assembles and validates a QuantStorage.
///
/// \code
/// auto res = q2n::StorageBuilder<float>(rows, cols, "my-quantizer")
///                .uniform(std::move(grid))
///                .full_precision(std::move(outliers))
///                .result();     // QuantResult: storage checked, Q = dequantize(storage)
/// \endcode
template <class Scalar>
class StorageBuilder {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "q2n::StorageBuilder: Scalar must be float or double");

 public:
  /// \param method any non-empty name; q2n's own quantizers use "rtn", "gptq", "owq", "pbllm"
  StorageBuilder(Eigen::Index rows, Eigen::Index cols, std::string method) {
    if (method.empty()) detail::fail("q2n::StorageBuilder: method is empty; name the quantizer");
    s_.rows = rows;
    s_.cols = cols;
    s_.method = std::move(method);
  }
  StorageBuilder& uniform(UniformGrid<Scalar> grid) { return set(s_.uniform, std::move(grid)); }
  StorageBuilder& codebook(Codebook<Scalar> book) { return set(s_.codebook, std::move(book)); }
  StorageBuilder& full_precision(FullPrecisionColumns<Scalar> f) {
    return set(s_.full_precision, std::move(f));
  }
  StorageBuilder& binarized(BinarizedEntries<Scalar> b) { return set(s_.binarized, std::move(b)); }
  StorageBuilder& transforms(Transforms<Scalar> t) {
    s_.transforms = std::move(t);
    return *this;
  }
  StorageBuilder& perm(Eigen::VectorXi p) {
    s_.perm = std::move(p);
    return *this;
  }
  /// The checked storage (see the invariants in storage.hpp).
  /// \throws std::invalid_argument naming the part and the broken invariant
  QuantStorage<Scalar> build() {
    detail::check_storage(s_, "q2n::StorageBuilder::build");
    return std::move(s_);
  }
  /// build() plus `Q = dequantize(storage)` and the given diagnostics.
  QuantResult<Scalar> result(const QuantDiagnostics& diagnostics = {}) {
    QuantResult<Scalar> r;
    r.storage = build();
    r.Q = dequantize(r.storage);
    r.diagnostics = diagnostics;
    return r;
  }

 private:
  template <class Part, class Value>
  StorageBuilder& set(std::optional<Part>& slot, Value&& v) {
    slot = std::forward<Value>(v);
    return *this;
  }
  QuantStorage<Scalar> s_;
};

/// Wraps a dense matrix (e.g. another tool's output) as a storage whose every column is full
/// precision, so that refine() can fold m into it.
/// \param Q rows × cols, finite
template <class Derived>
QuantResult<typename Derived::Scalar> full_precision_result(const Eigen::MatrixBase<Derived>& Q) {
  using Scalar = typename Derived::Scalar;
  FullPrecisionColumns<Scalar> f;
  f.columns = Eigen::VectorXi::LinSpaced(Q.cols(), 0, static_cast<int>(Q.cols()) - 1);
  f.values = Q;
  return StorageBuilder<Scalar>(Q.rows(), Q.cols(), "full_precision")
      .full_precision(std::move(f))
      .result();
}

}  // namespace q2n
