// A quantizer author's smallest program: round-to-grid weights refined by Q2N.
#include <q2n/projection.hpp>

#include <cstdio>

int main() {
  const Eigen::Index rows = 4, cols = 16, seqlen = 6;
  Eigen::MatrixXf abar = Eigen::MatrixXf::Zero(seqlen, cols);
  for (Eigen::Index p = 0; p < seqlen; ++p)
    for (Eigen::Index c = 0; c < cols; ++c) abar(p, c) = float((p + 1) * ((c % 3) + 1) + (c == p));
  Eigen::MatrixXf w(rows, cols);
  for (Eigen::Index r = 0; r < rows; ++r)
    for (Eigen::Index c = 0; c < cols; ++c) w(r, c) = 0.01f * float((r * 7 + c * 3) % 11) - 0.05f;
  const Eigen::MatrixXf q = (w / 0.04f).array().round().matrix() * 0.04f;
  const auto ns = q2n::NullSpace<float>::compute(abar);
  const auto refined = q2n::refine(w, q, ns);
  const bool ok = ns.cut().found && refined.m.allFinite() && refined.Q.rows() == rows;
  std::printf("cut %ld, m[0] = %.6f\n", static_cast<long>(ns.cut().index()), double(refined.m(0)));
  std::printf(ok ? "consumer: ok\n" : "consumer: FAILED\n");
  return ok ? 0 : 1;
}
