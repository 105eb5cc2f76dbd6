#include <q2n/accumulators.hpp>

#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <random>

#include "test_util.hpp"

using q2n_test::gaussian;
using q2n_test::Mat;

TEST_CASE_TEMPLATE("HessianAccumulator equals (2/N) XᵀX over all tokens, any batching", T, Q2N_TEST_SCALARS) {
  const Eigen::Index cols = 24;
  const Mat<T> x = gaussian<T>(101, cols, 7);
  // Reference: brute-force outer products in double.
  Eigen::MatrixXd ref = Eigen::MatrixXd::Zero(cols, cols);
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    const Eigen::VectorXd v = x.row(t).transpose().template cast<double>();
    ref += v * v.transpose();
  }
  ref *= 2.0 / static_cast<double>(x.rows());

  q2n::HessianAccumulator acc(cols);
  acc.add(x.topRows(0));  // an empty batch is allowed and changes nothing
  acc.add(x.topRows(1));
  acc.add(x.middleRows(1, 60));
  acc.add(x.bottomRows(40));
  CHECK(acc.tokens() == 101);
  // Each batch product is formed in T: float's relative rounding is ~ batch · 2^-24 ≈ 4e-6 of
  // the largest entries (|H| ~ 2); double's is ~1e-14. Tolerances sit two orders above.
  const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-12;
  const Eigen::MatrixXd h = acc.hessian();
  CHECK((h - ref).cwiseAbs().maxCoeff() <= tol * ref.cwiseAbs().maxCoeff());
  CHECK((h - h.transpose()).cwiseAbs().maxCoeff() == 0.0);
  CHECK((acc.template hessian_as<T>().template cast<double>() - h).cwiseAbs().maxCoeff() <=
        tol * ref.cwiseAbs().maxCoeff());

  // merge of two shards equals one accumulator over all tokens.
  q2n::HessianAccumulator a(cols), b(cols);
  a.add(x.topRows(50));
  b.add(x.bottomRows(51));
  a.merge(b);
  CHECK(a.tokens() == 101);
  CHECK((a.hessian() - ref).cwiseAbs().maxCoeff() <= tol * ref.cwiseAbs().maxCoeff());
}

TEST_CASE("HessianAccumulator accepts row-major maps and refuses bad input") {
  Eigen::Matrix<double, 3, 4, Eigen::RowMajor> rm;
  rm << 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12;
  Eigen::Map<const Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> map(
      rm.data(), 3, 4);
  q2n::HessianAccumulator acc(4);
  acc.add(map);
  // (2/3) Σ x xᵀ at (0,0): (1 + 25 + 81) · 2/3, exact in double up to one rounding.
  CHECK(acc.hessian()(0, 0) == doctest::Approx(107.0 * 2.0 / 3.0).epsilon(1e-15));

  CHECK_THROWS_WITH_AS(q2n::HessianAccumulator(0), doctest::Contains("cols = 0"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(acc.add(Eigen::MatrixXd::Zero(2, 5)), doctest::Contains("tokens is 2 x 5"),
                       std::invalid_argument);
  Eigen::MatrixXd bad = Eigen::MatrixXd::Ones(2, 4);
  bad(1, 2) = std::numeric_limits<double>::quiet_NaN();
  CHECK_THROWS_WITH_AS(acc.add(bad), doctest::Contains("tokens(1, 2)"), std::invalid_argument);
  bad(1, 2) = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(acc.add(bad), std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::HessianAccumulator(4).hessian(), doctest::Contains("no tokens"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(acc.merge(q2n::HessianAccumulator(5)), doctest::Contains("cols = 5"),
                       std::invalid_argument);
}

TEST_CASE_TEMPLATE("SampleMeanAccumulator weights every sequence equally", T, Q2N_TEST_SCALARS) {
  const Eigen::Index cols = 6, seqlen = 5, samples = 7;
  const Mat<T> x = gaussian<T>(samples * seqlen, cols, 11);
  Eigen::MatrixXd ref = Eigen::MatrixXd::Zero(seqlen, cols);
  for (Eigen::Index s = 0; s < samples; ++s)
    for (Eigen::Index p = 0; p < seqlen; ++p)
      ref.row(p) += x.row(s * seqlen + p).template cast<double>() / double(samples);

  // Sums are kept in double: agreement to a few ulps of double.
  q2n::SampleMeanAccumulator one(cols);
  one.add_sequences(x, seqlen);
  CHECK(one.samples() == samples);
  CHECK(one.seqlen() == seqlen);
  CHECK((one.mean() - ref).cwiseAbs().maxCoeff() <= 1e-14);

  q2n::SampleMeanAccumulator a(cols), b(cols), empty(cols);
  a.add_sequence(x.topRows(seqlen));
  a.add_sequences(x.middleRows(seqlen, 2 * seqlen), seqlen);
  b.add_sequences(x.bottomRows(4 * seqlen), seqlen);
  a.merge(empty);
  a.merge(b);
  empty.merge(a);  // merging into an empty accumulator adopts the other's length
  CHECK(a.samples() == samples);
  CHECK((a.mean() - ref).cwiseAbs().maxCoeff() <= 1e-14);
  CHECK((empty.mean() - ref).cwiseAbs().maxCoeff() <= 1e-14);
}

TEST_CASE("SampleMeanAccumulator refuses mixed lengths, widths and bad values") {
  q2n::SampleMeanAccumulator acc(3);
  acc.add_sequence(Eigen::MatrixXd::Ones(4, 3));
  CHECK_THROWS_WITH_AS(acc.add_sequence(Eigen::MatrixXd::Ones(5, 3)),
                       doctest::Contains("sequence length 5 differs from the length 4"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(acc.add_sequence(Eigen::MatrixXd::Ones(4, 2)),
                       doctest::Contains("seq is 4 x 2"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(acc.add_sequences(Eigen::MatrixXd::Ones(9, 3), 4),
                       doctest::Contains("not a multiple of seqlen = 4"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(acc.add_sequences(Eigen::MatrixXd::Ones(8, 3), 0),
                       doctest::Contains("seqlen = 0"), std::invalid_argument);
  Eigen::MatrixXd inf = Eigen::MatrixXd::Ones(4, 3);
  inf(3, 0) = -std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH_AS(acc.add_sequence(inf), doctest::Contains("seq(3, 0)"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(acc.add_sequence(Eigen::MatrixXd(0, 3)), doctest::Contains("empty"),
                       std::invalid_argument);
  CHECK(acc.samples() == 1);  // refused input leaves the accumulator unchanged

  q2n::SampleMeanAccumulator other(3);
  other.add_sequence(Eigen::MatrixXd::Ones(2, 3));
  CHECK_THROWS_WITH_AS(acc.merge(other), doctest::Contains("seqlen = 2"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::SampleMeanAccumulator(3).mean(), doctest::Contains("no sequences"),
                       std::invalid_argument);
}

TEST_CASE_TEMPLATE("HessianAccumulator spans several column panels exactly", T, Q2N_TEST_SCALARS) {
  // 1100 columns: three panels of up to 512, the last one partial. Row-major input too.
  const Eigen::Index cols = 1100;
  const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> x =
      gaussian<T>(30, cols, 19);
  const Eigen::MatrixXd xd = x.template cast<double>();
  const Eigen::MatrixXd ref = (2.0 / 30.0) * xd.transpose() * xd;
  q2n::HessianAccumulator acc(cols);
  acc.add(x);
  // 30-term dot products formed in T: float's rounding ~30·2^-24 of |x|², double's ~1e-15.
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-13;
  CHECK((acc.hessian() - ref).cwiseAbs().maxCoeff() <= tol * ref.cwiseAbs().maxCoeff());
}

TEST_CASE("Accumulators: float results out of float's range are reported, not returned as Inf or 0") {
  // Tokens of 2^70 (float): x xᵀ is 2^140, beyond float. The accumulator sums them in double
  // (exactly: all squares are powers of two times small integers), so hessian() is right and
  // hessian_as<float>() names the problem instead of returning Inf.
  Eigen::MatrixXf x(4, 3);
  x << 1, 2, 0, -1, 0, 3, 2, 1, 1, 0, -2, 1;
  const float big = std::ldexp(1.0f, 70), tiny = std::ldexp(1.0f, -70);
  q2n::HessianAccumulator h_big(3), h_tiny(3), h_ref(3);
  h_big.add(x * big);
  h_tiny.add(x * tiny);
  h_ref.add(x.cast<double>());
  CHECK(h_big.hessian() == h_ref.hessian() * std::ldexp(1.0, 140));
  CHECK(h_tiny.hessian() == h_ref.hessian() * std::ldexp(1.0, -140));
  CHECK_THROWS_WITH_AS(h_big.hessian_as<float>(), doctest::Contains("beyond float's range"),
                       q2n::NumericalError);
  CHECK_THROWS_WITH_AS(h_tiny.hessian_as<float>(), doctest::Contains("below float's normal range"),
                       q2n::NumericalError);
  CHECK(h_big.hessian_as<double>() == h_big.hessian());
  // Double overflow: named, with the size of the tokens.
  q2n::HessianAccumulator h_over(3);
  CHECK_THROWS_WITH_AS(h_over.add(x.cast<double>() * 1e200), doctest::Contains("overflowed double"),
                       q2n::NumericalError);
  // Ā beyond float: mean() is right in double, mean_as<float>() says why it cannot be float.
  q2n::SampleMeanAccumulator a(3);
  a.add_sequence(x.cast<double>() * 1e300);
  CHECK(a.mean().allFinite());
  CHECK_THROWS_WITH_AS(a.mean_as<float>(), doctest::Contains("beyond float's range"), q2n::NumericalError);
  q2n::SampleMeanAccumulator b(3);
  b.add_sequence(x.cast<double>() * 1e-300);
  CHECK_THROWS_WITH_AS(b.mean_as<float>(), doctest::Contains("below float's normal range"),
                       q2n::NumericalError);
}

TEST_CASE("Accumulators rebuilt from their sums continue exactly as the originals (another process)") {
  std::mt19937 rng(21);
  std::normal_distribution<float> nd;
  const auto batch = [&](Eigen::Index rows) {
    return Eigen::MatrixXf(Eigen::MatrixXf::NullaryExpr(rows, 40, [&] { return nd(rng); }));
  };
  const Eigen::MatrixXf a = batch(96), b = batch(64);
  // One process adds a, hands its state on; the next continues with b. The result must equal
  // one accumulator adding both, bit for bit (== on doubles).
  q2n::HessianAccumulator whole(40), first(40);
  whole.add(a);
  whole.add(b);
  first.add(a);
  q2n::HessianAccumulator next =
      q2n::HessianAccumulator::from_packed_sum(40, first.packed_sum(), first.tokens());
  next.add(b);
  CHECK(next.tokens() == whole.tokens());
  CHECK(next.hessian() == whole.hessian());
  q2n::SampleMeanAccumulator mwhole(40), mfirst(40);
  mwhole.add_sequences(a, 32);
  mwhole.add_sequences(b, 32);
  mfirst.add_sequences(a, 32);
  q2n::SampleMeanAccumulator mnext =
      q2n::SampleMeanAccumulator::from_sum(40, mfirst.sum(), mfirst.samples());
  mnext.add_sequences(b, 32);
  CHECK(mnext.samples() == 5);
  CHECK(mnext.mean() == mwhole.mean());
  // An empty state rebuilds an empty accumulator, which then takes any sequence length.
  q2n::SampleMeanAccumulator empty = q2n::SampleMeanAccumulator::from_sum(40, {}, 0);
  empty.add_sequences(b, 16);
  CHECK(empty.seqlen() == 16);
  // Inconsistent states are refused, naming the argument.
  CHECK_THROWS_WITH_AS(q2n::HessianAccumulator::from_packed_sum(3, Eigen::VectorXd(9), 1),
                       doctest::Contains("packed has 9 entries but cols = 3 needs 6"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::HessianAccumulator::from_packed_sum(3, Eigen::VectorXd::Zero(6), -1),
                       doctest::Contains("tokens = -1 must be non-negative"), std::invalid_argument);
  Eigen::VectorXd nan = Eigen::VectorXd::Zero(6);
  nan(1) = std::nan("");
  CHECK_THROWS_AS(q2n::HessianAccumulator::from_packed_sum(3, nan, 4), std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::SampleMeanAccumulator::from_sum(40, Eigen::MatrixXd::Zero(8, 40), 0),
                       doctest::Contains("samples = 0 with a 8 x 40 sum"), std::invalid_argument);
  CHECK_THROWS_AS(q2n::SampleMeanAccumulator::from_sum(40, Eigen::MatrixXd::Zero(8, 39), 2),
                  std::invalid_argument);
}

TEST_CASE("HessianAccumulator keeps Σ x xᵀ as its packed lower triangle, as documented") {
  // Small integers: every product and sum below is exact in float and in double, so the
  // packed entries must equal the brute-force double XᵀX exactly. 600 columns: more than one
  // 512-column panel of add().
  const Eigen::Index cols = 600;
  Eigen::MatrixXf x(7, cols);
  for (Eigen::Index t = 0; t < x.rows(); ++t)
    for (Eigen::Index c = 0; c < cols; ++c) x(t, c) = float((t * 31 + c * 17) % 9) - 4.f;
  q2n::HessianAccumulator acc(cols);
  acc.add(x.topRows(3));
  acc.add(x.bottomRows(4));
  const Eigen::MatrixXd want = x.cast<double>().transpose() * x.cast<double>();
  REQUIRE(acc.packed_sum().size() == cols * (cols + 1) / 2);
  Eigen::Index mismatches = 0;
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = j; i < cols; ++i)
      mismatches += acc.packed_sum()(j * cols - j * (j - 1) / 2 + i - j) != want(i, j);
  CHECK(mismatches == 0);
  CHECK(acc.hessian() == want * (2.0 / 7.0));
}
