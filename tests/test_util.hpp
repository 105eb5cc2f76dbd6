#pragma once
// Shared helpers for the test suite: deterministic data that looks like LLM activations.
#include <Eigen/Core>

#include <atomic>
#include <cstdint>
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

}  // namespace q2n_test
