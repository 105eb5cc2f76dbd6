// libFuzzer harness: any byte string given as a model's config.json is either accepted (with
// every value inside the validated ranges) or refused with std::invalid_argument naming the
// file; a crash, a sanitizer report, a hang or another exception type is a finding.
#include "llama/config.hpp"

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = "fuzz_input.json";  // in the working directory (run_fuzzer.cmake)
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    const llama::Config c = llama::load_config(path);
    if (c.hidden_size <= 0 || c.num_hidden_layers <= 0 || c.head_dim <= 0 || c.head_dim % 2 != 0 ||
        c.num_attention_heads % c.num_key_value_heads != 0 || !(c.rope_theta >= 1) ||
        !(c.rms_norm_eps > 0))
      std::abort();  // accepted a configuration the loader promises to refuse
  } catch (const std::invalid_argument& e) {
    if (std::string(e.what()).find(path) == std::string::npos) std::abort();  // no file named
  }
  return 0;
}
