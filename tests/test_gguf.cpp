// GGUF (q2n/io/gguf.hpp, q2n/io/gguf_llama.hpp): hand-computed blocks of every carrier, the
// carrier rules and their refusals, exact round trips of quantized storages, metadata of every
// type, the Llama conventions, and the reader's FormatErrors. (That llama.cpp itself reads
// these files as intended is checked by the interop.* tests of the examples.)
#include <doctest/doctest.h>

#include <q2n/io/gguf.hpp>
#include <q2n/io/gguf_llama.hpp>
#include <q2n/quantizers.hpp>

#include "test_util.hpp"

#include <Eigen/Core>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace {

using q2n::io::GgmlType;
using q2n::io::GgufReader;
using q2n::io::GgufWriter;

// A 1 × 32 uniform storage with one group.
q2n::QuantStorage<float> one_block(int bits, float scale, float zero, const std::vector<int>& codes) {
  q2n::UniformGrid<float> g;
  g.bits = bits;
  g.codes.resize(1, 32);
  for (int t = 0; t < 32; ++t) g.codes(0, t) = static_cast<std::uint8_t>(codes[static_cast<std::size_t>(t)]);
  g.scales = Eigen::MatrixXf::Constant(1, 1, scale);
  g.zeros = Eigen::MatrixXf::Constant(1, 1, zero);
  g.g_idx = Eigen::VectorXi::Zero(32);
  return q2n::StorageBuilder<float>(1, 32, "test").uniform(std::move(g)).build();
}

std::vector<unsigned char> block_bytes(const q2n::QuantStorage<float>& s, GgmlType* type = nullptr) {
  GgufWriter w;
  w.add_quantized("t", s);
  const q2n_test::TempFile p_file("block.gguf");
  const std::string p = p_file.str();
  w.write(p);
  GgufReader r(p);
  if (type) *type = r.info("t").type;
  // The decoded block equals the storage's own dequantization.
  CHECK((r.dequantize("t").cast<float>().array() == q2n::dequantize(s).array()).all());
  return r.raw("t");
}

// Storage of an RTN quantization with fp16 scales.
q2n::QuantStorage<float> rtn_storage(Eigen::Index rows, Eigen::Index cols, int bits, bool sym,
                                     Eigen::Index group, std::uint32_t seed) {
  q2n::RtnOptions o;
  o.grid.bits = bits;
  o.grid.sym = sym;
  o.groupsize = group;
  auto res = q2n::rtn(q2n_test::gaussian<float>(rows, cols, seed), o);
  q2n::round_values(res.storage);
  return res.storage;
}

}  // namespace

TEST_CASE("gguf: a Q4_0 block by hand (symmetric 4-bit codes, nibble order)") {
  std::vector<int> codes(32);
  for (int t = 0; t < 32; ++t) codes[static_cast<std::size_t>(t)] = t % 16;
  GgmlType type;
  const auto b = block_bytes(one_block(4, 0.5f, 8, codes), &type);
  CHECK(type == GgmlType::Q4_0);
  REQUIRE(b.size() == 18);
  CHECK(b[0] == 0x00);  // fp16 0.5 = 0x3800, little-endian
  CHECK(b[1] == 0x38);
  // Element t < 16 in the low nibble of byte t, element t + 16 in its high nibble: n = q here.
  for (int k = 0; k < 16; ++k) CHECK(b[static_cast<std::size_t>(2 + k)] == (k | (k << 4)));
}

TEST_CASE("gguf: symmetric 2- and 3-bit codes ride in Q4_0 shifted to the middle") {
  std::vector<int> c3(32), c2(32);
  for (int t = 0; t < 32; ++t) c3[static_cast<std::size_t>(t)] = t % 8, c2[static_cast<std::size_t>(t)] = t % 4;
  GgmlType type;
  auto b = block_bytes(one_block(3, 1.0f, 4, c3), &type);
  CHECK(type == GgmlType::Q4_0);
  CHECK(b[2] == ((0 - 4 + 8) | ((0 - 4 + 8) << 4)));   // codes 0 and 16 % 8 = 0
  CHECK(b[2 + 7] == ((7 - 4 + 8) | ((7 - 4 + 8) << 4)));
  b = block_bytes(one_block(2, 1.0f, 2, c2), &type);
  CHECK(type == GgmlType::Q4_0);
  CHECK(b[2 + 3] == ((3 - 2 + 8) | ((3 - 2 + 8) << 4)));
}

TEST_CASE("gguf: a Q5_0 block by hand (asymmetric 4-bit codes, the fifth bit)") {
  // z = 3: n = q − 3 + 16 ∈ [13, 28]; bit 4 of n is set for q ≥ 3.
  std::vector<int> codes(32);
  for (int t = 0; t < 32; ++t) codes[static_cast<std::size_t>(t)] = (t * 7) % 16;
  GgmlType type;
  // A scale whose −s·z is not an fp16 number, so Q4_1 is not exact: 0.1 rounded to fp16.
  const float s = q2n::detail::half_to_float(q2n::detail::float_to_half(0.1f));
  const auto b = block_bytes(one_block(4, s, 3, codes), &type);
  CHECK(type == GgmlType::Q5_0);
  REQUIRE(b.size() == 22);
  std::uint32_t qh = 0;
  for (int t = 0; t < 32; ++t) qh |= static_cast<std::uint32_t>(((codes[static_cast<std::size_t>(t)] - 3 + 16) >> 4) & 1) << t;
  CHECK(b[2] == (qh & 0xFF));
  CHECK(b[5] == (qh >> 24));
  for (int k = 0; k < 16; ++k) {
    const int lo = (codes[static_cast<std::size_t>(k)] - 3 + 16) & 15;
    const int hi = (codes[static_cast<std::size_t>(k + 16)] - 3 + 16) & 15;
    CHECK(b[static_cast<std::size_t>(6 + k)] == (lo | (hi << 4)));
  }
}

TEST_CASE("gguf: Q4_1 when −s·z is an fp16 number, Q8_0 for wide codes") {
  std::vector<int> codes(32);
  for (int t = 0; t < 32; ++t) codes[static_cast<std::size_t>(t)] = (t * 5) % 16;
  GgmlType type;
  auto b = block_bytes(one_block(4, 0.25f, 3, codes), &type);  // −0.75 is an fp16 number
  CHECK(type == GgmlType::Q4_1);
  REQUIRE(b.size() == 20);
  CHECK(b[2] == 0x00);  // m = −0.75 = fp16 0xBA00
  CHECK(b[3] == 0xBA);
  CHECK(b[4] == (codes[0] | (codes[16] << 4)));  // n = q
  for (int t = 0; t < 32; ++t) codes[static_cast<std::size_t>(t)] = (t * 37) % 128;
  b = block_bytes(one_block(7, 0.25f, 100, codes), &type);
  CHECK(type == GgmlType::Q8_0);
  REQUIRE(b.size() == 34);
  for (int t = 0; t < 32; ++t)
    CHECK(static_cast<std::int8_t>(b[static_cast<std::size_t>(2 + t)]) == codes[static_cast<std::size_t>(t)] - 100);
}

TEST_CASE("gguf: carrier rules over widths and symmetry, exact round trips") {
  struct Case { int bits; bool sym; Eigen::Index group; };
  for (const Case c : {Case{2, true, 32}, Case{3, true, 64}, Case{4, true, -1}, Case{2, false, 64},
                       Case{3, false, 32}, Case{4, false, -1}, Case{5, true, 32}, Case{5, false, 32},
                       Case{6, true, 64}, Case{7, false, 32}, Case{8, true, 128}}) {
    CAPTURE(c.bits);
    CAPTURE(c.sym);
    const auto s = rtn_storage(40, 128, c.bits, c.sym, c.group, 7u + static_cast<std::uint32_t>(c.bits));
    const GgmlType t = q2n::io::gguf_carrier(s);
    if (c.sym) CHECK(t == (c.bits <= 4 ? GgmlType::Q4_0 : c.bits == 5 ? GgmlType::Q5_0 : GgmlType::Q8_0));
    else if (c.bits <= 4) CHECK((t == GgmlType::Q5_0 || t == GgmlType::Q4_1));
    else CHECK(t == GgmlType::Q8_0);
    GgufWriter w;
    w.add_quantized("w", s);
    const q2n_test::TempFile p_file("rules.gguf");
  const std::string p = p_file.str();
    w.write(p);
    GgufReader r(p);
    CHECK(r.info("w").ne == std::vector<std::uint64_t>{128, 40});
    CHECK(r.info("w").type == t);
    // Exact: every element the file holds is the storage's dequantized value.
    CHECK((r.dequantize("w").array() == q2n::dequantize(s).array()).all());
  }
}

TEST_CASE("gguf: what has no exact carrier is refused, saying why") {
  auto refusal = [](const q2n::QuantStorage<float>& s) {
    std::string msg;
    try {
      GgufWriter w;
      w.add_quantized("w", s);
    } catch (const std::invalid_argument& e) {
      msg = e.what();
    }
    return msg;
  };
  CHECK(refusal(rtn_storage(8, 128, 8, false, 32, 1)).find("asymmetric 8-bit") != std::string::npos);
  CHECK(refusal(rtn_storage(8, 128, 4, true, 16, 2)).find("a multiple of 32") != std::string::npos);
  CHECK(refusal(rtn_storage(8, 48, 4, true, -1, 3)).find("not a multiple of 32") != std::string::npos);
  {  // GPTQ with act-order: permuted groups
    const auto W = q2n_test::gaussian<float>(16, 128, 4);
    const auto X = q2n_test::structured_activations<float>(256, 128, 8, 5);
    q2n::GptqOptions o;
    o.grid.bits = 4;
    o.groupsize = 32;
    o.act_order = true;
    auto res = q2n::gptq(W, Eigen::MatrixXf(X.transpose() * X), o);
    q2n::round_values(res.storage);
    CHECK(refusal(res.storage).find("act-order") != std::string::npos);
    o.static_groups = true;  // groups on natural column blocks: exact again
    res = q2n::gptq(W, Eigen::MatrixXf(X.transpose() * X), o);
    q2n::round_values(res.storage);
    CHECK(refusal(res.storage).empty());
  }
  {  // scales that are not fp16 numbers
    q2n::RtnOptions o;
    o.groupsize = 32;
    const auto res = q2n::rtn(q2n_test::gaussian<float>(8, 64, 6), o);
    CHECK(refusal(res.storage).find("q2n::round_values") != std::string::npos);
  }
  {  // OWQ: full-precision columns
    const auto W = q2n_test::gaussian<float>(16, 64, 7);
    const auto X = q2n_test::structured_activations<float>(128, 64, 8, 8);
    q2n::OwqOptions o;
    o.outlier_columns = 2;
    const auto res = q2n::owq(W, Eigen::MatrixXf(X.transpose() * X), o);
    CHECK(refusal(res.storage).find("full-precision columns") != std::string::npos);
  }
}

TEST_CASE("gguf: row order moves whole rows of quantized and dense tensors") {
  const auto s = rtn_storage(16, 64, 4, true, 32, 9);
  const auto order = q2n::io::rope_row_order(2, 8);
  GgufWriter w;
  w.add_quantized("q", s, std::nullopt, order);
  const Eigen::MatrixXf Q = q2n::dequantize(s);
  w.add_dense("d", Q, GgmlType::F32, order);
  const q2n_test::TempFile p_file("order.gguf");
  const std::string p = p_file.str();
  w.write(p);
  GgufReader r(p);
  const auto fq = r.dequantize("q"), fd = r.dequantize("d");
  for (Eigen::Index i = 0; i < 16; ++i) {
    CHECK((fq.row(i).array() == Q.row(order[static_cast<std::size_t>(i)]).array()).all());
    CHECK((fd.row(i).array() == Q.row(order[static_cast<std::size_t>(i)]).array()).all());
  }
  // Within a head of 8: file rows 0..7 ← checkpoint rows 0, 4, 1, 5, 2, 6, 3, 7.
  CHECK(order == std::vector<Eigen::Index>{0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15});
  CHECK_THROWS_WITH_AS(w.add_dense("bad", Q, GgmlType::F32, {0, 1}),
                       doctest::Contains("row_order is not a permutation"), std::invalid_argument);
}

TEST_CASE("gguf: metadata of every type, dense tensors and the file layout") {
  GgufWriter w;
  w.set_u32("a.u32", 4000000000u);
  w.set_i32("a.i32", -7);
  w.set_f32("a.f32", 1.5f);
  w.set_bool("a.bool", true);
  w.set_string("a.str", "ĠĊ text");
  w.set_strings("a.strs", {"x", "", "yz"});
  w.set_strings("a.empty", {});
  w.set_i32s("a.i32s", {1, -2, 3});
  const Eigen::MatrixXf M = q2n_test::gaussian<float>(3, 5, 10);
  w.add_dense("m32", M);
  w.add_dense("m16", M, GgmlType::F16);
  w.add_dense("mbf", M, GgmlType::BF16);
  w.add_dense("v", Eigen::VectorXf::LinSpaced(7, 0, 6));
  const q2n_test::TempFile p_file("meta.gguf");
  const std::string p = p_file.str();
  w.write(p);
  GgufReader r(p);
  CHECK(r.version() == 3);
  CHECK(r.value("general.alignment").u == 32);
  CHECK(r.value("a.u32").u == 4000000000u);
  CHECK(r.value("a.i32").i == -7);
  CHECK(r.value("a.f32").f == 1.5);
  CHECK(r.value("a.bool").u == 1);
  CHECK(r.value("a.str").s == "ĠĊ text");
  REQUIRE(r.value("a.strs").array.size() == 3);
  CHECK(r.value("a.strs").array[2].s == "yz");
  CHECK(r.value("a.empty").array.empty());
  CHECK(r.value("a.empty").element_type == q2n::io::GgufType::string);
  CHECK(r.value("a.i32s").array[1].i == -2);
  CHECK((r.dequantize("m32").array() == M.array()).all());
  const auto m16 = r.dequantize("m16"), mbf = r.dequantize("mbf");
  for (Eigen::Index i = 0; i < M.rows(); ++i)
    for (Eigen::Index j = 0; j < M.cols(); ++j) {
      CHECK(m16(i, j) == q2n::detail::half_to_float(q2n::detail::float_to_half(M(i, j))));
      CHECK(mbf(i, j) == q2n::detail::bf16_to_float(q2n::detail::float_to_bf16(M(i, j))));
    }
  CHECK(r.info("v").ne == std::vector<std::uint64_t>{7});
  CHECK(r.info("m16").ne == std::vector<std::uint64_t>{5, 3});
  for (const auto& t : r.tensors()) CHECK((r.data_offset() + t.offset) % 32 == 0);
  // The first bytes by hand: magic, version 3, 4 tensors, 9 key/values.
  std::ifstream in(p, std::ios::binary);
  unsigned char head[24];
  in.read(reinterpret_cast<char*>(head), 24);
  CHECK(std::string(reinterpret_cast<char*>(head), 4) == "GGUF");
  CHECK(head[4] == 3);
  CHECK(head[8] == 4);
  CHECK(head[16] == 9);
}

TEST_CASE("gguf: the reader names the file in its FormatErrors") {
  GgufWriter w;
  w.add_dense("m", q2n_test::gaussian<float>(4, 32, 11));
  const auto bytes = w.to_bytes();
  auto write = [](const std::string& p, const std::vector<char>& b) {
    std::ofstream(p, std::ios::binary).write(b.data(), static_cast<std::streamsize>(b.size()));
  };
  const q2n_test::TempFile p_file("broken.gguf");
  const std::string p = p_file.str();
  write(p, std::vector<char>(bytes.begin(), bytes.end() - 8));
  CHECK_THROWS_WITH_AS(GgufReader{p}, doctest::Contains("broken.gguf': tensor 'm' extends past the end"),
                       q2n::io::FormatError);
  auto bad = bytes;
  bad[0] = 'X';
  write(p, bad);
  CHECK_THROWS_WITH_AS(GgufReader{p}, doctest::Contains("GGUF magic"), q2n::io::FormatError);
  bad = bytes;
  bad[4] = 9;
  write(p, bad);
  CHECK_THROWS_WITH_AS(GgufReader{p}, doctest::Contains("version 9"), q2n::io::FormatError);
  write(p, std::vector<char>(bytes.begin(), bytes.begin() + 40));
  CHECK_THROWS_AS(GgufReader{p}, q2n::io::FormatError);
}

TEST_CASE("gguf: Llama conventions: byte alphabet, names, metadata") {
  CHECK(q2n::io::byte_token_text('A') == "A");
  CHECK(q2n::io::byte_token_text(' ') == "\xC4\xA0");    // U+0120 'Ġ'
  CHECK(q2n::io::byte_token_text('\n') == "\xC4\x8A");   // U+010A 'Ċ'
  CHECK(q2n::io::byte_token_text(0xAD) == "\xC5\x83");   // U+0143, the last of the 68
  CHECK(q2n::io::byte_token_text(0xE9) == "\xC3\xA9");   // printable: itself, U+00E9
  CHECK(q2n::io::llama_gguf_tensor_name("model.layers.12.self_attn.o_proj.weight") == "blk.12.attn_output.weight");
  CHECK(q2n::io::llama_gguf_tensor_name("model.layers.0.post_attention_layernorm.weight") == "blk.0.ffn_norm.weight");
  CHECK(q2n::io::llama_gguf_tensor_name("lm_head.weight") == "output.weight");
  CHECK(q2n::io::llama_gguf_tensor_name("model.layers.x.mlp.up_proj.weight").empty());
  GgufWriter w;
  q2n::io::LlamaGgufParams p;
  p.context_length = 256;
  p.embedding_length = 256;
  p.block_count = 4;
  p.feed_forward_length = 768;
  p.head_count = 8;
  p.head_count_kv = 4;
  p.vocab_size = 256;
  q2n::io::add_llama_metadata(w, p);
  q2n::io::add_byte_tokenizer(w, 10, 10);
  const q2n_test::TempFile path_file("llama.gguf");
  const std::string path = path_file.str();
  w.write(path);
  GgufReader r(path);
  CHECK(r.value("general.architecture").s == "llama");
  CHECK(r.value("llama.rope.dimension_count").u == 32);
  CHECK(r.value("tokenizer.ggml.tokens").array.size() == 256);
  CHECK(r.value("tokenizer.ggml.merges").array.empty());
  p.head_count_kv = 3;
  CHECK_THROWS_WITH_AS(q2n::io::add_llama_metadata(w, p), doctest::Contains("KV heads must divide"),
                       std::invalid_argument);
}

TEST_CASE("round_values: scales to fp16 after the fold; codes untouched") {
  auto s = rtn_storage(8, 64, 3, false, 32, 12);
  q2n::fold(s, Eigen::VectorXf::Constant(8, 1.0f + 1.0f / 3.0f));  // makes scales non-fp16
  const auto codes = s.uniform->codes;
  const Eigen::Index changed = q2n::round_values(s);
  CHECK(changed > 0);
  CHECK(s.uniform->codes == codes);
  for (Eigen::Index i = 0; i < s.uniform->scales.size(); ++i) {
    const float v = s.uniform->scales.data()[i];
    CHECK(q2n::detail::half_to_float(q2n::detail::float_to_half(v)) == v);
  }
  CHECK(q2n::round_values(s) == 0);  // idempotent
  s.uniform->scales(0, 0) = 1e6f;
  CHECK_THROWS_AS(q2n::round_values(s), q2n::NumericalError);
}
