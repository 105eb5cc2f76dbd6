// q2n-layer: quantize one dumped linear layer with RTN / GPTQ / OWQ / PB-LLM (or take an
// already quantized Q), optionally refine it with Q2N, and write the result with its storage
// form. Prints one JSON line with the output errors and the seconds spent per stage.
//
//   q2n-layer --input IN.safetensors --output OUT.safetensors --method gptq --bits 3 --group 128 --q2n
//
// Input tensors: W (rows × cols) and X (samples × seqlen × cols, or tokens × cols) in F32, F16
// or BF16; with --method given also Q (rows × cols, name set by --q-tensor).
//
// The layer goes through llama::quantize_linear, the function q2n_llama's sequential pass
// calls, and the flags are q2n_llama's (llama/method_flags.hpp).
#include "llama/layer_quant.hpp"
#include "llama/method_flags.hpp"

#include <q2n/io/safetensors.hpp>
#include <q2n/quantizers.hpp>
#include <q2n/reproducibility.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <iostream>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using Matrix = Eigen::MatrixXf;

const char* route_name(q2n::SpectrumRoute r) {
  switch (r) {
    case q2n::SpectrumRoute::covariance: return "covariance";
    case q2n::SpectrumRoute::gram: return "gram";
    case q2n::SpectrumRoute::partial: return "partial";
    case q2n::SpectrumRoute::automatic: break;
  }
  return "automatic";
}

struct Args {
  std::string input, output, q_tensor = "Q";
  bool given = false;  ///< --method given: refine the input's Q instead of quantizing W
  llama::MethodSpec spec;
  bool help = false;
};

// This tool's defaults where they differ from q2n_llama's: GPTQ's own (4 bits, per row).
llama::MethodSpec default_spec() {
  llama::MethodSpec s;
  s.grid.bits = 4;
  s.groupsize = -1;
  return s;
}

std::string usage() {
  return "usage: q2n-layer --input IN.safetensors --output OUT.safetensors\n"
         "         --method given|rtn|gptq|owq|pbllm|leanquant|quip [--bits N] [--q2n [on|off]]\n"
         "         [--q-tensor NAME] [quantizer and Q2N flags below]\n"
         "  --bits N              weight bits (default 4)\n"
         "  --q2n [on|off]        refine with Q2N (a bare --q2n means on; default off)\n"
         "  --q-tensor NAME       with --method given: the tensor holding Q (default Q)\n" +
         llama::method_flags_usage(default_spec());
}

Args parse(int argc, char** argv) {
  Args a;
  a.spec = default_spec();
  llama::ArgCursor c(argc, argv, "q2n-layer");
  bool has_method = false;
  try {
    while (c.next()) {
      const std::string& k = c.flag();
      if (k == "--help" || k == "-h") {
        a.help = true;
      } else if (k == "--input") {
        a.input = c.value();
      } else if (k == "--output") {
        a.output = c.value();
      } else if (k == "--q-tensor") {
        a.q_tensor = c.value();
      } else if (k == "--method") {
        const std::string v = c.value();
        a.given = v == "given";
        if (!a.given) a.spec.method = llama::method_value(c, v);
        has_method = true;
      } else if (!llama::parse_method_flag(c, a.spec)) {
        c.fail("unknown option ", k);
      }
    }
    if (a.help) return a;
    if (a.input.empty()) c.fail("--input is required");
    if (a.output.empty()) c.fail("--output is required");
    if (!has_method) c.fail("--method is required: given, rtn, gptq, owq, pbllm, leanquant or quip");
    llama::check_method_flags(c, a.spec);
    if (a.spec.method == llama::Method::quarot)
      c.fail("--method quarot rotates a whole model (q2n_llama); a layer whose inputs are rotated "
             "already quantizes as QuaRot's linears do with --method gptq --sym --mse --group 0");
    if (a.spec.method == llama::Method::leanquant || a.spec.method == llama::Method::quip)
      a.spec.groupsize = -1;  // no groups
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(e.what() + std::string("\n") + usage());
  }
  return a;
}

// ‖X (Q − W)ᵀ‖² / ‖X Wᵀ‖² over all tokens, in token chunks (float products, double sums);
// used when there are fewer tokens than inputs (otherwise the error goes through H).
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

std::vector<std::int64_t> length(Eigen::Index n) { return {static_cast<std::int64_t>(n)}; }

// The storage's parts under fixed tensor names (a part that is absent writes nothing).
void add_storage(q2n::io::SafetensorsWriter& out, const q2n::QuantStorage<float>& s) {
  using q2n::io::DType;
  if (const auto& u = s.uniform) {
    const bool zp = u->form == q2n::AffineForm::zero_point;
    out.add("codes", u->codes, DType::U8);
    out.add("scales", u->scales, DType::F32);
    out.add(zp ? "zeros" : "offsets", zp ? u->zeros : u->offsets, DType::F32);
    out.add("g_idx", u->g_idx, DType::I32, length(u->g_idx.size()));
  }
  if (const auto& b = s.codebook) {
    out.add("codes", b->codes, DType::U8);
    out.add("codebook", b->values, DType::F32);
  }
  if (const auto& f = s.full_precision) {
    out.add("fp_columns", f->columns, DType::I32, length(f->columns.size()));
    out.add("fp_values", f->values, DType::F32);
  }
  if (const auto& b = s.binarized) {
    out.add("salient", b->salient, DType::U8);
    out.add("signs", b->signs, DType::I8);
    out.add("bin_alpha", b->alpha, DType::F32);
    out.add("bin_mean", b->mean, DType::F32);
  }
  if (s.perm.size() > 0) out.add("perm", s.perm, DType::I32, length(s.perm.size()));
}

// Reads W and X and checks that they fit together; seqlen: rows of X per sequence.
struct Layer {
  Matrix w, x;
  Eigen::Index seqlen = 0;
};

Layer read_layer(const q2n::io::SafetensorsReader& in, const std::string& path) {
  for (const char* name : {"W", "X"})
    if (!in.contains(name))
      throw std::invalid_argument("q2n-layer: " + path + " has no tensor '" + name +
                                  "'; it needs W (rows x cols) and X (samples x seqlen x cols "
                                  "or tokens x cols)");
  const auto& xshape = in.info("X").shape;
  if (xshape.size() != 2 && xshape.size() != 3)
    throw std::invalid_argument("q2n-layer: X in " + path + " has " +
                                std::to_string(xshape.size()) +
                                " dimensions; pass samples x seqlen x cols or tokens x cols");
  Layer l;
  l.w = in.read_matrix<float>("W");
  l.x = in.read_matrix<float>("X");
  if (l.x.cols() != l.w.cols())
    throw std::invalid_argument("q2n-layer: X has " + std::to_string(l.x.cols()) +
                                " columns but W has " + std::to_string(l.w.cols()) +
                                "; X must hold the layer's inputs");
  if (l.x.rows() == 0) throw std::invalid_argument("q2n-layer: X holds no tokens");
  l.seqlen = xshape.size() == 3 ? xshape[1] : l.x.rows();
  return l;
}

// Calls f on each sequence of X (rows [s, s + seqlen)) in order.
template <class F>
void for_each_sequence(const Layer& l, F&& f) {
  for (Eigen::Index s = 0; s < l.x.rows(); s += l.seqlen) f(l.x.middleRows(s, l.seqlen));
}

// --method given: the Q to refine, checked against W.
q2n::QuantResult<float> read_given(const q2n::io::SafetensorsReader& in, const Args& a,
                                   const Matrix& w) {
  if (!in.contains(a.q_tensor))
    throw std::invalid_argument("q2n-layer: --method given needs tensor '" + a.q_tensor +
                                "' in " + a.input + " (set its name with --q-tensor)");
  const Matrix q = in.read_matrix<float>(a.q_tensor);
  if (q.rows() != w.rows() || q.cols() != w.cols())
    throw std::invalid_argument("q2n-layer: " + a.q_tensor + " is " + std::to_string(q.rows()) +
                                " x " + std::to_string(q.cols()) + " but W is " +
                                std::to_string(w.rows()) + " x " + std::to_string(w.cols()));
  return q2n::full_precision_result(q);
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
  Layer l = read_layer(in, a.input);
  const Matrix& w = l.w;
  const Matrix& x = l.x;
  const Eigen::Index tokens = x.rows();
  lap("read");

  // Statistics: Ā over sequences (a 2-D X counts as one sequence) and its null space first,
  // then H over all tokens: one at a time, each double accumulator dropped once its float
  // result exists, and H (cols × cols) not alive while the null space is computed.
  // QuIP refines in its own basis: it keeps Ā, and its null space is part of the refinement.
  const bool own_basis = !a.given && a.spec.method == llama::Method::quip;
  std::optional<q2n::NullSpace<float>> ns;
  Matrix abar;
  if (a.spec.q2n) {
    {
      q2n::SampleMeanAccumulator acc(w.cols());
      for_each_sequence(l, [&](const auto& seq) { acc.add_sequence(seq); });
      abar = acc.mean_as<float>();
    }
    lap("statistics");
    if (!own_basis) {
      ns = llama::layer_null_space(abar, a.spec.null_space);
      abar.resize(0, 0);
      lap("null_space");
    }
  }
  // H over all tokens: for the quantizer (GPTQ, OWQ, PB-LLM) and, when there are more tokens
  // than inputs, for the output error too (tr(D H Dᵀ) costs rows·cols² instead of
  // tokens·rows·cols). The double sums are kept only when the error needs them.
  const bool quantizer_needs_h = !a.given && a.spec.method != llama::Method::rtn;
  const bool error_through_h = tokens > w.cols();
  std::optional<q2n::HessianAccumulator> hacc;
  Matrix h;
  if (quantizer_needs_h || error_through_h) {
    hacc.emplace(w.cols());
    for_each_sequence(l, [&](const auto& seq) { hacc->add(seq); });
    if (quantizer_needs_h) h = hacc->hessian_as<float>();
    if (!error_through_h) hacc.reset();
    lap("statistics");
  }
  // When the error goes through H nothing reads X from here on: X, the largest input, is
  // released before the quantizer's working copies exist.
  if (error_through_h) l.x.resize(0, 0);

  // The quantizer (h is consumed: moved into its working copy) and Q2N.
  const q2n::NullSpace<float>* nsp = ns ? &*ns : nullptr;
  llama::LinearResult r = a.given ? llama::refine_linear(read_given(in, a, w), w, nsp, a.spec)
                                  : llama::quantize_linear(w, std::move(h), nsp, a.spec,
                                                           own_basis ? &abar : nullptr);
  lap("quantize");
  if (r.refined) {
    seconds["quantize"] -= r.refine_seconds;
    seconds["refine"] += r.refine_seconds;
    seconds["refine_m"] = r.refined->seconds.m;  // part of "refine": the closed form alone
  }
  if (error_through_h) {
    const Eigen::MatrixXd hd = hacc->hessian();
    hacc.reset();
    const llama::HessianOutputError error(w, hd);
    llama::measure_errors(r, error);
  } else {
    llama::measure_errors(r, [&](const Matrix& q) { return relative_output_error(x, w, q); });
  }
  lap("error");

  q2n::io::SafetensorsWriter out;
  const std::string method = a.given ? "given" : llama::method_name(a.spec.method);
  nlohmann::json line = {{"method", method}, {"bits", a.spec.grid.bits},
                         {"group", a.spec.groupsize}, {"q2n", a.spec.q2n}, {"rows", w.rows()},
                         {"cols", w.cols()}, {"tokens", tokens}};
  line["cut_index"] = nullptr;
  if (r.refined) {
    out.add("m", r.refined->m, q2n::io::DType::F32, length(w.rows()));
    const std::vector<std::int32_t> cut = {static_cast<std::int32_t>(r.refined->cut.index())};
    out.add_flat("cut_index", cut, q2n::io::DType::I32, {1});
    line["cut_index"] = r.refined->cut.index();
    line["kept"] = r.refined->cut.kept;
  }
  if (ns) {
    line["null_space_route"] = route_name(ns->route());
    line["route_reason"] = ns->route_reason();
  }
  const q2n::QuantResult<float>& res = r.final_result();
  out.add("Q", res.Q, q2n::io::DType::F32);
  if (!a.given) add_storage(out, res.storage);  // a given Q's storage is Q itself
  out.set_metadata("method", method);
  out.set_metadata("bits", std::to_string(a.spec.grid.bits));
  out.set_metadata("group", std::to_string(a.spec.groupsize));
  out.write(a.output);
  lap("write");

  line["rel_out_err"] = r.err_after;
  line["rel_out_err_before_q2n"] = r.err_before;
  line["damping"] = res.diagnostics.damping;
  line["damping_retries"] = res.diagnostics.retries;
  line["seconds"] = seconds;
  std::cout << line.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  q2n::pin_product_blocking();  // the same bits on any machine (q2n/reproducibility.hpp)
  try {
    const Args a = parse(argc, argv);
    if (a.help) {
      std::cout << usage();
      return 0;
    }
    // Unlike q2n_llama, freed buffers go back to the system (no mallopt): one layer at LLM
    // size is the point of this tool, and keeping them raised its peak by a quarter.
    return run(a);
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
}
