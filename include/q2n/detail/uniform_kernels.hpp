#pragma once
/// \file detail/uniform_kernels.hpp
/// Hot loops of the uniform affine quantizer, in two interchangeable forms: xsimd batches
/// across rows, and plain scalar code. Both evaluate exactly the same IEEE operations in the
/// same order for every element, so their results are bit-identical:
///
///   t  = nearbyint(x / s) + z          (round half to even, like torch.round)
///   t  = min(max(t, 0), maxq)          (the integer code, held in floating point)
///   x̂  = s · (t − z)
///   e  = |x̂ − x|^norm                  (MSE grid search only)
///
/// Rounding uses xsimd::nearbyint / std::nearbyint (half to even in the default rounding
/// mode), not xsimd::round, which rounds half away from zero.
///
/// All kernels work on one column of a column-major matrix at a time and vectorize across
/// rows, so that every per-row accumulation (min/max, grid error) is a plain sequential sum
/// over the columns in both forms.
///
/// \note Bit identity assumes the default floating-point environment (round to nearest). The
/// kernels contain no `a·b ± c` that a compiler could contract into a fused multiply-add
/// (`s·(t − z)` multiplies an exact difference), so `-mfma` does not change them.
/// `|e|^norm` is evaluated by xsimd::pow in both forms (a one-lane use in the scalar form), so
/// the two forms agree on it too.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <xsimd/xsimd.hpp>

namespace q2n::detail {

/// Which implementation runs the element-wise loops. Both give bit-identical results; the
/// scalar one exists as a reference for the tests.
enum class KernelPath { simd, scalar };

/// The path the quantizers take on this thread (simd unless a test switches it).
inline KernelPath& kernel_path() noexcept {
  static thread_local KernelPath path = KernelPath::simd;
  return path;
}

/// Scalar form of the code computation (x / s, round half-even, shift, clamp).
template <class T>
inline T uniform_level(T x, T s, T z, T maxq) noexcept {
  T t = std::nearbyint(x / s) + z;
  t = std::max(t, T(0));
  t = std::min(t, maxq);
  return t;
}

#if !defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
/// Batch form of uniform_level: the same operations, lane by lane.
template <class T, class A>
inline xsimd::batch<T, A> uniform_level(const xsimd::batch<T, A>& x, const xsimd::batch<T, A>& s,
                                        const xsimd::batch<T, A>& z,
                                        const xsimd::batch<T, A>& maxq) noexcept {
  return xsimd::min(xsimd::max(xsimd::nearbyint(x / s) + z, xsimd::batch<T, A>(T(0))), maxq);
}
#endif

/// |e|^norm, evaluated with xsimd::pow on one lane so that it matches the batch form.
template <class T>
inline T abs_pow(T e, T norm) noexcept {
#if defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
  return std::pow(std::abs(e), norm);
#else
  using B = xsimd::batch<T>;
  return xsimd::pow(xsimd::abs(B(e)), B(norm)).get(0);
#endif
}

/// Quantizes n values with per-element scale and zero.
/// \param x,s,z  inputs (length n)
/// \param xhat   dequantized output (length n)
/// \param codes  integer codes output (length n), or nullptr
template <class T>
void quantize_span(const T* x, const T* s, const T* z, T maxq, Eigen::Index n, T* xhat,
                   std::uint8_t* codes, KernelPath path) noexcept {
  Eigen::Index i = 0;
#if !defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
  if (path == KernelPath::simd) {
    using B = xsimd::batch<T>;
    constexpr Eigen::Index N = static_cast<Eigen::Index>(B::size);
    const B top(maxq);
    alignas(64) T buf[N];
    for (; i + N <= n; i += N) {
      const B vs = B::load_unaligned(s + i);
      const B vz = B::load_unaligned(z + i);
      const B t = uniform_level(B::load_unaligned(x + i), vs, vz, top);
      const B xh = vs * (t - vz);
      xh.store_unaligned(xhat + i);
      if (codes) {
        t.store_aligned(buf);
        for (Eigen::Index k = 0; k < N; ++k) codes[i + k] = static_cast<std::uint8_t>(buf[k]);
      }
    }
  }
#endif
  for (; i < n; ++i) {
    const T t = uniform_level(x[i], s[i], z[i], maxq);
    xhat[i] = s[i] * (t - z[i]);
    if (codes) codes[i] = static_cast<std::uint8_t>(t);
  }
}

/// Running per-row minimum and maximum: mn = min(mn, x), mx = max(mx, x) over n rows.
template <class T>
void minmax_update(const T* x, Eigen::Index n, T* mn, T* mx, KernelPath path) noexcept {
  Eigen::Index i = 0;
#if !defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
  if (path == KernelPath::simd) {
    using B = xsimd::batch<T>;
    constexpr Eigen::Index N = static_cast<Eigen::Index>(B::size);
    for (; i + N <= n; i += N) {
      const B vx = B::load_unaligned(x + i);
      xsimd::min(B::load_unaligned(mn + i), vx).store_unaligned(mn + i);
      xsimd::max(B::load_unaligned(mx + i), vx).store_unaligned(mx + i);
    }
  }
#endif
  for (; i < n; ++i) {
    mn[i] = std::min(mn[i], x[i]);
    mx[i] = std::max(mx[i], x[i]);
  }
}

/// Grid-search error accumulation: err[r] += |s·(code − z) − x|^norm for one column.
template <class T>
void grid_error_update(const T* x, const T* s, const T* z, T maxq, T norm, Eigen::Index n, T* err,
                       KernelPath path) noexcept {
  Eigen::Index i = 0;
#if !defined(XSIMD_NO_SUPPORTED_ARCHITECTURE)
  if (path == KernelPath::simd) {
    using B = xsimd::batch<T>;
    constexpr Eigen::Index N = static_cast<Eigen::Index>(B::size);
    const B top(maxq), p(norm);
    for (; i + N <= n; i += N) {
      const B vx = B::load_unaligned(x + i);
      const B vs = B::load_unaligned(s + i);
      const B vz = B::load_unaligned(z + i);
      const B t = uniform_level(vx, vs, vz, top);
      const B xh = vs * (t - vz);
      const B e = xsimd::pow(xsimd::abs(xh - vx), p);
      (B::load_unaligned(err + i) + e).store_unaligned(err + i);
    }
  }
#endif
  for (; i < n; ++i) {
    const T t = uniform_level(x[i], s[i], z[i], maxq);
    const T xh = s[i] * (t - z[i]);
    err[i] = err[i] + abs_pow(xh - x[i], norm);
  }
}

}  // namespace q2n::detail
