// q2n_llama: quantize a real (tiny) Llama model end to end with RTN, GPTQ, OWQ and PB-LLM,
// each without and with the Q2N refinement on the same calibration data, and compare held-out
// perplexity. Run with --help for the options; examples/README.md walks through the output.

#include "llama/cli.hpp"
#include "llama/sequential.hpp"

#include <q2n/io/safetensors.hpp>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <sstream>
#include <string>
#include <vector>

#ifndef Q2N_EXAMPLE_DATA_DIR
#error "Q2N_EXAMPLE_DATA_DIR must name examples/data"
#endif

namespace {

using llama::Method;
using llama::MethodSpec;

double now_seconds() {
  using clock = std::chrono::steady_clock;
  static const clock::time_point t0 = clock::now();
  return std::chrono::duration<double>(clock::now() - t0).count();
}

std::string fmt(double v, int prec) {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

std::string fmt_sci(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.4e", v);
  return buf;
}

/// One evaluated configuration.
struct Run {
  MethodSpec spec;
  std::uint64_t seed = 0;
  double ppl = 0;
  double weight_bits = 0;
  double err_before = 0;  ///< mean relative output error before Q2N, over the refined linears
  double err_after = 0;   ///< … after Q2N (equal to err_before without Q2N)
  double err_all = 0;     ///< mean over all quantized linears of the final error
  double mean_kept = 0;   ///< mean Q2N kept rank over refined linears
  int refined = 0;        ///< linears Q2N was applied to
  double pass_seconds = 0, eval_seconds = 0;
  bool shared_pass = false;
};

nlohmann::json run_json(const Run& r, const llama::Options& o, std::int64_t windows) {
  nlohmann::json j;
  j["method"] = llama::method_name(r.spec.method);
  if (r.spec.method == Method::pbllm) {
    j["bits"] = std::round(r.weight_bits * 1e4) / 1e4;
    j["pb_low_frac"] = r.spec.pb_low_frac;
    j["pb_high_bit"] = r.spec.pb_high_bit;
  } else {
    j["bits"] = r.spec.bits;
  }
  j["group"] = r.spec.groupsize > 0 ? nlohmann::json(r.spec.groupsize) : nlohmann::json(nullptr);
  j["q2n"] = r.spec.q2n;
  j["seed"] = r.seed;
  j["ppl"] = r.ppl;
  j["seconds"] = r.pass_seconds + r.eval_seconds;
  j["pass_seconds"] = r.pass_seconds;
  j["eval_seconds"] = r.eval_seconds;
  j["err_before"] = r.err_before;
  j["err_after"] = r.err_after;
  j["err_all"] = r.err_all;
  if (r.spec.q2n) {
    j["threshold"] = r.spec.null_space.threshold;
    j["lambda"] = r.spec.lambda;
    j["mean_kept"] = r.mean_kept;
    j["shared_pass"] = r.shared_pass;
  }
  if (r.spec.method == Method::owq) j["owq_extra_bits"] = r.spec.owq_extra_bits;
  j["nsamples"] = o.nsamples;
  j["eval_windows"] = windows;
  return j;
}

double mean(const std::vector<double>& v) {
  return v.empty() ? NAN : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

double sample_sd(const std::vector<double>& v) {
  if (v.size() < 2) return NAN;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

/// One table row: a method at one bit width, baseline vs +Q2N over all seeds.
struct Row {
  std::vector<std::string> cells;
};

struct Table {
  std::vector<std::string> header;
  std::vector<Row> rows;

  std::string markdown() const {
    std::ostringstream os;
    os << "|";
    for (const auto& h : header) os << " " << h << " |";
    os << "\n|";
    for (std::size_t i = 0; i < header.size(); ++i) os << (i < 2 ? "---|" : "---:|");
    os << "\n";
    for (const auto& r : rows) {
      os << "|";
      for (const auto& c : r.cells) os << " " << c << " |";
      os << "\n";
    }
    return os.str();
  }

  std::string csv() const {
    std::ostringstream os;
    auto line = [&](const std::vector<std::string>& cells) {
      for (std::size_t i = 0; i < cells.size(); ++i) {
        std::string c = cells[i];
        const bool quote = c.find_first_of(",\"") != std::string::npos;
        if (quote) {
          std::string q = "\"";
          for (char ch : c) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
          c = q + "\"";
        }
        os << (i ? "," : "") << c;
      }
      os << "\n";
    };
    line(header);
    for (const auto& r : rows) line(r.cells);
    return os.str();
  }
};

/// Builds the comparison table from all runs (numbers: plain values; CSV uses the same cells).
Table build_table(const std::vector<Run>& runs) {
  Table t;
  t.header = {"method", "bits", "PPL baseline", "PPL +Q2N", "ΔPPL", "ΔPPL sd (seeds)",
              "PPL sd (seeds)", "Q2N lower PPL in", "err before", "err after", "kept r",
              "s baseline", "s +Q2N"};
  // Group by label without the +q2n suffix, keeping first-seen order.
  std::vector<std::string> order;
  std::map<std::string, std::vector<const Run*>> base, q2n;
  for (const Run& r : runs) {
    MethodSpec s = r.spec;
    s.q2n = false;
    const std::string key = llama::spec_label(s);
    if (!base.count(key) && !q2n.count(key)) order.push_back(key);
    (r.spec.q2n ? q2n : base)[key].push_back(&r);
  }
  for (const auto& key : order) {
    const auto& b = base[key];
    const auto& q = q2n[key];
    const Run& any = b.empty() ? *q.front() : *b.front();
    std::vector<double> pb, pq, delta, eb, ea, kept, sb, sq;
    for (const Run* r : b) pb.push_back(r->ppl), sb.push_back(r->pass_seconds + r->eval_seconds);
    for (const Run* r : q) {
      pq.push_back(r->ppl);
      eb.push_back(r->err_before);
      ea.push_back(r->err_after);
      kept.push_back(r->mean_kept);
      sq.push_back(r->pass_seconds + r->eval_seconds);
      for (const Run* rb : b)
        if (rb->seed == r->seed) delta.push_back(r->ppl - rb->ppl);
    }
    if (q.empty())
      for (const Run* r : b) eb.push_back(r->err_all), ea.push_back(NAN);
    const double d = mean(delta), dsd = sample_sd(delta), psd = sample_sd(pb);
    // Seeds where the refined model's perplexity is below the baseline's (same calibration).
    std::size_t better = 0;
    for (double x : delta) better += x < 0 ? 1 : 0;
    const std::string verdict = delta.empty() ? "n/a"
                                              : std::to_string(better) + " of " +
                                                    std::to_string(delta.size()) + " seeds";
    Row row;
    row.cells = {llama::method_name(any.spec.method),
                 any.spec.method == Method::pbllm ? fmt(any.weight_bits, 2)
                                                  : std::to_string(any.spec.bits),
                 fmt(mean(pb), 4),
                 fmt(mean(pq), 4),
                 delta.empty() ? "n/a" : (d > 0 ? "+" : "") + fmt(d, 4),
                 fmt(dsd, 4),
                 fmt(psd, 4),
                 verdict,
                 eb.empty() ? "n/a" : fmt_sci(mean(eb)),
                 ea.empty() || !std::isfinite(mean(ea)) ? "n/a" : fmt_sci(mean(ea)),
                 kept.empty() ? "n/a" : fmt(mean(kept), 1),
                 fmt(mean(sb), 1),
                 fmt(mean(sq), 1)};
    t.rows.push_back(std::move(row));
  }
  return t;
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path);
  out << content;
  if (!out) throw std::runtime_error("q2n_llama: cannot write " + path);
}

/// Parses --dump-linear "LAYER.MODULE" (MODULE as in the Hugging Face names).
std::pair<int, llama::Proj> parse_dump_target(const std::string& s, int layers) {
  const auto dot = s.find('.');
  if (dot == std::string::npos)
    llama::fail("q2n_llama: --dump-linear ", s, " must look like 1.self_attn.o_proj");
  const int layer = static_cast<int>(llama::detail::parse_int("--dump-linear", s.substr(0, dot),
                                                              0, layers - 1));
  const std::string name = s.substr(dot + 1);
  for (llama::Proj p : llama::kAllProj)
    if (name == llama::proj_name(p)) return {layer, p};
  llama::fail("q2n_llama: --dump-linear: unknown module ", name,
              " (use self_attn.{q,k,v,o}_proj or mlp.{gate,up,down}_proj)");
}

void write_dump(const std::string& path, const llama::Options& o, const MethodSpec& spec,
                int layer, llama::Proj proj, const llama::Matrix& inputs,
                const llama::InputStats& stats, const llama::Matrix& W,
                const llama::LinearResult& r) {
  using q2n::io::DType;
  q2n::io::SafetensorsWriter w;
  w.set_metadata("format", "pt");
  w.set_metadata("method", llama::method_name(spec.method));
  w.set_metadata("bits", std::to_string(spec.bits));
  w.set_metadata("groupsize", std::to_string(spec.groupsize));
  w.set_metadata("act_order", spec.act_order ? "1" : "0");
  w.set_metadata("percdamp", fmt(spec.percdamp, 17));
  w.set_metadata("owq_extra_bits", fmt(spec.owq_extra_bits, 17));
  w.set_metadata("pb_low_frac", fmt(spec.pb_low_frac, 17));
  w.set_metadata("pb_high_bit", std::to_string(spec.pb_high_bit));
  w.set_metadata("q2n", r.q2n_applied ? "1" : "0");
  w.set_metadata("threshold", fmt(spec.null_space.threshold, 17));
  w.set_metadata("cut_rule", spec.null_space.rule == q2n::CutRule::paper ? "paper" : "plain");
  w.set_metadata("lambda", fmt(spec.lambda, 17));
  w.set_metadata("seqlen", std::to_string(o.seqlen));
  w.set_metadata("hessian_shards", std::to_string(llama::kHessianShards));
  w.set_metadata("layer", std::to_string(layer));
  w.set_metadata("module", llama::proj_name(proj));
  // X as samples × seqlen × cols: the layout q2n-layer reads (--input DUMP).
  w.add("X", inputs, DType::F32,
        {inputs.rows() / o.seqlen, static_cast<std::int64_t>(o.seqlen), inputs.cols()});
  w.add("W", W, DType::F32);
  w.add("hessian", stats.hessian, DType::F64);
  w.add("abar", stats.abar, DType::F64);
  w.add("Q_before", r.Q_before, DType::F32);
  w.add("Q", r.Q, DType::F32);
  if (r.q2n_applied) w.add("m", r.m.transpose(), DType::F32, {r.m.size()});
  w.write(path);
}

int run(int argc, char** argv) {
  const llama::Options o = llama::parse_options(argc, argv, Q2N_EXAMPLE_DATA_DIR);
  if (o.help) {
    std::cout << llama::usage();
    return 0;
  }
  if (o.threads > 0) {
#ifdef _OPENMP
    omp_set_num_threads(o.threads);
#endif
    Eigen::setNbThreads(o.threads);
  }
  now_seconds();

  const llama::Model fp = llama::load_model(o.model_dir);
  const llama::Config& c = fp.config;
  if (c.max_position_embeddings > 0 && o.seqlen > c.max_position_embeddings)
    llama::fail("q2n_llama: --seqlen ", o.seqlen, " exceeds max_position_embeddings = ",
                c.max_position_embeddings, " of ", o.model_dir, "/config.json");
  const std::size_t window = static_cast<std::size_t>(o.seqlen) + 1;
  const auto eval_text = llama::read_bytes(o.eval_text, window, "the perplexity evaluation");
  std::vector<std::uint8_t> calib_text;
  if (!o.methods.empty())
    calib_text = llama::read_bytes(o.calib_text, window, "the calibration windows");

  // The configurations, in run order.
  std::vector<MethodSpec> specs;
  for (Method m : o.methods) {
    const std::vector<int> bits = m == Method::pbllm ? std::vector<int>{o.bits.front()} : o.bits;
    for (int b : bits) {
      MethodSpec s;
      s.method = m;
      s.bits = b;
      s.groupsize = o.groupsize;
      s.percdamp = o.percdamp;
      s.act_order = o.act_order;
      s.owq_extra_bits = o.owq_extra_bits;
      s.pb_low_frac = o.pb_low_frac;
      s.pb_high_bit = o.pb_high_bit;
      s.lambda = o.lambda;
      s.null_space.threshold = o.threshold;
      s.null_space.rule = o.rule;
      if (m == Method::rtn && o.groupsize > 0) {
        // validated early so that a bad group size fails before any work
        for (const auto& L : fp.layers)
          for (llama::Proj p : llama::kAllProj)
            if (L.linear(p).in_features() % o.groupsize != 0)
              llama::fail("q2n_llama: --group ", o.groupsize, " does not divide the ",
                          L.linear(p).in_features(), " inputs of ", llama::proj_name(p),
                          "; pass a divisor or 0 (one group per row)");
      }
      specs.push_back(s);
    }
  }
  const int variants = (o.q2n_off ? 1 : 0) + (o.q2n_on ? 1 : 0);
  const std::size_t configs = specs.size() * static_cast<std::size_t>(variants) *
                              static_cast<std::size_t>(o.seeds);
  if ((!o.save_dir.empty() || !o.dump_file.empty()) && configs > 1)
    llama::fail("q2n_llama: --save / --dump-file need exactly one quantized configuration, but ",
                configs, " were selected; narrow --methods, --bits, --q2n and --seeds");
  std::pair<int, llama::Proj> dump_target{-1, llama::Proj::q};
  if (!o.dump_file.empty())
    dump_target = parse_dump_target(o.dump_linear, c.num_hidden_layers);

  // Float model.
  std::cerr << "q2n_llama: " << o.model_dir << ": " << c.num_hidden_layers << " layers, hidden "
            << c.hidden_size << ", heads " << c.num_attention_heads << "/"
            << c.num_key_value_heads << "; evaluating the float model\n";
  double t = now_seconds();
  const llama::Perplexity pf = llama::perplexity(fp, eval_text, o.seqlen, o.eval_windows);
  const double float_seconds = now_seconds() - t;
  {
    nlohmann::json j{{"method", "none"}, {"bits", nullptr}, {"group", nullptr}, {"q2n", false},
                     {"ppl", pf.ppl()}, {"nll_per_byte", pf.nll_per_byte()},
                     {"windows", pf.windows}, {"seconds", float_seconds}};
    std::cout << j.dump() << std::endl;
  }
  std::vector<nlohmann::json> jsonl;
  jsonl.push_back({{"method", "none"}, {"ppl", pf.ppl()}, {"windows", pf.windows},
                   {"seconds", float_seconds}});
  if (o.methods.empty() && !o.save_dir.empty()) llama::save_model(fp, o.save_dir);

  std::vector<Run> runs;
  for (int k = 0; k < o.seeds && !specs.empty(); ++k) {
    const std::uint64_t seed = o.seed + static_cast<std::uint64_t>(k);
    const llama::Calibration calib =
        llama::capture_layer0_inputs(fp, calib_text, o.seqlen, o.nsamples, seed);
    for (const MethodSpec& base_spec : specs) {
      std::vector<bool> q2n_flags;
      if (o.q2n_off) q2n_flags.push_back(false);
      if (o.q2n_on) q2n_flags.push_back(true);
      const bool shared = o.shared_pass && o.q2n_off && o.q2n_on;
      llama::PassResult shared_result;
      for (bool use_q2n : q2n_flags) {
        MethodSpec spec = base_spec;
        spec.q2n = use_q2n;
        const std::string label = "[" + llama::spec_label(spec) + " seed " +
                                  std::to_string(seed) + "]";
        llama::PassOptions po;
        po.spec = spec;
        po.q2n_down_proj = o.q2n_down_proj;
        po.on_layer = [&](int i, int n) {
          std::cerr << label << " layer " << i + 1 << " of " << n << " quantized ("
                    << fmt(now_seconds(), 1) << " s elapsed)\n";
        };
        if (!o.dump_file.empty())
          po.on_linear = [&](int layer, llama::Proj p, const llama::Matrix& inputs,
                             const llama::InputStats& st, const llama::Matrix& W,
                             const llama::LinearResult& r) {
            if (layer == dump_target.first && p == dump_target.second)
              write_dump(o.dump_file, o, spec, layer, p, inputs, st, W, r);
          };
        Run run;
        run.spec = spec;
        run.seed = seed;
        run.shared_pass = shared && use_q2n;
        t = now_seconds();
        llama::PassResult pr;
        if (shared && !use_q2n) {
          // One pass for both variants: the baseline propagates, Q2N rides along.
          po.spec.q2n = true;
          po.shared_twin = true;
          shared_result = llama::quantize_sequential(fp, calib, po);
          pr.model = std::move(shared_result.model);
          pr.records = shared_result.records;
          for (auto& rec : pr.records) {
            rec.result.err_after = rec.result.err_before;
            rec.result.q2n_applied = false;
          }
        } else if (shared && use_q2n) {
          pr.model = std::move(shared_result.twin);
          pr.records = std::move(shared_result.records);
        } else {
          pr = llama::quantize_sequential(fp, calib, po);
        }
        run.pass_seconds = now_seconds() - t;
        t = now_seconds();
        const llama::Perplexity p = llama::perplexity(pr.model, eval_text, o.seqlen, o.eval_windows);
        run.eval_seconds = now_seconds() - t;
        run.ppl = p.ppl();
        run.weight_bits = llama::weight_bits(spec, c.hidden_size);
        double sb = 0, sa = 0, sall = 0, skept = 0;
        for (const auto& rec : pr.records) {
          sall += rec.result.err_after;
          if (rec.result.q2n_applied) {
            ++run.refined;
            sb += rec.result.err_before;
            sa += rec.result.err_after;
            skept += static_cast<double>(rec.result.cut.kept);
          }
        }
        run.err_all = pr.records.empty() ? 0 : sall / static_cast<double>(pr.records.size());
        if (run.refined) {
          run.err_before = sb / run.refined;
          run.err_after = sa / run.refined;
          run.mean_kept = skept / run.refined;
        } else {
          run.err_before = run.err_after = run.err_all;
        }
        std::cerr << label << " ppl " << fmt(run.ppl, 4) << " (pass " << fmt(run.pass_seconds, 1)
                  << " s, eval " << fmt(run.eval_seconds, 1) << " s)\n";
        const nlohmann::json j = run_json(run, o, p.windows);
        std::cout << j.dump() << std::endl;
        jsonl.push_back(j);
        if (!o.save_dir.empty()) llama::save_model(pr.model, o.save_dir);
        runs.push_back(run);
      }
    }
  }

  // Report.
  std::ostringstream md;
  md << "Model " << o.model_dir << ": float PPL " << fmt(pf.ppl(), 4) << " over "
     << pf.windows << " windows of " << o.seqlen << " bytes; calibration " << o.nsamples
     << " windows, seeds " << o.seed << ".." << o.seed + static_cast<std::uint64_t>(o.seeds) - 1
     << "; Q2N threshold " << o.threshold << ", lambda " << o.lambda
     << (o.q2n_down_proj ? ", down_proj refined" : ", down_proj not refined")
     << (o.shared_pass ? ", shared pass" : ", separate passes") << ".\n\n";
  if (!runs.empty()) {
    const Table table = build_table(runs);
    md << table.markdown()
       << "\nΔPPL = PPL(+Q2N) − PPL(baseline), paired by calibration seed, mean over seeds; "
          "sd = sample standard deviation over seeds (PPL sd: of the baseline); \"Q2N lower PPL "
          "in\" counts the seeds where the refined model's perplexity is below the baseline's. "
          "err before/after: mean relative output error "
          "‖X(Q−W)ᵀ‖²/‖XWᵀ‖² on the calibration inputs over the linears Q2N refined, before and "
          "after the refinement (same pass, same inputs); kept r: mean rank of the kept "
          "activation subspace; s: wall seconds per run (sequential pass + evaluation), mean "
          "over seeds. PB-LLM bits = average weight bits (binarized + salient).\n";
    if (!o.report.empty()) {
      write_file(o.report + ".csv", table.csv());
    }
  }
  md << "Total " << fmt(now_seconds(), 1) << " s wall, "
     << fmt(static_cast<double>(std::clock()) / CLOCKS_PER_SEC, 1) << " s CPU.\n";
  std::cout << "\n" << md.str();
  if (!o.report.empty()) {
    write_file(o.report + ".md", md.str());
    std::string lines;
    for (const auto& j : jsonl) lines += j.dump() + "\n";
    write_file(o.report + ".jsonl", lines);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::invalid_argument& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const std::runtime_error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
