// Must not compile: the README's "Using it" call with double weights and a float null space.
// The first error must be q2n's own message (checked by expect_first_error.cmake).
#include <q2n/projection.hpp>

int main() {
  const Eigen::MatrixXd W = Eigen::MatrixXd::Random(4, 8);
  const Eigen::MatrixXd Q = W;
  const auto ns = q2n::NullSpace<float>::compute(Eigen::MatrixXf::Random(3, 8));
  const auto refined = q2n::refine(W, Q, ns);
  return refined.m.size() > 0 ? 0 : 1;
}
