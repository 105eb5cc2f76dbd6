#pragma once
/// \file detail/second_order.hpp
/// Steps shared by the Hessian-based quantizers (GPTQ, OWQ, PB-LLM).

#include <Eigen/Core>
#include <algorithm>
#include <numeric>
#include <type_traits>
#include <utility>
#include <vector>

namespace q2n::detail {

/// Zeroes the weights of dead columns (H_jj == 0) and sets H_jj = 1; returns their count.
/// Columns are visited in the order `order` (position k ↔ column order[k] of H); W is indexed
/// by position, so W may be the permuted working copy.
template <class T, class Order>
Eigen::Index fix_dead_columns(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& W,
                              Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& H,
                              const Order& order) {
  Eigen::Index dead = 0;
  for (Eigen::Index k = 0; k < H.cols(); ++k) {
    const auto j = order[static_cast<std::size_t>(k)];
    if (H(j, j) == T(0)) {
      H(j, j) = T(1);
      W.col(k).setZero();
      ++dead;
    }
  }
  return dead;
}

/// 0, 1, …, n − 1.
inline std::vector<int> identity_order(Eigen::Index n) {
  std::vector<int> idx(static_cast<std::size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  return idx;
}

/// Stable order of indices by key descending.
template <class Key>
std::vector<int> order_descending(const Key& key, Eigen::Index n) {
  std::vector<int> idx = identity_order(n);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return key(a) > key(b); });
  return idx;
}

/// The columns of W in the order `order`.
template <class T>
Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> permute_columns(
    const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& W, const std::vector<int>& order) {
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> out(W.rows(), W.cols());
  for (Eigen::Index k = 0; k < W.cols(); ++k) out.col(k) = W.col(order[static_cast<std::size_t>(k)]);
  return out;
}

/// H as a plain matrix of the weights' type: an rvalue Matrix<T> is moved (no copy of the
/// cols × cols matrix), anything else is converted.
template <class T, class DH>
Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic> take_hessian(DH&& H) {
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  using Plain = std::remove_cv_t<std::remove_reference_t<DH>>;
  if constexpr (std::is_same_v<Plain, Matrix> && !std::is_lvalue_reference_v<DH>)
    return std::move(H);
  else
    return H.template cast<T>();
}

}  // namespace q2n::detail
