#pragma once
/// \file quantizers/rtn.hpp
/// Round to nearest: the uniform quantizer alone, per row or per group of columns.
///
/// \code
/// q2n::RtnOptions o;
/// o.grid.bits = 4;
/// o.groupsize = 128;
/// auto res = q2n::rtn(W, o);
/// // res.Q: dequantized weights; res.storage.uniform: codes, scales, zeros, g_idx
/// \endcode

#include <Eigen/Core>
#include <q2n/detail/quant_checks.hpp>
#include <q2n/detail/uniform_fit.hpp>
#include <q2n/detail/uniform_kernels.hpp>
#include <q2n/quantizers/options.hpp>
#include <q2n/storage.hpp>

namespace q2n {

/// Settings of rtn().
struct RtnOptions {
  UniformOptions grid;          ///< bits, sym, mse
  Eigen::Index groupsize = -1;  ///< −1: one group per row, else a divisor of cols
};

namespace detail {
template <class Scalar>
QuantResult<Scalar> rtn_impl(const Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>& w,
                             const RtnOptions& options) {
  using Index = Eigen::Index;
  const char* fn = "q2n::rtn";
  const Index rows = w.rows(), cols = w.cols();
  const Index gs = options.groupsize == -1 ? cols : options.groupsize;
  const Index groups = cols / gs;

  UniformGrid<Scalar> u = empty_grid<Scalar>(options.grid, rows, cols, groups);
  u.g_idx = group_index(cols, options.groupsize);
  UniformFitter<Scalar> fitter(rows, to_spec(options.grid), fn);
  Eigen::Matrix<Scalar, Eigen::Dynamic, 1> xhat(rows);
  for (Index g = 0; g < groups; ++g) {
    fitter.fit(w.col(g * gs).data(), rows, gs, u.scales.col(g).data(), u.zeros.col(g).data());
    for (Index j = g * gs; j < (g + 1) * gs; ++j)
      quantize_span(w.col(j).data(), u.scales.col(g).data(), u.zeros.col(g).data(),
                    fitter.maxq(), rows, xhat.data(), u.codes.col(j).data(), kernel_path());
  }
  return StorageBuilder<Scalar>(rows, cols, "rtn").uniform(std::move(u)).result();
}
}  // namespace detail

/// Round-to-nearest quantization of W.
/// \param W rows × cols weights, finite, float or double, any storage order
/// \param options grid (bits, sym, mse) and groupsize
/// \return Q and its storage (method "rtn", a uniform grid with g_idx(j) = j / groupsize)
/// \throws std::invalid_argument on bad options or non-finite W
template <class Derived>
QuantResult<typename Derived::Scalar> rtn(const Eigen::MatrixBase<Derived>& W,
                                          const RtnOptions& options = {}) {
  using Scalar = typename Derived::Scalar;
  detail::static_check_scalar<Scalar>();
  const char* fn = "q2n::rtn";
  detail::check_grid(options.grid, fn);
  detail::check_weights(W, fn);
  detail::check_groupsize(options.groupsize, W.cols(), fn);
  return detail::rtn_impl<Scalar>(W, options);
}

}  // namespace q2n
