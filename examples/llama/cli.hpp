#pragma once
/// \file cli.hpp
/// Command-line options of the q2n_llama example.

#include "layer_quant.hpp"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

namespace llama {

/// All options of q2n_llama (see usage()).
struct Options {
  std::string model_dir;
  std::string eval_text;
  std::string calib_text;
  std::vector<Method> methods{Method::rtn, Method::gptq, Method::owq, Method::pbllm};
  std::vector<int> bits{2, 3, 4};
  Eigen::Index groupsize = 128;
  int nsamples = 128;
  Eigen::Index seqlen = 256;
  std::uint64_t seed = 0;
  int seeds = 1;
  std::int64_t eval_windows = -1;  ///< −1: all windows of the protocol
  bool q2n_off = true;             ///< evaluate each method without Q2N
  bool q2n_on = true;              ///< ... and with Q2N
  bool q2n_down_proj = false;
  bool shared_pass = false;        ///< ±Q2N from one sequential pass (approximation)
  double threshold = 0.1;
  double lambda = 0.2;
  q2n::CutRule rule = q2n::CutRule::paper;
  double percdamp = 0.01;
  bool act_order = false;
  double owq_extra_bits = 0.1;
  double pb_low_frac = 0.9;
  int pb_high_bit = 8;
  int threads = 0;                 ///< 0: the OpenMP default
  std::string report;              ///< PATH → PATH.md, PATH.csv, PATH.jsonl
  std::string save_dir;
  std::string dump_linear;         ///< "LAYER.MODULE", e.g. "1.self_attn.o_proj"
  std::string dump_file;
  bool help = false;
};

inline std::string usage() {
  return R"(usage: q2n_llama [options]

Quantizes a Llama/Qwen2-style byte-level model layer by layer (GPTQ-style sequential
calibration) with RTN, GPTQ, OWQ and PB-LLM, each without and with the Q2N refinement on the
same calibration data, and reports held-out perplexity.

data
  --model DIR           checkpoint directory: config.json + model.safetensors (default: the
                        bundled kjv-256x4)
  --eval-text FILE      held-out bytes (default: the bundled kjv_valid_head.txt)
  --calib-text FILE     calibration bytes (default: the bundled kjv_train_head.txt)
  --seqlen T            window length in tokens (default 256)
  --eval-windows N      evaluate only the first N windows (default: all = 255 for the bundled text)
calibration
  --nsamples N          calibration windows (default 128)
  --seed S              seed of the window draw (default 0)
  --seeds N             repeat over seeds S, S+1, …, S+N−1 and report mean ± spread (default 1)
methods
  --methods LIST        comma list of rtn,gptq,owq,pbllm, or all, or none (default all;
                        none evaluates the float model only)
  --bits LIST           comma list of weight bits for rtn/gptq/owq (default 2,3,4)
  --group G             group size, 0 = one group per row (default 128)
  --act-order           GPTQ/OWQ: process columns by decreasing diag(H)
  --percdamp P          relative Hessian damping (default 0.01)
  --owq-extra-bits B    OWQ: full-precision columns for target bits = bits + B (default 0.1)
  --pb-low-frac F       PB-LLM: fraction of binarized weights (default 0.9)
  --pb-high-bit B       PB-LLM: bits of the salient weights (default 8)
Q2N
  --q2n MODE            both | on | off (default both)
  --threshold T         null-space cut threshold (default 0.1)
  --lambda L            ridge weight toward m = 1 (default 0.2)
  --cut-rule R          paper | plain (default paper)
  --q2n-down-proj       refine mlp.down_proj too (skipped by default)
  --shared-pass         get the +Q2N model from the baseline's sequential pass (the next
                        layer then sees the unrefined layer's outputs): half the passes, an
                        approximation of the exact separate pass
output
  --report PATH         write PATH.md (table), PATH.csv (table) and PATH.jsonl (one line per run)
  --save DIR            write the fake-quantized model (config.json + model.safetensors, F32),
                        loadable by --model DIR; needs exactly one quantized configuration
  --dump-linear L.NAME  with --dump-file F: save one linear layer's calibration inputs,
                        statistics and result (e.g. 1.self_attn.o_proj) for a standalone check
  --threads N           OpenMP / Eigen threads (default: OpenMP's default)
  --help
Exit codes: 0 success, 2 bad input (message on stderr).
)";
}

namespace detail {

inline std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

inline long long parse_int(const std::string& flag, const std::string& v, long long lo,
                           long long hi) {
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0' || errno != 0 || x < lo || x > hi)
    fail("q2n_llama: ", flag, " ", v, " is not an integer in [", lo, ", ", hi, "]");
  return x;
}

inline double parse_double(const std::string& flag, const std::string& v, double lo, double hi) {
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end != '\0' || !(x >= lo && x <= hi))
    fail("q2n_llama: ", flag, " ", v, " is not a number in [", lo, ", ", hi, "]");
  return x;
}

}  // namespace detail

/// Parses argv; throws std::invalid_argument with a message naming the flag.
inline Options parse_options(int argc, char** argv, const std::string& data_dir) {
  Options o;
  o.model_dir = data_dir + "/kjv-256x4";
  o.eval_text = data_dir + "/kjv_valid_head.txt";
  o.calib_text = data_dir + "/kjv_train_head.txt";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) fail("q2n_llama: ", a, " needs a value (see --help)");
      return argv[++i];
    };
    using detail::parse_double;
    using detail::parse_int;
    if (a == "--help" || a == "-h") {
      o.help = true;
    } else if (a == "--model") {
      o.model_dir = value();
    } else if (a == "--eval-text") {
      o.eval_text = value();
    } else if (a == "--calib-text") {
      o.calib_text = value();
    } else if (a == "--seqlen") {
      o.seqlen = parse_int(a, value(), 2, 1 << 16);
    } else if (a == "--eval-windows") {
      o.eval_windows = parse_int(a, value(), 1, 1LL << 40);
    } else if (a == "--nsamples") {
      o.nsamples = static_cast<int>(parse_int(a, value(), 1, 1 << 20));
    } else if (a == "--seed") {
      o.seed = static_cast<std::uint64_t>(parse_int(a, value(), 0, 1LL << 62));
    } else if (a == "--seeds") {
      o.seeds = static_cast<int>(parse_int(a, value(), 1, 1000));
    } else if (a == "--methods") {
      const std::string v = value();
      o.methods.clear();
      if (v == "all") {
        o.methods = {Method::rtn, Method::gptq, Method::owq, Method::pbllm};
      } else if (v != "none") {
        for (const auto& m : detail::split_commas(v)) {
          if (m == "rtn") o.methods.push_back(Method::rtn);
          else if (m == "gptq") o.methods.push_back(Method::gptq);
          else if (m == "owq") o.methods.push_back(Method::owq);
          else if (m == "pbllm" || m == "pb-llm") o.methods.push_back(Method::pbllm);
          else fail("q2n_llama: --methods: unknown method \"", m,
                    "\"; use rtn, gptq, owq, pbllm, all or none");
        }
      }
    } else if (a == "--bits") {
      o.bits.clear();
      for (const auto& b : detail::split_commas(value()))
        o.bits.push_back(static_cast<int>(parse_int(a, b, 2, 8)));
      if (o.bits.empty()) fail("q2n_llama: --bits needs at least one value");
    } else if (a == "--group") {
      const long long g = parse_int(a, value(), 0, 1 << 20);
      o.groupsize = g == 0 ? -1 : g;
    } else if (a == "--act-order") {
      o.act_order = true;
    } else if (a == "--percdamp") {
      o.percdamp = parse_double(a, value(), 0, 10);
    } else if (a == "--owq-extra-bits") {
      o.owq_extra_bits = parse_double(a, value(), 0, 8);
    } else if (a == "--pb-low-frac") {
      o.pb_low_frac = parse_double(a, value(), 0, 1);
    } else if (a == "--pb-high-bit") {
      o.pb_high_bit = static_cast<int>(parse_int(a, value(), 2, 8));
    } else if (a == "--q2n") {
      const std::string v = value();
      if (v == "both") o.q2n_off = o.q2n_on = true;
      else if (v == "on") o.q2n_off = false, o.q2n_on = true;
      else if (v == "off") o.q2n_off = true, o.q2n_on = false;
      else fail("q2n_llama: --q2n ", v, " is not one of both, on, off");
    } else if (a == "--threshold") {
      o.threshold = parse_double(a, value(), 1e-12, 1e12);
    } else if (a == "--lambda") {
      o.lambda = parse_double(a, value(), 0, 1e12);
    } else if (a == "--cut-rule") {
      const std::string v = value();
      if (v == "paper") o.rule = q2n::CutRule::paper;
      else if (v == "plain") o.rule = q2n::CutRule::plain;
      else fail("q2n_llama: --cut-rule ", v, " is not one of paper, plain");
    } else if (a == "--q2n-down-proj") {
      o.q2n_down_proj = true;
    } else if (a == "--shared-pass") {
      o.shared_pass = true;
    } else if (a == "--report") {
      o.report = value();
    } else if (a == "--save") {
      o.save_dir = value();
    } else if (a == "--dump-linear") {
      o.dump_linear = value();
    } else if (a == "--dump-file") {
      o.dump_file = value();
    } else if (a == "--threads") {
      o.threads = static_cast<int>(parse_int(a, value(), 1, 1024));
    } else {
      fail("q2n_llama: unknown option ", a, " (see --help)");
    }
  }
  if (o.dump_linear.empty() != o.dump_file.empty())
    fail("q2n_llama: --dump-linear and --dump-file go together");
  return o;
}

}  // namespace llama
