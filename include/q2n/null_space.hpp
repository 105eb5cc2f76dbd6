#pragma once
/// \file null_space.hpp
/// The approximate null space of the calibration activations, in low-rank form.
///
/// With `X = ĀᵀĀ = U diag(s) Uᵀ` and a cut keeping r leading eigenvectors U1 (cols × r), the
/// projector onto the approximate null space is `P = U0 U0ᵀ = I − U1 U1ᵀ`. Only U1 is stored;
/// `M P` and `M (I − P)` cost O(rows · cols · r) and no cols × cols matrix is ever formed
/// outside the eigensolver itself.

#include <q2n/detail/block_krylov.hpp>
#include <q2n/detail/check.hpp>
#if defined(Q2N_WITH_LAPACKE)
#include <q2n/detail/lapack_eigen.hpp>
#endif
#include <q2n/detail/parallel.hpp>
#include <q2n/errors.hpp>
#include <q2n/spectrum.hpp>

#include <Eigen/Core>
#include <Eigen/Eigenvalues>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace q2n {

/// How the spectrum of `ĀᵀĀ` is computed.
///
/// Cost model (n = min(seqlen, cols), N = max(seqlen, cols)). A dense route forms the smaller
/// of `ĀĀᵀ` / `ĀᵀĀ` (n²·N/2 multiply-adds) and decomposes it in O(n³) at level-2 BLAS speed.
/// The partial route needs a Krylov space of width w (a few times the kept count): as two
/// products through Ā (2·n·N·w) while that is cheaper than forming the n × n matrix, by the
/// formed matrix (n²·w) after. `automatic` takes the dense route for n ≤ 384, where it takes
/// milliseconds, and the partial route above; a partial route that cannot decide the cut
/// within width n/3 (with DenseSolver::lapack, whose dense solve is several times cheaper:
/// n/24 + n²/(6N)) hands the matrix it formed to the dense route. Above n = 384 the products
/// are cut into row or column panels shared among the threads, so the result does not
/// depend on the thread count (with DenseSolver::eigen). NullSpace::route_reason() says what
/// ran.
///
/// Precision: in float, the Gram route resolves eigenvalues down to about seqlen·ε·s0. When
/// a kept eigenvalue lies below that (a massive activation makes s0 thousands of times the
/// cut), the Gram route runs in double instead: the same n × n problem, where the covariance
/// route would decompose cols × cols. After a partial route that could not decide the cut,
/// which precision runs is judged from its Krylov space before any dense solve.
enum class SpectrumRoute {
  automatic,   ///< dense on the smaller side for n ≤ 384, partial otherwise
  covariance,  ///< dense eigendecomposition of `ĀᵀĀ` (cols × cols)
  gram,        ///< dense eigendecomposition of `ĀĀᵀ` (seqlen × seqlen), vectors mapped back by
               ///< `Āᵀu/√s`; in double when float cannot resolve the kept eigenvalues
  partial,     ///< leading eigenpairs only, by block Krylov iteration on the smaller side, grown
               ///< until the cut rule is decided by pairs with verified residuals; falls back to
               ///< the dense route on the smaller side when the cut is not small
};

/// The dense symmetric eigensolver behind the dense routes.
enum class DenseSolver {
  eigen,   ///< Eigen's SelfAdjointEigenSolver: every eigenpair, by rotations; the rounding does
           ///< not depend on the thread count
  lapack,  ///< LAPACK through LAPACKE: tridiagonal reduction and the whole spectrum, then only
           ///< the kept eigenvectors (MRRR) mapped back by blocked products; several times
           ///< faster when n is in the thousands. Needs the backend (link q2n::lapack, which
           ///< defines Q2N_WITH_LAPACKE); its rounding follows the BLAS's thread count
};

/// Whether this build has the LAPACKE backend (DenseSolver::lapack).
#if defined(Q2N_WITH_LAPACKE)
inline constexpr bool has_lapack = true;
#else
inline constexpr bool has_lapack = false;
#endif

/// Options for NullSpace::compute.
struct NullSpaceOptions {
  double threshold = 0.1;                         ///< cut threshold t, in (0, ∞)
  CutRule rule = CutRule::paper;                  ///< see spectrum.hpp
  SpectrumRoute route = SpectrumRoute::automatic; ///< both dense routes give the same projector
  DenseSolver solver = DenseSolver::eigen;        ///< for the dense routes (and fallbacks)
};

/// Low-rank null-space projector `P = I − U1 U1ᵀ` of a layer's sample-averaged activations.
///
/// \tparam Scalar float or double: the precision of the eigensolver and of U1.
///
/// \code
/// q2n::SampleMeanAccumulator acc(cols);   // ... add calibration sequences ...
/// auto ns = q2n::NullSpace<float>::compute(acc.mean());
/// if (!ns.cut().found) { /* P = I: the refinement leaves Q unchanged */ }
/// Eigen::MatrixXf WP = ns.project(W);     // W P, never forming P
/// \endcode
template <class Scalar>
class NullSpace {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "q2n::NullSpace: Scalar must be float or double");

 public:
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;

  /// Computes the spectrum of `ĀᵀĀ`, applies the cut rule and keeps U1.
  /// \param abar sample-averaged activations Ā (seqlen × cols), finite, not all zero
  /// \param options threshold, rule and route
  /// \throws std::invalid_argument on empty, non-finite or all-zero Ā or a bad threshold
  /// \throws NumericalError when the eigensolver fails, or ‖Ā‖² leaves double's normal range
  /// Any finite Ā is accepted whatever its scale: entries whose squares would leave the
  /// scalar's range are scaled by a power of two first (exactly), and the spectrum back.
  template <class Derived>
  static NullSpace compute(const Eigen::MatrixBase<Derived>& abar,
                           const NullSpaceOptions& options = {}) {
    const char* fn = "q2n::NullSpace::compute";
    static_assert(!Eigen::NumTraits<typename Derived::Scalar>::IsInteger,
                  "q2n::NullSpace::compute: pass floating-point activations");
    if (abar.rows() == 0 || abar.cols() == 0)
      detail::fail(fn, ": abar is ", abar.rows(), " x ", abar.cols(),
                   "; pass the sample-averaged activations (seqlen x cols) of a non-empty "
                   "calibration set");
    detail::require_finite(abar, fn, "abar");
    if (!(options.threshold > 0) || !std::isfinite(options.threshold))
      detail::fail(fn, ": options.threshold = ", options.threshold,
                   " must be finite and > 0 (default 0.1)");
    if (options.solver == DenseSolver::lapack && !has_lapack)
      detail::fail(fn, ": options.solver = DenseSolver::lapack but this build has no LAPACKE "
                   "backend; link q2n::lapack (it defines Q2N_WITH_LAPACKE) or use "
                   "DenseSolver::eigen");
    const double amax = static_cast<double>(abar.cwiseAbs().maxCoeff());
    if (amax == 0)
      detail::fail(fn, ": abar is all zero; the calibration activations carry no signal");
    // Ā is scaled by a power of two (exactly) when its squares could leave the scalar's range:
    // the eigenvectors do not change, and the spectrum is scaled back in double.
    int e = 0;
    std::frexp(amax, &e);
    const int limit = std::numeric_limits<Scalar>::max_exponent / 4;  // 2^±32 (float), 2^±256
    if (e >= -limit && e <= limit) e = 0;
    if (2 * e >= std::numeric_limits<double>::max_exponent)
      detail::numerical_failure(fn, ": the energy of abar (entries up to ", amax,
                                ") is beyond double's range; scale the activations down");
    if (2 * e < std::numeric_limits<double>::min_exponent)
      detail::numerical_failure(fn, ": the energy of abar (entries up to ", amax,
                                ") is below double's normal range; scale the activations up");
    const Matrix a = (abar * static_cast<typename Derived::Scalar>(std::ldexp(1.0, -e)))
                         .template cast<Scalar>();

    NullSpace ns;
    ns.cols_ = a.cols();
    ns.energy_scale_ = std::ldexp(1.0, 2 * e);
    // Eigen's multithreaded products round differently on different thread counts; the
    // routes' products (Householder blocks, Krylov steps) run single-threaded instead.
    detail::with_serial_eigen([&] { ns.solve(a, options); });
    return ns;
  }

  /// The "no cut" projector P = I on cols columns (U1 empty).
  static NullSpace identity(Eigen::Index cols) {
    if (cols <= 0) detail::fail("q2n::NullSpace::identity: cols = ", cols, " must be positive");
    NullSpace ns;
    ns.cols_ = cols;
    ns.basis_.resize(cols, 0);
    ns.eigenvalues_.setZero(cols);
    return ns;
  }

  /// Builds the projector from an explicit orthonormal kept basis U1 (cols × r).
  /// No check of orthonormality beyond shapes and finiteness is made.
  template <class Derived>
  static NullSpace from_basis(const Eigen::MatrixBase<Derived>& kept_basis) {
    const char* fn = "q2n::NullSpace::from_basis";
    if (kept_basis.rows() == 0) detail::fail(fn, ": kept_basis has no rows; pass cols x r");
    detail::require_finite(kept_basis, fn, "kept_basis");
    NullSpace ns;
    ns.cols_ = kept_basis.rows();
    ns.basis_ = kept_basis.template cast<Scalar>();
    ns.cut_.found = kept_basis.cols() > 0;
    ns.cut_.kept = kept_basis.cols();
    return ns;
  }

  Eigen::Index cols() const { return cols_; }
  /// Number of kept eigenvectors r (0 when no cut: P = I).
  Eigen::Index kept() const { return basis_.cols(); }
  /// The cut rule's result.
  const Cut& cut() const { return cut_; }
  /// The route whose result was kept (automatic resolved; see route_reason()).
  SpectrumRoute route() const { return route_; }
  /// Why that route ran, in one sentence: the cost model's choice, the fallbacks taken (a
  /// partial route that could not decide the cut, a float Gram eigensolve redone in double),
  /// the Krylov width and whether the n × n matrix was formed.
  const std::string& route_reason() const { return reason_; }
  /// U1: the kept eigenvectors (cols × r), orthonormal columns, in descending eigenvalue order.
  const Matrix& kept_basis() const { return basis_; }
  /// Spectrum of `ĀᵀĀ`, descending, negatives clamped to 0: all cols values for the dense
  /// routes; for the partial route the leading values whose residuals were verified (enough
  /// to decide the cut).
  const Eigen::VectorXd& eigenvalues() const { return eigenvalues_; }
  /// Trace of `ĀᵀĀ` = `‖Ā‖_F²`, the spectrum's total (computed in double).
  double total_energy() const { return total_; }

  /// \return `M (I − P) = (M U1) U1ᵀ` for M with cols() columns.
  template <class Derived>
  Matrix complement(const Eigen::MatrixBase<Derived>& m) const {
    check_operand(m, "q2n::NullSpace::complement");
    if (kept() == 0) return Matrix::Zero(m.rows(), m.cols());
    const Matrix mc = m.template cast<Scalar>();
    Matrix mu(m.rows(), kept()), out(m.rows(), m.cols());
    detail::panel_product(mu, mc, basis_, Scalar(1), false);
    detail::panel_product(out, mu, basis_.transpose(), Scalar(1), false);
    return out;
  }

  /// \return `M P = M − (M U1) U1ᵀ` for M with cols() columns.
  template <class Derived>
  Matrix project(const Eigen::MatrixBase<Derived>& m) const {
    check_operand(m, "q2n::NullSpace::project");
    Matrix out = m.template cast<Scalar>();
    if (kept() == 0) return out;
    Matrix mu(out.rows(), kept());
    detail::panel_product(mu, out, basis_, Scalar(1), false);
    detail::panel_product(out, mu, basis_.transpose(), Scalar(-1), true);
    return out;
  }

 private:
  NullSpace() = default;

  template <class Derived>
  void check_operand(const Eigen::MatrixBase<Derived>& m, const char* fn) const {
    static_assert(std::is_same_v<typename Derived::Scalar, Scalar>,
                  "q2n::NullSpace: the operand's scalar must match the NullSpace's Scalar; "
                  "cast it with .cast<Scalar>()");
    if (m.cols() != cols_)
      detail::fail(fn, ": m has ", m.cols(), " columns but the null space has cols = ", cols_,
                   "; pass a matrix with one column per layer input");
  }

  // The routes, in the order the cost model tries them. n = min(seqlen, cols), N = max.
  // `small` is the n × n matrix (ĀĀᵀ when seqlen < cols, else ĀᵀĀ), formed at most once and
  // shared by the partial route and the dense route on the same side.
  void solve(const Matrix& a, const NullSpaceOptions& options) {
    const bool gram_side = a.rows() < a.cols();
    const Eigen::Index n = std::min(a.rows(), a.cols());
    const SpectrumRoute dense_route = gram_side ? SpectrumRoute::gram : SpectrumRoute::covariance;
    SpectrumRoute route = options.route;
    if (route == SpectrumRoute::automatic) {
      route = n <= kDenseUpTo ? dense_route : SpectrumRoute::partial;
      reason_ = n <= kDenseUpTo ? "dense: n = " + std::to_string(n) + " <= " +
                                      std::to_string(kDenseUpTo) + ", a dense solve takes milliseconds"
                                : "partial: n = " + std::to_string(n) + " > " +
                                      std::to_string(kDenseUpTo);
    } else {
      reason_ = "requested";
    }
    Matrix small;
    bool futile = false;  // the partial route judged a dense Gram solve in Scalar futile
    if (route == SpectrumRoute::partial) {
      const Partial outcome = from_partial(a, options, small);
      if (outcome == Partial::decided) return;
      futile = outcome == Partial::gram_futile;
      route = dense_route;
    }
    if (route == SpectrumRoute::gram) {
      if (!futile && from_gram<Scalar>(a, options, gram_side ? &small : nullptr)) return;
      if constexpr (std::is_same_v<Scalar, float>) {
        // A kept eigenvalue lies under float's resolution of ĀĀᵀ (a dominant s0, as massive
        // activations make it): the same route in double resolves it, at the cost of the
        // n × n solve, where the covariance route would solve a cols × cols problem.
        reason_ += futile
                       ? "; Gram route in double: float is not certain to resolve the cut "
                         "next to s0"
                       : "; float Gram cannot resolve kept eigenvalue s_" +
                             std::to_string(cut_.kept - 1) + " next to s0, redone in double";
        if (from_gram<double>(a, options, nullptr)) return;
      }
      reason_ += "; Gram vectors below the rounding floor, covariance route instead";
    }
    from_covariance(a, options, gram_side ? nullptr : &small);
  }

  // ĀĀᵀ (gram) or ĀᵀĀ: the lower triangle only (the eigensolvers and the selfadjoint
  // products read that triangle). Up to kDenseUpTo by one rank update; above, by column panels
  // of the lower part, each one product, shared among the threads (detail::for_each_task): the
  // same bits on any thread count. (The upper half of each diagonal block is computed too and
  // not read.)
  template <class Work>
  static Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic> product_matrix(
      const Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic>& a, bool gram) {
    const Eigen::Index k = gram ? a.rows() : a.cols();
    Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic> m =
        Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic>::Zero(k, k);
    if (k <= kDenseUpTo) {
      if (gram)
        m.template selfadjointView<Eigen::Lower>().rankUpdate(a);
      else
        m.template selfadjointView<Eigen::Lower>().rankUpdate(a.transpose());
      return m;
    }
    // Both as ĀᵀĀ of a column-major operand (Āᵀ for the Gram matrix, copied once): one
    // product kernel for both sides, the one the partial route's Āᵀx uses too.
    const Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic> at =
        gram ? Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic>(a.transpose())
             : Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic>();
    const auto& c = gram ? at : a;
    const Eigen::Index panels = (k + detail::kPanel - 1) / detail::kPanel;
    detail::for_each_task(panels, [&](Eigen::Index p) {
      const Eigen::Index j = p * detail::kPanel, w = std::min(detail::kPanel, k - j);
      m.block(j, j, k - j, w).noalias() = c.middleCols(j, k - j).transpose() * c.middleCols(j, w);
    });
    return m;
  }

  // out = lhs · rhs by row panels of out, shared among the threads (the same bits on any
  // thread count).
  template <class Out, class Lhs, class Rhs>
  static void by_row_panels(Out&& out, const Lhs& lhs, const Rhs& rhs) {
    const Eigen::Index rows = out.rows();
    detail::for_each_task((rows + detail::kPanel - 1) / detail::kPanel, [&](Eigen::Index p) {
      const Eigen::Index r = p * detail::kPanel, len = std::min(detail::kPanel, rows - r);
      out.middleRows(r, len).noalias() = lhs.middleRows(r, len) * rhs;
    });
  }

  // Descending eigenvalues (clamped) from an ascending solver result, and the cut on them.
  void set_spectrum(const Eigen::VectorXd& descending, const NullSpaceOptions& options) {
    eigenvalues_ = descending.cwiseMax(0.0) * energy_scale_;
    total_ = eigenvalues_.sum();
    cut_ = find_cut(eigenvalues_, options.threshold, options.rule);
  }

  // Whether the r-th kept eigenvalue lies within ten times the ~t·eps·s0 level at which a
  // solver in Work resolves eigenvalues of the t × t Gram matrix (s descending).
  template <class Work>
  static bool below_gram_floor(const Eigen::VectorXd& s, Eigen::Index r, Eigen::Index t) {
    return r > 0 && s(r - 1) <= gram_floor<Work>(s(0), t);
  }
  // Ten times the ~t·eps·s0 level at which a solver in Work resolves eigenvalues of the
  // t × t Gram matrix.
  template <class Work>
  static double gram_floor(double s0, Eigen::Index t) {
    return 10 * s0 * static_cast<double>(t) * std::numeric_limits<Work>::epsilon();
  }

  // Kept basis from eigenvectors z of the Gram matrix, computed in Work: v = Āᵀ z / √s.
  // Returns false when a kept eigenvalue lies within ten times the ~t·eps·s0 level at which
  // the solver resolves eigenvalues of the t × t Gram matrix: its mapped-back vector would be
  // rounding noise.
  template <class Work>
  bool map_from_gram(const Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic>& a,
                     const Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic>& z,
                     const Eigen::VectorXd& s) {
    const Eigen::Index r = z.cols();
    if (below_gram_floor<Work>(s, r, a.rows())) return false;
    const Eigen::Matrix<Work, Eigen::Dynamic, 1> inv_sqrt =
        (s.head(r) / energy_scale_).cwiseSqrt().cwiseInverse().template cast<Work>();
    Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic> v(a.cols(), r);
    by_row_panels(v, a.transpose(), z);
    v *= inv_sqrt.asDiagonal();
    basis_ = v.template cast<Scalar>();
    return true;
  }

  enum class Partial { decided, undecided, gram_futile };
  // Partial route: block Krylov on the smaller of ĀĀᵀ / ĀᵀĀ, the Krylov space widened until
  // the cut rule is decided by leading Ritz pairs whose residuals are verified small. Returns
  // undecided (caller falls back to the dense route) when the needed width passes a third of
  // n, and gram_futile when, in addition, a dense Gram solve in Scalar cannot be shown to
  // resolve the kept eigenvalues (gram_resolves).
  // Each attempt applies the n × n matrix M as two products through Ā (2·n·N·w multiply-adds
  // for width w) or, once cheaper, forms M (n²·N/2, kept in `small`) and multiplies by it
  // (n²·w); M formed here also serves the dense fallback.
  Partial from_partial(const Matrix& a, const NullSpaceOptions& options, Matrix& small) {
    route_ = SpectrumRoute::partial;
    const bool gram = a.rows() < a.cols();
    const Eigen::Index n = std::min(a.rows(), a.cols());
    const double nd = static_cast<double>(n), big = static_cast<double>(std::max(a.rows(), a.cols()));
    total_ = 0;  // ‖Ā‖_F² in double: the trace, i.e. the sum of all eigenvalues
    for (Eigen::Index j = 0; j < a.cols(); ++j)
      total_ += a.col(j).template cast<double>().squaredNorm();
    total_ *= energy_scale_;
    const double eps = std::numeric_limits<Scalar>::epsilon();
    // A Ritz pair counts once its residual (which bounds its eigenvalue error) is below 1e-4 of
    // its value (1e-8 in double) or at the rounding floor of an n × n product.
    const double rel = std::is_same_v<Scalar, float> ? 1e-4 : 1e-8;
    const double floor_rel = 10 * std::sqrt(nd) * eps;
    const Eigen::Index block = std::clamp<Eigen::Index>(n / 16, 4, 32);
    Matrix through;  // Ā x or Āᵀ x, the implicit product's intermediate
    // M x by the formed matrix once there is one, else through Ā (one instantiation of the
    // Krylov iteration for both).
    const auto apply = [&](const auto& x, auto&& y) {
      if (small.size()) {
        y.noalias() = small.template selfadjointView<Eigen::Lower>() * x;
      } else {
        through.resize(gram ? a.cols() : a.rows(), x.cols());
        if (gram) {
          by_row_panels(through, a.transpose(), x);
          by_row_panels(y, a, through);
        } else {
          by_row_panels(through, a, x);
          by_row_panels(y, a.transpose(), through);
        }
      }
    };
    // The widest Krylov space tried before the dense route: n/3 with Eigen's dense solve. With
    // LAPACK's, several times cheaper, attempts that end in the dense route cost more than
    // they save sooner: up to width w they cost about 4·n·N·w multiply-adds (each width's
    // products through Ā, the widths doubling), kept within a third of the dense route's
    // n²·N/2 + 2n³, i.e. w ≤ n/24 + n²/(6N). The first space has three blocks, or two when
    // three pass that cap: at least one is tried, also to estimate the spectrum (gram_resolves).
    const bool lapack = options.solver == DenseSolver::lapack;
    const Eigen::Index cap = std::max<Eigen::Index>(
        2 * block, lapack ? static_cast<Eigen::Index>(nd / 24 + nd * nd / (6 * big)) : n / 3);
    Eigen::Index width = 0;
    detail::RitzPairs<Scalar> last;  // the widest space's Ritz pairs
    for (Eigen::Index blocks = std::min<Eigen::Index>(3, cap / block); block * blocks <= cap;
         blocks *= 2) {
      width = block * blocks;
      const double w = static_cast<double>(width);
      if (small.size() == 0 && nd * nd * big / 2 + nd * nd * w < 2 * nd * big * w)
        small = product_matrix<Scalar>(a, gram);
      auto ritz = detail::block_krylov<Scalar>(n, apply, block, blocks);
      if (!ritz.ok) break;
      const Eigen::VectorXd theta = ritz.values.cwiseMax(0.0);
      Eigen::Index known = 0;
      while (known < theta.size() &&
             ritz.residuals(known) <= std::max(rel * theta(known), floor_rel * theta(0)))
        ++known;
      if (known == 0) {
        last = std::move(ritz);
        continue;
      }
      const Eigen::VectorXd head = theta.head(known) * energy_scale_;
      const auto cut = detail::cut_from_leading(head, cols_, total_, total_ - head(0),
                                                options.threshold, options.rule);
      if (!cut) {
        last = std::move(ritz);
        continue;
      }
      cut_ = *cut;
      eigenvalues_ = head;
      reason_ += "; cut decided by " + std::to_string(known) + " verified Ritz pairs of a width-" +
                 std::to_string(width) + " Krylov space" +
                 (small.size() ? " (n x n matrix formed)" : " (products through Abar)");
      const Matrix z = ritz.vectors.leftCols(cut_.kept);
      if (!gram) {
        basis_ = z;
        return Partial::decided;
      }
      if (map_from_gram<Scalar>(a, z, head)) return Partial::decided;
      reason_ += "; Gram vectors below the rounding floor";
      return Partial::gram_futile;  // a dense solve in Scalar has the same floor
    }
    reason_ += "; the cut needs more than a width-" + std::to_string(width) +
               " Krylov space (" + (lapack ? "n/24 + n²/6N" : "n/3") +
               ") can decide, dense route instead";
    if (gram && last.values.size() > 1 && !gram_resolves(last, a.rows(), options))
      return Partial::gram_futile;
    return Partial::undecided;
  }

  // Whether a dense Gram solve in Scalar will resolve the kept eigenvalues of a cut the
  // partial route could not decide, judged from that route's widest Krylov space before the
  // solve is paid for: the smallest kept eigenvalue s_{r−1} must clear ten times the t·ε·s0
  // floor (below_gram_floor); s0 is taken as θ_0 plus its residual (the top of the interval
  // the residual puts an eigenvalue in).
  // - A bound: the rule did not hold at r − 1, so the eigenvalues from r on (at most n − r
  //   nonzero, each at most s_{r−1}) outweigh t times the head before them, which gives
  //   s_{r−1} > t·T / ((1 + t)·n + t) with T the rule's total (the trace without s0 for the
  //   paper rule; its only cut without an earlier step, r = 2, has s_1 ≥ θ_1, as Ritz values
  //   bound eigenvalues from below), and t·trace / ((1 + t)·n) for the plain rule. When the
  //   bound clears the floor, float certainly resolves the cut.
  // - An estimate, for spectra where the bound is loose (it is within 2-5x of s_{r−1} on the
  //   activation families): the Krylov space grew from random vectors, so its Ritz values
  //   with their quadrature weights (RitzPairs::weights) sample the whole spectrum, as in
  //   stochastic Lanczos quadrature. The cut keeps a head of about T / (1 + t); s_{r−1} is
  //   estimated as the Ritz value at which the weighted energies, summed from the top (θ_0
  //   counted once as s0, the rest scaled to T), reach it.
  // A wrong estimate costs time (a float spectrum thrown away, or a double solve where float
  // would have done), never accuracy.
  bool gram_resolves(const detail::RitzPairs<Scalar>& ritz, Eigen::Index t_rows,
                     const NullSpaceOptions& options) const {
    const Eigen::VectorXd theta = ritz.values.cwiseMax(0.0);
    const double t = options.threshold, n = static_cast<double>(std::min(t_rows, cols_));
    const double s0 = theta(0) + ritz.residuals(0), trace = total_ / energy_scale_;
    const bool paper = options.rule == CutRule::paper;
    const double total = paper ? std::max(trace - s0, 0.0) : trace;
    const double floor10 = gram_floor<Scalar>(s0, t_rows);
    const double bound = paper ? std::min(t * total / ((1 + t) * n + t), theta(1))
                               : t * total / ((1 + t) * n);
    if (bound > floor10) return true;
    double rest = 0;  // Σ_{j≥1} w_j θ_j
    for (Eigen::Index j = 1; j < theta.size(); ++j) rest += ritz.weights(j) * theta(j);
    const double scale = rest > 0 ? std::max(trace - s0, 0.0) / rest : 0;
    double head = paper ? 0 : s0, estimate = 0;
    for (Eigen::Index j = 1; j < theta.size() && estimate == 0; ++j) {
      head += scale * ritz.weights(j) * theta(j);
      if (head >= total / (1 + t)) estimate = theta(j);
    }
    return estimate > floor10;
  }

  // Dense eigensolve of the lower triangle of m (consumed) by options.solver: sets the spectrum
  // (m's leading eigenvalues, at most cols of them, zeros after them up to cols) and the cut,
  // and returns the kept leading eigenvectors in descending order. gram: m is a Gram matrix
  // whose vectors are mapped back; when its kept eigenvalues lie under Work's floor there
  // (below_gram_floor), LAPACK's solve returns no vectors rather than compute useless ones.
  template <class Work>
  Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic> dense_kept(
      Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic>&& m, const NullSpaceOptions& options,
      const char* what, bool gram = false) {
    const Eigen::Index n = m.rows();
    const std::string name = std::string(what) + " (" + std::to_string(n) + " x " +
                             std::to_string(n) + ")";
    const Eigen::Index k = std::min(n, cols_);  // a requested Gram route may have t > cols
    Eigen::VectorXd s = Eigen::VectorXd::Zero(cols_);
    static_cast<void>(gram);  // (read by the LAPACK branch only)
#if defined(Q2N_WITH_LAPACKE)
    if (options.solver == DenseSolver::lapack) {
      reason_ += "; dense solve by LAPACK, kept vectors only";
      detail::LapackEigen<Work> le(std::move(m), name);
      s.head(k) = le.descending().head(k);
      set_spectrum(s, options);
      // A Gram solve whose kept vectors would map back to rounding noise (map_from_gram) is
      // judged on the spectrum, before the vectors are paid for.
      if (gram && below_gram_floor<Work>(eigenvalues_, cut_.kept, n))
        return Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic>(n, 0);
      auto kept = le.leading(cut_.kept);
      if (le.mrrr_info() != 0)
        reason_ += " (MRRR failed, info " + std::to_string(le.mrrr_info()) +
                   ": every vector by divide and conquer)";
      return kept;
    }
#endif
    Eigen::SelfAdjointEigenSolver<Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic>> es(m);
    if (es.info() != Eigen::Success)
      throw NumericalError("q2n::NullSpace::compute: eigendecomposition of " + name +
                           " did not converge");
    s.head(k) = es.eigenvalues().reverse().head(k).template cast<double>();
    set_spectrum(s, options);
    // Solver order is ascending: the r leading vectors are the last r columns, reversed.
    return es.eigenvectors().rightCols(cut_.kept).rowwise().reverse();
  }

  void from_covariance(const Matrix& a, const NullSpaceOptions& options, Matrix* small) {
    route_ = SpectrumRoute::covariance;
    Matrix x = small && small->size() ? std::move(*small) : product_matrix<Scalar>(a, false);
    basis_ = dense_kept<Scalar>(std::move(x), options, "AbarᵀAbar");
  }

  // Dense Gram route in Work precision (Scalar, or double for a float NullSpace whose kept
  // eigenvalues float cannot resolve). Returns false when the mapped-back basis would be
  // inaccurate (a kept eigenvalue near Work's rounding floor); the spectrum and cut are set.
  template <class Work>
  bool from_gram(const Matrix& a, const NullSpaceOptions& options, Matrix* small) {
    using WorkMatrix = Eigen::Matrix<Work, Eigen::Dynamic, Eigen::Dynamic>;
    route_ = SpectrumRoute::gram;
    WorkMatrix aw, g;
    const WorkMatrix* ap = &aw;
    if constexpr (std::is_same_v<Work, Scalar>) {
      ap = &a;
      g = small && small->size() ? std::move(*small) : product_matrix<Work>(a, true);
    } else {
      aw = a.template cast<Work>();
      g = product_matrix<Work>(aw, true);
    }
    // The nonzero spectra of ĀĀᵀ and ĀᵀĀ coincide; the remaining cols − t values are zero
    // (the Gram side has t < cols).
    const WorkMatrix z = dense_kept<Work>(std::move(g), options, "AbarAbarᵀ", true);
    return z.cols() == cut_.kept && map_from_gram<Work>(*ap, z, eigenvalues_);
  }

  static constexpr Eigen::Index kDenseUpTo = 384;  // automatic: dense solve up to this n

  Eigen::Index cols_ = 0;
  Cut cut_;
  SpectrumRoute route_ = SpectrumRoute::covariance;
  Matrix basis_;                  // U1, cols × r
  Eigen::VectorXd eigenvalues_;   // descending (see eigenvalues())
  double energy_scale_ = 1.0;     // 2^(2e) when compute() scaled Ā by 2^(−e), else 1
  double total_ = 0;              // trace of ĀᵀĀ
  std::string reason_;            // see route_reason()
};

}  // namespace q2n
