// OWQ and PB-LLM: counts as configured, storage round trip, and a plain double-precision
// re-implementation (tests/quant_reference.hpp).
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <q2n/quantizers.hpp>
#include <set>
#include <vector>

#include "quant_reference.hpp"
#include "test_util.hpp"

namespace {

using q2n_test::Mat;

template <class T>
Mat<T> hessian_of(const Mat<T>& X) {
  return (T(2) / static_cast<T>(X.rows())) * X.transpose() * X;
}

}  // namespace

TEST_CASE("owq_outlier_count: OWQ's rounding (half to even, then up to even)") {
  // cols · (target − bits) / (16 − bits) with exactly representable operands:
  CHECK(q2n::owq_outlier_count(80, 8, 8.25) == 2);    // 2.5 → 2 (even)
  CHECK(q2n::owq_outlier_count(112, 8, 8.25) == 4);   // 3.5 → 4
  CHECK(q2n::owq_outlier_count(48, 8, 8.25) == 2);    // 1.5 → 2
  CHECK(q2n::owq_outlier_count(16, 8, 8.25) == 0);    // 0.5 → 0
  CHECK(q2n::owq_outlier_count(24, 8, 8.25) == 2);    // 0.75 → 1 → odd → 2
  CHECK(q2n::owq_outlier_count(4096, 3, 3.01) == 4);  // 3.15 → 3 → 4
  CHECK(q2n::owq_outlier_count(64, 4, 4) == 0);
  CHECK_THROWS_WITH_AS(q2n::owq_outlier_count(64, 4, 3.5), doctest::Contains("target_bits = 3.5"),
                       std::invalid_argument);
  CHECK_THROWS_AS(q2n::owq_outlier_count(64, 4, 16), std::invalid_argument);
}

TEST_CASE_TEMPLATE(
    "owq keeps exactly n_out columns, compensated, and matches the re-implementation", T, Q2N_TEST_SCALARS) {
  const Mat<T> W = q2n_test::gaussian<T>(12, 48, 61);
  const Mat<T> X = q2n_test::structured_activations<T>(96, 48, 12, 62);
  const Mat<T> H = hessian_of(X);
  int cases = 0;
  for (Eigen::Index n_out : {Eigen::Index(0), Eigen::Index(3), Eigen::Index(6)})
    for (Eigen::Index gs : {Eigen::Index(-1), Eigen::Index(8)})
      for (bool act : {false, true})
        for (Eigen::Index bs : {Eigen::Index(128), Eigen::Index(10)}) {
          CAPTURE(n_out);
          CAPTURE(gs);
          CAPTURE(act);
          CAPTURE(bs);
          q2n::OwqOptions o;
          o.grid.bits = 3;
          o.groupsize = gs;
          o.act_order = act;
          o.outlier_columns = n_out;
          o.sweep.blocksize = bs;
          const auto res = q2n::owq(W, H, o);
          const auto& s = res.storage;
          REQUIRE(s.full_precision->columns.size() == n_out);
          REQUIRE(s.full_precision->values.cols() == n_out);
          CHECK(q2n::dequantize(s) == res.Q);
          const auto ref = qref::owq(W.template cast<double>(), H.template cast<double>(), 3, gs,
                                     false, act, n_out, 0.01, bs);
          for (Eigen::Index k = 0; k < W.cols(); ++k) REQUIRE(s.perm(k) == ref.perm[k]);
          std::set<int> kept(s.full_precision->columns.data(), s.full_precision->columns.data() + n_out);
          REQUIRE(static_cast<Eigen::Index>(kept.size()) == n_out);
          for (Eigen::Index k = 0; k < n_out; ++k) {
            REQUIRE(s.full_precision->columns(k) == ref.kept[k]);
            REQUIRE(s.uniform->g_idx(s.full_precision->columns(k)) == -1);
            // The kept columns are not W: they absorbed the lazy GPTQ updates.
            CHECK((res.Q.col(s.full_precision->columns(k)) - W.col(s.full_precision->columns(k))).norm() > 0);
          }
          // double: equal up to summation order; float: ≥ 97% of entries within 1e-4 relative
          // (float rounding flips a code only at a boundary; feedback spreads it a little).
          Eigen::Index close = 0;
          for (Eigen::Index j = 0; j < W.cols(); ++j)
            for (Eigen::Index i = 0; i < W.rows(); ++i) {
              const double a = static_cast<double>(res.Q(i, j)), b = ref.Q(i, j);
              const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-11;
              close += std::abs(a - b) <= tol * (1 + std::abs(b));
            }
          const double frac = static_cast<double>(close) / static_cast<double>(W.size());
          CHECK(frac >= (std::is_same_v<T, float> ? 0.97 : 1.0));
          ++cases;
        }
  CHECK(cases == 24);
}

TEST_CASE_TEMPLATE("owq with a target bit width", T, Q2N_TEST_SCALARS) {
  const Mat<T> W = q2n_test::gaussian<T>(8, 64, 71);
  const Mat<T> H = hessian_of<T>(q2n_test::structured_activations<T>(80, 64, 8, 72));
  q2n::OwqOptions o;
  o.grid.bits = 4;
  o.target_bits = 4.5;  // 64 · 0.5 / 12 = 2.67 → 3 → 4
  const auto res = q2n::owq(W, H, o);
  CHECK(res.storage.full_precision->columns.size() == 4);
  o.outlier_columns = 2;
  CHECK_THROWS_WITH_AS(q2n::owq(W, H, o), doctest::Contains("pass only one"),
                       std::invalid_argument);
  o.target_bits = 0;
  o.outlier_columns = 65;
  CHECK_THROWS_WITH_AS(q2n::owq(W, H, o), doctest::Contains("outlier_columns = 65 is outside"),
                       std::invalid_argument);
}

TEST_CASE_TEMPLATE("pbllm: counts per group, storage round trip, re-implementation", T, Q2N_TEST_SCALARS) {
  const Mat<T> W = q2n_test::gaussian<T>(10, 40, 81);
  const Mat<T> X = q2n_test::structured_activations<T>(90, 40, 10, 82);
  Mat<T> H = hessian_of(X);
  H.row(7).setZero();  // a dead column
  H.col(7).setZero();
  int cases = 0;
  for (double low_frac : {0.9, 0.5, 0.0, 1.0})
    for (Eigen::Index gs : {Eigen::Index(-1), Eigen::Index(8)})
      for (auto sal : {q2n::Salience::hessian, q2n::Salience::magnitude})
        for (int high : {8, 4}) {
          CAPTURE(low_frac);
          CAPTURE(gs);
          CAPTURE(static_cast<int>(sal));
          CAPTURE(high);
          q2n::PbllmOptions o;
          o.low_frac = low_frac;
          o.high.bits = high;
          o.groupsize = gs;
          o.salience = sal;
          o.sweep.blocksize = 16;
          const auto res = q2n::pbllm(W, H, o);
          const auto& s = res.storage;
          CHECK(res.diagnostics.dead_columns == 1);
          CHECK(q2n::dequantize(s) == res.Q);  // bit for bit
          const Eigen::Index g = gs == -1 ? W.cols() : gs;
          const Eigen::Index n = W.rows() * g;
          const Eigen::Index n_bin =
              std::min<Eigen::Index>(n, static_cast<Eigen::Index>(std::floor(n * low_frac)) + 1);
          for (Eigen::Index grp = 0; grp < W.cols() / g; ++grp) {
            Eigen::Index binarized = 0;
            for (Eigen::Index j = grp * g; j < (grp + 1) * g; ++j)
              for (Eigen::Index i = 0; i < W.rows(); ++i) binarized += s.binarized->salient(i, j) == 0;
            REQUIRE(binarized == n_bin);                       // exactly as configured
            CHECK(std::abs(binarized - low_frac * n) <= 1.0);  // the share, within one element
          }
          const auto ref = qref::pbllm(W.template cast<double>(), H.template cast<double>(),
                                       low_frac, high, gs, sal == q2n::Salience::hessian, 0.01, 16);
          // The salient mask depends only on W and diag(U): equal in both precisions except on
          // near-ties of the salience (none in this data for double; allow 1 flip in float).
          Eigen::Index mask_diff = 0;
          for (Eigen::Index j = 0; j < W.cols(); ++j)
            for (Eigen::Index i = 0; i < W.rows(); ++i)
              mask_diff += (s.binarized->salient(i, j) == 0) != (ref.binarized[i][j] != 0);
          CHECK(mask_diff <= (std::is_same_v<T, float> ? 1 : 0));
          if (mask_diff == 0) {
            CHECK((s.binarized->alpha.template cast<double>() - ref.alpha).cwiseAbs().maxCoeff() <=
                  (std::is_same_v<T, float> ? 1e-5 : 1e-12));
            CHECK((s.binarized->mean.template cast<double>() - ref.mean).cwiseAbs().maxCoeff() <=
                  (std::is_same_v<T, float> ? 1e-5 : 1e-12));
            Eigen::Index close = 0;
            for (Eigen::Index j = 0; j < W.cols(); ++j)
              for (Eigen::Index i = 0; i < W.rows(); ++i) {
                const double a = static_cast<double>(res.Q(i, j)), b = ref.Q(i, j);
                close += std::abs(a - b) <=
                         (std::is_same_v<T, float> ? 1e-4 : 1e-11) * (1 + std::abs(b));
              }
            // The sign of x − mean can flip in float when x is within rounding of the mean.
            CHECK(static_cast<double>(close) / static_cast<double>(W.size()) >=
                  (std::is_same_v<T, float> ? 0.97 : 1.0));
          }
          // Binarized entries are sign · alpha + mean; signs are stored for them only.
          for (Eigen::Index j = 0; j < W.cols(); ++j)
            for (Eigen::Index i = 0; i < W.rows(); ++i)
              if (s.binarized->salient(i, j)) {
                REQUIRE(s.binarized->signs(i, j) == 0);
              } else {
                REQUIRE(s.uniform->codes(i, j) == 0);
                const Eigen::Index grp = j / g;
                REQUIRE(res.Q(i, j) ==
                        static_cast<T>(s.binarized->signs(i, j)) * s.binarized->alpha(i, grp) + s.binarized->mean(i, grp));
              }
          ++cases;
        }
  CHECK(cases == 32);
}

TEST_CASE("owq and pbllm reject bad input") {
  const Eigen::MatrixXd W = q2n_test::gaussian<double>(4, 16, 1);
  const Eigen::MatrixXd X = q2n_test::gaussian<double>(32, 16, 2);
  const Eigen::MatrixXd H = X.transpose() * X / 16;
  q2n::OwqOptions o1;
  o1.grid.bits = 1;
  CHECK_THROWS_WITH_AS(q2n::owq(W, H, o1), doctest::Contains("q2n::owq: grid.bits = 1"),
                       std::invalid_argument);
  q2n::OwqOptions oo;
  oo.groupsize = 3;
  CHECK_THROWS_WITH_AS(q2n::owq(W, H, oo), doctest::Contains("does not divide cols = 16"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::owq(W, Eigen::MatrixXd::Zero(16, 16)), doctest::Contains("all zero"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::owq(W, H.topRows(15)), doctest::Contains("H (must be cols x cols"),
                       std::invalid_argument);
  q2n::PbllmOptions po;
  po.high.bits = 9;
  CHECK_THROWS_WITH_AS(q2n::pbllm(W, H, po), doctest::Contains("high.bits = 9 is outside 2..8"),
                       std::invalid_argument);
  po = {};
  po.low_frac = 1.5;
  CHECK_THROWS_WITH_AS(q2n::pbllm(W, H, po), doctest::Contains("low_frac = 1.5"),
                       std::invalid_argument);
  po = {};
  po.groupsize = 5;
  CHECK_THROWS_WITH_AS(q2n::pbllm(W, H, po), doctest::Contains("groupsize = 5 does not divide"),
                       std::invalid_argument);
  Eigen::MatrixXd Wn = W;
  Wn(0, 0) = NAN;
  CHECK_THROWS_WITH_AS(q2n::pbllm(Wn, H), doctest::Contains("W(0, 0) = nan"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::pbllm(W, Eigen::MatrixXd::Zero(16, 16)), doctest::Contains("all zero"),
                       std::invalid_argument);
  // Rank-deficient H: both quantize and report the damping used.
  const Eigen::MatrixXd X3 = q2n_test::gaussian<double>(3, 16, 4);
  const Eigen::MatrixXd H3 = X3.transpose() * X3;
  q2n::OwqOptions o2;
  o2.outlier_columns = 2;
  const auto a = q2n::owq(W, H3, o2);
  CHECK(a.Q.allFinite());
  CHECK(a.diagnostics.damping == doctest::Approx(0.01 * H3.diagonal().mean()));
  const auto b = q2n::pbllm(W, H3);
  CHECK(b.Q.allFinite());
  CHECK(b.diagnostics.damping == doctest::Approx(0.01 * H3.diagonal().mean()));
}
