#pragma once
/// \file detail/uniform_fit.hpp
/// Fitting GPTQ's uniform affine quantizer to the rows of a column block, allocation-free
/// after construction (the GPTQ sweep refits groups inside its column loop).

#include <Eigen/Core>
#include <cmath>
#include <limits>
#include <q2n/detail/check.hpp>
#include <q2n/detail/uniform_kernels.hpp>
#include <vector>

namespace q2n::detail {

/// The uniform quantizer's settings as the fitting code needs them.
struct UniformSpec {
  int bits = 4;
  bool sym = false;
  bool mse = false;
  double mse_norm = 2.4;
  int mse_grid = 100;
  double mse_maxshrink = 0.8;
};

/// Fits per-row (scale, zero) to column blocks of a fixed number of rows.
template <class T>
class UniformFitter {
 public:
  using Index = Eigen::Index;

  /// \param fn the public function's name, for error messages
  UniformFitter(Index rows, const UniformSpec& spec, const char* fn)
      : fn_(fn),
        rows_(rows),
        spec_(spec),
        path_(kernel_path()),
        maxq_(static_cast<T>((1 << spec.bits) - 1)),
        mn_(rows),
        mx_(rows),
        xmin_(rows),
        xmax_(rows),
        s1_(spec.mse ? rows : 0),
        z1_(spec.mse ? rows : 0),
        err_(spec.mse ? rows : 0),
        best_(spec.mse ? rows : 0) {}

  T maxq() const { return maxq_; }

  /// Fits every row of the block `X[0:rows, 0:ncols]` (column-major, leading dimension ld).
  /// \param scale,zero outputs, one entry per row
  void fit(const T* X, Index ld, Index ncols, T* scale, T* zero) {
    const KernelPath path = path_;
    for (Index r = 0; r < rows_; ++r) mn_[r] = mx_[r] = X[r];
    for (Index c = 1; c < ncols; ++c)
      minmax_update(X + c * ld, rows_, mn_.data(), mx_.data(), path);

    const T sym_zero = (maxq_ + T(1)) / T(2);
    for (Index r = 0; r < rows_; ++r) {
      // min(row, 0) and max(row, 0); written so that a zero is always +0 in both kernel forms.
      T xmin = mn_[r] < T(0) ? mn_[r] : T(0);
      T xmax = mx_[r] > T(0) ? mx_[r] : T(0);
      if (spec_.sym) {
        xmax = std::max(std::abs(xmin), xmax);
        if (xmin < T(0)) xmin = -xmax;
      }
      if (xmin == T(0) && xmax == T(0)) {
        xmin = T(-1);
        xmax = T(1);
      }
      if (!std::isfinite(xmax - xmin))
        fail(fn_, ": the weights of row ", r, " span [", static_cast<double>(xmin), ", ",
             static_cast<double>(xmax), "], a range this scalar type cannot represent; scale "
             "the weights down or quantize in double");
      xmin_[r] = xmin;
      xmax_[r] = xmax;
      scale[r] = scale_of(xmin, xmax);
      zero[r] = spec_.sym ? sym_zero : zero_of(xmin, scale[r]);
    }
    if (!spec_.mse) return;

    const T norm = static_cast<T>(spec_.mse_norm);
    const int steps = static_cast<int>(spec_.mse_maxshrink * spec_.mse_grid);
    for (Index r = 0; r < rows_; ++r) best_[r] = std::numeric_limits<T>::infinity();
    for (int i = 0; i < steps; ++i) {
      const T p = static_cast<T>(1.0 - static_cast<double>(i) / spec_.mse_grid);
      for (Index r = 0; r < rows_; ++r) {
        const T xmin1 = p * xmin_[r];
        const T xmax1 = p * xmax_[r];
        s1_[r] = scale_of(xmin1, xmax1);
        z1_[r] = spec_.sym ? sym_zero : zero_of(xmin1, s1_[r]);
        err_[r] = T(0);
      }
      for (Index c = 0; c < ncols; ++c)
        grid_error_update(X + c * ld, s1_.data(), z1_.data(), maxq_, norm, rows_, err_.data(),
                          path);
      for (Index r = 0; r < rows_; ++r)
        if (err_[r] < best_[r]) {
          best_[r] = err_[r];
          scale[r] = s1_[r];
          zero[r] = z1_[r];
        }
    }
  }

 private:
  T scale_of(T xmin, T xmax) const {
    const T s = (xmax - xmin) / maxq_;
    // Only a range below maxq · denorm_min underflows; keep the scale positive so x / s is finite.
    return s > T(0) ? s : std::numeric_limits<T>::denorm_min();
  }
  static T zero_of(T xmin, T scale) { return std::nearbyint(-xmin / scale) + T(0); }

  const char* fn_;
  Index rows_;
  UniformSpec spec_;
  KernelPath path_;
  T maxq_;
  std::vector<T> mn_, mx_, xmin_, xmax_, s1_, z1_, err_, best_;
};

}  // namespace q2n::detail
