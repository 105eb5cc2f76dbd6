#pragma once
/// \file quantizers/result.hpp
/// The one result type shared by every quantizer: the dequantized weights Q and the storage
/// form they come from, plus diagnostics.
///
/// Storage layout (all matrices column-major, columns in the ORIGINAL order of W):
///
/// | member                | shape            | meaning |
/// |-----------------------|------------------|-----------------------------------------------------|
/// | codes                 | rows × cols      | integer codes q in [0, 2^bits − 1] (0 where unused)
/// | | scales, zeros         | rows × groups    | per (row, group): x̂ = scale · (q − zero) | |
/// g_idx                 | cols             | group of each column; −1 for a non-uniform column   |
/// | perm                  | cols             | processing order: perm[k] = column quantized k-th |
/// | fp_columns, fp_values | n_fp, rows × n_fp| full-precision columns (OWQ) and their values | |
/// salient               | rows × cols      | PB-LLM: 1 = kept at `bits`, 0 = binarized           |
/// | signs                 | rows × cols      | PB-LLM: sign(x − mean) ∈ {−1, 0, +1} of binarized |
/// | bin_alpha, bin_mean   | rows × bin_groups| PB-LLM: x̂ = sign · alpha + mean |
///
/// `Q` is by definition `dequantize(storage)`, bit for bit.
///
/// \code
/// auto res = q2n::gptq(W, H, {.bits = 4, .groupsize = 128});
/// assert(q2n::dequantize(res.storage) == res.Q);   // exact, by construction
/// float s = res.storage.scales(r, res.storage.g_idx(j));
/// \endcode

#include <Eigen/Core>
#include <cstdint>
#include <q2n/detail/check.hpp>
#include <q2n/detail/uniform_kernels.hpp>
#include <q2n/quantizers/kernel_path.hpp>
#include <vector>

namespace q2n {

/// Which algorithm produced a storage form.
enum class QuantMethod {
  rtn,             ///< round to nearest with the uniform quantizer
  gptq,            ///< GPTQ
  owq,             ///< OWQ: GPTQ plus full-precision outlier columns
  pbllm,           ///< PB-LLM: binarized weights plus salient weights at `bits`
  full_precision,  ///< every column stored in full precision (wrapping an external Q)
};

/// Storage form of a quantized weight matrix (see the table in result.hpp).
template <class Scalar>
struct QuantStorage {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Codes = Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic>;

  QuantMethod method = QuantMethod::rtn;
  Eigen::Index rows = 0;
  Eigen::Index cols = 0;
  int bits = 0;                 ///< width of `codes` (PB-LLM: its high bit width)
  bool sym = false;             ///< symmetric grid (zero = 2^(bits−1))
  Eigen::Index groupsize = -1;  ///< uniform-quantizer group size; −1 = one group per row

  Codes codes;            ///< rows × cols
  Matrix scales;          ///< rows × groups
  Matrix zeros;           ///< rows × groups, integer-valued
  Eigen::VectorXi g_idx;  ///< cols
  Eigen::VectorXi perm;   ///< cols; identity unless act-order / OWQ reordered

  Eigen::VectorXi fp_columns;  ///< original indices of the full-precision columns
  Matrix fp_values;            ///< rows × fp_columns.size()

  Eigen::Matrix<std::uint8_t, Eigen::Dynamic, Eigen::Dynamic> salient;  ///< rows × cols or empty
  Eigen::Matrix<std::int8_t, Eigen::Dynamic, Eigen::Dynamic> signs;     ///< rows × cols or empty
  Matrix bin_alpha;                                                     ///< rows × bin_groups
  Matrix bin_mean;                                                      ///< rows × bin_groups
  Eigen::Index bin_groupsize = -1;  ///< columns per binarization group (cols when −1)

  /// Number of uniform groups per row (columns of scales / zeros).
  Eigen::Index groups() const { return scales.cols(); }
};

/// Diagnostics of a quantizer run.
struct QuantDiagnostics {
  /// GPTQ objective over the quantized columns: Σ (w − q)² / d², with w the working weight,
  /// q its quantized value and d the diagonal of the upper Cholesky factor of H⁻¹.
  /// (The reference code prints half of this sum.) 0 for RTN.
  double loss = 0;
  double percdamp = 0;            ///< relative damping finally used (fraction of mean diag H)
  double damping = 0;             ///< absolute damping finally added to diag(H)
  int retries = 0;                ///< Cholesky retries with grown damping (0 = first try worked)
  Eigen::Index dead_columns = 0;  ///< columns with H_jj = 0 (their weights were zeroed)
  /// Wall-clock seconds of the Hessian-based quantizers' phases (all 0 for RTN): the damped
  /// H⁻¹ factorization, the in-block column sweep (quantization and in-block error feedback)
  /// and the lazy updates of the later columns (one matrix product per block).
  struct Seconds {
    double factorization = 0;
    double sweep = 0;
    double lazy_update = 0;
  } seconds;
};

/// Result of every quantizer: Q (rows × cols, original column order) = dequantize(storage).
template <class Scalar>
struct QuantResult {
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> Q;
  QuantStorage<Scalar> storage;
  QuantDiagnostics diagnostics;
};

namespace detail {

template <class Scalar>
void check_storage(const QuantStorage<Scalar>& s, const char* fn) {
  using Index = Eigen::Index;
  const Index rows = s.rows, cols = s.cols;
  if (rows <= 0 || cols <= 0)
    fail(fn, ": storage is ", rows, " x ", cols, "; pass the storage of a quantizer result");
  require_shape(s.codes, rows, cols, fn, "storage.codes");
  if (s.g_idx.size() != cols)
    fail(fn, ": storage.g_idx has ", s.g_idx.size(), " entries but cols = ", cols);
  if (s.perm.size() != cols)
    fail(fn, ": storage.perm has ", s.perm.size(), " entries but cols = ", cols);
  require_shape(s.scales, rows, -1, fn, "storage.scales");
  require_shape(s.zeros, rows, s.scales.cols(), fn, "storage.zeros (must match scales)");
  require_shape(s.fp_values, rows, s.fp_columns.size(), fn,
                "storage.fp_values (rows x fp_columns.size())");
  for (Index j = 0; j < cols; ++j)
    if (s.g_idx(j) < -1 || s.g_idx(j) >= s.scales.cols())
      fail(fn, ": storage.g_idx(", j, ") = ", s.g_idx(j), " is outside -1..", s.scales.cols() - 1);
  for (Index k = 0; k < s.fp_columns.size(); ++k)
    if (s.fp_columns(k) < 0 || s.fp_columns(k) >= cols)
      fail(fn, ": storage.fp_columns(", k, ") = ", s.fp_columns(k), " is outside 0..", cols - 1);
  if (s.method == QuantMethod::pbllm) {
    require_shape(s.salient, rows, cols, fn, "storage.salient");
    require_shape(s.signs, rows, cols, fn, "storage.signs");
    const Index bg = s.bin_groupsize == -1 ? cols : s.bin_groupsize;
    if (bg <= 0 || cols % bg != 0)
      fail(fn, ": storage.bin_groupsize = ", s.bin_groupsize, " does not divide cols = ", cols);
    require_shape(s.bin_alpha, rows, cols / bg, fn, "storage.bin_alpha");
    require_shape(s.bin_mean, rows, cols / bg, fn, "storage.bin_mean");
  }
}

}  // namespace detail

/// Reconstructs the dequantized weights from a storage form.
///
/// Per column j (original order): a full-precision column copies fp_values; otherwise
/// `x̂ = scales(r, g) · (codes(r, j) − zeros(r, g))` with g = g_idx(j); for PB-LLM the
/// binarized entries (salient(r, j) == 0) are `signs(r, j) · bin_alpha(r, b) + bin_mean(r, b)`
/// with b = j / bin_groupsize. This is the definition of Q: every quantizer's result.Q equals
/// dequantize(result.storage) bit for bit.
/// \param storage a quantizer's storage (possibly refined by refine_quantized)
/// \param path    kernel implementation (both give identical results)
/// \return Q, rows × cols
template <class Scalar>
Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> dequantize(
    const QuantStorage<Scalar>& storage, KernelPath path = KernelPath::simd) {
  using Index = Eigen::Index;
  const char* fn = "q2n::dequantize";
  detail::check_storage(storage, fn);
  const Index rows = storage.rows, cols = storage.cols;
  Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> Q(rows, cols);
  std::vector<Index> fp_of(static_cast<std::size_t>(cols), -1);
  for (Index k = 0; k < storage.fp_columns.size(); ++k) fp_of[storage.fp_columns(k)] = k;
  const bool pb = storage.method == QuantMethod::pbllm;
  const Index bg = storage.bin_groupsize == -1 ? cols : storage.bin_groupsize;

  for (Index j = 0; j < cols; ++j) {
    if (fp_of[j] >= 0) {
      Q.col(j) = storage.fp_values.col(fp_of[j]);
      continue;
    }
    const int g = storage.g_idx(j);
    if (g >= 0)
      detail::dequantize_span(storage.codes.col(j).data(), storage.scales.col(g).data(),
                              storage.zeros.col(g).data(), rows, Q.col(j).data(), path);
    else
      Q.col(j).setZero();
    if (pb) {
      const Index b = j / bg;
      for (Index r = 0; r < rows; ++r)
        if (!storage.salient(r, j))
          Q(r, j) = static_cast<Scalar>(storage.signs(r, j)) * storage.bin_alpha(r, b) +
                    storage.bin_mean(r, b);
    }
  }
  return Q;
}

/// Wraps a dense matrix (e.g. produced by another tool) as a storage form in which every
/// column is full precision, so that refine_quantized() can refine it.
/// \param Q rows × cols, finite
template <class Derived>
QuantResult<typename Derived::Scalar> full_precision_result(const Eigen::MatrixBase<Derived>& Q) {
  using Scalar = typename Derived::Scalar;
  const char* fn = "q2n::full_precision_result";
  if (Q.rows() == 0 || Q.cols() == 0)
    detail::fail(fn, ": Q is ", Q.rows(), " x ", Q.cols(), "; pass a non-empty matrix");
  detail::require_finite(Q, fn, "Q");
  QuantResult<Scalar> res;
  auto& s = res.storage;
  s.method = QuantMethod::full_precision;
  s.rows = Q.rows();
  s.cols = Q.cols();
  s.codes = QuantStorage<Scalar>::Codes::Zero(s.rows, s.cols);
  s.scales.resize(s.rows, 0);
  s.zeros.resize(s.rows, 0);
  s.g_idx = Eigen::VectorXi::Constant(s.cols, -1);
  s.perm = Eigen::VectorXi::LinSpaced(s.cols, 0, static_cast<int>(s.cols) - 1);
  s.fp_columns = s.perm;
  s.fp_values = Q;
  res.Q = dequantize(s);
  return res;
}

}  // namespace q2n
