#pragma once
/// \file spectrum.hpp
/// The cut rule: where the spectrum of `ĀᵀĀ` stops carrying energy.
///
/// Given eigenvalues sorted descending `s0 ≥ s1 ≥ … ≥ s_{d−1}` (negatives from rounding are
/// clamped to 0), a rule picks the kept count r: eigenvectors 0…r−1 span the directions the
/// calibration activations occupy, eigenvectors r…d−1 the approximate null space.
///
/// Two rules, side by side:
///
/// | rule  | kept count r                                                       |
/// |-------|--------------------------------------------------------------------|
/// | paper | smallest r ≥ 2 with `Σ_{j≥r+1} s_j ≤ t · Σ_{1≤j≤r−1} s_j`          |
/// | plain | smallest r ≥ 1 with `Σ_{j≥r} s_j ≤ t · Σ_{j<r} s_j`                |
///
/// `paper` reproduces the released reference code bit for bit (its index over `s[1:]`
/// leaves s0 and s_r out of both sums, which looks like an off-by-one); `plain` is the rule
/// as stated in words. The paper rule also requires the left sum to exceed 1e-12, as the
/// reference does, and never returns r = d: when no r qualifies it reports "no cut", which the
/// reference treats as `P = I` (the refinement is then a no-op, m = 1).

#include <q2n/detail/check.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

namespace q2n {

/// Which cut rule find_cut applies (see the table in spectrum.hpp).
enum class CutRule { paper, plain };

/// Result of a cut rule.
struct Cut {
  /// False when no kept count satisfies the rule: then P = I and the refinement is a no-op.
  bool found = false;
  /// Number of kept (leading) eigenvectors r; 0 when !found.
  Eigen::Index kept = 0;
  /// The reference code's `cut_index`: r, or −1 when no cut was found.
  Eigen::Index index() const { return found ? kept : -1; }
};

namespace detail {

/// Cut rule on the leading `known` eigenvalues of a spectrum of length d, given its total and
/// its total without s0 (for a partial eigensolver: the trace, and the trace minus s0).
/// \return the cut, or nullopt when the first r that satisfies the rule (if any) lies beyond
/// what `known` values can decide.
inline std::optional<Cut> cut_from_leading(const Eigen::VectorXd& s, Eigen::Index d, double total,
                                           double total_s, double t, CutRule rule) {
  const Eigen::Index known = s.size();
  Cut cut;
  if (rule == CutRule::paper) {
    // S = s[1:], prefix[i] = S[0..i], suffix[i] = totalS − prefix[i]; the first i with
    // prefix[i] > 1e-12 and suffix[i+1] ≤ t·prefix[i] gives r = i + 2. Needs S[i+1] = s[i+2].
    const Eigen::Index n = d - 1;
    if (n < 2) return cut;
    double prefix = 0;
    for (Eigen::Index i = 0; i + 1 < n; ++i) {
      if (i + 2 >= known) return std::nullopt;
      prefix += s(i + 1);
      const double next = prefix + s(i + 2);
      if (prefix > 1e-12 && (total_s - next) / prefix <= t) {
        cut.found = true;
        cut.kept = i + 2;
        return cut;
      }
    }
    return cut;
  }
  // Plain rule: the first r ≥ 1 with Σ_{j≥r} s_j ≤ t Σ_{j<r} s_j over a non-zero head.
  double head = 0;
  for (Eigen::Index r = 1; r <= d; ++r) {
    if (r > known) return std::nullopt;
    head += s(r - 1);
    if (head > 0 && std::max(total - head, 0.0) <= t * head) {
      cut.found = true;
      cut.kept = r;
      return cut;
    }
  }
  return cut;  // all eigenvalues zero
}

inline void check_threshold(double threshold, const char* fn) {
  if (!(threshold > 0) || !std::isfinite(threshold))
    fail(fn, ": threshold = ", threshold, " must be finite and > 0 (default 0.1)");
}

}  // namespace detail

/// Applies a cut rule to a spectrum.
/// \param eigenvalues eigenvalues of `ĀᵀĀ`, sorted descending, finite (negatives count as 0)
/// \param threshold   t in (0, ∞); default 0.1 as in the paper
/// \param rule        CutRule::paper (reference-compatible, default) or CutRule::plain
/// \return the kept count, or `found == false`
///
/// The total is the sum of the clamped eigenvalues, accumulated in order as the reference's
/// cumulative sum does, so decisions at exact ties match it.
///
/// \code
/// Eigen::VectorXd s(4);  s << 10, 5, 0.1, 0.01;
/// q2n::Cut c = q2n::find_cut(s);          // c.found, c.kept == 2
/// \endcode
inline Cut find_cut(const Eigen::Ref<const Eigen::VectorXd>& eigenvalues, double threshold = 0.1,
                    CutRule rule = CutRule::paper) {
  const char* fn = "q2n::find_cut";
  detail::check_threshold(threshold, fn);
  const Eigen::Index d = eigenvalues.size();
  if (d == 0) detail::fail(fn, ": eigenvalues is empty; pass the spectrum of AbarᵀAbar");
  detail::require_finite(eigenvalues, fn, "eigenvalues");
  for (Eigen::Index j = 1; j < d; ++j)
    if (eigenvalues(j) > eigenvalues(j - 1))
      detail::fail(fn, ": eigenvalues(", j, ") > eigenvalues(", j - 1,
                   "); sort the spectrum in descending order");
  const Eigen::VectorXd s = eigenvalues.cwiseMax(0.0);
  double total_s = 0;  // Σ s[1:], in order, as the reference's cumulative sum
  for (Eigen::Index j = 1; j < d; ++j) total_s += s(j);
  return *detail::cut_from_leading(s, d, s(0) + total_s, total_s, threshold, rule);
}

}  // namespace q2n
