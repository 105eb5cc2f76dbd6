#pragma once
// Shared helpers for the test suite: deterministic data that looks like LLM activations.
#include <Eigen/Core>
#include <Eigen/QR>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <random>
#include <string>
#include <system_error>

// The scalar types of the templated tests. The sanitizer build defines Q2N_TEST_FLOAT_ONLY
// and runs the float instantiations only: memory and undefined-behaviour errors live in index
// arithmetic that the two types share, and the double instantiations (which run in the
// optimized build) would double the sanitizer build's compile time.
#ifdef Q2N_TEST_FLOAT_ONLY
#define Q2N_TEST_SCALARS float
#else
#define Q2N_TEST_SCALARS float, double
#endif

namespace q2n_test {

/// The message of the E that f() throws ("<no exception>", or the message marked as of the
/// wrong type, when it throws none or another).
template <class E, class F>
std::string thrown(F&& f) {
  try {
    f();
  } catch (const E& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("<wrong exception type: ") + e.what() + ">";
  }
  return "<no exception>";
}

/// Whether `text` contains `part`.
inline bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

inline std::string data_path(const std::string& rel) { return std::string(Q2N_TEST_DATA_DIR) + "/" + rel; }

/// A path in the system temporary directory that no other test process uses (CTest runs the
/// test cases as parallel processes), ending in `name`; the file and its ".tmp" sibling are
/// removed when the object goes out of scope.
class TempFile {
 public:
  explicit TempFile(const std::string& name) {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            ("q2n_test_" + std::to_string(std::random_device{}()) + "_" + std::to_string(counter++) + "_" + name);
  }
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
    std::filesystem::remove(path_.string() + ".tmp", ec);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

template <class Scalar>
using Mat = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

/// Gaussian matrix with a fixed seed.
template <class Scalar>
Mat<Scalar> gaussian(Eigen::Index rows, Eigen::Index cols, std::uint32_t seed, double sd = 1.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> nd(0.0, sd);
  Mat<Scalar> m(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) m(i, j) = static_cast<Scalar>(nd(gen));
  return m;
}

/// Activations with LLM-like structure: low-rank content, a few outlier channels and a
/// large first position, plus small noise (rows = tokens).
template <class Scalar>
Mat<Scalar> structured_activations(Eigen::Index tokens, Eigen::Index cols, Eigen::Index rank,
                                   std::uint32_t seed, double noise = 1e-3) {
  Mat<double> a = gaussian<double>(tokens, rank, seed) * gaussian<double>(rank, cols, seed + 1);
  a += noise * gaussian<double>(tokens, cols, seed + 2);
  for (Eigen::Index c = 0; c < cols; c += 37) a.col(c) *= 8.0;
  a.row(0) *= 20.0;
  return a.cast<Scalar>();
}

/// Sample-averaged activations Ā (positions × cols, two sequences averaged) of the three
/// families of benchmarks/make_activation_families.py, in double:
///   steep           16 directions, strengths decaying by 0.7 each, noise sd 1e-3
///   flat_massive    position 0 holds a massive activation (4 channels at 100x the typical
///                   entry by default, as LLM inputs do; Llama-2's reach 1000x), 32 slowly decaying directions and an isotropic
///                   noise floor with 0.15x their energy: the cut keeps many directions, and s0
///                   is thousands of times the kept eigenvalues at the cut
///   rank_deficient  i.i.d. entries with log-normal channel scales and 8 outlier channels;
///                   use positions < cols for a rank-deficient Ā
enum class Family { steep, flat_massive, rank_deficient };
inline const char* family_name(Family f) {
  return f == Family::steep ? "steep" : f == Family::flat_massive ? "flat_massive" : "rank_deficient";
}
inline Mat<double> activation_family(Family f, Eigen::Index positions, Eigen::Index cols,
                                     std::uint32_t seed, double massive_factor = 100.0) {
  std::mt19937 gen(seed);
  std::normal_distribution<double> nd;
  const auto normal = [&](Eigen::Index r, Eigen::Index c) {
    Mat<double> m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nd(gen);
    return m;
  };
  const auto orthonormal_rows = [&](Eigen::Index k) {
    const Eigen::HouseholderQR<Mat<double>> qr(normal(cols, k));
    return Mat<double>(Mat<double>(qr.householderQ() * Mat<double>::Identity(cols, k)).transpose());
  };
  Mat<double> abar = Mat<double>::Zero(positions, cols);
  const int nseq = 2;
  if (f == Family::steep) {
    const Eigen::Index k = std::min<Eigen::Index>(16, cols / 4);
    Mat<double> basis = orthonormal_rows(k);
    for (Eigen::Index j = 0; j < k; ++j) basis.row(j) *= 4.0 * std::pow(0.7, double(j));
    for (int s = 0; s < nseq; ++s) {
      // One draw per statement: the order of two calls in one expression is unspecified (GCC
      // and clang differ), and the data must not depend on the compiler.
      const Mat<double> noise = normal(positions, cols);
      abar += normal(positions, k) * basis + 1e-3 * noise;
    }
  } else if (f == Family::flat_massive) {
    const Eigen::Index k = std::min<Eigen::Index>(32, cols / 4);
    Mat<double> basis = orthonormal_rows(k);
    double structured = 0;
    for (Eigen::Index j = 0; j < k; ++j) {
      const double strength = 1.0 / std::sqrt(1.0 + double(j) / 4.0);
      basis.row(j) *= strength;
      structured += strength * strength;
    }
    const double noise_sd = std::sqrt(0.15 * structured / double(cols));
    const double typical = std::sqrt(1.15 * structured / double(cols));
    Eigen::RowVectorXd massive = Eigen::RowVectorXd::Zero(cols);
    for (int c = 0; c < 4; ++c) massive(std::uniform_int_distribution<Eigen::Index>(0, cols - 1)(gen)) =
        (c % 2 ? -massive_factor : massive_factor) * typical;
    for (int s = 0; s < nseq; ++s) {
      const Mat<double> noise = normal(positions, cols);  // (drawn first, as above)
      Mat<double> x = normal(positions, k) * basis + noise_sd * noise;
      x.row(0) += massive;
      abar += x;
    }
  } else {
    Eigen::RowVectorXd scales(cols);
    for (Eigen::Index c = 0; c < cols; ++c) scales(c) = std::exp(0.5 * nd(gen));
    for (Eigen::Index c = 0; c < std::min<Eigen::Index>(8, cols); ++c) scales(c * (cols / 8)) *= 10.0;
    for (int s = 0; s < nseq; ++s) abar += normal(positions, cols) * scales.asDiagonal();
  }
  return abar / double(nseq);
}

}  // namespace q2n_test
