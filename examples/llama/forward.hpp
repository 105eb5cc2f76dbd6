#pragma once
/// \file forward.hpp
/// The float32 forward pass of a Llama / Qwen2-style decoder over one window of tokens, batched
/// as whole-window matrix products (T tokens × hidden), split into the stages the sequential
/// calibration needs to observe: the inputs of q/k/v, of o, of up/gate and of down.

#include "model.hpp"

#include <q2n/activations.hpp>
#include <q2n/rotation.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace llama {

/// A token id: the byte value for byte-level models, a tokenizer's id otherwise. Ids are
/// checked against the vocabulary when they are read (text.hpp), before any lookup.
using Token = std::int32_t;
using Tokens = std::vector<Token>;

/// Rotary embedding tables for positions 0 … T−1 (rotate-half convention: dimension i pairs
/// with i + head_dim/2).
struct Rope {
  Matrix cos, sin;  ///< T × head_dim/2

  Rope() = default;
  Rope(const Config& c, Eigen::Index T) {
    const Eigen::Index half = c.head_dim / 2;
    cos.resize(T, half);
    sin.resize(T, half);
    for (Eigen::Index i = 0; i < half; ++i) {
      // Hugging Face computes the inverse frequencies and the angles in float32.
      const float inv_freq = static_cast<float>(
          1.0 / std::pow(c.rope_theta, static_cast<double>(2 * i) / c.head_dim));
      for (Eigen::Index p = 0; p < T; ++p) {
        const float angle = static_cast<float>(p) * inv_freq;
        cos(p, i) = std::cos(angle);
        sin(p, i) = std::sin(angle);
      }
    }
  }

  /// Rotates every head (consecutive blocks of head_dim columns) of x (T × heads·head_dim).
  void apply(Matrix& x, Eigen::Index head_dim) const {
    const Eigen::Index half = head_dim / 2;
    const Eigen::Index heads = x.cols() / head_dim;
    for (Eigen::Index h = 0; h < heads; ++h) {
      auto a = x.middleCols(h * head_dim, half);
      auto b = x.middleCols(h * head_dim + half, half);
      Matrix a0 = a;
      a = a0.cwiseProduct(cos) - b.cwiseProduct(sin);
      b = b.cwiseProduct(cos) + a0.cwiseProduct(sin);
    }
  }
};

/// y = x / sqrt(mean(x²) + eps) ⊙ w, row by row.
inline void rms_norm(const Matrix& x, const Vector& w, double eps, Matrix& y) {
  y.resize(x.rows(), x.cols());
  const float e = static_cast<float>(eps);
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    const float ms = x.row(r).squaredNorm() / static_cast<float>(x.cols());
    y.row(r) = (x.row(r) * (1.0f / std::sqrt(ms + e))).cwiseProduct(w.transpose());
  }
}

/// x quantized per token as the layer's linears read it (with ops.bits.act_bits < 16).
inline Matrix quantized_input(const OnlineOps& ops, const Matrix& x) {
  return q2n::quantize_per_token(x, q2n::ActivationOptions{ops.bits.act_bits, ops.bits.act_clip});
}

/// What the layer's linears read of x: x itself, or with activation quantization x quantized
/// per token into `buffer`.
inline const Matrix& linear_input(const OnlineOps& ops, const Matrix& x, Matrix& buffer) {
  if (ops.bits.act_bits >= 16) return x;
  buffer = quantized_input(ops, x);
  return buffer;
}

/// x made into what a linear reads, in place: the online transform (when given), then the
/// activation quantizer (when on).
inline void to_linear_input(const OnlineOps& ops,
                            const std::shared_ptr<const q2n::OrthogonalTransform<float>>& transform,
                            Matrix& x) {
  if (transform) q2n::transform_rows(x, *transform);
  if (ops.bits.act_bits < 16) x = quantized_input(ops, x);
}

/// The K and V caches as attention reads them with KV quantization (ops.bits.kv_bits < 16): q and
/// k turned per head by ops.head when given (after RoPE: q·k is unchanged), then k and v
/// quantized per token. Nothing otherwise.
inline void kv_cache(const OnlineOps& ops, const Config& c, Matrix& q, Matrix& k, Matrix& v) {
  if (ops.bits.kv_bits >= 16) return;
  if (ops.head) {
    q2n::transform_rows(q, q2n::BlockTransform<float>::per_block(ops.head, c.num_attention_heads));
    q2n::transform_rows(k, q2n::BlockTransform<float>::per_block(ops.head, c.num_key_value_heads));
  }
  const q2n::ActivationOptions kv{ops.bits.kv_bits, ops.bits.kv_clip};
  k = q2n::quantize_per_token(k, kv);
  v = q2n::quantize_per_token(v, kv);
}

/// Causal grouped-query attention on the normalized input xn (T × hidden) with the layer's
/// q/k/v weights; returns the concatenated head outputs (T × heads·head_dim): the input of
/// o_proj. Query head h reads KV head h / (heads / kv_heads). The layer's online operations
/// apply: to xn as q/k/v read it, to the K and V caches (kv_cache), and to the result as
/// o_proj reads it.
inline Matrix attention_core(const DecoderLayer& L, const Config& c, const Rope& rope,
                             const Matrix& xn) {
  const Eigen::Index T = xn.rows(), hd = c.head_dim;
  Matrix q, k, v, buffer;
  const Matrix& in = linear_input(L.online, xn, buffer);
  L.q.apply(in, q);
  L.k.apply(in, k);
  L.v.apply(in, v);
  rope.apply(q, hd);
  rope.apply(k, hd);
  kv_cache(L.online, c, q, k, v);
  const int group = c.num_attention_heads / c.num_key_value_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  Matrix out(T, static_cast<Eigen::Index>(c.num_attention_heads) * hd);
  Matrix s(T, T);
  for (int h = 0; h < c.num_attention_heads; ++h) {
    const Eigen::Index kvh = h / group;
    s.noalias() = q.middleCols(h * hd, hd) * k.middleCols(kvh * hd, hd).transpose();
    for (Eigen::Index i = 0; i < T; ++i) {
      auto row = s.row(i);
      const float mx = (row.head(i + 1) * scale).maxCoeff();
      float sum = 0;
      for (Eigen::Index j = 0; j <= i; ++j) {
        const float e = std::exp(row(j) * scale - mx);
        row(j) = e;
        sum += e;
      }
      row.head(i + 1) /= sum;
      row.tail(T - i - 1).setZero();
    }
    out.middleCols(h * hd, hd).noalias() = s * v.middleCols(kvh * hd, hd);
  }
  to_linear_input(L.online, L.online.before_o, out);
  return out;
}

/// gate ← silu(gate) ⊙ up, element by element (SwiGLU, in the gate's buffer).
template <class Gate, class Up>
void silu_times(Gate&& gate, const Up& up) {
  gate.array() = (gate.array() / (1.0f + (-gate.array()).exp())) * up.array();
}

/// silu(gate(x)) ⊙ up(x): the input of down_proj (formed in gate(x)'s buffer: two
/// tokens × intermediate buffers at a time, not three). The layer's online operations apply:
/// to xn as up/gate read it, and to the result as down_proj reads it.
inline Matrix mlp_activation(const DecoderLayer& L, const Matrix& x_normed) {
  Matrix buffer;
  const Matrix& xn = linear_input(L.online, x_normed, buffer);
  Matrix g;
  L.gate.apply(xn, g);
  if (g.rows() <= g.cols()) {
    Matrix u;
    L.up.apply(xn, u);
    silu_times(g, u);
    to_linear_input(L.online, L.online.before_down, g);
    return g;
  }
  // up(xn) a panel of rows at a time, each multiplied into g at once: one intermediate-sized
  // matrix instead of two (this runs on models that fill the memory, streaming.hpp). The
  // panels are panel_product's own (rows > cols: kPanel rows each, one product per panel, one
  // thread per panel), so every value is the one L.up.apply would give.
  const Eigen::Index n = g.rows(), panels = (n + q2n::detail::kPanel - 1) / q2n::detail::kPanel;
  const auto Wt = L.up.weight.transpose();
#ifdef _OPENMP
#pragma omp parallel
#endif
  {
    Matrix u;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (Eigen::Index p = 0; p < panels; ++p) {
      const Eigen::Index a = p * q2n::detail::kPanel, rows = std::min(q2n::detail::kPanel, n - a);
      u.resize(rows, g.cols());
      u.noalias() = 1.0f * (xn.middleRows(a, rows) * Wt);
      if (L.up.has_bias()) u.rowwise() += L.up.bias.transpose();
      silu_times(g.middleRows(a, rows), u);
    }
  }
  to_linear_input(L.online, L.online.before_down, g);
  return g;
}

/// The MLP block's output down(silu(gate(xn)) ⊙ up(xn)), xn = rms_norm(x, post_norm), formed
/// q2n::detail::kPanel rows at a time, one thread per panel: no tokens × intermediate matrix
/// is held whole. The numbers are those of mlp_activation and Linear::apply on the whole x
/// when x has more rows than the intermediate size: the same products on the same row panels.
inline void mlp_output_by_panels(const DecoderLayer& L, const Config& c, const Matrix& x,
                                 Matrix& y) {
  constexpr Eigen::Index kPanel = q2n::detail::kPanel;
  const Eigen::Index n = x.rows(), panels = (n + kPanel - 1) / kPanel;
  y.resize(n, L.down.weight.rows());
  auto product = [](const Matrix& in, const Linear& l, Matrix& out) {
    out.resize(in.rows(), l.weight.rows());
    out.noalias() = 1.0f * (in * l.weight.transpose());
    if (l.has_bias()) out.rowwise() += l.bias.transpose();
  };
#ifdef _OPENMP
#pragma omp parallel
#endif
  {
    Matrix xn, buffer, g, u, out;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (Eigen::Index p = 0; p < panels; ++p) {
      const Eigen::Index a = p * kPanel, rows = std::min(kPanel, n - a);
      rms_norm(x.middleRows(a, rows), L.post_norm, c.rms_norm_eps, xn);
      const Matrix& in = linear_input(L.online, xn, buffer);
      product(in, L.gate, g);
      product(in, L.up, u);
      silu_times(g, u);
      to_linear_input(L.online, L.online.before_down, g);
      product(g, L.down, out);
      y.middleRows(a, rows) = out;
    }
  }
}

/// One decoder layer applied in place to the residual stream x (T × hidden).
inline void decoder_layer(const DecoderLayer& L, const Config& c, const Rope& rope, Matrix& x) {
  Matrix xn, y;
  rms_norm(x, L.input_norm, c.rms_norm_eps, xn);
  L.o.apply(attention_core(L, c, rope, xn), y);
  x += y;
  rms_norm(x, L.post_norm, c.rms_norm_eps, xn);
  L.down.apply(mlp_activation(L, xn), y);
  x += y;
}

/// Embedding lookup: the residual stream entering layer 0 (T × hidden).
inline Matrix embed(const Model& m, const Token* tokens, Eigen::Index T) {
  Matrix x(T, m.config.hidden_size);
  for (Eigen::Index t = 0; t < T; ++t) x.row(t) = m.embed.row(tokens[t]);
  return x;
}

/// Final norm and LM head on the residual stream: logits (T × vocab).
inline Matrix lm_logits(const Model& m, const Matrix& x) {
  Matrix xn, logits;
  rms_norm(x, m.norm, m.config.rms_norm_eps, xn);
  m.lm_head.apply(xn, logits);
  return logits;
}

/// Logits of a whole window.
inline Matrix forward(const Model& m, const Rope& rope, const Token* tokens, Eigen::Index T) {
  Matrix x = embed(m, tokens, T);
  for (const DecoderLayer& L : m.layers) decoder_layer(L, m.config, rope, x);
  return lm_logits(m, x);
}

/// Σ_t −log softmax(logits_t)[target_t] in double.
inline double window_nll(const Matrix& logits, const Token* targets) {
  double nll = 0;
  for (Eigen::Index t = 0; t < logits.rows(); ++t) {
    const auto row = logits.row(t);
    const double mx = row.maxCoeff();
    double z = 0;
    for (Eigen::Index j = 0; j < row.size(); ++j) z += std::exp(double(row(j)) - mx);
    nll += mx + std::log(z) - double(row(targets[t]));
  }
  return nll;
}

}  // namespace llama
