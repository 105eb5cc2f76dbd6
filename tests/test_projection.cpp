#include <q2n/projection.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>

#include "test_util.hpp"

using q2n_test::gaussian;
using q2n_test::Mat;
using q2n_test::structured_activations;

namespace {

// Crude "quantizer" for tests: round to a grid of step h per row. Q2N accepts any Q.
template <class T>
Mat<T> round_to_grid(const Mat<T>& w, double h) {
  return (w.template cast<double>() / h).array().round().matrix().template cast<T>() * T(h);
}

// Minimizes f(m) = ‖b − m q‖² + λ (m − 1)² by golden-section search in double: a check of
// the closed form that uses nothing but evaluations of the objective.
double minimize_row(const Eigen::RowVectorXd& b, const Eigen::RowVectorXd& q, double lambda) {
  auto f = [&](double m) { return (b - m * q).squaredNorm() + lambda * (m - 1) * (m - 1); };
  double lo = 0.0, hi = 2.0;
  const double g = (std::sqrt(5.0) - 1) / 2;
  for (int it = 0; it < 200; ++it) {
    const double x1 = hi - g * (hi - lo), x2 = lo + g * (hi - lo);
    (f(x1) < f(x2) ? hi : lo) = (f(x1) < f(x2) ? x2 : x1);
  }
  return (lo + hi) / 2;
}

}  // namespace

TEST_CASE_TEMPLATE("equivalent_vector is the minimizer of the Q2N objective", T, Q2N_TEST_SCALARS) {
  const Eigen::Index rows = 12, cols = 40, seqlen = 24;
  const Mat<T> abar = structured_activations<T>(seqlen, cols, 4, 31);
  const Mat<T> w = gaussian<T>(rows, cols, 32, 0.05);
  const Mat<T> q = round_to_grid(w, 0.04);
  const auto ns = q2n::NullSpace<T>::compute(abar);
  REQUIRE(ns.cut().found);

  // Dense reference in double: B = W (I − P) + Q P with P formed explicitly.
  const Eigen::MatrixXd u = ns.kept_basis().template cast<double>();
  const Eigen::MatrixXd p = Eigen::MatrixXd::Identity(cols, cols) - u * u.transpose();
  const Eigen::MatrixXd wd = w.template cast<double>(), qd = q.template cast<double>();
  const Eigen::MatrixXd b = wd - wd * p + qd * p;

  for (double lambda : {0.2, 0.0, 3.0}) {
    CAPTURE(lambda);
    const auto m = q2n::equivalent_vector(w, q, ns, lambda);
    REQUIRE(m.size() == rows);
    for (Eigen::Index r = 0; r < rows; ++r) {
      const double brute = minimize_row(b.row(r), qd.row(r), lambda);
      const double direct = ((b.row(r).dot(qd.row(r))) + lambda) / (qd.row(r).squaredNorm() + lambda);
      // Golden section converges to ~1e-8 in m (the objective is flat to sqrt(eps) there);
      // float's m carries U1's rounding (~1e-5 relative), amplified by ‖W−Q‖/‖Q‖ < 1.
      CHECK(double(m(r)) == doctest::Approx(brute).epsilon(std::is_same_v<T, float> ? 1e-5 : 1e-7));
      CHECK(double(m(r)) == doctest::Approx(direct).epsilon(std::is_same_v<T, float> ? 1e-5 : 1e-13));
    }
    // m deviates from 1: the test exercises a real correction, not the identity.
    CHECK((m.template cast<double>().array() - 1.0).abs().maxCoeff() > 1e-4);
  }

  const auto refined = q2n::refine(w, q, ns);
  CHECK(refined.cut.kept == ns.kept());
  CHECK(refined.Q == (refined.m.asDiagonal() * q).eval());
}

TEST_CASE_TEMPLATE("no cut leaves Q unchanged; zero rows keep m = 1", T, Q2N_TEST_SCALARS) {
  const Mat<T> w = gaussian<T>(4, 10, 2, 0.1);
  const Mat<T> q = round_to_grid(w, 0.05);
  const auto id = q2n::NullSpace<T>::identity(10);
  const auto r = q2n::refine(w, q, id);
  CHECK(r.m.isOnes(0));
  CHECK(r.Q == q);
  CHECK_FALSE(r.cut.found);
  Mat<T> qz = q;
  qz.row(1).setZero();
  const auto ns = q2n::NullSpace<T>::compute(structured_activations<T>(6, 10, 3, 4));
  CHECK(q2n::equivalent_vector(w, qz, ns, 0.0)(1) == T(1));
}

TEST_CASE_TEMPLATE("fold reproduces diag(m) Q from codes", T, Q2N_TEST_SCALARS) {
  // Q = s ⊙ (q − z) per (row, group) of 4 columns; folding m into s leaves codes and zeros.
  const Eigen::Index rows = 3, cols = 8, group = 4;
  Eigen::MatrixXi codes(rows, cols);
  codes << 0, 1, 2, 3, 3, 2, 1, 0, 1, 1, 2, 2, 0, 3, 0, 3, 3, 3, 3, 0, 1, 2, 0, 1;
  Mat<T> scales(rows, cols / group), zeros(rows, cols / group);
  scales << 0.5, 0.25, 1.0, 0.125, 2.0, 0.75;
  zeros << 1, 2, 1.5, 1, 2, 0;
  auto dequant = [&](const Mat<T>& s) {
    Mat<T> q(rows, cols);
    for (Eigen::Index i = 0; i < rows; ++i)
      for (Eigen::Index j = 0; j < cols; ++j)
        q(i, j) = s(i, j / group) * (T(codes(i, j)) - zeros(i, j / group));
    return q;
  };
  Eigen::Matrix<T, Eigen::Dynamic, 1> m(rows);
  m << T(1.01), T(0.98), T(1.0);
  Mat<T> folded = scales;
  q2n::fold(folded, m);
  // (m·s)·(q − z) and m·(s·(q − z)) differ by at most one rounding of each product.
  const Mat<T> expect = m.asDiagonal() * dequant(scales);
  CHECK((dequant(folded) - expect).cwiseAbs().maxCoeff() <=
        4 * std::numeric_limits<T>::epsilon() * expect.cwiseAbs().maxCoeff());
  // Writable views fold in place too.
  Mat<T> viaref = scales;
  Eigen::Ref<Mat<T>> ref(viaref);
  q2n::fold(ref, m);
  CHECK(viaref == folded);
  CHECK_THROWS_WITH_AS(q2n::fold(folded, Eigen::Matrix<T, Eigen::Dynamic, 1>::Ones(2)),
                       doctest::Contains("one m entry per row"), std::invalid_argument);
}

TEST_CASE("output_optimal_scale minimizes the output error over the calibration tokens") {
  const Eigen::Index rows = 6, cols = 16;
  const Eigen::MatrixXd x = structured_activations<double>(50, cols, 5, 12, 0.1);
  const Eigen::MatrixXd w = gaussian<double>(rows, cols, 13, 0.1);
  const Eigen::MatrixXd q = round_to_grid(w, 0.08);
  q2n::HessianAccumulator acc(cols);
  acc.add(x);
  const Eigen::VectorXd m = q2n::output_optimal_scale(w, q, acc.hessian());
  for (Eigen::Index r = 0; r < rows; ++r) {
    // ‖(W_r − m Q_r) Xᵀ‖² is a parabola in m; the scale must beat its neighbours.
    auto err = [&](double mm) { return (x * (w.row(r) - mm * q.row(r)).transpose()).squaredNorm(); };
    CHECK(err(m(r)) <= err(m(r) + 1e-4));
    CHECK(err(m(r)) <= err(m(r) - 1e-4));
  }
}

TEST_CASE("Q2N works on row-major, mapped and Ref inputs alike") {
  using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Mat<float> w = gaussian<float>(5, 20, 40, 0.1);
  const Mat<float> q = round_to_grid(w, 0.05);
  const auto ns = q2n::NullSpace<float>::compute(structured_activations<float>(8, 20, 3, 41));
  const RowMajor wr = w, qr = q;
  Eigen::Map<const RowMajor> qmap(qr.data(), qr.rows(), qr.cols());
  Eigen::Ref<const Mat<float>> wref(w);
  const auto m0 = q2n::equivalent_vector(w, q, ns);
  // Same arithmetic on the same values; only the memory layout differs, which can change the
  // GEMM's summation order: a few float ulps.
  CHECK((q2n::equivalent_vector(wr, qmap, ns) - m0).cwiseAbs().maxCoeff() <= 1e-6f);
  CHECK((q2n::equivalent_vector(wref, q, ns) - m0).cwiseAbs().maxCoeff() <= 1e-6f);
}

TEST_CASE("equivalent_vector refuses bad input") {
  const Mat<double> w = gaussian<double>(4, 10, 2, 0.1);
  const Mat<double> q = round_to_grid(w, 0.05);
  const auto ns = q2n::NullSpace<double>::compute(structured_activations<double>(6, 10, 3, 4));
  CHECK_THROWS_WITH_AS(q2n::equivalent_vector(w, q.leftCols(9), ns),
                       doctest::Contains("Q (must match W) is 4 x 9"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::equivalent_vector(w.leftCols(9), q.leftCols(9), ns),
                       doctest::Contains("W has 9 columns"), std::invalid_argument);
  Mat<double> bad = w;
  bad(3, 4) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(q2n::equivalent_vector(bad, q, ns), doctest::Contains("W(3, 4)"),
                       std::invalid_argument);
  bad = q;
  bad(0, 0) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS(q2n::refine(w, bad, ns), doctest::Contains("Q(0, 0)"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::equivalent_vector(w, q, ns, -0.1), doctest::Contains("lambda = -0.1"),
                       std::invalid_argument);
}

TEST_CASE("the equivalent vector is finite and right for any finite float input") {
  // Rows scaled far from 1: at 1e19 ‖Q_r‖² overflows float (cols · 1e38), at 1e-30 it
  // underflows. m is invariant to scaling W and Q together except through λ (which then
  // dominates or vanishes), so the reference is the same formula in double on the same data.
  const Eigen::Index rows = 5, cols = 48;
  const Eigen::MatrixXd w0 = q2n_test::gaussian<double>(rows, cols, 301);
  const Eigen::MatrixXd q0 = (w0 * 4).array().round().matrix() / 4;
  const auto ns = q2n::NullSpace<float>::compute(q2n_test::structured_activations<float>(12, cols, 3, 302));
  REQUIRE(ns.kept() > 0);
  const Eigen::MatrixXd u1 = ns.kept_basis().cast<double>();
  for (double scale : {1e-30, 1e-19, 1.0, 1e19, 1e20, 1e30, 1e36}) {
    CAPTURE(scale);
    const Eigen::MatrixXf w = (w0 * scale).cast<float>(), q = (q0 * scale).cast<float>();
    const Eigen::VectorXf m = q2n::equivalent_vector(w, q, ns);
    const Eigen::MatrixXd wd = w.cast<double>(), qd = q.cast<double>();
    const Eigen::MatrixXd qu = qd * u1, du = wd * u1 - qu;
    for (Eigen::Index r = 0; r < rows; ++r) {
      const double expect = 1 + du.row(r).dot(qu.row(r)) / (qd.row(r).squaredNorm() + 0.2);
      REQUIRE(std::isfinite(m(r)));
      // float's U1 and products: ~1e-6 relative on m − 1, as in the conformance tests.
      CHECK(std::abs(double(m(r)) - expect) <= 1e-5 * std::max(1.0, std::abs(expect - 1)));
    }
    if (scale >= 1e19) CHECK((m.array() != 1.0f).any());  // not silently m = 1
  }
  // λ = 0 and a Q row 1e-30 times its W row: ‖Q_r‖² underflows, yet m_r (≈ 1e30) is
  // representable and computed; at 1e-42 (a subnormal row) m_r is beyond float: a clear error.
  Eigen::MatrixXf w = w0.cast<float>(), q = q0.cast<float>();
  q.row(2) *= 1e-30f;
  {
    const Eigen::VectorXf m = q2n::equivalent_vector(w, q, ns, 0.0);
    const Eigen::RowVectorXd qr = q.row(2).cast<double>();
    const Eigen::RowVectorXd qu = qr * u1, du = w.row(2).cast<double>() * u1 - qu;
    const double expect = 1 + du.dot(qu) / qr.squaredNorm();
    CHECK(std::abs(double(m(2)) - expect) <= 1e-5 * std::abs(expect));
  }
  q.row(2) = q0.row(2).cast<float>() * 1e-42f;
  CHECK_THROWS_AS(q2n::equivalent_vector(w, q, ns, 0.0), q2n::NumericalError);
  // Folding an m whose product with a scale overflows is a numerical error naming the row.
  q2n::FullPrecisionColumns<float> f;
  f.columns = Eigen::VectorXi::LinSpaced(cols, 0, int(cols) - 1);
  f.values = Eigen::MatrixXf::Constant(rows, cols, 1e30f);
  auto st = q2n::StorageBuilder<float>(rows, cols, "dense").full_precision(f).build();
  Eigen::VectorXf big = Eigen::VectorXf::Ones(rows);
  big(3) = 1e20f;
  CHECK_THROWS_WITH_AS(q2n::fold(st, big), doctest::Contains("m(3) = "), q2n::NumericalError);
}
