// A user of the shipped quantizers, the safetensors I/O and the LAPACK backend: GPTQ a layer,
// refine it with Q2N (the null space by LAPACK, checked against Eigen's solver), write the
// refined storage's scales and read them back.
#include <q2n/io/safetensors.hpp>
#include <q2n/quantizers.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  const std::string path = argc > 1 ? argv[1] : "consumer_full.safetensors";
  const Eigen::Index rows = 8, cols = 32, tokens = 64;
  Eigen::MatrixXf x(tokens, cols), w(rows, cols);
  for (Eigen::Index t = 0; t < tokens; ++t)
    for (Eigen::Index c = 0; c < cols; ++c) x(t, c) = float(((t * 13 + c * 7) % 17) - 8) * (t % 8 == 0 ? 5.f : 1.f);
  for (Eigen::Index r = 0; r < rows; ++r)
    for (Eigen::Index c = 0; c < cols; ++c) w(r, c) = 0.01f * float((r * 5 + c * 3) % 13) - 0.06f;
  q2n::HessianAccumulator h(cols);
  q2n::SampleMeanAccumulator abar(cols);
  for (Eigen::Index s = 0; s < tokens; s += 8) {
    h.add(x.middleRows(s, 8));
    abar.add_sequence(x.middleRows(s, 8));
  }
  q2n::GptqOptions o;
  o.grid.bits = 3;
  o.groupsize = 16;
  const auto quantized = q2n::gptq(w, h.hessian_as<float>(), o);
  q2n::NullSpaceOptions by_lapack;
  by_lapack.solver = q2n::DenseSolver::lapack;
  const auto ns = q2n::NullSpace<float>::compute(abar.mean(), by_lapack);
  const auto ns_eigen = q2n::NullSpace<float>::compute(abar.mean());
  const auto refined = q2n::refine(quantized, w, ns);
  // The same kept directions: the projectors agree to float rounding (1e-4 leaves room for
  // the conditioning of this small spectrum).
  const Eigen::MatrixXf p = ns.kept_basis() * ns.kept_basis().transpose();
  const Eigen::MatrixXf p_eigen = ns_eigen.kept_basis() * ns_eigen.kept_basis().transpose();
  const bool same_projector = ns.kept() == ns_eigen.kept() && (p - p_eigen).norm() <= 1e-4f;

  q2n::io::SafetensorsWriter out;
  out.add("scales", refined.storage.uniform->scales, q2n::io::DType::F32);
  out.write(path);
  const Eigen::MatrixXf back = q2n::io::SafetensorsReader(path).read_matrix<float>("scales");
  const bool ok = back == refined.storage.uniform->scales && refined.Q.allFinite() &&
                  same_projector && ns.kept() > 0;
  std::printf("%s\n", ok ? "consumer_full: ok" : "consumer_full: FAILED");
  return ok ? 0 : 1;
}
