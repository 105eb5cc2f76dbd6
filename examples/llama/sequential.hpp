#pragma once
/// \file sequential.hpp
/// GPTQ-style sequential calibration: layer by layer, in true-sequential groups
/// [q, k, v] → [o] → [up, gate] → [down], collect the calibration statistics of a group's
/// inputs (with every earlier group already quantized), quantize the group, and move on; the
/// next layer sees the outputs of the quantized layer.

#include "dist.hpp"
#include "forward.hpp"
#include "layer_quant.hpp"
#include "text.hpp"

#include <q2n/accumulators.hpp>
#include <q2n/null_space.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace llama {

/// Number of shards the Hessian sum is split into (fixed, so that the result depends on neither
/// the thread count nor the number of processes).
inline constexpr int kHessianShards = 8;

/// The calibration windows as the residual stream entering layer 0: the windows
/// [first, first + windows()) of `total`, stacked by rows (window first + s in rows
/// [sT, (s+1)T)). One process holds all of them; a rank of an MPI run its share (dist.hpp).
struct Calibration {
  Matrix inputs;
  Eigen::Index seqlen = 0;
  Eigen::Index first = 0;           ///< index of the first window held here
  Eigen::Index total = 0;           ///< windows of the whole run
  std::vector<std::size_t> starts;  ///< offsets of all windows in the calibration stream
  Eigen::Index windows() const { return seqlen ? inputs.rows() / seqlen : 0; }
};

/// Draws `n` windows of T tokens from `tokens` (seeded): all their starts, and this process's
/// share (dist.hpp) as the token ids of its windows one after the other; `inputs` is left for
/// the caller to embed. `who` names the caller in errors.
inline std::pair<Calibration, Tokens> draw_calibration(const Tokens& tokens, std::int64_t vocab,
                                                       Eigen::Index T, int n, std::uint64_t seed,
                                                       const char* who) {
  if (n <= 0) fail(who, ": nsamples = ", n, " must be positive");
  require_vocab(vocab, tokens, who);
  Calibration c;
  c.seqlen = T;
  c.total = n;
  c.starts = calibration_starts(tokens.size(), T, n, seed);
  const auto [first, last] = processes().calibration_windows(n, kHessianShards);
  c.first = first;
  Tokens ids;
  ids.reserve(static_cast<std::size_t>((last - first) * T));
  for (Eigen::Index s = first; s < last; ++s) {
    const auto p = tokens.begin() + static_cast<std::ptrdiff_t>(c.starts[static_cast<std::size_t>(s)]);
    ids.insert(ids.end(), p, p + T);
  }
  return {std::move(c), std::move(ids)};
}

/// Draws `n` windows of T tokens from `tokens` (seeded) and embeds this process's share.
inline Calibration capture_layer0_inputs(const Model& m, const Tokens& tokens, Eigen::Index T,
                                         int n, std::uint64_t seed) {
  auto [c, ids] = draw_calibration(tokens, m.config.vocab_size, T, n, seed,
                                   "llama::capture_layer0_inputs");
  c.inputs = embed(m, ids.data(), static_cast<Eigen::Index>(ids.size()));
  return std::move(c);
}

/// Calibration statistics of one group's inputs X ((S·T) × cols).
struct InputStats {
  Eigen::MatrixXd hessian;  ///< H = (2/N) Σ x xᵀ over all S·T tokens
  Eigen::MatrixXd abar;     ///< Ā (T × cols): per-position mean over the S windows (empty
                            ///< when not requested)
  Eigen::MatrixXf hessian_float;  ///< low_memory: H in float (= hessian.cast<float>()), which is
                                  ///< then left empty
};

/// H and Ā of X, windows of `seqlen` rows: the windows [first, first + X.rows()/seqlen) of
/// `total` (default: X holds them all). Definition (reproduced exactly by the tests): window
/// s goes to shard s·kHessianShards / total; each shard adds its windows one by one (one
/// HessianAccumulator::add per window); the shards are merged in shard order. Ā adds all
/// windows in order (only when `with_mean`: Q2N needs it, the quantizers do not). In an MPI
/// run every rank calls this with its own windows and gets the statistics of all of them
/// (dist.hpp). `low_memory`: the shards are summed one after the other (threads inside each
/// window's product) instead of side by side (one thread per shard), and H returned in float
/// only (hessian_float): two packed sums in memory instead of kHessianShards, the same numbers.
/// (The shards are summed one after the other with more ranks than shards too, whose sums pass
/// from rank to rank.)
inline InputStats input_stats(const Matrix& X, Eigen::Index seqlen, bool with_mean = true,
                              Eigen::Index first = 0, Eigen::Index total = -1,
                              bool low_memory = false) {
  const Eigen::Index local = X.rows() / seqlen;
  if (total < 0) total = local;
  const Processes& procs = processes();
  auto add_windows = [&](q2n::HessianAccumulator& acc, int k) {  // shard k's windows held here
    for (Eigen::Index s = first; s < first + local; ++s)
      if (s * kHessianShards / total == k) acc.add(X.middleRows((s - first) * seqlen, seqlen));
  };
  // Shard k's sum: this rank's windows of it, continuing the rank before's sum when the shard
  // spans ranks (more ranks than shards, dist.hpp); returns the rank that holds the sum.
  auto shard = [&](q2n::HessianAccumulator& acc, int k) {
    return procs.shard_sum(acc, k, total, kHessianShards, [&](q2n::HessianAccumulator& a) { add_windows(a, k); });
  };
  // One shard after the other (threads inside each window's product) with low_memory, and
  // when a shard's sum passes between ranks (outside any parallel region, then).
  const bool one_by_one = low_memory || procs.size() > kHessianShards;
  std::vector<q2n::HessianAccumulator> shards;
  for (int k = 0; k < (one_by_one ? 1 : kHessianShards); ++k) shards.emplace_back(X.cols());
  InputStats st;
  if (one_by_one) {
    procs.share(shards[0], shard(shards[0], 0));
    for (int k = 1; k < kHessianShards; ++k) {
      q2n::HessianAccumulator next(X.cols());
      procs.share(next, shard(next, k));
      shards[0].merge(next);
    }
  } else {
    // Each shard whole in one rank (no hand-on): the shards side by side, one thread each.
    std::vector<int> owner(kHessianShards);
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1)
#endif
    for (int k = 0; k < kHessianShards; ++k) owner[static_cast<std::size_t>(k)] = shard(shards[static_cast<std::size_t>(k)], k);
    for (int k = 0; k < kHessianShards; ++k) procs.share(shards[static_cast<std::size_t>(k)], owner[static_cast<std::size_t>(k)]);
    for (int k = 1; k < kHessianShards; ++k) shards[0].merge(shards[static_cast<std::size_t>(k)]);
  }
  if (low_memory)
    st.hessian_float = shards[0].hessian_as<float>();
  else
    st.hessian = shards[0].hessian();
  if (with_mean)
    st.abar = procs.ordered_mean(seqlen, X.cols(), [&](q2n::SampleMeanAccumulator& mean) {
      if (local > 0) mean.add_sequences(X, seqlen);
    }).mean();
  return st;
}

/// What happened to one linear layer during a pass: its result keeps the storage (refined
/// when Q2N ran) but not the dense Q, which the pass's model holds.
struct LinearRecord {
  int layer = 0;
  Proj proj = Proj::q;
  LinearResult result;
};

/// Options of a sequential pass.
struct PassOptions {
  MethodSpec spec;
  bool q2n_down_proj = false;  ///< apply Q2N to mlp.down_proj too (skipped by default)
  /// With spec.q2n: propagate the UNREFINED weights to the next layer and collect the refined
  /// ones in PassResult::twin, so one pass yields both the baseline and the +Q2N model (the
  /// +Q2N model's later layers are then calibrated on the baseline's inputs: an approximation).
  bool shared_twin = false;
  /// When set, every storage's values (scales, ...) are rounded to this precision right after
  /// the layer is quantized (and after Q2N's fold), and the model carries the rounded weights:
  /// the pass then evaluates, and calibrates later layers on, exactly what an export holds.
  std::optional<q2n::ValuePrecision> round_to;
  /// Hold less at once, for models that fill the machine's memory (streaming.hpp): the
  /// statistics' shards are summed one at a time and H is formed in float only, the type the
  /// quantizers work in (input_stats; the same weights, the errors then measured from the
  /// float H); down_proj's inputs are dropped while it is quantized and formed again for its
  /// output (quantize_layer). Slower.
  bool low_memory = false;
  /// Called after each layer ("layer i of n") for progress output.
  std::function<void(int layer, int layers)> on_layer;
  /// Called for every quantized linear with its calibration inputs ((S·T) × cols).
  std::function<void(int layer, Proj proj, const Matrix& inputs, const InputStats& stats,
                     const Matrix& W, const LinearResult& result)>
      on_linear;
};

/// Wall seconds of a pass by stage, summed over the layers: the forward passes through the
/// calibration windows, the statistics (H, Ā, and in an MPI run their exchange) and the
/// quantizers with Q2N (the null space, the refinement and the error measurements included).
struct PassTimes {
  double forward = 0, statistics = 0, quantization = 0;
};

/// Result of a sequential pass: the fake-quantized model and per-linear records.
struct PassResult {
  Model model;        ///< the quantized model (with shared_twin: the baseline, unrefined)
  Model twin;         ///< with shared_twin: the +Q2N model
  std::vector<LinearRecord> records;
  PassTimes times;
};

/// Rounds the stored values of both results of `r` to `p` (q2n::round_values) and recomputes
/// their dense Q from the rounded storage.
inline void round_result_values(LinearResult& r, q2n::ValuePrecision p) {
  q2n::QuantResult<float>* refined = r.refined ? &*r.refined : nullptr;
  for (q2n::QuantResult<float>* res : {&r.quantized, refined}) {
    if (!res) continue;
    q2n::round_values(res->storage, p);
    res->Q = q2n::dequantize(res->storage);
  }
}

namespace detail {

// Quantizes the linears of one group (all reading `inputs`) in place in `L`. With
// `drop_inputs` and opt.low_memory, `inputs` is released once its statistics are taken (the
// caller recomputes what it needs of them).
inline void quantize_group(DecoderLayer& L, DecoderLayer* twin, int layer, std::initializer_list<Proj> group,
                           Matrix& inputs, const Calibration& calib, const PassOptions& opt,
                           std::vector<LinearRecord>& records, PassTimes& times,
                           bool drop_inputs = false) {
  const bool is_down = *group.begin() == Proj::down;
  MethodSpec spec = opt.spec;
  if (is_down && !opt.q2n_down_proj) spec.q2n = false;
  const auto t0 = std::chrono::steady_clock::now();
  // Low memory: H comes in float, the type the quantizers convert it to anyway (the same
  // weights), and goes to them one copy at a time; the errors are then measured from the float
  // H (a relative difference of ~1e-7 in the reported errors). A dump needs the double H.
  const bool low_memory = opt.low_memory && !opt.on_linear;
  InputStats stats = input_stats(inputs, calib.seqlen, spec.q2n || opt.on_linear != nullptr,
                                 calib.first, calib.total, low_memory);
  Eigen::MatrixXf hf = std::move(stats.hessian_float);
  if (low_memory && drop_inputs) inputs.resize(0, 0);
  times.statistics += seconds_since(t0);
  const auto t1 = std::chrono::steady_clock::now();
  // One null space per group: the members share their inputs. QuIP refines in each linear's
  // own basis instead, from Ā itself.
  const bool own_basis = spec.method == Method::quip;
  std::optional<q2n::NullSpace<float>> ns;
  if (spec.q2n && !own_basis) ns = layer_null_space(stats.abar, spec.null_space);
  Eigen::MatrixXf abar;
  if (spec.q2n && own_basis) abar = stats.abar.cast<float>();
  // Each linear is quantized by its rank (one process: all of them), then the results go to
  // every rank in group order (dist.hpp). A dump needs the inputs beside each result: one
  // process only (the program refuses it with several).
  const Processes& procs = processes();
  std::vector<LinearRecord> done;
  for (Proj p : group) {
    LinearRecord rec;
    rec.layer = layer;
    rec.proj = p;
    if (procs.linear_owner(layer, static_cast<int>(p)) == procs.rank()) {
      const Linear& lin = L.linear(p);
      // H stays ours (a const lvalue: the quantizer converts a copy): the errors need it.
      // Every linear its own random transforms (QuIP): the seed mixes in its place.
      MethodSpec ls = spec;
      ls.transform_seed = linear_transform_seed(spec.transform_seed, layer, static_cast<int>(p));
      const q2n::NullSpace<float>* nsp = ns ? &*ns : nullptr;
      const Eigen::MatrixXf* ab = own_basis ? &abar : nullptr;
      rec.result = hf.size() ? quantize_linear(lin.weight, Eigen::MatrixXf(hf), nsp, ls, ab)
                             : quantize_linear(lin.weight, stats.hessian, nsp, ls, ab);
      if (opt.round_to) round_result_values(rec.result, *opt.round_to);
      if (hf.size())
        measure_errors(rec.result, HessianOutputError(lin.weight, hf));
      else
        measure_errors(rec.result, HessianOutputError(lin.weight, stats.hessian));
      if (opt.on_linear) opt.on_linear(layer, p, inputs, stats, lin.weight, rec.result);
    }
    done.push_back(std::move(rec));
  }
  for (LinearRecord& rec : done) {
    procs.share_result(rec.result, procs.linear_owner(layer, static_cast<int>(rec.proj)));
    Linear& lin = L.linear(rec.proj);
    if (twin) {
      twin->linear(rec.proj).weight = rec.result.final_result().Q;
      lin.weight = rec.result.quantized.Q;
    } else {
      lin.weight = rec.result.final_result().Q;
    }
    // The model holds the dense weights now; the record keeps the storage.
    rec.result.quantized.Q.resize(0, 0);
    if (rec.result.refined) rec.result.refined->Q.resize(0, 0);
    records.push_back(std::move(rec));
  }
  times.quantization += seconds_since(t1);
}

}  // namespace detail

/// Quantizes decoder layer `i` in place in `L` (and its +Q2N twin in `twin` when given) on the
/// residual stream `x` of the calibration windows entering it, and advances `x` through the
/// quantized layer. The records of its linears are appended to `records`; the statistics and
/// quantization seconds added to `times` (the caller times the whole).
inline void quantize_layer(DecoderLayer& L, DecoderLayer* twin, int i, const Config& c,
                           const Rope& rope, Matrix& x, const Calibration& calib,
                           const PassOptions& opt, std::vector<LinearRecord>& records,
                           PassTimes& times) {
  const Eigen::Index T = calib.seqlen, S = x.rows() / T;
  Matrix xn, att, y;
  // [q, k, v]: inputs are the normalized residual stream.
  rms_norm(x, L.input_norm, c.rms_norm_eps, xn);
  detail::quantize_group(L, twin, i, {Proj::q, Proj::k, Proj::v}, xn, calib, opt, records, times);
  // [o]: inputs are the attention outputs computed with the quantized q, k, v.
  att.resize(S * T, static_cast<Eigen::Index>(c.num_attention_heads) * c.head_dim);
#ifdef _OPENMP
#pragma omp parallel for schedule(dynamic, 1)
#endif
  for (Eigen::Index s = 0; s < S; ++s)
    att.middleRows(s * T, T) = attention_core(L, c, rope, xn.middleRows(s * T, T));
  detail::quantize_group(L, twin, i, {Proj::o}, att, calib, opt, records, times);
  // [up, gate]: inputs are the normalized stream after the quantized attention block.
  L.o.apply(att, y);
  att.resize(0, 0);  // (buffers are released once used: this pass also runs on models that
  x += y;            //  fill the machine's memory, streaming.hpp)
  y.resize(0, 0);
  rms_norm(x, L.post_norm, c.rms_norm_eps, xn);
  detail::quantize_group(L, twin, i, {Proj::up, Proj::gate}, xn, calib, opt, records, times);
  // [down]: inputs are silu(gate x) ⊙ up x with the quantized up and gate. With low_memory
  // they are dropped after their statistics, while down is quantized (the widest activations
  // and H would otherwise be live together), and formed again a panel at a time for down's
  // output: the same values (mlp_output_by_panels), two more products per layer.
  Matrix act = mlp_activation(L, xn);
  xn.resize(0, 0);
  detail::quantize_group(L, twin, i, {Proj::down}, act, calib, opt, records, times, true);
  if (act.size())
    L.down.apply(act, y);
  else
    mlp_output_by_panels(L, c, x, y);
  x += y;
}

/// Runs the sequential pass over all layers of `fp` (left untouched) and returns the
/// quantized copy.
inline PassResult quantize_sequential(const Model& fp, const Calibration& calib,
                                      const PassOptions& opt) {
  PassResult out;
  out.model = fp;
  Model& m = out.model;
  const bool twin = opt.shared_twin && opt.spec.q2n;
  if (twin) out.twin = fp;
  const Rope rope(m.config, calib.seqlen);
  Matrix x = calib.inputs;  // residual stream entering the current layer
  const int n_layers = static_cast<int>(m.layers.size());
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < n_layers; ++i) {
    DecoderLayer* tw = twin ? &out.twin.layers[static_cast<std::size_t>(i)] : nullptr;
    quantize_layer(m.layers[static_cast<std::size_t>(i)], tw, i, m.config, rope, x, calib, opt,
                   out.records, out.times);
    if (opt.on_layer) opt.on_layer(i, n_layers);
  }
  out.times.forward =
      detail::seconds_since(start) - out.times.statistics - out.times.quantization;
  return out;
}

}  // namespace llama
