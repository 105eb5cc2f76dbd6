// Conformance with the reference implementation on the vectors in tests/data/vectors/
// (see that folder's README.md): statistics, spectrum, cut index and equivalent vector.
#include <q2n/io/safetensors.hpp>
#include <q2n/projection.hpp>

#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

const std::vector<std::string> kVectorFiles = {
    "w2_g128_asym_actorder",  "w2_g64_sym_static_actorder",        "w3_g128_asym",
    "w3_perchannel_asym_damp10", "w4_g128_sym_gaussian_longseq", "w4_perchannel_asym"};

double max_rel_diff(const Eigen::VectorXd& a, const Eigen::VectorXd& b) {
  return ((a - b).array().abs() / b.array().abs()).maxCoeff();
}

}  // namespace

TEST_CASE_TEMPLATE("conformance: cut index and equivalent vector match the reference", T, Q2N_TEST_SCALARS) {
  for (const auto& name : kVectorFiles) {
    CAPTURE(name);
    const q2n::io::SafetensorsReader file(q2n_test::data_path("vectors/" + name + ".safetensors"));
    const auto& meta = file.metadata();
    const int ref_cut = file.read_flat<std::int32_t>("q2n.cut_index").at(0);
    REQUIRE(ref_cut == std::stoi(meta.at("cut_index")));
    const double threshold = std::stod(meta.at("threshold"));
    const double lambda = std::stod(meta.at("lambda_"));
    const Eigen::VectorXd ref_s = file.read_matrix<double>("q2n.eigenvalues");
    const Eigen::VectorXd ref_m = file.read_matrix<double>("q2n.m");

    // The rule on the reference's own spectrum reproduces its index exactly.
    CHECK(q2n::find_cut(ref_s, threshold).index() == ref_cut);

    const q2n_test::Mat<T> abar = file.read_matrix<float>("Abar").cast<T>();
    const q2n_test::Mat<T> w = file.read_matrix<float>("W").cast<T>();
    const q2n_test::Mat<T> q = file.read_matrix<float>("gptq.Q").cast<T>();
    std::vector<Eigen::VectorXd> ms;
    for (auto route : {q2n::SpectrumRoute::covariance, q2n::SpectrumRoute::gram}) {
      CAPTURE(static_cast<int>(route));
      const auto ns = q2n::NullSpace<T>::compute(abar, {threshold, q2n::CutRule::paper, route});
      CHECK(ns.cut().index() == ref_cut);
      CHECK(ns.route() == route);  // no silent fallback: both routes really ran
      // Spectrum: float64 reference; ours carries T's rounding relative to s0.
      const double s_tol = std::is_same_v<T, float> ? 1e-4 : 1e-10;
      CHECK((ns.eigenvalues() - ref_s).cwiseAbs().maxCoeff() <= s_tol * ref_s(0));
      const Eigen::VectorXd m = q2n::equivalent_vector(w, q, ns, lambda).template cast<double>();
      // The bounds: 1e-9 in double (the reference is float64 from the same float32
      // inputs), 1e-4 in float (U1 in float carries ~1e-6 relative error).
      const double m_tol = std::is_same_v<T, float> ? 1e-4 : 1e-9;
      const double diff = max_rel_diff(m, ref_m);
      MESSAGE(name, " route ", static_cast<int>(route), " max rel diff of m: ", diff);
      CHECK(diff <= m_tol);
      ms.push_back(m);
    }
    // The two construction routes agree with each other as tightly as each with the reference.
    CHECK(max_rel_diff(ms[0], ms[1]) <= (std::is_same_v<T, float> ? 1e-4 : 1e-9));
    // refined Q = diag(m)·gptq.Q matches q2n.Q.
    const Eigen::MatrixXd ref_q = file.read_matrix<double>("q2n.Q");
    const auto ns = q2n::NullSpace<T>::compute(abar, {threshold});
    const Eigen::MatrixXd refined = q2n::refine(w, q, ns, lambda).Q.template cast<double>();
    CHECK((refined - ref_q).cwiseAbs().maxCoeff() <=
          (std::is_same_v<T, float> ? 1e-4 : 1e-9) * ref_q.cwiseAbs().maxCoeff());
  }
}

TEST_CASE("conformance: accumulators reproduce the reference H and Abar from X") {
  for (const auto& name : kVectorFiles) {
    CAPTURE(name);
    const q2n::io::SafetensorsReader file(q2n_test::data_path("vectors/" + name + ".safetensors"));
    const auto seqlen = static_cast<Eigen::Index>(file.info("X").shape.at(1));
    const Eigen::MatrixXd x = file.read_matrix<float>("X").cast<double>();  // (S·T) × cols
    q2n::SampleMeanAccumulator abar(x.cols());
    q2n::HessianAccumulator h(x.cols());
    for (Eigen::Index s = 0; s < x.rows(); s += seqlen) {  // one sequence per batch, as streamed
      abar.add_sequence(x.middleRows(s, seqlen));
      h.add(x.middleRows(s, seqlen));
    }
    const Eigen::MatrixXd ref_abar = file.read_matrix<float>("Abar").cast<double>();
    const Eigen::MatrixXd ref_h = file.read_matrix<float>("H").cast<double>();
    // The reference's N counts sequences, not tokens, so its H is seqlen times ours (a constant
    // GPTQ is invariant to: damping is relative to mean(diag H)). It accumulates in float32
    // with a running rescale, ~1e-6 relative to the largest entries; ours is double. 1e-5
    // leaves a margin of ten.
    CHECK((abar.mean() - ref_abar).cwiseAbs().maxCoeff() <= 1e-5 * ref_abar.cwiseAbs().maxCoeff());
    const Eigen::MatrixXd h_per_sequence = h.hessian() * static_cast<double>(seqlen);
    CHECK((h_per_sequence - ref_h).cwiseAbs().maxCoeff() <= 1e-5 * ref_h.cwiseAbs().maxCoeff());
  }
}
