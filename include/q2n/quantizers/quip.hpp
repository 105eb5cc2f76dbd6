#pragma once
/// \file quantizers/quip.hpp
/// QuIP (Chee et al., arXiv 2307.13304): incoherence processing, then LDLQ (GPTQ's error
/// feedback in QuIP's order) and greedy coordinate-descent passes.
///
/// Steps, as the QuIP baseline of the Q2N reference runs them:
/// 1. rescale (option): `s_j = ((H_jj / max|H|) / ‖W_:j‖²)^¼` (each factor floored at 1e-8),
///    `W ← W diag(s)`, `H ← diag(s)⁻¹ (H / max|H|) diag(s)⁻¹`;
/// 2. incoherence (option): `H ← H · cols / tr H + 0.01 I`, then `W ← U W Vᵀ`, `H ← V H Vᵀ`
///    with U (rows) and V (cols) random orthogonal: Kronecker products of two Haar factors with
///    permutations (QuIP), or randomized Hadamard transforms (QuIP#), from a seed. U is drawn
///    as QuIP draws it but keeps no output permutation: it would only relabel W̃'s rows, which
///    every later step treats each on its own (the same quantized layer, one pass less);
/// 3. dead columns zeroed, `H += percdamp · mean(diag H) · I`;
/// 4. the grid: `balanced` (QuIP's `b`: one scale per matrix, σ = 2.4·RMS(W̃), values
///    σ·(2c/maxq − 1), symmetric without a zero level) or `per_row` (GPTQ's min-max affine
///    grid per row);
/// 5. LDLQ: columns from last to first, each rounded (half up) with the error of the later
///    columns fed back through H's LDL factor. That is GPTQ's sweep on the column-reversed
///    problem, which is how it runs here (blocked, with lazy updates);
/// 6. npasses greedy passes: for i = cols−1 … 0, `c_i ← round(c_i − (S H)_i / H_ii)` with
///    S = C − U the code-domain error (ties to even), clamping to the grid after each pass,
///    stopping early when a pass changes nothing.
///
/// Storage: a uniform grid in the transformed basis (balanced: offset form `x̂ = s·c + o`,
/// s = 2σ/maxq, o = −σ; per_row: zero-point form) and `transforms` {U, V, s}: the layer
/// computes `y = Uᵀ Q̃ V (x / s)`. Q is that matrix in the original basis.
///
/// Q2N works in the stored basis: m scales the rows of Q̃ (folded into the grid's scale and
/// offset). The null space must be that of the activations mapped into the basis,
/// `Ā diag(s)⁻¹ Vᵀ` (activations_to_stored_basis). The reference's QuIP variant never
/// accumulates Ā and its cut function returns nothing, so its refinement changes nothing.
/// The energy cut depends on the basis (diag(s) is not orthogonal), so the kept rank in the
/// stored basis can differ from that of the raw activations.
///
/// \code
/// q2n::QuipOptions o;
/// o.bits = 2;
/// auto res = q2n::quip(W, H, o);
/// auto ns = q2n::NullSpace<float>::compute(q2n::activations_to_stored_basis(res.storage, abar));
/// auto ref = q2n::refine(res, W, ns);
/// \endcode

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <optional>
#include <q2n/detail/gptq_sweep.hpp>
#include <q2n/detail/hessian_inverse.hpp>
#include <q2n/detail/parallel.hpp>
#include <q2n/detail/quant_checks.hpp>
#include <q2n/detail/second_order.hpp>
#include <q2n/detail/stopwatch.hpp>
#include <q2n/detail/transpose.hpp>
#include <q2n/detail/uniform_fit.hpp>
#include <q2n/detail/uniform_kernels.hpp>
#include <q2n/quantizers/options.hpp>
#include <q2n/storage.hpp>
#include <q2n/transforms.hpp>
#include <random>
#include <utility>
#include <vector>
#include <xsimd/xsimd.hpp>

namespace q2n {

/// The random orthogonal transforms of QuIP's incoherence processing.
enum class Incoherence {
  none,       ///< quantize in the (rescaled) original basis
  kronecker,  ///< QuIP: P_out (A ⊗ B) P_in, Haar factors (KroneckerTransform::random);
              ///< U without P_out (step 2 above)
  hadamard,   ///< QuIP#: randomized Hadamard (HadamardTransform::randomized); rows and
              ///< cols each K·2^k with a built-in H_K (HadamardTransform::base_order)
};

/// QuIP's grid.
enum class QuipGrid {
  balanced,  ///< QuIP's `b`: one scale per matrix, σ = 2.4·RMS, values σ·(2c/maxq − 1)
  per_row,   ///< GPTQ's min-max affine grid per row
};

/// Settings of quip().
struct QuipOptions {
  int bits = 2;                                   ///< 2..8
  QuipGrid grid = QuipGrid::balanced;
  bool rescale = true;                            ///< QuIP's diagonal rescaling
  Incoherence incoherence = Incoherence::kronecker;
  std::uint64_t seed = 0;                         ///< draws U and V
  int npasses = 1;                                ///< greedy passes after LDLQ (≥ 0)
  DampingOptions damping;                         ///< percdamp after the transform, retries
  SweepOptions sweep;                             ///< LDLQ's blocks
};

namespace detail {

/// Σ x_i² in double: eight partial sums (entry i in sum i mod 8, each one multiply-add chain in
/// order, zero-padded at the end), then added pairwise. The order is fixed by the code, not by
/// the SIMD width, so the bits are the same on any target with FMA. (Eigen's squaredNorm of a
/// float-to-double cast, one sequential sum, took 4.6 ms over a 4096² matrix on two threads.)
template <class T>
double sum_of_squares(const T* x, Eigen::Index n) {
  using B = xsimd::batch<double>;
  constexpr Eigen::Index L = 8, parts = L / static_cast<Eigen::Index>(B::size), chunk = 256;
  static_assert(L % B::size == 0, "a batch of double must divide 8 lanes");
  B acc[parts];
  for (auto& a : acc) a = B(0.0);
  alignas(64) double v[chunk];  // converted in one loop, then read by whole batches
  for (Eigen::Index i = 0; i < n; i += chunk) {
    const Eigen::Index m = std::min(chunk, n - i), padded = (m + L - 1) / L * L;
    for (Eigen::Index k = 0; k < m; ++k) v[k] = static_cast<double>(x[i + k]);
    std::fill(v + m, v + padded, 0.0);
    for (Eigen::Index k = 0; k < padded; k += L)
      for (Eigen::Index a = 0; a < parts; ++a) {
        const B b = B::load_aligned(v + k + a * B::size);
        acc[a] = xsimd::fma(b, b, acc[a]);
      }
  }
  for (Eigen::Index a = 0; a < parts; ++a) acc[a].store_aligned(v + a * B::size);
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

/// One greedy coordinate-descent pass over the columns from last to first on
/// `tr(S H Sᵀ)`, S = C − Ucont (code units): c_i ← round_half_even(c_i − (S H)_i / H_ii).
/// Codes are not clamped here. Blocks of `block` columns: S H for a block is one product,
/// kept current inside the block by rank-1 updates. Returns the number of changed codes.
template <class T>
Eigen::Index greedy_pass(Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& C,
                         Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& S,
                         const Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>& H, Eigen::Index block) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  const Index rows = C.rows(), cols = C.cols();
  Index changed = 0;
  Matrix G(rows, block);
  Eigen::Matrix<T, Eigen::Dynamic, 1> dv(rows);
  for (Index e = cols; e > 0; e -= block) {
    const Index b0 = std::max<Index>(0, e - block), nb = e - b0;
    panel_product(G.leftCols(nb), S, H.middleCols(b0, nb), T(1), false);
    for (Index i = e - 1; i >= b0; --i) {
      const T hii = H(i, i);
      bool any = false;
      for (Index r = 0; r < rows; ++r) {
        const T c = C(r, i);
        const T next = std::nearbyint(c - G(r, i - b0) / hii);
        dv(r) = next - c;
        if (next != c) {
          C(r, i) = next;
          S(r, i) += dv(r);
          ++changed;
          any = true;
        }
      }
      if (any && i > b0) G.leftCols(i - b0).noalias() += dv * H.row(i).segment(b0, i - b0);
    }
  }
  return changed;
}

// U (output) or V: for U the Kronecker transform leaves out its output permutation, which would
// only relabel W̃'s rows (LDLQ, the grids and the greedy passes treat each row on its own, and
// σ is over all of W̃): the quantized layer is the same (in float Q keeps its bits; in double
// σ's sum, taken in another order, can move in its last bit), and U W takes 2 ms less at 4096².
template <class T>
std::shared_ptr<const OrthogonalTransform<T>> incoherence_transform(Incoherence kind,
                                                                    Eigen::Index n,
                                                                    std::uint64_t seed,
                                                                    bool output) {
  if (kind == Incoherence::kronecker) {
    KroneckerTransform<T> k = KroneckerTransform<T>::random(n, seed);
    if (output) return std::make_shared<KroneckerTransform<T>>(k.left(), k.right(), k.perm_in());
    return std::make_shared<KroneckerTransform<T>>(std::move(k));
  }
  return std::make_shared<HadamardTransform<T>>(HadamardTransform<T>::randomized(n, seed));
}

template <class Scalar>
QuantResult<Scalar> quip_impl(Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> w,
                              Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic> h,
                              const QuipOptions& o) {
  using Index = Eigen::Index;
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  const char* fn = "q2n::quip";
  check_bits(o.bits, fn);
  if (o.npasses < 0) fail(fn, ": npasses = ", o.npasses, " must be >= 0");
  check_second_order_options(o.damping, o.sweep, fn);
  check_second_order(w, h, fn);
  const Index rows = w.rows(), cols = w.cols();
  if (o.incoherence == Incoherence::hadamard)
    for (const Index n : {rows, cols})
      if (HadamardTransform<Scalar>::base_order(n) == 0)
        fail(fn, ": incoherence = hadamard, but there is no built-in Hadamard matrix for n = ", n,
             " (W is ", rows, " x ", cols, "); use Incoherence::kronecker, which takes any size");
  QuantDiagnostics diag;
  Transforms<Scalar> tf;

  // 1. Rescale (double arithmetic for the factors) and, before incoherence, normalize H's
  // trace to cols and add 0.01 to its diagonal: w ← w diag(s), h ← c · diag(s)⁻¹ h diag(s)⁻¹.
  // 2. Incoherence: w ← U w Vᵀ, h ← V h Vᵀ.
  // U w and V h act on each column alone, so each is done in the same pass as that column's
  // scaling, by chunks of columns shared among the threads: every column is computed the same
  // way on any number of them (a maximum has no rounding), and both transforms give a column
  // a result that depends on that column alone, so the bits are those of one pass after the
  // other.
  // With the Kronecker transform V = P_out K (K = (A ⊗ B) P_in), h becomes K h Kᵀ instead and
  // w becomes U w Kᵀ, both in K's order: V h Vᵀ = P_out (K h Kᵀ) P_outᵀ, w Vᵀ = (w Kᵀ) P_outᵀ,
  // and LDLQ reads both through a column permutation of its own, which takes P_out in with
  // it. So no pass over h or w permutes them (w Vᵀ: 1 ms less at 4096²), and the second side
  // of the conjugation is computed for one triangle only (complete_conjugation). h_order[j] is
  // the index in h and w of column j of the stored basis.
  const auto t_start = Clock::now();
  const bool incoherent = o.incoherence != Incoherence::none;
  std::optional<KroneckerTransform<Scalar>> core;
  std::vector<int> h_order = identity_order(cols);
  if (incoherent) {
    std::mt19937_64 g(o.seed);
    const std::uint64_t seed_u = g(), seed_v = g();
    tf.output = incoherence_transform<Scalar>(o.incoherence, rows, seed_u, true);
    tf.input = incoherence_transform<Scalar>(o.incoherence, cols, seed_v, false);
    if (o.incoherence == Incoherence::kronecker) {  // tf.input is a KroneckerTransform
      const auto& v = static_cast<const KroneckerTransform<Scalar>&>(*tf.input);
      core.emplace(v.left(), v.right(), v.perm_in());
      if (!v.perm_out().empty()) h_order = v.perm_out();
    }
  }
  const OrthogonalTransform<Scalar>* h_side = core ? &*core : tf.input.get();
  constexpr Index kChunk = 64;  // columns per task
  const Index chunks = (cols + kChunk - 1) / kChunk;
  const auto each_chunk = [&](auto&& f) {  // f(first column, count)
    detail::for_each_index(chunks, [&](Index c) { f(c * kChunk, std::min(kChunk, cols - c * kChunk)); });
  };
  Vector s = Vector::Ones(cols), inv_s = Vector::Ones(cols);
  double hmax = 1;
  if (o.rescale) {
    std::vector<Scalar> chunk_max(static_cast<std::size_t>(chunks));
    each_chunk([&](Index j0, Index len) {
      chunk_max[static_cast<std::size_t>(j0 / kChunk)] = h.middleCols(j0, len).cwiseAbs().maxCoeff();
    });
    hmax = static_cast<double>(*std::max_element(chunk_max.begin(), chunk_max.end()));
  }
  each_chunk([&](Index j0, Index len) {
    if (o.rescale)
      for (Index j = j0; j < j0 + len; ++j) {
        const double d = std::max(static_cast<double>(h(j, j)) / hmax, 1e-8);
        const double c = std::max(sum_of_squares(w.col(j).data(), rows), 1e-8);
        s(j) = static_cast<Scalar>(std::max(std::pow(d / c, 0.25), 1e-8));
        w.col(j) *= s(j);
      }
    if (incoherent) tf.output->apply(w.middleCols(j0, len), false);
  });
  double hscale = 1;
  if (o.rescale) {
    inv_s = s.cwiseInverse();
    hscale = 1 / hmax;
  }
  if (incoherent) {
    double tr = 0;
    for (Index j = 0; j < cols; ++j)
      tr += static_cast<double>(h(j, j)) * hscale * static_cast<double>(inv_s(j)) * static_cast<double>(inv_s(j));
    hscale *= static_cast<double>(cols) / (tr + 1e-8);
  }
  if (o.rescale || incoherent) {
    each_chunk([&](Index j0, Index len) {
      for (Index j = j0; j < j0 + len; ++j)
        h.col(j).array() *= inv_s.array() * static_cast<Scalar>(inv_s(j) * hscale);
      if (incoherent) {
        for (Index j = j0; j < j0 + len; ++j) h(j, j) += Scalar(0.01);
        h_side->apply(h.middleCols(j0, len), false);
      }
    });
  }
  if (o.rescale) tf.input_scale = std::move(s);
  if (incoherent) {
    h_side->apply_right(w, true);
    if (core) {
      core->complete_conjugation(h);
    } else {
      tf.input->apply_right(h, true);
      symmetrize_in_place(h);
    }
  }
  diag.seconds.transform = seconds_since(t_start);

  // 3. Dead columns; LDLQ processes the columns from last to first, its copies of w and h in
  // that order taking h_order in.
  diag.dead_columns = fix_dead_columns(w, h, identity_order(cols));
  std::vector<int> perm(static_cast<std::size_t>(cols)), h_perm(static_cast<std::size_t>(cols));
  for (Index k = 0; k < cols; ++k) {
    perm[static_cast<std::size_t>(k)] = static_cast<int>(cols - 1 - k);
    h_perm[static_cast<std::size_t>(k)] = h_order[static_cast<std::size_t>(cols - 1 - k)];
  }
  // The greedy passes' H, in the stored basis: h_damped(i, j) = h(h_order[i], h_order[j]).
  Matrix h_damped;
  const bool greedy = o.npasses > 0;
  if (greedy) {
    h_damped.resize(cols, cols);
    detail::for_each_index(cols, [&](Index j) {
      const Scalar* src = h.col(h_order[static_cast<std::size_t>(j)]).data();
      Scalar* dst = h_damped.col(j).data();
      for (Index i = 0; i < cols; ++i) dst[i] = src[h_order[static_cast<std::size_t>(i)]];
    });
  }

  // 4. The grid, per row: code u = (w − o_r) / s_r (balanced) or w / s_r + z_r (per row).
  UniformGrid<Scalar> u;
  u.bits = o.bits;
  const Scalar maxq = static_cast<Scalar>((1 << o.bits) - 1);
  u.codes = CodeMatrix::Zero(rows, cols);
  u.g_idx = Eigen::VectorXi::Zero(cols);
  u.scales.resize(rows, 1);
  if (o.grid == QuipGrid::balanced) {
    const double rms = std::sqrt(w.template cast<double>().squaredNorm() / static_cast<double>(w.size()));
    const Scalar sigma = static_cast<Scalar>(2.4 * rms + 1e-16);
    u.form = AffineForm::offset;
    u.sym = true;
    u.scales.setConstant(Scalar(2) * sigma / maxq);
    u.offsets = Matrix::Constant(rows, 1, -sigma);
  } else {
    UniformOptions uo;
    uo.bits = o.bits;
    UniformFitter<Scalar> fitter(rows, to_spec(uo), fn);
    u.zeros.resize(rows, 1);
    fitter.fit(w.data(), rows, cols, u.scales.data(), u.zeros.data());
  }
  const bool offset_form = u.form == AffineForm::offset;
  auto code_value = [&](Index r, Scalar x) {  // continuous code of x in row r
    return offset_form ? (x - u.offsets(r, 0)) / u.scales(r, 0) : x / u.scales(r, 0) + u.zeros(r, 0);
  };
  auto value_of = [&](Index r, Scalar c) {  // as dequantize_stored computes it
    return offset_form ? u.scales(r, 0) * c + u.offsets(r, 0) : u.scales(r, 0) * (c - u.zeros(r, 0));
  };

  // 5. LDLQ as GPTQ's sweep on the reversed columns.
  Matrix wp = permute_columns(w, h_perm);
  const Matrix U = damped_inverse_cholesky<Scalar>(std::move(h), h_perm, o.damping.percdamp,
                                                   o.damping.max_retries,
                                                   o.sweep.reference_arithmetic, diag, fn);
  if (greedy) h_damped.diagonal().array() += static_cast<Scalar>(diag.damping);
  auto quantize = [&](Index k, const Matrix&, const Scalar* col, Scalar* q) {
    const Index j = perm[static_cast<std::size_t>(k)];
    for (Index r = 0; r < rows; ++r) {
      const Scalar c = std::clamp(std::floor(code_value(r, col[r]) + Scalar(0.5)), Scalar(0), maxq);
      q[r] = value_of(r, c);
      u.codes(r, j) = static_cast<std::uint8_t>(c);
    }
  };
  gptq_sweep<Scalar>(wp, U, cols, o.sweep.blocksize, o.sweep.reference_arithmetic, quantize, diag);

  // 6. Greedy passes in code units against the transformed weights w.
  if (greedy) {
    const auto t0 = Clock::now();
    Matrix C = u.codes.template cast<Scalar>(), Ucont(rows, cols);
    for (Index j = 0; j < cols; ++j)
      for (Index r = 0; r < rows; ++r)
        Ucont(r, j) = code_value(r, w(r, h_order[static_cast<std::size_t>(j)]));
    Matrix S = C - Ucont;
    for (int pass = 0; pass < o.npasses; ++pass) {
      const Index changed = greedy_pass(C, S, h_damped, std::min<Index>(o.sweep.blocksize, cols));
      C = C.cwiseMax(Scalar(0)).cwiseMin(maxq);
      S = C - Ucont;
      if (changed == 0) break;
    }
    u.codes = C.template cast<std::uint8_t>();
    diag.seconds.greedy = seconds_since(t0);
  }
  return StorageBuilder<Scalar>(rows, cols, "quip")
      .uniform(std::move(u))
      .transforms(std::move(tf))
      .perm(Eigen::Map<const Eigen::VectorXi>(perm.data(), cols))
      .result(diag);
}

}  // namespace detail

/// QuIP quantization of W with Hessian H.
/// \param W rows × cols weights (float or double, any storage order), finite
/// \param H cols × cols Hessian in any floating type, finite, symmetric, PSD, not all zero
///          (its scale does not matter); an rvalue of the weights' type is consumed
/// \return Q (original basis) and its storage (method "quip": a uniform grid in the stored
///         basis, the transforms U, V, s, and the LDLQ order perm); diagnostics.loss (the
///         LDLQ objective before the greedy passes), .damping, .seconds (transform,
///         factorization, sweep, lazy_update, greedy)
/// \throws std::invalid_argument for bad options, shapes, non-finite or all-zero input
/// \throws NumericalError when no damping within the retry budget gives a factorization
template <class DW, class DH>
QuantResult<typename DW::Scalar> quip(const Eigen::MatrixBase<DW>& W, DH&& H, const QuipOptions& options = {}) {
  using Scalar = typename DW::Scalar;
  detail::static_check_second_order<Scalar, DH>();
  return detail::quip_impl<Scalar>(W, detail::take_hessian<Scalar>(std::forward<DH>(H)), options);
}

}  // namespace q2n
