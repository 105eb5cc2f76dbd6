#pragma once
/// \file io/packed_grid.hpp
/// What the packed checkpoint formats (GPTQ, compressed-tensors) need of a storage, checked
/// once: a single uniform grid in zero-point form, groups of equal size, scales that are fp16
/// numbers. Each format adds its own limits (bit widths, shapes) on top.

#include "../detail/half.hpp"

#include <q2n/storage.hpp>

#include <Eigen/Core>

#include <vector>

namespace q2n::io {

/// A uniform storage as packed checkpoints describe it.
struct PackedGrid {
  int bits = 4;
  Eigen::Index group_size = -1;  ///< −1: one group per row
  bool permuted_groups = false;  ///< act-order groups: g_idx[c] ≠ c / group_size
  bool symmetric = false;        ///< every zero point is 2^(bits−1)
};

/// The packed view of `s`, for `format` (named in the messages, e.g. "GPTQ").
/// \throws std::invalid_argument naming `fn` and the reason when `s` has no packed form
template <class Scalar>
PackedGrid packed_grid(const QuantStorage<Scalar>& s, const char* fn, const char* format) {
  q2n::detail::check_storage(s, fn);
  if (!s.uniform || s.full_precision || s.binarized || s.codebook || !s.transforms.identity())
    q2n::detail::fail(fn, ": the storage (method \"", s.method, "\") is not a single uniform grid; ",
                      format, " holds uniform codes only: write this layer densely");
  const auto& u = *s.uniform;
  if (u.form != AffineForm::zero_point)
    q2n::detail::fail(fn, ": the grid is in offset form; ", format, " stores zero points");
  const Eigen::Index groups = u.scales.cols();
  if (s.cols % groups != 0) q2n::detail::fail(fn, ": ", groups, " groups do not divide cols = ", s.cols);
  PackedGrid p;
  p.bits = u.bits;
  p.group_size = groups == 1 ? -1 : s.cols / groups;
  std::vector<Eigen::Index> size(static_cast<std::size_t>(groups), 0);
  for (Eigen::Index c = 0; c < s.cols; ++c) {
    ++size[static_cast<std::size_t>(u.g_idx(c))];
    if (groups > 1 && u.g_idx(c) != c / p.group_size) p.permuted_groups = true;
  }
  for (Eigen::Index g = 0; g < groups; ++g)
    if (size[static_cast<std::size_t>(g)] != s.cols / groups)
      q2n::detail::fail(fn, ": group ", g, " has ", size[static_cast<std::size_t>(g)], " columns; ",
                        format, " needs groups of equal size");
  for (Eigen::Index g = 0; g < groups; ++g)
    for (Eigen::Index r = 0; r < s.rows; ++r) {
      const double v = static_cast<double>(u.scales(r, g));
      if (static_cast<double>(q2n::detail::half_to_float(q2n::detail::double_to_half(v))) != v)
        q2n::detail::fail(fn, ": scales(", r, ", ", g, ") = ", v,
                          " is not an fp16 number; round the storage first (q2n::round_values)");
    }
  p.symmetric = (u.zeros.array().template cast<double>() == static_cast<double>(1 << (u.bits - 1))).all();
  return p;
}

}  // namespace q2n::io
