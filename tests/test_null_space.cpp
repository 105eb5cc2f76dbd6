#include <q2n/detail/block_krylov.hpp>
#include <q2n/null_space.hpp>

#include <doctest/doctest.h>

#include <Eigen/QR>

#include <cmath>
#include <limits>
#include <string>

#include "test_util.hpp"

using q2n_test::Mat;
using q2n_test::structured_activations;

namespace {
// Dense projector I − U1 U1ᵀ, formed only in tests.
template <class T>
Eigen::MatrixXd dense_p(const q2n::NullSpace<T>& ns) {
  const Eigen::MatrixXd u = ns.kept_basis().template cast<double>();
  return Eigen::MatrixXd::Identity(ns.cols(), ns.cols()) - u * u.transpose();
}
// Relative rounding scale of T: the tolerances below are multiples of it.
template <class T>
double eps() { return std::numeric_limits<T>::epsilon(); }
}  // namespace

TEST_CASE_TEMPLATE("NullSpace: P is a symmetric idempotent projector that annihilates Ā", T, Q2N_TEST_SCALARS) {
  const Eigen::Index cols = 48, seqlen = 32;
  const Mat<T> abar = structured_activations<T>(seqlen, cols, 6, 3);
  for (auto route : {q2n::SpectrumRoute::covariance, q2n::SpectrumRoute::gram}) {
    CAPTURE(static_cast<int>(route));
    const auto ns = q2n::NullSpace<T>::compute(abar, {0.1, q2n::CutRule::paper, route});
    REQUIRE(ns.cut().found);
    CHECK(ns.route() == route);
    const Eigen::Index r = ns.kept();
    CHECK(r >= 2);
    CHECK(r < cols);
    const Eigen::MatrixXd p = dense_p(ns);
    // Orthonormal U1 makes P exactly symmetric (up to rounding) and idempotent; errors scale
    // with cols·eps of the eigensolver.
    const double tol = 100 * cols * eps<T>();
    CHECK((p - p.transpose()).cwiseAbs().maxCoeff() <= tol);
    CHECK((p * p - p).cwiseAbs().maxCoeff() <= tol);
    CHECK(std::abs(p.trace() - double(cols - r)) <= tol * cols);
    // ‖Ā P‖_F² = Σ_{j≥r} s_j exactly: the energy P leaves is the discarded tail, which the cut
    // rule bounds by t times (part of) the head.
    const Eigen::MatrixXd a = abar.template cast<double>();
    const auto& s = ns.eigenvalues();
    const double tail = s.tail(cols - r).sum();
    CHECK((a * p).squaredNorm() == doctest::Approx(tail).epsilon(1e-3).scale(s.sum() * tol));
    CHECK(tail <= 0.1 * s.segment(1, r - 1).sum() * (1 + 1e-3));
    // Eigenvalues agree with a double-precision eigensolver of ĀᵀĀ (relative to s0).
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> ref(a.transpose() * a);
    const Eigen::VectorXd sref = ref.eigenvalues().reverse().cwiseMax(0.0);
    CHECK((s - sref).cwiseAbs().maxCoeff() <= 50 * cols * eps<T>() * sref(0));
    // project / complement agree with the dense P and sum to the identity map.
    const Mat<T> m = q2n_test::gaussian<T>(5, cols, 9);
    const Eigen::MatrixXd md = m.template cast<double>();
    CHECK((ns.project(m).template cast<double>() - md * p).cwiseAbs().maxCoeff() <= tol * 10);
    CHECK((ns.complement(m).template cast<double>() - (md - md * p)).cwiseAbs().maxCoeff() <=
          tol * 10);
  }
}

TEST_CASE_TEMPLATE("NullSpace: covariance and Gram routes give the same projector", T, Q2N_TEST_SCALARS) {
  // T < cols (Gram is the cheap route) and T > cols (Gram is the larger matrix).
  for (auto shape : {std::pair<Eigen::Index, Eigen::Index>{24, 64}, {80, 40}}) {
    const Mat<T> abar = structured_activations<T>(shape.first, shape.second, 5, 21, 1e-2);
    const auto cov =
        q2n::NullSpace<T>::compute(abar, {0.1, q2n::CutRule::paper, q2n::SpectrumRoute::covariance});
    const auto gram =
        q2n::NullSpace<T>::compute(abar, {0.1, q2n::CutRule::paper, q2n::SpectrumRoute::gram});
    REQUIRE(cov.cut().found);
    CHECK(gram.cut().kept == cov.cut().kept);
    CHECK(gram.route() == q2n::SpectrumRoute::gram);
    // Eigenvectors are unique only up to sign (and rotation within ties), the projector is not.
    // Its accuracy is that of the eigenvectors: eps·s0/gap, a few thousand eps here.
    const double tol = std::is_same_v<T, float> ? 2e-3 : 1e-10;
    CHECK((dense_p(cov) - dense_p(gram)).cwiseAbs().maxCoeff() <= tol);
    CHECK((cov.eigenvalues() - gram.eigenvalues()).cwiseAbs().maxCoeff() <=
          tol * cov.eigenvalues()(0));
    const auto automatic = q2n::NullSpace<T>::compute(abar);
    CHECK(automatic.route() == (shape.first < shape.second ? q2n::SpectrumRoute::gram
                                                           : q2n::SpectrumRoute::covariance));
  }
}

TEST_CASE_TEMPLATE("NullSpace: no cut means P = I", T, Q2N_TEST_SCALARS) {
  // Two inputs: the paper rule needs at least three eigenvalues, so no cut exists whatever the
  // data (a structural case, independent of rounding).
  const Mat<T> m2 = q2n_test::gaussian<T>(3, 2, 6);
  const auto ns2 = q2n::NullSpace<T>::compute(q2n_test::gaussian<T>(5, 2, 7));
  CHECK_FALSE(ns2.cut().found);
  CHECK(ns2.kept() == 0);
  CHECK(ns2.project(m2) == m2);
  CHECK(ns2.complement(m2).isZero(0));
  const auto id = q2n::NullSpace<T>::identity(16);
  const Mat<T> m = q2n_test::gaussian<T>(3, 16, 6);
  CHECK(id.kept() == 0);
  CHECK(id.project(m) == m);
}

TEST_CASE("NullSpace: a rank-one Ā has no paper cut (double precision)") {
  // One nonzero eigenvalue; the others are rounding noise ~1e-16·s0, below the reference's
  // absolute 1e-12 floor. (In float that noise is ~1e-7·s0 and can exceed the floor: the floor
  // is the reference's, kept for compatibility, and is not scale-invariant.)
  const Eigen::MatrixXd abar = q2n_test::gaussian<double>(8, 1, 4) * q2n_test::gaussian<double>(1, 16, 5);
  for (auto route : {q2n::SpectrumRoute::covariance, q2n::SpectrumRoute::gram}) {
    const auto ns = q2n::NullSpace<double>::compute(abar, {0.1, q2n::CutRule::paper, route});
    CHECK_FALSE(ns.cut().found);
    CHECK(ns.kept() == 0);
  }
}

TEST_CASE("NullSpace accepts any dense expression and refuses bad input") {
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rm =
      structured_activations<float>(10, 20, 3, 8);
  Eigen::Ref<const Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> ref(rm);
  const auto a = q2n::NullSpace<float>::compute(rm);
  const auto b = q2n::NullSpace<float>::compute(ref);
  const auto c = q2n::NullSpace<double>::compute(rm.cast<double>());  // a double solve of float data
  CHECK(a.kept() == b.kept());
  CHECK(a.kept() == c.kept());

  using NS = q2n::NullSpace<double>;
  CHECK_THROWS_WITH_AS(NS::compute(Eigen::MatrixXd(0, 4)), doctest::Contains("abar is 0 x 4"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(NS::compute(Eigen::MatrixXd::Zero(3, 4)), doctest::Contains("all zero"),
                       std::invalid_argument);
  Eigen::MatrixXd nan = Eigen::MatrixXd::Ones(3, 4);
  nan(2, 1) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS(NS::compute(nan), doctest::Contains("abar(2, 1)"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(NS::compute(Eigen::MatrixXd::Ones(3, 4), {0.0}),
                       doctest::Contains("threshold"), std::invalid_argument);
  const auto ns = NS::compute(q2n_test::gaussian<double>(3, 4, 1));
  CHECK_THROWS_WITH_AS(ns.project(Eigen::MatrixXd::Ones(2, 5)), doctest::Contains("5 columns"),
                       std::invalid_argument);
  CHECK_THROWS_AS(NS::identity(0), std::invalid_argument);
}

TEST_CASE_TEMPLATE("NullSpace: the partial route matches the dense route", T, Q2N_TEST_SCALARS) {
  // LLM-like activations (small cut) on both sides of seqlen = cols, and the automatic choice.
  for (auto shape : {std::pair<Eigen::Index, Eigen::Index>{160, 480}, {512, 200}}) {
    CAPTURE(shape.first);
    const Mat<T> abar = structured_activations<T>(shape.first, shape.second, 7, 51, 1e-2);
    const auto dense =
        q2n::NullSpace<T>::compute(abar, {0.1, q2n::CutRule::paper, q2n::SpectrumRoute::covariance});
    for (auto rule : {q2n::CutRule::paper, q2n::CutRule::plain}) {
      const auto d = q2n::NullSpace<T>::compute(abar, {0.1, rule, q2n::SpectrumRoute::covariance});
      const auto p = q2n::NullSpace<T>::compute(abar, {0.1, rule, q2n::SpectrumRoute::partial});
      REQUIRE(d.cut().found);
      CHECK(p.route() == q2n::SpectrumRoute::partial);  // decided without falling back
      CHECK(p.cut().kept == d.cut().kept);
      // Same projector to the accuracy of the dense eigenvectors (see the Gram route test).
      const double tol = std::is_same_v<T, float> ? 2e-3 : 1e-8;
      CHECK((dense_p(p) - dense_p(d)).cwiseAbs().maxCoeff() <= tol);
      // Leading eigenvalues and the total agree with the dense spectrum.
      const Eigen::Index k = p.eigenvalues().size();
      CHECK(k > p.kept());
      CHECK((p.eigenvalues() - d.eigenvalues().head(k)).cwiseAbs().maxCoeff() <=
            tol * d.eigenvalues()(0));
      CHECK(p.total_energy() == doctest::Approx(d.eigenvalues().sum()).epsilon(1e-5));
    }
    const auto automatic = q2n::NullSpace<T>::compute(abar);
    CHECK(automatic.route() == (std::min(shape.first, shape.second) <= 384
                                    ? (shape.first < shape.second ? q2n::SpectrumRoute::gram
                                                                  : q2n::SpectrumRoute::covariance)
                                    : q2n::SpectrumRoute::partial));
    CHECK(automatic.kept() == dense.kept());
  }
}

TEST_CASE("NullSpace: the partial route falls back to a dense route when the cut is large") {
  // i.i.d. Gaussian activations: a flat spectrum whose cut keeps most directions, beyond what
  // a narrow Krylov space can decide.
  const Eigen::MatrixXd abar = q2n_test::gaussian<double>(96, 300, 77);
  const auto p = q2n::NullSpace<double>::compute(abar, {0.1, q2n::CutRule::paper,
                                                        q2n::SpectrumRoute::partial});
  const auto d = q2n::NullSpace<double>::compute(abar, {0.1, q2n::CutRule::paper,
                                                        q2n::SpectrumRoute::gram});
  CHECK(p.route() == q2n::SpectrumRoute::gram);
  CHECK(p.kept() == d.kept());
  CHECK(p.kept() > 30);
}

TEST_CASE("Block Krylov: the Ritz weights are the Gauss quadrature of the start block's spectral measure") {
  // Rayleigh–Ritz on span[V, MV, …, M^(m−1)V] reproduces Vᵀ M^k V for every k ≤ 2m − 1, so
  // Σ_j w_j θ_j^k = (n/b)·tr(Vᵀ M^k V) exactly, up to rounding: both sides are sums of
  // positive terms of size ≤ n·‖M‖^k with ‖M‖ ≤ 1 here, computed in double (1e-9 relative
  // leaves a margin of 1e4 over the ~n·ε of the products and the small eigensolve).
  const Eigen::Index n = 300, block = 8, blocks = 5;
  const Eigen::MatrixXd g = q2n_test::gaussian<double>(n, n, 41);
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(g);
  const Eigen::MatrixXd q = qr.householderQ();
  Eigen::VectorXd s(n);
  for (Eigen::Index j = 0; j < n; ++j) s(j) = 1.0 / (1.0 + 0.05 * double(j));  // in (0, 1]
  const Eigen::MatrixXd m = q * s.asDiagonal() * q.transpose();
  const auto apply = [&](const auto& x, auto&& y) { y.noalias() = m * x; };
  const auto ritz = q2n::detail::block_krylov<double>(n, apply, block, blocks, 7);
  REQUIRE(ritz.ok);
  REQUIRE(ritz.weights.size() == block * blocks);
  CHECK(ritz.weights.minCoeff() >= 0);
  const Eigen::MatrixXd v = q2n::detail::krylov_start<double>(n, block, 7);
  Eigen::MatrixXd mk_v = v;  // M^k V
  for (int k = 0; k <= 2 * blocks - 1; ++k) {
    CAPTURE(k);
    const double quadrature = ritz.weights.dot(ritz.values.array().pow(k).matrix());
    const double exact = double(n) / double(block) * (v.transpose() * mk_v).trace();
    CHECK(quadrature == doctest::Approx(exact).epsilon(1e-9));
    mk_v = m * mk_v;
  }
  CHECK(ritz.weights.sum() == doctest::Approx(double(n)).epsilon(1e-12));  // k = 0: Σ w = n
}

TEST_CASE("NullSpace: a float Gram solve is attempted only when it will resolve the cut") {
  // A partial route that cannot decide the cut judges, from its Krylov space, whether a float
  // Gram solve can resolve the kept eigenvalues next to s0 (NullSpace::gram_resolves): a
  // float solve thrown away and redone in double is a wasted attempt. The flat family with a
  // 1000x massive activation puts its cut ~1e-5·s0 (under the floor of ~1e-3·s0 at these
  // sizes): straight to double. The rank-deficient one puts it at ~3e-3·s0, which float
  // resolves: no double solve. Both dense solvers (their Krylov caps differ).
  using q2n_test::Family;
  for (const Family f : {Family::flat_massive, Family::rank_deficient})
  for (const auto& shape : {std::pair<Eigen::Index, Eigen::Index>{512, 1536}, {640, 1280}})
  for (const auto solver : {q2n::DenseSolver::eigen, q2n::DenseSolver::lapack}) {
    const std::string family = q2n_test::family_name(f);
    CAPTURE(family);
    CAPTURE(shape.first);
    CAPTURE(static_cast<int>(solver));
    const Eigen::MatrixXd abar =
        q2n_test::activation_family(f, shape.first, shape.second, 5, 1000.0);
    const auto ns = q2n::NullSpace<float>::compute(
        abar.cast<float>(), {0.1, q2n::CutRule::paper, q2n::SpectrumRoute::partial, solver});
    CAPTURE(ns.route_reason());
    CHECK(ns.route() == q2n::SpectrumRoute::gram);  // undecided by the partial route
    CHECK(ns.route_reason().find("redone in double") == std::string::npos);
    const bool in_double = ns.route_reason().find("Gram route in double") != std::string::npos;
    CHECK(in_double == (f == Family::flat_massive));
    // The cut of the same (float) data in double: identical when the solve ran in double.
    // Solved in float, within one: these cuts lie in a bulk whose neighbouring eigenvalues
    // differ by ~0.4 %, while float's are off by up to ~n·ε·s0, about 1 % of the cut's value.
    const auto ref = q2n::NullSpace<double>::compute(
        abar.cast<float>().cast<double>(),
        {0.1, q2n::CutRule::paper, q2n::SpectrumRoute::gram, q2n::DenseSolver::lapack});
    if (in_double)
      CHECK(ns.kept() == ref.kept());
    else
      CHECK(std::abs(ns.kept() - ref.kept()) <= 1);
  }
}

TEST_CASE_TEMPLATE("NullSpace: any finite scale of Ā gives the same projector, every route", T, Q2N_TEST_SCALARS) {
  // Entries far outside the scalar's comfortable range: in float (2^±70) their squares
  // overflow or underflow; in double (2^±300) they are scaled too, and an energy beyond
  // double's range is refused. compute() scales Ā by a power of two first, so the
  // kept basis must equal, bit for bit, the one computed on the unscaled Ā, and the spectrum
  // must be the unscaled spectrum times 2^(2k) (exact in double). Before, float reported
  // "abar is all zero" for tiny Ā and returned no or a NaN basis for huge Ā.
  Mat<T> abar = structured_activations<T>(200, 480, 7, 61, 1e-2);
  int e0 = 0;  // normalized to a largest entry in [1/2, 1): the scaled copies map back to it
  std::frexp(static_cast<double>(abar.cwiseAbs().maxCoeff()), &e0);
  abar *= std::ldexp(T(1), -e0);
  const int k = std::is_same_v<T, float> ? 70 : 300;
  for (auto route : {q2n::SpectrumRoute::covariance, q2n::SpectrumRoute::gram,
                     q2n::SpectrumRoute::partial}) {
    // The paper rule's absolute 1e-12 floor is not scale-free: use the plain rule here.
    const q2n::NullSpaceOptions o{0.1, q2n::CutRule::plain, route};
    const auto ref = q2n::NullSpace<T>::compute(abar, o);
    REQUIRE(ref.cut().found);
    for (int sign : {1, -1}) {
      CAPTURE(static_cast<int>(route));
      CAPTURE(sign);
      const T f = std::ldexp(T(1), sign * k);
      const Mat<T> scaled = abar * f;
      REQUIRE(scaled.allFinite());
      const auto ns = q2n::NullSpace<T>::compute(scaled, o);
      CHECK(ns.route() == ref.route());
      CHECK(ns.kept() == ref.kept());
      CHECK(ns.kept_basis() == ref.kept_basis());
      const double e2 = std::ldexp(1.0, 2 * sign * k);
      CHECK(ns.eigenvalues() == ref.eigenvalues() * e2);
      CHECK(ns.total_energy() == ref.total_energy() * e2);
    }
  }
  if constexpr (std::is_same_v<T, double>) {
    // Energy beyond double: a clear NumericalError, not an overflowed spectrum.
    const Mat<T> huge = abar * std::ldexp(1.0, 900);
    CHECK_THROWS_WITH_AS(q2n::NullSpace<T>::compute(huge),
                         doctest::Contains("beyond double's range; scale the activations down"),
                         q2n::NumericalError);
    const Mat<T> tiny = abar * std::ldexp(1.0, -560);
    CHECK_THROWS_WITH_AS(q2n::NullSpace<T>::compute(tiny),
                         doctest::Contains("below double's normal range; scale the activations up"),
                         q2n::NumericalError);
  }
}

TEST_CASE_TEMPLATE("NullSpace: every route gives the same projector on each activation family", T, Q2N_TEST_SCALARS) {
  // The oracle is the dense covariance route in double. Each route in T must keep the same
  // number of directions and leave the same activation energy outside the null space:
  // ‖Ā (P − P_ref)‖_F ≤ tol · ‖Ā‖_F. That measure ignores rotations among nearly equal
  // eigenvalues at the cut (which no eigensolver pins down), and it is what the refinement
  // sees. The flat family with a massive activation is the hard case in float: its s0 is
  // thousands of times the kept eigenvalues at the cut, beyond a float Gram solve's
  // resolution, so the Gram route must run in double and say so. Each route runs with both
  // dense eigensolvers (the partial route falls back to one on the flat family).
  static_assert(q2n::has_lapack, "the tests are built with q2n::lapack");
  using q2n::SpectrumRoute;
  using q2n_test::Family;
  for (const Family f : {Family::steep, Family::flat_massive, Family::rank_deficient}) {
    for (const auto& shape : {std::pair<Eigen::Index, Eigen::Index>{160, 480}, {480, 160}}) {
      if (f == Family::rank_deficient && shape.first > shape.second) continue;  // full rank
      const std::string family = q2n_test::family_name(f);
      CAPTURE(family);
      CAPTURE(shape.first);
      // Massive activations at 1000x, as Llama-2's: beyond float Gram's resolution here.
      const Eigen::MatrixXd abar =
          q2n_test::activation_family(f, shape.first, shape.second, 5, 1000.0);
      const auto ref = q2n::NullSpace<double>::compute(abar, {0.1, q2n::CutRule::paper,
                                                              SpectrumRoute::covariance});
      REQUIRE(ref.cut().found);
      // Kept counts are comparable across float routes only when the cut is no near tie: the
      // cut must not move when the threshold moves by 0.5 % either way (the rule's ratio clears
      // the threshold by that margin at r and at every k < r). Float's eigenvalues are off by
      // ~ε·s0, and s0 is ~6e4 kept eigenvalues here.
      CHECK(q2n::find_cut(ref.eigenvalues(), 0.1 * (1 - 5e-3)).kept == ref.kept());
      CHECK(q2n::find_cut(ref.eigenvalues(), 0.1 * (1 + 5e-3)).kept == ref.kept());
      const Eigen::MatrixXd p_ref = dense_p(ref);
      const Mat<T> a = abar.cast<T>();
      for (const auto route : {SpectrumRoute::covariance, SpectrumRoute::gram,
                               SpectrumRoute::partial, SpectrumRoute::automatic})
      for (const auto solver : {q2n::DenseSolver::eigen, q2n::DenseSolver::lapack}) {
        CAPTURE(static_cast<int>(route));
        CAPTURE(static_cast<int>(solver));
        const auto ns = q2n::NullSpace<T>::compute(a, {0.1, q2n::CutRule::paper, route, solver});
        CAPTURE(ns.route_reason());
        CHECK(!ns.route_reason().empty());
        CHECK(ns.kept() == ref.kept());
        const double moved = (abar * (dense_p(ns) - p_ref)).norm() / abar.norm();
        // float: the eigenvectors of a float solve are accurate to ~ε‖X‖/gap; the measure
        // weights each direction by its energy, so its error stays near √ε. double: 1e-6.
        CHECK(moved <= (std::is_same_v<T, float> ? 1e-3 : 1e-6));
        if (f == Family::flat_massive && std::is_same_v<T, float> &&
            ns.route() == SpectrumRoute::gram)
          CHECK(ns.route_reason().find("double") != std::string::npos);
      }
    }
  }
}

TEST_CASE_TEMPLATE("LAPACK stages: the spectrum and the leading vectors, by MRRR and by its fallback", T, Q2N_TEST_SCALARS) {
  // The matrix of the rank-deficient family (a Wishart-like spectrum, the one on which single
  // precision MRRR fails from n = 512 on). The oracle is Eigen's dense solver in double.
  const Eigen::MatrixXd abar =
      q2n_test::activation_family(q2n_test::Family::rank_deficient, 300, 600, 7, 1000.0);
  const Eigen::MatrixXd g = abar * abar.transpose();
  Eigen::SelfAdjointEigenSolver<Eigen::MatrixXd> es(g);
  REQUIRE(es.info() == Eigen::Success);
  const Eigen::VectorXd values = es.eigenvalues().reverse();
  const Eigen::Index k = 120;
  const Eigen::MatrixXd u = es.eigenvectors().rightCols(k).rowwise().reverse();
  q2n::detail::LapackEigen<T> le(q2n_test::Mat<T>(g.cast<T>()), "test matrix");
  // Eigenvalues: backward-stable solvers in T, so within a few ε‖G‖ of the double ones.
  const double eps = std::numeric_limits<T>::epsilon();
  CHECK((le.descending() - values).cwiseAbs().maxCoeff() <= 50 * eps * values(0));
  for (const bool dc : {false, true}) {
    CAPTURE(dc);
    const q2n_test::Mat<T> z = le.leading(k, dc);
    REQUIRE(z.rows() == g.rows());
    REQUIRE(z.cols() == k);
    CHECK(le.mrrr_info() == 0);  // MRRR (in double) did not fail; the fallback was asked for
    // Orthonormal to MRRR's O(n ε) (and Householder's), and spanning the same leading space as
    // the oracle: the subspace error stays ~ε‖G‖/gap, gap the distance after the k-th value.
    const Eigen::MatrixXd zd = z.template cast<double>();
    const double n = static_cast<double>(g.rows());
    const Eigen::MatrixXd gram_z = zd.transpose() * zd;
    CHECK((gram_z - Eigen::MatrixXd::Identity(k, k)).cwiseAbs().maxCoeff() <= 10 * n * eps);
    const double gap = values(k - 1) - values(k);
    REQUIRE(gap > 0);
    CHECK((zd * zd.transpose() - u * u.transpose()).norm() <= 100 * eps * values(0) / gap);
  }
  CHECK(le.leading(0).cols() == 0);
}
