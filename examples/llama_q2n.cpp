// q2n_llama: quantize a real (tiny) Llama model end to end with RTN, GPTQ, OWQ, PB-LLM,
// LeanQuant, QuIP and QuaRot, each without and with the Q2N refinement on the same calibration
// data, and compare held-out perplexity. Run with --help for the options; examples/README.md walks
// through the output. Built with MPI (q2n_llama_mpi), `mpirun -np N` shares the work among N
// processes with bit-identical results (llama/dist.hpp).

#include "llama/cli.hpp"
#include "llama/dump.hpp"
#include "llama/dist.hpp"
#include "llama/report.hpp"
#include "llama/rotation.hpp"
#include "llama/sequential.hpp"
#include "llama/streaming.hpp"

#include <q2n/reproducibility.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <limits>
#include <utility>
#include <vector>

#if __has_include(<malloc.h>)
#include <malloc.h>  // mallopt (glibc)
#endif

#ifndef Q2N_EXAMPLE_DATA_DIR
#error "Q2N_EXAMPLE_DATA_DIR must name examples/data"
#endif

namespace {

using llama::Method;
using llama::MethodSpec;
using llama::Options;

void set_threads(int threads) {
  if (threads <= 0) return;
#ifdef _OPENMP
  omp_set_num_threads(threads);
#endif
  Eigen::setNbThreads(threads);
}

// Fails before any work when --group does not divide a layer's inputs (RTN would only notice
// at its first layer; the others would after a whole calibration pass).
void check_groupsize(const llama::Config& c, Eigen::Index groupsize) {
  if (groupsize <= 0) return;
  const std::pair<llama::Proj, std::int64_t> inputs[] = {
      {llama::Proj::q, c.hidden_size},
      {llama::Proj::o, std::int64_t{c.num_attention_heads} * c.head_dim},
      {llama::Proj::down, c.intermediate_size}};  // (k, v, up, gate read what q reads)
  for (const auto& [p, in] : inputs)
    if (in % groupsize != 0)
      llama::fail("q2n_llama: --group ", groupsize, " does not divide the ", in, " inputs of ",
                  llama::proj_name(p), "; pass a divisor or 0 (one group per row)");
}

// The quantized configurations, in run order: every method at every --bits (PB-LLM once,
// its bits are its own), each with the shared settings of o.spec.
std::vector<MethodSpec> configurations(const Options& o, const llama::Config& c) {
  std::vector<MethodSpec> specs;
  for (Method method : o.methods) {
    if (method == Method::rtn) check_groupsize(c, o.spec.groupsize);
    const std::vector<int> bits =
        method == Method::pbllm ? std::vector<int>{o.bits.front()} : o.bits;
    for (int b : bits) {
      MethodSpec s = o.spec;
      s.method = method;
      s.grid.bits = b;
      if (method == Method::leanquant || method == Method::quip) s.groupsize = -1;  // no groups
      if (method == Method::quarot) {  // QuaRot's weights: symmetric, clip searched, per row
        s.grid.sym = true;
        s.grid.mse = true;
        if (!o.group_given) s.groupsize = -1;
      }
      for (auto f : o.exports) llama::check_exportable(f, s, c);
      specs.push_back(s);
    }
  }
  const std::size_t variants = (o.q2n.off ? 1u : 0u) + (o.q2n.on ? 1u : 0u);
  const std::size_t configs = specs.size() * variants * static_cast<std::size_t>(o.seeds);
  if ((!o.save_dir.empty() || !o.dump_file.empty()) && configs > 1)
    llama::fail("q2n_llama: --save / --dump-file need exactly one quantized configuration, but ",
                configs, " were selected; narrow --methods, --bits, --q2n and --seeds");
  return specs;
}

// quarot's starting point for one seed: the rotated float model, its calibration inputs (the
// same windows as the others') and its perplexity on the evaluation windows.
struct RotatedStart {
  llama::Model model;
  llama::Calibration calib;
  double ppl = NAN;
};

std::shared_ptr<const RotatedStart> rotated_start(const llama::Model& fp, const Options& o,
                                                  const llama::Tokens& calib_tokens,
                                                  const llama::Tokens& eval_tokens,
                                                  std::uint64_t seed) {
  auto s = std::make_shared<RotatedStart>();
  s->model = fp;
  llama::RotationSource src;
  src.seed = seed;
  src.file = o.rotation_file;
  llama::rotate_model(s->model, *llama::residual_rotation(fp.config, src));
  s->calib = llama::capture_layer0_inputs(s->model, calib_tokens, o.seqlen, o.nsamples, seed);
  s->ppl = llama::perplexity(s->model, eval_tokens, o.seqlen, o.eval_windows).ppl();
  return s;
}

// The ±Q2N models of one configuration. Separate passes by default; with --shared-pass and
// both variants, one pass yields both (the baseline propagates, the refined weights ride along).
class Passes {
 public:
  Passes(const llama::Model& fp, const llama::Calibration& calib, const Options& o)
      : fp_(fp), calib_(calib), shared_(o.shared_pass && o.q2n.off && o.q2n.on) {}
  // From a start of the configuration's own (quarot: the rotated model), kept alive here.
  Passes(std::shared_ptr<const RotatedStart> start, const Options& o)
      : Passes(start->model, start->calib, o) {
    start_ = std::move(start);
  }

  // The rotated float model's perplexity (quarot), else NaN.
  double rotated_float_ppl() const { return start_ ? start_->ppl : NAN; }

  bool shared() const { return shared_; }

  // The model of `po.spec` (po.spec.q2n selects the variant); the baseline comes first.
  llama::PassResult take(llama::PassOptions po) {
    if (!shared_) return llama::quantize_sequential(fp_, calib_, po);
    if (po.spec.q2n) return twin();
    po.spec.q2n = true;
    po.shared_twin = true;
    both_ = llama::quantize_sequential(fp_, calib_, po);
    llama::PassResult base;
    base.model = std::move(both_->model);
    base.times = both_->times;
    base.records = both_->records;
    for (auto& rec : base.records) {  // the baseline's layers are the unrefined ones
      rec.result.refined.reset();
      rec.result.err_after = rec.result.err_before;
    }
    return base;
  }

 private:
  llama::PassResult twin() {
    llama::PassResult r;
    r.model = std::move(both_->twin);
    r.records = std::move(both_->records);
    r.times = both_->times;
    return r;
  }

  const llama::Model& fp_;
  const llama::Calibration& calib_;
  bool shared_;
  std::optional<llama::PassResult> both_;
  std::shared_ptr<const RotatedStart> start_;
};

// Pass options of one variant: progress on stderr and, with --dump-file, the dump hook.
llama::PassOptions pass_options(const Options& o, const MethodSpec& spec, const std::string& label,
                                std::pair<int, llama::Proj> dump_target) {
  llama::PassOptions po;
  po.spec = spec;
  po.q2n_down_proj = o.q2n_down_proj;
  if (!o.exports.empty()) po.round_to = q2n::ValuePrecision::f16;
  po.on_layer = [label](int i, int n) {
    std::cerr << label << " layer " << i + 1 << " of " << n << " quantized ("
              << llama::fmt(llama::elapsed_seconds(), 1) << " s elapsed)\n";
  };
  if (!o.dump_file.empty())
    po.on_linear = [&o, spec, dump_target](int layer, llama::Proj p, const llama::Matrix& inputs,
                                           const llama::InputStats& st, const llama::Matrix& W,
                                           const llama::LinearResult& r) {
      if (layer == dump_target.first && p == dump_target.second)
        llama::write_dump(o.dump_file, spec, o.seqlen, layer, p, inputs, st, W, r);
    };
  return po;
}

// The evaluation or calibration stream: bytes of `text`, or the ids of the token file `tokens`
// (cli.hpp makes sure exactly one is set); at least one window and its next-token target.
llama::Tokens read_data(const Options& o, const std::string& text, const std::string& tokens,
                        const llama::Config& c, const std::string& what) {
  const std::size_t window = static_cast<std::size_t>(o.seqlen) + 1;
  return tokens.empty()
             ? llama::read_text_tokens(text, c.vocab_size, window, what)
             : llama::read_token_file(tokens, o.token_dtype, c.vocab_size, window, what);
}

// Perplexity of a quantized model, with the pass's figures.
llama::Run evaluate(const llama::PassResult& pr, llama::Run run,
                    const llama::Tokens& eval_tokens, const Options& o) {
  const double t = llama::elapsed_seconds();
  const llama::Perplexity p = llama::perplexity(pr.model, eval_tokens, o.seqlen, o.eval_windows);
  run.eval_seconds = llama::elapsed_seconds() - t;
  run.ppl = p.ppl();
  run.windows = p.windows;
  run.weight_bits = llama::weight_bits(run.spec, pr.model.config.hidden_size);
  llama::summarize_records(pr.records, run);
  return run;
}

// The runs of the sweep in order: every seed, configuration and ±Q2N variant selected, each
// handed to `quantize` with its spec, seed and progress label filled in (the configuration's
// ±Q2N passes share `per_config(seed, spec)`, built once per configuration).
template <class PerConfig, class Quantize>
void for_each_run(const Options& o, const std::vector<MethodSpec>& specs, PerConfig&& per_config,
                  Quantize&& quantize) {
  for (int k = 0; k < o.seeds && !specs.empty(); ++k) {
    const std::uint64_t seed = o.seed + static_cast<std::uint64_t>(k);
    for (const MethodSpec& base : specs) {
      auto shared = per_config(seed, base);
      for (bool use_q2n : {false, true}) {
        if (!(use_q2n ? o.q2n.on : o.q2n.off)) continue;
        llama::Run run;
        run.spec = base;
        run.spec.q2n = use_q2n;
        run.seed = seed;
        run.inference = o.inference;
        run.spec.transform_seed = seed;  // QuIP's transforms vary with the seed too
        const std::string label =
            "[" + llama::spec_label(run.spec) + " seed " + std::to_string(seed) + "]";
        quantize(std::move(run), label, shared);
      }
    }
  }
}

void print_run(const std::string& label, const llama::Run& run, const llama::PassTimes& t) {
  std::cerr << label << " ppl " << llama::fmt(run.ppl, 4) << " (pass "
            << llama::fmt(run.pass_seconds, 1) << " s: forward " << llama::fmt(t.forward, 1)
            << ", statistics " << llama::fmt(t.statistics, 1) << ", quantization "
            << llama::fmt(t.quantization, 1) << "; eval " << llama::fmt(run.eval_seconds, 1)
            << " s)\n";
}

void check_seqlen(const Options& o, const llama::Config& c) {
  if (c.max_position_embeddings > 0 && o.seqlen > c.max_position_embeddings)
    llama::fail("q2n_llama: --seqlen ", o.seqlen, " exceeds max_position_embeddings = ",
                c.max_position_embeddings, " of ", o.model_dir, "/config.json");
}

void announce(const Options& o, const llama::Config& c, const char* what) {
  std::cerr << "q2n_llama: " << o.model_dir << ": " << c.num_hidden_layers << " layers, hidden "
            << c.hidden_size << ", heads " << c.num_attention_heads << "/"
            << c.num_key_value_heads << "; " << what << "\n";
}

// --stream: each configuration is one pass over the checkpoint, read layer by layer; the first
// also carries the float model's evaluation windows (its seconds are the two streams').
void run_streaming(const Options& o) {
#ifdef M_MMAP_THRESHOLD
  // Buffers of tens of MB come and go layer by layer. glibc raises its mapping threshold after
  // the first large free and then keeps such buffers in its heap, where freed memory stays
  // resident; a fixed threshold maps each one and returns it when freed, so the resident size
  // follows what the pass holds (measured: ~40 MB less at the peak on the 12-layer benchmark).
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
#endif
  const llama::ModelSource src(o.model_dir);
  const llama::Config& c = src.config();
  check_seqlen(o, c);
  const llama::Tokens eval_tokens =
      read_data(o, o.eval_text, o.eval_tokens, c, "the perplexity evaluation");
  const llama::Tokens calib_tokens =
      read_data(o, o.calib_text, o.calib_tokens, c, "the calibration windows");
  const std::vector<MethodSpec> specs = configurations(o, c);
  announce(o, c, "streaming its layers");
  llama::Report report(o);
  bool first = true;
  for_each_run(o, specs, [](std::uint64_t, const MethodSpec&) { return 0; },
               [&](llama::Run run, const std::string& label, int) {
    llama::StreamOptions so;
    so.pass = pass_options(o, run.spec, label, {-1, llama::Proj::q});
    so.pass.low_memory = true;
    so.save_dir = o.save_dir;
    so.evaluate_float = first;
    so.eval_windows = o.eval_windows;
    const double t0 = llama::elapsed_seconds();
    const llama::StreamResult r = llama::quantize_streaming(src, calib_tokens, o.seqlen,
                                                            o.nsamples, run.seed, eval_tokens, so);
    if (first) report.add_float(r.fp, r.eval_seconds);
    first = false;
    run.eval_seconds = r.eval_seconds;
    run.pass_seconds = llama::elapsed_seconds() - t0 - r.eval_seconds;
    run.ppl = r.quantized.ppl();
    run.windows = r.quantized.windows;
    run.weight_bits = llama::weight_bits(run.spec, c.hidden_size);
    llama::summarize_records(r.records, run);
    print_run(label, run, r.times);
    report.add(run);
  });
  if (llama::processes().root()) report.finish();
}

int run(int argc, char** argv) {
  const Options o = llama::parse_options(argc, argv, Q2N_EXAMPLE_DATA_DIR);
  if (o.help) {
    std::cout << llama::usage();
    return 0;
  }
  set_threads(o.threads);
  llama::elapsed_seconds();
  const llama::Processes& procs = llama::processes();
  if (procs.size() > 1 && !o.dump_file.empty())
    llama::fail("q2n_llama: --dump-file needs all calibration windows in one process; run it "
                "without mpirun");
  if (o.stream) {
    run_streaming(o);
    return 0;
  }

#ifdef M_MMAP_MAX
  // The whole model is in memory anyway: keep every freed buffer in the heap for the next one.
  // By default glibc maps each buffer of 32 MiB or more afresh and unmaps it when freed, so each
  // H shard, product and copy of a large layer faults all its pages in again; on this project's
  // VM that doubled the calibration pass (12-layer benchmark, 8 windows, one thread: 77.8 s,
  // 43.8 s with the heap; the same results).
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, std::numeric_limits<int>::max());
#endif

  // Load.
  const llama::Model fp = llama::load_model(o.model_dir);
  const llama::Config& c = fp.config;
  check_seqlen(o, c);
  const llama::Tokens eval_tokens = read_data(o, o.eval_text, o.eval_tokens, fp.config,
                                              "the perplexity evaluation");
  llama::Tokens calib_tokens;
  if (!o.methods.empty())
    calib_tokens = read_data(o, o.calib_text, o.calib_tokens, fp.config, "the calibration windows");
  const std::vector<MethodSpec> specs = configurations(o, c);
  std::pair<int, llama::Proj> dump_target{-1, llama::Proj::q};
  if (!o.dump_file.empty())
    dump_target = llama::parse_dump_target(o.dump_linear, c.num_hidden_layers);

  // The float model.
  announce(o, c, "evaluating the float model");
  llama::Report report(o);
  const double t = llama::elapsed_seconds();
  const llama::Perplexity pf = llama::perplexity(fp, eval_tokens, o.seqlen, o.eval_windows);
  report.add_float(pf, llama::elapsed_seconds() - t);
  // Files are written by the first process only (every process holds the same model).
  if (o.methods.empty() && !o.save_dir.empty() && procs.root()) llama::save_model(fp, o.save_dir);
  if (o.methods.empty() && !o.exports.empty() && procs.root()) {
    std::map<std::string, std::string> paths;
    for (auto f : o.exports)
      paths[llama::export_format_name(f)] =
          llama::export_model(f, fp, nullptr, nullptr, o.export_dir, o.seqlen);
    report.add_export(paths);
  }

  // Calibrate once per seed (quarot: rotate once per seed, and calibrate the rotated model);
  // quantize ±Q2N, evaluate and report.
  std::optional<llama::Calibration> calib;
  std::uint64_t calib_seed = 0;
  std::shared_ptr<const RotatedStart> rotated;
  std::uint64_t rotated_seed = 0;
  for_each_run(o, specs,
               [&](std::uint64_t seed, const MethodSpec& spec) {
                 if (spec.method == Method::quarot) {
                   if (!rotated || rotated_seed != seed)
                     rotated = rotated_start(fp, o, calib_tokens, eval_tokens, seed);
                   rotated_seed = seed;
                   return std::make_shared<Passes>(rotated, o);
                 }
                 if (!calib || calib_seed != seed)
                   calib = llama::capture_layer0_inputs(fp, calib_tokens, o.seqlen, o.nsamples,
                                                        seed);
                 calib_seed = seed;
                 return std::make_shared<Passes>(fp, *calib, o);
               },
               [&](llama::Run run, const std::string& label, std::shared_ptr<Passes>& passes) {
    run.shared_pass = passes->shared() && run.spec.q2n;
    run.rotated_float_ppl = passes->rotated_float_ppl();
    const double t0 = llama::elapsed_seconds();
    llama::PassResult pr = passes->take(pass_options(o, run.spec, label, dump_target));
    run.pass_seconds = llama::elapsed_seconds() - t0;
    // Activations are quantized at inference only: the calibration saw them in float.
    llama::set_inference_bits(pr.model, o.inference);
    run = evaluate(pr, std::move(run), eval_tokens, o);
    for (auto f : procs.root() ? o.exports : std::vector<llama::ExportFormat>{})
      run.exports[llama::export_format_name(f)] =
          llama::export_model(f, pr.model, &pr.records, &run.spec, o.export_dir, o.seqlen);
    print_run(label, run, pr.times);
    report.add(run);
    if (!o.save_dir.empty() && procs.root()) llama::save_model(pr.model, o.save_dir);
  });
  if (procs.root()) report.finish();
  return 0;
}


// Every rank computes the same results; only the first prints them. The others keep stderr
// for errors.
struct QuietUnlessRoot {
  std::streambuf* out = nullptr;
  std::streambuf* err = nullptr;
  QuietUnlessRoot() {
    if (llama::processes().root()) return;
    out = std::cout.rdbuf(nullptr);
    err = std::cerr.rdbuf(nullptr);
  }
  void restore_stderr() {
    if (err) std::cerr.rdbuf(err);
    std::cerr.clear();
  }
  ~QuietUnlessRoot() {
    if (out) std::cout.rdbuf(out);
    restore_stderr();
  }
};

int fail_with(QuietUnlessRoot& quiet, const std::exception& e, int code) {
  quiet.restore_stderr();
  const llama::Processes& procs = llama::processes();
  std::string message = "error: ";
  if (!procs.root()) message += "(process " + std::to_string(procs.rank()) + ") ";
  std::cerr << message + e.what() + "\n" << std::flush;  // one write: ranks share the terminal
  if (procs.size() > 1) llama::transport::abort(code);
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  q2n::pin_product_blocking();  // the same bits on any machine (q2n/reproducibility.hpp)
  llama::transport::Session session(argc, argv);
  QuietUnlessRoot quiet;
  try {
    return run(argc, argv);
  } catch (const std::invalid_argument& e) {
    return fail_with(quiet, e, 2);
  } catch (const std::runtime_error& e) {
    return fail_with(quiet, e, 2);
  } catch (const std::exception& e) {
    return fail_with(quiet, e, 1);
  }
}
