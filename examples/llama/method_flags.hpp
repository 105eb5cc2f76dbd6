#pragma once
/// \file method_flags.hpp
/// The one command-line vocabulary of q2n_llama and q2n-layer for how a layer is quantized:
/// every flag that fills a MethodSpec is parsed here, with strict numbers ("3abc", "3.9" and
/// "" are rejected, naming the flag), so the two tools cannot disagree on a flag's name,
/// meaning or range.

#include "layer_quant.hpp"

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

namespace llama {

/// The whole of `v` as a base-10 integer in [lo, hi], or nothing.
inline std::optional<long long> strict_int(const std::string& v, long long lo, long long hi) {
  if (v.empty() || std::isspace(static_cast<unsigned char>(v[0]))) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (*end != '\0' || errno != 0 || x < lo || x > hi) return std::nullopt;
  return x;
}

/// The whole of `v` as a finite number in [lo, hi], or nothing.
inline std::optional<double> strict_double(const std::string& v, double lo, double hi) {
  if (v.empty() || std::isspace(static_cast<unsigned char>(v[0]))) return std::nullopt;
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (*end != '\0' || !(x >= lo && x <= hi)) return std::nullopt;
  return x;
}

inline std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

/// Walks a command line flag by flag; every error names the tool and the flag.
class ArgCursor {
 public:
  ArgCursor(int argc, char** argv, std::string tool)
      : args_(argv + (argc > 0 ? 1 : 0), argv + argc), tool_(std::move(tool)) {}

  /// Moves to the next flag; false when there is none.
  bool next() {
    if (pos_ >= args_.size()) return false;
    flag_ = args_[pos_++];
    return true;
  }
  const std::string& flag() const { return flag_; }
  const std::string& tool() const { return tool_; }

  /// The flag's value: the next argument.
  std::string value() {
    if (pos_ >= args_.size()) fail(flag_, " needs a value (see --help)");
    return args_[pos_++];
  }
  /// An optional value: the next argument when it is one of `choices` (consumed), else "".
  std::string optional_value(std::initializer_list<const char*> choices) {
    if (pos_ < args_.size())
      for (const char* c : choices)
        if (args_[pos_] == c) return args_[pos_++];
    return "";
  }
  /// The flag's value, which must be one of `choices`: its index there.
  std::size_t choice(std::initializer_list<const char*> choices) {
    const std::string v = value();
    std::size_t i = 0;
    for (const char* c : choices) {
      if (v == c) return i;
      ++i;
    }
    std::string list;
    for (const char* c : choices) list += (list.empty() ? "" : ", ") + std::string(c);
    fail(flag_, " ", v, " is not one of ", list);
  }
  long long int_value(long long lo, long long hi) { return to_int(value(), lo, hi); }
  double number_value(double lo, double hi) {
    const std::string v = value();
    if (const auto x = strict_double(v, lo, hi)) return *x;
    fail(flag_, " ", v, " is not a number in [", lo, ", ", hi, "]");
  }
  /// A comma list of integers in [lo, hi] (at least one).
  std::vector<int> int_list(long long lo, long long hi) {
    std::vector<int> out;
    for (const auto& item : split_commas(value()))
      out.push_back(static_cast<int>(to_int(item, lo, hi)));
    if (out.empty()) fail(flag_, " needs at least one value");
    return out;
  }

  template <class... Parts>
  [[noreturn]] void fail(const Parts&... parts) const {
    llama::fail(tool_, ": ", parts...);
  }

 private:
  long long to_int(const std::string& v, long long lo, long long hi) const {
    if (const auto x = strict_int(v, lo, hi)) return *x;
    fail(flag_, " ", v, " is not an integer in [", lo, ", ", hi, "]");
  }

  std::vector<std::string> args_;
  std::size_t pos_ = 0;
  std::string tool_;
  std::string flag_;
};

/// Weight bits of RTN / GPTQ / OWQ and of PB-LLM's salient weights.
inline constexpr long long kMinBits = 2, kMaxBits = 8;

/// `--methods` / `--method` item: a method name, or an error naming the flag.
inline Method method_value(const ArgCursor& a, const std::string& name) {
  if (const auto m = find_method(name)) return *m;
  a.fail(a.flag(), ": unknown method \"", name, "\" (see --help for the methods)");
}

/// `--q2n [on|off|both]`: which of the two variants to run; a bare --q2n means on.
struct Q2nVariants {
  bool off = false;
  bool on = false;
};
inline Q2nVariants q2n_variants(ArgCursor& a) {
  const std::string v = a.optional_value({"on", "off", "both"});
  return {v == "off" || v == "both", v != "off"};
}

/// Parses the current flag of `a` into `s` when it belongs to the shared vocabulary (see
/// method_flags_usage); returns false, consuming nothing, when it does not. The method itself
/// is the tools' own flag (a list in q2n_llama, "given" in q2n-layer), through method_value.
inline bool parse_method_flag(ArgCursor& a, MethodSpec& s) {
  const std::string& f = a.flag();
  if (f == "--bits") {
    s.grid.bits = static_cast<int>(a.int_value(kMinBits, kMaxBits));
  } else if (f == "--group") {
    const long long g = a.int_value(-1, 1 << 20);
    s.groupsize = g <= 0 ? -1 : g;  // 0 (and -1, the library's spelling): one group per row
  } else if (f == "--sym") {
    s.grid.sym = true;
  } else if (f == "--mse") {
    s.grid.mse = true;
  } else if (f == "--act-order") {
    s.act_order = true;
  } else if (f == "--static-groups") {
    s.static_groups = true;
  } else if (f == "--percdamp") {
    s.damping.percdamp = a.number_value(0, 10);
  } else if (f == "--blocksize") {
    s.sweep.blocksize = a.int_value(1, 1 << 20);
  } else if (f == "--owq-columns") {
    s.owq_columns = a.int_value(0, 1 << 30);
  } else if (f == "--owq-target-bits") {
    s.owq_target_bits = a.number_value(kMinBits, 16);
  } else if (f == "--owq-extra-bits") {
    s.owq_extra_bits = a.number_value(0, 8);
  } else if (f == "--pb-low-frac") {
    s.pb_low_frac = a.number_value(0, 1);
  } else if (f == "--pb-high-bits" || f == "--pb-high-bit") {  // the second: earlier spelling
    s.pb_high.bits = static_cast<int>(a.int_value(kMinBits, kMaxBits));
  } else if (f == "--pb-salience") {
    s.pb_salience = a.choice({"hessian", "magnitude"}) == 0 ? q2n::Salience::hessian
                                                            : q2n::Salience::magnitude;
  } else if (f == "--lq-exponent") {
    s.lq_exponent = a.number_value(0, 64);
  } else if (f == "--lq-max-iter") {
    s.lq_max_iter = static_cast<int>(a.int_value(0, 100000));
  } else if (f == "--quip-transform") {
    const std::size_t k = a.choice({"kronecker", "hadamard", "none"});
    s.quip_transform = k == 0 ? q2n::Incoherence::kronecker
                              : k == 1 ? q2n::Incoherence::hadamard : q2n::Incoherence::none;
  } else if (f == "--quip-grid") {
    s.quip_grid = a.choice({"balanced", "per-row"}) == 0 ? q2n::QuipGrid::balanced
                                                         : q2n::QuipGrid::per_row;
  } else if (f == "--quip-no-rescale") {
    s.quip_rescale = false;
  } else if (f == "--quip-npasses") {
    s.quip_npasses = static_cast<int>(a.int_value(0, 1000));
  } else if (f == "--transform-seed") {
    s.transform_seed = static_cast<std::uint64_t>(a.int_value(0, 1LL << 62));
  } else if (f == "--q2n") {
    const Q2nVariants v = q2n_variants(a);
    if (v.off && v.on) a.fail(f, " both: ", a.tool(), " runs one variant; give on or off");
    s.q2n = v.on;
  } else if (f == "--threshold") {
    s.null_space.threshold = a.number_value(1e-12, 1e12);
  } else if (f == "--lambda") {
    s.lambda = a.number_value(0, 1e12);
  } else if (f == "--cut-rule") {
    s.null_space.rule =
        a.choice({"paper", "plain"}) == 0 ? q2n::CutRule::paper : q2n::CutRule::plain;
  } else if (f == "--eigensolver") {
    s.null_space.solver =
        a.choice({"eigen", "lapack"}) == 0 ? q2n::DenseSolver::eigen : q2n::DenseSolver::lapack;
    if (s.null_space.solver == q2n::DenseSolver::lapack && !q2n::has_lapack)
      a.fail(f, " lapack: this build has no LAPACKE backend (install liblapacke-dev and "
             "reconfigure)");
  } else {
    return false;
  }
  return true;
}

/// Checks that hold across flags, once all are parsed.
inline void check_method_flags(const ArgCursor& a, const MethodSpec& s) {
  if (s.owq_columns >= 0 && s.owq_target_bits > 0)
    a.fail("give either --owq-columns or --owq-target-bits, not both");
}

namespace detail {
inline std::string group_text(Eigen::Index g) {
  return g > 0 ? std::to_string(g) : std::string("one group per row");
}
inline std::string number_text(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}
}  // namespace detail

/// Help text of the shared vocabulary, with the tool's defaults `d`.
inline std::string method_flags_usage(const MethodSpec& d) {
  using detail::number_text;
  return "quantizer\n"
         "  --group G             group size, 0 = one group per row (default " +
         detail::group_text(d.groupsize) + ")\n" +
         "  --sym                 symmetric grid (RTN/GPTQ/OWQ)\n"
         "  --mse                 grid search over shrunk ranges (RTN/GPTQ/OWQ)\n"
         "  --act-order           GPTQ/OWQ/LeanQuant: process columns by decreasing diag(H)\n"
         "  --static-groups       GPTQ: fit all groups before the sweep\n"
         "  --percdamp P          relative Hessian damping (default " +
         number_text(d.damping.percdamp) + ")\n" +
         "  --blocksize B         GPTQ/OWQ/PB-LLM/LeanQuant lazy-update block width (default " +
         std::to_string(d.sweep.blocksize) + ")\n" +
         "  --owq-columns N       OWQ: keep N columns in full precision, or\n"
         "  --owq-target-bits F   OWQ: as many as an average of F bits allows, or\n"
         "  --owq-extra-bits B    OWQ: as many as bits + B allows (default " +
         number_text(d.owq_extra_bits) + ")\n" +
         "  --pb-low-frac F       PB-LLM: fraction of binarized weights (default " +
         number_text(d.pb_low_frac) + ")\n" +
         "  --pb-high-bits B      PB-LLM: bits of the salient weights (default " +
         std::to_string(d.pb_high.bits) + ")\n" +
         "  --pb-salience S       PB-LLM: hessian | magnitude (default " +
         (d.pb_salience == q2n::Salience::hessian ? "hessian" : "magnitude") + ")\n" +
         "  --lq-exponent P       LeanQuant: k-means weights U_jj^-P, U = chol(H^-1) (default " +
         number_text(d.lq_exponent) + ")\n" +
         "  --lq-max-iter N       LeanQuant: Lloyd steps at most (default " +
         std::to_string(d.lq_max_iter) + ")\n" +
         "  --quip-transform T    QuIP: kronecker | hadamard | none (default kronecker)\n"
         "  --quip-grid G         QuIP: balanced (one scale per matrix) | per-row (default balanced)\n"
         "  --quip-no-rescale     QuIP: skip the diagonal rescaling\n"
         "  --quip-npasses N      QuIP: greedy passes after LDLQ (default " +
         std::to_string(d.quip_npasses) + ")\n" +
         "  --transform-seed S    QuIP: seed of the random transforms (default " +
         std::to_string(d.transform_seed) + "; q2n_llama uses the calibration seed)\n" +
         "Q2N\n"
         "  --threshold T         null-space cut threshold (default " +
         number_text(d.null_space.threshold) + ")\n" +
         "  --lambda L            ridge weight toward m = 1 (default " + number_text(d.lambda) +
         ")\n" +
         "  --cut-rule R          paper | plain (default " +
         (d.null_space.rule == q2n::CutRule::paper ? "paper" : "plain") + ")\n" +
         "  --eigensolver E       dense eigensolves of the null space: eigen | lapack (default " +
         (d.null_space.solver == q2n::DenseSolver::eigen ? "eigen" : "lapack") +
         "; lapack is faster at large\n"
         "                        sizes and rounds by the BLAS's thread count)\n";
}

}  // namespace llama
