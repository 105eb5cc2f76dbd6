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

/// Applies a cut rule to a spectrum.
/// \param eigenvalues eigenvalues of `ĀᵀĀ`, sorted descending, finite (negatives count as 0)
/// \param threshold   t in (0, ∞); default 0.1 as in the paper
/// \param rule        CutRule::paper (reference-compatible, default) or CutRule::plain
/// \return the kept count, or `found == false`
///
/// \code
/// Eigen::VectorXd s(4);  s << 10, 5, 0.1, 0.01;
/// q2n::Cut c = q2n::find_cut(s);          // c.found, c.kept == 2
/// \endcode
inline Cut find_cut(const Eigen::Ref<const Eigen::VectorXd>& eigenvalues, double threshold = 0.1,
                    CutRule rule = CutRule::paper) {
  const char* fn = "q2n::find_cut";
  if (!(threshold > 0) || !std::isfinite(threshold))
    detail::fail(fn, ": threshold = ", threshold, " must be finite and > 0 (default 0.1)");
  const Eigen::Index d = eigenvalues.size();
  if (d == 0) detail::fail(fn, ": eigenvalues is empty; pass the spectrum of AbarᵀAbar");
  detail::require_finite(eigenvalues, fn, "eigenvalues");
  for (Eigen::Index j = 1; j < d; ++j)
    if (eigenvalues(j) > eigenvalues(j - 1))
      detail::fail(fn, ": eigenvalues(", j, ") > eigenvalues(", j - 1,
                   "); sort the spectrum in descending order");

  const Eigen::VectorXd s = eigenvalues.cwiseMax(0.0);
  Cut cut;
  if (rule == CutRule::paper) {
    // Over S = s[1:]: prefix[i] = S[0..i], suffix[i] = total − prefix[i]; the first i with
    // prefix[i] > 1e-12 and suffix[i+1] ≤ t·prefix[i] gives r = i + 2. Sums are formed the same
    // way as in the reference (cumulative sum, suffix by subtraction) so ties break alike.
    const Eigen::Index n = d - 1;
    if (n < 2) return cut;
    Eigen::VectorXd prefix(n);
    double run = 0;
    for (Eigen::Index i = 0; i < n; ++i) prefix(i) = run += s(i + 1);
    const double total = prefix(n - 1);
    for (Eigen::Index i = 0; i + 1 < n; ++i) {
      const double suffix_next = total - prefix(i + 1);
      if (prefix(i) > 1e-12 && suffix_next / prefix(i) <= threshold) {
        cut.found = true;
        cut.kept = i + 2;
        return cut;
      }
    }
    return cut;
  }
  // Plain rule: the first r ≥ 1 with Σ_{j≥r} s_j ≤ t Σ_{j<r} s_j over a non-zero head.
  const double total = s.sum();
  double head = 0;
  for (Eigen::Index r = 1; r <= d; ++r) {
    head += s(r - 1);
    const double tail = std::max(total - head, 0.0);
    if (head > 0 && tail <= threshold * head) {
      cut.found = true;
      cut.kept = r;
      return cut;
    }
  }
  return cut;  // all eigenvalues zero
}

}  // namespace q2n
