// Writes a synthetic linear layer for q2n-layer: W (rows × cols) and X (samples × seqlen ×
// cols) in F32 with LLM-like activations (low-rank content, outlier channels, a massive first
// position). Used to measure q2n-layer's time and peak memory at LLM shapes:
//   make_layer OUT.safetensors ROWS COLS SAMPLES SEQLEN
#include <q2n/io/safetensors.hpp>

#include <cstdio>
#include <random>
#include <string>

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: make_layer OUT.safetensors ROWS COLS SAMPLES SEQLEN\n");
    return 2;
  }
  const Eigen::Index rows = std::stol(argv[2]), cols = std::stol(argv[3]);
  const Eigen::Index samples = std::stol(argv[4]), seqlen = std::stol(argv[5]);
  std::mt19937 gen(7);
  std::normal_distribution<float> nd;
  auto gauss = [&](Eigen::Index r, Eigen::Index c, float sd) {
    Eigen::MatrixXf m(r, c);
    for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = sd * nd(gen);
    return m;
  };
  const Eigen::MatrixXf basis = gauss(32, cols, 1.f);
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> x(samples * seqlen, cols);
  for (Eigen::Index s = 0; s < samples; ++s) {
    Eigen::MatrixXf seq = gauss(seqlen, 32, 1.f / 32) * basis + gauss(seqlen, cols, 0.05f);
    for (Eigen::Index c = 0; c < cols; c += 97) seq.col(c) *= 20.f;
    seq.row(0) *= 50.f;
    x.middleRows(s * seqlen, seqlen) = seq;
  }
  q2n::io::SafetensorsWriter out;
  out.add("W", gauss(rows, cols, 0.02f));
  out.add("X", x, q2n::io::DType::F32, {samples, seqlen, cols});
  out.write(argv[1]);
  std::printf("wrote %s: W %ld x %ld, X %ld x %ld x %ld\n", argv[1], long(rows), long(cols),
              long(samples), long(seqlen), long(cols));
  return 0;
}
