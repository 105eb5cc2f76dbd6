#pragma once
/// \file quantizers/rtn.hpp
/// Round to nearest: the uniform quantizer alone, per row or per group of columns.
///
/// \code
/// auto res = q2n::rtn(W, {.bits = 4, .groupsize = 128});
/// // res.Q: dequantized weights; res.storage: codes, scales, zeros, g_idx
/// \endcode

#include <Eigen/Core>
#include <q2n/detail/quant_checks.hpp>
#include <q2n/detail/uniform_fit.hpp>
#include <q2n/detail/uniform_kernels.hpp>
#include <q2n/quantizers/kernel_path.hpp>
#include <q2n/quantizers/result.hpp>

namespace q2n {

/// Settings of rtn().
struct RtnOptions {
  int bits = 4;                 ///< 2..8
  Eigen::Index groupsize = -1;  ///< −1: one group per row, else a divisor of cols
  bool sym = false;             ///< symmetric grid
  bool mse = false;             ///< MSE grid search (norm 2.4, 80 shrink steps of 1%)
  KernelPath kernel = KernelPath::simd;
};

/// Round-to-nearest quantization of W.
/// \param W rows × cols weights, finite, float or double, any storage order
/// \param options bits, groupsize, sym, mse, kernel
/// \return Q and its storage (method rtn, identity perm, g_idx(j) = j / groupsize)
/// \throws std::invalid_argument on bad bits / groupsize or non-finite W
template <class Derived>
QuantResult<typename Derived::Scalar> rtn(const Eigen::MatrixBase<Derived>& W,
                                          const RtnOptions& options = {}) {
  using Scalar = typename Derived::Scalar;
  using Index = Eigen::Index;
  detail::static_check_scalar<Scalar>();
  const char* fn = "q2n::rtn";
  detail::check_bits(options.bits, fn);
  detail::check_weights(W, fn);
  detail::check_groupsize(options.groupsize, W.cols(), fn);

  const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> w = W;
  const Index rows = w.rows(), cols = w.cols();
  const Index gs = options.groupsize == -1 ? cols : options.groupsize;
  const Index groups = cols / gs;

  QuantResult<Scalar> res;
  auto& s = res.storage;
  s.method = QuantMethod::rtn;
  s.rows = rows;
  s.cols = cols;
  s.bits = options.bits;
  s.sym = options.sym;
  s.groupsize = options.groupsize;
  s.codes.resize(rows, cols);
  s.scales.resize(rows, groups);
  s.zeros.resize(rows, groups);
  s.g_idx.resize(cols);
  s.perm = Eigen::VectorXi::LinSpaced(cols, 0, static_cast<int>(cols) - 1);
  s.fp_values.resize(rows, 0);

  detail::UniformSpec spec;
  spec.bits = options.bits;
  spec.sym = options.sym;
  spec.mse = options.mse;
  spec.kernel = options.kernel;
  detail::UniformFitter<Scalar> fitter(rows, spec);
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> xhat(rows);
  for (Index g = 0; g < groups; ++g) {
    fitter.fit(w.col(g * gs).data(), rows, gs, s.scales.col(g).data(), s.zeros.col(g).data());
    for (Index j = g * gs; j < (g + 1) * gs; ++j) {
      s.g_idx(j) = static_cast<int>(g);
      detail::quantize_span(w.col(j).data(), s.scales.col(g).data(), s.zeros.col(g).data(),
                            fitter.maxq(), rows, xhat.data(), s.codes.col(j).data(),
                            options.kernel);
    }
  }
  res.Q = dequantize(s, options.kernel);
  return res;
}

}  // namespace q2n
