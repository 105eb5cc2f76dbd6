// Rotating linears (q2n/rotation.hpp) and the per-token activation quantizer
// (q2n/activations.hpp): the offline/online identity (W Tᵀ)(T x) = W x, the head-wise forms
// against dense Kronecker products, the incoherence of a one-hot activation, and the quantizer
// against its formula written out.
#include <doctest/doctest.h>

#include <q2n/activations.hpp>
#include <q2n/rotation.hpp>
#include <q2n/transforms.hpp>

#include "test_util.hpp"

#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>

namespace {

using q2n_test::Mat;
template <class T>
using RotRowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Kronecker product of two dense matrices, by its definition (A ⊗ B)(a·q + b, c·q + d).
Eigen::MatrixXd rotation_kron(const Eigen::MatrixXd& A, const Eigen::MatrixXd& B) {
  Eigen::MatrixXd K(A.rows() * B.rows(), A.cols() * B.cols());
  for (Eigen::Index a = 0; a < A.rows(); ++a)
    for (Eigen::Index c = 0; c < A.cols(); ++c)
      K.block(a * B.rows(), c * B.cols(), B.rows(), B.cols()) = A(a, c) * B;
  return K;
}

// O(1) values through a few transforms: O(log n + K) roundings each, within 1e-5 (float)
// and 1e-12 (double) at these sizes.
template <class T>
double rotation_tol() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

}  // namespace

TEST_CASE_TEMPLATE("rotate_inputs then transform_rows computes the same outputs: (W Tᵀ)(T x) = W x",
                   T, Q2N_TEST_SCALARS) {
  // Sizes of the tiny model's hidden (256), intermediate (768 = 12 · 64) and a random dense
  // rotation of 48, in both layouts.
  for (Eigen::Index n : {256, 768, 48}) {
    std::shared_ptr<const q2n::OrthogonalTransform<T>> t;
    if (n == 48) {
      const Mat<T> R = Eigen::HouseholderQR<Mat<T>>(q2n_test::gaussian<T>(n, n, 3)).householderQ();
      t = std::make_shared<q2n::DenseTransform<T>>(R);
    } else {
      t = std::make_shared<q2n::HadamardTransform<T>>(q2n::HadamardTransform<T>::randomized(n, 7));
    }
    const Mat<T> W = q2n_test::gaussian<T>(24, n, 1), X = q2n_test::gaussian<T>(10, n, 2);
    const Eigen::MatrixXd want = X.template cast<double>() * W.template cast<double>().transpose();
    // Column-major and row-major weights and activations.
    Mat<T> Wc = W, Xc = X;
    RotRowMat<T> Wr = W, Xr = X;
    q2n::rotate_inputs(Wc, *t);
    q2n::transform_rows(Xc, *t);
    q2n::rotate_inputs(Wr, *t);
    q2n::transform_rows(Xr, *t);
    // Each of the 10·24 outputs is a sum of n products of O(1) values: its rounding grows like
    // √n ε, and the rotation's like log n ε per operand.
    const double tol = rotation_tol<T>() * std::sqrt(double(n)) * 4;
    CHECK((Xc.template cast<double>() * Wc.template cast<double>().transpose() - want)
              .cwiseAbs()
              .maxCoeff() < tol);
    CHECK((Xr.template cast<double>() * Wr.template cast<double>().transpose() - want)
              .cwiseAbs()
              .maxCoeff() < tol);
    // The rotated rows are the dense product in both layouts: T x.
    const Mat<T> D = [&] {
      Mat<T> I = Mat<T>::Identity(n, n);
      t->apply(I, false);
      return I;
    }();
    CHECK((Xc.template cast<double>() -
           X.template cast<double>() * D.template cast<double>().transpose())
              .cwiseAbs()
              .maxCoeff() < rotation_tol<T>() * 4);
    // (The two layouts go through apply and apply_right: the same sums in another order.)
    CHECK((Xr.template cast<double>() - Xc.template cast<double>()).cwiseAbs().maxCoeff() <
          rotation_tol<T>() * 4);
  }
}

TEST_CASE_TEMPLATE("rotate_outputs turns a linear's outputs: (T W) x + T b = T (W x + b)", T,
                   Q2N_TEST_SCALARS) {
  const Eigen::Index out = 64, in = 20;
  const auto t = q2n::HadamardTransform<T>::randomized(out, 5);
  const Mat<T> W = q2n_test::gaussian<T>(out, in, 1), x = q2n_test::gaussian<T>(in, 3, 2);
  const Eigen::Matrix<T, Eigen::Dynamic, 1> b = q2n_test::gaussian<T>(out, 1, 4);
  Mat<T> want = (W * x).colwise() + b;
  t.apply(want, false);
  RotRowMat<T> Wr = W;
  Mat<T> Wc = W;
  Eigen::Matrix<T, Eigen::Dynamic, 1> br = b, bc = b;
  q2n::rotate_outputs(Wr, t, &br);
  q2n::rotate_outputs(Wc, t, &bc);
  const Mat<T> gotr = (Mat<T>(Wr) * x).colwise() + br, gotc = (Wc * x).colwise() + bc;
  CHECK((gotr - want).cwiseAbs().maxCoeff() < rotation_tol<T>() * 20);
  CHECK((gotc - want).cwiseAbs().maxCoeff() < rotation_tol<T>() * 20);
}

TEST_CASE_TEMPLATE("head-wise Hadamards equal the dense Kronecker products", T, Q2N_TEST_SCALARS) {
  // 8 heads of 32 (the tiny model), and 12 heads of 16 (H_12 is Paley's, not symmetric).
  for (auto [heads, hd] : {std::pair<Eigen::Index, Eigen::Index>{8, 32}, {12, 16}}) {
    auto Hh = std::make_shared<q2n::HadamardTransform<T>>(heads);
    auto Hd = std::make_shared<q2n::HadamardTransform<T>>(hd);
    const auto per = q2n::BlockTransform<T>::per_block(Hd, heads);      // I ⊗ H_hd
    const auto across = q2n::BlockTransform<T>::across_blocks(Hh, hd);  // H_h ⊗ I
    const Eigen::MatrixXd dh = Hh->dense().template cast<double>(),
                          dd = Hd->dense().template cast<double>();
    const Eigen::MatrixXd want_per = rotation_kron(Eigen::MatrixXd::Identity(heads, heads), dd);
    const Eigen::MatrixXd want_across = rotation_kron(dh, Eigen::MatrixXd::Identity(hd, hd));
    const Eigen::Index n = heads * hd;
    const Mat<T> X = q2n_test::gaussian<T>(n, 5, 9);
    for (bool tr : {false, true}) {
      Mat<T> a = X, b = X;
      per.apply(a, tr);
      across.apply(b, tr);
      const Eigen::MatrixXd wa =
          (tr ? Eigen::MatrixXd(want_per.transpose()) : want_per) * X.template cast<double>();
      const Eigen::MatrixXd wb =
          (tr ? Eigen::MatrixXd(want_across.transpose()) : want_across) * X.template cast<double>();
      CHECK((a.template cast<double>() - wa).cwiseAbs().maxCoeff() < rotation_tol<T>() * 10);
      CHECK((b.template cast<double>() - wb).cwiseAbs().maxCoeff() < rotation_tol<T>() * 10);
      // From the right too (the default through apply on the transpose).
      Mat<T> r = X.transpose();
      across.apply_right(r, !tr);  // rows x → (H_h ⊗ I) x, or its transpose
      CHECK((r.transpose().template cast<double>() - wb).cwiseAbs().maxCoeff() <
            rotation_tol<T>() * 10);
    }
    // Across then per, composed: H_h ⊗ H_hd; for Sylvester sizes that is the full H_n.
    Mat<T> I = Mat<T>::Identity(n, n);
    per.apply(I, false);
    across.apply(I, false);
    CHECK((I.template cast<double>() - rotation_kron(dh, dd)).cwiseAbs().maxCoeff() <
          rotation_tol<T>() * 10);
    if (heads == 8)
      CHECK((I - q2n::HadamardTransform<T>(n).dense()).cwiseAbs().maxCoeff() < rotation_tol<T>());
  }
  CHECK_THROWS_AS(q2n::BlockTransform<float>::per_block(nullptr, 2), std::invalid_argument);
  CHECK_THROWS_AS(
      q2n::BlockTransform<float>::per_block(std::make_shared<q2n::HadamardTransform<float>>(4), 0),
      std::invalid_argument);
}

TEST_CASE("a one-hot activation becomes ±c/√n, which per-token int4 holds exactly") {
  // The incoherence that makes A4 work: a massive activation c on one feature is spread over
  // all n features with equal magnitude, so the token's grid has no outlier to waste steps on.
  const Eigen::Index n = 768;  // 12 · 64, the tiny model's intermediate width
  const q2n::HadamardTransform<double> H(n);
  for (Eigen::Index j : {0, 5, 767}) {
    const double c = 1000.0;
    RotRowMat<double> x = RotRowMat<double>::Zero(1, n);
    x(0, j) = c;
    q2n::transform_rows(x, H);
    CHECK((x.cwiseAbs().array() - c / std::sqrt(double(n))).abs().maxCoeff() < 1e-10);
    // Every entry is ±max: on the int4 grid (±7 steps of max/7) exactly, up to the scale's
    // one rounding.
    const RotRowMat<double> q = q2n::quantize_per_token(x, q2n::ActivationOptions{4, 1.0});
    CHECK((q - x).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE_TEMPLATE("quantize_per_token equals its formula, entry by entry", T, Q2N_TEST_SCALARS) {
  Mat<T> X = q2n_test::gaussian<T>(6, 33, 4);
  X.row(2).setZero();  // a zero row stays zero (scale 1)
  X(3, 7) = 50;        // an outlier sets its token's grid
  for (int bits : {2, 4, 8}) {
    for (double clip : {1.0, 0.9}) {
      const Mat<T> Q = q2n::quantize_per_token(X, q2n::ActivationOptions{bits, clip});
      const double maxq = std::pow(2.0, bits - 1) - 1;
      for (Eigen::Index r = 0; r < X.rows(); ++r) {
        double amax = 0;
        for (Eigen::Index j = 0; j < X.cols(); ++j)
          amax = std::max(amax, std::abs(double(X(r, j))));
        double s = clip * amax / maxq;
        if (s == 0) s = 1;
        for (Eigen::Index j = 0; j < X.cols(); ++j) {
          const double q = std::min(std::max(std::nearbyint(double(X(r, j)) / s), -maxq - 1), maxq);
          // The scale and the quotient are each one rounding in T: a code can differ from the
          // double one only at a tie, which these Gaussian draws do not hit; the value is then
          // s·q with s rounded once (relative ε) — within 4 ε of max |x|.
          CHECK(std::abs(double(Q(r, j)) - s * q) <=
                4 * std::numeric_limits<T>::epsilon() * std::max(amax, 1.0));
        }
      }
    }
  }
  CHECK(q2n::quantize_per_token(X, q2n::ActivationOptions{4, 1.0})(3, 7) ==
        doctest::Approx(50).epsilon(1e-6));
  CHECK_THROWS_AS(q2n::quantize_per_token(X, q2n::ActivationOptions{1, 1.0}),
                  std::invalid_argument);
  CHECK_THROWS_AS(q2n::quantize_per_token(X, q2n::ActivationOptions{4, 0.0}),
                  std::invalid_argument);
  CHECK_THROWS_AS(q2n::quantize_per_token(X, q2n::ActivationOptions{4, 1.5}),
                  std::invalid_argument);
  X(0, 0) = std::numeric_limits<T>::quiet_NaN();
  CHECK_THROWS_AS(q2n::quantize_per_token(X), std::invalid_argument);
}

TEST_CASE("rotations refuse mismatched sizes, naming the argument") {
  const q2n::HadamardTransform<float> H(16);
  Eigen::MatrixXf W(4, 8);
  W.setOnes();
  CHECK(q2n_test::has(q2n_test::thrown<std::invalid_argument>([&] { q2n::rotate_inputs(W, H); }),
                      "input count"));
  CHECK(q2n_test::has(q2n_test::thrown<std::invalid_argument>([&] { q2n::rotate_outputs(W, H); }),
                      "output count"));
  CHECK(q2n_test::has(q2n_test::thrown<std::invalid_argument>([&] { q2n::transform_rows(W, H); }),
                      "column count"));
  Eigen::MatrixXf V(16, 16);
  V.setOnes();
  Eigen::VectorXf b(3);
  CHECK(q2n_test::has(
      q2n_test::thrown<std::invalid_argument>([&] { q2n::rotate_outputs(V, H, &b); }), "bias"));
  CHECK(q2n_test::has(q2n_test::thrown<std::invalid_argument>(
                          [&] { q2n::fold_scale_into_inputs(W, Eigen::VectorXf::Ones(3)); }),
                      "gamma"));
  Eigen::VectorXf g = Eigen::VectorXf::LinSpaced(8, 1, 8);
  q2n::fold_scale_into_inputs(W, g);
  CHECK(W.row(3).transpose() == g);
}
