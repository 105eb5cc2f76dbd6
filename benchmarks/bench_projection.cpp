// Cost of the Q2N projection: the null-space spectrum by each dense route, and the
// closed-form equivalent vector for a 4096-row layer. float, LLM-like activations.
#include <q2n/projection.hpp>

#include <benchmark/benchmark.h>

#include <random>

namespace {

// Sample-averaged activations with LLM-like structure: low-rank content, outlier channels,
// a massive first position, small noise.
Eigen::MatrixXf make_abar(Eigen::Index seqlen, Eigen::Index cols, std::uint32_t seed = 1) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd;
  auto gauss = [&](Eigen::Index r, Eigen::Index c) {
    Eigen::MatrixXf m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = nd(gen);
    return m;
  };
  const Eigen::Index rank = 32;
  Eigen::MatrixXf a = gauss(seqlen, rank) * gauss(rank, cols) / float(rank);
  a += 0.05f * gauss(seqlen, cols);
  for (Eigen::Index c = 0; c < cols; c += 97) a.col(c) *= 20.f;
  a.row(0) *= 50.f;
  return a;
}

void spectrum(benchmark::State& state, q2n::SpectrumRoute route) {
  const Eigen::Index cols = state.range(0), seqlen = state.range(1);
  const Eigen::MatrixXf abar = make_abar(seqlen, cols);
  Eigen::Index kept = 0;
  for (auto _ : state) {
    auto ns = q2n::NullSpace<float>::compute(abar, {0.1, q2n::CutRule::paper, route});
    kept = ns.kept();
    benchmark::DoNotOptimize(ns.kept_basis().data());
  }
  state.counters["kept"] = double(kept);
}

void BM_NullSpaceCovariance(benchmark::State& s) { spectrum(s, q2n::SpectrumRoute::covariance); }
void BM_NullSpaceGram(benchmark::State& s) { spectrum(s, q2n::SpectrumRoute::gram); }

void BM_EquivalentVector(benchmark::State& state) {
  const Eigen::Index rows = 4096, cols = state.range(0), seqlen = state.range(1);
  const auto ns = q2n::NullSpace<float>::compute(make_abar(seqlen, cols));
  const Eigen::MatrixXf w = Eigen::MatrixXf::Random(rows, cols) * 0.02f;
  const Eigen::MatrixXf q = (w / 0.01f).array().round().matrix() * 0.01f;
  for (auto _ : state) benchmark::DoNotOptimize(q2n::equivalent_vector(w, q, ns).data());
  state.counters["kept"] = double(ns.kept());
}

void shapes(benchmark::internal::Benchmark* b) {
  for (long cols : {512, 1024, 2048, 4096})
    for (long seqlen : {256, 2048}) b->Args({cols, seqlen});
  for (long seqlen : {512, 1024}) b->Args({4096, seqlen});
  b->Unit(benchmark::kMillisecond)->Iterations(1)->Repetitions(1);
}

}  // namespace

BENCHMARK(BM_NullSpaceGram)->Apply(shapes);
BENCHMARK(BM_NullSpaceCovariance)->Apply(shapes);
BENCHMARK(BM_EquivalentVector)->Apply(shapes);
BENCHMARK_MAIN();
