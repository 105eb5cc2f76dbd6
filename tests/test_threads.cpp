// Results must not depend on the thread count: q2n's matrix products split their output into
// panels of a fixed size (detail/parallel.hpp) instead of letting Eigen choose its blocking
// from the number of threads, and the null space's routes run Eigen single-threaded, so 1 and
// 2 threads give the same bits: H, GPTQ's and QuIP's Q, the blocked H⁻¹ factor, every route's
// kept basis, and m. Nor, after pin_product_blocking(), on the L1 cache size Eigen detects.
#include <q2n/projection.hpp>
#include <q2n/detail/hessian_inverse.hpp>
#include <q2n/quantizers.hpp>
#include <q2n/reproducibility.hpp>

#include <doctest/doctest.h>
#include <omp.h>

#include "test_util.hpp"

#include <utility>
#include <vector>

namespace {

template <class T>
struct Run {
  Eigen::MatrixXd h;
  Eigen::Index kept_dense = 0, kept_partial = 0;
  q2n_test::Mat<T> gptq_q, quip_kron_q, quip_had_q, u_blocked;
  Eigen::Matrix<T, Eigen::Dynamic, 1> m, m_own;
  std::vector<q2n_test::Mat<T>> bases;  // kept basis of each route
};

// Sizes above Eigen's threshold for splitting a GEMM across threads.
template <class T>
Run<T> run_with_threads(int threads, const Eigen::MatrixXd& h_shared,
                        const q2n::NullSpace<T>& shared_ns) {
  omp_set_num_threads(threads);
  Eigen::setNbThreads(threads);
  REQUIRE(Eigen::nbThreads() == threads);
  const q2n_test::Mat<T> x = q2n_test::structured_activations<T>(512, 640, 12, 3, 1e-2);
  const q2n_test::Mat<T> w = q2n_test::gaussian<T>(256, 640, 4, 0.05);
  Run<T> out;
  q2n::HessianAccumulator acc(640);
  acc.add(x);
  out.h = acc.hessian();
  const q2n_test::Mat<T> abar = x.topRows(400);
  const auto gram = q2n::NullSpace<T>::compute(abar, {0.1, q2n::CutRule::paper, q2n::SpectrumRoute::gram});
  out.kept_dense = gram.kept();
  const auto partial = q2n::NullSpace<T>::compute(abar, {0.1, q2n::CutRule::paper,
                                                         q2n::SpectrumRoute::partial});
  out.kept_partial = partial.kept();
  const auto covariance =
      q2n::NullSpace<T>::compute(abar, {0.1, q2n::CutRule::paper, q2n::SpectrumRoute::covariance});
  // Ā with more positions than columns: the partial route on ĀᵀĀ.
  const auto tall = q2n::NullSpace<T>::compute(x.leftCols(450).eval(), {0.1, q2n::CutRule::paper,
                                                                        q2n::SpectrumRoute::partial});
  out.bases = {gram.kept_basis(), partial.kept_basis(), covariance.kept_basis(), tall.kept_basis()};
  // GPTQ from one shared H, so only GPTQ's own products differ between the runs.
  q2n::GptqOptions opt;
  opt.grid.bits = 3;
  opt.groupsize = 128;
  out.gptq_q = q2n::gptq(w, h_shared.cast<T>().eval(), opt).Q;
  out.m = q2n::equivalent_vector(w, out.gptq_q, shared_ns);
  // The blocked H⁻¹ factorization (from 1024 columns): U of a 1100 × 1100 H.
  {
    const q2n_test::Mat<T> r = q2n_test::gaussian<T>(1100, 64, 9);
    q2n_test::Mat<T> hb = r * r.transpose();
    hb.diagonal().array() += T(1);
    std::vector<int> perm(1100);
    for (int i = 0; i < 1100; ++i) perm[static_cast<std::size_t>(i)] = (i * 7) % 1100;
    q2n::QuantDiagnostics d;
    out.u_blocked = q2n::detail::damped_inverse_cholesky<T>(std::move(hb), perm, 0.01, 0, false, d, "test");
  }
  // QuIP: both transforms from both sides (640 = 16 · 40 Kronecker, 20 · 32 Hadamard).
  q2n::QuipOptions qo;
  out.quip_kron_q = q2n::quip(w, h_shared.cast<T>().eval(), qo).Q;
  qo.incoherence = q2n::Incoherence::hadamard;
  out.quip_had_q = q2n::quip(w, h_shared.cast<T>().eval(), qo).Q;
  out.m_own = q2n::refine(w, out.gptq_q, partial).m;  // with this run's own null space
  return out;
}

// The H and the null space both runs of a test share.
template <class T>
struct Shared {
  Eigen::MatrixXd h;
  q2n::NullSpace<T> ns;
};

template <class T>
Shared<T> shared_inputs() {
  q2n::HessianAccumulator acc(640);
  acc.add(q2n_test::structured_activations<double>(512, 640, 12, 3, 1e-2));
  return {acc.hessian(),
          q2n::NullSpace<T>::compute(
              q2n_test::structured_activations<T>(512, 640, 12, 3, 1e-2).topRows(400).eval())};
}

template <class T>
void check_same_bits(const Run<T>& a, const Run<T>& b) {
  CHECK(a.h == b.h);
  CHECK(a.gptq_q == b.gptq_q);
  CHECK(a.quip_kron_q == b.quip_kron_q);
  CHECK(a.quip_had_q == b.quip_had_q);
  CHECK(a.u_blocked == b.u_blocked);
  CHECK(a.m == b.m);
  CHECK(a.m_own == b.m_own);
  REQUIRE(a.bases.size() == b.bases.size());
  for (std::size_t k = 0; k < a.bases.size(); ++k) {
    CAPTURE(k);
    CHECK(a.bases[k].cols() > 0);
    CHECK(a.bases[k] == b.bases[k]);
  }
  CHECK(a.kept_dense == b.kept_dense);
  CHECK(a.kept_partial == b.kept_partial);
}

}  // namespace

TEST_CASE_TEMPLATE("H, GPTQ and the equivalent vector do not depend on the thread count", T, Q2N_TEST_SCALARS) {
  REQUIRE(omp_get_num_procs() >= 1);
  const int threads_before = omp_get_max_threads();
  const Shared<T> in = shared_inputs<T>();
  const Run<T> one = run_with_threads<T>(1, in.h, in.ns);
  const Run<T> two = run_with_threads<T>(2, in.h, in.ns);
  omp_set_num_threads(threads_before);
  Eigen::setNbThreads(0);  // back to OpenMP's default
  // Bit for bit: every product is the same panel kernel with the same blocking either way.
  check_same_bits(one, two);
  // The null space's kept count agrees across routes.
  CHECK(one.kept_partial == one.kept_dense);
}

// Two machines that differ only in the L1 size Eigen detects, 8 KiB and 64 KiB: the products'
// inner dimensions here (512 tokens, 640 columns) are summed in runs of different lengths on
// the two, for any SIMD instruction set. Unpinned, the bits differ; pinned, they do not.
TEST_CASE_TEMPLATE("pin_product_blocking: the same bits whatever L1 size Eigen detects", T, Q2N_TEST_SCALARS) {
  const std::ptrdiff_t l1 = Eigen::l1CacheSize(), l2 = Eigen::l2CacheSize(), l3 = Eigen::l3CacheSize();
  const int threads_before = omp_get_max_threads();
  const Shared<T> in = shared_inputs<T>();
  const auto on_machine = [&](std::ptrdiff_t machine_l1, bool pin) {
    Eigen::setCpuCacheSizes(machine_l1, 1 << 20, 32 << 20);
    if (pin) q2n::pin_product_blocking();
    return run_with_threads<T>(1, in.h, in.ns);
  };
  const Run<T> small = on_machine(8 << 10, false), large = on_machine(64 << 10, false);
  const Run<T> small_pinned = on_machine(8 << 10, true), large_pinned = on_machine(64 << 10, true);
  CHECK(Eigen::l1CacheSize() == q2n::kPinnedL1);
  CHECK(Eigen::l2CacheSize() == q2n::kPinnedL2);
  CHECK(Eigen::l3CacheSize() == q2n::kPinnedL3);
  Eigen::setCpuCacheSizes(l1, l2, l3);
  omp_set_num_threads(threads_before);
  Eigen::setNbThreads(0);
  // Unpinned: H and the H⁻¹ factor (inner dimensions 512 and up to 1100) round differently.
  CHECK_FALSE(small.h == large.h);
  CHECK_FALSE(small.u_blocked == large.u_blocked);
  // Pinned: everything is the same.
  check_same_bits(small_pinned, large_pinned);
}
