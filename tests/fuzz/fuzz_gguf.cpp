// libFuzzer harness for GGUF, two properties per input:
//  1. the bytes given to GgufReader as a file are parsed and every tensor decoded, or refused
//     with q2n's exceptions (a crash, a sanitizer report, a hang or another exception type is a
//     finding);
//  2. a uniform storage spelled by the bytes (shape, bits, symmetry, group size, codes, fp16
//     scales and zero points) is either refused by the writer with std::invalid_argument, or
//     written and read back to exactly dequantize(storage).
#include <q2n/io/gguf.hpp>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>

namespace {

// Reads successive bytes of the input, then zeros.
struct Bytes {
  const std::uint8_t* data;
  std::size_t size, at = 0;
  unsigned next() { return at < size ? data[at++] : 0u; }
};

void read_any_file(const std::uint8_t* data, std::size_t size, const std::string& path) {
  {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  try {
    const q2n::io::GgufReader reader(path);
    for (const auto& t : reader.tensors()) {
      // Decoding allocates the tensor: bound it, as a caller with a memory budget would.
      if (t.rows() * t.ne[0] > (1u << 20)) continue;
      (void)reader.dequantize(t.name);
    }
  } catch (const q2n::io::FormatError&) {
  } catch (const std::invalid_argument&) {
  } catch (const std::runtime_error&) {
  }
}

void round_trip(const std::uint8_t* data, std::size_t size, const std::string& path) {
  Bytes in{data, size};
  const Eigen::Index rows = 1 + in.next() % 4;
  const Eigen::Index cols = 32 * (1 + in.next() % 4);
  q2n::UniformGrid<float> g;
  g.bits = 2 + static_cast<int>(in.next() % 7);  // 2..8
  g.sym = in.next() % 2 == 0;
  const Eigen::Index groupsize = (in.next() % 2 == 0) ? cols : 32;
  const Eigen::Index groups = cols / groupsize;
  const unsigned maxq = (1u << g.bits) - 1;
  g.codes.resize(rows, cols);
  for (Eigen::Index i = 0; i < rows; ++i)
    for (Eigen::Index j = 0; j < cols; ++j) g.codes(i, j) = static_cast<std::uint8_t>(in.next() % (maxq + 1));
  g.scales.resize(rows, groups);
  g.zeros.resize(rows, groups);
  for (Eigen::Index i = 0; i < rows; ++i)
    for (Eigen::Index k = 0; k < groups; ++k) {
      // Any fp16 bit pattern that is a positive finite number, else a plain scale.
      const std::uint16_t h = static_cast<std::uint16_t>(in.next() | (in.next() << 8)) & 0x7FFF;
      const float s = q2n::detail::half_to_float(h);
      g.scales(i, k) = (std::isfinite(s) && s > 0) ? s : 0.5f;
      g.zeros(i, k) = g.sym ? static_cast<float>((maxq + 1) / 2) : static_cast<float>(in.next() % (maxq + 1));
    }
  g.g_idx.resize(cols);
  for (Eigen::Index j = 0; j < cols; ++j) g.g_idx(j) = static_cast<int>(j / groupsize);
  const auto storage = q2n::StorageBuilder<float>(rows, cols, "fuzz").uniform(std::move(g)).build();

  q2n::io::GgufWriter w;
  try {
    w.add_quantized("t", storage);
  } catch (const std::invalid_argument&) {
    return;  // no exact carrier (e.g. asymmetric 8-bit codes, an offset that is not fp16)
  }
  w.write(path);
  const q2n::io::GgufReader r(path);
  const Eigen::MatrixXf back = r.dequantize("t");
  const Eigen::MatrixXf want = q2n::dequantize(storage);
  if (!(back.array() == want.array()).all()) std::abort();  // the writer lost information
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // Scratch files in the working directory (run_fuzzer.cmake).
  read_any_file(data, size, "fuzz_input.gguf");
  round_trip(data, size, "fuzz_round_trip.gguf");
  return 0;
}
