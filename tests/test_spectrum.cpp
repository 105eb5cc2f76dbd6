#include <q2n/spectrum.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <limits>
#include <random>
#include <vector>

namespace {

Eigen::VectorXd vec(std::vector<double> v) {
  return Eigen::Map<Eigen::VectorXd>(v.data(), static_cast<Eigen::Index>(v.size()));
}

// The rules written straight from their definitions in words, with O(d²) explicit sums,
// sharing no code with find_cut.
Eigen::Index paper_by_definition(const Eigen::VectorXd& s0, double t) {
  const Eigen::VectorXd s = s0.cwiseMax(0.0);
  const Eigen::Index d = s.size();
  for (Eigen::Index r = 2; r <= d - 1; ++r) {
    double head = 0, tail = 0;
    for (Eigen::Index j = 1; j <= r - 1; ++j) head += s(j);
    for (Eigen::Index j = r + 1; j < d; ++j) tail += s(j);
    if (head > 1e-12 && tail <= t * head) return r;
  }
  return -1;
}

Eigen::Index plain_by_definition(const Eigen::VectorXd& s0, double t) {
  const Eigen::VectorXd s = s0.cwiseMax(0.0);
  for (Eigen::Index r = 1; r <= s.size(); ++r) {
    double head = 0, tail = 0;
    for (Eigen::Index j = 0; j < r; ++j) head += s(j);
    for (Eigen::Index j = r; j < s.size(); ++j) tail += s(j);
    if (head > 0 && tail <= t * head) return r;
  }
  return -1;
}

}  // namespace

TEST_CASE("find_cut on hand-made spectra") {
  using q2n::CutRule;
  // Values are powers of two so that every sum and every tie below is exact.
  SUBCASE("s0 is in neither sum of the paper rule; the plain rule counts it") {
    const auto s = vec({64, 1, 1, 0.0625, 0.0625});
    // paper r=2: Σ_{j≥3} = 0.125 ≤ t·s1 = 0.125 (tie counts as met)
    CHECK(q2n::find_cut(s, 0.125).kept == 2);
    // just below the tie: r=3: s4 = 0.0625 ≤ 0.124·(s1+s2)
    CHECK(q2n::find_cut(s, 0.124).kept == 3);
    // plain r=1: Σ_{j≥1} = 2.125 ≤ 0.125·64 = 8
    CHECK(q2n::find_cut(s, 0.125, CutRule::plain).kept == 1);
  }
  SUBCASE("ties: a flat spectrum") {
    const auto s = vec({4, 4, 4, 4});
    CHECK(q2n::find_cut(s).kept == 3);  // r=2: 4 > 0.4; r=3: tail empty
    const auto plain = q2n::find_cut(s, 0.1, CutRule::plain);
    CHECK(plain.found);
    CHECK(plain.kept == 4);  // only the whole spectrum leaves a tail ≤ 10% of the head
  }
  SUBCASE("zeros and clamped rounding negatives") {
    CHECK(q2n::find_cut(vec({5, 3, 0, 0, 0})).kept == 2);
    CHECK(q2n::find_cut(vec({5, 3, 0, 0, 0}), 0.1, CutRule::plain).kept == 2);
    CHECK(q2n::find_cut(vec({5, 3, -1e-18, -1e-17})).kept == 2);
  }
  SUBCASE("a single nonzero eigenvalue: no paper cut, plain keeps it") {
    const auto s = vec({7, 0, 0, 0});
    const auto c = q2n::find_cut(s);
    CHECK_FALSE(c.found);
    CHECK(c.kept == 0);
    CHECK(c.index() == -1);
    CHECK(q2n::find_cut(s, 0.1, CutRule::plain).kept == 1);
  }
  SUBCASE("all zero or too short: no cut") {
    CHECK_FALSE(q2n::find_cut(vec({0, 0, 0})).found);
    CHECK_FALSE(q2n::find_cut(vec({0, 0, 0}), 0.1, CutRule::plain).found);
    CHECK_FALSE(q2n::find_cut(vec({3, 1})).found);  // paper rule needs d ≥ 3
    CHECK(q2n::find_cut(vec({3, 1}), 0.1, CutRule::plain).kept == 2);
    CHECK_FALSE(q2n::find_cut(vec({2})).found);
  }
  SUBCASE("the 1e-12 floor of the paper rule") {
    // s1 = 6e-13 is below the reference's floor, so r=2 is not allowed even with an empty tail.
    CHECK(q2n::find_cut(vec({1, 6e-13, 6e-13, 0, 0})).kept == 3);
  }
}

TEST_CASE("find_cut agrees with the rules' definitions on random spectra") {
  std::mt19937 gen(5);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  int found_paper = 0, found_plain = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const Eigen::Index d = 1 + static_cast<Eigen::Index>(u(gen) * 60);
    std::vector<double> v(static_cast<std::size_t>(d));
    const double decay = 0.3 + 0.69 * u(gen);
    for (std::size_t j = 0; j < v.size(); ++j) {
      v[j] = std::pow(decay, double(j)) * (0.5 + u(gen));
      if (u(gen) < 0.1) v[j] = 0;                          // zeros
      if (j > 0 && u(gen) < 0.1) v[j] = v[j - 1];          // ties
    }
    std::sort(v.begin(), v.end(), std::greater<>());
    const auto s = vec(v);
    const double t = 0.02 + 0.3 * u(gen);
    const auto paper = q2n::find_cut(s, t);
    const auto plain = q2n::find_cut(s, t, q2n::CutRule::plain);
    CHECK(paper.index() == paper_by_definition(s, t));
    CHECK(plain.index() == plain_by_definition(s, t));
    found_paper += paper.found;
    found_plain += plain.found;
  }
  // The generator must exercise both outcomes, or the comparison above proves little.
  CHECK(found_paper > 100);
  CHECK(found_paper < 400);
  CHECK(found_plain > 100);
}

TEST_CASE("find_cut refuses bad input") {
  const auto s = vec({3, 2, 1});
  for (double t : {0.0, -0.1, std::numeric_limits<double>::infinity(),
                   std::numeric_limits<double>::quiet_NaN()})
    CHECK_THROWS_WITH_AS(q2n::find_cut(s, t), doctest::Contains("threshold"),
                         std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::find_cut(vec({1, 2, 0})), doctest::Contains("descending"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::find_cut(Eigen::VectorXd()), doctest::Contains("empty"),
                       std::invalid_argument);
  CHECK_THROWS_WITH_AS(q2n::find_cut(vec({3, std::numeric_limits<double>::quiet_NaN(), 1})),
                       doctest::Contains("eigenvalues(1, 0)"), std::invalid_argument);
}
