// Uniform affine quantizer and RTN: against a plain scalar re-implementation written here, the
// xsimd kernels against the scalar kernels (bit for bit, ties included), and bad input.
#include <doctest/doctest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <q2n/quantizers.hpp>
#include <random>
#include <string>
#include <vector>

#include "quant_reference.hpp"
#include "test_util.hpp"

namespace {

using q2n_test::Mat;

/// Plain-loop fit in the scalar type T (no MSE): the same IEEE operations as GPTQ's quantizer.
template <class T>
void plain_fit(const Mat<T>& X, int bits, bool sym, std::vector<T>& scale, std::vector<T>& zero) {
  const T maxq = static_cast<T>((1 << bits) - 1);
  scale.assign(X.rows(), 0);
  zero.assign(X.rows(), 0);
  for (Eigen::Index r = 0; r < X.rows(); ++r) {
    T lo = 0, hi = 0;
    for (Eigen::Index c = 0; c < X.cols(); ++c) {
      if (X(r, c) < lo) lo = X(r, c);
      if (X(r, c) > hi) hi = X(r, c);
    }
    if (sym) {
      hi = std::abs(lo) > hi ? std::abs(lo) : hi;
      if (lo < 0) lo = -hi;
    }
    if (lo == 0 && hi == 0) {
      lo = -1;
      hi = 1;
    }
    scale[r] = (hi - lo) / maxq;
    zero[r] = sym ? (maxq + 1) / 2 : static_cast<T>(qref::round_half_even(-lo / scale[r]));
  }
}

template <class T>
T plain_code(T x, T s, T z, T maxq) {
  T q = static_cast<T>(qref::round_half_even(static_cast<double>(x / s))) + z;
  if (q < 0) q = 0;
  if (q > maxq) q = maxq;
  return q;
}

template <class A, class B>
bool same_bits(const A& a, const B& b) {
  if (a.size() != b.size()) return false;
  return std::memcmp(a.data(), b.data(), sizeof(*a.data()) * static_cast<std::size_t>(a.size())) ==
         0;
}

// Runs the quantizers' element-wise loops on one kernel path for its lifetime.
struct UseKernel {
  explicit UseKernel(q2n::detail::KernelPath p) : saved(q2n::detail::kernel_path()) {
    q2n::detail::kernel_path() = p;
  }
  ~UseKernel() { q2n::detail::kernel_path() = saved; }
  q2n::detail::KernelPath saved;
};

template <class X, class P>
auto quantize_on(q2n::detail::KernelPath path, const X& x, const P& params) {
  UseKernel k(path);
  return q2n::quantize_uniform(x, params);
}

q2n::RtnOptions rtn_options(int bits, Eigen::Index groupsize, bool sym = false) {
  q2n::RtnOptions o;
  o.grid.bits = bits;
  o.grid.sym = sym;
  o.groupsize = groupsize;
  return o;
}

}  // namespace

TEST_CASE_TEMPLATE("rtn matches a plain scalar re-implementation bit for bit", T, Q2N_TEST_SCALARS) {
  std::mt19937 gen(11);
  for (int bits = 2; bits <= 8; ++bits)
    for (bool sym : {false, true})
      for (Eigen::Index gs : {Eigen::Index(-1), Eigen::Index(8), Eigen::Index(24)}) {
        CAPTURE(bits);
        CAPTURE(sym);
        CAPTURE(gs);
        // 37 rows: not a multiple of any SIMD width, so the scalar tail runs too.
        Mat<T> W = q2n_test::gaussian<T>(37, 48, gen());
        W.row(3).setZero();               // all-zero row: range [-1, 1]
        W.row(4) = W.row(4).cwiseAbs();   // non-negative row (sym quirk)
        W.row(5) = -W.row(5).cwiseAbs();  // non-positive row
        const auto res = q2n::rtn(W, rtn_options(bits, gs, sym));
        const Eigen::Index g = gs == -1 ? W.cols() : gs;
        const T maxq = static_cast<T>((1 << bits) - 1);
        REQUIRE(res.storage.uniform->scales.cols() == W.cols() / g);
        for (Eigen::Index grp = 0; grp < W.cols() / g; ++grp) {
          std::vector<T> s, z;
          plain_fit<T>(W.middleCols(grp * g, g), bits, sym, s, z);
          for (Eigen::Index r = 0; r < W.rows(); ++r) {
            REQUIRE(res.storage.uniform->scales(r, grp) == s[r]);
            REQUIRE(res.storage.uniform->zeros(r, grp) == z[r]);
            for (Eigen::Index j = grp * g; j < (grp + 1) * g; ++j) {
              const T c = plain_code<T>(W(r, j), s[r], z[r], maxq);
              REQUIRE(res.storage.uniform->g_idx(j) == grp);
              REQUIRE(res.storage.uniform->codes(r, j) == static_cast<std::uint8_t>(c));
              REQUIRE(res.Q(r, j) == s[r] * (c - z[r]));
            }
          }
        }
        CHECK(q2n::dequantize(res.storage) == res.Q);
      }
}

TEST_CASE_TEMPLATE("rtn accepts row-major matrices, maps and refs alike", T, Q2N_TEST_SCALARS) {
  const Mat<T> W = q2n_test::gaussian<T>(20, 32, 5);
  const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> Wr = W;
  const Eigen::Map<const Mat<T>> Wm(W.data(), W.rows(), W.cols());
  const Eigen::Ref<const Mat<T>> Wref(W);
  const auto a = q2n::rtn(W, rtn_options(3, 8));
  CHECK(q2n::rtn(Wr, rtn_options(3, 8)).Q == a.Q);
  CHECK(q2n::rtn(Wm, rtn_options(3, 8)).Q == a.Q);
  CHECK(q2n::rtn(Wref, rtn_options(3, 8)).Q == a.Q);
  CHECK(q2n::rtn(W.leftCols(16), rtn_options(3, 8)).Q == a.Q.leftCols(16));
}

TEST_CASE_TEMPLATE("round half to even on exact ties, in both kernels", T, Q2N_TEST_SCALARS) {
  // scale 0.25 (exact), zero 8, bits 4: x = (k + 0.5) · 0.25 gives x / scale = k + 0.5 exactly.
  const int rows = 41;
  q2n::UniformParams<T> p;
  p.scale = Eigen::Matrix<T, Eigen::Dynamic, 1>::Constant(rows, T(0.25));
  p.zero = Eigen::Matrix<T, Eigen::Dynamic, 1>::Constant(rows, T(8));
  p.maxq = 15;
  Mat<T> x(rows, 3);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < 3; ++c) x(r, c) = static_cast<T>((r - 20 + 0.5 + 7 * c) * 0.25);
  for (auto path : {q2n::detail::KernelPath::simd, q2n::detail::KernelPath::scalar}) {
    const auto q = quantize_on(path, x, p);
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < 3; ++c) {
        const double t = r - 20 + 0.5 + 7 * c;  // the tie
        double expect = std::floor(t);
        if (std::fmod(expect, 2.0) != 0) expect += 1;  // the even neighbour
        expect = std::min(std::max(expect + 8, 0.0), 15.0);
        CAPTURE(t);
        REQUIRE(q.codes(r, c) == static_cast<std::uint8_t>(expect));
        REQUIRE(q.dequantized(r, c) == static_cast<T>(0.25 * (expect - 8)));
      }
  }
  // Half away from zero would give 1 for 0.5 and -1 for -0.5; half to even gives 0 for both.
  Mat<T> y(1, 2);
  y << T(0.125), T(-0.125);
  q2n::UniformParams<T> p1;
  p1.scale = Eigen::Matrix<T, Eigen::Dynamic, 1>::Constant(1, T(0.25));
  p1.zero = Eigen::Matrix<T, Eigen::Dynamic, 1>::Constant(1, T(8));
  p1.maxq = 15;
  const auto q1 = quantize_on(q2n::detail::KernelPath::simd, y, p1);
  CHECK(q1.codes(0, 0) == 8);
  CHECK(q1.codes(0, 1) == 8);
}

TEST_CASE_TEMPLATE("xsimd and scalar kernels are bit-identical on random inputs", T, Q2N_TEST_SCALARS) {
  std::mt19937 gen(2024);
  std::uniform_int_distribution<int> rows_d(1, 45), cols_d(1, 24), bits_d(2, 8), coin(0, 1);
  std::uniform_int_distribution<int> pick(0, 9);
  int checked = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const int rows = rows_d(gen), cols = cols_d(gen), bits = bits_d(gen);
    q2n::UniformOptions o;
    o.bits = bits;
    o.sym = coin(gen) == 1;
    o.mse = pick(gen) < 3;
    Mat<T> x = q2n_test::gaussian<T>(rows, cols, gen(), 0.1 + pick(gen));
    // Exact ties: entries on half-integer multiples of a power-of-two step.
    for (int r = 0; r < rows; r += 3)
      for (int c = 0; c < cols; ++c)
        x(r, c) = static_cast<T>((static_cast<int>(gen() % 31) - 15 + 0.5) * 0.0625);
    if (rows > 1) x.row(1).setZero();
    CAPTURE(trial);
    const auto ps = q2n::fit_uniform(x, o);
    const auto pc = [&] {
      UseKernel k(q2n::detail::KernelPath::scalar);
      return q2n::fit_uniform(x, o);
    }();
    REQUIRE(same_bits(ps.scale, pc.scale));
    REQUIRE(same_bits(ps.zero, pc.zero));
    const auto qs = quantize_on(q2n::detail::KernelPath::simd, x, ps);
    const auto qc = quantize_on(q2n::detail::KernelPath::scalar, x, ps);
    REQUIRE(same_bits(qs.codes, qc.codes));
    REQUIRE(same_bits(qs.dequantized, qc.dequantized));
    // Ties against scale = step: quantize x with params whose scale is the tie step.
    q2n::UniformParams<T> tie;
    tie.scale = Eigen::Matrix<T, Eigen::Dynamic, 1>::Constant(rows, T(0.0625));
    tie.zero = Eigen::Matrix<T, Eigen::Dynamic, 1>::Constant(rows, T((1 << (bits - 1))));
    tie.maxq = static_cast<T>((1 << bits) - 1);
    const auto ts = quantize_on(q2n::detail::KernelPath::simd, x, tie);
    const auto tc = quantize_on(q2n::detail::KernelPath::scalar, x, tie);
    REQUIRE(same_bits(ts.codes, tc.codes));
    REQUIRE(same_bits(ts.dequantized, tc.dequantized));
    ++checked;
  }
  CHECK(checked == 300);

  // Whole quantizers: every hot loop goes through the selected kernel.
  const Mat<T> W = q2n_test::gaussian<T>(29, 64, 7);
  const Mat<T> X = q2n_test::structured_activations<T>(96, 64, 12, 8);
  const Mat<T> H = (T(2) / 96) * X.transpose() * X;
  for (bool mse : {false, true}) {
    q2n::GptqOptions g;
    g.grid.bits = 3;
    g.groupsize = 16;
    g.grid.mse = mse;
    g.act_order = true;
    const auto a = q2n::gptq(W, H, g);
    const auto b = [&] {
      UseKernel k(q2n::detail::KernelPath::scalar);
      return q2n::gptq(W, H, g);
    }();
    CHECK(same_bits(a.Q, b.Q));
    CHECK(same_bits(a.storage.uniform->codes, b.storage.uniform->codes));
    CHECK(same_bits(a.storage.uniform->scales, b.storage.uniform->scales));
  }
}

TEST_CASE_TEMPLATE("MSE grid search picks the best shrink factor", T, Q2N_TEST_SCALARS) {
  // Independent check in double: for every row, the chosen (scale, zero) is one of the grid's
  // candidates and its Σ|x̂ − x|^2.4 is the minimum over the grid up to rounding (1e-5 relative:
  // the library sums in T and uses xsimd::pow; this check sums in double with std::pow).
  for (bool sym : {false, true})
    for (int bits : {2, 3, 4, 8}) {
      CAPTURE(sym);
      CAPTURE(bits);
      Mat<T> x = q2n_test::gaussian<T>(19, 40, 100 + bits);
      x(0, 0) = 9;  // an outlier makes shrinking worthwhile
      q2n::UniformOptions o;
      o.bits = bits;
      o.sym = sym;
      o.mse = true;
      const auto p = q2n::fit_uniform(x, o);
      const T maxq = static_cast<T>((1 << bits) - 1);
      for (Eigen::Index r = 0; r < x.rows(); ++r) {
        std::vector<T> s0, z0;
        plain_fit<T>(x.row(r), bits, sym, s0, z0);
        T lo = 0, hi = 0;
        for (Eigen::Index c = 0; c < x.cols(); ++c) {
          lo = std::min(lo, x(r, c));
          hi = std::max(hi, x(r, c));
        }
        if (sym) {
          hi = std::max(std::abs(lo), hi);
          if (lo < 0) lo = -hi;
        }
        double best = INFINITY, chosen = -1;
        for (int i = 0; i < 80; ++i) {
          const T pp = static_cast<T>(1.0 - i / 100.0);
          const T lo1 = pp * lo, hi1 = pp * hi;
          const T s1 = (hi1 - lo1) / maxq;
          const T z1 = sym ? z0[0] : static_cast<T>(qref::round_half_even(-lo1 / s1));
          double err = 0;
          for (Eigen::Index c = 0; c < x.cols(); ++c) {
            const T code = plain_code<T>(x(r, c), s1, z1, maxq);
            err += std::pow(std::abs(static_cast<double>(s1 * (code - z1)) - x(r, c)), 2.4);
          }
          best = std::min(best, err);
          if (s1 == p.scale(r) && z1 == p.zero(r)) chosen = err;
        }
        REQUIRE(chosen >= 0);
        CHECK(chosen <= best * (1 + 1e-5));
      }
    }
}

TEST_CASE("uniform quantizer and rtn reject bad input") {
  const Eigen::MatrixXf W = q2n_test::gaussian<float>(4, 12, 1);
  CHECK_THROWS_WITH_AS(q2n::rtn(W, rtn_options(9, -1)), doctest::Contains("bits = 9 is outside 2..8"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::rtn(W, rtn_options(1, -1)), doctest::Contains("bits = 1 is outside 2..8"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::rtn(W, rtn_options(4, 5)), doctest::Contains("groupsize = 5 does not divide"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::rtn(W, rtn_options(4, 0)), doctest::Contains("groupsize = 0"),
                       std::invalid_argument);
  Eigen::MatrixXf bad = W;
  bad(2, 3) = NAN;
  CHECK_THROWS_WITH_AS(q2n::rtn(bad), doctest::Contains("W(2, 3) = nan is not finite"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::fit_uniform(bad), doctest::Contains("q2n::fit_uniform"),
                       std::invalid_argument);
  CHECK_THROWS_AS(q2n::rtn(Eigen::MatrixXf(0, 4)), std::invalid_argument);
  q2n::UniformOptions o;
  o.mse = true;
  o.mse_grid = 0;
  CHECK_THROWS_WITH_AS(q2n::fit_uniform(W, o), doctest::Contains("mse_grid = 0"),
                       std::invalid_argument);
  const auto p = q2n::fit_uniform(W);
  CHECK_THROWS_WITH_AS(q2n::quantize_uniform(W.topRows(2), p),
                       doctest::Contains("params has 4 rows but x has 2"), std::invalid_argument);
  // Hand-made parameters are checked: scale finite and positive, zero an integer in [0, maxq].
  for (float s : {0.0f, -1.0f, NAN, INFINITY}) {
    auto q = p;
    q.scale(1) = s;
    CHECK_THROWS_WITH_AS(q2n::quantize_uniform(W, q), doctest::Contains("params.scale(1)"),
                         std::invalid_argument);
  }
  for (float z : {-1.0f, 16.0f, 2.5f, NAN}) {
    auto q = p;
    q.zero(2) = z;
    CHECK_THROWS_WITH_AS(q2n::quantize_uniform(W, q), doctest::Contains("params.zero(2)"),
                         std::invalid_argument);
  }
  auto q = p;
  q.maxq = 14;
  CHECK_THROWS_WITH_AS(q2n::quantize_uniform(W, q), doctest::Contains("params.maxq = 14"),
                       std::invalid_argument);
}

TEST_CASE("a finite row whose range overflows the scalar type is refused, not quantized to NaN") {
  // [2e38, -2e38] is finite in float, but its range 4e38 is not: the scale would be Inf and
  // the codes NaN. Every quantizer fits its grid through the same fitter, which refuses it.
  Eigen::MatrixXf W = q2n_test::gaussian<float>(3, 16, 2);
  W(1, 0) = 2e38f;
  W(1, 1) = -2e38f;
  const Eigen::MatrixXf X = q2n_test::gaussian<float>(64, 16, 3);
  const Eigen::MatrixXf H = (2.0f / 64) * X.transpose() * X;
  const auto names_row = doctest::Contains("row 1 span");
  CHECK_THROWS_WITH_AS(q2n::rtn(W), names_row, std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::gptq(W, H), names_row, std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::owq(W, H), names_row, std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::pbllm(W, H), names_row, std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::fit_uniform(W), names_row, std::invalid_argument);
  // The same values in double are representable and quantize to finite codes.
  CHECK(q2n::rtn(W.cast<double>().eval()).Q.allFinite());
}
