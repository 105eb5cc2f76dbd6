// Checks q2n_llama's exports inside a third-party engine: llama.cpp (node-llama-cpp's
// prebuilt CPU build, driven by tests/interop/logprobs.mjs) evaluates the GGUF files, and this
// program compares what it returns with the reference files and with q2n_llama's own report.
//
// usage: interop_check --node NODE --script logprobs.mjs --tokens TEXT --threads N COMMAND ...
//   float GGUF --windows N --reference-logits F --reference-eval F
//       the float export vs reference_logits.safetensors (max |Δ log p| over the 128 reference
//       positions, every vocabulary entry) and, on the full protocol, vs reference_eval.json
//   quantized REPORT.jsonl --windows N [--table OUT.md] [--corrupt]
//       every GGUF in the report (q2n_llama --export gguf --report) vs its F32 twin (the same
//       file with every tensor decoded to F32 by q2n's reader; a dense file is its own twin)
//       and vs q2n_llama's perplexity;
//       --corrupt first swaps the nibble order of every 4/5-bit block and requires that the
//       checks FAIL for every file
//   checkpoints REPORT.jsonl --windows N
//       every GPTQ and compressed-tensors export in the report, decoded by an independent
//       decoder (tests/checkpoint_decode.hpp), must equal the example's dense weights (--save
//       DIR beside them, "dense" in the report's folder) bit for bit; the decoded GPTQ codes are
//       then written as a GGUF again, which must equal the example's GGUF byte for byte and
//       which llama.cpp evaluates to the example's perplexity
// Prints one line per check ("ok   ..." / "FAIL ...") and "PASSED" or "FAILED".
#include "../../tests/checkpoint_decode.hpp"

#include <q2n/io/gguf.hpp>
#include <q2n/io/gguf_llama.hpp>
#include <q2n/io/safetensors.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

struct Harness {
  std::string node, script, tokens;
  int threads = 1;
  double seconds = 0;  // time spent in llama.cpp runs

  // Runs llama.cpp on `models` over the first `windows` windows; `rows` full log-prob rows.
  std::vector<Json> run(const std::vector<std::string>& models, long windows, int rows) {
    const std::string out = fs::temp_directory_path() / ("q2n_interop_" + std::to_string(::getpid()) + ".json");
    std::ostringstream cmd;
    cmd << "'" << node << "' '" << script << "' --tokens '" << tokens << "' --seqlen 256 --windows "
        << windows << " --threads " << threads << " --rows " << rows << " --out '" << out << "'";
    for (const auto& m : models) cmd << " '" << m << "'";
    const auto t0 = std::chrono::steady_clock::now();
    const int rc = std::system(cmd.str().c_str());
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rc != 0) throw std::runtime_error("the llama.cpp harness failed (" + std::to_string(rc) + "): " + cmd.str());
    std::ifstream in(out);
    Json j = Json::parse(in);
    fs::remove(out);
    return j.at("models").get<std::vector<Json>>();
  }
};

int failures = 0;

void report(bool ok, const std::string& what) {
  std::cout << (ok ? "ok   " : "FAIL ") << what << std::endl;
  if (!ok) ++failures;
}

std::string num(double v, int prec = 6) {
  char b[64];
  std::snprintf(b, sizeof b, "%.*g", prec, v);
  return b;
}

// log p of a JSON value (null = probability 0 = -inf).
double logp(const Json& v) { return v.is_null() ? -INFINITY : v.get<double>(); }

// A copy of GGUF `src` with every tensor decoded to F32 (same metadata, same names).
void write_twin(const std::string& src, const std::string& dst) {
  q2n::io::GgufReader r(src);
  q2n::io::GgufWriter w;
  for (const auto& kv : r.metadata()) w.set(kv.first, kv.second);
  for (const auto& t : r.tensors()) {
    const auto m = r.dequantize(t.name);
    if (t.ne.size() == 1) w.add_dense(t.name, Eigen::VectorXf(Eigen::Map<const Eigen::VectorXf>(m.data(), m.size())));
    else w.add_dense(t.name, m);
  }
  w.write(dst);
}

// A copy of `src` whose 4/5-bit blocks store element t (< 16) and t + 16 in the opposite
// nibbles: the wrong nibble order a writer might produce.
int write_corrupt(const std::string& src, const std::string& dst) {
  q2n::io::GgufReader r(src);
  std::ifstream in(src, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  int tensors = 0;
  for (const auto& t : r.tensors()) {
    const bool four = t.type == q2n::io::GgmlType::Q4_0 || t.type == q2n::io::GgmlType::Q4_1;
    const bool five = t.type == q2n::io::GgmlType::Q5_0 || t.type == q2n::io::GgmlType::Q5_1;
    if (!four && !five) continue;
    ++tensors;
    const bool with_min = t.type == q2n::io::GgmlType::Q4_1 || t.type == q2n::io::GgmlType::Q5_1;
    const std::size_t nib = (with_min ? 4 : 2) + (five ? 4 : 0);
    const std::size_t bb = q2n::io::ggml_block_bytes(t.type);
    for (std::uint64_t b = 0; b < t.bytes / bb; ++b) {
      auto* q = reinterpret_cast<unsigned char*>(bytes.data()) + r.data_offset() + t.offset + b * bb + nib;
      for (int k = 0; k < 16; ++k) q[k] = static_cast<unsigned char>((q[k] >> 4) | (q[k] << 4));
    }
  }
  std::ofstream out(dst, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return tensors;
}

std::vector<Json> read_report(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::vector<Json> runs;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) {
      Json j = Json::parse(line);
      if (j.contains("export") && j.value("method", "") != "none") runs.push_back(j);
    }
  return runs;
}

// The GGUF types of the quantized linears ("Q4_0", "Q5_0 + F32", ...).
std::string linear_types(const std::string& gguf) {
  q2n::io::GgufReader r(gguf);
  std::set<std::string> types;
  for (const auto& t : r.tensors())
    if (t.name.rfind("blk.", 0) == 0 && t.ne.size() == 2) types.insert(q2n::io::ggml_type_name(t.type));
  std::string s;
  for (const auto& t : types) s += (s.empty() ? "" : " + ") + t;
  return s;
}

int cmd_float(Harness& h, const std::string& gguf, long windows, const std::string& logits_path,
              const std::string& eval_path) {
  q2n::io::SafetensorsReader ref(logits_path);
  const Eigen::MatrixXd logits = ref.read_matrix<double>("logits");
  const auto ids = ref.read_flat<double>("input_ids");
  const auto res = h.run({gguf}, windows, static_cast<int>(logits.rows()));
  const Json& m = res.at(0);
  // The reference's inputs are the first bytes of the evaluation text (checked, not assumed).
  std::ifstream tin(h.tokens, std::ios::binary);
  std::vector<unsigned char> text((std::istreambuf_iterator<char>(tin)), std::istreambuf_iterator<char>());
  bool same_inputs = text.size() >= ids.size();
  for (std::size_t i = 0; same_inputs && i < ids.size(); ++i) same_inputs = text[i] == ids[i];
  report(same_inputs, "reference_logits input_ids are the first " + std::to_string(ids.size()) +
                          " bytes of the evaluation text");
  double max_d = 0, sum_d = 0;
  for (Eigen::Index t = 0; t < logits.rows(); ++t) {
    const double mx = logits.row(t).maxCoeff();
    const double lse = mx + std::log((logits.row(t).array() - mx).exp().sum());
    const Json& row = m.at("rows").at(static_cast<std::size_t>(t));
    for (Eigen::Index v = 0; v < logits.cols(); ++v) {
      const double d = std::fabs(logp(row.at(static_cast<std::size_t>(v))) - (logits(t, v) - lse));
      max_d = std::max(max_d, std::isnan(d) ? INFINITY : d);
      sum_d += d;
    }
  }
  // 1e-4: llama.cpp's F32 graph differs from the reference's float32 forward only in the
  // order of its sums (measured 2e-5); a wrong RoPE row order or tokenizer gives nats.
  report(max_d <= 1e-4, "float GGUF vs reference_logits: max |Δ log p| = " + num(max_d, 3) +
                            " over " + std::to_string(logits.rows()) + " × " +
                            std::to_string(logits.cols()) + " (mean " +
                            num(sum_d / static_cast<double>(logits.size()), 3) + "; tolerance 1e-4)");
  std::ifstream ein(eval_path);
  const Json ev = Json::parse(ein);
  const double ppl = m.at("ppl").get<double>();
  if (windows == ev.at("windows").get<long>()) {
    const double rel = ppl / ev.at("ppl").get<double>() - 1;
    // 1e-4 = 0.01 %: the same summation-order differences, accumulated over 65,280 predictions.
    report(std::fabs(rel) <= 1e-4, "float GGUF perplexity on the reference protocol: llama.cpp " +
                                       num(ppl, 8) + " vs reference_eval.json " +
                                       num(ev.at("ppl").get<double>(), 8) + " (relative " +
                                       num(rel, 3) + "; tolerance 1e-4)");
  } else {
    std::cout << "note perplexity over " << windows << " windows: " << num(ppl, 8)
              << " (the reference protocol has " << ev.at("windows") << ")\n";
  }
  return 0;
}

struct Verdict {
  double ppl_engine = 0, ppl_twin = 0, rel_engine = 0, rel_twin = 0, argmax = 0, mean_d = 0, max_d = 0;
  bool ok() const {
    // 1e-3 (0.1 %): llama.cpp rounds the activations to 8 bits for block-quantized matmuls
    // (Q8_0 / Q8_1 activations), which q2n's float forward does not; measured ≤ 1e-4.
    // 1e-4: the F32 twin holds the same weights and differs by summation order only.
    // 99 % argmax agreement and mean |Δ log p| ≤ 0.05 nats: activation rounding moves log p by
    // about 0.02 nats; a wrong block layout moves it by several nats.
    return std::fabs(rel_engine) <= 1e-3 && std::fabs(rel_twin) <= 1e-4 && argmax >= 0.99 &&
           mean_d <= 0.05;
  }
};

Verdict compare(const Json& packed, const Json& twin, double ppl_q2n) {
  Verdict v;
  v.ppl_engine = packed.at("ppl").get<double>();
  v.ppl_twin = twin.at("ppl").get<double>();
  v.rel_engine = v.ppl_engine / ppl_q2n - 1;
  v.rel_twin = v.ppl_twin / ppl_q2n - 1;
  const auto& a = packed.at("argmax");
  const auto& b = twin.at("argmax");
  const auto& la = packed.at("target_logp");
  const auto& lb = twin.at("target_logp");
  std::size_t agree = 0;
  double sum = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    agree += a[i] == b[i] ? 1 : 0;
    const double d = std::fabs(logp(la[i]) - logp(lb[i]));
    sum += std::isnan(d) ? INFINITY : d;
    v.max_d = std::max(v.max_d, std::isnan(d) ? INFINITY : d);
  }
  v.argmax = static_cast<double>(agree) / static_cast<double>(a.size());
  v.mean_d = sum / static_cast<double>(a.size());
  return v;
}

std::string config_label(const Json& r) {
  const bool pb = r.at("method") == "pbllm";
  std::string l = r.at("method").get<std::string>() + (pb ? " " + r.at("bits").dump() + " bits"
                                                          : " w" + std::to_string(r.at("bits").get<int>())) +
                  (r.at("group").is_null() ? " per-row" : " g" + std::to_string(r.at("group").get<int>())) +
                  (pb ? "" : r.value("sym", false) ? " sym" : " asym") + (r.at("q2n").get<bool>() ? " +q2n" : "");
  return l;
}

int cmd_quantized(Harness& h, const std::string& report_path, long windows, const std::string& table,
                  bool corrupt) {
  const auto runs = read_report(report_path);
  std::vector<std::string> files;
  std::vector<const Json*> configs;
  for (const auto& r : runs)
    if (r.at("export").contains("gguf")) {
      if (r.at("eval_windows").get<long>() != windows)
        throw std::runtime_error("the report evaluated " + r.at("eval_windows").dump() +
                                 " windows, not --windows " + std::to_string(windows));
      configs.push_back(&r);
    }
  if (configs.empty()) throw std::runtime_error(report_path + " lists no GGUF export");
  std::vector<std::size_t> packed_at, twin_at;  // indices into `files` / the harness results
  for (const Json* r : configs) {
    const std::string gguf = r->at("export").at("gguf").get<std::string>();
    std::string packed = gguf;
    if (corrupt) {
      packed = gguf.substr(0, gguf.size() - 5) + "-corrupt.gguf";
      const int n = write_corrupt(gguf, packed);
      if (n == 0) throw std::runtime_error(gguf + " has no 4/5-bit block tensor to corrupt");
    }
    packed_at.push_back(files.size());
    files.push_back(packed);
    if (linear_types(gguf) == "F32") {  // a dense export (OWQ, PB-LLM) is its own F32 twin
      twin_at.push_back(packed_at.back());
      continue;
    }
    // Distinct names per mode: two checks of one export may run at the same time.
    const std::string twin = gguf.substr(0, gguf.size() - 5) + (corrupt ? "-twin-c.gguf" : "-twin.gguf");
    write_twin(gguf, twin);
    twin_at.push_back(files.size());
    files.push_back(twin);
  }
  const auto res = h.run(files, windows, 0);
  std::ofstream md;
  if (!table.empty()) {
    md.open(table);
    md << "| configuration | GGUF linears | PPL q2n | PPL llama.cpp | Δ rel | PPL llama.cpp F32 twin | "
          "Δ rel | argmax = twin | mean \\|Δ log p\\| |\n|---|---|---:|---:|---:|---:|---:|---:|---:|\n";
  }
  for (std::size_t k = 0; k < configs.size(); ++k) {
    const Json& r = *configs[k];
    const Verdict v = compare(res.at(packed_at[k]), res.at(twin_at[k]), r.at("ppl").get<double>());
    const std::string what = config_label(r) + " [" + linear_types(files[packed_at[k]]) + "]: PPL q2n " +
                             num(r.at("ppl").get<double>(), 7) + ", llama.cpp " + num(v.ppl_engine, 7) +
                             " (" + num(v.rel_engine, 2) + "), F32 twin " + num(v.ppl_twin, 7) + " (" +
                             num(v.rel_twin, 2) + "), argmax agreement " + num(100 * v.argmax, 4) +
                             " %, mean |Δ log p| " + num(v.mean_d, 3) + ", max " + num(v.max_d, 3);
    if (corrupt) report(!v.ok(), "corrupted nibble order is caught: " + what);
    else report(v.ok(), what);
    if (md.is_open())
      md << "| " << config_label(r) << " | " << linear_types(files[packed_at[k]]) << " | "
         << num(r.at("ppl").get<double>(), 6) << " | " << num(v.ppl_engine, 6) << " | "
         << num(v.rel_engine, 2) << " | " << num(v.ppl_twin, 6) << " | " << num(v.rel_twin, 2) << " | "
         << num(100 * v.argmax, 4) << " % | " << num(v.mean_d, 2) << " |\n";
  }
  return 0;
}

int cmd_checkpoints(Harness& h, const std::string& report_path, long windows) {
  const auto runs = read_report(report_path);
  int checked = 0;
  for (const auto& r : runs) {
    const auto& ex = r.at("export");
    const std::string label = config_label(r);
    const std::string dense_dir = (fs::path(report_path).parent_path() / "dense").string();
    q2n::io::SafetensorsReader dense(dense_dir + "/model.safetensors");
    const int bits = r.at("bits").get<int>();
    std::vector<std::pair<std::string, std::string>> kinds;
    if (ex.contains("gptq")) kinds.emplace_back("gptq", ex.at("gptq").get<std::string>());
    if (ex.contains("ct")) kinds.emplace_back("ct", ex.at("ct").get<std::string>());
    for (const auto& [kind, dir] : kinds) {
      q2n::io::SafetensorsReader ck(dir + "/model.safetensors");
      std::ifstream cin(dir + "/config.json");
      const Json qc = Json::parse(cin).at("quantization_config");
      bool v1 = false;
      if (kind == "gptq") {
        std::ifstream qin(dir + "/quantize_config.json");
        const Json q2 = Json::parse(qin);
        report(q2 == qc, label + " gptq: quantize_config.json equals config.json's quantization_config");
        v1 = qc.at("checkpoint_format") == "gptq";
        report(qc.at("bits") == bits && qc.at("sym") == r.value("sym", false) &&
                   v1 == r.value("sym", false),
               label + " gptq: config bits " + qc.at("bits").dump() + ", sym " + qc.at("sym").dump() +
                   ", checkpoint_format " + qc.at("checkpoint_format").dump());
      } else {
        const Json& wq = qc.at("config_groups").at("group_0").at("weights");
        report(qc.at("format") == "pack-quantized" && wq.at("num_bits") == bits &&
                   wq.at("symmetric") == r.value("sym", false),
               label + " ct: config " + wq.dump());
      }
      q2n::io::GgufReader gg(ex.at("gguf").get<std::string>());
      q2n::io::GgufWriter w;  // the GGUF rebuilt from the decoded GPTQ codes
      for (const auto& kv : gg.metadata()) w.set(kv.first, kv.second);
      std::size_t modules = 0, mismatched = 0;
      for (const auto& t : gg.tensors()) {
        // The HF name of this GGUF tensor.
        std::string hf;
        for (const auto& n : dense.names())
          if (q2n::io::llama_gguf_tensor_name(n) == t.name) hf = n;
        if (hf.empty()) throw std::runtime_error("no checkpoint tensor maps to " + t.name);
        const bool linear = hf.find("_proj.weight") != std::string::npos;
        std::vector<Eigen::Index> order;
        const auto heads = gg.value("llama.attention.head_count").u;
        const auto kv_heads = gg.value("llama.attention.head_count_kv").u;
        const auto hd = gg.value("llama.rope.dimension_count").u;
        if (hf.find("q_proj") != std::string::npos) order = q2n::io::rope_row_order(heads, hd);
        if (hf.find("k_proj") != std::string::npos) order = q2n::io::rope_row_order(kv_heads, hd);
        if (!linear) {
          const auto v = ck.read_matrix<float>(hf);
          if (t.ne.size() == 1) w.add_dense(t.name, Eigen::VectorXf(Eigen::Map<const Eigen::VectorXf>(v.data(), v.size())));
          else w.add_dense(t.name, v);
          continue;
        }
        const std::string module = hf.substr(0, hf.size() - 7);
        const auto mod = kind == "gptq" ? checkpoint_decode::decode_gptq(ck, module, bits, v1)
                                        : checkpoint_decode::decode_compressed_tensors(ck, module, bits);
        const auto want = dense.read_matrix<float>(hf);
        ++modules;
        if (!(mod.weights.rows() == want.rows() && mod.weights.cols() == want.cols() &&
              (mod.weights.array() == want.array()).all()))
          ++mismatched;
        // The decoded codes as a q2n storage, then the GGUF carrier.
        q2n::UniformGrid<float> grid;
        grid.bits = bits;
        grid.codes = mod.codes.cast<std::uint8_t>();
        grid.scales = mod.scales;
        grid.zeros = mod.zeros.cast<float>();
        grid.g_idx = mod.g_idx;
        auto st = q2n::StorageBuilder<float>(mod.codes.rows(), mod.codes.cols(), kind).uniform(std::move(grid)).build();
        if (t.type == q2n::io::GgmlType::F32) w.add_dense(t.name, q2n::dequantize(st), q2n::io::GgmlType::F32, order);
        else w.add_quantized(t.name, st, t.type, order);
      }
      report(modules > 0 && mismatched == 0,
             label + " " + kind + ": " + std::to_string(modules) +
                 " modules decoded by the independent decoder equal the evaluated weights bit for bit (" +
                 std::to_string(mismatched) + " differ)");
      if (kind != "gptq") continue;
      const std::string rebuilt = dir + "/rebuilt-from-gptq.gguf";
      w.write(rebuilt);
      std::ifstream a(rebuilt, std::ios::binary), b(ex.at("gguf").get<std::string>(), std::ios::binary);
      const std::string sa((std::istreambuf_iterator<char>(a)), std::istreambuf_iterator<char>());
      const std::string sb((std::istreambuf_iterator<char>(b)), std::istreambuf_iterator<char>());
      report(sa == sb, label + " gptq → decode → GGUF equals the example's GGUF byte for byte (" +
                           std::to_string(sa.size()) + " bytes)");
      const auto res = h.run({rebuilt}, windows, 0);
      const double rel = res.at(0).at("ppl").get<double>() / r.at("ppl").get<double>() - 1;
      // Same tolerance as the direct GGUF check (activation rounding in llama.cpp).
      report(std::fabs(rel) <= 1e-3, label + " gptq → GGUF in llama.cpp: PPL " +
                                         num(res.at(0).at("ppl").get<double>(), 7) + " vs q2n " +
                                         num(r.at("ppl").get<double>(), 7) + " (relative " + num(rel, 2) + ")");
      ++checked;
    }
  }
  if (checked == 0) throw std::runtime_error(report_path + " lists no GPTQ export");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Harness h;
    std::vector<std::string> args(argv + 1, argv + argc);
    std::map<std::string, std::string> opt;
    std::vector<std::string> pos;
    std::set<std::string> flags{"--corrupt"};
    for (std::size_t i = 0; i < args.size(); ++i) {
      if (flags.count(args[i])) opt[args[i]] = "1";
      else if (args[i].rfind("--", 0) == 0 && i + 1 < args.size()) opt[args[i]] = args[i + 1], ++i;
      else pos.push_back(args[i]);
    }
    auto need = [&](const char* k) {
      if (!opt.count(k)) throw std::invalid_argument(std::string("missing ") + k);
      return opt.at(k);
    };
    h.node = need("--node");
    h.script = need("--script");
    h.tokens = need("--tokens");
    h.threads = std::stoi(need("--threads"));
    if (pos.size() != 2) throw std::invalid_argument("usage: see the head of interop_check.cpp");
    const long windows = std::stol(need("--windows"));
    if (pos[0] == "float") cmd_float(h, pos[1], windows, need("--reference-logits"), need("--reference-eval"));
    else if (pos[0] == "quantized") cmd_quantized(h, pos[1], windows, opt.count("--table") ? opt["--table"] : "", opt.count("--corrupt") > 0);
    else if (pos[0] == "checkpoints") cmd_checkpoints(h, pos[1], windows);
    else throw std::invalid_argument("unknown command " + pos[0]);
    std::cout << "llama.cpp time " << num(h.seconds, 3) << " s\n";
  } catch (const std::exception& e) {
    std::cout << "FAIL " << e.what() << "\n";
    ++failures;
  }
  std::cout << (failures ? "FAILED" : "PASSED") << std::endl;
  return failures ? 1 : 0;
}
