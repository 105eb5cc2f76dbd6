// Standalone check of one linear layer dumped by `q2n_llama --dump-linear L.NAME --dump-file F`:
// recomputes the calibration statistics from the dumped inputs with the library accumulators,
// calls the quantizer and the Q2N plug-in directly (not through the example's code), and
// requires the same H, Ā, Q and refined Q as the example produced inside its sequential pass.
//
// usage: llama_layer_check DUMP.safetensors
//        llama_layer_check DUMP.safetensors --against TOOL_OUT.safetensors (--exact | --tol T)
//   The second form compares the Q that q2n-layer wrote for the same dump with the example's:
//   bit for bit, or within a relative Frobenius distance T.
#include <q2n/io/safetensors.hpp>
#include <q2n/quantizers.hpp>

#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

namespace {

int failures = 0;

template <class A, class B>
void expect_equal(const std::string& what, const A& got, const B& want) {
  const double diff = (got.template cast<double>() - want.template cast<double>()).cwiseAbs().maxCoeff();
  const bool ok = got.rows() == want.rows() && got.cols() == want.cols() && diff == 0.0;
  std::cout << (ok ? "ok   " : "FAIL ") << what << ": " << got.rows() << " x " << got.cols()
            << ", max |difference| = " << diff << "\n";
  if (!ok) ++failures;
}

}  // namespace

int main(int argc, char** argv) {
  const bool against = argc == 5 && std::string(argv[2]) == "--against";
  if (argc != 2 && !against) {
    std::cerr << "usage: llama_layer_check DUMP.safetensors [--against OUT (--exact | --tol T)]\n";
    return 2;
  }
  try {
    if (against) {
      q2n::io::SafetensorsReader dump(argv[1]), tool(argv[3]);
      const Eigen::MatrixXf mine = dump.read_matrix<float>("Q");
      const Eigen::MatrixXf theirs = tool.read_matrix<float>("Q");
      if (std::string(argv[4]) == "--exact") {
        expect_equal("Q (q2n-layer vs the example)", theirs, mine);
      } else {
        const double tol = std::stod(argv[4]);
        const bool same_shape = mine.rows() == theirs.rows() && mine.cols() == theirs.cols();
        const double rel = same_shape ? (theirs - mine).norm() / mine.norm() : 1e300;
        const bool ok = rel <= tol;
        std::cout << (ok ? "ok   " : "FAIL ") << "Q (q2n-layer vs the example): relative "
                  << "Frobenius distance " << rel << " (tolerance " << tol << ")\n";
        if (!ok) ++failures;
      }
      std::cout << (failures ? "FAILED\n" : "PASSED\n");
      return failures ? 1 : 0;
    }
    q2n::io::SafetensorsReader in(argv[1]);
    const auto& meta = in.metadata();
    auto num = [&](const char* k) { return std::stod(meta.at(k)); };
    auto flag = [&](const char* k) { return meta.at(k) == "1"; };
    const std::string method = meta.at("method");
    const int bits = std::stoi(meta.at("bits"));
    const Eigen::Index group = std::stol(meta.at("groupsize"));
    const Eigen::Index seqlen = std::stol(meta.at("seqlen"));
    const int shards = std::stoi(meta.at("hessian_shards"));
    const bool q2n_on = flag("q2n");
    std::cout << "layer " << meta.at("layer") << " " << meta.at("module") << ": " << method
              << " w" << bits << " g" << group << (q2n_on ? " +q2n" : "") << "\n";

    // Row-major, as the example holds its activations.
    const auto X = in.read_matrix<float>("X");
    const Eigen::MatrixXf W = in.read_matrix<float>("W");
    const Eigen::Index S = X.rows() / seqlen;

    // Statistics by the documented definition: window s → shard s·shards/S, one add per
    // window, shards merged in order; Ā over all windows in order.
    std::vector<q2n::HessianAccumulator> acc(static_cast<std::size_t>(shards),
                                             q2n::HessianAccumulator(X.cols()));
    for (Eigen::Index s = 0; s < S; ++s)
      acc[static_cast<std::size_t>(s * shards / S)].add(X.middleRows(s * seqlen, seqlen));
    for (int k = 1; k < shards; ++k) acc[0].merge(acc[static_cast<std::size_t>(k)]);
    const Eigen::MatrixXd H = acc[0].hessian();
    q2n::SampleMeanAccumulator mean(X.cols());
    for (Eigen::Index s = 0; s < S; ++s) mean.add_sequence(X.middleRows(s * seqlen, seqlen));
    const Eigen::MatrixXd abar = mean.mean();
    expect_equal("H", H, in.read_matrix<double>("hessian"));
    expect_equal("abar", abar, in.read_matrix<double>("abar"));

    // The quantizer with the dumped settings, written out here rather than through the
    // example's MethodSpec mapping: this is the independent side of the comparison.
    q2n::UniformOptions grid;
    grid.bits = bits;
    grid.sym = flag("sym");
    grid.mse = flag("mse");
    // GPTQ, OWQ and PB-LLM share groups, damping and the sweep.
    auto second_order = [&](auto o) {
      o.groupsize = group;
      o.damping.percdamp = num("percdamp");
      o.sweep.blocksize = std::stol(meta.at("blocksize"));
      return o;
    };
    q2n::QuantResult<float> res;
    if (method == "rtn") {
      q2n::RtnOptions o;
      o.grid = grid;
      o.groupsize = group;
      res = q2n::rtn(W, o);
    } else if (method == "gptq") {
      auto o = second_order(q2n::GptqOptions{});
      o.grid = grid;
      o.act_order = flag("act_order");
      o.static_groups = flag("static_groups");
      res = q2n::gptq(W, H, o);
    } else if (method == "owq") {
      auto o = second_order(q2n::OwqOptions{});
      o.grid = grid;
      o.act_order = flag("act_order");
      const long columns = std::stol(meta.at("owq_columns"));
      if (columns >= 0) o.outlier_columns = columns;
      else if (num("owq_target_bits") > 0) o.target_bits = num("owq_target_bits");
      else o.target_bits = bits + num("owq_extra_bits");
      res = q2n::owq(W, H, o);
    } else if (method == "pbllm") {
      auto o = second_order(q2n::PbllmOptions{});
      o.low_frac = num("pb_low_frac");
      o.high.bits = std::stoi(meta.at("pb_high_bit"));
      o.salience = meta.at("pb_salience") == "magnitude" ? q2n::Salience::magnitude
                                                         : q2n::Salience::hessian;
      res = q2n::pbllm(W, H, o);
    } else if (method == "leanquant") {
      q2n::LeanQuantOptions o;
      o.bits = bits;
      o.exponent = num("lq_exponent");
      o.max_iter = std::stoi(meta.at("lq_max_iter"));
      o.act_order = flag("act_order");
      o.damping.percdamp = num("percdamp");
      o.sweep.blocksize = std::stol(meta.at("blocksize"));
      res = q2n::leanquant(W, H, o);
    } else if (method == "quip") {
      q2n::QuipOptions o;
      o.bits = bits;
      o.incoherence = static_cast<q2n::Incoherence>(std::stoi(meta.at("quip_transform")));
      o.grid = static_cast<q2n::QuipGrid>(std::stoi(meta.at("quip_grid")));
      o.rescale = flag("quip_rescale");
      o.npasses = std::stoi(meta.at("quip_npasses"));
      o.seed = std::stoull(meta.at("transform_seed"));
      o.damping.percdamp = num("percdamp");
      o.sweep.blocksize = std::stol(meta.at("blocksize"));
      res = q2n::quip(W, H, o);
    } else {
      std::cerr << "unknown method " << method << "\n";
      return 2;
    }
    expect_equal("Q before Q2N", res.Q, in.read_matrix<float>("Q_before"));
    if (q2n_on) {
      q2n::NullSpaceOptions nso;
      nso.threshold = num("threshold");
      nso.rule = meta.at("cut_rule") == "plain" ? q2n::CutRule::plain : q2n::CutRule::paper;
      // QuIP's storage is in its own basis: the null space of Ā mapped into it.
      const auto ns = res.storage.transforms.identity()
                          ? q2n::NullSpace<float>::compute(abar, nso)
                          : q2n::NullSpace<float>::compute(
                                q2n::activations_to_stored_basis(res.storage, Eigen::MatrixXf(abar.cast<float>())), nso);
      const q2n::Refinement<float> ref = q2n::refine(res, W, ns, num("lambda"));
      std::cout << "     kept rank " << ns.kept() << " of " << X.cols() << "\n";
      expect_equal("m", ref.m, in.read_matrix<float>("m"));
      expect_equal("Q after Q2N", ref.Q, in.read_matrix<float>("Q"));
      if (ns.kept() > 0 && (ref.m.array() != 1.0f).count() == 0) {
        std::cout << "FAIL the refinement changed nothing although a cut was found\n";
        ++failures;
      }
    } else {
      expect_equal("Q", res.Q, in.read_matrix<float>("Q"));
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  std::cout << (failures ? "FAILED\n" : "PASSED\n");
  return failures ? 1 : 0;
}
