// Q2N and GPTQ at LLM layer shapes, against the machine's SGEMM rate measured in the same run
// and against the reference algorithm's dense path (full eigendecomposition of cols × cols,
// dense P, closed form from dense products).
//
// Shapes are rows × cols with T = 2048 calibration positions. Every benchmark runs one
// iteration (the operations take seconds); rates are reported as counters in GFLOP/s.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <q2n/detail/factor_product.hpp>
#include <q2n/projection.hpp>
#include <q2n/quantizers.hpp>
#include <random>
#include <utility>
#include <xsimd/xsimd.hpp>

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace {

constexpr Eigen::Index kT = 2048;

Eigen::MatrixXf gaussian(Eigen::Index r, Eigen::Index c, std::uint32_t seed, float sd = 1.f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.f, sd);
  Eigen::MatrixXf m(r, c);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nd(gen);
  return m;
}

// The fastest of `reps` runs of f, as runs per second.
template <class F>
double best_rate(int reps, F&& f) {
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::max(
        best, 1 / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// Sample-averaged activations with LLM-like structure (see bench_projection.cpp).
Eigen::MatrixXf make_abar(Eigen::Index cols, std::uint32_t seed = 1) {
  Eigen::MatrixXf a = gaussian(kT, 32, seed) * gaussian(32, cols, seed + 1) / 32.f;
  a += 0.05f * gaussian(kT, cols, seed + 2);
  for (Eigen::Index c = 0; c < cols; c += 97) a.col(c) *= 20.f;
  a.row(0) *= 50.f;
  return a;
}

// The layer the Hessian-based quantizers are timed on: LLM-like inputs plus noise, H from
// them, small Gaussian weights.
struct HessianLayer {
  Eigen::MatrixXf w, h;
};
HessianLayer hessian_layer(Eigen::Index rows, Eigen::Index cols) {
  const Eigen::MatrixXf x = make_abar(cols, 7) + 0.5f * gaussian(kT, cols, 8);
  q2n::HessianAccumulator acc(cols);
  acc.add(x);
  return {gaussian(rows, cols, 9, 0.02f), acc.hessian_as<float>()};
}

void BM_SGEMM(benchmark::State& state) {
  const Eigen::Index n = state.range(0);
  const Eigen::MatrixXf a = gaussian(n, n, 1), b = gaussian(n, n, 2);
  Eigen::MatrixXf c(n, n);
  // The machine's rate: the best of five products after one that warms the caches and pages
  // (a single cold product reads 10-20 % low, which would flatter every ratio against it).
  double best = 0;
  for (auto _ : state) {
    c.noalias() = a * b;
    best = best_rate(5, [&] { c.noalias() = a * b; });
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOPs"] = 2.0 * n * n * n * 1e-9 * best;
}

// The machine's FMA peak: 12 independent chains of fused multiply-adds on full SIMD registers
// per thread, nothing loaded or stored (twice the FMAs per second: the most any float product
// can reach here).
void BM_FmaPeak(benchmark::State& state) {
  using B = xsimd::batch<float>;
  constexpr int chains = 12;
  constexpr long steps = 20'000'000;
  int threads = 1;
  double best = 0;
  for (auto _ : state) {
    best = best_rate(3, [&] {
#if defined(_OPENMP)
#pragma omp parallel
#endif
      {
#if defined(_OPENMP)
#pragma omp single
        threads = omp_get_num_threads();
#endif
        B acc[chains];
        for (int c = 0; c < chains; ++c) acc[c] = B(1e-3f * float(c));
        const B a(0.9999f), b(1e-4f);
        for (long k = 0; k < steps; ++k)
          for (int c = 0; c < chains; ++c) acc[c] = xsimd::fma(acc[c], a, b);
        float sum = 0;
        for (int c = 0; c < chains; ++c) sum += xsimd::hadd(acc[c]);
        benchmark::DoNotOptimize(sum);
      }
    });
  }
  state.counters["GFLOPs"] = 2.0 * B::size * chains * double(steps) * threads * 1e-9 * best;
}

// The products the Kronecker transform is made of, at their best: a p x p factor (p = 64,
// 4096 = 64 · 64) times 64 x 516 blocks that stay in the L1 cache, every thread on its own
// blocks, as many as one application to an n x n matrix holds (both factors' products), by
// detail::factor_product (what KroneckerTransform runs) and, for comparison, by Eigen's product
// (eigen_GFLOPs). The rate bounds what KroneckerTransform can reach, data movement not counted.
void BM_FactorProduct(benchmark::State& state) {
  const Eigen::Index p = state.range(0), n = p * p, width = 516;
  const Eigen::MatrixXf a = gaussian(p, p, 4), x = gaussian(p, width, 5);
  const Eigen::Index blocks = 2 * n * n / (p * width);
  const auto rate = [&](bool kernel) {
    return best_rate(3, [&] {
#if defined(_OPENMP)
#pragma omp parallel
#endif
      {
        Eigen::MatrixXf y(p, width);
#if defined(_OPENMP)
#pragma omp for schedule(static)
#endif
        for (Eigen::Index k = 0; k < blocks; ++k) {
          if (kernel)
            q2n::detail::factor_product(y.data(), p, a.data(), p, {x.data(), 1, p}, p, width, p);
          else
            y.noalias() = a * x;
          benchmark::DoNotOptimize(y.data());
        }
      }
    });
  };
  double best = 0, eigen = 0;
  for (auto _ : state) {
    best = rate(true);
    eigen = rate(false);
  }
  const double gflop = 2.0 * double(p) * p * width * blocks * 1e-9;
  state.counters["GFLOPs"] = gflop * best;
  state.counters["eigen_GFLOPs"] = gflop * eigen;
}

void BM_Hessian(benchmark::State& state) {
  const Eigen::Index cols = state.range(0);
  const Eigen::MatrixXf x = gaussian(kT, cols, 3);
  for (auto _ : state) {
    q2n::HessianAccumulator acc(cols);
    acc.add(x);
    benchmark::DoNotOptimize(&acc);
  }
  // Useful work: the lower triangle of XᵀX, T·cols² flops (a full GEMM would be 2·T·cols²).
  state.counters["GFLOPs"] = benchmark::Counter(
      double(kT) * cols * cols * 1e-9 * state.iterations(), benchmark::Counter::kIsRate);
}

void BM_NullSpace(benchmark::State& state) {
  const Eigen::Index cols = state.range(0);
  const auto route = static_cast<q2n::SpectrumRoute>(state.range(1));
  const Eigen::MatrixXf abar = make_abar(cols);
  Eigen::Index kept = 0;
  q2n::SpectrumRoute used = route;
  for (auto _ : state) {
    const auto ns = q2n::NullSpace<float>::compute(abar, {0.1, q2n::CutRule::paper, route});
    kept = ns.kept();
    used = ns.route();
  }
  state.counters["kept"] = double(kept);
  state.counters["route_used"] = double(static_cast<int>(used));
}

// The whole Q2N refinement of one layer given Ā, W and Q: null space (automatic route) plus
// the closed-form m and diag(m)·Q.
void BM_Q2NRefine(benchmark::State& state) {
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  const Eigen::MatrixXf abar = make_abar(cols);
  const Eigen::MatrixXf w = gaussian(rows, cols, 4, 0.02f);
  const Eigen::MatrixXf q = (w / 0.01f).array().round().matrix() * 0.01f;
  for (auto _ : state) {
    const auto ns = q2n::NullSpace<float>::compute(abar);
    auto refined = q2n::refine(w, q, ns);
    benchmark::DoNotOptimize(refined.Q.data());
  }
}

// The closed-form equivalent vector alone, given the layer's null space (computed outside the
// timed loop): O(rows · cols · r).
void BM_EquivalentVector(benchmark::State& state) {
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  const auto ns = q2n::NullSpace<float>::compute(make_abar(cols));
  const Eigen::MatrixXf w = gaussian(rows, cols, 4, 0.02f);
  const Eigen::MatrixXf q = (w / 0.01f).array().round().matrix() * 0.01f;
  for (auto _ : state) {
    const Eigen::VectorXf m = q2n::equivalent_vector(w, q, ns);
    benchmark::DoNotOptimize(m.data());
  }
  state.counters["kept"] = double(ns.kept());
}

// The reference algorithm's dense path: eigh of X = ĀᵀĀ (cols × cols), P = U0 U0ᵀ,
// B = W (I − P) + Q P, m = (⟨B,Q⟩ + λ)/(‖Q‖² + λ). Also checks our m against it.
void BM_ReferenceDenseRefine(benchmark::State& state) {
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  const Eigen::MatrixXf abar = make_abar(cols);
  const Eigen::MatrixXf w = gaussian(rows, cols, 4, 0.02f);
  const Eigen::MatrixXf q = (w / 0.01f).array().round().matrix() * 0.01f;
  Eigen::VectorXf m;
  for (auto _ : state) {
    const Eigen::MatrixXf x = abar.transpose() * abar;
    Eigen::SelfAdjointEigenSolver<Eigen::MatrixXf> es(x);
    const Eigen::VectorXd s = es.eigenvalues().reverse().cast<double>();
    const auto cut = q2n::find_cut(s.cwiseMax(0.0));
    const Eigen::Index r = cut.found ? cut.kept : 0;
    const Eigen::MatrixXf u0 = es.eigenvectors().leftCols(cols - r);  // ascending: the tail
    const Eigen::MatrixXf p = u0 * u0.transpose();
    const Eigen::MatrixXf b = w - w * p + q * p;
    m = ((b.cwiseProduct(q).rowwise().sum().array() + 0.2f) /
         (q.rowwise().squaredNorm().array() + 0.2f))
            .matrix();
    benchmark::DoNotOptimize(m.data());
  }
  const auto ours = q2n::refine(w, q, q2n::NullSpace<float>::compute(abar)).m;
  state.counters["max_rel_diff_m"] = ((ours - m).array().abs() / m.array().abs()).maxCoeff();
  state.counters["m_minus_1_max"] = (m.array() - 1.f).abs().maxCoeff();
}

// GPTQ 4-bit, group 128, with its time split into the H⁻¹ factorization, the in-block sweep
// and the lazy updates; the lazy updates' rate counts 2·rows·count·(cols − i2) flops per block.
// Arg 2 = 1 runs the reference's operation order (reference_arithmetic: chol → inverse → chol
// and one rank-1 update per column inside a block) for the before/after comparison.
void BM_GPTQ(benchmark::State& state) {
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  const HessianLayer layer = hessian_layer(rows, cols);
  const Eigen::MatrixXf& w = layer.w;
  const Eigen::MatrixXf& h = layer.h;
  q2n::GptqOptions opt;
  opt.grid.bits = 4;
  opt.groupsize = 128;
  opt.sweep.reference_arithmetic = state.range(2) != 0;
  q2n::QuantDiagnostics d;
  for (auto _ : state) {
    auto res = q2n::gptq(w, h, opt);
    benchmark::DoNotOptimize(res.Q.data());
    d = res.diagnostics;
  }
  double lazy_flops = 0;
  const Eigen::Index bs = opt.sweep.blocksize;
  for (Eigen::Index i2 = bs; i2 < cols; i2 += bs)
    lazy_flops += 2.0 * double(rows) * double(bs) * double(cols - i2);
  // The factorization's flops: Cholesky of H (n³/3) and the triangular inverse (n³/3); GPTQ's
  // flop floor adds the error feedback of every column to the later ones (rows · n² in all,
  // in-block and lazy), so floor_GFLOP / SGEMM rate is the least time GPTQ can take.
  const double n = double(cols);
  const double factor_flops = 2.0 * n * n * n / 3.0;
  state.counters["factor_s"] = d.seconds.factorization;
  state.counters["factor_GFLOPs"] = factor_flops * 1e-9 / d.seconds.factorization;
  state.counters["sweep_s"] = d.seconds.sweep;
  state.counters["lazy_s"] = d.seconds.lazy_update;
  state.counters["lazy_GFLOPs"] = lazy_flops * 1e-9 / d.seconds.lazy_update;
  state.counters["floor_GFLOP"] = (factor_flops + double(rows) * n * n) * 1e-9;
}

// LeanQuant (arg 2 = bits), act-order: the per-row weighted k-means (grid_fit_s) against the
// GPTQ part of the same run (factorization + sweep + lazy updates, gptq_s).
void BM_LeanQuant(benchmark::State& state) {
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  const HessianLayer layer = hessian_layer(rows, cols);
  const Eigen::MatrixXf& w = layer.w;
  const Eigen::MatrixXf& h = layer.h;
  q2n::LeanQuantOptions opt;
  opt.bits = static_cast<int>(state.range(2));
  opt.act_order = true;
  opt.damping.percdamp = 0.1;
  q2n::QuantDiagnostics d;
  for (auto _ : state) {
    auto res = q2n::leanquant(w, h, opt);
    benchmark::DoNotOptimize(res.Q.data());
    d = res.diagnostics;
  }
  const double gptq_s = d.seconds.factorization + d.seconds.sweep + d.seconds.lazy_update;
  state.counters["grid_fit_s"] = d.seconds.grid_fit;
  state.counters["gptq_s"] = gptq_s;
  state.counters["grid_fit_share"] = d.seconds.grid_fit / gptq_s;
}

// QuIP 2 bits (arg 2: 0 = Kronecker, 1 = randomized Hadamard transforms), one greedy pass:
// the change of basis (transform_s: rescaling, U W Vᵀ and V H Vᵀ) against LDLQ (ldlq_s:
// factorization + sweep + lazy updates) and the greedy pass.
void BM_Quip(benchmark::State& state) {
  const Eigen::Index rows = state.range(0), cols = state.range(1);
  const HessianLayer layer = hessian_layer(rows, cols);
  const Eigen::MatrixXf& w = layer.w;
  const Eigen::MatrixXf& h = layer.h;
  q2n::QuipOptions opt;
  opt.incoherence = state.range(2) == 0 ? q2n::Incoherence::kronecker : q2n::Incoherence::hadamard;
  q2n::QuantDiagnostics d;
  for (auto _ : state) {
    auto res = q2n::quip(w, h, opt);
    benchmark::DoNotOptimize(res.Q.data());
    d = res.diagnostics;
  }
  const double ldlq_s = d.seconds.factorization + d.seconds.sweep + d.seconds.lazy_update;
  state.counters["transform_s"] = d.seconds.transform;
  state.counters["ldlq_s"] = ldlq_s;
  state.counters["greedy_s"] = d.seconds.greedy;
  state.counters["transform_share"] = d.seconds.transform / ldlq_s;
}

void BM_RTN(benchmark::State& state) {
  const Eigen::MatrixXf w = gaussian(state.range(0), state.range(1), 9, 0.02f);
  q2n::RtnOptions opt;
  opt.grid.bits = 4;
  opt.groupsize = 128;
  for (auto _ : state) {
    auto res = q2n::rtn(w, opt);
    benchmark::DoNotOptimize(res.Q.data());
  }
}

void one_shot(benchmark::internal::Benchmark* b) {
  b->Unit(benchmark::kMillisecond)->Iterations(1)->UseRealTime();
}

}  // namespace

BENCHMARK(BM_SGEMM)->Arg(4096)->Apply(one_shot);
BENCHMARK(BM_FmaPeak)->Apply(one_shot);
BENCHMARK(BM_FactorProduct)->Arg(64)->Apply(one_shot);
BENCHMARK(BM_Hessian)->Arg(4096)->Arg(8192)->Arg(14336)->Apply(one_shot);
BENCHMARK(BM_NullSpace)
    ->Args({4096, int(q2n::SpectrumRoute::gram)})
    ->Args({4096, int(q2n::SpectrumRoute::partial)})
    ->Args({8192, int(q2n::SpectrumRoute::partial)})
    ->Args({14336, int(q2n::SpectrumRoute::gram)})
    ->Args({14336, int(q2n::SpectrumRoute::partial)})
    ->Args({4096, int(q2n::SpectrumRoute::covariance)})
    ->Apply(one_shot);
BENCHMARK(BM_Q2NRefine)
    ->Args({4096, 4096})
    ->Args({4096, 14336})
    ->Args({8192, 8192})
    ->Args({8192, 28672})
    ->Apply(one_shot);
BENCHMARK(BM_EquivalentVector)
    ->Args({4096, 4096})
    ->Args({4096, 14336})
    ->Args({8192, 8192})
    ->Args({8192, 28672})
    ->Apply(one_shot);
BENCHMARK(BM_LeanQuant)
    ->Args({4096, 4096, 4})
    ->Args({4096, 14336, 4})
    ->Args({4096, 4096, 2})
    ->Apply(one_shot);
BENCHMARK(BM_Quip)
    ->Args({4096, 4096, 0})
    ->Args({4096, 4096, 1})
    ->Args({4096, 14336, 0})
    ->Args({4096, 14336, 1})
    ->Apply(one_shot);
BENCHMARK(BM_RTN)->Args({4096, 4096})->Apply(one_shot);
BENCHMARK(BM_GPTQ)
    ->Args({4096, 4096, 0})
    ->Args({4096, 4096, 1})
    ->Args({4096, 14336, 0})
    ->Args({8192, 8192, 0})
    ->Apply(one_shot);
BENCHMARK(BM_ReferenceDenseRefine)->Args({4096, 4096})->Apply(one_shot);
BENCHMARK_MAIN();
