// make_synthetic_llama: writes a Llama-shaped checkpoint with random weights, stored as most
// checkpoints are (BF16, sharded with model.safetensors.index.json), for measuring what
// q2n_llama costs on a model larger than the shipped one (streaming_memory.sh).
//
//   make_synthetic_llama OUT_DIR [--hidden 1024] [--intermediate 2816] [--layers 12]
//                        [--heads 16] [--kv-heads 4] [--vocab 32000] [--layers-per-shard 3]
//                        [--seed 1]
//
// Weights are N(0, 1/fan_in) (so activations keep their scale through the layers), embeddings
// N(0, 1), norms 1. Exit code 2 with a message on bad arguments or an unwritable OUT_DIR.

#include <q2n/io/safetensors.hpp>

#include <Eigen/Core>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <stdexcept>
#include <string>

namespace {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

struct Shape {
  long hidden = 1024, intermediate = 2816, layers = 12, heads = 16, kv_heads = 4, vocab = 32000;
  long layers_per_shard = 3;
  unsigned long seed = 1;
};

Shape parse(int argc, char** argv, std::string& out) {
  Shape s;
  std::map<std::string, long*> flags{{"--hidden", &s.hidden},     {"--intermediate", &s.intermediate},
                                     {"--layers", &s.layers},     {"--heads", &s.heads},
                                     {"--kv-heads", &s.kv_heads}, {"--vocab", &s.vocab},
                                     {"--layers-per-shard", &s.layers_per_shard}};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a.rfind("--", 0) != 0) {
      if (!out.empty()) throw std::invalid_argument("more than one OUT_DIR: " + a);
      out = a;
      continue;
    }
    if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
    const long v = std::stol(argv[++i]);
    if (v <= 0) throw std::invalid_argument(a + " must be positive");
    if (a == "--seed") s.seed = static_cast<unsigned long>(v);
    else if (flags.count(a)) *flags[a] = v;
    else throw std::invalid_argument("unknown option " + a);
  }
  if (out.empty()) throw std::invalid_argument("usage: make_synthetic_llama OUT_DIR [options]");
  if (s.hidden % s.heads != 0 || s.heads % s.kv_heads != 0 || (s.hidden / s.heads) % 2 != 0)
    throw std::invalid_argument("--heads must divide --hidden into even head sizes, and "
                                "--kv-heads must divide --heads");
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string out;
    const Shape s = parse(argc, argv, out);
    std::filesystem::create_directories(out);
    std::mt19937_64 rng(s.seed);
    std::normal_distribution<float> normal(0.f, 1.f);
    auto random = [&](long rows, long cols, float sd) {
      return Matrix(Matrix::NullaryExpr(rows, cols, [&] { return sd * normal(rng); }));
    };
    const long hd = s.hidden / s.heads;
    const long shards = 2 + (s.layers + s.layers_per_shard - 1) / s.layers_per_shard;
    nlohmann::json index;
    std::uint64_t total = 0;
    int shard = 0;
    auto write = [&](q2n::io::SafetensorsWriter& w) {
      char name[64];
      std::snprintf(name, sizeof name, "model-%05d-of-%05ld.safetensors", ++shard, shards);
      w.set_metadata("format", "pt");
      w.write(out + "/" + name);
      const q2n::io::SafetensorsReader r(out + "/" + name);
      for (const auto& t : r.names()) {
        index["weight_map"][t] = name;
        total += r.info(t).end - r.info(t).begin;
      }
      w = q2n::io::SafetensorsWriter();
    };
    const auto bf16 = q2n::io::DType::BF16;
    q2n::io::SafetensorsWriter w;
    w.add("model.embed_tokens.weight", random(s.vocab, s.hidden, 1.0f), bf16);
    write(w);
    auto linear = [&](const std::string& name, long rows, long cols) {
      w.add(name, random(rows, cols, 1.0f / std::sqrt(static_cast<float>(cols))), bf16);
    };
    for (long i = 0; i < s.layers; ++i) {
      const std::string p = "model.layers." + std::to_string(i) + ".";
      const Eigen::RowVectorXf ones = Eigen::RowVectorXf::Ones(s.hidden);
      w.add(p + "input_layernorm.weight", ones, bf16, {s.hidden});
      w.add(p + "post_attention_layernorm.weight", ones, bf16, {s.hidden});
      linear(p + "self_attn.q_proj.weight", s.heads * hd, s.hidden);
      linear(p + "self_attn.k_proj.weight", s.kv_heads * hd, s.hidden);
      linear(p + "self_attn.v_proj.weight", s.kv_heads * hd, s.hidden);
      linear(p + "self_attn.o_proj.weight", s.hidden, s.heads * hd);
      linear(p + "mlp.gate_proj.weight", s.intermediate, s.hidden);
      linear(p + "mlp.up_proj.weight", s.intermediate, s.hidden);
      linear(p + "mlp.down_proj.weight", s.hidden, s.intermediate);
      if ((i + 1) % s.layers_per_shard == 0 || i + 1 == s.layers) write(w);
    }
    w.add("model.norm.weight", Eigen::RowVectorXf::Ones(s.hidden), bf16, {s.hidden});
    linear("lm_head.weight", s.vocab, s.hidden);
    write(w);
    index["metadata"]["total_size"] = total;
    std::ofstream(out + "/model.safetensors.index.json") << index.dump(2) << "\n";
    const nlohmann::json config{{"architectures", {"LlamaForCausalLM"}},
                                {"model_type", "llama"},
                                {"hidden_size", s.hidden},
                                {"intermediate_size", s.intermediate},
                                {"num_hidden_layers", s.layers},
                                {"num_attention_heads", s.heads},
                                {"num_key_value_heads", s.kv_heads},
                                {"vocab_size", s.vocab},
                                {"max_position_embeddings", 4096},
                                {"rms_norm_eps", 1e-5},
                                {"rope_theta", 10000.0},
                                {"tie_word_embeddings", false},
                                {"hidden_act", "silu"},
                                {"torch_dtype", "bfloat16"}};
    std::ofstream cfg(out + "/config.json");
    cfg << config.dump(2) << "\n";
    if (!cfg) throw std::runtime_error("cannot write " + out + "/config.json");
    const double params = static_cast<double>(total) / 2;
    std::cout << out << ": " << s.layers << " layers, " << params / 1e6 << " M parameters, "
              << total / 1e6 << " MB in BF16, " << 4 * params / 1e6 << " MB in float32\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "make_synthetic_llama: " << e.what() << "\n";
    return 2;
  }
}
