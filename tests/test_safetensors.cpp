// safetensors reading and writing (q2n/io/safetensors.hpp): round trips for every dtype and
// storage order, the byte layout checked by hand, a conformance file, and one corrupted file per
// kind of malformation (each must raise FormatError naming the file, the tensor and the problem).
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <q2n/io/safetensors.hpp>
#include <random>
#include <string>
#include <vector>

#include "test_util.hpp"

namespace {

namespace fs = std::filesystem;
using q2n::io::DType;
using q2n::io::FormatError;
using q2n::io::SafetensorsReader;
using q2n::io::SafetensorsWriter;
using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

const DType kAllDTypes[] = {DType::BOOL, DType::U8,  DType::I8,  DType::I16, DType::U16,
                            DType::I32,  DType::U32, DType::I64, DType::U64, DType::F16,
                            DType::BF16, DType::F32, DType::F64};

using q2n_test::TempFile;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

std::string le64(std::uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return s;
}

// A file built by hand: little-endian length of `header`, header, data.
std::string file_bytes(const std::string& header, const std::string& data) {
  return le64(header.size()) + header + data;
}

using q2n_test::has;
using q2n_test::thrown;

// Values of `dtype` that are exactly representable in it, extremes included (as doubles; the
// 64-bit integer extremes are tested separately with add_flat).
std::vector<double> representable_values(DType dtype) {
  switch (dtype) {
    case DType::BOOL:
      return {0, 1, 1, 0, 1, 0};
    case DType::U8:
      return {0, 1, 127, 128, 255, 42};
    case DType::I8:
      return {-128, -1, 0, 1, 127, 5};
    case DType::I16:
      return {-32768, -1, 0, 1, 32767, 300};
    case DType::U16:
      return {0, 1, 65535, 256, 1000, 7};
    case DType::I32:
      return {-2147483648.0, -1, 0, 1, 2147483647.0, 70000};
    case DType::U32:
      return {0, 1, 4294967295.0, 65536, 3, 9};
    case DType::I64:
      return {-0x1p62, -1, 0, 1, 0x1p53, 123456789012.0};
    case DType::U64:
      return {0, 1, 0x1p63, 0x1p53, 5, 123456789012.0};
    case DType::F16:
      return {0, -0.5, 65504, 0x1p-14, 0x1p-24, -2.5};
    case DType::BF16:
      return {1, -2, 0x1.fep127, 0x1p-133, 3.140625, -0.0};
    case DType::F32:
      return {1.5, -0x1.fffffep127, 0x1p-149, 0.1f, -3.0, 1e-30f};
    case DType::F64:
      return {0.1, 1e300, -1e-310, -0.0, 1.0 / 3.0, 0x1p-1074};
  }
  return {};
}

}  // namespace

TEST_CASE("dtype names, sizes and lookup") {
  const std::map<DType, std::pair<const char*, std::size_t>> expected = {
      {DType::BOOL, {"BOOL", 1}}, {DType::U8, {"U8", 1}},     {DType::I8, {"I8", 1}},
      {DType::I16, {"I16", 2}},   {DType::U16, {"U16", 2}},   {DType::I32, {"I32", 4}},
      {DType::U32, {"U32", 4}},   {DType::I64, {"I64", 8}},   {DType::U64, {"U64", 8}},
      {DType::F16, {"F16", 2}},   {DType::BF16, {"BF16", 2}}, {DType::F32, {"F32", 4}},
      {DType::F64, {"F64", 8}}};
  for (DType t : kAllDTypes) {
    CAPTURE(static_cast<int>(t));
    CHECK(std::string(q2n::io::dtype_name(t)) == expected.at(t).first);
    CHECK(q2n::io::dtype_size(t) == expected.at(t).second);
    CHECK(q2n::io::dtype_from_name(q2n::io::dtype_name(t)) == t);
  }
  CHECK_THROWS_AS(q2n::io::dtype_from_name("F8_E4M3"), FormatError);
  CHECK_THROWS_AS(q2n::io::dtype_from_name("f32"), FormatError);
  CHECK(has(thrown<FormatError>([] { q2n::io::dtype_from_name("Q4"); }), "\"Q4\""));
  q2n::io::TensorInfo info;
  info.shape = {3, 0, 5};
  CHECK(info.numel() == 0);
  info.shape = {};
  CHECK(info.numel() == 1);
  info.shape = {2, 3, 4};
  CHECK(info.numel() == 24);
  info.shape = {std::int64_t{1} << 40, std::int64_t{1} << 40};
  CHECK_THROWS_AS(info.numel(), std::invalid_argument);
}

TEST_CASE("round trip of every dtype, extremes included") {
  TempFile file("every_dtype.safetensors");
  SafetensorsWriter w;
  for (DType t : kAllDTypes) {
    const std::vector<double> v = representable_values(t);
    const RowMat m = Eigen::Map<const RowMat>(v.data(), 2, 3);
    w.add(std::string("t_") + q2n::io::dtype_name(t), m, t);
  }
  const std::int64_t i64min = std::numeric_limits<std::int64_t>::min();
  const std::int64_t i64max = std::numeric_limits<std::int64_t>::max();
  const std::uint64_t u64max = std::numeric_limits<std::uint64_t>::max();
  w.add_flat<std::int64_t>("i64_extremes", {i64min, -1, i64max}, DType::I64, {3});
  w.add_flat<std::uint64_t>("u64_extremes", {0, u64max}, DType::U64, {2});
  w.write(file.str());
  CHECK_FALSE(fs::exists(file.str() + ".tmp"));

  SafetensorsReader r(file.str());
  CHECK(r.path() == file.str());
  for (DType t : kAllDTypes) {
    const std::string name = std::string("t_") + q2n::io::dtype_name(t);
    CAPTURE(name);
    REQUIRE(r.contains(name));
    const auto& info = r.info(name);
    CHECK(info.dtype == t);
    CHECK(info.shape == std::vector<std::int64_t>{2, 3});
    CHECK(info.end - info.begin == 6 * q2n::io::dtype_size(t));
    const std::vector<double> expected = representable_values(t);
    const std::vector<double> got = r.read_flat<double>(name);
    REQUIRE(got.size() == expected.size());
    for (std::size_t i = 0; i < got.size(); ++i) {
      CHECK(got[i] == expected[i]);  // every value is exact in its dtype
      CHECK(std::signbit(got[i]) == std::signbit(expected[i]));
    }
    const RowMat back = r.read_matrix<double>(name);
    CHECK(back.rows() == 2);
    CHECK(back.cols() == 3);
    CHECK(back == Eigen::Map<const RowMat>(expected.data(), 2, 3));
  }
  CHECK(r.read_flat<std::int64_t>("i64_extremes") == std::vector<std::int64_t>{i64min, -1, i64max});
  CHECK(r.read_flat<std::uint64_t>("u64_extremes") == std::vector<std::uint64_t>{0, u64max});
  CHECK(r.read_flat<std::int32_t>("t_I32") ==
        std::vector<std::int32_t>{std::numeric_limits<std::int32_t>::min(), -1, 0, 1,
                                  std::numeric_limits<std::int32_t>::max(), 70000});
  CHECK(r.read_flat<std::uint8_t>("t_BOOL") == std::vector<std::uint8_t>{0, 1, 1, 0, 1, 0});
  CHECK(r.read_flat<bool>("t_BOOL") == std::vector<bool>{false, true, true, false, true, false});
  CHECK(r.read_flat<float>("t_F16") ==
        std::vector<float>{0, -0.5f, 65504, 0x1p-14f, 0x1p-24f, -2.5f});
  // names() follows the data offsets, i.e. the order of add() here.
  CHECK(r.names().front() == "t_BOOL");
  CHECK(r.names().back() == "u64_extremes");
}

TEST_CASE("the byte layout matches the format, checked by hand") {
  SafetensorsWriter w;
  Eigen::Matrix<std::int32_t, 1, 2> ints;
  ints << 0x01020304, -2;
  w.add("b_ints", ints, DType::I32);
  Eigen::Matrix<float, 2, 1> ones(1.0f, -2.0f);
  w.add("a_f32", ones, DType::F32);
  w.add("c_f16", ones, DType::F16);
  w.add("d_bf16", ones, DType::BF16);
  w.add_flat<int>("e_i16", {-2}, DType::I16, {});  // a scalar: shape []
  w.set_metadata("bits", "4");
  const std::vector<char> bytes = w.to_bytes();

  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  CHECK((8 + n) % 8 == 0);  // the data section starts 8-byte aligned
  const auto header = nlohmann::json::parse(std::string(bytes.data() + 8, n));
  CHECK(header["__metadata__"] == nlohmann::json({{"format", "pt"}, {"bits", "4"}}));
  CHECK(header["b_ints"]["dtype"] == "I32");
  CHECK(header["b_ints"]["shape"] == nlohmann::json({1, 2}));
  CHECK(header["b_ints"]["data_offsets"] == nlohmann::json({0, 8}));
  CHECK(header["a_f32"]["shape"] == nlohmann::json({2, 1}));
  CHECK(header["a_f32"]["data_offsets"] == nlohmann::json({8, 16}));
  CHECK(header["c_f16"]["data_offsets"] == nlohmann::json({16, 20}));
  CHECK(header["d_bf16"]["data_offsets"] == nlohmann::json({20, 24}));
  CHECK(header["e_i16"]["shape"] == nlohmann::json::array());
  CHECK(header["e_i16"]["data_offsets"] == nlohmann::json({24, 26}));
  const std::vector<unsigned char> data(bytes.begin() + 8 + static_cast<std::ptrdiff_t>(n),
                                        bytes.end());
  const std::vector<unsigned char> expected = {
      0x04, 0x03, 0x02, 0x01, 0xFE, 0xFF, 0xFF, 0xFF,  // I32 0x01020304, -2 (little-endian)
      0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x00, 0xC0,  // F32 1.0, -2.0
      0x00, 0x3C, 0x00, 0xC0,                          // F16 1.0, -2.0
      0x80, 0x3F, 0x00, 0xC0,                          // BF16 1.0, -2.0
      0xFE, 0xFF};                                     // I16 -2
  CHECK(data == expected);

  TempFile file("layout.safetensors");
  w.write(file.str());
  SafetensorsReader r(file.str());
  CHECK(r.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"bits", "4"}});
  CHECK(r.names() == std::vector<std::string>{"b_ints", "a_f32", "c_f16", "d_bf16", "e_i16"});
  CHECK(r.read_matrix<int>("e_i16").size() == 1);  // a scalar reads as 1 x 1
  CHECK(r.read_matrix<int>("e_i16")(0, 0) == -2);
}

TEST_CASE("row-major, column-major, strided and expression inputs serialize in C order") {
  Eigen::MatrixXd cm(3, 4);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 4; ++j) cm(i, j) = 10 * i + j;
  const RowMat rm = cm;
  Eigen::MatrixXd big = Eigen::MatrixXd::Zero(5, 6);
  big.block(1, 2, 3, 4) = cm;
  const std::vector<double> c_order = {0, 1, 2, 3, 10, 11, 12, 13, 20, 21, 22, 23};

  auto bytes_of = [](const auto& m) {
    SafetensorsWriter w;
    w.add("m", m, DType::F64);
    return w.to_bytes();
  };
  const std::vector<char> reference = bytes_of(cm);
  CHECK(bytes_of(rm) == reference);
  CHECK(bytes_of(big.block(1, 2, 3, 4)) == reference);  // outer stride 5
  CHECK(bytes_of(Eigen::Map<const Eigen::MatrixXd>(cm.data(), 3, 4)) == reference);
  CHECK(bytes_of(cm * 1.0) == reference);    // an expression
  CHECK(bytes_of(cm.array()) == reference);  // an array
  CHECK(bytes_of(rm.transpose().transpose()) == reference);

  TempFile file("orders.safetensors");
  SafetensorsWriter w;
  w.add("cm", cm);  // default dtype F32
  w.add("t", cm.transpose());
  w.add("prod", cm * Eigen::MatrixXd::Identity(4, 4), DType::F64);
  w.write(file.str());
  SafetensorsReader r(file.str());
  CHECK(r.info("cm").dtype == DType::F32);
  CHECK(r.read_flat<double>("cm") == c_order);
  CHECK(r.read_flat<double>("prod") == c_order);
  CHECK(r.read_matrix<double>("cm") == rm);
  CHECK(r.info("t").shape == std::vector<std::int64_t>{4, 3});
  CHECK(r.read_matrix<double>("t") == cm.transpose());
  const auto as_float = r.read_matrix<float>("cm");
  CHECK(as_float == rm.cast<float>());
}

TEST_CASE("N-D shapes, vectors, scalars and empty tensors") {
  // X [samples = 2, seqlen = 3, cols = 4] given as the stacked (2*3) x 4 token matrix.
  Eigen::MatrixXf x(6, 4);
  for (int i = 0; i < 6; ++i)
    for (int j = 0; j < 4; ++j) x(i, j) = static_cast<float>(100 * (i / 3) + 10 * (i % 3) + j);
  SafetensorsWriter w;
  w.add("X", x, DType::F32, {2, 3, 4});
  w.add("v", Eigen::VectorXd::LinSpaced(5, 0, 4), DType::F64, {5});
  w.add("row", Eigen::RowVectorXf::Ones(3), DType::F16);
  w.add("empty", Eigen::MatrixXf(0, 3), DType::F32);
  w.add_flat<double>("scalar", {2.5}, DType::BF16, {});
  w.add_flat<std::int32_t>("cube", {0, 1, 2, 3, 4, 5, 6, 7}, DType::I32, {2, 2, 2});
  CHECK_THROWS_AS(w.add("bad", x, DType::F32, {5, 5}), std::invalid_argument);
  CHECK_THROWS_AS(w.add("bad", x, DType::F32, {-6, -4}), std::invalid_argument);
  CHECK_THROWS_AS(w.add_flat<float>("bad", {1, 2, 3}, DType::F32, {}), std::invalid_argument);
  CHECK_THROWS_AS(w.add_flat<float>("bad", {1, 2}, DType::F32,
                                    {std::int64_t{1} << 62, std::int64_t{1} << 62, 0, 4}),
                  std::invalid_argument);
  TempFile file("shapes.safetensors");
  w.write(file.str());

  SafetensorsReader r(file.str());
  CHECK(r.info("X").shape == std::vector<std::int64_t>{2, 3, 4});
  CHECK(r.info("X").numel() == 24);
  const auto xm = r.read_matrix<float>("X");  // (samples * seqlen) x cols
  CHECK(xm.rows() == 6);
  CHECK(xm.cols() == 4);
  CHECK(xm == x);
  const std::vector<float> flat = r.read_flat<float>("X");
  CHECK(flat[0 * 12 + 1 * 4 + 3] == 13);   // X[0, 1, 3] at (s * 3 + p) * 4 + c
  CHECK(flat[1 * 12 + 1 * 4 + 2] == 112);  // X[1, 1, 2]
  const auto v = r.read_matrix<double>("v");
  CHECK(v.rows() == 5);
  CHECK(v.cols() == 1);
  CHECK(v(4, 0) == 4);
  CHECK(r.info("row").shape == std::vector<std::int64_t>{1, 3});
  CHECK(r.read_flat<double>("row") == std::vector<double>{1, 1, 1});
  CHECK(r.info("empty").shape == std::vector<std::int64_t>{0, 3});
  CHECK(r.read_flat<float>("empty").empty());
  CHECK(r.read_matrix<float>("empty").rows() == 0);
  CHECK(r.read_matrix<float>("empty").cols() == 3);
  CHECK(r.info("scalar").shape.empty());
  CHECK(r.read_flat<double>("scalar") == std::vector<double>{2.5});
  const auto cube = r.read_matrix<std::int64_t>("cube");  // 4 x 2
  CHECK(cube.rows() == 4);
  CHECK(cube(3, 1) == 7);
  CHECK(cube(1, 0) == 2);
}

TEST_CASE("read_rows reads a block of rows as read_matrix would, and only that block") {
  Eigen::MatrixXf x(7, 5);
  for (int i = 0; i < 7; ++i)
    for (int j = 0; j < 5; ++j) x(i, j) = static_cast<float>(8 * i + j) / 4.0f;  // exact in BF16
  SafetensorsWriter w;
  w.add("f32", x, DType::F32);        // read by one block copy
  w.add("bf16", x, DType::BF16);      // read with a conversion
  w.add("x3", x, DType::F32, {7, 5, 1});  // N-D: rows of read_matrix are 35 one-element rows
  w.add_flat<std::int64_t>("ids", {1, 2, std::int64_t{1} << 40, 4}, DType::I64, {2, 2});
  TempFile file("rows.safetensors");
  w.write(file.str());
  SafetensorsReader r(file.str());
  for (const char* name : {"f32", "bf16"}) {
    const auto all = r.read_matrix<float>(name);
    for (std::int64_t first = 0; first <= 7; ++first)
      for (std::int64_t count = 0; first + count <= 7; ++count)
        CHECK(r.read_rows<float>(name, first, count) == all.middleRows(first, count));
    CHECK(r.read_rows<double>(name, 6, 1) == x.row(6).cast<double>());
  }
  CHECK(r.read_rows<float>("x3", 10, 3) == r.read_matrix<float>("x3").middleRows(10, 3));
  CHECK_THROWS_AS(r.read_rows<float>("f32", 5, 3), std::invalid_argument);
  CHECK_THROWS_AS(r.read_rows<float>("f32", -1, 1), std::invalid_argument);
  CHECK_THROWS_AS(r.read_rows<float>("f32", 8, 0), std::invalid_argument);
  CHECK_THROWS_AS(r.read_rows<float>("missing", 0, 1), std::invalid_argument);
  // The row a value fails in is named by its index in the whole tensor.
  CHECK(r.read_rows<std::int32_t>("ids", 0, 1) == Eigen::RowVector2i(1, 2));
  try {
    (void)r.read_rows<std::int32_t>("ids", 1, 1);
    FAIL("a value beyond int32 was read into int32");
  } catch (const std::invalid_argument& e) {
    CHECK(std::string(e.what()).find("element 2 ") != std::string::npos);
  }
}

TEST_CASE("metadata: format pt by default, user entries, override") {
  TempFile file("meta.safetensors");
  SafetensorsWriter w;
  w.set_metadata("rows", "64");
  w.set_metadata("note", "ünïcode \"quoted\" text");
  w.add("x", Eigen::MatrixXf::Zero(1, 1));
  w.write(file.str());
  const std::map<std::string, std::string> expected = {
      {"format", "pt"}, {"rows", "64"}, {"note", "ünïcode \"quoted\" text"}};
  CHECK(SafetensorsReader(file.str()).metadata() == expected);
  w.set_metadata("format", "np");
  w.write(file.str());  // overwrites the earlier file
  CHECK(SafetensorsReader(file.str()).metadata().at("format") == "np");
  CHECK_THROWS_AS(w.set_metadata("bad", std::string("\xff\xfe")), std::invalid_argument);
}

TEST_CASE("conversions on read and write") {
  TempFile file("conv.safetensors");
  SafetensorsWriter w;
  w.add_flat<std::int64_t>("i64", {300, -5}, DType::I64, {2});
  w.add_flat<std::uint8_t>("u8", {200, 1}, DType::U8, {2});
  w.add_flat<double>("f64", {0.1, 1e300}, DType::F64, {2});
  w.add_flat<float>("f32", {1.5f, -2.0f}, DType::F32, {2});
  // Rounding on write: double -> F16 rounds once (1 + 2^-11 + 2^-40 is just above a tie), and
  // integers -> BF16 round correctly (2^40 + 2^32 + 1 is just above a tie).
  w.add_flat<double>("f16_from_double", {1.0 + 0x1p-11 + 0x1p-40}, DType::F16, {1});
  w.add_flat<std::int64_t>("bf16_from_int", {(std::int64_t{1} << 40) + (std::int64_t{1} << 32) + 1},
                           DType::BF16, {1});
  w.add_flat<std::int64_t>("bf16_tie", {257}, DType::BF16, {1});  // tie of 256 and 258: even
  w.add_flat<double>("f32_overflow", {1e300, -1e300}, DType::F32, {2});
  w.write(file.str());

  SafetensorsReader r(file.str());
  CHECK(r.read_flat<float>("i64") == std::vector<float>{300, -5});  // integer -> float is fine
  CHECK(r.read_flat<std::int16_t>("i64") == std::vector<std::int16_t>{300, -5});
  CHECK(has(thrown<std::invalid_argument>([&] { r.read_flat<std::uint8_t>("i64"); }),
            "element 0 = 300"));
  CHECK(has(thrown<std::invalid_argument>([&] { r.read_flat<std::uint32_t>("i64"); }),
            "element 1 = -5"));
  CHECK_THROWS_AS(r.read_flat<std::int8_t>("u8"), std::invalid_argument);  // 200 > 127
  CHECK(r.read_flat<int>("u8") == std::vector<int>{200, 1});
  const std::string msg = thrown<std::invalid_argument>([&] { r.read_flat<std::int32_t>("f32"); });
  CHECK(has(msg, "read_flat"));
  CHECK(has(msg, "'f32'"));
  CHECK(has(msg, file.str()));
  CHECK(has(msg, "F32"));
  CHECK_THROWS_AS(r.read_matrix<std::int64_t>("f64"), std::invalid_argument);
  CHECK(r.read_flat<float>("f64") == std::vector<float>{0.1f, INFINITY});  // rounds, overflows
  CHECK(r.read_flat<double>("f32") == std::vector<double>{1.5, -2.0});
  CHECK(r.read_flat<float>("f16_from_double") == std::vector<float>{1.0f + 0x1p-10f});
  CHECK(r.read_flat<double>("bf16_from_int") == std::vector<double>{0x1p40 + 0x1p33});
  CHECK(r.read_flat<double>("bf16_tie") == std::vector<double>{256});
  CHECK(r.read_flat<float>("f32_overflow") == std::vector<float>{INFINITY, -INFINITY});

  const std::string missing = thrown<std::invalid_argument>([&] { r.info("nope"); });
  CHECK(has(missing, "'nope'"));
  CHECK(has(missing, file.str()));
  CHECK_THROWS_AS(r.read_flat<float>("nope"), std::invalid_argument);
  CHECK_FALSE(r.contains("nope"));
}

TEST_CASE("the writer refuses values a dtype cannot hold and bad names") {
  SafetensorsWriter w;
  CHECK(has(thrown<std::invalid_argument>(
                [&] { w.add("a", Eigen::MatrixXd::Constant(1, 2, 1.5), DType::I32); }),
            "element 0 = 1.5"));
  CHECK_THROWS_AS(w.add_flat<double>("a", {NAN}, DType::I64, {1}), std::invalid_argument);
  CHECK_THROWS_AS(w.add_flat<double>("a", {INFINITY}, DType::U8, {1}), std::invalid_argument);
  CHECK_THROWS_AS(w.add_flat<int>("a", {256}, DType::U8, {1}), std::invalid_argument);
  CHECK_THROWS_AS(w.add_flat<int>("a", {-1}, DType::U32, {1}), std::invalid_argument);
  CHECK_THROWS_AS(w.add_flat<double>("a", {0x1p63}, DType::I64, {1}), std::invalid_argument);
  CHECK_THROWS_AS(w.add_flat<int>("a", {2}, DType::BOOL, {1}), std::invalid_argument);
  CHECK_THROWS_AS(w.add_flat<float>("a", {0.5f}, DType::BOOL, {1}), std::invalid_argument);
  w.add_flat<double>("ok", {-0x1p63}, DType::I64, {1});  // exactly the minimum
  Eigen::Matrix<bool, 1, 3> flags(true, false, true);
  w.add("flags", flags, DType::BOOL);
  CHECK(has(thrown<std::invalid_argument>([&] { w.add_flat<int>("ok", {1}, DType::I32, {1}); }),
            "already added"));
  CHECK_THROWS_AS(w.add_flat<int>("__metadata__", {1}, DType::I32, {1}), std::invalid_argument);
  CHECK_THROWS_AS(w.add_flat<int>("", {1}, DType::I32, {1}), std::invalid_argument);
  CHECK_THROWS_AS(w.add_flat<int>(std::string("\xc3\x28"), {1}, DType::I32, {1}),
                  std::invalid_argument);
  // Failed adds leave nothing behind.
  TempFile file("refuse.safetensors");
  w.write(file.str());
  SafetensorsReader r(file.str());
  CHECK(r.names() == std::vector<std::string>{"ok", "flags"});
  CHECK(r.read_flat<std::int64_t>("ok") ==
        std::vector<std::int64_t>{std::numeric_limits<std::int64_t>::min()});
  CHECK(r.read_flat<int>("flags") == std::vector<int>{1, 0, 1});

  // A directory that does not exist: write fails cleanly.
  const std::string bad =
      (fs::temp_directory_path() / "q2n_no_such_dir" / "x.safetensors").string();
  CHECK_THROWS_AS(w.write(bad), std::runtime_error);
  CHECK_FALSE(fs::exists(bad + ".tmp"));
}

TEST_CASE("conformance vector: tensors, shapes, dtypes and metadata of a reference file") {
  const std::string path = q2n_test::data_path("vectors/w4_perchannel_asym.safetensors");
  SafetensorsReader r(path);
  const std::vector<std::string> names = {
      "W", "X", "H", "Abar", "gptq.Q", "q2n.eigenvalues", "q2n.cut_index", "q2n.m", "q2n.Q"};
  CHECK(r.names() == names);  // data-offset order, not alphabetical
  const std::map<std::string, std::pair<DType, std::vector<std::int64_t>>> expected = {
      {"W", {DType::F32, {64, 256}}},       {"X", {DType::F32, {8, 64, 256}}},
      {"H", {DType::F32, {256, 256}}},      {"Abar", {DType::F32, {64, 256}}},
      {"gptq.Q", {DType::F32, {64, 256}}},  {"q2n.eigenvalues", {DType::F64, {256}}},
      {"q2n.cut_index", {DType::I32, {1}}}, {"q2n.m", {DType::F64, {64}}},
      {"q2n.Q", {DType::F64, {64, 256}}}};
  for (const auto& entry : expected) {
    const std::string& name = entry.first;  // a named variable: CAPTURE needs one
    CAPTURE(name);
    CHECK(r.info(name).dtype == entry.second.first);
    CHECK(r.info(name).shape == entry.second.second);
  }
  CHECK(r.metadata().size() == 18);
  CHECK(r.metadata().at("rows") == "64");
  CHECK(r.metadata().at("cols") == "256");
  CHECK(r.metadata().at("bits") == "4");
  CHECK(r.metadata().at("groupsize") == "-1");
  CHECK(r.metadata().at("activations") == "llm");
  CHECK(r.read_flat<std::int32_t>("q2n.cut_index") ==
        std::vector<std::int32_t>{std::stoi(r.metadata().at("cut_index"))});

  // The tensors are mutually consistent, which checks the layouts (N-D C order, unaligned
  // F64 data at offset 985092) through the reader:
  // Abar[p, :] = mean over samples of X[s, p, :]. X and Abar are float32 results of the
  // reference; the mean of 8 float32 values differs from the double mean by a few float ulps.
  const auto X = r.read_matrix<double>("X");  // (8 * 64) x 256
  const auto Abar = r.read_matrix<double>("Abar");
  REQUIRE(X.rows() == 512);
  RowMat mean = RowMat::Zero(64, 256);
  for (int s = 0; s < 8; ++s) mean += X.middleRows(64 * s, 64);
  mean /= 8.0;
  CHECK((mean - Abar).cwiseAbs().maxCoeff() <= 1e-5 * (1.0 + Abar.cwiseAbs().maxCoeff()));
  // q2n.Q = diag(q2n.m) gptq.Q, formed in float64 by the reference: equal to a double rounding.
  const auto m = r.read_matrix<double>("q2n.m");
  const auto Q = r.read_matrix<double>("gptq.Q");
  const auto Q2 = r.read_matrix<double>("q2n.Q");
  REQUIRE(m.rows() == 64);
  REQUIRE(m.cols() == 1);
  const RowMat scaled = m.col(0).asDiagonal() * Q;
  CHECK((scaled - Q2).cwiseAbs().maxCoeff() <= 1e-15 * Q2.cwiseAbs().maxCoeff());
  const auto ev = r.read_flat<double>("q2n.eigenvalues");
  CHECK(std::is_sorted(ev.rbegin(), ev.rend()));  // descending
}

TEST_CASE("conformance vectors: all six files are consistent with their metadata") {
  const char* files[] = {
      "w2_g128_asym_actorder",     "w2_g64_sym_static_actorder",   "w3_g128_asym",
      "w3_perchannel_asym_damp10", "w4_g128_sym_gaussian_longseq", "w4_perchannel_asym"};
  for (const char* f : files) {
    CAPTURE(f);
    SafetensorsReader r(q2n_test::data_path(std::string("vectors/") + f + ".safetensors"));
    const auto& meta = r.metadata();
    const std::int64_t rows = std::stoll(meta.at("rows")), cols = std::stoll(meta.at("cols"));
    const std::int64_t samples = std::stoll(meta.at("samples"));
    const std::int64_t seqlen = std::stoll(meta.at("seqlen"));
    CHECK(std::string(f).substr(1, 1) == meta.at("bits"));
    CHECK(r.info("W").shape == std::vector<std::int64_t>{rows, cols});
    CHECK(r.info("X").shape == std::vector<std::int64_t>{samples, seqlen, cols});
    CHECK(r.info("Abar").shape == std::vector<std::int64_t>{seqlen, cols});
    CHECK(r.info("q2n.m").shape == std::vector<std::int64_t>{rows});
    CHECK(r.read_flat<std::int32_t>("q2n.cut_index").at(0) == std::stoi(meta.at("cut_index")));
    // Abar is the float32 mean of X over the samples (see the single-file case for the bound).
    const auto X = r.read_matrix<double>("X");
    const auto Abar = r.read_matrix<double>("Abar");
    RowMat mean = RowMat::Zero(seqlen, cols);
    for (std::int64_t s = 0; s < samples; ++s) mean += X.middleRows(seqlen * s, seqlen);
    mean /= static_cast<double>(samples);
    CHECK((mean - Abar).cwiseAbs().maxCoeff() <= 1e-5 * (1.0 + Abar.cwiseAbs().maxCoeff()));
  }
}

TEST_CASE("corrupted files raise FormatError naming file, tensor and problem") {
  const std::string good_data(16, '\0');
  const std::string w_ok = R"("W": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]})";
  TempFile file("corrupt.safetensors");
  const std::string path = file.str();

  // Writes `bytes`, opens a reader, and returns the FormatError message; the message must name
  // the file, `tensor` (when given) and contain `problem`.
  auto expect = [&](const std::string& bytes, const std::string& tensor,
                    const std::string& problem) {
    write_bytes(path, bytes);
    const std::string msg = thrown<FormatError>([&] { SafetensorsReader r(path); });
    CAPTURE(msg);
    CHECK(has(msg, path));
    if (!tensor.empty()) CHECK(has(msg, "tensor '" + tensor + "'"));
    CHECK(has(msg, problem));
  };
  auto with_header = [&](const std::string& header) { return file_bytes(header, good_data); };

  SUBCASE("the well-formed base file reads") {
    write_bytes(path, with_header("{" + w_ok + R"(, "__metadata__": {"a": "b"}})"));
    SafetensorsReader r(path);
    CHECK(r.read_flat<float>("W") == std::vector<float>{0, 0, 0, 0});
  }
  SUBCASE("lenient where the format allows: extra fields, gaps, padding, empty tensors") {
    const std::string header =
        R"({"A": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6], "extra": [1]},
            "E": {"dtype": "F64", "shape": [0, 7], "data_offsets": [6, 6]},
            "B": {"dtype": "U8", "shape": [], "data_offsets": [8, 9]}}    )";
    write_bytes(path, file_bytes(header, std::string("\0\0\0\0\x07\x08\0\0\x09\0", 10)));
    SafetensorsReader r(path);
    CHECK(r.names() == std::vector<std::string>{"A", "E", "B"});
    CHECK(r.read_flat<int>("A") == std::vector<int>{7, 8});
    CHECK(r.read_flat<int>("B") == std::vector<int>{9});
    CHECK(r.read_flat<double>("E").empty());
    CHECK(r.metadata().empty());
  }
  SUBCASE("file shorter than the length field") {
    expect(std::string("\x05\0\0", 3), "", "shorter than the 8-byte header length");
  }
  SUBCASE("header length beyond the file") {
    expect(le64(1000) + "{}", "", "exceeds the 2 bytes that follow");
  }
  SUBCASE("absurd header length") {
    expect(le64(std::uint64_t{1} << 40) + "{}", "", "exceeds the limit");
    expect(le64(~std::uint64_t{0}) + "{}", "", "exceeds the limit");
  }
  SUBCASE("empty header") { expect(le64(0), "", "not valid JSON"); }
  SUBCASE("header is not JSON") { expect(with_header("{\"W\": {"), "", "not valid JSON"); }
  SUBCASE("header is invalid UTF-8") { expect(with_header("{\"\xff\": 1}"), "", "not valid JSON"); }
  SUBCASE("header JSON is not an object") {
    expect(with_header("[1, 2]"), "", "not a JSON object");
  }
  SUBCASE("tensor entry is not an object") {
    expect(with_header(R"({"W": 5})"), "W", "entry is not a JSON object");
  }
  SUBCASE("missing fields") {
    expect(with_header(R"({"W": {"shape": [2, 2], "data_offsets": [0, 16]}})"), "W",
           "\"dtype\" is missing");
    expect(with_header(R"({"W": {"dtype": "F32", "data_offsets": [0, 16]}})"), "W",
           "\"shape\" is missing");
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [2, 2]}})"), "W",
           "\"data_offsets\" is missing");
  }
  SUBCASE("ill-typed fields") {
    expect(with_header(R"({"W": {"dtype": 3, "shape": [2, 2], "data_offsets": [0, 16]}})"), "W",
           "\"dtype\" is not a string");
    expect(with_header(R"({"W": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}})"), "W",
           "\"shape\" is not an array");
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [2, "2"], "data_offsets": [0, 16]}})"),
           "W", "shape[1] = \"2\" is not an integer");
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [2, 2], "data_offsets": {"a": 0}}})"),
           "W", "\"data_offsets\" is not an array");
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0]}})"), "W",
           "\"data_offsets\" is not an array [begin, end]");
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16.0]}})"),
           "W", "data_offsets[1] = 16.0 is not an integer");
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [2, 2], "data_offsets": [-4, 16]}})"),
           "W", "data_offsets[0] = -4 is negative");
  }
  SUBCASE("unknown dtype") {
    expect(with_header(R"({"W": {"dtype": "F8_E4M3", "shape": [16], "data_offsets": [0, 16]}})"),
           "W", "dtype \"F8_E4M3\" is unknown or unsupported");
  }
  SUBCASE("negative, non-integer and huge shapes") {
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [-2, -2], "data_offsets": [0, 16]}})"),
           "W", "shape[0] = -2 is negative");
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [2.5, 2], "data_offsets": [0, 16]}})"),
           "W", "shape[0] = 2.5 is not an integer");
    expect(
        with_header(
            R"({"W": {"dtype": "F32", "shape": [9223372036854775808], "data_offsets": [0, 16]}})"),
        "W", "is too large");
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [1e30], "data_offsets": [0, 16]}})"), "W",
           "is not an integer");
  }
  SUBCASE("numel * dtype_size differs from end - begin, also when it overflows") {
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}})"), "W",
           "span 16 bytes");
    // 2^32 * 2^32 elements: the element count itself overflows 64 bits.
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [4294967296, 4294967296],
                                 "data_offsets": [0, 16]}})"),
           "W", "more elements than fit in int64");
    // 2^31 * 2^31 = 2^62 elements fit, but 2^62 * 8 bytes overflows 64 bits.
    expect(with_header(R"({"W": {"dtype": "F64", "shape": [2147483648, 2147483648],
                                 "data_offsets": [0, 16]}})"),
           "W", "span 16 bytes");
    // (2^62 + 4) F32 elements need 2^64 + 16 bytes, which wraps to exactly 16 if computed
    // carelessly.
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [4611686018427387908],
                                 "data_offsets": [0, 16]}})"),
           "W", "span 16 bytes");
    // A zero extent with huge others: zero elements, but partial products would overflow.
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [4294967296, 4294967296, 0],
                                 "data_offsets": [0, 0]}})"),
           "W", "more elements than fit in int64");
  }
  SUBCASE("offsets outside the data section, begin > end") {
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [2, 2], "data_offsets": [8, 24]}})"), "W",
           "reach past the end of the data section (16 bytes");
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [2, 2], "data_offsets": [16, 0]}})"), "W",
           "begin > end");
    expect(with_header(R"({"W": {"dtype": "F32", "shape": [2, 2],
                                 "data_offsets": [18446744073709551600, 16]}})"),
           "W", "is too large");
  }
  SUBCASE("truncated data") {
    // The header promises 16 bytes of data, the file holds 10.
    expect(file_bytes("{" + w_ok + "}", std::string(10, '\0')), "W",
           "reach past the end of the data section (10 bytes");
  }
  SUBCASE("overlapping tensors") {
    expect(with_header(R"({"A": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},
                           "B": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})"),
           "B", "overlap those of tensor 'A'");
    expect(with_header(R"({"A": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                           "B": {"dtype": "F32", "shape": [0], "data_offsets": [8, 8]}})"),
           "B", "overlap those of tensor 'A'");
    expect(with_header(R"({"A": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                           "B": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}})"),
           "B", "overlap those of tensor 'A'");
  }
  SUBCASE("duplicate names and keys") {
    expect(with_header("{" + w_ok + ", " + w_ok + "}"), "", "tensor name 'W' appears twice");
    expect(with_header(R"({"W": {"dtype": "F32", "dtype": "F32", "shape": [2, 2],
                                 "data_offsets": [0, 16]}})"),
           "", "key 'dtype' appears twice");
    expect(with_header(R"({"__metadata__": {"a": "b", "a": "c"}})"), "", "key 'a' appears twice");
  }
  SUBCASE("metadata not a string map") {
    expect(with_header(R"({"__metadata__": {"rows": 64}})"), "",
           "\"__metadata__\" value of key 'rows' is 64, not a string");
    expect(with_header(R"({"__metadata__": ["format", "pt"]})"), "",
           "\"__metadata__\" is not a JSON object");
  }
  SUBCASE("nesting deeper than any header") {
    std::string deep = R"({"W": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16],
                           "x": )" +
                       std::string(100000, '[') + std::string(100000, ']') + "}}";
    expect(with_header(deep), "", "nests deeper");
  }
  SUBCASE("data that shrinks after the header was read, and bad BOOL bytes") {
    write_bytes(path, with_header("{" + w_ok + "}"));
    SafetensorsReader r(path);
    fs::resize_file(path, 8 + ("{" + w_ok + "}").size() + 10);
    const std::string msg = thrown<FormatError>([&] { r.read_flat<float>("W"); });
    CHECK(has(msg, path));
    CHECK(has(msg, "tensor 'W'"));
    CHECK(has(msg, "data ends early"));
    CHECK_THROWS_AS(r.read_flat<double>("W"), FormatError);  // the converting path too

    write_bytes(path, file_bytes(R"({"F": {"dtype": "BOOL", "shape": [3],
                                         "data_offsets": [0, 3]}})",
                                 std::string("\x01\x00\x07", 3)));
    SafetensorsReader rb(path);
    const std::string bool_msg = thrown<FormatError>([&] { rb.read_flat<int>("F"); });
    CHECK(has(bool_msg, "tensor 'F'"));
    CHECK(has(bool_msg, "BOOL element 2 is byte 7"));
  }
  SUBCASE("missing files and directories are I/O errors, not format errors") {
    CHECK_THROWS_AS(SafetensorsReader(path + ".does-not-exist"), std::runtime_error);
    CHECK_THROWS_AS(SafetensorsReader(fs::temp_directory_path().string()), std::runtime_error);
  }
}
