// LeanQuant: the exact fast Lloyd against the naive one, the whole quantizer against a plain
// double-precision re-implementation, GPTQ recovered from GPTQ's own grid, the grid rules,
// invariance to the scale of H, and bad input.
#include <doctest/doctest.h>

#include <q2n/detail/kmeans1d.hpp>
#include <q2n/quantizers.hpp>

#include "quant_reference.hpp"
#include "test_util.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <set>
#include <vector>

namespace {

using q2n_test::Mat;

/// A layer with LLM-like activations, one dead input channel (unless dead = false) and
/// H = (2/N) XᵀX.
template <class T>
struct LeanLayer {
  Mat<T> W, H;
};

template <class T>
LeanLayer<T> make_lean_layer(Eigen::Index rows, Eigen::Index cols, std::uint32_t seed, bool dead = true) {
  LeanLayer<T> L;
  L.W = q2n_test::gaussian<T>(rows, cols, seed);
  Mat<double> x = q2n_test::structured_activations<double>(3 * cols, cols, 6, seed + 1, 0.05);
  for (Eigen::Index c = 0; c < cols; ++c) x.col(c) *= 0.3 + 0.02 * static_cast<double>(c);
  if (dead) x.col(cols / 3).setZero();
  L.H = ((2.0 / static_cast<double>(x.rows())) * x.transpose() * x).cast<T>();
  return L;
}

}  // namespace

TEST_CASE_TEMPLATE("ascending_order: the radix sort orders as a stable comparison sort", T, float,
                   double) {
  // Reference: std::stable_sort by value, −0 before +0, equal values by index. Rows with
  // ties, signed zeros, subnormals, huge and negative values; one row whose values share their
  // top bits (the radix passes over those digits are skipped) and one of a single value.
  std::mt19937 gen(11);
  std::normal_distribution<double> nd(0, 1);
  const auto reference = [](const std::vector<T>& x) {
    std::vector<std::uint32_t> idx(x.size());
    for (std::size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<std::uint32_t>(i);
    std::stable_sort(idx.begin(), idx.end(), [&](std::uint32_t a, std::uint32_t b) {
      return x[a] < x[b] || (x[a] == x[b] && std::signbit(x[a]) && !std::signbit(x[b]));
    });
    return idx;
  };
  for (const std::size_t n :
       {std::size_t(1), std::size_t(2), std::size_t(7), std::size_t(300), std::size_t(5000)}) {
    for (int kind = 0; kind < 4; ++kind) {
      CAPTURE(n);
      CAPTURE(kind);
      std::vector<T> x(n);
      for (std::size_t i = 0; i < n; ++i) {
        const double v = nd(gen);
        if (kind == 0) x[i] = static_cast<T>(v);
        if (kind == 1) x[i] = static_cast<T>(std::round(v * 2) / 2);  // ties, −0 and +0
        if (kind == 2) x[i] = static_cast<T>(1.5 + 1e-3 * v);         // shared top bits
        if (kind == 3) x[i] = T(-2);
      }
      if (kind == 0 && n >= 7) {
        x[1] = std::numeric_limits<T>::denorm_min();
        x[2] = -std::numeric_limits<T>::denorm_min();
        x[3] = std::numeric_limits<T>::max();
        x[4] = std::numeric_limits<T>::lowest();
        x[5] = T(-0.0);
        x[6] = T(0.0);
      }
      CHECK(q2n::detail::ascending_order(x.data(), n) == reference(x));
    }
  }
}

TEST_CASE("SortedPoints::count_le from a hint is the bisection's count") {
  // Every hint (0..n, past n too) against every probe: the points themselves (with repeats),
  // values between them, below the least and above the greatest.
  std::mt19937 gen(5);
  std::uniform_int_distribution<int> small(0, 12);
  for (const int n : {1, 2, 3, 17, 64}) {
    CAPTURE(n);
    std::vector<double> x(static_cast<std::size_t>(n)), w(x.size(), 1.0);
    for (double& v : x) v = 0.5 * small(gen);
    const q2n::detail::SortedPoints pts(x.data(), w.data(), n);
    for (int p = -2; p <= 28; ++p) {
      const double v = 0.25 * p;
      const std::size_t want = pts.count_le(v);
      for (std::size_t hint = 0; hint <= static_cast<std::size_t>(n) + 2; ++hint) {
        CAPTURE(v);
        CAPTURE(hint);
        REQUIRE(pts.count_le(v, hint) == want);
      }
    }
  }
}

TEST_CASE("kmeans1d: the fast Lloyd takes the naive Lloyd's steps") {
  std::mt19937 gen(7);
  std::normal_distribution<double> nd(0, 1);
  std::uniform_real_distribution<double> ud(0.01, 3);
  std::uniform_int_distribution<int> small(0, 9);
  for (int trial = 0; trial < 12; ++trial) {
    CAPTURE(trial);
    const int n = 50 + 37 * trial, K = 1 << (1 + trial % 4);
    std::vector<double> x(static_cast<std::size_t>(n)), w(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
      // Even trials: heavy-tailed reals; odd ones: small integers, so that points repeat,
      // centroids coincide and points fall exactly on midpoints (the tie rules).
      x[i] = trial % 2 == 0 ? nd(gen) * (i % 17 == 0 ? 6.0 : 1.0) : static_cast<double>(small(gen));
      w[i] = trial % 3 == 0 ? 1.0 : ud(gen);
    }
    const q2n::detail::SortedPoints pts(x.data(), w.data(), n);
    // Every iterate: the centroids after 0, 1, 2, … steps (tol 0: no early stop but the
    // strict one). Tolerance: prefix-sum differences against direct sums, a few ulp of the
    // row's range (1e-12 relative is far above that and far below any real disagreement).
    for (int steps = 0; steps <= 25; ++steps) {
      CAPTURE(steps);
      const auto fast = q2n::detail::kmeans1d(pts, K, steps, 0.0);
      const auto naive = qref::lloyd_naive(x, w, K, steps, 0.0);
      REQUIRE(fast.iterations == naive.iterations);
      for (int k = 0; k < K; ++k) REQUIRE(std::abs(fast.centroids[k] - naive.c[k]) <= 1e-12 * (1 + std::abs(naive.c[k])));
      REQUIRE(std::is_sorted(fast.centroids.begin(), fast.centroids.end()));
    }
    // scikit-learn's relative tolerance stops at the same step too.
    const auto fast = q2n::detail::kmeans1d(pts, K, 100, 1e-4);
    const auto naive = qref::lloyd_naive(x, w, K, 100, 1e-4);
    CHECK(fast.iterations == naive.iterations);
  }
}

TEST_CASE("kmeans1d: the weighted squared error never rises and a constant row is one value") {
  std::mt19937 gen(11);
  std::normal_distribution<double> nd(0, 1);
  std::vector<double> x(300), w(300);
  for (std::size_t i = 0; i < x.size(); ++i) x[i] = nd(gen), w[i] = 0.1 + std::abs(nd(gen));
  const q2n::detail::SortedPoints pts(x.data(), w.data(), 300);
  auto sse = [&](const std::vector<double>& c) {
    double s = 0;
    for (std::size_t i = 0; i < x.size(); ++i) {
      double best = std::numeric_limits<double>::infinity();
      for (double v : c) best = std::min(best, (x[i] - v) * (x[i] - v));
      s += w[i] * best;
    }
    return s;
  };
  double last = std::numeric_limits<double>::infinity();
  for (int steps = 0; steps <= 20; ++steps) {
    const double e = sse(q2n::detail::kmeans1d(pts, 8, steps, 0.0).centroids);
    CHECK(e <= last * (1 + 1e-12));  // Lloyd is a descent method
    last = e;
  }
  const std::vector<double> flat(40, 0.25), ones(40, 1.0);
  const auto c = q2n::detail::kmeans1d(q2n::detail::SortedPoints(flat.data(), ones.data(), 40), 4, 100, 1e-6);
  CHECK(c.centroids == std::vector<double>(4, 0.25));
}

TEST_CASE("leanquant matches a plain double-precision re-implementation") {
  const auto L = make_lean_layer<double>(24, 96, 3);
  for (int bits : {2, 3, 4})
    for (bool act : {false, true}) {
      CAPTURE(bits);
      CAPTURE(act);
      q2n::LeanQuantOptions o;
      o.bits = bits;
      o.act_order = act;
      o.damping.percdamp = 0.1;
      o.sweep.blocksize = 32;
      const auto res = q2n::leanquant(L.W, L.H, o);
      const auto ref = qref::leanquant(L.W, L.H, bits, o.exponent, act, 0.1, 32, o.max_iter, o.tol);
      CHECK(res.storage.method == "leanquant");
      CHECK(res.diagnostics.dead_columns == 1);
      // Tolerance: the library's H⁻¹ factor takes a shorter route than the reference's
      // chol → inverse → chol; the two agree to ~1e-13 relative, which moves the weighted
      // means by as much. Codes are compared exactly (no weight sits that close to a midpoint).
      const auto& book = *res.storage.codebook;
      const double scale = L.W.cwiseAbs().maxCoeff();
      CHECK((book.values - ref.grid).cwiseAbs().maxCoeff() <= 1e-10 * scale);
      CHECK((res.Q - ref.Q).cwiseAbs().maxCoeff() <= 1e-9 * scale);
      Eigen::Index mismatched = 0;
      for (Eigen::Index j = 0; j < L.W.cols(); ++j)
        for (Eigen::Index r = 0; r < L.W.rows(); ++r)
          mismatched += book.codes(r, j) != ref.codes[static_cast<std::size_t>(j * L.W.rows() + r)];
      CHECK(mismatched == 0);
    }
}

TEST_CASE_TEMPLATE("leanquant: each row takes at most 2^bits values, all from its own grid", T, Q2N_TEST_SCALARS) {
  const auto L = make_lean_layer<T>(16, 64, 5);
  for (int bits : {2, 3, 4, 8}) {
    CAPTURE(bits);
    q2n::LeanQuantOptions o;
    o.bits = bits;
    o.act_order = true;
    const auto res = q2n::leanquant(L.W, L.H, o);
    const auto& book = *res.storage.codebook;
    REQUIRE(book.values.cols() == (1 << bits));
    CHECK(q2n::dequantize(res.storage) == res.Q);
    CHECK(res.diagnostics.seconds.grid_fit >= 0);
    for (Eigen::Index r = 0; r < L.W.rows(); ++r) {
      std::set<T> grid, used;
      for (Eigen::Index k = 0; k < book.values.cols(); ++k) grid.insert(book.values(r, k));
      for (Eigen::Index j = 0; j < L.W.cols(); ++j) used.insert(res.Q(r, j));
      CHECK(used.size() <= grid.size());
      for (T v : used) CHECK(grid.count(v) == 1);
      // The grid lies within the row's range (linspace start, weighted means of its own
      // points); a mean taken from prefix-sum differences may pass an end by a few ulp.
      const T slack = T(1e-12) * L.W.row(r).cwiseAbs().maxCoeff();
      CHECK(*grid.begin() >= L.W.row(r).minCoeff() - slack);
      CHECK(*grid.rbegin() <= L.W.row(r).maxCoeff() + slack);
    }
  }
}

TEST_CASE("gptq_codebook on GPTQ's own grid is GPTQ") {
  const auto L = make_lean_layer<double>(20, 80, 9);
  for (int bits : {2, 4})
    for (bool sym : {false, true})
      for (bool act : {false, true}) {
        CAPTURE(bits);
        CAPTURE(sym);
        CAPTURE(act);
        q2n::GptqOptions g;
        g.grid.bits = bits;
        g.grid.sym = sym;
        g.act_order = act;
        g.sweep.blocksize = 16;
        const auto gptq = q2n::gptq(L.W, L.H, g);
        const auto& u = *gptq.storage.uniform;
        const int K = 1 << bits;
        Eigen::MatrixXd grid(L.W.rows(), K);
        for (Eigen::Index r = 0; r < L.W.rows(); ++r)
          for (int q = 0; q < K; ++q) grid(r, q) = u.scales(r, 0) * (static_cast<double>(q) - u.zeros(r, 0));
        q2n::LeanQuantOptions o;
        o.bits = bits;
        o.act_order = act;
        o.sweep.blocksize = 16;
        const auto lean = q2n::gptq_codebook(L.W, L.H, grid, o);
        CHECK(lean.storage.method == "gptq-codebook");
        // Exactly: the same U, the same sweep, and nearest grid value = clamp(round(w / s) + z)
        // for every weight not exactly halfway between two grid values.
        CHECK(lean.Q == gptq.Q);
        CHECK(lean.storage.codebook->codes == u.codes);
        CHECK(lean.storage.perm == gptq.storage.perm);
        CHECK(lean.diagnostics.loss == gptq.diagnostics.loss);
      }
}

TEST_CASE_TEMPLATE("leanquant: H and cH give the same result", T, Q2N_TEST_SCALARS) {
  // c = 4: every step scales by a power of two (damping, Cholesky, the weights ω), so the
  // result is the same bit for bit; c = 3 rounds differently, so only Q is compared, to a
  // few ulp of the row's scale in the weighted means. (Without a dead column: its H_jj is set
  // to 1 whatever the scale of H.)
  const auto L = make_lean_layer<T>(12, 48, 13, /*dead=*/false);
  q2n::LeanQuantOptions o;
  o.bits = 3;
  o.act_order = true;
  const auto a = q2n::leanquant(L.W, L.H, o);
  const auto b = q2n::leanquant(L.W, Mat<T>(T(4) * L.H), o);
  CHECK(a.Q == b.Q);
  CHECK(a.storage.codebook->codes == b.storage.codebook->codes);
  const auto c = q2n::leanquant(L.W, Mat<T>(T(3) * L.H), o);
  const double tol = (std::is_same_v<T, float> ? 1e-4 : 1e-10) * static_cast<double>(L.W.cwiseAbs().maxCoeff());
  CHECK(static_cast<double>((a.Q - c.Q).cwiseAbs().maxCoeff()) <= tol);
}

TEST_CASE("leanquant: exponent 0 and no Lloyd step give linspace(min, max) per row") {
  const auto L = make_lean_layer<double>(6, 32, 17);
  q2n::LeanQuantOptions o;
  o.bits = 2;
  o.max_iter = 0;
  o.exponent = 0;
  const auto res = q2n::leanquant(L.W, L.H, o);
  Eigen::MatrixXd w = L.W;
  w.col(32 / 3).setZero();  // the dead column is zeroed before the grid is fitted
  for (Eigen::Index r = 0; r < 6; ++r) {
    const double lo = w.row(r).minCoeff(), hi = w.row(r).maxCoeff();
    for (int k = 0; k < 4; ++k)
      CHECK(res.storage.codebook->values(r, k) == doctest::Approx(lo + (hi - lo) * k / 3.0).epsilon(1e-14));
  }
}

TEST_CASE("leanquant and gptq_codebook reject bad options and grids") {
  const auto L = make_lean_layer<float>(4, 32, 19);
  auto bad = [&](auto change, const char* text) {
    q2n::LeanQuantOptions o;
    change(o);
    CHECK_THROWS_WITH_AS(q2n::leanquant(L.W, L.H, o), doctest::Contains(text), std::invalid_argument);
  };
  bad([](auto& o) { o.bits = 1; }, "bits = 1");
  bad([](auto& o) { o.exponent = -1; }, "exponent = -1");
  bad([](auto& o) { o.exponent = std::nan(""); }, "exponent");
  bad([](auto& o) { o.max_iter = -1; }, "max_iter = -1");
  bad([](auto& o) { o.tol = -1; }, "tol = -1");
  bad([](auto& o) { o.damping.percdamp = -1; }, "percdamp");
  q2n::LeanQuantOptions o;
  o.bits = 2;
  CHECK_THROWS_WITH_AS(q2n::gptq_codebook(L.W, L.H, Eigen::MatrixXf::Zero(4, 8), o),
                       doctest::Contains("grid (rows x 2^bits)"), std::invalid_argument);
  Eigen::MatrixXf g = Eigen::MatrixXf::Zero(4, 4);
  g(1, 2) = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH_AS(q2n::gptq_codebook(L.W, L.H, g, o), doctest::Contains("grid"), std::invalid_argument);
  CHECK_THROWS_AS(q2n::leanquant(L.W, Mat<float>(L.H.topLeftCorner(8, 8)), o), std::invalid_argument);
}
