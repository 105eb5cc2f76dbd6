// A quantizer q2n does not ship, refined by Q2N: absmax 4-bit in groups of 32 (the layout of
// ggml's Q4_0: x̂ = d·(q − 8), d = the group's signed absmax / −8), built with the public
// storage builder, refined with the one include a quantizer author needs, m folded into its
// own scales. Prints the layer's output error before and after.
#include <q2n/projection.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>

using Matrix = Eigen::MatrixXf;

// Q4_0-style quantization: per (row, group of 32) the value of largest magnitude maps to −8.
q2n::QuantResult<float> absmax_q4(const Matrix& W) {
  const Eigen::Index rows = W.rows(), cols = W.cols(), group = 32;
  q2n::UniformGrid<float> grid;
  grid.bits = 4;
  grid.codes.resize(rows, cols);
  grid.scales.resize(rows, cols / group);
  grid.zeros = Matrix::Constant(rows, cols / group, 8.0f);
  grid.g_idx = q2n::group_index(cols, group);
  for (Eigen::Index g = 0; g < cols / group; ++g)
    for (Eigen::Index r = 0; r < rows; ++r) {
      const auto block = W.row(r).segment(g * group, group);
      Eigen::Index at = 0;
      block.cwiseAbs().maxCoeff(&at);
      const float d = block(at) / -8.0f;
      grid.scales(r, g) = d;
      for (Eigen::Index c = 0; c < group; ++c) {
        const float q = d == 0 ? 8.0f : std::nearbyint(block(c) / d) + 8.0f;
        grid.codes(r, g * group + c) = static_cast<std::uint8_t>(std::fmin(std::fmax(q, 0.0f), 15.0f));
      }
    }
  return q2n::StorageBuilder<float>(rows, cols, "absmax-q4_0").uniform(std::move(grid)).result();
}

// ‖X (Q − W)ᵀ‖² / ‖X Wᵀ‖²: the layer's relative output error on the inputs X.
double output_error(const Matrix& X, const Matrix& W, const Matrix& Q) {
  return (X * (Q - W).transpose()).squaredNorm() / (X * W.transpose()).squaredNorm();
}

int main() {
  // A layer with 64 outputs and 256 inputs; 16 calibration sequences of 64 tokens whose first
  // position carries a massive activation, as in LLMs.
  const Eigen::Index rows = 64, cols = 256, seqlen = 64, sequences = 16;
  std::mt19937 gen(7);
  std::normal_distribution<float> normal;
  const Matrix W = Matrix::NullaryExpr(rows, cols, [&] { return 0.05f * normal(gen); });
  const Matrix mix = Matrix::NullaryExpr(8, cols, [&] { return normal(gen); });
  q2n::SampleMeanAccumulator abar(cols);
  Matrix X(seqlen * sequences, cols);
  for (Eigen::Index s = 0; s < sequences; ++s) {
    Matrix seq = Matrix::NullaryExpr(seqlen, 8, [&] { return normal(gen); }) * mix;
    seq += Matrix::NullaryExpr(seqlen, cols, [&] { return 0.05f * normal(gen); });
    seq.row(0) *= 30.0f;
    abar.add_sequence(seq);
    X.middleRows(s * seqlen, seqlen) = seq;
  }

  const q2n::QuantResult<float> quantized = absmax_q4(W);
  const auto ns = q2n::NullSpace<float>::compute(abar.mean_as<float>());
  const q2n::Refinement<float> refined = q2n::refine(quantized, W, ns);

  // The scales now hold m: the codes are untouched and dequantizing gives the refined weights.
  const bool codes_kept = refined.storage.uniform->codes == quantized.storage.uniform->codes;
  std::printf("absmax-q4_0, groups of 32: kept %ld of %ld directions, codes unchanged: %s\n",
              static_cast<long>(ns.kept()), static_cast<long>(cols), codes_kept ? "yes" : "no");
  std::printf("output error  before Q2N %.6f  after Q2N %.6f\n",
              output_error(X, W, quantized.Q), output_error(X, W, refined.Q));
  return codes_kept && q2n::dequantize(refined.storage) == refined.Q ? 0 : 1;
}
