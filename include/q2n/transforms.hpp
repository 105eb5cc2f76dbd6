#pragma once
/// \file transforms.hpp
/// Fast orthogonal transforms for quantizing in another basis (QuIP's incoherence processing,
/// QuaRot's rotations): each is an OrthogonalTransform (storage.hpp) that applies itself and
/// its transpose to columns (apply: X ← T X) and to rows (apply_right: M ← M T) without being
/// formed, and can be formed densely (dense()) for tests.
///
/// - fwht: the in-place fast Walsh–Hadamard transform of 2^k values, n·k additions.
/// - HadamardTransform: `had(x) = (H_K ⊗ H_{2^k}) x / √n` for n = K·2^k (H_{2^k} Sylvester in
///   natural order, index i = a·2^k + b), optionally after random signs `diag(ε)` (the
///   randomized Hadamard transform of QuIP#/QuaRot). Cost per vector n·k + n·K. H_K is built
///   by the Paley constructions for K ≤ 256 (K − 1 a prime ≡ 3 mod 4, or K/2 − 1 a prime ≡ 1
///   mod 4: 12, 20, 28, 36, 44, 60, 108, 140, … and, by taking K as small as possible, every
///   n = 2^k·{1, 3, 5, 7, 9, 15, 27, 35}); sizes whose odd part needs another construction
///   (52, 156 and 172: n = 11008 among the common widths) are refused unless H_K is given.
/// - KroneckerTransform: `P_out (A ⊗ B) P_in` with A (p × p), B (q × q) orthogonal and two
///   permutations (QuIP's incoherence transform); cost per vector n·(p + q). random() draws A
///   and B Haar-distributed and the permutations uniformly from a seed, with n = p·q split as
///   QuIP does. complete_conjugation() finishes T S Tᵀ for a symmetric S from T S with about
///   half the products of apply_right(). The factors' products are detail::factor_product's,
///   which computes every entry the same way wherever it sits: each column of apply()'s result
///   (each row of apply_right()'s) depends on that column (row) alone, bit for bit.
///
/// Random draws use std::mt19937_64's raw output (specified by the C++ standard), never the
/// library-defined distributions, so a seed gives the same transform with any standard library.
///
/// \code
/// auto V = q2n::HadamardTransform<float>::randomized(4096, /*seed=*/1);
/// Eigen::MatrixXf X = ...;            // 4096 rows
/// V.apply(X, false);                  // X ← V X
/// V.apply(X, true);                   // X ← Vᵀ X: back to the start, up to rounding
/// Eigen::MatrixXf W = ...;            // 4096 columns
/// V.apply_right(W, true);             // W ← W Vᵀ
/// \endcode

#include <Eigen/Core>
#include <Eigen/QR>
#include <q2n/detail/check.hpp>
#include <q2n/detail/factor_product.hpp>
#include <q2n/detail/transpose.hpp>
#include <q2n/storage.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace q2n {

namespace detail {

/// The fast Walsh–Hadamard transform of m = 2^k blocks of nb contiguous values each (block i
/// combines with block i + h entry by entry), two stages per pass: the quad (i, i + h,
/// i + 2h, i + 3h) through stages h and 2h, the same additions in the same order as one stage
/// after the other, with half the passes over x; the last stage alone when k is odd. NB > 0
/// fixes nb at compile time (1: a contiguous vector, whose loop over i the compiler
/// vectorizes).
template <Eigen::Index NB = 0, class T>
void fwht_blocks(T* x, Eigen::Index nb, Eigen::Index m) {
  const Eigen::Index s = NB > 0 ? NB : nb;
  Eigen::Index h = 1;
  for (; 4 * h <= m; h *= 4)
    for (Eigen::Index a = 0; a < m; a += 4 * h)
      for (Eigen::Index i = a; i < a + h; ++i) {
        T* x0 = x + i * s;
        T* x1 = x0 + h * s;
        T* x2 = x1 + h * s;
        T* x3 = x2 + h * s;
        for (Eigen::Index r = 0; r < s; ++r) {
          const T s01 = x0[r] + x1[r], d01 = x0[r] - x1[r];
          const T s23 = x2[r] + x3[r], d23 = x2[r] - x3[r];
          x0[r] = s01 + s23;
          x1[r] = d01 + d23;
          x2[r] = s01 - s23;
          x3[r] = d01 - d23;
        }
      }
  if (h < m)
    for (Eigen::Index i = 0; i < h; ++i) {
      T* u = x + i * s;
      T* v = x + (i + h) * s;
      for (Eigen::Index r = 0; r < s; ++r) {
        const T sum = u[r] + v[r], diff = u[r] - v[r];
        u[r] = sum;
        v[r] = diff;
      }
    }
}

/// Rows per block of a row-wise transform of size n: buffers of about 2^20 entries (4 MiB of
/// float), which fit in the last-level cache of both threads, a multiple of 16 from 16 to 256
/// rows. (One Kronecker product on a 4096² float matrix: 0.033 s with 16-row blocks, 0.021 s
/// with 256; 14336²: 0.75 s with 16, 0.58-0.63 s with 64 or 73.)
inline Eigen::Index row_block_height(Eigen::Index n) {
  return std::clamp<Eigen::Index>((Eigen::Index{1} << 20) / n / 16 * 16, 16, 256);
}

/// f(r0, nb, Y, Z) for each block of rb rows of a matrix with `rows` rows (the last block first
/// if last_first), Y (nb × ycols) and Z (nb × zcols) buffers of the thread that takes the block,
/// reused for all its blocks (no larger than needed: an unused 4 MiB allocation per thread and
/// call cost 1 ms of 7 in a Hadamard product on 4096²): the row-wise action of a transform, a
/// block worked on in the cache. Blocks are fixed by the shape and taken by whichever thread is
/// free; a team is opened even for one block, so Eigen multiplies serially inside it, as on
/// every block: the result does not depend on the thread count.
template <class Scalar, class F>
void for_each_row_block(Eigen::Index rows, Eigen::Index rb, bool last_first, Eigen::Index ycols,
                        Eigen::Index zcols, F&& f) {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  const Eigen::Index blocks = (rows + rb - 1) / rb;
#if defined(_OPENMP)
#pragma omp parallel if (!omp_in_parallel())
#endif
  {
    Matrix ystore(std::min(rb, rows), ycols), zstore(std::min(rb, rows), zcols);
#if defined(_OPENMP)
#pragma omp for schedule(dynamic, 1)
#endif
    for (Eigen::Index k = 0; k < blocks; ++k) {
      const Eigen::Index r0 = (last_first ? blocks - 1 - k : k) * rb, nb = std::min(rb, rows - r0);
      Eigen::Map<Matrix> Y(ystore.data(), nb, ycols), Z(zstore.data(), nb, zcols);
      f(r0, nb, Y, Z);
    }
  }
}

}  // namespace detail

/// In-place fast Walsh–Hadamard transform (unnormalized, Sylvester order) of n = 2^k values
/// spaced `stride` apart: x ← H_n x.
template <class T>
void fwht(T* x, Eigen::Index n, Eigen::Index stride = 1) {
  if (stride == 1) {
    detail::fwht_blocks<1>(x, 1, n);
    return;
  }
  for (Eigen::Index h = 1; h < n; h *= 2)
    for (Eigen::Index a = 0; a < n; a += 2 * h)
      for (Eigen::Index i = a; i < a + h; ++i) {
        const T u = x[i * stride], v = x[(i + h) * stride];
        x[i * stride] = u + v;
        x[(i + h) * stride] = u - v;
      }
}

namespace detail {

inline bool is_prime(long long q) {
  if (q < 2) return false;
  for (long long d = 2; d * d <= q; ++d)
    if (q % d == 0) return false;
  return true;
}

/// Legendre symbol of a modulo the odd prime q: 0, 1 or −1.
inline int legendre(long long a, long long q) {
  a = ((a % q) + q) % q;
  if (a == 0) return 0;
  long long r = 1, b = a, e = (q - 1) / 2;
  while (e > 0) {
    if (e & 1) r = r * b % q;
    b = b * b % q;
    e >>= 1;
  }
  return r == 1 ? 1 : -1;
}

/// A Hadamard matrix of order K (±1 entries, H Hᵀ = K I) for K = 1, 2, or a Paley order;
/// empty when K has none of these constructions.
inline Eigen::MatrixXd paley_hadamard(long long K) {
  using M = Eigen::MatrixXd;
  if (K == 1) return M::Ones(1, 1);
  if (K == 2) return (M(2, 2) << 1, 1, 1, -1).finished();
  if (K % 4 != 0) return M();
  const long long q1 = K - 1;
  if (is_prime(q1) && q1 % 4 == 3) {
    // Paley I: H = I + S, S = [0 1ᵀ; −1 Q], Q_ij = χ(j − i) (antisymmetric for q ≡ 3 mod 4).
    M H = M::Identity(K, K);
    for (long long i = 1; i < K; ++i) H(0, i) = 1, H(i, 0) = -1;
    for (long long i = 0; i < q1; ++i)
      for (long long j = 0; j < q1; ++j) H(i + 1, j + 1) += legendre(j - i, q1);
    return H;
  }
  const long long q2 = K / 2 - 1;
  if (is_prime(q2) && q2 % 4 == 1) {
    // Paley II: C = [0 1ᵀ; 1 Q] (symmetric conference matrix for q ≡ 1 mod 4),
    // H = C ⊗ [1 1; 1 −1] + I ⊗ [1 −1; −1 −1].
    const long long c = q2 + 1;
    M C = M::Zero(c, c);
    for (long long i = 1; i < c; ++i) C(0, i) = C(i, 0) = 1;
    for (long long i = 0; i < q2; ++i)
      for (long long j = 0; j < q2; ++j) C(i + 1, j + 1) = legendre(j - i, q2);
    M H(K, K);
    for (long long i = 0; i < c; ++i)
      for (long long j = 0; j < c; ++j) {
        const double e = C(i, j), d = i == j ? 1.0 : 0.0;
        H(2 * i, 2 * j) = e + d;
        H(2 * i, 2 * j + 1) = e - d;
        H(2 * i + 1, 2 * j) = e - d;
        H(2 * i + 1, 2 * j + 1) = -e - d;
      }
    return H;
  }
  return M();
}

/// Uniform double in [0, 1) from 53 raw bits.
inline double uniform01(std::mt19937_64& g) { return static_cast<double>(g() >> 11) * 0x1.0p-53; }

/// Standard normal by Box–Muller from raw bits.
inline double standard_normal(std::mt19937_64& g) {
  const double u1 = 1.0 - uniform01(g), u2 = uniform01(g);  // u1 in (0, 1]
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

/// Uniform permutation of 0..n−1 (Fisher–Yates from raw bits).
inline std::vector<int> random_permutation(Eigen::Index n, std::mt19937_64& g) {
  std::vector<int> p(static_cast<std::size_t>(n));
  for (Eigen::Index i = 0; i < n; ++i) p[static_cast<std::size_t>(i)] = static_cast<int>(i);
  for (Eigen::Index i = n - 1; i > 0; --i) {
    const auto j = static_cast<Eigen::Index>(uniform01(g) * static_cast<double>(i + 1));
    std::swap(p[static_cast<std::size_t>(i)], p[static_cast<std::size_t>(std::min(j, i))]);
  }
  return p;
}

/// Haar-distributed orthogonal n × n: QR of a Gaussian matrix, columns signed by diag(R).
inline Eigen::MatrixXd haar_orthogonal(Eigen::Index n, std::mt19937_64& g) {
  Eigen::MatrixXd G(n, n);
  for (Eigen::Index i = 0; i < G.size(); ++i) G.data()[i] = standard_normal(g);
  Eigen::HouseholderQR<Eigen::MatrixXd> qr(G);
  Eigen::MatrixXd Q = qr.householderQ();
  for (Eigen::Index j = 0; j < n; ++j)
    if (qr.matrixQR()(j, j) < 0) Q.col(j) = -Q.col(j);
  return Q;
}

template <class Scalar>
void check_transform_rows(const OrthogonalTransform<Scalar>& t, Eigen::Index rows, const char* fn) {
  if (rows != t.size())
    fail(fn, ": X has ", rows, " rows but the transform has size ", t.size(),
         "; pass a matrix with size() rows");
}

template <class Scalar>
void check_transform_cols(const OrthogonalTransform<Scalar>& t, Eigen::Index cols, const char* fn) {
  if (cols != t.size())
    fail(fn, ": M has ", cols, " columns but the transform has size ", t.size(),
         "; pass a matrix with size() columns");
}

}  // namespace detail

/// The orthogonal Hadamard transform of size n = K·2^k, optionally after random signs.
template <class Scalar>
class HadamardTransform final : public OrthogonalTransform<Scalar> {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  /// The smallest K ≤ 256 (with n / K a power of two) that has a built-in construction, or 0.
  static Eigen::Index base_order(Eigen::Index n) {
    if (n <= 0) return 0;
    Eigen::Index odd = n;
    while (odd % 2 == 0) odd /= 2;
    for (Eigen::Index K = odd; K <= 256 && n % K == 0; K *= 2)
      if (detail::paley_hadamard(K).size() > 0) return K;
    return 0;
  }

  /// had of size n; `signs` (n entries of ±1, or empty) are applied first: T = had · diag(ε).
  /// \throws std::invalid_argument when n has no built-in construction (see the file comment)
  explicit HadamardTransform(Eigen::Index n, std::vector<std::int8_t> signs = {})
      : HadamardTransform(n, base_matrix(n), std::move(signs)) {}

  /// had of size n with a given Hadamard matrix H_K (±1 entries, H_K H_Kᵀ = K I, n / K a
  /// power of two), for sizes whose K has no built-in construction (52, 156, 172).
  HadamardTransform(Eigen::Index n, const Eigen::MatrixXd& hadK, std::vector<std::int8_t> signs = {})
      : n_(n), K_(hadK.rows()), signs_(std::move(signs)) {
    const char* fn = "q2n::HadamardTransform";
    if (n <= 0) detail::fail(fn, ": n = ", n, " must be positive");
    if (K_ <= 0 || hadK.cols() != K_ || n % K_ != 0 || !power_of_two(n / K_))
      detail::fail(fn, ": H_K is ", hadK.rows(), " x ", hadK.cols(), "; pass a square K x K matrix with n / K a power of two (n = ", n, ")");
    if (!((hadK.array() == 1.0) || (hadK.array() == -1.0)).all() ||
        (hadK * hadK.transpose() - double(K_) * Eigen::MatrixXd::Identity(K_, K_)).cwiseAbs().maxCoeff() != 0)
      detail::fail(fn, ": H_K is not a Hadamard matrix (entries ±1, H_K H_Kᵀ = K I)");
    if (!signs_.empty()) {
      if (static_cast<Eigen::Index>(signs_.size()) != n)
        detail::fail(fn, ": signs has ", signs_.size(), " entries; pass n = ", n, " or none");
      for (auto s : signs_)
        if (s != 1 && s != -1) detail::fail(fn, ": signs must be +1 or -1");
      sign_values_.assign(signs_.begin(), signs_.end());
    }
    hadK_ = hadK.cast<Scalar>();
    scale_ = static_cast<Scalar>(1.0 / std::sqrt(static_cast<double>(n)));
  }

  /// The randomized Hadamard transform had · diag(ε), ε uniform ±1 from `seed`.
  static HadamardTransform randomized(Eigen::Index n, std::uint64_t seed) {
    std::mt19937_64 g(seed);
    std::vector<std::int8_t> s(static_cast<std::size_t>(std::max<Eigen::Index>(n, 0)));
    for (auto& e : s) e = (g() >> 63) ? 1 : -1;
    return HadamardTransform(n, std::move(s));
  }

  Eigen::Index size() const override { return n_; }
  Eigen::Index base() const { return K_; }
  /// The K × K base matrix (±1 entries): with size() and signs() it rebuilds this transform.
  const Matrix& table() const { return hadK_; }
  const std::vector<std::int8_t>& signs() const { return signs_; }

  void apply(Eigen::Ref<Matrix> X, bool transpose) const override {
    detail::check_transform_rows(*this, X.rows(), "q2n::HadamardTransform::apply");
    const Eigen::Index m = n_ / K_, cols = X.cols();
    // Columns are independent: shared among the threads, each computed the same way on any
    // number of them.
#if defined(_OPENMP)
#pragma omp parallel if (cols > 1 && !omp_in_parallel())
#endif
    {
      Matrix tmp(K_, m);
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
      for (Eigen::Index c = 0; c < cols; ++c) {
        Scalar* x = X.col(c).data();
        if (!transpose) sign(x);
        // x viewed as K × m row-major: FWHT every row, then H_K (or H_Kᵀ) from the left.
        for (Eigen::Index a = 0; a < K_; ++a) fwht(x + a * m, m);
        if (K_ > 1) {
          Eigen::Map<Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> V(x, K_, m);
          if (transpose) tmp.noalias() = hadK_.transpose() * V;
          else tmp.noalias() = hadK_ * V;
          V = tmp;
        }
        for (Eigen::Index i = 0; i < n_; ++i) x[i] *= scale_;
        if (transpose) sign(x);
      }
    }
  }

  void apply_right(Eigen::Ref<Matrix> M, bool transpose) const override {
    detail::check_transform_cols(*this, M.cols(), "q2n::HadamardTransform::apply_right");
    // Row r becomes r T = (Tᵀ rᵀ)ᵀ, or r Tᵀ = (T rᵀ)ᵀ. Blocks of rows are copied into a
    // contiguous buffer, where every butterfly combines two whole columns of the block and H_K
    // is one product. The blocks are fixed by the shape alone and independent, so the result
    // does not depend on the thread count.
    const bool rows_get_t = transpose;
    const Eigen::Index m = n_ / K_, rows = M.rows();
    // Block height: the copies in and out read and write each column in runs of rb entries,
    // and short runs waste the memory system (the whole product on a 4096² float matrix:
    // 0.075 s with 8-row blocks, 0.021 s with 32, 0.012 s with 256; at 14336², 0.84 s with
    // 8, 0.29 s with 64), more than a buffer beyond the L2 cache costs. With K > 1 the height
    // also sets the row count of the H_K product, whose rounding Eigen's kernels vary with
    // it: there it stays what it was (a buffer of about 128 KiB) wherever that gave 64 rows or
    // more, i.e. for n ≤ 2048, which keeps the bits of the rotations and QuIP results
    // recorded on the shipped model, and is 64 above.
    const Eigen::Index rb =
        K_ == 1 ? detail::row_block_height(n_)
                : std::clamp<Eigen::Index>(((Eigen::Index{1} << 17) / n_) / 8 * 8, 64, 256);
    // The block in buf, H_K's product in tmp (K > 1): buffers per thread, allocated once.
    detail::for_each_row_block<Scalar>(
        rows, rb, /*last_first=*/false, n_, K_ > 1 ? n_ : 0,
        [&](Eigen::Index r0, Eigen::Index nb, Eigen::Map<Matrix>& buf, Eigen::Map<Matrix>& tmp) {
          buf = M.middleRows(r0, nb);
          if (rows_get_t) sign_columns(buf);
          // fwht along the columns of each nb × m part: columns i and i + h combine.
          for (Eigen::Index a = 0; a < K_; ++a) detail::fwht_blocks(buf.data() + a * m * nb, nb, m);
          if (K_ > 1) {
            // Column a·m + b of the block holds entry (a, b) of every row's K × m view, so the
            // block is the (nb·m) × K matrix whose column a is that view's row a.
            Eigen::Map<Matrix> V(buf.data(), nb * m, K_), P(tmp.data(), nb * m, K_);
            if (rows_get_t)
              P.noalias() = V * hadK_.transpose();
            else
              P.noalias() = V * hadK_;
            V = P;
          }
          buf *= scale_;
          if (!rows_get_t) sign_columns(buf);
          M.middleRows(r0, nb) = buf;
        });
  }

  /// The n × n matrix.
  Matrix dense() const {
    Matrix I = Matrix::Identity(n_, n_);
    apply(I, false);
    return I;
  }

 private:
  void sign_columns(Eigen::Map<Matrix>& B) const {
    if (!signs_.empty())
      for (Eigen::Index i = 0; i < n_; ++i)
        if (signs_[static_cast<std::size_t>(i)] < 0) B.col(i) = -B.col(i);
  }
  static bool power_of_two(Eigen::Index v) { return v > 0 && (v & (v - 1)) == 0; }
  static Eigen::MatrixXd base_matrix(Eigen::Index n) {
    const Eigen::Index K = base_order(n);
    if (K == 0) {
      Eigen::Index odd = n;
      while (odd > 0 && odd % 2 == 0) odd /= 2;
      detail::fail("q2n::HadamardTransform: no built-in Hadamard matrix for n = ", n,
                   " (odd part ", odd, "; the built-in Paley constructions reach K <= 256 with "
                   "K - 1 a prime = 3 mod 4 or K/2 - 1 a prime = 1 mod 4); pass H_K for a K that "
                   "divides n with n / K a power of two (e.g. from N. J. A. Sloane's library of "
                   "Hadamard matrices)");
    }
    return detail::paley_hadamard(K);
  }
  // x ← diag(ε) x, as products with ±1 (exact, and without a branch per entry: random signs
  // defeat branch prediction).
  void sign(Scalar* x) const {
    if (!signs_.empty())
      for (Eigen::Index i = 0; i < n_; ++i) x[i] *= sign_values_[static_cast<std::size_t>(i)];
  }

  Eigen::Index n_, K_;
  std::vector<std::int8_t> signs_;
  std::vector<Scalar> sign_values_;  // signs_ as ±1 of Scalar
  Matrix hadK_;
  Scalar scale_;
};

/// `P_out (A ⊗ B) P_in`: A (p × p) and B (q × q) orthogonal, n = p·q; `(P x)_i = x[perm[i]]`.
template <class Scalar>
class KroneckerTransform final : public OrthogonalTransform<Scalar> {
 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  /// \param perm_in, perm_out permutations of 0..n−1, or empty (identity)
  /// \throws std::invalid_argument unless A and B are orthogonal (DenseTransform's test)
  KroneckerTransform(Matrix A, Matrix B, std::vector<int> perm_in = {}, std::vector<int> perm_out = {})
      : a_(std::move(A)), b_(std::move(B)), in_(std::move(perm_in)), out_(std::move(perm_out)) {
    DenseTransform<Scalar> check_a(a_), check_b(b_);  // orthogonality, finiteness
    bt_ = b_.transpose();
    n_ = a_.rows() * b_.rows();
    check_perm(in_, "perm_in");
    check_perm(out_, "perm_out");
    in_inv_ = inverse(in_);
    out_inv_ = inverse(out_);
  }

  /// The split n = p·q QuIP uses: n's prime factors ascending with multiplicity, p the
  /// product of those at even positions, q of those at odd positions (4096 → 64 · 64,
  /// 5120 → 160 · 32, 14336 → 64 · 224).
  static std::pair<Eigen::Index, Eigen::Index> split(Eigen::Index n) {
    if (n <= 0) detail::fail("q2n::KroneckerTransform::split: n = ", n, " must be positive");
    std::vector<Eigen::Index> f;
    Eigen::Index r = n;
    for (Eigen::Index d = 2; d * d <= r; ++d)
      while (r % d == 0) f.push_back(d), r /= d;
    if (r > 1) f.push_back(r);
    Eigen::Index p = 1, q = 1;
    for (std::size_t i = 0; i < f.size(); ++i) (i % 2 == 0 ? p : q) *= f[i];
    return {p, q};
  }

  /// Haar-random A and B (split(n)) and uniform permutations, all from `seed`.
  static KroneckerTransform random(Eigen::Index n, std::uint64_t seed) {
    const auto [p, q] = split(n);
    std::mt19937_64 g(seed);
    Matrix A = detail::haar_orthogonal(p, g).cast<Scalar>();
    Matrix B = detail::haar_orthogonal(q, g).cast<Scalar>();
    std::vector<int> pin = detail::random_permutation(n, g), pout = detail::random_permutation(n, g);
    return KroneckerTransform(std::move(A), std::move(B), std::move(pin), std::move(pout));
  }

  Eigen::Index size() const override { return n_; }
  const Matrix& left() const { return a_; }
  const Matrix& right() const { return b_; }
  const std::vector<int>& perm_in() const { return in_; }
  const std::vector<int>& perm_out() const { return out_; }

  void apply(Eigen::Ref<Matrix> X, bool transpose) const override {
    detail::check_transform_rows(*this, X.rows(), "q2n::KroneckerTransform::apply");
    // Column x as p × q row-major Y is, in memory, the q × p column-major C = Yᵀ, and
    // (A ⊗ B) x is A Y Bᵀ = (B C Aᵀ)ᵀ (Tᵀ x: Bᵀ C A): C is read through the input permutation
    // (below), both products run in the cache, and the result is permuted back. Every entry of
    // a product is computed the same way wherever it sits (detail::factor_product) and the
    // columns are shared among the threads, so a column's result depends on that column alone:
    // not on the other columns or the thread count.
    const Eigen::Index p = a_.rows(), q = b_.rows(), cols = X.cols();
    // Entry t of C is entry gather[t] of the column (P_in x, or P_outᵀ x), and entry i of the
    // result comes from entry from_buffer[i] of the last product (P_out y, or P_inᵀ y).
    // C's entries are gathered inside the product when the column fits in the L1 cache with
    // room to spare (U W on 4096², 2048 columns per thread in the cache: 11.2 -> 9.3 ms against
    // permuting the column into a buffer first); a longer column is permuted into the buffer
    // first, in its own order (at n = 14336 gathering from the L2 cache is 15 % slower).
    const std::vector<int>& gather = transpose ? out_inv_ : in_;
    const bool gathered = !gather.empty() && n_ * sizeof(Scalar) <= 16384;
    const std::vector<int>& to_buffer = transpose ? out_ : in_inv_;
    const std::vector<int>& from_buffer = transpose ? in_inv_ : out_;
    const Scalar* b_side = (transpose ? bt_ : b_).data();
    const detail::FactorOperand<Scalar> a_side = operand(a_, !transpose);
#if defined(_OPENMP)
#pragma omp parallel if (cols > 1 && !omp_in_parallel())
#endif
    {
      Eigen::Matrix<Scalar, Eigen::Dynamic, 1> buffers(2 * n_);
      Scalar *c = buffers.data(), *z = c + n_;
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
      for (Eigen::Index k = 0; k < cols; ++k) {
        Scalar* x = X.col(k).data();
        if (!gathered) in_order(to_buffer, [&](Eigen::Index j, Eigen::Index to) { c[to] = x[j]; });
        const detail::FactorOperand<Scalar> cv{gathered ? x : c, 1, q,
                                               gathered ? gather.data() : nullptr};
        detail::factor_product(z, q, b_side, q, cv, q, p, q);  // B C (Bᵀ C)
        // Then Aᵀ (A): straight into the column when no permutation follows.
        detail::factor_product(from_buffer.empty() ? x : c, q, z, q, a_side, q, p, p);
        if (!from_buffer.empty())
          in_order(from_buffer, [&](Eigen::Index i, Eigen::Index from) { x[i] = c[from]; });
      }
    }
  }

  void apply_right(Eigen::Ref<Matrix> M, bool transpose) const override {
    detail::check_transform_cols(*this, M.cols(), "q2n::KroneckerTransform::apply_right");
    // Row r becomes r T = (Tᵀ rᵀ)ᵀ, or r Tᵀ = (T rᵀ)ᵀ. A block of rows is copied, its columns
    // permuted, into a buffer Y, where column a·q + b holds entry (a, b) of every row's p × q
    // view (M's columns read in order: runs in a random order defeat the prefetcher). B acts on
    // each of the p column blocks of width q, into Z with entry (a, b) in column b·p + a, and A
    // on each of Z's q column blocks of width p: Z is by b so that the columns A combines are nb
    // entries apart (by a they would be q·nb apart, a multiple of the span of the L1 cache's
    // sets, and evict one another: A's products 5.8-6.3 -> 4.9-5.5 ms per thread at 4096²,
    // float, two threads). A's products go straight into M when no permutation follows (its q
    // column blocks are M's columns b, b + q, …), else through the start of Y into M's permuted
    // columns (blocks and buffers: detail::for_each_row_block). As in apply, a row's result
    // depends on that row alone.
    const bool rows_get_t = transpose;
    const Eigen::Index p = a_.rows(), q = b_.rows(), rows = M.rows(), ld = M.outerStride();
    // Column j of M goes to column to_buffer[j] of Y; column t of the result goes to M's column
    // dest[t] (as in apply, with the roles of T and Tᵀ exchanged).
    const std::vector<int>& to_buffer = rows_get_t ? in_inv_ : out_;
    const std::vector<int>& dest = rows_get_t ? out_inv_ : in_;
    detail::for_each_row_block<Scalar>(
        rows, block_height(), /*last_first=*/false, n_, n_,
        [&](Eigen::Index r0, Eigen::Index nb, Eigen::Map<Matrix>& Y, Eigen::Map<Matrix>& Z) {
          Scalar* m = M.data() + r0;
          in_order(to_buffer, [&](Eigen::Index j, Eigen::Index to) {
            std::copy(m + j * ld, m + j * ld + nb, Y.col(to).data());
          });
          for (Eigen::Index a = 0; a < p; ++a)
            detail::factor_product(Z.data() + a * nb, p * nb, Y.col(a * q).data(), nb,
                                   operand(b_, rows_get_t), nb, q, q);
          for (Eigen::Index b = 0; b < q; ++b) {
            const Scalar* zb = Z.col(b * p).data();
            if (dest.empty()) {
              detail::factor_product(m + b * ld, q * ld, zb, nb, operand(a_, rows_get_t), nb, p, p);
              continue;
            }
            detail::factor_product(Y.data(), nb, zb, nb, operand(a_, rows_get_t), nb, p, p);
            for (Eigen::Index a = 0; a < p; ++a)
              std::copy(Y.col(a).data(), Y.col(a).data() + nb, m + at(dest, a * q + b) * ld);
          }
        });
  }

  /// For G = T S with S symmetric (T S from apply()): G ← G Tᵀ = T S Tᵀ, exactly symmetric.
  /// Without an output permutation, row r of G is output r of A ⊗ B, and the lower triangle
  /// needs only the columns up to r: a block of rows gets A and B on the column blocks that
  /// reach its last row (about half of apply_right's products), and the lower triangle is
  /// then copied onto the upper one. With an output permutation: apply_right, then the mean
  /// of the two triangles.
  void complete_conjugation(Matrix& G) const {
    const char* fn = "q2n::KroneckerTransform::complete_conjugation";
    if (G.rows() != n_ || G.cols() != n_)
      detail::fail(fn, ": G is ", G.rows(), " x ", G.cols(), "; pass the ", n_, " x ", n_,
                   " product T S");
    if (!out_.empty()) {
      apply_right(G, true);
      detail::symmetrize_in_place(G);
      return;
    }
    const Eigen::Index p = a_.rows(), q = b_.rows();
    // Row r becomes (A ⊗ B) P_in r as in apply_right, A first, since its outputs are the column
    // blocks the restriction cuts: the p columns of each b copied into a small buffer S just
    // before A's product (the first na outputs) into Z (by a), then B on the q columns of each
    // a < na of Z, written straight into G; the heaviest blocks (the last) first. (Against
    // copying the whole block into a buffer in G's column order and back: float, two threads,
    // 4096² 13.0 -> 11.1 ms, 14336² 0.25 -> 0.23 s.)
    const Eigen::Index ld = G.outerStride();
    detail::for_each_row_block<Scalar>(
        n_, block_height(), /*last_first=*/true, p, n_,
        [&](Eigen::Index r0, Eigen::Index nb, Eigen::Map<Matrix>& S, Eigen::Map<Matrix>& Z) {
          const Eigen::Index na = (r0 + nb - 1) / q + 1;  // column blocks up to the last row
          Scalar* g = G.data() + r0;
          for (Eigen::Index b = 0; b < q; ++b) {
            for (Eigen::Index a = 0; a < p; ++a) {
              const Scalar* from = g + at(in_, a * q + b) * ld;
              std::copy(from, from + nb, S.col(a).data());
            }
            detail::factor_product(Z.data() + b * nb, q * nb, S.data(), nb, operand(a_, true), nb,
                                   na, p);
          }
          for (Eigen::Index a = 0; a < na; ++a)
            detail::factor_product(g + a * q * ld, ld, Z.data() + a * q * nb, nb, operand(b_, true),
                                   nb, q, q);
        });
    detail::copy_lower_to_upper(G);
  }

  /// The n × n matrix.
  Matrix dense() const {
    Matrix I = Matrix::Identity(n_, n_);
    apply(I, false);
    return I;
  }

 private:
  // f(k, map[k]) for k = 0..n−1 in order (an empty map the identity). The permuted copies
  // between a matrix in memory and a buffer walk the matrix's side in order with k, the map
  // giving the buffer's index: the items are short runs (a column of a 64-row block at
  // n = 14336, an entry of a column), and runs in a random order defeat the prefetcher.
  // (complete_conjugation on 14336², float, when it copied whole row blocks: loading them took
  // 0.080-0.089 s per thread in the permutation's order, 0.063-0.070 s in the matrix's; it now
  // loads a few columns at a time in the permutation's order, which costs less than the whole
  // block's copy did. apply on 4096²: loading 0.0080 -> 0.0056 s, storing 0.0032 -> 0.0028 s,
  // of 0.025 s.)
  template <class F>
  void in_order(const std::vector<int>& map, F&& f) const {
    if (map.empty())
      for (Eigen::Index k = 0; k < n_; ++k) f(k, k);
    else
      for (Eigen::Index k = 0; k < n_; ++k) f(k, map[static_cast<std::size_t>(k)]);
  }
  static std::vector<int> inverse(const std::vector<int>& perm) {
    std::vector<int> inv(perm.size());
    for (std::size_t i = 0; i < perm.size(); ++i)
      inv[static_cast<std::size_t>(perm[i])] = static_cast<int>(i);
    return inv;
  }
  void check_perm(const std::vector<int>& p, const char* name) const {
    if (p.empty()) return;
    std::vector<char> seen(static_cast<std::size_t>(n_), 0);
    bool ok = static_cast<Eigen::Index>(p.size()) == n_;
    for (int v : p) {
      if (!ok || v < 0 || v >= n_ || seen[static_cast<std::size_t>(v)]) {
        ok = false;
        break;
      }
      seen[static_cast<std::size_t>(v)] = 1;
    }
    if (!ok) detail::fail("q2n::KroneckerTransform: ", name, " is not a permutation of 0..", n_ - 1);
  }
  // map[t], or t for an empty map (the identity).
  static Eigen::Index at(const std::vector<int>& map, Eigen::Index t) {
    return map.empty() ? t : map[static_cast<std::size_t>(t)];
  }
  // Rows per block of apply_right and complete_conjugation: detail::row_block_height, at most
  // 128 (apply_right on 4096 rows, float, two threads: n = 2048 0.013 s with 256-row blocks,
  // 0.007 with 128; n = 4096 0.019 and 0.015; at 8192 and 14336, 128 and 64 rows were already
  // the best of 64-256).
  Eigen::Index block_height() const {
    return std::min<Eigen::Index>(detail::row_block_height(n_), 128);
  }
  // F or Fᵀ (F = a_ or b_) as the right operand of detail::factor_product.
  static detail::FactorOperand<Scalar> operand(const Matrix& f, bool transposed) {
    if (transposed) return {f.data(), f.rows(), 1};  // Fᵀ(k, j) = F(j, k)
    return {f.data(), 1, f.rows()};
  }
  Matrix a_, b_, bt_;                   // bt_ = b_ᵀ, the left operand of Bᵀ's products
  std::vector<int> in_, out_, in_inv_, out_inv_;  // the inverses: for copies in order, gathers
  Eigen::Index n_ = 0;
};

}  // namespace q2n
