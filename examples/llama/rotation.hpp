#pragma once
/// \file rotation.hpp
/// QuaRot's offline rotation of a Llama / Qwen2-style model (spcl/QuaRot, as the seed's
/// reference runs it), from the library's pieces (q2n/rotation.hpp, q2n/transforms.hpp). The
/// rotated model computes the same function in float; its linears' inputs are incoherent, so
/// they quantize to 4 bits per token:
///
/// 1. every RMSNorm weight is folded into the linears that read the norm (q, k, v; up, gate;
///    lm_head) and set to 1 (no embedding-mean subtraction: that is for LayerNorm models and
///    changes an RMSNorm model's function);
/// 2. the residual stream becomes R x for an orthogonal R: the randomized Hadamard transform
///    had · diag(ε) with ε drawn from a seed (QuaRot's Q = diag(ε) Hᵀ is Rᵀ), or a rotation
///    read from a file (a learned one such as SpinQuant's R1: the file holds Q, and R = Qᵀ).
///    Embeddings and the outputs of o_proj and down_proj are turned by R, the inputs of every
///    other linear by Rᵀ;
/// 3. v_proj's outputs are turned per head by H_hd, and o_proj reads its input through the
///    Hadamard across heads, H_heads ⊗ I, applied online: o_proj's input is then
///    (H_heads ⊗ H_hd) times the heads' outputs, which o_proj absorbs. (QuaRot absorbs the full
///    H_n instead, equal to H_heads ⊗ H_hd for its sizes; the Kronecker form is exact for any.)
/// 4. down_proj reads its input through H_intermediate, applied online, and absorbs it.
/// 5. With K/V cache quantization, q and k are turned per head by H_hd after RoPE (online;
///    q·k is unchanged) before the keys are quantized.
///
/// Every weight is turned in double and stored back in float, as QuaRot does in float64.

#include "model.hpp"

#include <q2n/io/safetensors.hpp>
#include <q2n/rotation.hpp>
#include <q2n/transforms.hpp>

#include <Eigen/Core>
#include <Eigen/QR>

#include <cstdint>
#include <memory>
#include <string>
#include <utility>

namespace llama {

/// Where the residual rotation comes from.
struct RotationSource {
  std::uint64_t seed = 0;  ///< random signs of the randomized Hadamard transform
  std::string file;        ///< or: a safetensors file with one hidden × hidden tensor Q
};

namespace detail {

using RowMatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using TransformD = q2n::OrthogonalTransform<double>;

// The normalized Hadamard transform of size n, in the scalar asked for, or an error naming
// what needs it.
template <class Scalar>
std::shared_ptr<const q2n::OrthogonalTransform<Scalar>> hadamard(Eigen::Index n, const char* what) {
  if (q2n::HadamardTransform<Scalar>::base_order(n) == 0)
    fail("quarot: ", what, " = ", n,
         " has no Hadamard matrix built in (n = K * 2^k with K "
         "from Paley's constructions); this model cannot be rotated");
  return std::make_shared<q2n::HadamardTransform<Scalar>>(n);
}

// f applied to a linear's weight (and bias) in double, stored back in float.
template <class F>
void in_double(Linear& l, F&& f) {
  RowMatrixD W = l.weight.cast<double>();
  Eigen::VectorXd b = l.bias.cast<double>();
  f(W, b);
  l.weight = W.cast<float>();
  l.bias = b.cast<float>();
}

// The rotation of a file: its one 2-D tensor Q (hidden × hidden, any float type), R = Qᵀ.
// A rotation stored in float32 or bfloat16 is orthogonal only to its type's precision: it is
// checked to within 1e-2 (max |QᵀQ − I|), then made orthogonal in double (the Q factor of its QR
// decomposition, signs kept so that the result stays next to Q), so that the rotated float
// model computes exactly what the original does.
inline std::shared_ptr<const TransformD> rotation_from_file(const std::string& path,
                                                            std::int64_t hidden) {
  q2n::io::SafetensorsReader reader(path);
  const auto names = reader.names();
  if (names.size() != 1)
    fail("quarot: ", path, " holds ", names.size(),
         " tensors; a rotation file holds exactly one (hidden x hidden)");
  const Eigen::MatrixXd Q = reader.read_matrix<double>(names.front());
  if (Q.rows() != hidden || Q.cols() != hidden)
    fail("quarot: ", path, ": ", names.front(), " is ", Q.rows(), " x ", Q.cols(),
         "; the model's hidden size is ", hidden, ", so pass a ", hidden, " x ", hidden,
         " rotation");
  if (!Q.allFinite())
    fail("quarot: ", path, ": ", names.front(), " has entries that are not finite");
  const double off =
      (Q.transpose() * Q - Eigen::MatrixXd::Identity(hidden, hidden)).cwiseAbs().maxCoeff();
  if (!(off <= 1e-2))
    fail("quarot: ", path, ": ", names.front(), " is not orthogonal (max |Q^T Q - I| = ", off,
         "); pass an orthogonal rotation");
  const Eigen::HouseholderQR<Eigen::MatrixXd> qr(Q);
  Eigen::MatrixXd O = qr.householderQ();
  for (Eigen::Index j = 0; j < hidden; ++j)
    if (qr.matrixQR()(j, j) < 0) O.col(j) = -O.col(j);
  return std::make_shared<q2n::DenseTransform<double>>(O.transpose());
}

}  // namespace detail

/// The residual rotation R of `source` for a model of this config.
inline std::shared_ptr<const q2n::OrthogonalTransform<double>> residual_rotation(
    const Config& c, const RotationSource& source) {
  if (!source.file.empty()) return detail::rotation_from_file(source.file, c.hidden_size);
  detail::hadamard<double>(c.hidden_size, "hidden_size");  // (the error names the size)
  return std::make_shared<q2n::HadamardTransform<double>>(
      q2n::HadamardTransform<double>::randomized(c.hidden_size, source.seed));
}

/// Rotates `m` in place with the residual rotation R (steps 1-4 of the file comment) and sets
/// the online transforms of its layers. The model must be unrotated (its layers' online
/// transforms unset).
inline void rotate_model(Model& m, const q2n::OrthogonalTransform<double>& R) {
  using detail::RowMatrixD;
  const Config& c = m.config;
  if (R.size() != c.hidden_size)
    fail("quarot: the rotation has size ", R.size(), " but the model's hidden size is ",
         c.hidden_size);
  const Eigen::Index heads = c.num_attention_heads, kv_heads = c.num_key_value_heads,
                     hd = c.head_dim;
  const auto had_hd = detail::hadamard<double>(hd, "head_dim");
  const auto had_heads = detail::hadamard<double>(heads, "num_attention_heads");
  const auto had_inter = detail::hadamard<double>(c.intermediate_size, "intermediate_size");
  const auto v_out = q2n::BlockTransform<double>::per_block(had_hd, kv_heads);  // I ⊗ H_hd
  const auto o_heads = q2n::BlockTransform<double>::per_block(had_hd, heads);
  const auto o_across = q2n::BlockTransform<double>::across_blocks(had_heads, hd);  // H_h ⊗ I
  // The online parts, in float.
  const auto before_o =
      std::make_shared<const q2n::BlockTransform<float>>(q2n::BlockTransform<float>::across_blocks(
          detail::hadamard<float>(heads, "num_attention_heads"), hd));
  const auto before_down = detail::hadamard<float>(c.intermediate_size, "intermediate_size");
  const auto head = detail::hadamard<float>(hd, "head_dim");  // K cache (with --kv-bits)

  // A linear reading a norm's output: the norm's weight folded in, its inputs turned by R.
  auto reads = [&](Linear& l, const Vector& norm) {
    detail::in_double(l, [&](RowMatrixD& W, Eigen::VectorXd&) {
      q2n::fold_scale_into_inputs(W, norm.cast<double>());
      q2n::rotate_inputs(W, R);
    });
  };
  // A linear writing to the residual stream: its outputs turned by R.
  auto writes = [&](Linear& l) {
    detail::in_double(l, [&](RowMatrixD& W, Eigen::VectorXd& b) { q2n::rotate_outputs(W, R, &b); });
  };
  for (DecoderLayer& L : m.layers) {
    if (L.online.before_o || L.online.before_down || L.online.head)
      fail("quarot: the model is rotated already");
    for (Linear* l : {&L.q, &L.k, &L.v}) reads(*l, L.input_norm);
    for (Linear* l : {&L.up, &L.gate}) reads(*l, L.post_norm);
    L.input_norm.setOnes();
    L.post_norm.setOnes();
    writes(L.o);
    writes(L.down);
    detail::in_double(
        L.v, [&](RowMatrixD& W, Eigen::VectorXd& b) { q2n::rotate_outputs(W, v_out, &b); });
    detail::in_double(L.o, [&](RowMatrixD& W, Eigen::VectorXd&) {
      q2n::rotate_inputs(W, o_heads);   // W (I ⊗ H_hd)ᵀ: undoes v's per-head turn
      q2n::rotate_inputs(W, o_across);  // ... (H_h ⊗ I)ᵀ: absorbs the online one
    });
    detail::in_double(L.down,
                      [&](RowMatrixD& W, Eigen::VectorXd&) { q2n::rotate_inputs(W, *had_inter); });
    L.online.before_o = before_o;
    L.online.before_down = before_down;
    L.online.head = head;
  }
  reads(m.lm_head, m.norm);
  m.norm.setOnes();
  RowMatrixD E = m.embed.cast<double>();
  q2n::transform_rows(E, R);
  m.embed = E.cast<float>();
}

/// Every layer's activation and KV cache quantizers set to `b`.
inline void set_inference_bits(Model& m, const InferenceBits& b) {
  for (DecoderLayer& L : m.layers) L.online.bits = b;
}

}  // namespace llama
