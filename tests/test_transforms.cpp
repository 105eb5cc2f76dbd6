// Fast orthogonal transforms (q2n/transforms.hpp): every transform against an independent dense
// formula, orthogonality, transposes, the Hadamard sizes of common LLM widths, QuIP's Kronecker
// split, determinism of the seeded draws, and bad input.
#include <doctest/doctest.h>

#include <q2n/detail/transpose.hpp>
#include <q2n/transforms.hpp>

#include "test_util.hpp"

#include <bitset>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

namespace {

using q2n_test::Mat;

// Sylvester's H_m entry, independent of the butterflies: (−1)^popcount(a & b).
double sylvester(Eigen::Index a, Eigen::Index b) {
  return std::bitset<64>(static_cast<unsigned long long>(a & b)).count() % 2 ? -1.0 : 1.0;
}

// had(n)'s column j by the definition (H_K ⊗ H_m)(i, j) / √n, i = a·m + b.
Eigen::VectorXd had_column(const Eigen::MatrixXd& hadK, Eigen::Index n, Eigen::Index j) {
  const Eigen::Index K = hadK.rows(), m = n / K;
  Eigen::VectorXd c(n);
  for (Eigen::Index i = 0; i < n; ++i)
    c(i) = hadK(i / m, j / m) * sylvester(i % m, j % m) / std::sqrt(double(n));
  return c;
}

// Entries of a dense transform: the butterflies and H_K act on a unit vector exactly (sums of
// ±1), so an entry ±1/√n carries one rounding of the scale: within 2 ulp of 1/√n. A Kronecker
// entry is one product A(a, c)·B(b, d): within 2 ulp of its magnitude (≤ 1).
template <class T>
double entry_tol(Eigen::Index n) {
  return 2 * double(std::numeric_limits<T>::epsilon()) / std::sqrt(double(n));
}
// O(1) data through a transform and back, or TᵀT − I: O(log n + K) roundings of O(1) values,
// well within 1e-5 (float) and 1e-13 (double) for the sizes here.
template <class T>
double tol_rt() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-13;
}

// X with T applied to each range of w columns on its own (the last narrower), as QuIP applies
// it, each range right after its rescaling; with `rows`, to ranges of w rows (apply_right).
template <class T>
Mat<T> applied_in_ranges(const q2n::KroneckerTransform<T>& t, Mat<T> X, bool transpose,
                         Eigen::Index w, bool rows = false) {
  const Eigen::Index len = rows ? X.rows() : X.cols();
  for (Eigen::Index a = 0; a < len; a += w) {
    const Eigen::Index n = std::min(w, len - a);
    if (rows)
      t.apply_right(X.middleRows(a, n), transpose);
    else
      t.apply(X.middleCols(a, n), transpose);
  }
  return X;
}

// A column's result (a row's, with `rows`) depends on that column (row) alone: ranges of 1, 7
// and 64 give the bits of one call on all of X.
template <class T>
bool split_gives_whole(const q2n::KroneckerTransform<T>& t, const Mat<T>& X, bool transpose,
                       bool rows = false) {
  Mat<T> whole = X;
  if (rows)
    t.apply_right(whole, transpose);
  else
    t.apply(whole, transpose);
  for (const Eigen::Index w : {1, 7, 64})
    if (applied_in_ranges(t, X, transpose, w, rows) != whole) return false;
  return true;
}

}  // namespace

TEST_CASE("fwht is Sylvester's Hadamard matrix") {
  for (Eigen::Index n = 1; n <= 256; n *= 2) {
    Eigen::MatrixXd X = Eigen::MatrixXd::Identity(n, n);
    for (Eigen::Index c = 0; c < n; ++c) q2n::fwht(X.col(c).data(), n);
    for (Eigen::Index i = 0; i < n; ++i)
      for (Eigen::Index j = 0; j < n; ++j) REQUIRE(X(i, j) == sylvester(i, j));
  }
  // With a stride: the rows of a column-major matrix.
  Eigen::MatrixXd M = q2n_test::gaussian<double>(3, 8, 1), want = M * Eigen::MatrixXd::NullaryExpr(8, 8, [](Eigen::Index i, Eigen::Index j) { return sylvester(i, j); });
  for (Eigen::Index r = 0; r < 3; ++r) q2n::fwht(M.row(r).data(), 8, 3);
  CHECK((M - want).cwiseAbs().maxCoeff() <= 1e-14);
  // The contiguous path takes two stages per pass (one alone at the end when log2 n is odd):
  // the same additions in the same order as the strided path's one stage per pass, so the
  // same bits, for even and odd log2 n.
  for (Eigen::Index n : {2, 8, 16, 512, 2048, 4096}) {
    CAPTURE(n);
    Eigen::MatrixXf rows = q2n_test::gaussian<float>(2, n, 3);  // row 0 strided by 2
    Eigen::VectorXf col = rows.row(0).transpose();
    q2n::fwht(rows.row(0).data(), n, 2);
    q2n::fwht(col.data(), n);
    CHECK((col.transpose().array() == rows.row(0).array()).all());
  }
}

TEST_CASE("symmetrize_in_place averages A and Aᵀ exactly, on any block boundary") {
  // Against the elementwise formula, bit for bit; the sizes cover one partial block, one
  // whole 64-entry block, one past it, and several.
  for (Eigen::Index n : {1, 5, 64, 65, 200}) {
    CAPTURE(n);
    Eigen::MatrixXf a = q2n_test::gaussian<float>(n, n, 9);
    const Eigen::MatrixXf a0 = a;
    q2n::detail::symmetrize_in_place(a);
    Eigen::Index wrong = 0;
    for (Eigen::Index j = 0; j < n; ++j)
      for (Eigen::Index i = 0; i < n; ++i)
        wrong += a(i, j) != (i == j ? a0(i, i) : (a0(i, j) + a0(j, i)) / 2.f);
    CHECK(wrong == 0);
  }
}

TEST_CASE_TEMPLATE("copy_lower_to_upper copies the lower triangle onto the upper one", T,
                   Q2N_TEST_SCALARS) {
  // Exact copies: every entry above the diagonal equals its mirror below, the rest is kept.
  // The sizes cover partial blocks, one whole 64-entry block of 8 x 8 tiles, one past it and
  // several.
  for (Eigen::Index n : {1, 5, 64, 65, 200, 259}) {
    CAPTURE(n);
    const Mat<T> a0 = q2n_test::gaussian<T>(n, n, 9);
    Mat<T> a = a0;
    q2n::detail::copy_lower_to_upper(a);
    Eigen::Index wrong = 0;
    for (Eigen::Index j = 0; j < n; ++j)
      for (Eigen::Index i = 0; i < n; ++i) wrong += a(i, j) != (i < j ? a0(j, i) : a0(i, j));
    CHECK(wrong == 0);
  }
}

TEST_CASE("Paley constructions give Hadamard matrices of every order the LLM widths need") {
  for (long long K : {1, 2, 12, 20, 28, 36, 44, 60, 108, 140}) {
    CAPTURE(K);
    const Eigen::MatrixXd H = q2n::detail::paley_hadamard(K);
    REQUIRE(H.rows() == K);
    CHECK(((H.array() == 1.0) || (H.array() == -1.0)).all());
    CHECK(H * H.transpose() == double(K) * Eigen::MatrixXd::Identity(K, K));
  }
  for (long long K : {52, 156, 172, 6, 10}) CHECK(q2n::detail::paley_hadamard(K).size() == 0);
}

TEST_CASE("HadamardTransform: the sizes of common widths, refused where no matrix is built in") {
  using H = q2n::HadamardTransform<double>;
  CHECK(H::base_order(256) == 1);
  CHECK(H::base_order(384) == 12);
  CHECK(H::base_order(768) == 12);
  CHECK(H::base_order(1024) == 1);
  CHECK(H::base_order(4096) == 1);
  CHECK(H::base_order(5120) == 20);
  CHECK(H::base_order(14336) == 28);
  CHECK(H::base_order(13824) == 108);
  CHECK(H::base_order(11008) == 0);  // 43 · 256: needs the 172 table
  CHECK_THROWS_WITH_AS(H(11008), doctest::Contains("no built-in Hadamard matrix for n = 11008"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(H(43 * 4), doctest::Contains("pass H_K"), std::invalid_argument);
  CHECK(H::base_order(13 * 64) == 104);  // 103 is a prime = 3 mod 4: Paley I
}

TEST_CASE_TEMPLATE("HadamardTransform equals its definition and is orthogonal", T, Q2N_TEST_SCALARS) {
  // Small sizes densely; the large widths column by column on a few columns.
  for (Eigen::Index n : {1, 2, 8, 12, 24, 40, 256, 384, 768}) {
    CAPTURE(n);
    const q2n::HadamardTransform<T> t(n);
    const Eigen::MatrixXd hadK = q2n::detail::paley_hadamard(t.base());
    const Mat<T> D = t.dense();
    for (Eigen::Index j = 0; j < n; ++j)
      REQUIRE((D.col(j).template cast<double>() - had_column(hadK, n, j)).cwiseAbs().maxCoeff() <= entry_tol<T>(n));
    CHECK((D.transpose() * D - Mat<T>::Identity(n, n)).cwiseAbs().maxCoeff() <= tol_rt<T>());
    // The transpose: Tᵀ (T X) = X.
    Mat<T> X = q2n_test::gaussian<T>(n, 3, 5), Y = X;
    t.apply(Y, false);
    CHECK((Y.template cast<double>() - (D.template cast<double>() * X.template cast<double>())).cwiseAbs().maxCoeff() <= tol_rt<T>());
    t.apply(Y, true);
    CHECK((Y - X).cwiseAbs().maxCoeff() <= tol_rt<T>());
  }
  for (Eigen::Index n : {4096, 5120, 14336}) {
    CAPTURE(n);
    const q2n::HadamardTransform<T> t(n);
    const Eigen::MatrixXd hadK = q2n::detail::paley_hadamard(t.base());
    Mat<T> E = Mat<T>::Zero(n, 3);
    const Eigen::Index cols[] = {0, n / 3 + 1, n - 1};
    for (int k = 0; k < 3; ++k) E(cols[k], k) = 1;
    t.apply(E, false);
    for (int k = 0; k < 3; ++k)
      CHECK((E.col(k).template cast<double>() - had_column(hadK, n, cols[k])).cwiseAbs().maxCoeff() <= entry_tol<T>(n));
    Mat<T> X = q2n_test::gaussian<T>(n, 2, 7), Y = X;
    t.apply(Y, false);
    CHECK(std::abs(double(Y.norm() / X.norm()) - 1) <= tol_rt<T>());
    t.apply(Y, true);
    CHECK((Y - X).cwiseAbs().maxCoeff() <= tol_rt<T>());
  }
}

TEST_CASE_TEMPLATE("randomized Hadamard: had · diag(signs), the same for the same seed", T, Q2N_TEST_SCALARS) {
  const Eigen::Index n = 96;  // 12 · 8
  const auto r = q2n::HadamardTransform<T>::randomized(n, 42);
  const auto again = q2n::HadamardTransform<T>::randomized(n, 42);
  const auto other = q2n::HadamardTransform<T>::randomized(n, 43);
  CHECK(r.signs() == again.signs());
  CHECK(r.signs() != other.signs());
  Eigen::VectorXd eps(n);
  for (Eigen::Index i = 0; i < n; ++i) eps(i) = r.signs()[static_cast<std::size_t>(i)];
  CHECK(eps.cwiseAbs() == Eigen::VectorXd::Ones(n));
  const Eigen::MatrixXd want = q2n::HadamardTransform<double>(n).dense() * eps.asDiagonal();
  CHECK((r.dense().template cast<double>() - want).cwiseAbs().maxCoeff() <= entry_tol<T>(n));
  Mat<T> X = q2n_test::gaussian<T>(n, 4, 3), Y = X;
  r.apply(Y, true);
  CHECK((Y.template cast<double>() - want.transpose() * X.template cast<double>()).cwiseAbs().maxCoeff() <= tol_rt<T>());
  // A given H_K reproduces the built-in one.
  const q2n::HadamardTransform<T> given(n, q2n::detail::paley_hadamard(12), r.signs());
  CHECK(given.dense() == r.dense());
}

TEST_CASE("KroneckerTransform::split is QuIP's factor split") {
  using K = q2n::KroneckerTransform<double>;
  using P = std::pair<Eigen::Index, Eigen::Index>;
  CHECK(K::split(4096) == P{64, 64});
  CHECK(K::split(8192) == P{128, 64});
  CHECK(K::split(5120) == P{160, 32});
  CHECK(K::split(11008) == P{688, 16});
  CHECK(K::split(13824) == P{96, 144});
  CHECK(K::split(14336) == P{64, 224});
  CHECK(K::split(28672) == P{448, 64});
  CHECK(K::split(768) == P{48, 16});
  CHECK(K::split(256) == P{16, 16});
  CHECK(K::split(7) == P{7, 1});
}

TEST_CASE_TEMPLATE("KroneckerTransform equals P_out (A ⊗ B) P_in and is orthogonal", T, Q2N_TEST_SCALARS) {
  const Eigen::Index n = 120;  // 2·2·2·3·5 → p = 2·2·5 = 20, q = 2·3 = 6
  const auto t = q2n::KroneckerTransform<T>::random(n, 9);
  REQUIRE(t.left().rows() == 20);
  REQUIRE(t.right().rows() == 6);
  // Independent dense form: (A ⊗ B)(a·q + b, c·q + d) = A(a, c) B(b, d), then the permutations
  // recovered from the action on unit vectors of the permutation-free transform.
  const auto core = q2n::KroneckerTransform<T>(t.left(), t.right());
  Eigen::MatrixXd kron(n, n);
  const Eigen::Index q = 6;
  for (Eigen::Index i = 0; i < n; ++i)
    for (Eigen::Index j = 0; j < n; ++j)
      kron(i, j) = double(t.left()(i / q, j / q)) * double(t.right()(i % q, j % q));
  CHECK((core.dense().template cast<double>() - kron).cwiseAbs().maxCoeff() <= 2 * double(std::numeric_limits<T>::epsilon()));
  const Mat<T> D = t.dense();
  CHECK((D.transpose() * D - Mat<T>::Identity(n, n)).cwiseAbs().maxCoeff() <= tol_rt<T>());
  // D = P_out kron P_in: every row and column of D is a row / column of kron, moved.
  Mat<T> X = q2n_test::gaussian<T>(n, 3, 2), Y = X;
  t.apply(Y, true);
  CHECK((Y - D.transpose() * X).cwiseAbs().maxCoeff() <= tol_rt<T>());
  // Any split of the columns (of the rows, for apply_right) gives the bits of one call (QuIP
  // applies the transform to ranges of columns, each right after its rescaling).
  for (const bool transpose : {false, true}) {
    CHECK(split_gives_whole(t, q2n_test::gaussian<T>(n, 133, 4), transpose));
    CHECK(split_gives_whole(t, q2n_test::gaussian<T>(75, n, 5), transpose, /*rows=*/true));
  }
  const auto again = q2n::KroneckerTransform<T>::random(n, 9);
  CHECK(again.dense() == D);
  CHECK(q2n::KroneckerTransform<T>::random(n, 10).dense() != D);
}

TEST_CASE_TEMPLATE("KroneckerTransform::apply at n = 256 is the dense product", T,
                   Q2N_TEST_SCALARS) {
  // n = 256 = 16 · 16: factors of whole SIMD batches of rows (n = 120 above has only tails).
  // Against T formed in double from its definition, T(i, perm_in[j]) = (A ⊗ B)(perm_out[i], j),
  // on 133 columns, both directions; and any split of the columns gives the bits of one call.
  // Tolerance as in the test above (each entry passes through two products of depth 16 of O(1)
  // terms).
  using K = q2n::KroneckerTransform<T>;
  const Eigen::Index n = 256, q = 16;
  const auto t = K::random(n, 21);
  REQUIRE(t.right().rows() == q);
  Eigen::MatrixXd dense(n, n);
  for (Eigen::Index i = 0; i < n; ++i)
    for (Eigen::Index j = 0; j < n; ++j) {
      const Eigen::Index r = t.perm_out()[std::size_t(i)];
      dense(i, t.perm_in()[std::size_t(j)]) =
          double(t.left()(r / q, j / q)) * double(t.right()(r % q, j % q));
    }
  const Mat<T> X = q2n_test::gaussian<T>(n, 133, 6);
  for (const bool transpose : {false, true}) {
    Mat<T> Y = X;
    t.apply(Y, transpose);
    const Eigen::MatrixXd want =
        (transpose ? Eigen::MatrixXd(dense.transpose()) : dense) * X.template cast<double>();
    CHECK((Y.template cast<double>() - want).cwiseAbs().maxCoeff() <= tol_rt<T>());
    CHECK(split_gives_whole(t, X, transpose));
  }
}

TEST_CASE_TEMPLATE("KroneckerTransform::apply on columns longer than the L1 cache", T,
                   Q2N_TEST_SCALARS) {
  // n = 4200 = 140 · 30: a column of 16.8 KB (float) or 33.6 KB (double), past the size up to
  // which apply gathers the permuted column inside the first product, so it is permuted into a
  // buffer first. Against the definition evaluated in double column by column (y = P_out
  // (A ⊗ B) P_in x: x permuted, viewed as p × q row-major Y, A Y Bᵀ, permuted), and back by the
  // transpose. Each entry passes through two products of depth 140 and 30 of O(1) terms, as in
  // the tests above: within tol_rt.
  using K = q2n::KroneckerTransform<T>;
  const Eigen::Index n = 4200, p = 140, q = 30;
  const auto t = K::random(n, 31);
  REQUIRE(t.left().rows() == p);
  REQUIRE(t.right().rows() == q);
  const Eigen::MatrixXd A = t.left().template cast<double>(), B = t.right().template cast<double>();
  const Mat<T> X = q2n_test::gaussian<T>(n, 5, 32);
  Mat<T> Y = X;
  t.apply(Y, false);
  const double tol = tol_rt<T>();
  double worst = 0;
  for (Eigen::Index c = 0; c < X.cols(); ++c) {
    Eigen::MatrixXd Z(p, q);  // row-major view of P_in x
    for (Eigen::Index k = 0; k < n; ++k)
      Z(k / q, k % q) = double(X(t.perm_in()[std::size_t(k)], c));
    const Eigen::MatrixXd out = A * Z * B.transpose();
    for (Eigen::Index i = 0; i < n; ++i) {
      const Eigen::Index r = t.perm_out()[std::size_t(i)];
      worst = std::max(worst, std::abs(double(Y(i, c)) - out(r / q, r % q)));
    }
  }
  CAPTURE(worst);
  CHECK(worst <= tol);
  t.apply(Y, true);
  CHECK((Y - X).cwiseAbs().maxCoeff() <= tol);
}

TEST_CASE_TEMPLATE("KroneckerTransform::complete_conjugation is T S Tᵀ, exactly symmetric", T,
                   Q2N_TEST_SCALARS) {
  // n = 600 = 20 · 30 in blocks of 256 rows: the first block needs 9 of the 20 column blocks,
  // the second 18, the last all, so the restriction is exercised; with an output permutation
  // the general route (apply_right, mean of the triangles) runs instead. Against V S Vᵀ with V
  // formed densely in double. Tolerance: S has O(1) entries (max about 8 here) and each entry
  // of the result passes through 2(p + q) = 100 rounded products and sums of O(1) terms, so
  // 100 · 8 · eps bounds its error with room (observed: under a tenth of it).
  const Eigen::Index n = 600;
  const auto full = q2n::KroneckerTransform<T>::random(n, 3);
  REQUIRE(full.left().rows() == 20);
  REQUIRE(full.right().rows() == 30);
  const double tol = 100 * 8 * double(std::numeric_limits<T>::epsilon());
  Mat<T> S = q2n_test::gaussian<T>(n, n, 12);
  S = (S + S.transpose()).eval();
  REQUIRE(S.cwiseAbs().maxCoeff() <= 8);
  for (const bool with_out : {false, true}) {
    CAPTURE(with_out);
    const q2n::KroneckerTransform<T> t =
        with_out ? full : q2n::KroneckerTransform<T>(full.left(), full.right(), full.perm_in());
    const Eigen::MatrixXd V = t.dense().template cast<double>();
    const Eigen::MatrixXd want = V * S.template cast<double>() * V.transpose();
    Mat<T> G = S;
    t.apply(G, false);
    t.complete_conjugation(G);
    CHECK(G == G.transpose());
    CHECK((G.template cast<double>() - want).cwiseAbs().maxCoeff() <= tol);
  }
  Mat<T> wrong(n, n - 1);
  CHECK_THROWS_WITH_AS(full.complete_conjugation(wrong), doctest::Contains("G is 600 x 599"),
                       std::invalid_argument);
}

TEST_CASE_TEMPLATE("apply_right is the product from the right, on any rows and any stride", T, Q2N_TEST_SCALARS) {
  // Each fast transform's own row-wise action against M·T and M·Tᵀ by its dense form in double;
  // DenseTransform goes through the default (transposed copies). 300 rows cut into several row
  // blocks with a short last one; the block of a taller matrix has an outer stride. O(1) data:
  // each result entry takes O(log n + K) or O(p + q) roundings of O(1) values, within tol_rt.
  const auto k60 = q2n::KroneckerTransform<T>::random(60, 7);
  std::vector<std::shared_ptr<const q2n::OrthogonalTransform<T>>> ts = {
      std::make_shared<q2n::HadamardTransform<T>>(q2n::HadamardTransform<T>::randomized(96, 5)),
      std::make_shared<q2n::HadamardTransform<T>>(q2n::HadamardTransform<T>::randomized(64, 6)),
      std::make_shared<q2n::KroneckerTransform<T>>(k60),
      // Without one of the permutations, A's products are written straight into M in one
      // direction (no output permutation after them).
      std::make_shared<q2n::KroneckerTransform<T>>(k60.left(), k60.right(), k60.perm_in()),
      std::make_shared<q2n::KroneckerTransform<T>>(k60.left(), k60.right(), std::vector<int>{},
                                                   k60.perm_out()),
      std::make_shared<q2n::DenseTransform<T>>(q2n::KroneckerTransform<T>::random(12, 8).dense())};
  for (const auto& t : ts) {
    const Eigen::Index n = t->size();
    Mat<T> dense = Mat<T>::Identity(n, n);
    t->apply(dense, false);
    const Eigen::MatrixXd D = dense.template cast<double>();
    for (const Eigen::Index rows : {Eigen::Index{1}, Eigen::Index{300}})
      for (const bool transpose : {false, true}) {
        CAPTURE(n);
        CAPTURE(rows);
        CAPTURE(transpose);
        Mat<T> big = q2n_test::gaussian<T>(rows + 3, n, 11);
        const Eigen::MatrixXd M = big.middleRows(1, rows).template cast<double>();
        t->apply_right(big.middleRows(1, rows), transpose);
        const Eigen::MatrixXd want = transpose ? Eigen::MatrixXd(M * D.transpose()) : Eigen::MatrixXd(M * D);
        CHECK((big.middleRows(1, rows).template cast<double>() - want).cwiseAbs().maxCoeff() <= tol_rt<T>());
        CHECK(big.row(0) == q2n_test::gaussian<T>(rows + 3, n, 11).row(0));  // outside: untouched
      }
  }
  Mat<T> X(3, 7);
  CHECK_THROWS_WITH_AS(ts[0]->apply_right(X, false), doctest::Contains("M has 7 columns"), std::invalid_argument);
}

TEST_CASE("transforms refuse bad input") {
  using Hd = q2n::HadamardTransform<double>;
  CHECK_THROWS_WITH_AS(Hd(8, std::vector<std::int8_t>(7, 1)), doctest::Contains("signs has 7 entries"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(Hd(8, std::vector<std::int8_t>(8, 2)), doctest::Contains("+1 or -1"), std::invalid_argument);
  Eigen::MatrixXd bad = q2n::detail::paley_hadamard(12);
  bad(3, 4) = -bad(3, 4);
  CHECK_THROWS_WITH_AS(Hd(96, bad), doctest::Contains("not a Hadamard matrix"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(Hd(36, q2n::detail::paley_hadamard(12)), doctest::Contains("power of two"), std::invalid_argument);
  const Hd h(8);
  Eigen::MatrixXd X(7, 2);
  CHECK_THROWS_WITH_AS(h.apply(X, false), doctest::Contains("X has 7 rows"), std::invalid_argument);
  using Kr = q2n::KroneckerTransform<double>;
  CHECK_THROWS_AS(Kr(Eigen::MatrixXd::Ones(2, 2), Eigen::MatrixXd::Identity(3, 3)), std::invalid_argument);
  CHECK_THROWS_WITH_AS(Kr(Eigen::MatrixXd::Identity(2, 2), Eigen::MatrixXd::Identity(3, 3), {0, 1, 2, 3, 4, 4}),
                       doctest::Contains("perm_in is not a permutation"), std::invalid_argument);
}
