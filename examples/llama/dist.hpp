#pragma once
/// \file dist.hpp
/// The processes of one run: a single one (q2n_llama), or the ranks of an MPI job
/// (q2n_llama_mpi, built when CMake finds MPI: `mpirun -np N q2n_llama_mpi …`).
///
/// Every rank reads the model and the data, draws the same calibration windows and runs the
/// same sequential pass over its own share of them:
/// - the calibration windows go out by the fixed shards of the Hessian sum (sequential.hpp:
///   window s of S is in shard s·K/S, K = kHessianShards; shard k belongs to rank k·N/K), so
///   every shard is accumulated by one rank exactly as one process accumulates it; the shards
///   are then shared and merged in shard order;
/// - Ā is summed window by window in window order, the running sum handed from rank to rank;
/// - every rank quantizes every linear from the same H and Ā (the quantizers do not depend on
///   the thread count, so all ranks hold the same weights);
/// - evaluation windows are split into contiguous blocks; their NLLs are gathered and summed in
///   window order.
/// So the weights and the perplexities are bit-identical for any N ≤ K. Forward passes and
/// statistics are divided by N; the quantizers are not (each rank runs them all).
///
/// Without Q2N_LLAMA_MPI everything here is the single process's trivial case.

#include <q2n/accumulators.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#ifdef Q2N_LLAMA_MPI
#include <mpi.h>
#endif

namespace llama {

/// Rank and size of the run (0 and 1 for a single process).
class Processes {
 public:
  Processes() {
#ifdef Q2N_LLAMA_MPI
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (initialized) {
      MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
      MPI_Comm_size(MPI_COMM_WORLD, &size_);
    }
#endif
  }

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool root() const { return rank_ == 0; }

  /// The rank that accumulates shard k of `shards`.
  int shard_owner(int k, int shards) const {
    return static_cast<int>(static_cast<std::int64_t>(k) * size_ / shards);
  }

  /// Calibration windows [first, last) of S that this rank holds: those of its shards
  /// (contiguous, since shard and owner both grow with the window index).
  std::pair<Eigen::Index, Eigen::Index> calibration_windows(Eigen::Index S, int shards) const {
    Eigen::Index first = S, last = 0;
    for (Eigen::Index s = 0; s < S; ++s)
      if (shard_owner(static_cast<int>(s * shards / S), shards) == rank_) {
        first = std::min(first, s);
        last = s + 1;
      }
    return first < last ? std::make_pair(first, last) : std::make_pair(Eigen::Index{0}, Eigen::Index{0});
  }

  /// Evaluation windows [first, last) of n: contiguous blocks, the first n mod N one longer.
  std::pair<std::int64_t, std::int64_t> block(std::int64_t n) const { return block_of(rank_, n); }

  /// Gives every rank `owner`'s accumulator.
  void share(q2n::HessianAccumulator& acc, int owner) const {
#ifdef Q2N_LLAMA_MPI
    if (size_ == 1) return;
    Eigen::MatrixXd sum = acc.sum();
    std::int64_t tokens = acc.tokens();
    MPI_Bcast(sum.data(), static_cast<int>(sum.size()), MPI_DOUBLE, owner, MPI_COMM_WORLD);
    MPI_Bcast(&tokens, 1, MPI_INT64_T, owner, MPI_COMM_WORLD);
    acc = q2n::HessianAccumulator::from_sum(std::move(sum), tokens);
#else
    (void)acc;
    (void)owner;
#endif
  }

  /// Ā over all ranks' windows in window order: rank r takes the running sum from rank r−1,
  /// calls add(acc) for its own windows and hands it on; the last rank's sum goes to all.
  /// One process: add(acc) alone. `seqlen` and `cols` give the shape of the sum.
  template <class Add>
  q2n::SampleMeanAccumulator ordered_mean(Eigen::Index seqlen, Eigen::Index cols, Add&& add) const {
    q2n::SampleMeanAccumulator acc(cols);
#ifdef Q2N_LLAMA_MPI
    if (size_ > 1) {
      Eigen::MatrixXd sum(seqlen, cols);
      std::int64_t samples = 0;
      if (rank_ > 0) {
        MPI_Recv(&samples, 1, MPI_INT64_T, rank_ - 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Recv(sum.data(), static_cast<int>(sum.size()), MPI_DOUBLE, rank_ - 1, 1,
                 MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        if (samples > 0) acc = q2n::SampleMeanAccumulator::from_sum(cols, sum, samples);
      }
      add(acc);
      samples = acc.samples();
      if (samples > 0) sum = acc.sum();
      if (rank_ + 1 < size_) {
        MPI_Send(&samples, 1, MPI_INT64_T, rank_ + 1, 0, MPI_COMM_WORLD);
        MPI_Send(sum.data(), static_cast<int>(sum.size()), MPI_DOUBLE, rank_ + 1, 1, MPI_COMM_WORLD);
      }
      MPI_Bcast(&samples, 1, MPI_INT64_T, size_ - 1, MPI_COMM_WORLD);
      MPI_Bcast(sum.data(), static_cast<int>(sum.size()), MPI_DOUBLE, size_ - 1, MPI_COMM_WORLD);
      return samples > 0 ? q2n::SampleMeanAccumulator::from_sum(cols, std::move(sum), samples)
                         : q2n::SampleMeanAccumulator(cols);
    }
#endif
    (void)seqlen;
    add(acc);
    return acc;
  }

  /// All n values in order, each rank contributing its block(n) (`mine`).
  std::vector<double> gather(const std::vector<double>& mine, std::int64_t n) const {
#ifdef Q2N_LLAMA_MPI
    if (size_ > 1) {
      std::vector<int> counts(static_cast<std::size_t>(size_)), offsets(counts.size());
      for (int r = 0; r < size_; ++r) {
        const auto [first, last] = block_of(r, n);
        counts[static_cast<std::size_t>(r)] = static_cast<int>(last - first);
        offsets[static_cast<std::size_t>(r)] = static_cast<int>(first);
      }
      std::vector<double> all(static_cast<std::size_t>(n));
      MPI_Allgatherv(mine.data(), static_cast<int>(mine.size()), MPI_DOUBLE, all.data(),
                     counts.data(), offsets.data(), MPI_DOUBLE, MPI_COMM_WORLD);
      return all;
    }
#endif
    (void)n;
    return mine;
  }

 private:
  // Rank r's block of n items.
  std::pair<std::int64_t, std::int64_t> block_of(int r, std::int64_t n) const {
    const std::int64_t q = n / size_, rem = n % size_;
    const std::int64_t first = r * q + std::min<std::int64_t>(r, rem);
    return {first, first + q + (r < rem ? 1 : 0)};
  }

  int rank_ = 0;
  int size_ = 1;
};

/// The run's processes (MPI must be initialized before the first call).
inline const Processes& processes() {
  static const Processes p;
  return p;
}

}  // namespace llama
