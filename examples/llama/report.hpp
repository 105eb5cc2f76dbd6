#pragma once
/// \file report.hpp
/// What q2n_llama reports: one JSON line per evaluated configuration on stdout, then the
/// comparison table (markdown on stdout; with --report PATH also PATH.md, PATH.csv and
/// PATH.jsonl). The JSON keys and table columns are read by scripts and RESULTS.md: keep them.

#include "cli.hpp"
#include "sequential.hpp"
#include "text.hpp"

#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <map>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace llama {

/// Wall seconds since the first call (the program's start when called first thing).
inline double elapsed_seconds() {
  using clock = std::chrono::steady_clock;
  static const clock::time_point t0 = clock::now();
  return std::chrono::duration<double>(clock::now() - t0).count();
}

inline std::string fmt(double v, int prec) {
  if (!std::isfinite(v)) return "n/a";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", prec, v);
  return buf;
}

inline std::string fmt_sci(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.4e", v);
  return buf;
}

inline double mean(const std::vector<double>& v) {
  return v.empty() ? NAN : std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

inline double sample_sd(const std::vector<double>& v) {
  if (v.size() < 2) return NAN;
  const double m = mean(v);
  double s = 0;
  for (double x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size() - 1));
}

inline void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path);
  out << content;
  if (!out) throw std::runtime_error("q2n_llama: cannot write " + path);
}

/// One evaluated configuration.
struct Run {
  MethodSpec spec;
  std::uint64_t seed = 0;
  double ppl = 0;
  std::int64_t windows = 0;  ///< evaluation windows
  double weight_bits = 0;
  double err_before = 0;  ///< mean relative output error before Q2N, over the refined linears
  double err_after = 0;   ///< … after Q2N (equal to err_before without Q2N)
  double err_all = 0;     ///< mean over all quantized linears of the final error
  double mean_kept = 0;   ///< mean Q2N kept rank over refined linears
  int refined = 0;        ///< linears Q2N was applied to
  double pass_seconds = 0, eval_seconds = 0;
  bool shared_pass = false;
  InferenceBits inference;        ///< activation and KV cache bits at evaluation
  double rotated_float_ppl = NAN; ///< quarot: the rotated float model's perplexity
  std::map<std::string, std::string> exports;  ///< with --export: format → file or folder
};

/// Fills the error and kept-rank figures of `run` from a pass's records.
inline void summarize_records(const std::vector<LinearRecord>& records, Run& run) {
  double sb = 0, sa = 0, sall = 0, skept = 0;
  for (const auto& rec : records) {
    sall += rec.result.err_after;
    if (rec.result.q2n_applied()) {
      ++run.refined;
      sb += rec.result.err_before;
      sa += rec.result.err_after;
      skept += static_cast<double>(rec.result.refined->cut.kept);
    }
  }
  run.err_all = records.empty() ? 0 : sall / static_cast<double>(records.size());
  if (run.refined) {
    run.err_before = sb / run.refined;
    run.err_after = sa / run.refined;
    run.mean_kept = skept / run.refined;
  } else {
    run.err_before = run.err_after = run.err_all;
  }
}

inline nlohmann::json run_json(const Run& r, const Options& o) {
  nlohmann::json j;
  j["method"] = method_name(r.spec.method);
  if (r.spec.method == Method::pbllm) {
    j["bits"] = std::round(r.weight_bits * 1e4) / 1e4;
    j["pb_low_frac"] = r.spec.pb_low_frac;
    j["pb_high_bit"] = r.spec.pb_high.bits;
  } else {
    j["bits"] = r.spec.grid.bits;
    j["sym"] = r.spec.grid.sym;
  }
  j["group"] = r.spec.groupsize > 0 ? nlohmann::json(r.spec.groupsize) : nlohmann::json(nullptr);
  j["q2n"] = r.spec.q2n;
  j["a_bits"] = r.inference.act_bits;
  if (r.inference.act_bits < 16) j["a_clip"] = r.inference.act_clip;
  j["kv_bits"] = r.inference.kv_bits;
  if (r.inference.kv_bits < 16) j["kv_clip"] = r.inference.kv_clip;
  if (r.spec.method == Method::quarot) j["rotated_float_ppl"] = r.rotated_float_ppl;
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
  j["eval_windows"] = r.windows;
  if (!r.exports.empty()) j["export"] = r.exports;
  return j;
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

namespace detail {

// The row of one configuration: its baseline runs `b` and +Q2N runs `q` (paired by seed).
inline Row table_row(const std::vector<const Run*>& b, const std::vector<const Run*>& q) {
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
  row.cells = {method_name(any.spec.method),
               any.spec.method == Method::pbllm ? fmt(any.weight_bits, 2)
                                                : std::to_string(any.spec.grid.bits),
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
  return row;
}

}  // namespace detail

/// Builds the comparison table from all runs (numbers: plain values; CSV uses the same cells).
inline Table build_table(const std::vector<Run>& runs) {
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
    const std::string key = spec_label(s);
    if (!base.count(key) && !q2n.count(key)) order.push_back(key);
    (r.spec.q2n ? q2n : base)[key].push_back(&r);
  }
  for (const auto& key : order) t.rows.push_back(detail::table_row(base[key], q2n[key]));
  return t;
}

/// Collects the runs, prints their JSON lines as they come, and writes the report at the end.
class Report {
 public:
  explicit Report(const Options& o) : o_(o) {}

  /// The float model's evaluation.
  void add_float(const Perplexity& p, double seconds) {
    float_ppl_ = p.ppl();
    float_windows_ = p.windows;
    // (The float model is evaluated at full width: a_bits 16 whatever --a-bits says.)
    const nlohmann::json j{{"method", "none"}, {"bits", nullptr}, {"group", nullptr},
                           {"q2n", false}, {"a_bits", 16}, {"kv_bits", 16}, {"ppl", p.ppl()},
                           {"nll_per_token", p.nll_per_token()}, {"windows", p.windows},
                           {"seconds", seconds}};
    std::cout << j.dump() << std::endl;
    jsonl_.push_back({{"method", "none"}, {"a_bits", 16}, {"kv_bits", 16}, {"ppl", p.ppl()},
                      {"windows", p.windows}, {"seconds", seconds}});
  }

  /// The float model's export (with --methods none --export).
  void add_export(const std::map<std::string, std::string>& paths) {
    const nlohmann::json j{{"method", "none"}, {"a_bits", 16}, {"kv_bits", 16}, {"export", paths}};
    std::cout << j.dump() << std::endl;
    jsonl_.push_back(j);
  }

  /// One quantized configuration.
  void add(const Run& r) {
    const nlohmann::json j = run_json(r, o_);
    std::cout << j.dump() << std::endl;
    jsonl_.push_back(j);
    runs_.push_back(r);
  }

  /// Prints the table and, with --report, writes its files.
  void finish() const {
    const std::string md = markdown();
    std::cout << "\n" << md;
    if (o_.report.empty()) return;
    if (!runs_.empty()) write_file(o_.report + ".csv", build_table(runs_).csv());
    write_file(o_.report + ".md", md);
    std::string lines;
    for (const auto& j : jsonl_) lines += j.dump() + "\n";
    write_file(o_.report + ".jsonl", lines);
  }

 private:
  std::string markdown() const {
    const MethodSpec& s = o_.spec;
    std::ostringstream md;
    md << "Model " << o_.model_dir << ": float PPL " << fmt(float_ppl_, 4) << " over "
       << float_windows_ << " windows of " << o_.seqlen << " tokens; calibration " << o_.nsamples
       << " windows, seeds " << o_.seed << ".."
       << o_.seed + static_cast<std::uint64_t>(o_.seeds) - 1 << "; Q2N threshold "
       << s.null_space.threshold << ", lambda " << s.lambda
       << (o_.q2n_down_proj ? ", down_proj refined" : ", down_proj not refined")
       << (o_.shared_pass ? ", shared pass" : ", separate passes")
       << (o_.inference.act_bits < 16
               ? "; activations " + std::to_string(o_.inference.act_bits) +
                     "-bit per token (clip " + fmt(o_.inference.act_clip, 2) + ")"
               : std::string("; activations in float"))
       << (o_.inference.kv_bits < 16
               ? ", K/V caches " + std::to_string(o_.inference.kv_bits) + "-bit per token (clip " +
                     fmt(o_.inference.kv_clip, 2) + ")"
               : std::string(""))
       << ".\n\n";
    if (!runs_.empty())
      md << build_table(runs_).markdown()
         << "\nΔPPL = PPL(+Q2N) − PPL(baseline), paired by calibration seed, mean over seeds; "
            "sd = sample standard deviation over seeds (PPL sd: of the baseline); \"Q2N lower PPL "
            "in\" counts the seeds where the refined model's perplexity is below the baseline's. "
            "err before/after: mean relative output error "
            "‖X(Q−W)ᵀ‖²/‖XWᵀ‖² on the calibration inputs over the linears Q2N refined, before and "
            "after the refinement (same pass, same inputs); kept r: mean rank of the kept "
            "activation subspace; s: wall seconds per run (sequential pass + evaluation), mean "
            "over seeds. PB-LLM bits = average weight bits (binarized + salient).\n";
    std::map<std::uint64_t, double> rotated;  // quarot: the rotated float model, per seed
    for (const Run& r : runs_)
      if (r.spec.method == Method::quarot) rotated[r.seed] = r.rotated_float_ppl;
    if (!rotated.empty()) {
      md << "quarot's rotated float model (no quantization): PPL";
      for (const auto& [seed, ppl] : rotated) md << " " << fmt(ppl, 4) << " (seed " << seed << ")";
      md << ".\n";
    }
    md << "Total " << fmt(elapsed_seconds(), 1) << " s wall, "
       << fmt(static_cast<double>(std::clock()) / CLOCKS_PER_SEC, 1) << " s CPU.\n";
    return md.str();
  }

  const Options& o_;
  double float_ppl_ = NAN;
  std::int64_t float_windows_ = 0;
  std::vector<Run> runs_;
  std::vector<nlohmann::json> jsonl_;
};

}  // namespace llama
