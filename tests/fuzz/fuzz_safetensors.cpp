// libFuzzer harness: any byte string given to the safetensors reader as a file is either read
// (every tensor, as float and as double) or refused with q2n's exceptions; a crash, a sanitizer
// report, a hang or another exception type is a finding.
#include <q2n/io/safetensors.hpp>

#include <cstdint>
#include <fstream>
#include <stdexcept>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string path = "fuzz_input.safetensors";  // in the working directory (run_fuzzer.cmake)
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    const q2n::io::SafetensorsReader reader(path);
    for (const auto& name : reader.names()) {
      // Reading allocates the tensor: bound it, as a caller with a memory budget would.
      if (reader.info(name).numel() > (1 << 20)) continue;
      (void)reader.read_flat<float>(name);
      (void)reader.read_flat<double>(name);
    }
  } catch (const q2n::io::FormatError&) {
  } catch (const std::invalid_argument&) {
  } catch (const std::runtime_error&) {
  }
  return 0;
}
