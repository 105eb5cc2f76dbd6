#pragma once
/// \file dist.hpp
/// The processes of one run: a single one (q2n_llama), or the ranks of an MPI job
/// (q2n_llama_mpi, built when CMake finds MPI: `mpirun -np N q2n_llama_mpi …`).
///
/// Every rank reads the model and the data, draws the same calibration windows and runs the
/// same sequential pass over its own share of them:
/// - the calibration windows go out by the fixed shards of the Hessian sum (sequential.hpp:
///   window s of S is in shard s·K/S, K = kHessianShards; shard k belongs to rank k·N/K), so
///   every shard is accumulated by one rank exactly as one process accumulates it; with more
///   than K ranks, in contiguous blocks, a shard's running sum handed from rank to rank in
///   window order (shard_sum); the shards are then shared and merged in shard order;
/// - Ā is summed window by window in window order, the running sum handed from rank to rank;
/// - the linears of each true-sequential group are dealt out over the ranks (linear_owner):
///   each rank quantizes its own from the same H and Ā, then every result goes from its rank
///   to all (share_result, the bytes of wire.hpp), so all ranks hold the same weights and
///   records;
/// - evaluation windows are split into contiguous blocks; their NLLs are gathered and summed in
///   window order.
/// So the weights and the perplexities are bit-identical for any N. Forward passes and
/// statistics are divided by N, the quantizers of a group by up to its size (3, 1, 2, 1).
///
/// The messages themselves go through `transport` (transport.hpp), defined once per program:
/// dist_one.cpp (q2n_llama, the tests: one process, nothing to send) or dist_mpi.cpp
/// (q2n_llama_mpi, the only file that includes mpi.h). Everything else is compiled once for both.

#include "transport.hpp"
#include "wire.hpp"

#include <q2n/accumulators.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <utility>
#include <vector>

namespace llama {


/// Rank and size of the run (0 and 1 for a single process).
class Processes {
 public:
  Processes() : rank_(transport::rank()), size_(transport::size()) {}

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool root() const { return rank_ == 0; }

  /// Calibration windows [first, last) of S that this rank holds. Up to `shards` ranks: the
  /// windows of whole shards (shard k to rank k·N/shards), so each shard is summed in one
  /// rank; more ranks: contiguous blocks of windows, so a shard may be summed across
  /// neighbouring ranks, its running sum handed on (shard_sum).
  std::pair<Eigen::Index, Eigen::Index> calibration_windows(Eigen::Index S, int shards) const {
    return windows_of(rank_, S, shards);
  }

  /// Runs this rank's part of the sum of shard k of `shards` (S windows): receives the running
  /// sum from the rank before when that rank holds earlier windows of the shard, calls
  /// add(acc) for its own, and hands the sum on when the next rank holds later ones. Returns
  /// the rank holding the finished sum (the shard's last), for share().
  template <class Add>
  int shard_sum(q2n::HessianAccumulator& acc, int k, Eigen::Index S, int shards, Add&& add) const {
    // The shard's windows are [ceil(kS/K), ceil((k+1)S/K)); its holders a contiguous range.
    const auto K = static_cast<Eigen::Index>(shards);
    const Eigen::Index w0 = (k * S + K - 1) / K, w1 = ((k + 1) * S + K - 1) / K;
    int lo = -1, hi = -1;
    for (int r = 0; r < size_; ++r) {
      const auto [a, b] = windows_of(r, S, shards);
      if (std::max(a, w0) < std::min(b, w1)) {
        if (lo < 0) lo = r;
        hi = r;
      }
    }
    if (lo < 0) return 0;  // no windows: every rank's sum is the empty one
    if (rank_ < lo || rank_ > hi) return hi;
    if (rank_ > lo) receive(acc, rank_ - 1, kShardTags + 2 * k);
    add(acc);
    if (rank_ < hi) send(acc, rank_ + 1, kShardTags + 2 * k);
    return hi;
  }

  /// Evaluation windows [first, last) of n: contiguous blocks, the first n mod N one longer.
  std::pair<std::int64_t, std::int64_t> block(std::int64_t n) const { return block_of(rank_, n); }

  /// Gives every rank `owner`'s accumulator.
  void share(q2n::HessianAccumulator& acc, int owner) const {
    if (size_ == 1) return;
    Eigen::VectorXd sum = acc.packed_sum();
    std::int64_t tokens = acc.tokens();
    broadcast(sum, owner);
    transport::broadcast(&tokens, sizeof tokens, owner);
    acc = q2n::HessianAccumulator::from_packed_sum(acc.cols(), std::move(sum), tokens);
  }

  /// The rank that quantizes linear `index` (0…6 in the order q, k, v, o, up, gate, down) of
  /// decoder layer `layer`: dealt round the ranks in that order, layer after layer.
  int linear_owner(int layer, int index) const {
    return static_cast<int>((static_cast<std::int64_t>(layer) * 7 + index) % size_);
  }

  /// Gives every rank `owner`'s result (the others' `r` is replaced).
  void share_result(LinearResult& r, int owner) const {
    if (size_ == 1) return;
    Wire w;
    if (rank_ == owner) put(w, r);
    auto bytes = static_cast<std::uint64_t>(w.bytes().size());
    transport::broadcast(&bytes, sizeof bytes, owner);
    w.bytes().resize(static_cast<std::size_t>(bytes));
    transport::broadcast(w.bytes().data(), w.bytes().size(), owner);
    if (rank_ != owner) {
      r = get_linear_result(w);
      if (!w.consumed()) throw std::runtime_error("llama::Processes::share_result: bytes left over");
    }
  }

  /// Ā over all ranks' windows in window order: rank r takes the running sum from rank r−1,
  /// calls add(acc) for its own windows and hands it on; the last rank's sum goes to all.
  /// One process: add(acc) alone. `seqlen` and `cols` give the shape of the sum.
  template <class Add>
  q2n::SampleMeanAccumulator ordered_mean(Eigen::Index seqlen, Eigen::Index cols, Add&& add) const {
    q2n::SampleMeanAccumulator acc(cols);
    if (size_ == 1) {
      add(acc);
      return acc;
    }
    Eigen::MatrixXd sum(seqlen, cols);
    std::int64_t samples = 0;
    if (rank_ > 0) {
      transport::receive(&samples, sizeof samples, rank_ - 1, kMeanTags);
      transport::receive(sum.data(), bytes_of(sum), rank_ - 1, kMeanTags + 1);
      if (samples > 0) acc = q2n::SampleMeanAccumulator::from_sum(cols, sum, samples);
    }
    add(acc);
    samples = acc.samples();
    if (samples > 0) sum = acc.sum();
    if (rank_ + 1 < size_) {
      transport::send(&samples, sizeof samples, rank_ + 1, kMeanTags);
      transport::send(sum.data(), bytes_of(sum), rank_ + 1, kMeanTags + 1);
    }
    transport::broadcast(&samples, sizeof samples, size_ - 1);
    broadcast(sum, size_ - 1);
    return samples > 0 ? q2n::SampleMeanAccumulator::from_sum(cols, std::move(sum), samples)
                       : q2n::SampleMeanAccumulator(cols);
  }

  /// All n values in order, each rank contributing its block(n) (`mine`).
  std::vector<double> gather(const std::vector<double>& mine, std::int64_t n) const {
    if (size_ == 1) return mine;
    std::vector<int> counts(static_cast<std::size_t>(size_)), offsets(counts.size());
    for (int r = 0; r < size_; ++r) {
      const auto [first, last] = block_of(r, n);
      counts[static_cast<std::size_t>(r)] = static_cast<int>(last - first);
      offsets[static_cast<std::size_t>(r)] = static_cast<int>(first);
    }
    std::vector<double> all(static_cast<std::size_t>(n));
    transport::all_gather(mine.data(), static_cast<int>(mine.size()), all.data(), counts.data(),
                          offsets.data());
    return all;
  }

 private:
  // Rank r's calibration windows (calibration_windows()).
  std::pair<Eigen::Index, Eigen::Index> windows_of(int r, Eigen::Index S, int shards) const {
    if (size_ > shards) return block_of(r, S);
    Eigen::Index first = S, last = 0;
    for (Eigen::Index s = 0; s < S; ++s)
      if (static_cast<int>(s * shards / S) * static_cast<std::int64_t>(size_) / shards == r) {
        first = std::min(first, s);
        last = s + 1;
      }
    return first < last ? std::make_pair(first, last) : std::make_pair(Eigen::Index{0}, Eigen::Index{0});
  }

  // Message tags: Ā's running sum (ordered_mean) and shard k's (shard_sum) never share one.
  static constexpr int kMeanTags = 0, kShardTags = 2;

  template <class M>
  static std::size_t bytes_of(const M& m) {
    return static_cast<std::size_t>(m.size()) * sizeof(double);
  }
  template <class M>
  static void broadcast(M& m, int root) { transport::broadcast(m.data(), bytes_of(m), root); }
  static void send(const q2n::HessianAccumulator& acc, int to, int tag) {
    const std::int64_t tokens = acc.tokens();
    transport::send(&tokens, sizeof tokens, to, tag);
    transport::send(acc.packed_sum().data(), bytes_of(acc.packed_sum()), to, tag + 1);
  }
  static void receive(q2n::HessianAccumulator& acc, int from, int tag) {
    Eigen::VectorXd sum(acc.packed_sum().size());
    std::int64_t tokens = 0;
    transport::receive(&tokens, sizeof tokens, from, tag);
    transport::receive(sum.data(), bytes_of(sum), from, tag + 1);
    acc = q2n::HessianAccumulator::from_packed_sum(acc.cols(), std::move(sum), tokens);
  }

  // Rank r's block of n items.
  std::pair<std::int64_t, std::int64_t> block_of(int r, std::int64_t n) const {
    const std::int64_t q = n / size_, rem = n % size_;
    const std::int64_t first = r * q + std::min<std::int64_t>(r, rem);
    return {first, first + q + (r < rem ? 1 : 0)};
  }

  int rank_ = 0;
  int size_ = 1;
};

/// The run's processes (the transport::Session must be open before the first call).
inline const Processes& processes() {
  static const Processes p;
  return p;
}

}  // namespace llama
