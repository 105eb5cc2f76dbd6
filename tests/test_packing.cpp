// GPTQ-style packing (q2n/packing.hpp): hand-computed words for every layout, two independent
// reference packers (the per-word GPTQ loops for 2/3/4/8 bits, and a bit-by-bit stream for all
// widths), and round trips on random codes.
#include <doctest/doctest.h>

#include <Eigen/Core>
#include <cstdint>
#include <q2n/io/safetensors.hpp>
#include <q2n/packing.hpp>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "test_util.hpp"

namespace {

using q2n::IntCodes;
using q2n::PackedMatrix;
using q2n::ZeroFormat;
using U32Mat = Eigen::Matrix<std::uint32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// The packed words as unsigned bit patterns, for comparison with hex constants.
U32Mat bits_of(const PackedMatrix& p) {
  U32Mat u(p.rows(), p.cols());
  for (Eigen::Index i = 0; i < p.rows(); ++i)
    for (Eigen::Index j = 0; j < p.cols(); ++j) u(i, j) = static_cast<std::uint32_t>(p(i, j));
  return u;
}

U32Mat words(Eigen::Index rows, Eigen::Index cols, std::vector<std::uint32_t> values) {
  REQUIRE(values.size() == static_cast<std::size_t>(rows * cols));
  return Eigen::Map<const U32Mat>(values.data(), rows, cols);
}

// Reference 1: the bit stream defined bit by bit. Bit b of code (r, k) is bit k * bits + b of
// stream r; stream bit i is bit i % 32 of word i / 32. Gives words x rows.
U32Mat reference_bitwise(const IntCodes& codes, int bits) {
  const Eigen::Index rows = codes.rows(), cols = codes.cols();
  U32Mat out = U32Mat::Zero(cols * bits / 32, rows);
  for (Eigen::Index r = 0; r < rows; ++r)
    for (Eigen::Index k = 0; k < cols; ++k)
      for (int b = 0; b < bits; ++b)
        if ((codes(r, k) >> b) & 1) {
          const Eigen::Index i = k * bits + b;
          out(i / 32, r) |= std::uint32_t{1} << (i % 32);
        }
  return out;
}

// Reference 2: the GPTQ-for-LLaMa / AutoGPTQ packing loops as the checkpoints define them, on
// the transposed codes (cols x rows). 2/4/8 bits: 32/bits whole codes per word; 3 bits: 32
// codes in 3 words with codes 10 and 21 split across word boundaries.
U32Mat reference_gptq(const IntCodes& codes, int bits) {
  const Eigen::Matrix<std::uint32_t, Eigen::Dynamic, Eigen::Dynamic> t =
      codes.transpose().cast<std::uint32_t>();
  U32Mat q = U32Mat::Zero(t.rows() / 32 * bits, t.cols());
  Eigen::Index i = 0, row = 0;
  while (row < q.rows()) {
    if (bits == 2 || bits == 4 || bits == 8) {
      for (Eigen::Index j = 0; j < 32 / bits; ++j)
        q.row(row) += (t.row(i + j) * (1u << (bits * j))).eval();
      i += 32 / bits;
      row += 1;
    } else {
      REQUIRE(bits == 3);
      for (Eigen::Index c = 0; c < q.cols(); ++c) {
        auto v = [&](Eigen::Index k) { return t(i + k, c); };
        std::uint32_t w0 = 0, w1 = 0, w2 = 0;
        for (int j = 0; j < 10; ++j) w0 |= v(j) << (3 * j);
        w0 |= v(10) << 30;  // low 2 bits of code 10 (the shift drops the third)
        w1 |= (v(10) >> 2) & 1u;
        for (int j = 0; j < 10; ++j) w1 |= v(11 + j) << (3 * j + 1);
        w1 |= v(21) << 31;  // low bit of code 21
        w2 |= (v(21) >> 1) & 3u;
        for (int j = 0; j < 10; ++j) w2 |= v(22 + j) << (3 * j + 2);
        q(row, c) = w0;
        q(row + 1, c) = w1;
        q(row + 2, c) = w2;
      }
      i += 32;
      row += 3;
    }
  }
  return q;
}

IntCodes random_codes(Eigen::Index rows, Eigen::Index cols, std::int32_t lo, std::int32_t hi,
                        std::uint32_t seed) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<std::int32_t> dist(lo, hi);
  IntCodes c(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) c(i, j) = dist(gen);
  return c;
}

IntCodes code_rows(Eigen::Index rows, Eigen::Index cols,
                     std::vector<std::pair<std::pair<int, int>, int>> entries) {
  IntCodes c = IntCodes::Zero(rows, cols);
  for (const auto& e : entries) c(e.first.first, e.first.second) = e.second;
  return c;
}

using q2n_test::has;
using q2n_test::thrown;

}  // namespace

TEST_CASE("pack_codes: hand-computed words for 2, 4 and 8 bits (whole codes per word)") {
  SUBCASE("4 bits: code j of a word at bit 4j") {
    IntCodes c(2, 8);
    c << 0, 1, 2, 3, 4, 5, 6, 7,  //
        15, 14, 13, 12, 11, 10, 9, 8;
    const PackedMatrix q = q2n::pack_codes(c, 4);
    CHECK(q.rows() == 1);  // cols * bits / 32
    CHECK(q.cols() == 2);  // rows
    CHECK(bits_of(q) == words(1, 2, {0x76543210u, 0x89ABCDEFu}));
    CHECK(q(0, 1) == static_cast<std::int32_t>(0x89ABCDEF - 0x100000000LL));  // negative int32
    CHECK(q2n::unpack_codes(q, 4) == c);
  }
  SUBCASE("2 bits: 16 codes per word") {
    IntCodes c(1, 16);
    c << 1, 2, 3, 0, 0, 0, 0, 0, 3, 3, 3, 3, 0, 1, 0, 1;
    // byte 0: codes 3..0 = 00 11 10 01 = 0x39; byte 1: 0; byte 2: 11111111; byte 3: 01 00 01 00
    const PackedMatrix q = q2n::pack_codes(c, 2);
    CHECK(bits_of(q) == words(1, 1, {0x44FF0039u}));
    CHECK(q2n::unpack_codes(q, 2) == c);
  }
  SUBCASE("8 bits: one byte per code") {
    IntCodes c(1, 8);
    c << 0x12, 0x34, 0x56, 0x78, 0xFF, 0x00, 0x80, 0x01;
    const PackedMatrix q = q2n::pack_codes(c, 8);
    CHECK(bits_of(q) == words(2, 1, {0x78563412u, 0x018000FFu}));
    CHECK(q2n::unpack_codes(q, 8) == c);
  }
}

TEST_CASE("pack_codes: hand-computed words for 3 bits (GPTQ cross-word layout)") {
  // Row 0: code 0 = 7 (bits 0-2 of word 0); code 10 = 0b101 at stream bits 30-32: bits 30, 31
  // of word 0 = 1, 0 and bit 0 of word 1 = 1; code 21 = 0b110 at bits 63-65: bit 31 of word 1 =
  // 0, bits 0-1 of word 2 = 11; code 31 = 0b011 at bits 93-95 = bits 29-31 of word 2.
  // Row 1: code 11 = 7 at bits 33-35 (word 1 bits 1-3), code 20 = 7 at bits 60-62 (word 1 bits
  // 28-30), code 22 = 1 at bit 66 (word 2 bit 2).
  const IntCodes c = code_rows(2, 32,
                                 {{{0, 0}, 7},
                                  {{0, 10}, 5},
                                  {{0, 21}, 6},
                                  {{0, 31}, 3},
                                  {{1, 11}, 7},
                                  {{1, 20}, 7},
                                  {{1, 22}, 1}});
  const PackedMatrix q = q2n::pack_codes(c, 3);
  CHECK(bits_of(q) == words(3, 2,
                            {0x40000007u, 0x00000000u,  //
                             0x00000001u, 0x7000000Eu,  //
                             0x60000003u, 0x00000004u}));
  CHECK(q2n::unpack_codes(q, 3) == c);
}

TEST_CASE("pack_codes: hand-computed words for 5, 6 and 7 bits (dense stream)") {
  SUBCASE("5 bits: 32 codes in 5 words") {
    // code 6 = 0b10011 at bits 30-34: word 0 bits 30, 31 = 1, 1; word 1 bit 2 = 1.
    // code 12 = 0b11111 at bits 60-64: word 1 bits 28-31, word 2 bit 0.
    // code 31 = 1 at bit 155 = word 4 bit 27.
    const IntCodes c = code_rows(1, 32, {{{0, 6}, 19}, {{0, 12}, 31}, {{0, 31}, 1}});
    const PackedMatrix q = q2n::pack_codes(c, 5);
    CHECK(bits_of(q) ==
          words(5, 1, {0xC0000000u, 0xF0000004u, 0x00000001u, 0x00000000u, 0x08000000u}));
    CHECK(q2n::unpack_codes(q, 5) == c);
  }
  SUBCASE("6 bits: 16 codes in 3 words") {
    // code 5 = 63 at bits 30-35: word 0 bits 30-31, word 1 bits 0-3; code 15 = 0b100000 at
    // bits 90-95: its top bit is bit 95 = word 2 bit 31.
    const IntCodes c = code_rows(1, 16, {{{0, 5}, 63}, {{0, 15}, 32}});
    const PackedMatrix q = q2n::pack_codes(c, 6);
    CHECK(bits_of(q) == words(3, 1, {0xC0000000u, 0x0000000Fu, 0x80000000u}));
    CHECK(q2n::unpack_codes(q, 6) == c);
  }
  SUBCASE("7 bits: 32 codes in 7 words") {
    // code 4 = 0b1010101 at bits 28-34: word 0 bits 28-31 = 0101, word 1 bits 0-2 = 101.
    const IntCodes c = code_rows(1, 32, {{{0, 4}, 0x55}});
    const PackedMatrix q = q2n::pack_codes(c, 7);
    CHECK(bits_of(q) == words(7, 1, {0x50000000u, 0x5u, 0u, 0u, 0u, 0u, 0u}));
    CHECK(q2n::unpack_codes(q, 7) == c);
  }
}

TEST_CASE("pack_zeros: hand-computed words, v1 stores zero - 1, v2 stores zero") {
  SUBCASE("4 bits") {
    IntCodes z(8, 2);       // rows x groups
    z.col(0).setConstant(8);  // the symmetric 4-bit zero point
    z.col(1) << 1, 2, 3, 4, 5, 6, 7, 8;
    const PackedMatrix v1 = q2n::pack_zeros(z, 4, ZeroFormat::v1);
    CHECK(v1.rows() == 2);  // groups
    CHECK(v1.cols() == 1);  // rows * bits / 32
    CHECK(bits_of(v1) == words(2, 1, {0x77777777u, 0x76543210u}));
    CHECK(bits_of(q2n::pack_zeros(z, 4, ZeroFormat::v2)) ==
          words(2, 1, {0x88888888u, 0x87654321u}));
    CHECK(q2n::unpack_zeros(v1, 4, ZeroFormat::v1) == z);
    CHECK(q2n::unpack_zeros(q2n::pack_zeros(z, 4, ZeroFormat::v2), 4, ZeroFormat::v2) == z);
    // The same words read with the other convention are off by one.
    CHECK(q2n::unpack_zeros(v1, 4, ZeroFormat::v2) == (z.array() - 1).matrix());
  }
  SUBCASE("2 and 8 bits") {
    const IntCodes z2 = IntCodes::Constant(16, 1, 2);
    CHECK(bits_of(q2n::pack_zeros(z2, 2, ZeroFormat::v1)) == words(1, 1, {0x55555555u}));
    IntCodes z8(4, 1);
    z8 << 1, 128, 256, 17;  // v1 stores 0, 127, 255, 16; 256 = 2^bits is storable in v1 only
    CHECK(bits_of(q2n::pack_zeros(z8, 8, ZeroFormat::v1)) == words(1, 1, {0x10FF7F00u}));
    CHECK(q2n::unpack_zeros(q2n::pack_zeros(z8, 8), 8) == z8);  // v1 is the default
    CHECK_THROWS_AS(q2n::pack_zeros(z8, 8, ZeroFormat::v2), std::invalid_argument);
  }
  SUBCASE("3 bits, same cross-word layout as qweight, along the rows") {
    IntCodes z = IntCodes::Zero(32, 1);
    z(0, 0) = 7;
    z(10, 0) = 5;
    z(21, 0) = 6;
    z(31, 0) = 3;
    const PackedMatrix v2 = q2n::pack_zeros(z, 3, ZeroFormat::v2);
    CHECK(bits_of(v2) == words(1, 3, {0x40000007u, 0x00000001u, 0x60000003u}));
    const IntCodes z1 = (z.array() + 1).matrix();
    CHECK(bits_of(q2n::pack_zeros(z1, 3, ZeroFormat::v1)) == bits_of(v2));
    CHECK(q2n::unpack_zeros(v2, 3, ZeroFormat::v2) == z);
  }
}

TEST_CASE("pack_codes agrees with both reference packers and round-trips random codes") {
  const Eigen::Index rows = 7, cols = 96;  // 96 * bits is a multiple of 32 for every width
  for (int bits = 2; bits <= 8; ++bits) {
    CAPTURE(bits);
    const IntCodes c = random_codes(rows, cols, 0, (1 << bits) - 1, 100 + bits);
    const PackedMatrix q = q2n::pack_codes(c, bits);
    REQUIRE(q.rows() == cols * bits / 32);
    REQUIRE(q.cols() == rows);
    CHECK(bits_of(q) == reference_bitwise(c, bits));
    if (bits == 2 || bits == 3 || bits == 4 || bits == 8)
      CHECK(bits_of(q) == reference_gptq(c, bits));
    CHECK(q2n::unpack_codes(q, bits) == c);
    // Other input types and storage orders give the same words.
    const Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rm = c;
    CHECK(q2n::pack_codes(rm, bits) == q);
    CHECK(q2n::pack_codes(c.cast<std::uint8_t>(), bits) == q);
    CHECK(q2n::pack_codes(c.cast<std::int64_t>(), bits) == q);
    CHECK(q2n::pack_codes(c.cast<float>(), bits) == q);
    CHECK(q2n::pack_codes(Eigen::Map<const IntCodes>(c.data(), rows, cols), bits) == q);
    CHECK(q2n::unpack_codes(bits_of(q), bits) == c);              // uint32 words
    CHECK(q2n::unpack_codes(q.cast<std::int64_t>(), bits) == c);  // int64 holding int32 words

    const IntCodes z2 = random_codes(64, 3, 0, (1 << bits) - 1, 200 + bits);
    const PackedMatrix qz2 = q2n::pack_zeros(z2, bits, ZeroFormat::v2);
    REQUIRE(qz2.rows() == 3);
    REQUIRE(qz2.cols() == 64 * bits / 32);
    CHECK(bits_of(qz2) == reference_bitwise(z2.transpose(), bits).transpose());
    CHECK(q2n::unpack_zeros(qz2, bits, ZeroFormat::v2) == z2);
    const IntCodes z1 = (z2.array() + 1).matrix();  // v1 range [1, 2^bits]
    CHECK(q2n::pack_zeros(z1, bits, ZeroFormat::v1) == qz2);
    CHECK(q2n::unpack_zeros(q2n::pack_zeros(z1, bits, ZeroFormat::v1), bits, ZeroFormat::v1) == z1);
  }
}

TEST_CASE("packed tensors survive a safetensors round trip") {
  const IntCodes c = random_codes(16, 64, 0, 15, 5);
  const IntCodes z = random_codes(16, 2, 0, 15, 6);
  q2n::io::SafetensorsWriter w;
  w.add("qweight", q2n::pack_codes(c, 4), q2n::io::DType::I32);
  w.add("qzeros", q2n::pack_zeros(z, 4, ZeroFormat::v2), q2n::io::DType::I32);
  const q2n_test::TempFile file("packing.safetensors");
  const std::string path = file.str();
  w.write(path);
  q2n::io::SafetensorsReader r(path);
  CHECK(r.info("qweight").shape == std::vector<std::int64_t>{8, 16});
  CHECK(r.info("qzeros").shape == std::vector<std::int64_t>{2, 2});
  CHECK(q2n::unpack_codes(r.read_matrix<std::int32_t>("qweight"), 4) == c);
  CHECK(q2n::unpack_zeros(r.read_matrix<std::int32_t>("qzeros"), 4, ZeroFormat::v2) == z);
}

TEST_CASE("packing rejects bad widths, codes and shapes with a message") {
  const IntCodes c = IntCodes::Zero(2, 32);
  CHECK(has(thrown<std::invalid_argument>([&] { q2n::pack_codes(c, 9); }),
            "q2n::pack_codes: bits = 9 is outside 2..8"));
  CHECK_THROWS_AS(q2n::pack_codes(c, 1), std::invalid_argument);
  CHECK_THROWS_AS(q2n::unpack_codes(PackedMatrix::Zero(3, 2), 0), std::invalid_argument);
  CHECK_THROWS_AS(q2n::pack_zeros(c, 10), std::invalid_argument);
  CHECK_THROWS_AS(q2n::unpack_zeros(PackedMatrix::Zero(3, 2), 12), std::invalid_argument);

  IntCodes bad = c;
  bad(1, 5) = 16;
  CHECK(has(thrown<std::invalid_argument>([&] { q2n::pack_codes(bad, 4); }),
            "codes(1, 5) = 16 is outside 0..15"));
  bad(1, 5) = -1;
  CHECK_THROWS_AS(q2n::pack_codes(bad, 4), std::invalid_argument);
  Eigen::MatrixXf fractional = Eigen::MatrixXf::Zero(1, 8);
  fractional(0, 3) = 1.5f;
  CHECK_THROWS_AS(q2n::pack_codes(fractional, 4), std::invalid_argument);
  CHECK(has(thrown<std::invalid_argument>([&] { q2n::pack_codes(IntCodes::Zero(2, 20), 3); }),
            "cols = 20 times bits = 3 is not a multiple of 32"));
  CHECK_NOTHROW(q2n::pack_codes(IntCodes::Zero(2, 8), 4));   // 8 * 4 = 32
  CHECK_NOTHROW(q2n::pack_codes(IntCodes::Zero(2, 16), 6));  // 16 * 6 = 96
  CHECK_THROWS_AS(q2n::pack_codes(IntCodes::Zero(2, 8), 6), std::invalid_argument);

  const IntCodes z0 = IntCodes::Zero(8, 1);
  CHECK(has(thrown<std::invalid_argument>([&] { q2n::pack_zeros(z0, 4, ZeroFormat::v1); }),
            "ZeroFormat::v2"));
  CHECK_NOTHROW(q2n::pack_zeros(z0, 4, ZeroFormat::v2));
  CHECK_THROWS_AS(q2n::pack_zeros(IntCodes::Constant(8, 1, 16), 4, ZeroFormat::v2),
                  std::invalid_argument);
  CHECK_THROWS_AS(q2n::pack_zeros(Eigen::Matrix<std::uint8_t, 8, 1>::Zero(), 4, ZeroFormat::v1),
                  std::invalid_argument);
  CHECK_THROWS_AS(q2n::pack_zeros(IntCodes::Constant(12, 1, 1), 4), std::invalid_argument);

  CHECK(has(thrown<std::invalid_argument>([&] { q2n::unpack_codes(PackedMatrix::Zero(4, 2), 3); }),
            "multiple of 3"));
  CHECK_THROWS_AS(q2n::unpack_zeros(PackedMatrix::Zero(2, 4), 3), std::invalid_argument);
  Eigen::Matrix<std::int64_t, 1, 1> too_wide;
  too_wide << (std::int64_t{1} << 33);
  CHECK(has(thrown<std::invalid_argument>([&] { q2n::unpack_codes(too_wide, 4); }),
            "is not a 32-bit word"));
}
