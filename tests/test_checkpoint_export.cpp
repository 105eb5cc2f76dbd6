// GPTQ and compressed-tensors modules (q2n/io/gptq.hpp, q2n/io/compressed_tensors.hpp), read
// back by an independent decoder (checkpoint_decode.hpp: bit by bit, from the format
// descriptions): codes, zero points, scales and the dequantized weights must be exactly the
// storage's, for every width, both symmetries, act-order groups and one group per row.
#include <doctest/doctest.h>

#include <q2n/io/compressed_tensors.hpp>
#include <q2n/io/gptq.hpp>
#include <q2n/quantizers.hpp>

#include "checkpoint_decode.hpp"
#include "test_util.hpp"

#include <filesystem>
#include <string>

namespace {

struct CkptCase {
  int bits;
  bool sym;
  Eigen::Index group;
  bool act_order;
};

q2n::QuantStorage<float> gptq_storage(const CkptCase& c, Eigen::Index rows, Eigen::Index cols, std::uint32_t seed) {
  const auto W = q2n_test::gaussian<float>(rows, cols, seed);
  const auto X = q2n_test::structured_activations<float>(2 * cols, cols, 8, seed + 1);
  q2n::GptqOptions o;
  o.grid.bits = c.bits;
  o.grid.sym = c.sym;
  o.groupsize = c.group;
  o.act_order = c.act_order;
  auto res = q2n::gptq(W, Eigen::MatrixXf(X.transpose() * X), o);
  // Q2N's fold makes the scales arbitrary floats; the export rounds them afterwards.
  q2n::fold(res.storage, Eigen::VectorXf::LinSpaced(rows, 0.97f, 1.03f));
  q2n::round_values(res.storage);
  return res.storage;
}

void check_decoded(const checkpoint_decode::Module& m, const q2n::QuantStorage<float>& s) {
  const auto& u = *s.uniform;
  CHECK(m.codes == u.codes.cast<int>());
  CHECK(m.zeros == u.zeros.cast<int>());
  CHECK((m.scales.array() == u.scales.array()).all());
  CHECK(m.g_idx == u.g_idx);
  // The decoder computes scale · (code − zero) in float, as q2n's dequantize does.
  CHECK((m.weights.array() == q2n::dequantize(s).array()).all());
}

}  // namespace

TEST_CASE("gptq export: the independent decoder recovers every module exactly") {
  for (const CkptCase c : {CkptCase{2, true, 32, false}, CkptCase{3, true, 64, false}, CkptCase{4, true, -1, false},
                       CkptCase{8, true, 32, false}, CkptCase{2, false, 64, true}, CkptCase{3, false, -1, false},
                       CkptCase{4, false, 32, true}, CkptCase{8, false, 64, false}}) {
    CAPTURE(c.bits);
    CAPTURE(c.sym);
    CAPTURE(c.group);
    const auto s = gptq_storage(c, 64, 128, 20u + static_cast<std::uint32_t>(c.bits));
    const auto L = q2n::io::gptq_layout(s);
    CHECK(L.bits == c.bits);
    CHECK(L.group_size == c.group);
    CHECK(L.desc_act == c.act_order);
    CHECK(L.sym == c.sym);
    CHECK(L.format == (c.sym ? q2n::io::GptqFormat::v1 : q2n::io::GptqFormat::v2));
    q2n::io::SafetensorsWriter w;
    q2n::io::add_gptq_linear(w, "m", s);
    const q2n_test::TempFile p_file("gptq.safetensors");
  const std::string p = p_file.str();
    w.write(p);
    q2n::io::SafetensorsReader r(p);
    CHECK(r.info("m.qweight").shape == std::vector<std::int64_t>{128 * c.bits / 32, 64});
    CHECK(r.info("m.qzeros").shape ==
          std::vector<std::int64_t>{c.group > 0 ? 128 / c.group : 1, 64 * c.bits / 32});
    CHECK(r.info("m.scales").dtype == q2n::io::DType::F16);
    CHECK(r.info("m.g_idx").shape == std::vector<std::int64_t>{128});
    check_decoded(checkpoint_decode::decode_gptq(r, "m", c.bits, L.format == q2n::io::GptqFormat::v1), s);
    const auto qc = q2n::io::gptq_quantization_config(L);
    CHECK(qc["quant_method"] == "gptq");
    CHECK(qc["bits"] == c.bits);
    CHECK(qc["group_size"] == c.group);
    CHECK(qc["desc_act"] == c.act_order);
    CHECK(qc["checkpoint_format"] == (c.sym ? "gptq" : "gptq_v2"));
    CHECK(qc["format"] == qc["checkpoint_format"]);
  }
}

TEST_CASE("gptq export: v1 needs zero points of at least 1; other layouts are refused") {
  // A layer whose rows are all non-negative: its asymmetric zero points are 0.
  q2n::RtnOptions o;
  o.grid.bits = 4;
  o.groupsize = 32;
  auto res = q2n::rtn(q2n_test::gaussian<float>(32, 64, 30).cwiseAbs().eval(), o);
  q2n::round_values(res.storage);
  REQUIRE(res.storage.uniform->zeros.minCoeff() == 0);
  q2n::io::SafetensorsWriter w;
  CHECK_THROWS_WITH_AS(q2n::io::add_gptq_linear(w, "m", res.storage, q2n::io::GptqFormat::v1),
                       doctest::Contains("write GptqFormat::v2"), std::invalid_argument);
  CHECK_NOTHROW(q2n::io::add_gptq_linear(w, "m", res.storage));  // v2 by default
  o.grid.bits = 5;
  res = q2n::rtn(q2n_test::gaussian<float>(32, 64, 31), o);
  q2n::round_values(res.storage);
  CHECK_THROWS_WITH_AS(q2n::io::gptq_layout(res.storage), doctest::Contains("2, 3, 4 or 8 bits"),
                       std::invalid_argument);
  o.grid.bits = 4;
  res = q2n::rtn(q2n_test::gaussian<float>(32, 64, 32), o);
  CHECK_THROWS_WITH_AS(q2n::io::gptq_layout(res.storage), doctest::Contains("q2n::round_values"),
                       std::invalid_argument);
  const auto W = q2n_test::gaussian<float>(32, 64, 33);
  const auto X = q2n_test::structured_activations<float>(128, 64, 8, 34);
  q2n::PbllmOptions po;
  const auto pb = q2n::pbllm(W, Eigen::MatrixXf(X.transpose() * X), po);
  CHECK_THROWS_WITH_AS(q2n::io::gptq_layout(pb.storage), doctest::Contains("write this layer densely"),
                       std::invalid_argument);
}

TEST_CASE("compressed-tensors export: the independent decoder recovers every module exactly") {
  for (const CkptCase c : {CkptCase{2, true, 32, false}, CkptCase{3, false, 64, false}, CkptCase{4, true, -1, false},
                       CkptCase{4, false, 32, true}, CkptCase{5, false, 32, false}, CkptCase{6, true, 64, false},
                       CkptCase{7, false, -1, false}, CkptCase{8, false, 32, false}}) {
    CAPTURE(c.bits);
    CAPTURE(c.sym);
    // 40 rows: not a multiple of the codes per word for 3, 5, 6, 7 bits (padded words).
    const auto s = gptq_storage(c, 40, 128, 40u + static_cast<std::uint32_t>(c.bits));
    const auto L = q2n::io::compressed_tensors_layout(s);
    CHECK(L.symmetric == c.sym);
    CHECK(L.actorder_group == c.act_order);
    q2n::io::SafetensorsWriter w;
    q2n::io::add_compressed_tensors_linear(w, "m", s);
    const q2n_test::TempFile p_file("ct.safetensors");
  const std::string p = p_file.str();
    w.write(p);
    q2n::io::SafetensorsReader r(p);
    const std::int64_t pf = 32 / c.bits;
    CHECK(r.info("m.weight_packed").shape == std::vector<std::int64_t>{40, (128 + pf - 1) / pf});
    CHECK(r.contains("m.weight_zero_point") == !c.sym);
    if (!c.sym)
      CHECK(r.info("m.weight_zero_point").shape ==
            std::vector<std::int64_t>{(40 + pf - 1) / pf, c.group > 0 ? 128 / c.group : 1});
    CHECK(r.contains("m.weight_g_idx") == c.act_order);
    CHECK(r.info("m.weight_shape").dtype == q2n::io::DType::I64);
    check_decoded(checkpoint_decode::decode_compressed_tensors(r, "m", c.bits), s);
    const auto qc = q2n::io::compressed_tensors_quantization_config(L, {"lm_head"});
    const auto& wq = qc["config_groups"]["group_0"]["weights"];
    CHECK(qc["format"] == "pack-quantized");
    CHECK(wq["num_bits"] == c.bits);
    CHECK(wq["symmetric"] == c.sym);
    CHECK(wq["strategy"] == (c.group > 0 ? "group" : "channel"));
    CHECK(wq["actorder"] == (c.act_order ? nlohmann::ordered_json("group") : nlohmann::ordered_json(nullptr)));
  }
}

TEST_CASE("compressed-tensors export: an asymmetric checkpoint writes every module's zero points") {
  const auto s = gptq_storage(CkptCase{4, true, 32, false}, 32, 64, 50);
  q2n::io::SafetensorsWriter w;
  q2n::io::add_compressed_tensors_linear(w, "m", s, /*symmetric=*/false);
  const q2n_test::TempFile p_file("ct_asym.safetensors");
  const std::string p = p_file.str();
  w.write(p);
  q2n::io::SafetensorsReader r(p);
  REQUIRE(r.contains("m.weight_zero_point"));
  check_decoded(checkpoint_decode::decode_compressed_tensors(r, "m", 4), s);
  const auto a = gptq_storage(CkptCase{4, false, 32, false}, 32, 64, 51);
  CHECK_THROWS_WITH_AS(q2n::io::add_compressed_tensors_linear(w, "n", a, true),
                       doctest::Contains("pass symmetric = false"), std::invalid_argument);
}
