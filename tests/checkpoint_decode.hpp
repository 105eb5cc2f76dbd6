#pragma once
// An independent decoder of GPTQ and compressed-tensors checkpoint modules, written from the
// format descriptions (not from q2n's packers, whose code it does not use): it reads every
// code bit by bit from the int32 words, so a packer that shifts or orders codes wrongly
// decodes to other weights.
//
// GPTQ: W[r, c] = scales[g_idx[c], r] · (Q(c, r) − Z(g_idx[c], r)), where Q(c, r) is code c of
// the LSB-first bit stream over column r of qweight (stream bit t = bit t % 32 of word t / 32),
// Z(g, r) is code r of the same kind of stream over row g of qzeros, plus 1 for
// checkpoint_format "gptq" (v1).
// compressed-tensors pack-quantized: W[r, c] = weight_scale[r, g] · (U(r, c) − UZ(r, g)),
// U(r, c) in word c / pf of row r at bit (c % pf)·bits (pf = 32 / bits, no straddling),
// UZ(r, g) in word r / pf of column g of weight_zero_point, or 2^(bits−1) without one;
// g = weight_g_idx[c] when present, else c / (in / n_g).
#include <q2n/io/safetensors.hpp>

#include <Eigen/Core>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace checkpoint_decode {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Words = Eigen::Matrix<std::int64_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Everything a decoded module holds, in q2n's orientation (rows = outputs).
struct Module {
  int bits = 0;
  Eigen::MatrixXi codes;   // rows × cols, unsigned
  Eigen::MatrixXi zeros;   // rows × groups, unsigned
  Eigen::MatrixXf scales;  // rows × groups (fp16 values)
  Eigen::VectorXi g_idx;   // cols
  Matrix weights;          // rows × cols, computed in float as scale · (code − zero)
};

// Bit `t` of the stream whose words are word(0), word(1), ...
template <class WordAt>
int stream_bit(WordAt&& word, std::int64_t t) {
  const std::uint32_t w = static_cast<std::uint32_t>(word(t / 32));
  return static_cast<int>((w >> (t % 32)) & 1u);
}

inline Words read_words(const q2n::io::SafetensorsReader& r, const std::string& name) {
  if (r.info(name).dtype != q2n::io::DType::I32)
    throw std::runtime_error(r.path() + ": " + name + " is not I32");
  return r.read_matrix<std::int64_t>(name);
}

inline void compute_weights(Module& m) {
  m.weights.resize(m.codes.rows(), m.codes.cols());
  for (Eigen::Index r = 0; r < m.codes.rows(); ++r)
    for (Eigen::Index c = 0; c < m.codes.cols(); ++c) {
      const int g = m.g_idx(c);
      m.weights(r, c) = m.scales(r, g) * (static_cast<float>(m.codes(r, c)) - static_cast<float>(m.zeros(r, g)));
    }
}

/// Decodes GPTQ module `module` (`v1`: checkpoint_format "gptq").
inline Module decode_gptq(const q2n::io::SafetensorsReader& r, const std::string& module, int bits,
                          bool v1) {
  Module m;
  m.bits = bits;
  const Words qw = read_words(r, module + ".qweight");  // [in·b/32, out]
  const Words qz = read_words(r, module + ".qzeros");   // [n_g, out·b/32]
  const Eigen::MatrixXf sc = r.read_matrix<float>(module + ".scales");  // [n_g, out]
  const auto gi = r.read_flat<std::int32_t>(module + ".g_idx");
  const Eigen::Index rows = qw.cols(), cols = qw.rows() * 32 / bits, groups = sc.rows();
  if (static_cast<Eigen::Index>(gi.size()) != cols || sc.cols() != rows || qz.rows() != groups ||
      qz.cols() * 32 / bits != rows)
    throw std::runtime_error(r.path() + ": " + module + ": inconsistent GPTQ shapes");
  m.codes.resize(rows, cols);
  for (Eigen::Index row = 0; row < rows; ++row)
    for (Eigen::Index c = 0; c < cols; ++c) {
      int v = 0;
      for (int k = 0; k < bits; ++k)
        v |= stream_bit([&](std::int64_t w) { return qw(w, row); }, c * bits + k) << k;
      m.codes(row, c) = v;
    }
  m.zeros.resize(rows, groups);
  for (Eigen::Index g = 0; g < groups; ++g)
    for (Eigen::Index row = 0; row < rows; ++row) {
      int v = 0;
      for (int k = 0; k < bits; ++k)
        v |= stream_bit([&](std::int64_t w) { return qz(g, w); }, row * bits + k) << k;
      m.zeros(row, g) = v + (v1 ? 1 : 0);
    }
  m.scales = sc.transpose();
  m.g_idx.resize(cols);
  for (Eigen::Index c = 0; c < cols; ++c) m.g_idx(c) = gi[static_cast<std::size_t>(c)];
  compute_weights(m);
  return m;
}

/// Decodes compressed-tensors pack-quantized module `module`.
inline Module decode_compressed_tensors(const q2n::io::SafetensorsReader& r,
                                        const std::string& module, int bits) {
  Module m;
  m.bits = bits;
  const auto shape = r.read_flat<std::int64_t>(module + ".weight_shape");
  if (shape.size() != 2) throw std::runtime_error(module + ".weight_shape is not [out, in]");
  const Eigen::Index rows = shape[0], cols = shape[1];
  const Words packed = read_words(r, module + ".weight_packed");
  const Eigen::MatrixXf sc = r.read_matrix<float>(module + ".weight_scale");  // [out, n_g]
  const Eigen::Index groups = sc.cols(), pf = 32 / bits;
  if (packed.rows() != rows || packed.cols() != (cols + pf - 1) / pf || sc.rows() != rows)
    throw std::runtime_error(r.path() + ": " + module + ": inconsistent pack-quantized shapes");
  auto field = [&](std::int64_t word, Eigen::Index slot) {
    int v = 0;
    for (int k = 0; k < bits; ++k)
      v |= static_cast<int>((static_cast<std::uint32_t>(word) >> (slot * bits + k)) & 1u) << k;
    return v;
  };
  m.codes.resize(rows, cols);
  for (Eigen::Index row = 0; row < rows; ++row)
    for (Eigen::Index c = 0; c < cols; ++c) m.codes(row, c) = field(packed(row, c / pf), c % pf);
  m.zeros = Eigen::MatrixXi::Constant(rows, groups, 1 << (bits - 1));
  if (r.contains(module + ".weight_zero_point")) {
    const Words zp = read_words(r, module + ".weight_zero_point");
    for (Eigen::Index g = 0; g < groups; ++g)
      for (Eigen::Index row = 0; row < rows; ++row) m.zeros(row, g) = field(zp(row / pf, g), row % pf);
  }
  m.scales = sc;
  m.g_idx.resize(cols);
  if (r.contains(module + ".weight_g_idx")) {
    const auto gi = r.read_flat<std::int32_t>(module + ".weight_g_idx");
    for (Eigen::Index c = 0; c < cols; ++c) m.g_idx(c) = gi[static_cast<std::size_t>(c)];
  } else {
    for (Eigen::Index c = 0; c < cols; ++c) m.g_idx(c) = static_cast<int>(c / (cols / groups));
  }
  compute_weights(m);
  return m;
}

}  // namespace checkpoint_decode
