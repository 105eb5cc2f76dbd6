#pragma once
/// \file detail/parallel.hpp
/// Matrix products whose rounding does not depend on the thread count.
///
/// Eigen's own multithreaded GEMM chooses its depth blocking (kc) from the number of threads,
/// so the same product rounds differently on 1 and 2 threads. Here the output is cut into
/// panels of a fixed width along its longer side, each panel is one single-threaded Eigen
/// product (Eigen runs serially inside an OpenMP parallel region), and the panels are shared
/// among the threads.
/// Every output entry is then computed by the same kernel with the same blocking whatever the
/// number of threads (and whether OpenMP is on at all). Called from inside the caller's own
/// parallel region, the panels run one after the other on the calling thread (Eigen is serial
/// there too).

#include <Eigen/Core>

#include <algorithm>
#include <cstddef>
#include <exception>
#include <type_traits>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace q2n::detail {

/// Width of the output panels: wide enough for Eigen's kernels to reach full speed, narrow
/// enough to give two cores several panels at LLM sizes.
inline constexpr Eigen::Index kPanel = 256;

/// dst = alpha · lhs · rhs + beta · dst (beta 0 or 1), dst with the shape of lhs · rhs.
template <class Dst, class Lhs, class Rhs>
void panel_product(Dst&& dst, const Lhs& lhs, const Rhs& rhs, typename std::decay_t<Dst>::Scalar alpha,
                   bool accumulate) {
  const bool by_rows = dst.rows() > dst.cols();
  const Eigen::Index len = by_rows ? dst.rows() : dst.cols();
  const Eigen::Index panels = (len + kPanel - 1) / kPanel;
  auto panel = [&](Eigen::Index p) {
    const Eigen::Index a = p * kPanel, n = std::min(kPanel, len - a);
    if (by_rows) {
      if (accumulate)
        dst.middleRows(a, n).noalias() += alpha * (lhs.middleRows(a, n) * rhs);
      else
        dst.middleRows(a, n).noalias() = alpha * (lhs.middleRows(a, n) * rhs);
    } else {
      if (accumulate)
        dst.middleCols(a, n).noalias() += alpha * (lhs * rhs.middleCols(a, n));
      else
        dst.middleCols(a, n).noalias() = alpha * (lhs * rhs.middleCols(a, n));
    }
  };
#if defined(_OPENMP)
  // Outside a parallel region, open one even for a single panel: Eigen computes serially
  // exactly when its team has more than one thread or only one thread is available.
  if (!omp_in_parallel()) {
#pragma omp parallel for schedule(static)
    for (Eigen::Index p = 0; p < panels; ++p) panel(p);
    return;
  }
#endif
  for (Eigen::Index p = 0; p < panels; ++p) panel(p);
}

/// Calls f(i) for i in [0, count), each index taken in order by whichever thread is free when
/// not already inside a parallel region (then Eigen products inside f run serially with Eigen's
/// single-thread blocking, as in panel_product); inside one, on the calling thread. Callers
/// number unequal pieces of work heaviest first, so that the last ones taken are the small
/// ones that even out the threads. f(i) must compute the same bits on any thread and must not
/// throw.
template <class F>
void for_each_index(Eigen::Index count, F&& f) {
#if defined(_OPENMP)
  if (!omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1)
    for (Eigen::Index i = 0; i < count; ++i) f(i);
    return;
  }
#endif
  for (Eigen::Index i = 0; i < count; ++i) f(i);
}

/// Calls f(i) for i in [0, count) as tasks of the enclosing OpenMP team, taken by whichever
/// thread is free (inside with_serial_eigen, the team's threads waiting for its single thread),
/// or one after the other without one. Each f(i) must compute the same bits whichever thread
/// runs it (a single-threaded Eigen product does: Eigen is serial inside a parallel region) and
/// must not throw.
template <class F>
void for_each_task(Eigen::Index count, F&& f) {
#if defined(_OPENMP)
  // (An unsigned counter: clang's taskloop compares it with its own unsigned trip count.)
#pragma omp taskloop grainsize(1)
  for (std::size_t i = 0; i < static_cast<std::size_t>(count); ++i) f(static_cast<Eigen::Index>(i));
#else
  for (Eigen::Index i = 0; i < count; ++i) f(i);
#endif
}

/// Runs f() with every Eigen product inside it computed by one thread with Eigen's
/// single-thread blocking, so that f's rounding does not depend on the thread count. For code
/// whose products Eigen makes internally (Householder blocks, eigensolvers) and panel_product
/// cannot reach. Outside a parallel region this opens one (Eigen is serial inside a team of
/// more than one thread) in which a single thread runs f while the others take the tasks f
/// makes (for_each_task); inside one it simply calls f.
template <class F>
void with_serial_eigen(F&& f) {
#if defined(_OPENMP)
  if (!omp_in_parallel() && omp_get_max_threads() > 1) {
    std::exception_ptr error;
#pragma omp parallel
    {
#pragma omp single
      {
        try {
          f();
        } catch (...) {
          error = std::current_exception();
        }
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  f();
}

}  // namespace q2n::detail
