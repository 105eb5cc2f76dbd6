// QuIP: the whole pipeline against a literal re-implementation of its steps (preprocessing
// formed densely, LDLQ in the integer domain, greedy passes), LDLQ ≡ GPTQ on the reversed
// problem, H = I ⇒ round to nearest, the greedy pass as a descent method, invariance to the
// scale of H, the storage in the incoherent basis, Q2N there, and bad input.
#include <doctest/doctest.h>

#include <q2n/projection.hpp>
#include <q2n/quantizers.hpp>

#include "quant_reference.hpp"
#include "test_util.hpp"

#include <cmath>
#include <random>
#include <set>
#include <vector>

namespace {

using q2n_test::Mat;
using Md = Eigen::MatrixXd;

template <class T>
struct QuipLayer {
  Mat<T> W, X, H, abar;
};

// LLM-like inputs (low-rank, outlier channels, a massive first position), 4 sequences.
template <class T>
QuipLayer<T> make_quip_layer(Eigen::Index rows, Eigen::Index cols, std::uint32_t seed) {
  QuipLayer<T> L;
  L.W = q2n_test::gaussian<T>(rows, cols, seed);
  const Eigen::Index seqlen = 16, samples = 4;
  const Md x = q2n_test::structured_activations<double>(samples * seqlen, cols, 6, seed + 1, 0.05);
  L.X = x.cast<T>();
  L.H = ((2.0 / double(x.rows())) * x.transpose() * x).cast<T>();
  Md abar = Md::Zero(seqlen, cols);
  for (Eigen::Index s = 0; s < samples; ++s) abar += x.middleRows(s * seqlen, seqlen) / double(samples);
  L.abar = abar.cast<T>();
  return L;
}

Md dense_of(const q2n::OrthogonalTransform<double>& t) {
  Md I = Md::Identity(t.size(), t.size());
  t.apply(I, false);
  return I;
}

// Continuous codes of W̃ on the stored grid (one group per row), as the reference defines them.
Md quip_codes_of(const q2n::UniformGrid<double>& u, const Md& Wt) {
  Md U(Wt.rows(), Wt.cols());
  for (Eigen::Index r = 0; r < Wt.rows(); ++r)
    for (Eigen::Index j = 0; j < Wt.cols(); ++j)
      U(r, j) = u.form == q2n::AffineForm::offset ? (Wt(r, j) - u.offsets(r, 0)) / u.scales(r, 0)
                                                  : Wt(r, j) / u.scales(r, 0) + u.zeros(r, 0);
  return U;
}

double quip_rel_out_err(const Md& X, const Md& W, const Md& Q) {
  return (X * (Q - W).transpose()).squaredNorm() / (X * W.transpose()).squaredNorm();
}

}  // namespace

TEST_CASE("quip: every step against a literal re-implementation") {
  const auto L = make_quip_layer<double>(24, 40, 21);  // 40 = 2·2·2·5: Kronecker factors 10 × 4
  for (auto inc : {q2n::Incoherence::kronecker, q2n::Incoherence::none})
    for (int npasses : {0, 1, 3}) {
      CAPTURE(int(inc));
      CAPTURE(npasses);
      q2n::QuipOptions o;
      o.bits = 2;
      o.incoherence = inc;
      o.npasses = npasses;
      o.seed = 5;
      const auto res = q2n::quip(L.W, L.H, o);
      const auto& st = res.storage;
      CHECK(st.method == "quip");
      // The preprocessing by its formulas, with the stored transforms formed densely.
      const Eigen::VectorXd s = st.transforms.input_scale;
      Md Wt = L.W * s.asDiagonal();
      Md Ht = s.cwiseInverse().asDiagonal() * (L.H / L.H.cwiseAbs().maxCoeff()) * s.cwiseInverse().asDiagonal();
      for (Eigen::Index j = 0; j < 40; ++j) {
        // Rescale invariant: ‖W'_:j‖² = H'_jj (no clamp active here).
        CHECK(Wt.col(j).squaredNorm() == doctest::Approx(Ht(j, j)).epsilon(1e-12));
      }
      if (inc != q2n::Incoherence::none) {
        const Md U = dense_of(*st.transforms.output), V = dense_of(*st.transforms.input);
        Ht = Ht * (40.0 / (Ht.trace() + 1e-8));
        Ht.diagonal().array() += 0.01;
        Wt = U * Wt * V.transpose();
        Ht = V * Ht * V.transpose();
      }
      Ht.diagonal().array() += 0.01 * Ht.diagonal().mean();
      // Tolerance: the library applies the transforms by factors, this forms them densely;
      // the two differ by ~1e-15 relative, far from moving a code.
      CHECK((q2n::to_stored_basis(st, L.W) - Wt).cwiseAbs().maxCoeff() <= 1e-12);
      const Md Uc = quip_codes_of(*st.uniform, Wt);
      const double maxq = 3;
      const Md want = qref::greedy(qref::ldlq(Uc, Ht, maxq), Uc, Ht, maxq, npasses);
      const Md got = st.uniform->codes.cast<double>();
      CHECK((got - want).cwiseAbs().maxCoeff() == 0);
      // The balanced grid: σ = 2.4·RMS(W̃), values σ·(2c/3 − 1).
      const double sigma = 2.4 * std::sqrt(Wt.squaredNorm() / double(Wt.size())) + 1e-16;
      CHECK(st.uniform->scales(0, 0) == doctest::Approx(2 * sigma / 3).epsilon(1e-13));
      CHECK(st.uniform->offsets(0, 0) == doctest::Approx(-sigma).epsilon(1e-13));
      // Q is the stored matrix in the original basis.
      CHECK((res.Q - q2n::dequantize(st)).cwiseAbs().maxCoeff() == 0);
    }
}

TEST_CASE("quip: the rescaling's column norms against a long double sum") {
  // sum_of_squares runs eight partial sums in double; against a long double sum of the same
  // squares the rounding error is a few units of 2^-53 per partial sum, far below 1e-14.
  std::mt19937 g(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (Eigen::Index n : {1, 7, 8, 9, 255, 256, 257, 1000, 4099}) {
    CAPTURE(n);
    std::vector<float> x(static_cast<std::size_t>(n));
    for (auto& v : x) v = nd(g) * 100.f;
    long double want = 0;
    for (float v : x) want += static_cast<long double>(v) * static_cast<long double>(v);
    const double got = q2n::detail::sum_of_squares(x.data(), n);
    CHECK(std::abs(static_cast<long double>(got) - want) <= 1e-14L * want);
  }
  CHECK(q2n::detail::sum_of_squares(static_cast<const double*>(nullptr), 0) == 0.0);
}

TEST_CASE("quip: LDLQ is GPTQ on the column-reversed problem") {
  const auto L = make_quip_layer<double>(16, 48, 23);
  q2n::QuipOptions o;
  o.bits = 3;
  o.grid = q2n::QuipGrid::per_row;
  o.rescale = false;
  o.incoherence = q2n::Incoherence::none;
  o.npasses = 0;
  o.sweep.blocksize = 16;
  const auto quip = q2n::quip(L.W, L.H, o);
  Md WJ = L.W.rowwise().reverse(), HJ = L.H.rowwise().reverse().colwise().reverse();
  q2n::GptqOptions g;
  g.grid.bits = 3;
  g.sweep.blocksize = 16;
  const auto gptq = q2n::gptq(WJ, HJ, g);
  // Exact: the same H⁻¹ factor and sweep; the rounding rules (half up, half to even) differ
  // only at exact ties, which random weights do not produce.
  CHECK(quip.Q == Md(gptq.Q.rowwise().reverse()));
}

TEST_CASE("quip: H = I is round to nearest on the grid, in either basis") {
  const Md W = q2n_test::gaussian<double>(12, 32, 29);
  const Md I = Md::Identity(32, 32);
  for (auto inc : {q2n::Incoherence::none, q2n::Incoherence::hadamard})
    for (int npasses : {0, 2}) {
      CAPTURE(int(inc));
      q2n::QuipOptions o;
      o.bits = 2;
      o.rescale = false;
      o.incoherence = inc;
      o.npasses = npasses;
      const auto res = q2n::quip(W, I, o);
      const Md Wt = q2n::to_stored_basis(res.storage, W);
      const Md U = quip_codes_of(*res.storage.uniform, Wt);
      for (Eigen::Index j = 0; j < 32; ++j)
        for (Eigen::Index r = 0; r < 12; ++r)
          REQUIRE(res.storage.uniform->codes(r, j) == std::min(std::max(std::floor(U(r, j) + 0.5), 0.0), 3.0));
    }
}

TEST_CASE("quip: a greedy pass never raises the proxy loss") {
  const auto L = make_quip_layer<double>(10, 36, 31);
  Md H = L.H;
  H.diagonal().array() += 0.01 * H.diagonal().mean();
  const Md U = 1.5 * Md::Ones(10, 36) + q2n_test::gaussian<double>(10, 36, 33);
  Md C = U.array().round().matrix();
  C(0, 0) += 3;  // a bad start gives the pass something to do
  auto loss = [&](const Md& c) { return ((c - U) * H * (c - U).transpose()).trace(); };
  for (Eigen::Index block : {1, 5, 36}) {
    Md c = C, s = C - U;
    const double before = loss(c);
    const Eigen::Index changed = q2n::detail::greedy_pass(c, s, H, block);
    CHECK(changed > 0);
    CHECK(loss(c) <= before);
    CHECK((s - (c - U)).cwiseAbs().maxCoeff() <= 1e-12);
    // The blocked pass takes the literal pass's steps.
    CHECK(c == qref::greedy(C, U, H, 3, 1, /*clamp=*/false));
  }
}

TEST_CASE_TEMPLATE("quip: H and 4H give the same result; the storage holds at most 2^b values per row", T,
                   Q2N_TEST_SCALARS) {
  const auto L = make_quip_layer<T>(16, 32, 35);
  q2n::QuipOptions o;
  o.bits = 2;
  o.incoherence = q2n::Incoherence::hadamard;
  const auto a = q2n::quip(L.W, L.H, o);
  const auto b = q2n::quip(L.W, Mat<T>(T(4) * L.H), o);
  CHECK(a.Q == b.Q);
  const Mat<T> Qt = q2n::dequantize_stored(a.storage);
  for (Eigen::Index r = 0; r < 16; ++r) {
    std::set<T> values;
    for (Eigen::Index j = 0; j < 32; ++j) values.insert(Qt(r, j));
    CHECK(values.size() <= 4);
  }
  CHECK(a.diagnostics.seconds.transform >= 0);
}

TEST_CASE_TEMPLATE("quip + Q2N in the incoherent basis lowers the output error; the reference's variant changes nothing",
                   T, Q2N_TEST_SCALARS) {
  const auto L = make_quip_layer<T>(32, 64, 37);
  q2n::QuipOptions o;
  o.bits = 2;
  const auto res = q2n::quip(L.W, L.H, o);
  const Md X = L.X.template cast<double>(), W = L.W.template cast<double>();
  const double before = quip_rel_out_err(X, W, res.Q.template cast<double>());
  // Ā mapped into the stored basis: Ā diag(s)⁻¹ Vᵀ.
  const auto ns = q2n::NullSpace<T>::compute(q2n::activations_to_stored_basis(res.storage, L.abar));
  REQUIRE(ns.cut().found);
  const auto ref = q2n::refine(res, L.W, ns);
  const double after = quip_rel_out_err(X, W, ref.Q.template cast<double>());
  // The reference's variant: Ā is never accumulated and the cut returns nothing, so P = I.
  const auto none = q2n::refine(res, L.W, q2n::NullSpace<T>::identity(64));
  MESSAGE("quip 2-bit: output error ", before, " -> ", after, " with Q2N in the incoherent basis");
  CHECK(after < before);
  CHECK(none.m == Eigen::Matrix<T, Eigen::Dynamic, 1>::Ones(32));
  CHECK(none.Q == res.Q);
  // The fold: per-row scale and offset of the grid, codes and transforms untouched.
  CHECK(ref.storage.uniform->codes == res.storage.uniform->codes);
  CHECK(ref.storage.uniform->scales == ref.m.asDiagonal() * res.storage.uniform->scales);
  CHECK(ref.storage.uniform->offsets == ref.m.asDiagonal() * res.storage.uniform->offsets);
  CHECK(ref.storage.transforms.input == res.storage.transforms.input);
}

TEST_CASE("quip rejects bad options") {
  const auto L = make_quip_layer<float>(4, 32, 41);
  q2n::QuipOptions o;
  o.bits = 1;
  CHECK_THROWS_WITH_AS(q2n::quip(L.W, L.H, o), doctest::Contains("bits = 1"), std::invalid_argument);
  o.bits = 2;
  o.npasses = -1;
  CHECK_THROWS_WITH_AS(q2n::quip(L.W, L.H, o), doctest::Contains("npasses = -1"), std::invalid_argument);
  o.npasses = 1;
  o.damping.percdamp = -0.1;
  CHECK_THROWS_AS(q2n::quip(L.W, L.H, o), std::invalid_argument);
  o.damping.percdamp = 0.01;
  o.incoherence = q2n::Incoherence::hadamard;
  // 4 rows, 43 · 8 columns: H_K would need K = 172 (or more than 256).
  const Mat<float> W = q2n_test::gaussian<float>(4, 344, 1);
  CHECK_THROWS_WITH_AS(q2n::quip(W, Mat<float>(Mat<float>::Identity(344, 344)), o),
                       doctest::Contains("no built-in Hadamard matrix for n = 344"), std::invalid_argument);
  const std::string why = q2n_test::thrown<std::invalid_argument>(
      [&] { q2n::quip(Mat<float>(W.transpose()), Mat<float>(Mat<float>::Identity(4, 4)), o); });
  CHECK(q2n_test::has(why, "n = 344"));
  CHECK(q2n_test::has(why, "Incoherence::kronecker"));
}
