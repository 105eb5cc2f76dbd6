// detail::factor_product, the Kronecker transform's products: exact on integer operands for
// every tail of rows and columns and both layouts of R, nothing written outside C, and every
// entry independent of where it sits in the product.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstddef>
#include <q2n/detail/factor_product.hpp>
#include <random>
#include <vector>

#include "test_util.hpp"

namespace {

using Index = std::ptrdiff_t;

// C = L R with the operands in padded buffers: L (m × k, column stride m + 3), R as
// R(k, j) at r_stride_k·k + r_stride_j·j, C (m × n, column stride m + 2) whose padding holds
// a sentinel.
template <class T>
struct FactorCase {
  Index m, n, k;
  bool r_by_rows;  // R stored row by row (R(k, j) at k·(n + 1) + j), else column by column
  std::vector<T> l, r, c;
  Index ldl() const { return m + 3; }
  Index ldc() const { return m + 2; }
  q2n::detail::FactorOperand<T> r_operand() const {
    if (r_by_rows) return {r.data(), n + 1, 1};
    return {r.data(), 1, k + 1};
  }
  T& r_at(Index kk, Index j) {
    return r_by_rows ? r[std::size_t(kk * (n + 1) + j)] : r[std::size_t(kk + (k + 1) * j)];
  }
  T& l_at(Index i, Index kk) { return l[std::size_t(i + ldl() * kk)]; }
  T& c_at(Index i, Index j) { return c[std::size_t(i + ldc() * j)]; }
  // Whether `part` (rows × cols, column stride rows) equals C's entries from (i0, j0) on, bit
  // for bit.
  bool same_as_part(const std::vector<T>& part, Index rows, Index cols, Index i0, Index j0) {
    bool same = true;
    for (Index j = 0; j < cols; ++j)
      for (Index i = 0; i < rows; ++i)
        same = same && part[std::size_t(i + rows * j)] == c_at(i0 + i, j0 + j);
    return same;
  }
  void run() {
    q2n::detail::factor_product(c.data(), ldc(), l.data(), ldl(), r_operand(), m, n, k);
  }
};

template <class T, class Draw>
FactorCase<T> factor_case(Index m, Index n, Index k, bool r_by_rows, Draw&& draw) {
  FactorCase<T> f{m, n, k, r_by_rows, {}, {}, {}};
  f.l.assign(std::size_t(f.ldl() * k), T(-77));
  f.r.assign(std::size_t(r_by_rows ? k * (n + 1) : (k + 1) * n), T(-77));
  f.c.assign(std::size_t(f.ldc() * n), T(-99));
  for (Index kk = 0; kk < k; ++kk) {
    for (Index i = 0; i < m; ++i) f.l_at(i, kk) = draw();
    for (Index j = 0; j < n; ++j) f.r_at(kk, j) = draw();
  }
  return f;
}

}  // namespace

TEST_CASE_TEMPLATE("factor_product is exact on small integers, for every tail and layout", T,
                   Q2N_TEST_SCALARS) {
  // Entries are integers in [-8, 8] and k ≤ 64, so every product and partial sum is an integer
  // below 2^13 in magnitude: exact in float and double, and the result must equal the integer
  // product exactly. The shapes cover rows in one, two and more batches with every kind of
  // tail (1 to 2W + 1 rows for W up to 16), and, built for AVX-512 (q2n_tests_native), tall
  // panels of four batches followed by shorter ones (70 rows in float, 33 to 70 in double);
  // columns below, at and above the register block (6 or 12), with short tails that are
  // merged with the last block and split (13, 16, 25, 64 against 12; 7, 16, 25 against 6),
  // and depths 1 to 64.
  std::mt19937 gen(5);
  std::uniform_int_distribution<int> u(-8, 8);
  for (const Index m : {1, 3, 5, 8, 15, 16, 17, 31, 32, 33, 48, 70})
    for (const Index n : {1, 2, 5, 6, 7, 11, 12, 13, 16, 18, 25, 64})
      for (const Index k : {1, 2, 9, 64})
        for (const bool by_rows : {false, true}) {
          CAPTURE(m);
          CAPTURE(n);
          CAPTURE(k);
          CAPTURE(by_rows);
          auto f = factor_case<T>(m, n, k, by_rows, [&] { return T(u(gen)); });
          f.run();
          bool exact = true, padding_kept = true;
          for (Index j = 0; j < n; ++j) {
            for (Index i = 0; i < m; ++i) {
              long want = 0;
              for (Index kk = 0; kk < k; ++kk) want += long(f.l_at(i, kk)) * long(f.r_at(kk, j));
              exact = exact && f.c_at(i, j) == T(want);
            }
            for (Index i = m; i < f.ldc(); ++i)
              padding_kept = padding_kept && f.c_at(i, j) == T(-99);
          }
          CHECK(exact);
          CHECK(padding_kept);
        }
}

TEST_CASE_TEMPLATE("factor_product gives an entry the same bits wherever it sits", T,
                   Q2N_TEST_SCALARS) {
  // Gaussian operands (rounding in every step): the product of a block of rows and columns
  // taken alone, at offsets that move the block's rows across batches and its columns across
  // register blocks, equals the same entries of the whole product bit for bit.
  std::mt19937 gen(7);
  std::normal_distribution<double> nd(0, 1);
  const Index m = 70, n = 29, k = 37;
  for (const bool by_rows : {false, true}) {
    auto whole = factor_case<T>(m, n, k, by_rows, [&] { return T(nd(gen)); });
    whole.run();
    for (const Index i0 : {0, 1, 13, 33})
      for (const Index j0 : {0, 5, 12}) {
        const Index mm = m - i0 - 2, nn = n - j0 - 1;
        std::vector<T> c(std::size_t(mm * nn));
        const auto r = whole.r_operand();
        q2n::detail::factor_product(c.data(), mm, whole.l.data() + i0, whole.ldl(),
                                    {r.data + j0 * r.col_stride, r.row_stride, r.col_stride}, mm,
                                    nn, k);
        CAPTURE(i0);
        CAPTURE(j0);
        CHECK(whole.same_as_part(c, mm, nn, i0, j0));
      }
  }
}

TEST_CASE_TEMPLATE("factor_product reads R through an index as it reads R in place", T,
                   Q2N_TEST_SCALARS) {
  // R's entries scattered through a random permutation of its storage and read back through
  // the inverse map (R(k, j) = data[index[k·row_stride + j·col_stride]]): the same products,
  // so the same bits as R read in place, on Gaussian operands, for both layouts, with tails of
  // rows and columns, and from a column offset (the index advances with R).
  std::mt19937 gen(11);
  std::normal_distribution<double> nd(0, 1);
  const Index m = 37, n = 27, k = 64;
  for (const bool by_rows : {false, true}) {
    auto f = factor_case<T>(m, n, k, by_rows, [&] { return T(nd(gen)); });
    f.run();
    std::vector<int> index(f.r.size());
    for (std::size_t i = 0; i < index.size(); ++i) index[i] = int(i);
    std::shuffle(index.begin(), index.end(), gen);
    std::vector<T> scattered(f.r.size());
    for (std::size_t i = 0; i < index.size(); ++i) scattered[std::size_t(index[i])] = f.r[i];
    for (const Index j0 : {0, 7}) {
      const auto r = f.r_operand();
      const q2n::detail::FactorOperand<T> gathered{scattered.data(), r.row_stride, r.col_stride,
                                                   index.data() + j0 * r.col_stride};
      std::vector<T> c(std::size_t(m * (n - j0)));
      q2n::detail::factor_product(c.data(), m, f.l.data(), f.ldl(), gathered, m, n - j0, k);
      CAPTURE(by_rows);
      CAPTURE(j0);
      CHECK(f.same_as_part(c, m, n - j0, 0, j0));
    }
  }
}
