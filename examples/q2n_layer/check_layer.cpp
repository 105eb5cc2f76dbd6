// Checks a q2n-layer output against a conformance vector, recomputing every figure in double
// from the files themselves.
//   check_layer --mode gptq|q2n --reference VECTOR.safetensors --output OUT.safetensors
#include <q2n/io/safetensors.hpp>

#include <cmath>
#include <cstdio>
#include <string>

namespace {

int failures = 0;

void expect(bool ok, const std::string& what) {
  std::printf("%s %s\n", ok ? "ok:  " : "FAIL:", what.c_str());
  failures += !ok;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode, ref_path, out_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    if (k == "--mode") mode = argv[i + 1];
    else if (k == "--reference") ref_path = argv[i + 1];
    else if (k == "--output") out_path = argv[i + 1];
  }
  if (mode.empty() || ref_path.empty() || out_path.empty()) {
    std::fprintf(stderr, "usage: check_layer --mode gptq|q2n --reference V --output O\n");
    return 2;
  }
  try {
    const q2n::io::SafetensorsReader ref(ref_path), out(out_path);
    const Eigen::MatrixXd q = out.read_matrix<double>("Q");
    if (mode == "gptq") {
      const Eigen::MatrixXd qref = ref.read_matrix<double>("gptq.Q");
      const Eigen::MatrixXd w = ref.read_matrix<double>("W");
      const Eigen::MatrixXd x = ref.read_matrix<double>("X");
      // Same entry: within 1e-6 relative (exact zeros must stay zero).
      const double equal =
          ((q - qref).array().abs() <= 1e-6 * qref.array().abs()).cast<double>().mean();
      const double err = (x * (q - w).transpose()).squaredNorm() / (x * w.transpose()).squaredNorm();
      const double err_ref = std::stod(ref.metadata().at("rel_out_err_gptq"));
      char buf[256];
      std::snprintf(buf, sizeof buf, "fraction of entries equal to gptq.Q: %.5f (>= 0.99)", equal);
      expect(equal >= 0.99, buf);
      std::snprintf(buf, sizeof buf, "rel_out_err %.6g vs reference %.6g (within 1%%)", err, err_ref);
      expect(std::abs(err - err_ref) <= 0.01 * err_ref, buf);
    } else if (mode == "q2n") {
      const Eigen::VectorXd m = out.read_matrix<double>("m");
      const Eigen::VectorXd mref = ref.read_matrix<double>("q2n.m");
      const Eigen::MatrixXd qref = ref.read_matrix<double>("q2n.Q");
      const int cut = out.read_flat<std::int32_t>("cut_index").at(0);
      const int cut_ref = ref.read_flat<std::int32_t>("q2n.cut_index").at(0);
      const double dm = ((m - mref).array().abs() / mref.array().abs()).maxCoeff();
      const double dq = (q - qref).cwiseAbs().maxCoeff() / qref.cwiseAbs().maxCoeff();
      char buf[256];
      std::snprintf(buf, sizeof buf, "cut_index %d vs reference %d", cut, cut_ref);
      expect(cut == cut_ref, buf);
      std::snprintf(buf, sizeof buf, "max relative difference of m: %.3g (<= 1e-4)", dm);
      expect(dm <= 1e-4, buf);
      std::snprintf(buf, sizeof buf, "max difference of Q relative to max |Q|: %.3g (<= 1e-4)", dq);
      expect(dq <= 1e-4, buf);
    } else {
      std::fprintf(stderr, "check_layer: unknown --mode %s\n", mode.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "check_layer: %s\n", e.what());
    return 2;
  }
  std::printf(failures ? "check: FAILED\n" : "check: ok\n");
  return failures ? 1 : 0;
}
