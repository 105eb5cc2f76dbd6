#pragma once
/// \file wire.hpp
/// A LinearResult as bytes and back, for the processes of an MPI run (dist.hpp): the rank that
/// quantizes a linear sends its whole result (dense Q, storage, diagnostics, errors) and every
/// other rank rebuilds it exactly. Both ends are the same program on the same kind of machine,
/// so values are copied as they lie in memory; the format is not a file format.
///
/// Transforms travel as what they are: a Hadamard transform as its size, base table and signs,
/// a Kronecker one as its factors and permutations, a dense one as its matrix; any other
/// OrthogonalTransform as its dense matrix (formed by applying it to the identity).

#include "layer_quant.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace llama {

/// Bytes written by put() and read back, in the same order, by get().
class Wire {
 public:
  Wire() = default;
  explicit Wire(std::vector<char> bytes) : bytes_(std::move(bytes)) {}
  const std::vector<char>& bytes() const { return bytes_; }
  std::vector<char>& bytes() { return bytes_; }
  bool consumed() const { return pos_ == bytes_.size(); }

  template <class T>
  void put(const T& v) {
    static_assert(std::is_trivially_copyable_v<T>, "llama::Wire::put: plain values only");
    put_raw(&v, sizeof(T));
  }
  template <class T>
  T get() {
    static_assert(std::is_trivially_copyable_v<T>, "llama::Wire::get: plain values only");
    T v;
    get_raw(&v, sizeof(T));
    return v;
  }

  void put(const std::string& s) {
    put<std::uint64_t>(s.size());
    put_raw(s.data(), s.size());
  }
  template <class T>
  void put(const std::vector<T>& v) {
    put<std::uint64_t>(v.size());
    put_raw(v.data(), v.size() * sizeof(T));
  }
  template <class T, int R, int C>
  void put(const Eigen::Matrix<T, R, C>& m) {
    put<std::int64_t>(m.rows());
    put<std::int64_t>(m.cols());
    put_raw(m.data(), static_cast<std::size_t>(m.size()) * sizeof(T));
  }

  std::string get_string() {
    std::string s(get_size(1), '\0');
    get_raw(s.data(), s.size());
    return s;
  }
  template <class T>
  std::vector<T> get_vector() {
    std::vector<T> v(get_size(sizeof(T)));
    get_raw(v.data(), v.size() * sizeof(T));
    return v;
  }
  template <class M>
  M get_matrix() {
    const auto rows = get<std::int64_t>(), cols = get<std::int64_t>();
    if (rows < 0 || cols < 0 ||
        (rows > 0 && static_cast<std::uint64_t>(cols) > left() / sizeof(typename M::Scalar) / static_cast<std::uint64_t>(rows)))
      corrupt();
    M m(rows, cols);
    get_raw(m.data(), static_cast<std::size_t>(m.size()) * sizeof(typename M::Scalar));
    return m;
  }

 private:
  [[noreturn]] static void corrupt() {
    throw std::runtime_error("llama::Wire: the bytes end early or are not a LinearResult");
  }
  std::size_t left() const { return bytes_.size() - pos_; }
  std::size_t get_size(std::size_t element) {
    const auto n = get<std::uint64_t>();
    if (n > left() / element) corrupt();
    return static_cast<std::size_t>(n);
  }
  void put_raw(const void* p, std::size_t n) {
    const char* c = static_cast<const char*>(p);
    bytes_.insert(bytes_.end(), c, c + n);
  }
  void get_raw(void* p, std::size_t n) {
    if (n > left()) corrupt();
    if (n) std::memcpy(p, bytes_.data() + pos_, n);
    pos_ += n;
  }

  std::vector<char> bytes_;
  std::size_t pos_ = 0;
};

/// Appends `r` to `w`.
void put(Wire& w, const LinearResult& r);

/// The next LinearResult in `w`; throws std::runtime_error when the bytes are not one.
LinearResult get_linear_result(Wire& w);

}  // namespace llama
