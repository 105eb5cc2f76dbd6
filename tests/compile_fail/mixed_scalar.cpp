// Must not compile: the README's "Using it" refine call with double weights and a float null
// space.
// The first error must be q2n's own message (checked by expect_first_error.cmake).
#include <q2n/projection.hpp>

int main() {
  const Eigen::MatrixXd W = Eigen::MatrixXd::Random(4, 8);
  const Eigen::MatrixXd Q = W;
  // (identity: any float NullSpace will do, and it leaves compute's solvers uninstantiated.)
  const auto ns = q2n::NullSpace<float>::identity(8);
  const auto refined = q2n::refine(W, Q, ns);
  return refined.m.size() > 0 ? 0 : 1;
}
