// Writes the inputs of the example's command-line tests into the directory argv[1]:
//   tiny/            a valid random Qwen2-style model (biases, tied embeddings, GQA)
//   mismatch/        the same weights, but config.json says intermediate_size 32 (tensors: 24)
//   missing_tensor/  the same, but lm_head untied in config.json and absent from the file
//   malformed/       a config.json that is not valid JSON
//   short.txt        100 bytes of text: shorter than one 256-byte window
// and hostile inputs, each of which must be refused with a message naming the file:
//   deep/            config.json nested 300,000 arrays deep
//   big_number/      config.json with a number beyond double's range (1e400)
//   bad_rope/        rope_theta = 1e-300 (every rotary angle would be infinite)
//   many_layers/     num_hidden_layers = 10,000,000 with the 2-layer tiny checkpoint
//   nan_weight/      the tiny model with one NaN weight
//   escape/          a sharded index whose shard name points outside the model directory
//   config_dir/      config.json is a directory
//   fifo.txt         a named pipe (reading it would block forever)
// the bundled texts as token ids, which must drive the same run as the texts:
//   kjv_train.safetensors  the calibration bytes as I32 [1024, 256] (rows in order)
//   kjv_valid.u16          the held-out bytes as a raw little-endian uint16 stream
// and wide_layer.safetensors: a q2n-layer input (W 512 x 1024, X 3 x 512 x 1024) with a
// massive activation at position 0 over a noise floor, large enough for several product panels
// and the partial eigensolver route.
#include "llama/text.hpp"
#include "tiny_model.hpp"

#include <sys/stat.h>

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <vector>

namespace {
void write_text(const std::string& path, const std::string& s) {
  std::ofstream out(path, std::ios::binary);
  out << s;
  if (!out) throw std::runtime_error("make_fixtures: cannot write " + path);
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: llama_make_fixtures OUTDIR\n";
    return 2;
  }
  try {
    const std::string out = argv[1];
    std::filesystem::create_directories(out);
    const llama::Model tiny = llama_test::make_tiny_model({});
    llama::save_model(tiny, out + "/tiny");

    llama::save_model(tiny, out + "/mismatch");
    nlohmann::json cfg = tiny.config.raw;
    cfg["intermediate_size"] = 32;
    write_text(out + "/mismatch/config.json", cfg.dump(2));

    llama::save_model(tiny, out + "/missing_tensor");
    cfg = tiny.config.raw;
    cfg["tie_word_embeddings"] = false;
    write_text(out + "/missing_tensor/config.json", cfg.dump(2));

    std::filesystem::create_directories(out + "/malformed");
    write_text(out + "/malformed/config.json", "{\"hidden_size\": 16, \"num_hidden_layers\": ");

    write_text(out + "/short.txt", std::string(100, 'a'));

    std::filesystem::create_directories(out + "/deep");
    write_text(out + "/deep/config.json", std::string(300000, '[') + std::string(300000, ']'));

    // The tiny model with one config value written verbatim (1e400 has no JSON value).
    auto with_config = [&](const std::string& name, const std::string& key, const std::string& value) {
      llama::save_model(tiny, out + "/" + name);
      nlohmann::json patched = tiny.config.raw;
      patched.erase(key);
      std::string text = patched.dump(2);
      text.insert(text.rfind('}'), ",\n  \"" + key + "\": " + value + "\n");
      write_text(out + "/" + name + "/config.json", text);
    };
    with_config("big_number", "rms_norm_eps", "1e400");
    with_config("bad_rope", "rope_theta", "1e-300");
    with_config("many_layers", "num_hidden_layers", "10000000");

    llama::Model nan = tiny;
    nan.layers[1].up.weight(2, 3) = NAN;
    llama::save_model(nan, out + "/nan_weight");

    llama::save_model(tiny, out + "/escape");
    std::filesystem::rename(out + "/escape/model.safetensors", out + "/escape/shard-1.safetensors");
    write_text(out + "/escape/model.safetensors.index.json",
               R"({"weight_map": {"model.norm.weight": "../../../../etc/passwd"}})");

    std::filesystem::create_directories(out + "/config_dir/config.json");

    {
      const std::int64_t s = 3, t = 512, cols = 1024, rows = 512;
      std::mt19937 rng(7);
      std::normal_distribution<float> normal;
      std::vector<float> x(static_cast<std::size_t>(s * t * cols));
      for (std::int64_t i = 0; i < s * t; ++i)
        for (std::int64_t j = 0; j < cols; ++j) {
          float v = 0.05f * normal(rng) + (j % 64 == 0 ? 2.0f : 0.0f) * std::sin(0.01f * static_cast<float>(i % t + j));
          if (i % t == 0 && j < 4) v += 300.0f;  // the massive activation of position 0
          x[static_cast<std::size_t>(i * cols + j)] = v;
        }
      Eigen::MatrixXf w(rows, cols);
      for (std::int64_t i = 0; i < rows; ++i)
        for (std::int64_t j = 0; j < cols; ++j) w(i, j) = 0.02f * normal(rng);
      q2n::io::SafetensorsWriter layer;
      layer.add("W", w);
      layer.add_flat("X", x, q2n::io::DType::F32, {s, t, cols});
      layer.write(out + "/wide_layer.safetensors");
    }

    {
      const auto train = llama::read_text_tokens(std::string(Q2N_EXAMPLE_DATA_DIR) +
                                                     "/kjv_train_head.txt", 256, 1, "tokens");
      if (train.size() != 1024 * 256) throw std::runtime_error("make_fixtures: kjv_train_head.txt has changed size");
      q2n::io::SafetensorsWriter ids;
      ids.add_flat("input_ids", train, q2n::io::DType::I32, {1024, 256});
      ids.write(out + "/kjv_train.safetensors");
      const auto valid = llama::read_text_tokens(std::string(Q2N_EXAMPLE_DATA_DIR) +
                                                     "/kjv_valid_head.txt", 256, 1, "tokens");
      std::ofstream u16(out + "/kjv_valid.u16", std::ios::binary);
      for (llama::Token id : valid) u16.put(static_cast<char>(id)).put('\0');  // < 256
      if (!u16) throw std::runtime_error("make_fixtures: cannot write kjv_valid.u16");
    }

    const std::string fifo = out + "/fifo.txt";
    std::filesystem::remove(fifo);
    if (mkfifo(fifo.c_str(), 0600) != 0) throw std::runtime_error("make_fixtures: mkfifo " + fifo);
    return 0;
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
