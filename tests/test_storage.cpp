// The storage model: each part's dequantization and its fold of a per-row m, the builder's
// invariants, storage in another basis (transforms), and a null space given by its basis.
#include <doctest/doctest.h>

#include <Eigen/QR>
#include <algorithm>
#include <cmath>
#include <memory>
#include <q2n/projection.hpp>
#include <random>
#include <string>

#include "test_util.hpp"

namespace {

using q2n_test::Mat;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;

constexpr Eigen::Index kRows = 7, kCols = 12;

q2n::CodeMatrix random_codes(int bits, std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int> d(0, (1 << bits) - 1);
  q2n::CodeMatrix c(kRows, kCols);
  for (Eigen::Index j = 0; j < kCols; ++j)
    for (Eigen::Index i = 0; i < kRows; ++i) c(i, j) = static_cast<std::uint8_t>(d(gen));
  return c;
}

// One storage per part, each covering every column (with the other parts it needs).
template <class T>
q2n::QuantStorage<T> affine(q2n::AffineForm form) {
  q2n::UniformGrid<T> u;
  u.bits = 3;
  u.form = form;
  u.codes = random_codes(3, 1);
  u.scales = q2n_test::gaussian<T>(kRows, 3, 2).cwiseAbs();
  if (form == q2n::AffineForm::zero_point)
    u.zeros = Mat<T>::Constant(kRows, 3, T(4));
  else
    u.offsets = q2n_test::gaussian<T>(kRows, 3, 3);
  u.g_idx = q2n::group_index(kCols, 4);
  return q2n::StorageBuilder<T>(kRows, kCols, "affine").uniform(std::move(u)).build();
}

template <class T>
q2n::QuantStorage<T> codebook() {
  q2n::Codebook<T> c;
  c.bits = 2;
  c.codes = random_codes(2, 4);
  c.values = q2n_test::gaussian<T>(kRows, 4, 5);
  return q2n::StorageBuilder<T>(kRows, kCols, "codebook").codebook(std::move(c)).build();
}

template <class T>
q2n::QuantStorage<T> outlier_columns() {
  q2n::QuantStorage<T> s = affine<T>(q2n::AffineForm::zero_point);
  q2n::FullPrecisionColumns<T> f;
  f.columns.resize(2);
  f.columns << 9, 2;
  f.values = q2n_test::gaussian<T>(kRows, 2, 6);
  s.uniform->g_idx(9) = s.uniform->g_idx(2) = -1;
  s.full_precision = std::move(f);
  s.method = "outliers";
  return s;
}

template <class T>
q2n::QuantStorage<T> mask() {
  q2n::QuantStorage<T> s = affine<T>(q2n::AffineForm::zero_point);
  q2n::BinarizedEntries<T> b;
  b.salient = random_codes(1, 7);
  b.signs.resize(kRows, kCols);
  for (Eigen::Index j = 0; j < kCols; ++j)
    for (Eigen::Index i = 0; i < kRows; ++i)
      b.signs(i, j) = static_cast<std::int8_t>(b.salient(i, j) ? 0 : ((i + j) % 3) - 1);
  b.groupsize = 6;
  b.alpha = q2n_test::gaussian<T>(kRows, 2, 8).cwiseAbs();
  b.mean = q2n_test::gaussian<T>(kRows, 2, 9);
  s.binarized = std::move(b);
  s.method = "mask";
  return s;
}

// Dequantization written out entry by entry from each part's definition, in double; with
// `magnitude`, the sum of the absolute values of each entry's terms instead (the scale of its
// rounding errors).
template <class T>
Eigen::MatrixXd by_definition(const q2n::QuantStorage<T>& s, bool magnitude = false) {
  auto sum = [&](double a, double b) { return magnitude ? std::abs(a) + std::abs(b) : a + b; };
  Eigen::MatrixXd Q(s.rows, s.cols);
  for (Eigen::Index j = 0; j < s.cols; ++j)
    for (Eigen::Index i = 0; i < s.rows; ++i) {
      double v = 0;
      if (s.uniform) {
        const auto& u = *s.uniform;
        const int g = u.g_idx(j);
        if (g >= 0)
          v = u.form == q2n::AffineForm::zero_point
                  ? double(u.scales(i, g)) * (u.codes(i, j) - double(u.zeros(i, g)))
                  : sum(double(u.scales(i, g)) * u.codes(i, j), double(u.offsets(i, g)));
      }
      if (s.codebook) v = double(s.codebook->values(i, s.codebook->codes(i, j)));
      if (s.binarized && !s.binarized->salient(i, j)) {
        const auto& b = *s.binarized;
        v = sum(b.signs(i, j) * double(b.alpha(i, j / b.groupsize)),
                double(b.mean(i, j / b.groupsize)));
      }
      if (s.full_precision)
        for (Eigen::Index k = 0; k < s.full_precision->columns.size(); ++k)
          if (s.full_precision->columns(k) == j) v = double(s.full_precision->values(i, k));
      Q(i, j) = magnitude ? std::abs(v) : v;
    }
  return Q;
}

}  // namespace

TEST_CASE_TEMPLATE("every storage part dequantizes as defined and folds m exactly", T, Q2N_TEST_SCALARS) {
  const std::vector<std::pair<const char*, q2n::QuantStorage<T>>> parts = {
      {"affine, zero point", affine<T>(q2n::AffineForm::zero_point)},
      {"affine, offset", affine<T>(q2n::AffineForm::offset)},
      {"codebook", codebook<T>()},
      {"outlier columns", outlier_columns<T>()},
      {"salient mask", mask<T>()}};
  const double eps = std::numeric_limits<T>::epsilon();
  for (const auto& [name, s] : parts) {
    const std::string part = name;
    CAPTURE(part);
    const Mat<T> Q = q2n::dequantize(s);
    // Each part's formula, one rounding per operation: within 4 ulp of the double value.
    const Eigen::MatrixXd def = by_definition(s);
    CHECK((Q.template cast<double>() - def).cwiseAbs().maxCoeff() <=
          4 * eps * (1 + def.cwiseAbs().maxCoeff()));

    // Powers of two scale every stored factor without rounding, so the fold must reproduce
    // diag(m) Q bit for bit: any mistake in which factors a part scales shows up exactly.
    Vec<T> m(kRows);
    m << T(2), T(0.5), T(1), T(4), T(0.25), T(8), T(0.125);
    q2n::QuantStorage<T> folded = s;
    q2n::fold(folded, m);
    CHECK(q2n::dequantize(folded) == (m.asDiagonal() * Q).eval());

    // A general m: each folded entry carries at most three roundings (m·s or m·α, m·o or m·μ,
    // the product, the sum), each relative to the magnitude of the entry's terms (which can
    // cancel in the offset and binarized forms); the reference m_r · Q_rj carries two more.
    // The codebook values are exactly fl(m_r · v).
    Vec<T> g(kRows);
    g << T(1.01), T(0.97), T(1.003), T(0.999), T(1.2), T(0.8), T(1);
    q2n::QuantStorage<T> folded2 = s;
    q2n::fold(folded2, g);
    const Mat<T> got = q2n::dequantize(folded2);
    const Eigen::MatrixXd want = g.template cast<double>().asDiagonal() * Q.template cast<double>();
    const Eigen::MatrixXd scale = g.template cast<double>().cwiseAbs().asDiagonal() * by_definition(s, true);
    double worst = 0;
    for (Eigen::Index j = 0; j < kCols; ++j)
      for (Eigen::Index i = 0; i < kRows; ++i)
        if (scale(i, j) > 0)
          worst = std::max(worst, std::abs(double(got(i, j)) - want(i, j)) / scale(i, j));
    CHECK(worst <= 5 * eps);
    if (s.codebook) CHECK(got == (g.asDiagonal() * Q).eval());
  }
}

TEST_CASE("the builder enforces the documented invariants") {
  using S = q2n::QuantStorage<double>;
  auto expect = [](S s, const char* what) {
    CHECK_THROWS_WITH_AS(q2n::dequantize(s), doctest::Contains(what), std::invalid_argument);
  };
  CHECK_THROWS_WITH_AS(q2n::StorageBuilder<double>(2, 3, ""), doctest::Contains("method is empty"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::StorageBuilder<double>(2, 3, "x").build(),
                       doctest::Contains("column 0 is covered by no part"), std::invalid_argument);
  S a = affine<double>(q2n::AffineForm::zero_point);
  {
    S s = a;
    s.codebook = codebook<double>().codebook;
    expect(s, "both a uniform grid and a codebook");
  }
  {
    S s = a;
    s.uniform->codes(0, 0) = 8;  // 3 bits
    expect(s, "holds 8 > 2^bits − 1 = 7");
  }
  {
    S s = a;
    s.uniform->zeros(1, 1) = 2.5;
    expect(s, "zeros(1, 1) = 2.5 is not an integer");
  }
  {
    S s = a;
    s.uniform->scales(2, 0) = NAN;
    expect(s, "scales(2, 0) = nan is not finite");
  }
  {
    S s = outlier_columns<double>();
    s.uniform->g_idx(9) = 0;
    expect(s, "column 9 is both on the uniform grid and full precision");
  }
  {
    S s = outlier_columns<double>();
    s.full_precision->columns(1) = 9;
    expect(s, "columns(1) = 9 is outside 0..11 or repeated");
  }
  {
    S s = mask<double>();
    s.binarized->groupsize = 5;
    expect(s, "groupsize = 5 does not divide cols = 12");
  }
  {
    S s = a;
    s.perm = Eigen::VectorXi::Zero(kCols);
    expect(s, "storage.perm is not a permutation");
  }
  {
    S s = a;
    s.transforms.input_scale = Eigen::VectorXd::Ones(kCols + 1);
    expect(s, "input_scale has 13 entries but cols = 12");
  }
  CHECK_THROWS_WITH_AS(q2n::group_index(12, 5), doctest::Contains("groupsize = 5"),
                       std::invalid_argument);
  CHECK(q2n::group_index(6, -1) == Eigen::VectorXi::Zero(6));
}

TEST_CASE_TEMPLATE("storage in another basis: y = Uᵀ Q̃ V (x / s), refined in that basis", T, Q2N_TEST_SCALARS) {
  // Random orthogonal U (rows) and V (cols) from QR, an input scale s, a uniform grid in the
  // transformed basis. dequantize() maps back; to_stored_basis() maps W in; refine() computes
  // m from the mapped W against the mapped activations' null space.
  const Eigen::Index rows = 6, cols = 16;
  auto orthogonal = [](Eigen::Index n, std::uint32_t seed) {
    Eigen::HouseholderQR<Eigen::MatrixXd> qr(q2n_test::gaussian<double>(n, n, seed));
    return Eigen::MatrixXd(qr.householderQ() * Eigen::MatrixXd::Identity(n, n)).cast<T>().eval();
  };
  const Mat<T> U = orthogonal(rows, 1), V = orthogonal(cols, 2);
  Vec<T> s = q2n_test::gaussian<T>(cols, 1, 3).cwiseAbs().array() + T(0.5);
  const Mat<T> W = q2n_test::gaussian<T>(rows, cols, 4);
  const Mat<T> X = q2n_test::structured_activations<T>(40, cols, 3, 5);

  q2n::Transforms<T> t;
  t.output = std::make_shared<q2n::DenseTransform<T>>(U);
  t.input = std::make_shared<q2n::DenseTransform<T>>(V);
  t.input_scale = s;
  // Quantize the transformed weights with a hand-made 4-bit absmax grid.
  const Mat<T> Wt = U * W * s.asDiagonal() * V.transpose();
  q2n::UniformGrid<T> u;
  u.bits = 4;
  u.codes.resize(rows, cols);
  u.scales = Wt.cwiseAbs().rowwise().maxCoeff() / T(7);
  u.zeros = Mat<T>::Constant(rows, 1, T(8));
  u.g_idx = q2n::group_index(cols, -1);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i)
      u.codes(i, j) = static_cast<std::uint8_t>(std::clamp<T>(std::nearbyint(Wt(i, j) / u.scales(i)) + 8, 0, 15));
  const auto res =
      q2n::StorageBuilder<T>(rows, cols, "rotated").uniform(std::move(u)).transforms(t).result();

  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;  // a few products of O(1) values
  const Mat<T> Qt = q2n::dequantize_stored(res.storage);
  const Mat<T> dense = U.transpose() * Qt * V * s.cwiseInverse().asDiagonal();
  CHECK((res.Q - dense).cwiseAbs().maxCoeff() <= tol);
  CHECK((q2n::to_stored_basis(res.storage, W) - Wt).cwiseAbs().maxCoeff() <= tol);
  const Mat<T> Xt = q2n::activations_to_stored_basis(res.storage, X);
  // The layer's output is unchanged by the change of basis: Q x = Uᵀ (Q̃ (V x / s)).
  CHECK((X * res.Q.transpose() - (Xt * Qt.transpose()) * U).cwiseAbs().maxCoeff() <= 10 * tol);

  const auto ns = q2n::NullSpace<T>::compute(Xt.topRows(8));
  const auto ref = q2n::refine(res, W, ns);
  CHECK(ref.m == q2n::equivalent_vector(q2n::to_stored_basis(res.storage, W), Qt, ns));
  const Mat<T> refined = U.transpose() * ref.m.asDiagonal() * Qt * V * s.cwiseInverse().asDiagonal();
  CHECK((ref.Q - refined).cwiseAbs().maxCoeff() <= tol);
  CHECK_THROWS_WITH_AS(q2n::DenseTransform<T>(Mat<T>::Ones(3, 3)),
                       doctest::Contains("T is not orthogonal"), std::invalid_argument);
}

TEST_CASE_TEMPLATE("NullSpace::from_basis of a rotated kept basis is the rotated activations' null space", T, Q2N_TEST_SCALARS) {
  // If Ā' = Ā Rᵀ with R orthogonal, then Ā'ᵀĀ' = R (ĀᵀĀ) Rᵀ: the same spectrum, eigenvectors
  // R U1. from_basis(R U1) must give the projector that compute(Ā Rᵀ) gives.
  const Eigen::Index cols = 24;
  const Mat<T> abar = q2n_test::structured_activations<T>(16, cols, 4, 21);
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(q2n_test::gaussian<double>(cols, cols, 22));
  const Mat<T> R = Eigen::MatrixXd(qr.householderQ() * Eigen::MatrixXd::Identity(cols, cols)).cast<T>();
  const auto ns = q2n::NullSpace<T>::compute(abar);
  const auto direct = q2n::NullSpace<T>::compute((abar * R.transpose()).eval());
  const auto mapped = q2n::NullSpace<T>::from_basis(R * ns.kept_basis());
  REQUIRE(direct.kept() == ns.kept());
  CHECK(mapped.kept() == ns.kept());
  CHECK(mapped.cut().found);
  const Mat<T> P1 = direct.kept_basis() * direct.kept_basis().transpose();
  const Mat<T> P2 = mapped.kept_basis() * mapped.kept_basis().transpose();
  CHECK((P1 - P2).cwiseAbs().maxCoeff() <= (std::is_same_v<T, float> ? 1e-4 : 1e-10));
  CHECK_THROWS_AS(q2n::NullSpace<T>::from_basis(Mat<T>(0, 2)), std::invalid_argument);
}
