// q2n-layer: quantize one dumped linear layer with RTN / GPTQ / OWQ / PB-LLM (or take an
// already quantized Q), optionally refine it with Q2N, and write the result with its storage
// form. Prints one JSON line with the output errors and the seconds spent per stage.
//
//   q2n-layer --input IN.safetensors --output OUT.safetensors --method gptq --bits 3 --group 128 --q2n
//
// Input tensors: W (rows × cols) and X (samples × seqlen × cols, or tokens × cols) in F32, F16
// or BF16; with --method given also Q (rows × cols, name set by --q-tensor).
#include <q2n/io/safetensors.hpp>
#include <q2n/projection.hpp>
#include <q2n/quantizers.hpp>

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

namespace {

using Clock = std::chrono::steady_clock;
using Matrix = Eigen::MatrixXf;

const char* kUsage =
    "usage: q2n-layer --input IN.safetensors --output OUT.safetensors\n"
    "         --method given|rtn|gptq|owq|pbllm --bits N [--group G] [--sym] [--act-order]\n"
    "         [--static-groups] [--percdamp F] [--blocksize B] [--mse] [--q2n] [--threshold T]\n"
    "         [--lambda L] [--cut-rule paper|plain] [--owq-columns N | --owq-target-bits F]\n"
    "         [--pb-low-frac F] [--pb-high-bits N] [--pb-salience hessian|magnitude]\n"
    "         [--q-tensor NAME]\n";

struct Args {
  std::string input, output, method, q_tensor = "Q", cut_rule = "paper", salience = "hessian";
  int bits = 4, pb_high_bits = 8;
  long group = -1, blocksize = 128, owq_columns = -1;
  bool sym = false, act_order = false, static_groups = false, mse = false, q2n = false;
  double percdamp = 0.01, threshold = 0.1, lambda = 0.2, owq_target_bits = 0, pb_low_frac = 0.9;
};

[[noreturn]] void usage_error(const std::string& what) {
  throw std::invalid_argument("q2n-layer: " + what + "\n" + kUsage);
}

Args parse(int argc, char** argv) {
  Args a;
  std::map<std::string, bool*> flags = {{"--sym", &a.sym},
                                        {"--act-order", &a.act_order},
                                        {"--static-groups", &a.static_groups},
                                        {"--mse", &a.mse},
                                        {"--q2n", &a.q2n}};
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--help" || k == "-h") {
      std::cout << kUsage;
      std::exit(0);
    }
    if (auto f = flags.find(k); f != flags.end()) {
      *f->second = true;
      continue;
    }
    if (i + 1 >= argc) usage_error("option " + k + " needs a value");
    const std::string v = argv[++i];
    auto number = [&](auto convert) {
      try {
        return convert(v);
      } catch (const std::exception&) {
        usage_error("option " + k + " has an invalid value '" + v + "'");
      }
    };
    auto to_int = [](const std::string& s) { return std::stoi(s); };
    auto to_long = [](const std::string& s) { return std::stol(s); };
    auto to_double = [](const std::string& s) { return std::stod(s); };
    if (k == "--input") a.input = v;
    else if (k == "--output") a.output = v;
    else if (k == "--method") a.method = v;
    else if (k == "--q-tensor") a.q_tensor = v;
    else if (k == "--cut-rule") a.cut_rule = v;
    else if (k == "--pb-salience") a.salience = v;
    else if (k == "--bits") a.bits = number(to_int);
    else if (k == "--group") a.group = number(to_long);
    else if (k == "--blocksize") a.blocksize = number(to_long);
    else if (k == "--owq-columns") a.owq_columns = number(to_long);
    else if (k == "--pb-high-bits") a.pb_high_bits = number(to_int);
    else if (k == "--percdamp") a.percdamp = number(to_double);
    else if (k == "--threshold") a.threshold = number(to_double);
    else if (k == "--lambda") a.lambda = number(to_double);
    else if (k == "--owq-target-bits") a.owq_target_bits = number(to_double);
    else if (k == "--pb-low-frac") a.pb_low_frac = number(to_double);
    else usage_error("unknown option " + k);
  }
  if (a.input.empty()) usage_error("--input is required");
  if (a.output.empty()) usage_error("--output is required");
  if (a.method != "given" && a.method != "rtn" && a.method != "gptq" && a.method != "owq" &&
      a.method != "pbllm")
    usage_error("--method must be given, rtn, gptq, owq or pbllm (got '" + a.method + "')");
  if (a.cut_rule != "paper" && a.cut_rule != "plain")
    usage_error("--cut-rule must be paper or plain");
  if (a.salience != "hessian" && a.salience != "magnitude")
    usage_error("--pb-salience must be hessian or magnitude");
  if (a.owq_columns >= 0 && a.owq_target_bits > 0)
    usage_error("give either --owq-columns or --owq-target-bits, not both");
  return a;
}

// h is consumed by the Hessian-based quantizers (moved into their working copy).
q2n::QuantResult<float> quantize(const Args& a, const Matrix& w, Matrix&& h) {
  if (a.method == "rtn") {
    q2n::RtnOptions o;
    o.bits = a.bits;
    o.groupsize = a.group;
    o.sym = a.sym;
    o.mse = a.mse;
    return q2n::rtn(w, o);
  }
  if (a.method == "gptq") {
    q2n::GptqOptions o;
    o.bits = a.bits;
    o.groupsize = a.group;
    o.sym = a.sym;
    o.mse = a.mse;
    o.act_order = a.act_order;
    o.static_groups = a.static_groups;
    o.percdamp = a.percdamp;
    o.blocksize = a.blocksize;
    return q2n::gptq(w, std::move(h), o);
  }
  if (a.method == "owq") {
    q2n::OwqOptions o;
    o.bits = a.bits;
    o.groupsize = a.group;
    o.sym = a.sym;
    o.mse = a.mse;
    o.act_order = a.act_order;
    o.percdamp = a.percdamp;
    o.blocksize = a.blocksize;
    o.outlier_columns = a.owq_columns >= 0 ? a.owq_columns : 0;
    o.target_bits = a.owq_target_bits;
    return q2n::owq(w, std::move(h), o);
  }
  q2n::PbllmOptions o;  // pbllm
  o.low_frac = a.pb_low_frac;
  o.high_bits = a.pb_high_bits;
  o.groupsize = a.group;
  o.salience = a.salience == "hessian" ? q2n::Salience::hessian : q2n::Salience::magnitude;
  o.percdamp = a.percdamp;
  o.blocksize = a.blocksize;
  return q2n::pbllm(w, std::move(h), o);
}

// ‖X (Q − W)ᵀ‖² / ‖X Wᵀ‖² over all tokens, in token chunks (float products, double sums).
double relative_output_error(const Matrix& x, const Matrix& w, const Matrix& q) {
  const Matrix d = q - w;
  double num = 0, den = 0;
  constexpr Eigen::Index kChunk = 1024;
  for (Eigen::Index t = 0; t < x.rows(); t += kChunk) {
    const Eigen::Index n = std::min(kChunk, x.rows() - t);
    num += (x.middleRows(t, n) * d.transpose()).cast<double>().squaredNorm();
    den += (x.middleRows(t, n) * w.transpose()).cast<double>().squaredNorm();
  }
  return den > 0 ? num / den : 0.0;
}

void add_storage(q2n::io::SafetensorsWriter& out, const q2n::QuantStorage<float>& s) {
  using q2n::io::DType;
  out.add("codes", s.codes, DType::U8);
  if (s.scales.size() > 0) {
    out.add("scales", s.scales, DType::F32);
    out.add("zeros", s.zeros, DType::F32);
  }
  out.add("perm", s.perm, DType::I32, {static_cast<std::int64_t>(s.perm.size())});
  out.add("g_idx", s.g_idx, DType::I32, {static_cast<std::int64_t>(s.g_idx.size())});
  if (s.fp_columns.size() > 0) {
    out.add("fp_columns", s.fp_columns, DType::I32, {static_cast<std::int64_t>(s.fp_columns.size())});
    out.add("fp_values", s.fp_values, DType::F32);
  }
  if (s.salient.size() > 0) {
    out.add("salient", s.salient, DType::U8);
    out.add("signs", s.signs, DType::I8);
    out.add("bin_alpha", s.bin_alpha, DType::F32);
    out.add("bin_mean", s.bin_mean, DType::F32);
  }
}

int run(const Args& a) {
  std::map<std::string, double> seconds;
  auto t = Clock::now();
  auto lap = [&](const char* stage) {
    const auto now = Clock::now();
    seconds[stage] += std::chrono::duration<double>(now - t).count();
    t = now;
  };

  const q2n::io::SafetensorsReader in(a.input);
  for (const char* name : {"W", "X"})
    if (!in.contains(name))
      throw std::invalid_argument("q2n-layer: " + a.input + " has no tensor '" + name +
                                  "'; it needs W (rows x cols) and X (samples x seqlen x cols "
                                  "or tokens x cols)");
  const auto& xshape = in.info("X").shape;
  if (xshape.size() != 2 && xshape.size() != 3)
    throw std::invalid_argument("q2n-layer: X in " + a.input + " has " +
                                std::to_string(xshape.size()) +
                                " dimensions; pass samples x seqlen x cols or tokens x cols");
  const Matrix w = in.read_matrix<float>("W");
  const Matrix x = in.read_matrix<float>("X");
  if (x.cols() != w.cols())
    throw std::invalid_argument("q2n-layer: X has " + std::to_string(x.cols()) +
                                " columns but W has " + std::to_string(w.cols()) +
                                "; X must hold the layer's inputs");
  if (x.rows() == 0) throw std::invalid_argument("q2n-layer: X holds no tokens");
  const Eigen::Index seqlen = xshape.size() == 3 ? xshape[1] : x.rows();
  lap("read");

  // Statistics: H over all tokens, Ā over sequences (a 2-D X counts as one sequence). One at a
  // time, each double accumulator dropped once its float result exists, to keep the peak low.
  const bool needs_h = a.method != "given" && a.method != "rtn";
  Matrix h, abar;
  if (needs_h) {
    q2n::HessianAccumulator hacc(w.cols());
    for (Eigen::Index s = 0; s < x.rows(); s += seqlen) hacc.add(x.middleRows(s, seqlen));
    h = hacc.hessian_as<float>();
  }
  if (a.q2n) {
    q2n::SampleMeanAccumulator aacc(w.cols());
    for (Eigen::Index s = 0; s < x.rows(); s += seqlen) aacc.add_sequence(x.middleRows(s, seqlen));
    abar = aacc.mean_as<float>();
  }
  lap("statistics");

  q2n::QuantResult<float> res;
  if (a.method == "given") {
    if (!in.contains(a.q_tensor))
      throw std::invalid_argument("q2n-layer: --method given needs tensor '" + a.q_tensor +
                                  "' in " + a.input + " (set its name with --q-tensor)");
    const Matrix q = in.read_matrix<float>(a.q_tensor);
    if (q.rows() != w.rows() || q.cols() != w.cols())
      throw std::invalid_argument("q2n-layer: " + a.q_tensor + " is " + std::to_string(q.rows()) +
                                  " x " + std::to_string(q.cols()) + " but W is " +
                                  std::to_string(w.rows()) + " x " + std::to_string(w.cols()));
    res = q2n::full_precision_result(q);
  } else {
    res = quantize(a, w, std::move(h));
  }
  lap("quantize");

  const double err_before = relative_output_error(x, w, res.Q);
  lap("error");

  q2n::io::SafetensorsWriter out;
  nlohmann::json line = {{"method", a.method}, {"bits", a.bits}, {"group", a.group},
                         {"q2n", a.q2n}, {"rows", w.rows()}, {"cols", w.cols()},
                         {"tokens", x.rows()}};
  line["cut_index"] = nullptr;
  double err_after = err_before;
  if (a.q2n) {
    q2n::NullSpaceOptions nso;
    nso.threshold = a.threshold;
    nso.rule = a.cut_rule == "plain" ? q2n::CutRule::plain : q2n::CutRule::paper;
    const auto ns = q2n::NullSpace<float>::compute(abar, nso);
    lap("null_space");
    auto refined = q2n::refine_quantized(res, w, ns, a.lambda);
    res = std::move(refined.result);
    lap("refine");
    err_after = relative_output_error(x, w, res.Q);
    lap("error");
    out.add("m", refined.m, q2n::io::DType::F32, {static_cast<std::int64_t>(w.rows())});
    const std::vector<std::int32_t> cut = {static_cast<std::int32_t>(refined.cut.index())};
    out.add_flat("cut_index", cut, q2n::io::DType::I32, {1});
    line["cut_index"] = refined.cut.index();
    line["kept"] = ns.kept();
  }
  out.add("Q", res.Q, q2n::io::DType::F32);
  if (a.method != "given") add_storage(out, res.storage);
  out.set_metadata("method", a.method);
  out.set_metadata("bits", std::to_string(a.bits));
  out.set_metadata("group", std::to_string(a.group));
  out.write(a.output);
  lap("write");

  line["rel_out_err"] = err_after;
  line["rel_out_err_before_q2n"] = err_before;
  line["damping"] = res.diagnostics.damping;
  line["damping_retries"] = res.diagnostics.retries;
  line["seconds"] = seconds;
  std::cout << line.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
}
