// Q2N plug-in: m from the ORIGINAL W in the ORIGINAL column order (a permuted-coordinates
// implementation fails these tests), folding into every storage form, re-dequantization.
#include <doctest/doctest.h>

#include <cmath>
#include <limits>
#include <q2n/quantizers.hpp>
#include <vector>

#include "quant_reference.hpp"
#include "test_util.hpp"

namespace {

using q2n_test::Mat;

/// A layer where act-order / OWQ reorder the columns and the null space is not invariant to
/// that reordering: channel scales grow with the column index (so diag(H) descending reverses
/// the order) and the calibration mean Ā is low-rank with structure tied to positions.
template <class T>
struct Layer {
  Mat<T> W, X, H, abar;
};

template <class T>
Layer<T> make_layer(Eigen::Index rows, Eigen::Index cols, std::uint32_t seed) {
  Layer<T> L;
  L.W = q2n_test::gaussian<T>(rows, cols, seed);
  const Eigen::Index seqlen = 12, samples = 4;
  Mat<double> x = q2n_test::structured_activations<double>(samples * seqlen, cols, 5, seed + 1);
  for (Eigen::Index c = 0; c < cols; ++c) x.col(c) *= 0.2 + 0.05 * static_cast<double>(c);
  L.X = x.cast<T>();
  L.H = (T(2) / static_cast<T>(x.rows())) * L.X.transpose() * L.X;
  Mat<double> abar = Mat<double>::Zero(seqlen, cols);
  for (Eigen::Index s = 0; s < samples; ++s) abar += x.middleRows(s * seqlen, seqlen) / samples;
  L.abar = abar.cast<T>();
  return L;
}

/// m computed here with a dense projector: correct (original order) or in permuted coordinates.
template <class T>
Eigen::VectorXd dense_m(const Mat<T>& W, const Mat<T>& Q, const q2n::NullSpace<T>& ns,
                        const Eigen::VectorXi& perm, bool permuted, double lambda) {
  Eigen::MatrixXd w = W.template cast<double>(), q = Q.template cast<double>();
  if (permuted) {
    Eigen::MatrixXd wp(w.rows(), w.cols()), qp(q.rows(), q.cols());
    for (Eigen::Index k = 0; k < w.cols(); ++k) {
      wp.col(k) = w.col(perm(k));
      qp.col(k) = q.col(perm(k));
    }
    w = wp;
    q = qp;
  }
  const auto m =
      qref::equivalent_vector_dense(w, q, ns.kept_basis().template cast<double>(), lambda);
  return Eigen::Map<const Eigen::VectorXd>(m.data(), static_cast<Eigen::Index>(m.size()));
}

template <class T>
void check_refined(const q2n::QuantResult<T>& res, const q2n::Refinement<T>& ref) {
  // dequantize(refined storage) is the refined Q, exactly.
  CHECK(q2n::dequantize(ref.storage) == ref.Q);
  // Against diag(m)·Q: uniform entries s·(q − z) become fl(fl(m s)(q − z)) — within 2 ulp of
  // m·Q; full-precision entries are fl(m v) exactly; binarized entries sign·α + μ become
  // fl(fl(mα)·sign + fl(mμ)), within 3 ulp of |m|(|α| + |μ|) (cancellation can make the
  // relative error of tiny results larger, so that bound is absolute).
  const double eps = std::numeric_limits<T>::epsilon();
  const auto& s = ref.storage;
  std::vector<char> is_fp(static_cast<std::size_t>(s.cols), 0);
  if (s.full_precision)
    for (Eigen::Index k = 0; k < s.full_precision->columns.size(); ++k)
      is_fp[static_cast<std::size_t>(s.full_precision->columns(k))] = 1;
  double worst_uniform = 0;
  for (Eigen::Index j = 0; j < s.cols; ++j)
    for (Eigen::Index i = 0; i < s.rows; ++i) {
      const T exact_prod = ref.m(i) * res.Q(i, j);
      if (is_fp[static_cast<std::size_t>(j)]) {
        REQUIRE(ref.Q(i, j) == exact_prod);
        continue;
      }
      const double target = static_cast<double>(ref.m(i)) * static_cast<double>(res.Q(i, j));
      const double got = static_cast<double>(ref.Q(i, j));
      if (s.binarized && !s.binarized->salient(i, j)) {
        const Eigen::Index b = j / s.binarized->groupsize;
        const auto& b0 = *res.storage.binarized;
        const double bound = 3 * eps * std::abs(static_cast<double>(ref.m(i))) *
                             (std::abs(static_cast<double>(b0.alpha(i, b))) +
                              std::abs(static_cast<double>(b0.mean(i, b))));
        REQUIRE(std::abs(got - target) <= bound);
      } else if (target != 0) {
        worst_uniform = std::max(worst_uniform, std::abs(got - target) / std::abs(target));
      } else {
        REQUIRE(got == 0);
      }
    }
  CHECK(worst_uniform <= 2 * eps);
  // Codes, zeros and the order are untouched; scales scale with m.
  const auto& u = *s.uniform;
  const auto& u0 = *res.storage.uniform;
  CHECK(u.codes == u0.codes);
  CHECK(u.zeros == u0.zeros);
  CHECK(u.g_idx == u0.g_idx);
  CHECK(s.perm == res.storage.perm);
  CHECK(u.scales == ref.m.asDiagonal() * u0.scales);
}

}  // namespace

TEST_CASE_TEMPLATE("refine uses the original column order under act-order", T, Q2N_TEST_SCALARS) {
  const auto L = make_layer<T>(12, 40, 91);
  const auto ns = q2n::NullSpace<T>::compute(L.abar);
  REQUIRE(ns.cut().found);
  REQUIRE(ns.kept() > 0);
  for (bool stat : {false, true}) {
    CAPTURE(stat);
    q2n::GptqOptions o;
    o.grid.bits = 3;
    o.groupsize = 8;
    o.act_order = true;
    o.static_groups = stat;
    const auto res = q2n::gptq(L.W, L.H, o);
    Eigen::Index moved = 0;
    for (Eigen::Index k = 0; k < L.W.cols(); ++k) moved += res.storage.perm(k) != k;
    REQUIRE(moved > L.W.cols() / 2);  // the permutation really matters

    const double lambda = 0.2;
    const auto ref = q2n::refine(res, L.W, ns, lambda);
    const Eigen::VectorXd right = dense_m(L.W, res.Q, ns, res.storage.perm, false, lambda);
    const Eigen::VectorXd wrong = dense_m(L.W, res.Q, ns, res.storage.perm, true, lambda);
    // Tolerance: float carries U1's rounding (~1e-6) into m − 1; double ~1e-12.
    const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-11;
    const double err = (ref.m.template cast<double>() - right).cwiseAbs().maxCoeff();
    const double gap = (wrong - right).cwiseAbs().maxCoeff();
    MESSAGE("act-order: |m - m_original_order| = ", err, ", |m_permuted - m_original| = ", gap);
    CHECK(err <= tol);
    CHECK(gap > 100 * tol);  // P in permuted coordinates would fail the check above
    CHECK(ref.cut.kept == ns.kept());
    check_refined(res, ref);
  }
}

TEST_CASE_TEMPLATE("refine uses the original column order under OWQ", T, Q2N_TEST_SCALARS) {
  const auto L = make_layer<T>(10, 32, 95);
  const auto ns = q2n::NullSpace<T>::compute(L.abar);
  REQUIRE(ns.kept() > 0);
  for (bool act : {false, true}) {
    CAPTURE(act);
    q2n::OwqOptions o;
    o.grid.bits = 3;
    o.act_order = act;
    o.outlier_columns = 4;
    const auto res = q2n::owq(L.W, L.H, o);
    const auto ref = q2n::refine(res, L.W, ns);
    const Eigen::VectorXd right = dense_m(L.W, res.Q, ns, res.storage.perm, false, 0.2);
    const Eigen::VectorXd wrong = dense_m(L.W, res.Q, ns, res.storage.perm, true, 0.2);
    const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-11;
    const double err = (ref.m.template cast<double>() - right).cwiseAbs().maxCoeff();
    const double gap = (wrong - right).cwiseAbs().maxCoeff();
    MESSAGE("owq: |m - m_original_order| = ", err, ", |m_permuted - m_original| = ", gap);
    CHECK(err <= tol);
    CHECK(gap > 100 * tol);
    check_refined(res, ref);
    // Kept columns: fp_values scaled by m, exactly one rounding.
    for (Eigen::Index k = 0; k < 4; ++k)
      CHECK(ref.storage.full_precision->values.col(k) ==
            (ref.m.array() * res.storage.full_precision->values.col(k).array()).matrix());
  }
}

TEST_CASE_TEMPLATE("refine folds m into LeanQuant's grid, in the original column order", T, Q2N_TEST_SCALARS) {
  // The LeanQuant reference builds B from GPTQ's working W in act-order coordinates; refine
  // uses the original W and Q in the original order, and scales each row's grid values.
  const auto L = make_layer<T>(12, 40, 93);
  const auto ns = q2n::NullSpace<T>::compute(L.abar);
  REQUIRE(ns.kept() > 0);
  q2n::LeanQuantOptions o;
  o.bits = 2;
  o.act_order = true;
  const auto res = q2n::leanquant(L.W, L.H, o);
  const auto ref = q2n::refine(res, L.W, ns);
  const Eigen::VectorXd right = dense_m(L.W, res.Q, ns, res.storage.perm, false, 0.2);
  const Eigen::VectorXd wrong = dense_m(L.W, res.Q, ns, res.storage.perm, true, 0.2);
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-11;  // as for GPTQ above
  const double err = (ref.m.template cast<double>() - right).cwiseAbs().maxCoeff();
  MESSAGE("leanquant: |m - m_original_order| = ", err, ", |m_permuted - m_original| = ",
          (wrong - right).cwiseAbs().maxCoeff());
  CHECK(err <= tol);
  CHECK((wrong - right).cwiseAbs().maxCoeff() > 100 * tol);
  // The fold: values(r, :) ← fl(m_r · values(r, :)), codes untouched, so every refined entry
  // is exactly fl(m_r · Q_rj) and the storage still dequantizes to the refined Q.
  CHECK(ref.storage.codebook->values == ref.m.asDiagonal() * res.storage.codebook->values);
  CHECK(ref.storage.codebook->codes == res.storage.codebook->codes);
  CHECK(ref.Q == ref.m.asDiagonal() * res.Q);
  CHECK(q2n::dequantize(ref.storage) == ref.Q);
}

TEST_CASE_TEMPLATE("refine on rtn, gptq and pbllm storage", T, Q2N_TEST_SCALARS) {
  const auto L = make_layer<T>(9, 48, 97);
  const auto ns = q2n::NullSpace<T>::compute(L.abar);
  q2n::RtnOptions ro;
  ro.groupsize = 16;
  const auto r = q2n::rtn(L.W, ro);
  check_refined(r, q2n::refine(r, L.W, ns));
  q2n::GptqOptions go;
  go.grid.bits = 2;
  go.grid.sym = true;
  go.groupsize = 16;
  const auto g = q2n::gptq(L.W, L.H, go);
  check_refined(g, q2n::refine(g, L.W, ns));
  q2n::PbllmOptions po;
  po.groupsize = 16;
  const auto p = q2n::pbllm(L.W, L.H, po);
  const auto pr = q2n::refine(p, L.W, ns);
  check_refined(p, pr);
  CHECK(pr.storage.binarized->alpha == pr.m.asDiagonal() * p.storage.binarized->alpha);
  CHECK(pr.storage.binarized->mean == pr.m.asDiagonal() * p.storage.binarized->mean);
  CHECK(pr.storage.binarized->signs == p.storage.binarized->signs);
  CHECK(pr.storage.binarized->salient == p.storage.binarized->salient);

  // No cut: P = I, m = 1 exactly and nothing changes.
  const auto id = q2n::NullSpace<T>::identity(L.W.cols());
  const auto same = q2n::refine(g, L.W, id);
  CHECK(same.m == Eigen::Matrix<T, Eigen::Dynamic, 1>::Ones(L.W.rows()));
  CHECK(same.Q == g.Q);
  CHECK_FALSE(same.cut.found);
}

TEST_CASE("refine and fold reject bad input") {
  const auto L = make_layer<double>(6, 16, 99);
  const auto ns = q2n::NullSpace<double>::compute(L.abar);
  const auto r = q2n::rtn(L.W);
  CHECK_THROWS_WITH_AS(q2n::refine(r, L.W.leftCols(8), ns),
                       doctest::Contains("W (must be the original weights"), std::invalid_argument);
  auto st = r.storage;
  CHECK_THROWS_WITH_AS(q2n::fold(st, Eigen::VectorXd::Ones(5)),
                       doctest::Contains("m is 5 x 1 but the storage has 6 rows"),
                       std::invalid_argument);
  Eigen::VectorXd bad = Eigen::VectorXd::Ones(6);
  bad(2) = NAN;
  CHECK_THROWS_AS(q2n::fold(st, bad), std::invalid_argument);
  st.uniform->g_idx(3) = 7;
  CHECK_THROWS_WITH_AS(q2n::dequantize(st), doctest::Contains("storage.uniform->g_idx(3) = 7"),
                       std::invalid_argument);
}
