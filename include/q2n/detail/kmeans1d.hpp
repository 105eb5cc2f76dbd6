#pragma once
/// \file detail/kmeans1d.hpp
/// Weighted one-dimensional k-means (Lloyd's algorithm), exact and fast.
///
/// The points are sorted once with their weights; prefix sums of ω and ω·x (double) then give
/// any run's weighted mean in O(1). With the centroids sorted, a point belongs to the nearest
/// centroid (ties to the lowest index) exactly when it lies in that centroid's run of the
/// sorted points, and the run's ends are found by binary search at the midpoints between
/// neighbouring distinct centroids. One Lloyd step costs O(K log n) instead of O(n K), with
/// the same iterates as the naive step (the tests compare the two). A 1-D Lloyd step keeps
/// sorted centroids sorted (a cluster's new centroid stays inside its own cell), except that a
/// centroid left empty beside a moved equal one is passed; the centroids are re-sorted then.
///
/// Stopping rules are scikit-learn's (which the LeanQuant reference calls): stop when the
/// assignment did not change (strict convergence), or when the summed squared centroid shift
/// is at most `tol · var(x)` (unweighted population variance), or after max_iter steps.
/// An empty cluster (or one whose points all have weight 0) keeps its centroid, where
/// scikit-learn would move it to the point farthest from its centroid.

#include <Eigen/Core>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

namespace q2n::detail {

/// Indices of x[0, n) by ascending value, −0 before +0 and equal values by index: a stable
/// least-significant-digit radix sort of the values' bits made order-preserving, 11 bits a
/// pass (3 for float, 6 for double), skipping a pass whose digit is the same for every value.
/// For rows of thousands of values it is several times faster than a comparison sort (4096
/// rows of 4096 floats: 0.07 s against 0.6 s for std::sort of 64-bit keys).
template <class T>
std::vector<std::uint32_t> ascending_order(const T* x, std::size_t n) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "float or double values");
  using Key = std::conditional_t<std::is_same_v<T, float>, std::uint32_t, std::uint64_t>;
  constexpr int kDigit = 11, kPasses = (8 * static_cast<int>(sizeof(Key)) + kDigit - 1) / kDigit;
  constexpr std::size_t kBuckets = std::size_t(1) << kDigit;
  constexpr Key kSign = Key(1) << (8 * sizeof(Key) - 1);
  const auto digit = [](Key k, int pass) {
    return static_cast<std::size_t>(k >> (pass * kDigit)) & (kBuckets - 1);
  };
  std::vector<Key> key(n), next_key(n);
  std::vector<std::uint32_t> order(n), next_order(n);
  std::vector<std::uint32_t> count(kPasses * kBuckets, 0);
  for (std::size_t j = 0; j < n; ++j) {
    Key u;
    std::memcpy(&u, &x[j], sizeof u);
    u = (u & kSign) ? ~u : (u | kSign);  // negatives reversed below the positives
    key[j] = u;
    order[j] = static_cast<std::uint32_t>(j);
    for (int pass = 0; pass < kPasses; ++pass) ++count[pass * kBuckets + digit(u, pass)];
  }
  for (int pass = 0; pass < kPasses && n > 0; ++pass) {
    std::uint32_t* start = &count[pass * kBuckets];
    if (start[digit(key[0], pass)] == n) continue;  // one digit value: nothing moves
    std::uint32_t sum = 0;
    for (std::size_t b = 0; b < kBuckets; ++b) sum += std::exchange(start[b], sum);
    for (std::size_t j = 0; j < n; ++j) {
      const std::uint32_t at = start[digit(key[j], pass)]++;
      next_key[at] = key[j];
      next_order[at] = order[j];
    }
    key.swap(next_key);
    order.swap(next_order);
  }
  return order;
}

/// Points of one row sorted by value, with prefix sums of their weights.
class SortedPoints {
 public:
  /// x: n float or double values, w: n non-negative weights (weight j belongs to x[j]).
  template <class T>
  SortedPoints(const T* x, const double* w, Eigen::Index n) : x_(static_cast<std::size_t>(n)) {
    const std::vector<std::uint32_t> order = ascending_order(x, static_cast<std::size_t>(n));
    cw_.assign(static_cast<std::size_t>(n) + 1, 0.0);
    cwx_.assign(static_cast<std::size_t>(n) + 1, 0.0);
    // The running sums in registers: read back from the arrays, each step waited for the
    // previous store (LeanQuant's grid fitting, 4096 rows of 4096, two threads: 0.113-0.120 ->
    // 0.093-0.097 s).
    double mean = 0, sw = 0, swx = 0;
    for (std::size_t j = 0; j < order.size(); ++j) {
      const double v = static_cast<double>(x[order[j]]), wj = w[order[j]];
      x_[j] = v;
      cw_[j + 1] = sw += wj;
      cwx_[j + 1] = swx += wj * v;
      mean += v;
    }
    mean /= static_cast<double>(n);
    for (double v : x_) var_ += (v - mean) * (v - mean);
    var_ /= static_cast<double>(n);
  }
  std::size_t size() const { return x_.size(); }
  double min() const { return x_.front(); }
  double max() const { return x_.back(); }
  double variance() const { return var_; }  ///< unweighted population variance
  /// Number of points ≤ v.
  std::size_t count_le(double v) const {
    return static_cast<std::size_t>(std::upper_bound(x_.begin(), x_.end(), v) - x_.begin());
  }
  /// The same, searched outward from hint (any count; best one near the answer) in steps that
  /// double, then by bisection: a few probes where the answer moved little, as between Lloyd
  /// steps, instead of log n.
  std::size_t count_le(double v, std::size_t hint) const {
    const std::size_t n = x_.size();
    const auto bisect = [&](std::size_t lo, std::size_t hi) {  // the answer is in [lo, hi]
      const auto first = x_.begin();
      return static_cast<std::size_t>(std::upper_bound(first + static_cast<std::ptrdiff_t>(lo),
                                                       first + static_cast<std::ptrdiff_t>(hi), v) -
                                      first);
    };
    hint = std::min(hint, n);
    std::size_t step = 1;
    if (hint < n && x_[hint] <= v) {  // the answer is above hint
      std::size_t lo = hint + 1;      // x_[lo − 1] ≤ v
      for (; lo + step <= n && x_[lo + step - 1] <= v; step *= 2) lo += step;
      return bisect(lo, std::min(lo + step - 1, n));
    }
    std::size_t hi = hint;  // x_[hi] > v, or hi = n
    for (; hi >= step && x_[hi - step] > v; step *= 2) hi -= step;
    return bisect(hi >= step ? hi - step + 1 : 0, hi);
  }
  double weight(std::size_t a, std::size_t b) const { return cw_[b] - cw_[a]; }
  double weighted_sum(std::size_t a, std::size_t b) const { return cwx_[b] - cwx_[a]; }

 private:
  std::vector<double> x_, cw_, cwx_;
  double var_ = 0;
};

/// Ends of the clusters of sorted centroids c over the sorted points: cluster k holds the
/// points [ends[k−1], ends[k]) (ends[−1] = 0). A centroid equal to its predecessor gets none
/// (ties go to the lowest index). hint: the previous step's ends (K of them), searched from,
/// or empty.
inline void cluster_ends(const SortedPoints& pts, const std::vector<double>& c,
                         const std::vector<std::size_t>& hint, std::vector<std::size_t>& ends) {
  const std::size_t K = c.size();
  ends.resize(K);
  std::size_t start = 0;
  for (std::size_t k = 0; k < K; ++k) {
    if (k > 0 && c[k] == c[k - 1]) {
      ends[k] = start;
      continue;
    }
    std::size_t next = k + 1;
    while (next < K && c[next] == c[k]) ++next;
    if (next < K) {
      const double mid = 0.5 * (c[k] + c[next]);
      ends[k] = std::max(start, hint.empty() ? pts.count_le(mid) : pts.count_le(mid, hint[k]));
    } else {
      ends[k] = pts.size();
    }
    start = ends[k];
  }
}

/// Result of kmeans1d.
struct KMeans1d {
  std::vector<double> centroids;  ///< sorted ascending
  int iterations = 0;             ///< Lloyd steps taken
};

/// Weighted Lloyd from K centroids at linspace(min x, max x, K).
inline KMeans1d kmeans1d(const SortedPoints& pts, int K, int max_iter, double tol) {
  KMeans1d res;
  std::vector<double>& c = res.centroids;
  c.resize(static_cast<std::size_t>(K));
  const double lo = pts.min(), hi = pts.max();
  for (int k = 0; k < K; ++k)
    c[static_cast<std::size_t>(k)] = K == 1 ? lo : lo + (hi - lo) * (static_cast<double>(k) / (K - 1));
  if (K > 1) c.back() = hi;
  const double tol_abs = tol * pts.variance();
  std::vector<std::size_t> ends, previous;
  for (int it = 0; it < max_iter; ++it) {
    cluster_ends(pts, c, previous, ends);
    ++res.iterations;
    if (ends == previous) break;  // same assignment: the centroids would not move
    double shift = 0;
    std::size_t a = 0;
    for (std::size_t k = 0; k < c.size(); ++k) {
      const std::size_t b = ends[k];
      const double w = pts.weight(a, b);
      if (b > a && w > 0) {
        const double moved = pts.weighted_sum(a, b) / w;
        shift += (moved - c[k]) * (moved - c[k]);
        c[k] = moved;
      }
      a = b;
    }
    // Only a centroid that kept its place next to a moved duplicate can fall out of order.
    std::sort(c.begin(), c.end());
    if (shift <= tol_abs) break;
    previous.swap(ends);
  }
  return res;
}

}  // namespace q2n::detail
