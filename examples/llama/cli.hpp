#pragma once
/// \file cli.hpp
/// Command-line options of the q2n_llama example.

#include "export.hpp"
#include "method_flags.hpp"
#include "text.hpp"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <string>
#include <vector>

namespace llama {

/// All options of q2n_llama (see usage()).
struct Options {
  std::string model_dir;
  std::string eval_text;     ///< bytes (token id = byte); default: the bundled held-out text
  std::string calib_text;    ///< bytes; default: the bundled training text
  std::string eval_tokens;   ///< token ids instead of eval_text (text.hpp: read_token_file)
  std::string calib_tokens;  ///< token ids instead of calib_text
  RawTokens token_dtype = RawTokens::unspecified;  ///< width of a raw token stream
  /// Every setting of the shared vocabulary (method_flags.hpp); method, grid.bits and q2n are
  /// swept over `methods`, `bits` and the ±Q2N variants.
  MethodSpec spec;
  std::vector<Method> methods{std::begin(kWeightOnlyMethods), std::end(kWeightOnlyMethods)};
  std::vector<int> bits{2, 3, 4};
  int nsamples = 128;
  Eigen::Index seqlen = 256;
  std::uint64_t seed = 0;
  int seeds = 1;
  std::int64_t eval_windows = -1;  ///< −1: all windows of the protocol
  Q2nVariants q2n{true, true};     ///< evaluate each method without and/or with Q2N
  bool q2n_down_proj = false;
  bool group_given = false;        ///< --group was passed (else quarot is per row)
  InferenceBits inference;         ///< activation and KV cache bits of every method
  std::string rotation_file;       ///< quarot: the residual rotation (else random Hadamard)
  bool shared_pass = false;        ///< ±Q2N from one sequential pass (approximation)
  bool stream = false;             ///< read the checkpoint layer by layer (streaming.hpp)
  int threads = 0;                 ///< 0: the OpenMP default
  std::string report;              ///< PATH → PATH.md, PATH.csv, PATH.jsonl
  std::string save_dir;
  std::vector<ExportFormat> exports;  ///< --export: each evaluated model in each of these
  std::string export_dir;
  std::string dump_linear;         ///< "LAYER.MODULE", e.g. "1.self_attn.o_proj"
  std::string dump_file;
  bool help = false;
};

inline std::string usage() {
  return R"(usage: q2n_llama [options]

Quantizes a Llama/Qwen2-style byte-level model layer by layer (GPTQ-style sequential
calibration) with RTN, GPTQ, OWQ, PB-LLM, LeanQuant, QuIP and QuaRot, each without and with
the Q2N refinement on the same calibration data, and reports held-out perplexity.

data
  --model DIR           checkpoint directory: config.json + model.safetensors (default: the
                        bundled kjv-256x4)
  --eval-text FILE      held-out bytes (default: the bundled kjv_valid_head.txt)
  --calib-text FILE     calibration bytes (default: the bundled kjv_train_head.txt)
  --eval-tokens FILE    held-out token ids from any tokenizer, instead of --eval-text
  --calib-tokens FILE   calibration token ids, instead of --calib-text
                        A token file is FILE.safetensors holding one integer tensor (or one
                        named input_ids), e.g. I32/I64 [windows, seqlen], read as its rows in
                        order; or a raw little-endian stream of ids (--token-dtype). Windows
                        are cut from it as from bytes: the bytes of a text as ids give the
                        same run as the text.
  --token-dtype D       uint16 | uint32: the id width of raw token streams
  --seqlen T            window length in tokens (default 256)
  --eval-windows N      evaluate only the first N windows (default: all = 255 for the bundled text)
calibration
  --nsamples N          calibration windows (default 128)
  --seed S              seed of the window draw (default 0)
  --seeds N             repeat over seeds S, S+1, …, S+N−1 and report mean ± spread (default 1)
methods
  --methods LIST        comma list of rtn,gptq,owq,pbllm,leanquant,quip,quarot, or all, or
                        none (default: all but quarot; none evaluates the float model only);
                        --method is the same flag. quarot: the model rotated (random Hadamard from the
                        seed, norms fused, online Hadamards before o_proj and down_proj), then
                        GPTQ with the symmetric grid and MSE clip search, per row unless
                        --group is given
  --bits LIST           comma list of weight bits for every method but pbllm (default 2,3,4)
  --a-bits B            per-token symmetric activation quantization of every linear's input
                        but lm_head, for every method (2..16; default 16 = none)
  --a-clip R            activation clip ratio in (0, 1] (default 1)
  --kv-bits B           per-token symmetric quantization of the K and V caches (keys after
                        RoPE, and with quarot after a Hadamard per head) (default 16 = none)
  --kv-clip R           KV cache clip ratio in (0, 1] (default 1)
  --rotation FILE       quarot: the residual rotation Q (hidden x hidden, the one tensor of a
                        safetensors file, e.g. a learned SpinQuant R1) instead of the random
                        Hadamard transform
)" + method_flags_usage(MethodSpec{}) +
         R"(  --q2n [MODE]          both | on | off (default both; a bare --q2n means on)
  --q2n-down-proj       refine mlp.down_proj too (skipped by default)
  --shared-pass         get the +Q2N model from the baseline's sequential pass (the next
                        layer then sees the unrefined layer's outputs): half the passes, an
                        approximation of the exact separate pass
  --stream              read the checkpoint one decoder layer at a time instead of loading
                        it (for models larger than memory): the same numbers; --save then
                        writes a sharded checkpoint layer by layer. Not with --export,
                        --dump-file or --shared-pass; the statistics take less memory and
                        somewhat more time.
output
  --report PATH         write PATH.md (table), PATH.csv (table) and PATH.jsonl (one line per run)
  --save DIR            write the fake-quantized model (config.json + model.safetensors, F32),
                        loadable by --model DIR; needs exactly one quantized configuration
  --export LIST         write every evaluated configuration for inference engines in each
                        format of the comma list, one file or folder per configuration and
                        format, named <method>-w<bits>-g<group>[-q2n] (g0: one group per row;
                        "float" with --methods none) plus .gguf, -f32.gguf, -gptq or -ct:
                          gguf      llama.cpp GGUF; RTN/GPTQ linears in the block type that
                                    holds their codes exactly (Q4_0/Q4_1/Q5_0/Q8_0), the rest F32
                          gguf-f32  GGUF with every tensor F32 (the same weights, dense)
                          gptq      GPTQ checkpoint folder (qweight/qzeros/scales/g_idx)
                          ct        compressed-tensors pack-quantized checkpoint folder
                        OWQ and PB-LLM have no packed form: their linears are written dense.
                        Scales are rounded to fp16 (after Q2N's fold) during the pass, so the
                        perplexity reported is the exported model's.
  --export-dir DIR      where --export writes (required with --export)
  --dump-linear L.NAME  with --dump-file F: save one linear layer's calibration inputs,
                        statistics and result (e.g. 1.self_attn.o_proj) for a standalone check
  --threads N           OpenMP / Eigen threads (default: OpenMP's default)
  --help
Exit codes: 0 success, 2 bad input or a failed run (message on stderr naming the flag or file).
)";
}

namespace detail {

// --methods LIST: names, "all" or "none".
inline std::vector<Method> method_list(ArgCursor& a) {
  const std::string v = a.value();
  if (v == "all") return {std::begin(kAllMethods), std::end(kAllMethods)};
  std::vector<Method> out;
  if (v != "none")
    for (const auto& m : split_commas(v)) out.push_back(method_value(a, m));
  return out;
}

// --export LIST: a comma list of gguf, gguf-f32, gptq, ct.
inline std::vector<ExportFormat> export_list(ArgCursor& a) {
  std::vector<ExportFormat> out;
  const ExportFormat formats[] = {ExportFormat::gguf, ExportFormat::gguf_f32, ExportFormat::gptq,
                                  ExportFormat::ct};
  for (const auto& item : split_commas(a.value())) {
    const auto* f = std::find_if(std::begin(formats), std::end(formats),
                                 [&](ExportFormat x) { return item == export_format_name(x); });
    if (f == std::end(formats)) a.fail(a.flag(), " ", item, " is not one of gguf, gguf-f32, gptq, ct");
    if (std::find(out.begin(), out.end(), *f) == out.end()) out.push_back(*f);
  }
  if (out.empty()) a.fail(a.flag(), " needs at least one format");
  return out;
}

// --token-dtype uint16 | uint32.
inline RawTokens token_dtype(ArgCursor& a) {
  const std::string v = a.value();
  if (v == "uint16") return RawTokens::uint16;
  if (v == "uint32") return RawTokens::uint32;
  a.fail(a.flag(), " ", v, " is not uint16 or uint32");
}

// The flags of q2n_llama itself (data, calibration, sweeps, output); false for any other.
inline bool parse_tool_flag(ArgCursor& a, Options& o) {
  const std::string& f = a.flag();
  if (f == "--help" || f == "-h") o.help = true;
  else if (f == "--model") o.model_dir = a.value();
  else if (f == "--eval-text") o.eval_text = a.value();
  else if (f == "--calib-text") o.calib_text = a.value();
  else if (f == "--eval-tokens") o.eval_tokens = a.value();
  else if (f == "--calib-tokens") o.calib_tokens = a.value();
  else if (f == "--token-dtype") o.token_dtype = token_dtype(a);
  else if (f == "--seqlen") o.seqlen = a.int_value(2, 1 << 16);
  else if (f == "--eval-windows") o.eval_windows = a.int_value(1, 1LL << 40);
  else if (f == "--nsamples") o.nsamples = static_cast<int>(a.int_value(1, 1 << 20));
  else if (f == "--seed") o.seed = static_cast<std::uint64_t>(a.int_value(0, 1LL << 62));
  else if (f == "--seeds") o.seeds = static_cast<int>(a.int_value(1, 1000));
  else if (f == "--methods" || f == "--method") o.methods = method_list(a);
  else if (f == "--bits") o.bits = a.int_list(kMinBits, kMaxBits);
  else if (f == "--q2n") o.q2n = q2n_variants(a);
  else if (f == "--q2n-down-proj") o.q2n_down_proj = true;
  else if (f == "--shared-pass") o.shared_pass = true;
  else if (f == "--stream") o.stream = true;
  else if (f == "--report") o.report = a.value();
  else if (f == "--save") o.save_dir = a.value();
  else if (f == "--export") o.exports = export_list(a);
  else if (f == "--export-dir") o.export_dir = a.value();
  else if (f == "--dump-linear") o.dump_linear = a.value();
  else if (f == "--dump-file") o.dump_file = a.value();
  else if (f == "--threads") o.threads = static_cast<int>(a.int_value(1, 1024));
  else if (f == "--a-bits") o.inference.act_bits = static_cast<int>(a.int_value(2, 16));
  else if (f == "--a-clip") o.inference.act_clip = a.number_value(1e-6, 1);
  else if (f == "--kv-bits") o.inference.kv_bits = static_cast<int>(a.int_value(2, 16));
  else if (f == "--kv-clip") o.inference.kv_clip = a.number_value(1e-6, 1);
  else if (f == "--rotation") o.rotation_file = a.value();
  else return false;
  return true;
}

}  // namespace detail

/// Parses argv; throws std::invalid_argument with a message naming the flag.
inline Options parse_options(int argc, char** argv, const std::string& data_dir) {
  Options o;
  o.model_dir = data_dir + "/kjv-256x4";
  ArgCursor a(argc, argv, "q2n_llama");
  // The tool's own flags first: --bits and --q2n are sweeps here, single values in q2n-layer.
  while (a.next()) {
    if (a.flag() == "--group") o.group_given = true;
    if (!detail::parse_tool_flag(a, o) && !parse_method_flag(a, o.spec))
      a.fail("unknown option ", a.flag(), " (see --help)");
  }
  check_method_flags(a, o.spec);
  if (!o.eval_text.empty() && !o.eval_tokens.empty())
    a.fail("--eval-text and --eval-tokens are alternatives; pass one");
  if (!o.calib_text.empty() && !o.calib_tokens.empty())
    a.fail("--calib-text and --calib-tokens are alternatives; pass one");
  if (o.eval_text.empty() && o.eval_tokens.empty()) o.eval_text = data_dir + "/kjv_valid_head.txt";
  if (o.calib_text.empty() && o.calib_tokens.empty())
    o.calib_text = data_dir + "/kjv_train_head.txt";
  if (o.exports.empty() != o.export_dir.empty())
    a.fail("--export and --export-dir go together");
  if (!o.exports.empty() && o.seeds > 1)
    a.fail("--export writes one file per configuration; pass --seeds 1");
  if (o.dump_linear.empty() != o.dump_file.empty())
    a.fail("--dump-linear and --dump-file go together");
  if (o.stream && (!o.exports.empty() || !o.dump_file.empty() || o.shared_pass))
    a.fail("--stream quantizes layer by layer without the whole model: --export, --dump-file "
           "and --shared-pass need it; drop them or --stream");
  const bool quarot = std::find(o.methods.begin(), o.methods.end(), Method::quarot) != o.methods.end();
  if (!o.rotation_file.empty() && !quarot)
    a.fail("--rotation is quarot's rotation; add quarot to --methods or drop --rotation");
  const bool runtime = o.inference.act_bits < 16 || o.inference.kv_bits < 16;
  if (o.stream && (quarot || runtime))
    a.fail("--stream quantizes layer by layer: quarot's rotation, --a-bits and --kv-bits need "
           "the whole model; drop --stream");
  if ((quarot || runtime) && (!o.save_dir.empty() || !o.exports.empty()))
    a.fail("--save and --export write weights only: a quarot model also needs its online "
           "Hadamards, and --a-bits/--kv-bits their quantizers, which no checkpoint format "
           "here holds; drop them");
  if (o.stream && o.methods.empty())
    a.fail("--stream needs a method to run (--methods)");
  return o;
}

}  // namespace llama
