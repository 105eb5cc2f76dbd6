#pragma once
// Straightforward double-precision re-implementations of the reference quantizers, written with
// plain loops and sharing no code with include/q2n/quantizers. Used by tests/test_quantizers_*.
// They follow the reference algorithms literally (chol -> inverse -> chol for H^-1, one rank-1
// update per column), so they also cross-check the library's faster formulations.
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <stdexcept>
#include <utility>
#include <vector>

namespace qref {

using Md = Eigen::MatrixXd;

/// Round half to even, spelled out (independent of std::nearbyint).
inline double round_half_even(double x) {
  const double f = std::floor(x);
  const double diff = x - f;
  if (diff < 0.5) return f;
  if (diff > 0.5) return f + 1;
  return std::fmod(f, 2.0) == 0 ? f : f + 1;
}

/// Per-row min-max parameters of GPTQ's quantizer over columns [c0, c1) of W.
struct Params {
  std::vector<double> scale, zero;
};

inline Params fit_minmax(const Md& W, long c0, long c1, int bits, bool sym) {
  const double maxq = std::pow(2.0, bits) - 1;
  Params p;
  for (long r = 0; r < W.rows(); ++r) {
    double lo = 0, hi = 0;
    for (long c = c0; c < c1; ++c) {
      lo = std::min(lo, W(r, c));
      hi = std::max(hi, W(r, c));
    }
    if (sym) {
      hi = std::max(std::abs(lo), hi);
      if (lo < 0) lo = -hi;
    }
    if (lo == 0 && hi == 0) {
      lo = -1;
      hi = 1;
    }
    const double s = (hi - lo) / maxq;
    p.scale.push_back(s);
    p.zero.push_back(sym ? (maxq + 1) / 2 : round_half_even(-lo / s));
  }
  return p;
}

inline double code_of(double x, double s, double z, double maxq) {
  double q = round_half_even(x / s) + z;
  if (q < 0) q = 0;
  if (q > maxq) q = maxq;
  return q;
}

inline double quant(double x, double s, double z, double maxq) {
  return s * (code_of(x, s, z, maxq) - z);
}

/// Lower Cholesky factor by the textbook loop; throws when a pivot is not positive.
inline Md chol_lower(const Md& A) {
  const long n = A.rows();
  Md L = Md::Zero(n, n);
  for (long j = 0; j < n; ++j) {
    double d = A(j, j);
    for (long k = 0; k < j; ++k) d -= L(j, k) * L(j, k);
    if (!(d > 0)) throw std::runtime_error("qref::chol_lower: not positive definite");
    L(j, j) = std::sqrt(d);
    for (long i = j + 1; i < n; ++i) {
      double v = A(i, j);
      for (long k = 0; k < j; ++k) v -= L(i, k) * L(j, k);
      L(i, j) = v / L(j, j);
    }
  }
  return L;
}

/// Inverse of an SPD matrix from its Cholesky factor (column by column solves).
inline Md spd_inverse(const Md& A) {
  const long n = A.rows();
  const Md L = chol_lower(A);
  Md X(n, n);
  for (long c = 0; c < n; ++c) {
    std::vector<double> y(n);
    for (long i = 0; i < n; ++i) {
      double v = (i == c) ? 1.0 : 0.0;
      for (long k = 0; k < i; ++k) v -= L(i, k) * y[k];
      y[i] = v / L(i, i);
    }
    for (long i = n - 1; i >= 0; --i) {
      double v = y[i];
      for (long k = i + 1; k < n; ++k) v -= L(k, i) * X(k, c);
      X(i, c) = v / L(i, i);
    }
  }
  return X;
}

/// The reference's Hinv: damp, chol, cholesky_inverse, chol(upper).
inline Md upper_chol_of_damped_inverse(Md H, double percdamp) {
  double mean = 0;
  for (long j = 0; j < H.rows(); ++j) mean += H(j, j);
  mean /= static_cast<double>(H.rows());
  for (long j = 0; j < H.rows(); ++j) H(j, j) += percdamp * mean;
  return chol_lower(spd_inverse(H)).transpose();
}

/// The GPTQ sweep, literally: W1 clone per block, rank-1 update per column, lazy update after.
/// quantize(k, W, w, q) fills q (rows) for processing position k from working column w.
template <class Quantize>
void sweep(Md& W, const Md& U, long n_quant, long blocksize, Quantize quantize) {
  const long rows = W.rows(), cols = W.cols();
  for (long i1 = 0; i1 < n_quant; i1 += blocksize) {
    const long i2 = std::min(i1 + blocksize, n_quant);
    const long count = i2 - i1;
    Md W1 = W.block(0, i1, rows, count);
    Md Err1 = Md::Zero(rows, count);
    for (long i = 0; i < count; ++i) {
      std::vector<double> w(rows), q(rows);
      for (long r = 0; r < rows; ++r) w[r] = W1(r, i);
      quantize(i1 + i, W, w, q);
      const double d = U(i1 + i, i1 + i);
      for (long r = 0; r < rows; ++r) {
        const double e = (w[r] - q[r]) / d;
        Err1(r, i) = e;
        for (long c = i; c < count; ++c) W1(r, c) -= e * U(i1 + i, i1 + c);
      }
    }
    for (long c = i2; c < cols; ++c)
      for (long r = 0; r < rows; ++r) {
        double acc = 0;
        for (long k = 0; k < count; ++k) acc += Err1(r, k) * U(i1 + k, c);
        W(r, c) -= acc;
      }
  }
}

/// GPTQ's preparation: dead columns (H_jj = 0: H_jj ← 1, W's column ← 0), the act-order
/// permutation (stable, by descending H_jj), the permuted W and U of the damped, permuted H.
struct Prepared {
  Md W;                   // dead columns zeroed, original order
  Md Wp;                  // W in processing order
  Md U;                   // upper Cholesky factor of the damped, permuted H⁻¹
  std::vector<int> perm;  // processing position k -> original column
};
inline Prepared prepare(const Md& W0, const Md& H0, bool act_order, double percdamp) {
  const long rows = W0.rows(), cols = W0.cols();
  Prepared p{W0, Md(rows, cols), Md(), std::vector<int>(cols)};
  Md H = H0;
  for (long j = 0; j < cols; ++j)
    if (H(j, j) == 0) {
      H(j, j) = 1;
      for (long r = 0; r < rows; ++r) p.W(r, j) = 0;
    }
  std::iota(p.perm.begin(), p.perm.end(), 0);
  if (act_order)
    std::stable_sort(p.perm.begin(), p.perm.end(), [&](int a, int b) { return H(a, a) > H(b, b); });
  Md Hp(cols, cols);
  for (long a = 0; a < cols; ++a) {
    for (long r = 0; r < rows; ++r) p.Wp(r, a) = p.W(r, p.perm[a]);
    for (long b = 0; b < cols; ++b) Hp(a, b) = H(p.perm[a], p.perm[b]);
  }
  p.U = upper_chol_of_damped_inverse(Hp, percdamp);
  return p;
}

struct GptqOut {
  Md Q;                       // original column order
  std::vector<int> perm;      // processing order
  std::vector<double> codes;  // rows x cols, column-major, original order (-1: not uniform)
};

/// GPTQ (also OWQ when n_out > 0 with an explicit processing order).
inline GptqOut gptq(const Md& W0, const Md& H0, int bits, long groupsize, bool sym, bool act_order,
                    bool static_groups, double percdamp, long blocksize) {
  const long rows = W0.rows(), cols = W0.cols();
  const double maxq = std::pow(2.0, bits) - 1;
  Params row_params;
  if (groupsize == -1) row_params = fit_minmax(W0, 0, cols, bits, sym);
  Prepared pr = prepare(W0, H0, act_order, percdamp);
  const Md& W = pr.W;
  Md& Wp = pr.Wp;
  const Md& U = pr.U;
  const std::vector<int>& perm = pr.perm;
  std::vector<Params> statics;
  if (static_groups && groupsize != -1)
    for (long c = 0; c < cols; c += groupsize)
      statics.push_back(fit_minmax(W, c, c + groupsize, bits, sym));
  GptqOut out;
  out.Q = Md::Zero(rows, cols);
  out.codes.assign(rows * cols, -1);
  Params current = row_params;
  sweep(Wp, U, cols, blocksize,
        [&](long k, const Md& Wk, const std::vector<double>& w, std::vector<double>& q) {
          const Params* p = &current;
          if (groupsize != -1) {
            if (static_groups) {
              p = &statics[perm[k] / groupsize];
            } else if (k % groupsize == 0) {
              current = fit_minmax(Wk, k, k + groupsize, bits, sym);
            }
          }
          for (long r = 0; r < rows; ++r) {
            const double c = code_of(w[r], p->scale[r], p->zero[r], maxq);
            q[r] = p->scale[r] * (c - p->zero[r]);
            out.Q(r, perm[k]) = q[r];
            out.codes[perm[k] * rows + r] = c;
          }
        });
  out.perm = perm;
  return out;
}

/// OWQ: kept columns by H_jj · RTN error, quantized columns first, kept columns last.
struct OwqOut {
  Md Q;
  std::vector<int> perm;
  std::vector<int> kept;  // original indices, by score descending
};

inline OwqOut owq(const Md& W0, const Md& H0, int bits, long groupsize, bool sym, bool act_order,
                  long n_out, double percdamp, long blocksize) {
  const long rows = W0.rows(), cols = W0.cols();
  const double maxq = std::pow(2.0, bits) - 1;
  const Params rtn = fit_minmax(W0, 0, cols, bits, sym);
  std::vector<double> score(cols);
  for (long j = 0; j < cols; ++j) {
    double e = 0;
    for (long r = 0; r < rows; ++r) {
      const double d = W0(r, j) - quant(W0(r, j), rtn.scale[r], rtn.zero[r], maxq);
      e += d * d;
    }
    score[j] = H0(j, j) * e;
  }
  std::vector<int> by(cols);
  std::iota(by.begin(), by.end(), 0);
  std::stable_sort(by.begin(), by.end(), [&](int a, int b) { return score[a] > score[b]; });
  std::vector<int> perm;
  std::vector<char> is_kept(cols, 0);
  for (long k = 0; k < n_out; ++k) is_kept[by[k]] = 1;
  if (act_order) {
    for (long k = n_out; k < cols; ++k) perm.push_back(by[k]);
  } else {
    for (long j = 0; j < cols; ++j)
      if (!is_kept[j]) perm.push_back(static_cast<int>(j));
  }
  for (long k = 0; k < n_out; ++k) perm.push_back(by[k]);
  const long nq = cols - n_out;

  Md Wp(rows, cols), Hp(cols, cols);
  for (long a = 0; a < cols; ++a) {
    for (long r = 0; r < rows; ++r) Wp(r, a) = W0(r, perm[a]);
    for (long b = 0; b < cols; ++b) Hp(a, b) = H0(perm[a], perm[b]);
  }
  Params current;
  if (groupsize == -1) current = fit_minmax(Wp, 0, nq, bits, sym);
  for (long a = 0; a < cols; ++a)
    if (Hp(a, a) == 0) {
      Hp(a, a) = 1;
      for (long r = 0; r < rows; ++r) Wp(r, a) = 0;
    }
  const Md U = upper_chol_of_damped_inverse(Hp, percdamp);
  OwqOut out;
  out.Q = Md::Zero(rows, cols);
  sweep(Wp, U, nq, blocksize,
        [&](long k, const Md& Wk, const std::vector<double>& w, std::vector<double>& q) {
          if (groupsize != -1 && k % groupsize == 0)
            current = fit_minmax(Wk, k, std::min(k + groupsize, nq), bits, sym);
          for (long r = 0; r < rows; ++r) {
            q[r] = quant(w[r], current.scale[r], current.zero[r], maxq);
            out.Q(r, perm[k]) = q[r];
          }
        });
  for (long k = nq; k < cols; ++k)
    for (long r = 0; r < rows; ++r) out.Q(r, perm[k]) = Wp(r, k);
  out.perm = perm;
  out.kept.assign(by.begin(), by.begin() + n_out);
  return out;
}

/// PB-LLM with Hessian or magnitude salience (ties broken by column-major position).
struct PbOut {
  Md Q;
  std::vector<std::vector<char>> binarized;  // [row][col]
  Md alpha, mean;                            // rows x groups
};

inline PbOut pbllm(const Md& W0, const Md& H0, double low_frac, int high_bits, long groupsize,
                   bool hessian_salience, double percdamp, long blocksize) {
  const long rows = W0.rows(), cols = W0.cols();
  const long g = groupsize == -1 ? cols : groupsize;
  const double maxq = std::pow(2.0, high_bits) - 1;
  const Params high = fit_minmax(W0, 0, cols, high_bits, false);
  Md W = W0, H = H0;
  for (long j = 0; j < cols; ++j)
    if (H(j, j) == 0) {
      H(j, j) = 1;
      for (long r = 0; r < rows; ++r) W(r, j) = 0;
    }
  const Md U = upper_chol_of_damped_inverse(H, percdamp);
  PbOut out;
  out.binarized.assign(rows, std::vector<char>(cols, 0));
  out.alpha = Md::Zero(rows, cols / g);
  out.mean = Md::Zero(rows, cols / g);
  for (long grp = 0; grp < cols / g; ++grp) {
    std::vector<std::pair<double, long>> sal;
    for (long c = 0; c < g; ++c)
      for (long r = 0; r < rows; ++r) {
        const long j = grp * g + c;
        const double x = W(r, j);
        const double s = hessian_salience ? x * x / (U(j, j) * U(j, j)) : std::abs(x);
        sal.push_back({s, c * rows + r});
      }
    std::sort(sal.begin(), sal.end());
    const long n = rows * g;
    const long nb = std::min(n, static_cast<long>(std::floor(n * low_frac)) + 1);
    for (long t = 0; t < nb; ++t)
      out.binarized[sal[t].second % rows][grp * g + sal[t].second / rows] = 1;
    for (long r = 0; r < rows; ++r) {
      double sum = 0;
      for (long c = 0; c < g; ++c)
        if (out.binarized[r][grp * g + c]) sum += W(r, grp * g + c);
      const double mu = sum / g;
      double dev = 0;
      for (long c = 0; c < g; ++c)
        dev += std::abs((out.binarized[r][grp * g + c] ? W(r, grp * g + c) : 0.0) - mu);
      out.mean(r, grp) = mu;
      out.alpha(r, grp) = dev / g;
    }
  }
  out.Q = Md::Zero(rows, cols);
  sweep(W, U, cols, blocksize,
        [&](long k, const Md&, const std::vector<double>& w, std::vector<double>& q) {
          const long grp = k / g;
          for (long r = 0; r < rows; ++r) {
            if (out.binarized[r][k]) {
              const double d = w[r] - out.mean(r, grp);
              const double sg = d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0);
              q[r] = sg * out.alpha(r, grp) + out.mean(r, grp);
            } else {
              q[r] = quant(w[r], high.scale[r], high.zero[r], maxq);
            }
            out.Q(r, k) = q[r];
          }
        });
  return out;
}

/// Q2N equivalent vector with a dense projector, in the given column order.
inline std::vector<double> equivalent_vector_dense(const Md& W, const Md& Q, const Md& U1,
                                                   double lambda) {
  const long rows = W.rows(), cols = W.cols();
  Md P = Md::Identity(cols, cols);
  for (long a = 0; a < cols; ++a)
    for (long b = 0; b < cols; ++b)
      for (long k = 0; k < U1.cols(); ++k) P(a, b) -= U1(a, k) * U1(b, k);
  std::vector<double> m(rows);
  for (long r = 0; r < rows; ++r) {
    double num = lambda, den = lambda;
    for (long b = 0; b < cols; ++b) {
      // B(r, b) = Σ_a W(r, a) (I − P)(a, b) + Q(r, a) P(a, b)
      double bv = 0;
      for (long a = 0; a < cols; ++a)
        bv += W(r, a) * ((a == b ? 1.0 : 0.0) - P(a, b)) + Q(r, a) * P(a, b);
      num += bv * Q(r, b);
      den += Q(r, b) * Q(r, b);
    }
    m[r] = num / den;
  }
  return m;
}

/// Weighted 1-D Lloyd, the naive way: every point to the nearest centroid by |c − x| (ties to
/// the lowest index), every centroid the weighted mean of its points (an empty or weightless
/// cluster keeps its centroid), centroids sorted after each step; scikit-learn's stops.
/// Returns the centroids after the step count the stops allow.
struct LloydOut {
  std::vector<double> c;
  int iterations = 0;
};
inline LloydOut lloyd_naive(const std::vector<double>& x, const std::vector<double>& w, int K,
                            int max_iter, double tol) {
  const std::size_t n = x.size();
  double lo = x[0], hi = x[0], mean = 0;
  for (double v : x) lo = std::min(lo, v), hi = std::max(hi, v), mean += v;
  mean /= static_cast<double>(n);
  double var = 0;
  for (double v : x) var += (v - mean) * (v - mean);
  var /= static_cast<double>(n);
  LloydOut out;
  out.c.resize(static_cast<std::size_t>(K));
  for (int k = 0; k < K; ++k) out.c[k] = K == 1 ? lo : lo + (hi - lo) * (static_cast<double>(k) / (K - 1));
  if (K > 1) out.c.back() = hi;
  std::vector<int> label(n, -1), previous;
  for (int it = 0; it < max_iter; ++it) {
    for (std::size_t i = 0; i < n; ++i) {
      int best = 0;
      for (int k = 1; k < K; ++k)
        if (std::abs(x[i] - out.c[k]) < std::abs(x[i] - out.c[best])) best = k;
      label[i] = best;
    }
    ++out.iterations;
    if (label == previous) break;
    double shift = 0;
    for (int k = 0; k < K; ++k) {
      double sw = 0, swx = 0;
      for (std::size_t i = 0; i < n; ++i)
        if (label[i] == k) sw += w[i], swx += w[i] * x[i];
      if (sw > 0) {
        shift += (swx / sw - out.c[k]) * (swx / sw - out.c[k]);
        out.c[k] = swx / sw;
      }
    }
    std::sort(out.c.begin(), out.c.end());
    if (shift <= tol * var) break;
    previous = label;
  }
  return out;
}

struct LeanOut {
  Md Q;                    // original column order
  Md grid;                 // rows x 2^bits, sorted per row
  std::vector<int> codes;  // rows x cols, column-major, original order: index into grid row
};

/// LeanQuant literally: dead columns, act-order, the reference's Hinv, per-row k-means with
/// weights U_jj^(−p), then the sweep with nearest-centroid rounding (ties to the lowest index).
inline LeanOut leanquant(const Md& W0, const Md& H0, int bits, double exponent, bool act_order,
                         double percdamp, long blocksize, int max_iter, double tol) {
  const long rows = W0.rows(), cols = W0.cols();
  const int K = 1 << bits;
  Prepared pr = prepare(W0, H0, act_order, percdamp);
  Md& Wp = pr.Wp;
  const Md& U = pr.U;
  const std::vector<int>& perm = pr.perm;
  std::vector<double> omega(cols);
  for (long k = 0; k < cols; ++k) omega[k] = std::pow(U(k, k), -exponent);
  LeanOut out;
  out.grid.resize(rows, K);
  for (long r = 0; r < rows; ++r) {
    std::vector<double> x(cols);
    for (long k = 0; k < cols; ++k) x[k] = Wp(r, k);
    const LloydOut km = lloyd_naive(x, omega, K, max_iter, tol);
    for (int k = 0; k < K; ++k) out.grid(r, k) = km.c[k];
  }
  out.Q = Md::Zero(rows, cols);
  out.codes.assign(rows * cols, -1);
  sweep(Wp, U, cols, blocksize, [&](long k, const Md&, const std::vector<double>& w, std::vector<double>& q) {
    for (long r = 0; r < rows; ++r) {
      int best = 0;
      for (int c = 1; c < K; ++c)
        if (std::abs(w[r] - out.grid(r, c)) < std::abs(w[r] - out.grid(r, best))) best = c;
      q[r] = out.grid(r, best);
      out.Q(r, perm[k]) = q[r];
      out.codes[perm[k] * rows + r] = best;
    }
  });
  return out;
}

/// QuIP's LDLQ literally (integer domain, columns from last to first): with L = chol(H) lower
/// and L̄ = L diag(L)⁻¹ − I, c_i = clamp(floor(u_i + Σ_{j>i} (u_j − c_j) L̄_ji + 0.5), 0, maxq).
/// U holds the continuous codes (rows × cols).
inline Md ldlq(const Md& U, const Md& H, double maxq) {
  const long rows = U.rows(), cols = U.cols();
  const Md L = chol_lower(H);
  Md Lbar = Md::Zero(cols, cols);
  for (long j = 0; j < cols; ++j)
    for (long i = j + 1; i < cols; ++i) Lbar(i, j) = L(i, j) / L(j, j);
  Md C = Md::Zero(rows, cols);
  for (long i = cols - 1; i >= 0; --i)
    for (long r = 0; r < rows; ++r) {
      double acc = 0;
      for (long j = i + 1; j < cols; ++j) acc += (U(r, j) - C(r, j)) * Lbar(j, i);
      C(r, i) = std::min(std::max(std::floor(U(r, i) + acc + 0.5), 0.0), maxq);
    }
  return C;
}

/// QuIP's greedy passes literally: S = C − U; for i = cols−1 … 0,
/// c_i ← round_half_even(c_i − (S H)_i / H_ii); clamp after each pass; stop when a pass
/// changes nothing. `clamp` = false leaves the codes unclamped (one pass, for the descent test).
inline Md greedy(Md C, const Md& U, const Md& H, double maxq, int npasses, bool clamp = true) {
  const long rows = C.rows(), cols = C.cols();
  for (int pass = 0; pass < npasses; ++pass) {
    Md S = C - U;
    long changed = 0;
    for (long i = cols - 1; i >= 0; --i)
      for (long r = 0; r < rows; ++r) {
        double g = 0;
        for (long j = 0; j < cols; ++j) g += S(r, j) * H(j, i);
        const double next = round_half_even(C(r, i) - g / H(i, i));
        if (next != C(r, i)) ++changed;
        S(r, i) += next - C(r, i);
        C(r, i) = next;
      }
    if (clamp) C = C.cwiseMax(0.0).cwiseMin(maxq);
    if (changed == 0) break;
  }
  return C;
}

}  // namespace qref
