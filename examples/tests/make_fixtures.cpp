// Writes the inputs of the example's command-line tests into the directory argv[1]:
//   tiny/            a valid random Qwen2-style model (biases, tied embeddings, GQA)
//   mismatch/        the same weights, but config.json says intermediate_size 32 (tensors: 24)
//   missing_tensor/  the same, but lm_head untied in config.json and absent from the file
//   malformed/       a config.json that is not valid JSON
//   short.txt        100 bytes of text: shorter than one 256-byte window
#include "tiny_model.hpp"

#include <filesystem>
#include <fstream>
#include <iostream>

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
    return 0;
  } catch (const std::exception& e) {
    std::cerr << e.what() << "\n";
    return 1;
  }
}
