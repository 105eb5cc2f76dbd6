// GPTQ: conformance with the reference on every vector file, Q2N through the plug-in on the
// reference's Q, a plain double-precision re-implementation, damping and bad input.
#include <doctest/doctest.h>

#include <Eigen/QR>
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <q2n/detail/hessian_inverse.hpp>
#include <q2n/io/safetensors.hpp>
#include <q2n/quantizers.hpp>
#include <string>
#include <utility>
#include <vector>

#include "quant_reference.hpp"
#include "test_util.hpp"

namespace {

using q2n_test::Mat;

std::vector<std::string> vector_files() {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(q2n_test::data_path("vectors")))
    if (e.path().extension() == ".safetensors") out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

bool meta_bool(const std::map<std::string, std::string>& m, const std::string& k) {
  const std::string v = m.at(k);
  if (v == "True" || v == "true" || v == "1") return true;
  if (v == "False" || v == "false" || v == "0") return false;
  throw std::runtime_error("unexpected boolean metadata " + k + " = " + v);
}

q2n::GptqOptions options_from(const std::map<std::string, std::string>& meta) {
  q2n::GptqOptions o;
  o.grid.bits = std::stoi(meta.at("bits"));
  o.groupsize = std::stoi(meta.at("groupsize"));
  o.grid.sym = meta_bool(meta, "sym");
  o.act_order = meta_bool(meta, "act_order");
  o.static_groups = meta_bool(meta, "static_groups");
  o.damping.percdamp = std::stod(meta.at("percdamp"));
  o.sweep.blocksize = std::stoi(meta.at("blocksize"));
  return o;
}

/// ‖X (Q − W)ᵀ‖² / ‖X Wᵀ‖² over all tokens, in double.
double rel_out_err(const Eigen::MatrixXd& X, const Eigen::MatrixXd& W, const Eigen::MatrixXd& Q) {
  return (X * (Q - W).transpose()).squaredNorm() / (X * W.transpose()).squaredNorm();
}

}  // namespace

TEST_CASE_TEMPLATE("gptq conformance with the reference on every vector file", T, Q2N_TEST_SCALARS) {
  const auto files = vector_files();
  REQUIRE(files.size() >= 6);
  for (const auto& path : files) {
    const std::string name = std::filesystem::path(path).stem().string();
    CAPTURE(name);
    const q2n::io::SafetensorsReader file(path);
    const auto& meta = file.metadata();
    const q2n::GptqOptions o = options_from(meta);
    const Mat<T> W = file.read_matrix<float>("W").cast<T>();
    const Eigen::MatrixXf H = file.read_matrix<float>("H");  // F32, as accumulated
    const Eigen::MatrixXf Qref = file.read_matrix<float>("gptq.Q");
    const Eigen::MatrixXd X = file.read_matrix<float>("X").cast<double>();
    REQUIRE(W.rows() == std::stoi(meta.at("rows")));
    REQUIRE(W.cols() == std::stoi(meta.at("cols")));

    // Entries equal to the reference within 1e-6 relative: the same code (the residual is the
    // float rounding of scale · (q − zero), ~6e-8 relative, plus for double the float rounding
    // of the reference's own scale). Both arithmetic orders are checked: the default (cheaper
    // H⁻¹ route, blocked in-block updates) and the reference's own order.
    const Eigen::MatrixXd Wd = W.template cast<double>();
    const double ref = std::stod(meta.at("rel_out_err_gptq"));
    q2n::QuantResult<T> res;
    for (bool reference_arithmetic : {false, true}) {
      q2n::GptqOptions oo = o;
      oo.sweep.reference_arithmetic = reference_arithmetic;
      res = q2n::gptq(W, H, oo);
      CHECK(q2n::dequantize(res.storage) == res.Q);
      Eigen::Index equal = 0;
      for (Eigen::Index j = 0; j < W.cols(); ++j)
        for (Eigen::Index i = 0; i < W.rows(); ++i) {
          const double a = static_cast<double>(res.Q(i, j)), b = Qref(i, j);
          if (std::abs(a - b) <= 1e-6 * std::max(std::abs(b), 1e-30)) ++equal;
        }
      const double frac = static_cast<double>(equal) / static_cast<double>(W.size());
      const double ours = rel_out_err(X, Wd, res.Q.template cast<double>());
      const std::string tag = std::string(std::is_same_v<T, float> ? " [float" : " [double") +
                              (reference_arithmetic ? ", reference order]" : ", default]");
      MESSAGE(name, tag, ": match fraction ", frac, ", rel_out_err ours ", ours, " reference ", ref,
              " (ratio ", ours / ref, "), damping retries ", res.diagnostics.retries);
      CHECK(frac >= 0.99);
      CHECK(std::abs(ours / ref - 1) <= 0.01);
      CHECK(res.diagnostics.retries == 0);
      CHECK(res.diagnostics.percdamp == o.damping.percdamp);
    }

    // The storage describes the run: perm is a permutation, act-order follows diag(H).
    std::vector<int> seen(W.cols(), 0);
    for (Eigen::Index k = 0; k < W.cols(); ++k) ++seen[res.storage.perm(k)];
    CHECK(std::all_of(seen.begin(), seen.end(), [](int c) { return c == 1; }));
    if (o.act_order)
      for (Eigen::Index k = 1; k < W.cols(); ++k)
        CHECK(H(res.storage.perm(k - 1), res.storage.perm(k - 1)) >=
              H(res.storage.perm(k), res.storage.perm(k)));
  }
}

TEST_CASE_TEMPLATE("Q2N plug-in on the reference gptq.Q reproduces q2n.m and q2n.Q", T, Q2N_TEST_SCALARS) {
  for (const auto& path : vector_files()) {
    const std::string name = std::filesystem::path(path).stem().string();
    CAPTURE(name);
    const q2n::io::SafetensorsReader file(path);
    const auto& meta = file.metadata();
    const Mat<T> W = file.read_matrix<float>("W").cast<T>();
    const Mat<T> Qref = file.read_matrix<float>("gptq.Q").cast<T>();
    const Mat<T> abar = file.read_matrix<float>("Abar").cast<T>();
    const Eigen::VectorXd m_ref = file.read_matrix<double>("q2n.m");
    const Eigen::MatrixXd Q2ref = file.read_matrix<double>("q2n.Q");
    const double lambda = std::stod(meta.at("lambda_"));
    const auto ns =
        q2n::NullSpace<T>::compute(abar, {std::stod(meta.at("threshold")), q2n::CutRule::paper});
    REQUIRE(ns.cut().index() == std::stoi(meta.at("cut_index")));

    const auto wrapped = q2n::full_precision_result(Qref);
    const auto refined = q2n::refine(wrapped, W, ns, lambda);
    // 1e-9 in double (the reference is float64 from the same float32 inputs); 1e-4 in float,
    // where the kept basis U1 carries float rounding (~1e-6 relative) into m − 1.
    const double tol = std::is_same_v<T, float> ? 1e-4 : 1e-9;
    const double dm =
        ((refined.m.template cast<double>() - m_ref).array().abs() / m_ref.array().abs())
            .maxCoeff();
    double dq = 0;
    for (Eigen::Index j = 0; j < W.cols(); ++j)
      for (Eigen::Index i = 0; i < W.rows(); ++i)
        if (Q2ref(i, j) != 0)
          dq = std::max(dq, std::abs(static_cast<double>(refined.Q(i, j)) - Q2ref(i, j)) /
                                std::abs(Q2ref(i, j)));
        else
          CHECK(refined.Q(i, j) == 0);
    MESSAGE(name, ": max rel diff m ", dm, ", Q ", dq);
    CHECK(dm <= tol);
    CHECK(dq <= tol);
    CHECK(refined.cut.index() == std::stoi(meta.at("cut_index")));
    CHECK(q2n::dequantize(refined.storage) == refined.Q);

    // Our own GPTQ output refined the same way lands near the reference's m (Q agrees on ≥ 99%
    // of its entries, so m moves by far less than its own deviation from 1).
    const auto ours = q2n::gptq(W, file.read_matrix<float>("H"), options_from(meta));
    const auto ours_refined = q2n::refine(ours, W, ns, lambda);
    const double dev = (m_ref.array() - 1).abs().maxCoeff();
    CHECK((ours_refined.m.template cast<double>() - m_ref).cwiseAbs().maxCoeff() <= 0.25 * dev);
  }
}

TEST_CASE("gptq matches a plain double-precision re-implementation (all option combinations)") {
  // Exhaustive over the options on a small layer. Both sides are double; the library differs
  // from the plain loops only in summation order (sub-block products, GEMM) and in the route to
  // chol(H⁻¹), ~1e-13 relative, so codes agree exactly unless a value lands within ~1e-13 of a
  // rounding boundary (probability ~1e-10 per entry with these random inputs).
  const Eigen::MatrixXd W = q2n_test::gaussian<double>(12, 48, 31);
  const Eigen::MatrixXd X = q2n_test::structured_activations<double>(64, 48, 10, 32);
  Eigen::MatrixXd H = (2.0 / 64) * X.transpose() * X;
  H.row(5).setZero();  // a dead column
  H.col(5).setZero();
  int cases = 0;
  for (int bits : {2, 4})
    for (Eigen::Index gs : {Eigen::Index(-1), Eigen::Index(8), Eigen::Index(16)})
      for (bool sym : {false, true})
        for (bool act : {false, true})
          for (bool stat : {false, true})
            for (Eigen::Index bs : {Eigen::Index(128), Eigen::Index(12)})
              for (bool refa : {false, true}) {
                CAPTURE(refa);
                CAPTURE(bits);
                CAPTURE(gs);
                CAPTURE(sym);
                CAPTURE(act);
                CAPTURE(stat);
                CAPTURE(bs);
                q2n::GptqOptions o;
                o.grid.bits = bits;
                o.groupsize = gs;
                o.grid.sym = sym;
                o.act_order = act;
                o.static_groups = stat;
                o.sweep.blocksize = bs;
                o.sweep.reference_arithmetic = refa;
                const auto res = q2n::gptq(W, H, o);
                const auto ref = qref::gptq(W, H, bits, gs, sym, act, stat, 0.01, bs);
                REQUIRE(res.diagnostics.dead_columns == 1);
                for (Eigen::Index k = 0; k < W.cols(); ++k)
                  REQUIRE(res.storage.perm(k) == ref.perm[k]);
                for (Eigen::Index j = 0; j < W.cols(); ++j)
                  for (Eigen::Index i = 0; i < W.rows(); ++i) {
                    REQUIRE(res.storage.uniform->codes(i, j) == ref.codes[j * W.rows() + i]);
                    REQUIRE(std::abs(res.Q(i, j) - ref.Q(i, j)) <=
                            1e-12 * (1 + std::abs(ref.Q(i, j))));
                  }
                CHECK(res.Q.col(5).isZero(0));  // dead column quantizes to exactly 0
                // g_idx: static → original column / gs, otherwise processing position / gs.
                for (Eigen::Index k = 0; k < W.cols(); ++k) {
                  const int j = res.storage.perm(k);
                  const int expect = gs == -1 ? 0 : static_cast<int>((stat ? j : k) / gs);
                  REQUIRE(res.storage.uniform->g_idx(j) == expect);
                }
                ++cases;
              }
  CHECK(cases == 192);
}

TEST_CASE_TEMPLATE("gptq in float agrees with the double re-implementation", T, Q2N_TEST_SCALARS) {
  const Mat<T> W = q2n_test::gaussian<T>(16, 64, 41);
  const Mat<T> X = q2n_test::structured_activations<T>(128, 64, 16, 42);
  const Mat<T> H = (T(2) / 128) * X.transpose() * X;
  q2n::GptqOptions o;
  o.grid.bits = 3;
  o.groupsize = 16;
  const auto res = q2n::gptq(W, H, o);
  const auto ref = qref::gptq(W.template cast<double>(), H.template cast<double>(), 3, 16, false,
                              false, false, 0.01, 128);
  Eigen::Index same = 0;
  for (Eigen::Index j = 0; j < W.cols(); ++j)
    for (Eigen::Index i = 0; i < W.rows(); ++i)
      same += res.storage.uniform->codes(i, j) == ref.codes[j * W.rows() + i];
  // float: rounding (~1e-7) flips a code only next to a boundary; error feedback can carry a
  // flip to a few later columns of the same row, so allow 2% (double: all equal).
  const double frac = static_cast<double>(same) / static_cast<double>(W.size());
  CHECK(frac >= (std::is_same_v<T, float> ? 0.98 : 1.0));
}

TEST_CASE_TEMPLATE("gptq damping: rank-deficient H quantizes and reports the damping", T, Q2N_TEST_SCALARS) {
  const Mat<T> W = q2n_test::gaussian<T>(8, 32, 51);
  const Mat<T> X = q2n_test::gaussian<T>(6, 32, 52);  // 6 tokens: rank(H) = 6 < 32
  const Mat<T> H = (T(2) / 6) * X.transpose() * X;
  const double mean = H.diagonal().template cast<double>().mean();

  const auto a = q2n::gptq(W, H);
  CHECK(a.diagnostics.retries == 0);
  CHECK(a.diagnostics.percdamp == 0.01);
  CHECK(a.diagnostics.damping == doctest::Approx(0.01 * mean).epsilon(1e-6));
  CHECK(a.Q.allFinite());

  // Without damping the factorization fails and is retried with growing damping.
  q2n::GptqOptions o;
  o.damping.percdamp = 0;
  const auto b = q2n::gptq(W, H, o);
  CHECK(b.diagnostics.retries >= 1);
  CHECK(b.diagnostics.percdamp > 0);
  CHECK(b.diagnostics.percdamp ==
        doctest::Approx(1e-6 * std::pow(10.0, b.diagnostics.retries - 1)));
  CHECK(b.diagnostics.damping == doctest::Approx(b.diagnostics.percdamp * mean).epsilon(1e-6));
  CHECK(b.Q.allFinite());
  // Still a sensible quantization: its error in the calibration norm is no worse than RTN's.
  const auto r = q2n::rtn(W);
  const auto out_err = [&](const Mat<T>& Q) { return (X * (Q - W).transpose()).squaredNorm(); };
  CHECK(out_err(b.Q) <= out_err(r.Q));
  o.sweep.reference_arithmetic = true;  // the reference route detects the failure the same way
  const auto c = q2n::gptq(W, H, o);
  CHECK(c.diagnostics.retries >= 1);
  CHECK(c.Q.allFinite());
  o.sweep.reference_arithmetic = false;

  // No retries allowed: a clear numerical error.
  o.damping.max_retries = 0;
  CHECK_THROWS_AS(q2n::gptq(W, H, o), q2n::NumericalError);
}

TEST_CASE_TEMPLATE("U is the upper Cholesky factor of the permuted, damped H⁻¹ across the factorization's blocks", T, Q2N_TEST_SCALARS) {
  // n = 1100 takes the blocked route (from 1024) and spans five blocks (4 × 256 + 76) and
  // several row panels. Reference: H⁻¹ formed and factored by Eigen in double. H = Q diag(1..100)
  // Qᵀ: Cholesky and triangular inversion are backward stable, so U's relative error is at most
  // O(n·ε·κ) = 1100 · 6e-8 · 100 ≈ 7e-3 (float), 2e-11 (double); the max norm relative to
  // max |U| is checked against that bound.
  const Eigen::Index n = 1100;
  const Eigen::MatrixXd G = q2n_test::gaussian<double>(n, n, 61);
  const Eigen::MatrixXd Qo = Eigen::HouseholderQR<Eigen::MatrixXd>(G).householderQ();
  const Eigen::VectorXd ev = Eigen::VectorXd::LinSpaced(n, 1, 100);
  const Eigen::MatrixXd H = Qo * ev.asDiagonal() * Qo.transpose();
  std::vector<int> perm(static_cast<std::size_t>(n));
  for (Eigen::Index i = 0; i < n; ++i) perm[static_cast<std::size_t>(i)] = static_cast<int>((i * 263) % n);
  q2n::QuantDiagnostics diag;
  const Mat<T> U = q2n::detail::damped_inverse_cholesky<T>(Mat<T>(H.cast<T>()), perm, 0.01, 0, false, diag, "test");
  Eigen::MatrixXd Hp(n, n);
  for (Eigen::Index a = 0; a < n; ++a)
    for (Eigen::Index b = 0; b < n; ++b) Hp(a, b) = H(perm[static_cast<std::size_t>(a)], perm[static_cast<std::size_t>(b)]);
  Hp.diagonal().array() += 0.01 * H.diagonal().mean();
  const Eigen::MatrixXd Uref = Eigen::LLT<Eigen::MatrixXd>(Eigen::MatrixXd(Hp.inverse())).matrixU();
  const double bound = double(n) * double(std::numeric_limits<T>::epsilon()) * 100;
  CHECK(diag.retries == 0);
  CHECK((U.template cast<double>() - Uref).cwiseAbs().maxCoeff() <= bound * Uref.cwiseAbs().maxCoeff());
  CHECK(U.template triangularView<Eigen::StrictlyLower>().toDenseMatrix().isZero(0));
}

TEST_CASE("gptq rejects bad input") {
  const Eigen::MatrixXf W = q2n_test::gaussian<float>(4, 16, 1);
  const Eigen::MatrixXf X = q2n_test::gaussian<float>(32, 16, 2);
  const Eigen::MatrixXf H = X.transpose() * X / 16;
  q2n::GptqOptions o;
  o.grid.bits = 9;
  CHECK_THROWS_WITH_AS(q2n::gptq(W, H, o),
                       doctest::Contains("q2n::gptq: grid.bits = 9 is outside 2..8"),
                       std::invalid_argument);
  o = {};
  o.groupsize = 6;
  CHECK_THROWS_WITH_AS(q2n::gptq(W, H, o),
                       doctest::Contains("groupsize = 6 does not divide cols = 16"),
                       std::invalid_argument);
  Eigen::MatrixXf Wn = W;
  Wn(1, 1) = INFINITY;
  CHECK_THROWS_WITH_AS(q2n::gptq(Wn, H), doctest::Contains("W(1, 1) = inf is not finite"),
                       std::invalid_argument);
  Eigen::MatrixXf Hn = H;
  Hn(3, 2) = NAN;
  CHECK_THROWS_WITH_AS(q2n::gptq(W, Hn), doctest::Contains("H(3, 2) = nan is not finite"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::gptq(W, H.topLeftCorner(8, 8)),
                       doctest::Contains("H (must be cols x cols"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::gptq(W, Eigen::MatrixXf::Zero(16, 16)),
                       doctest::Contains("H is all zero"), std::invalid_argument);
  Eigen::MatrixXf Hneg = H;
  Hneg(4, 4) = -1;
  CHECK_THROWS_WITH_AS(q2n::gptq(W, Hneg), doctest::Contains("H(4, 4) = -1 is negative"),
                       std::invalid_argument);
  o = {};
  o.damping.percdamp = -0.1;
  CHECK_THROWS_WITH_AS(q2n::gptq(W, H, o), doctest::Contains("percdamp = -0.1"),
                       std::invalid_argument);
  o = {};
  o.sweep.blocksize = 0;
  CHECK_THROWS_WITH_AS(q2n::gptq(W, H, o), doctest::Contains("blocksize = 0"),
                       std::invalid_argument);
  // H from the accumulator (double) is accepted for float weights.
  q2n::HessianAccumulator acc(16);
  acc.add(X);
  CHECK(q2n::gptq(W, acc.hessian()).Q.allFinite());
}

TEST_CASE_TEMPLATE("gptq, owq and pbllm accept row-major matrices, maps and refs alike", T, Q2N_TEST_SCALARS) {
  using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const Mat<T> W = q2n_test::gaussian<T>(10, 32, 111);
  const Mat<T> X = q2n_test::structured_activations<T>(64, 32, 8, 112);
  const Mat<T> H = (T(2) / 64) * X.transpose() * X;
  const RowMajor Wr = W, Hr = H;
  const Eigen::Map<const Mat<T>> Wm(W.data(), W.rows(), W.cols());
  const Eigen::Ref<const Mat<T>> Href(H);
  q2n::GptqOptions o;
  o.grid.bits = 3;
  o.groupsize = 8;
  o.act_order = true;
  const auto a = q2n::gptq(W, H, o);
  CHECK(q2n::gptq(Wr, Hr, o).Q == a.Q);
  CHECK(q2n::gptq(Wm, Href, o).Q == a.Q);
  CHECK(q2n::gptq(W, H.template cast<double>(), o).Q.allFinite());
  q2n::OwqOptions oo;
  oo.outlier_columns = 2;
  CHECK(q2n::owq(Wr, Hr, oo).Q == q2n::owq(W, H, oo).Q);
  CHECK(q2n::pbllm(Wm, Href).Q == q2n::pbllm(W, H).Q);

  // An rvalue H of the weights' type is consumed (moved into the working copy) and gives the
  // same result as the copying overload.
  Mat<T> h1 = H, h2 = H, h3 = H;
  CHECK(q2n::gptq(W, std::move(h1), o).Q == a.Q);
  CHECK(q2n::owq(W, std::move(h2), oo).Q == q2n::owq(W, H, oo).Q);
  CHECK(q2n::pbllm(W, std::move(h3)).Q == q2n::pbllm(W, H).Q);
  CHECK(h1.size() == 0);
  CHECK(h2.size() == 0);
  CHECK(h3.size() == 0);
}
