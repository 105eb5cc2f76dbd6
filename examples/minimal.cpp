// The smallest complete use of q2n: one linear layer, GPTQ at 3 bits, then the Q2N refinement.
//
// A quantizer author needs only three things from q2n: the calibration statistics of the
// layer's inputs (H for the quantizer, Ā for Q2N), the null space of Ā, and refine().
#include <q2n/projection.hpp>  // accumulators, null space, refine, the storage model
#include <q2n/quantizers/gptq.hpp>

#include <Eigen/Core>

#include <cstdio>
#include <random>
#include <vector>

using Mat = Eigen::MatrixXf;

// Activations shaped like a transformer's: a low-rank component shared by all sequences
// (position-dependent, so the per-position mean Ā keeps it), per-sequence variation, a few
// outlier channels with large magnitude, and small isotropic noise.
struct Toy {
  Mat basis, positional, outlier_scale;
  std::mt19937 rng{7};
  std::normal_distribution<float> n{0.f, 1.f};
  Mat gauss(int r, int c) { return Mat::NullaryExpr(r, c, [&] { return n(rng); }); }
  Toy(int seqlen, int cols, int rank) {
    basis = gauss(rank, cols);
    positional = gauss(seqlen, rank);
    outlier_scale = Mat::Ones(1, cols);
    for (int j : {3, 17, 40, 99}) outlier_scale(0, j) = 12.f;
  }
  Mat sequence() {  // seqlen × cols
    const Mat latent = positional + 0.5f * gauss(positional.rows(), positional.cols());
    const Mat x = latent * basis + 0.05f * gauss(positional.rows(), basis.cols());
    return x.array().rowwise() * outlier_scale.row(0).array();
  }
};

// ‖X (Q − W)ᵀ‖² / ‖X Wᵀ‖² over a set of sequences.
double output_error(const std::vector<Mat>& xs, const Mat& W, const Mat& Q) {
  double num = 0, den = 0;
  for (const Mat& x : xs) {
    num += (x * (Q - W).transpose()).squaredNorm();
    den += (x * W.transpose()).squaredNorm();
  }
  return num / den;
}

int main() {
  const int rows = 96, cols = 128, seqlen = 64, rank = 6, samples = 64;
  Toy toy(seqlen, cols, rank);
  const Mat W = 0.05f * toy.gauss(rows, cols);

  // 1. Calibration statistics: H for GPTQ, Ā (per-position mean over sequences) for Q2N.
  q2n::HessianAccumulator H(cols);
  q2n::SampleMeanAccumulator abar(cols);
  std::vector<Mat> calib, heldout;
  for (int s = 0; s < samples; ++s) {
    calib.push_back(toy.sequence());
    H.add(calib.back());
    abar.add_sequence(calib.back());
    heldout.push_back(toy.sequence());
  }

  // 2. Any quantizer: here GPTQ, 3 bits, groups of 32 columns. Its result holds the dense Q
  //    and the storage (integer codes, per-group scales and zeros).
  q2n::GptqOptions options;
  options.grid.bits = 3;
  options.groupsize = 32;
  const q2n::QuantResult<float> quantized = q2n::gptq(W, H.hessian_as<float>(), options);

  // 3. Q2N: the null space of Ā, then one scale m_r per output row, folded into the storage's
  //    scales: the codes stay, and refined.Q = dequantize(refined.storage), which is diag(m) Q
  //    up to one rounding per weight.
  const auto ns = q2n::NullSpace<float>::compute(abar.mean());
  const q2n::Refinement<float> refined = q2n::refine(quantized, W, ns, /*lambda=*/0.2);

  std::printf("kept rank r = %ld of %d (cut found: %s), m in [%.4f, %.4f]\n",
              static_cast<long>(ns.kept()), cols, ns.cut().found ? "yes" : "no",
              refined.m.minCoeff(), refined.m.maxCoeff());
  std::printf("relative output error   calibration   held-out\n");
  std::printf("  GPTQ 3-bit            %.6f      %.6f\n", output_error(calib, W, quantized.Q),
              output_error(heldout, W, quantized.Q));
  std::printf("  GPTQ 3-bit + Q2N      %.6f      %.6f\n", output_error(calib, W, refined.Q),
              output_error(heldout, W, refined.Q));
}
