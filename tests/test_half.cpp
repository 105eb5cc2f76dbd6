// 16-bit float conversions (q2n/detail/half.hpp) against references built from the formats'
// definitions: the value of every bit pattern from its fields via std::ldexp, and correct
// rounding by searching the sorted table of all finite values.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <q2n/detail/half.hpp>
#include <random>
#include <utility>
#include <vector>

namespace {

using q2n::detail::bf16_to_float;
using q2n::detail::bits_float;
using q2n::detail::double_to_bf16;
using q2n::detail::double_to_half;
using q2n::detail::float_bits;
using q2n::detail::float_to_bf16;
using q2n::detail::float_to_half;
using q2n::detail::half_to_float;

// Format description: exponent bits, mantissa bits (bias = 2^(e-1) - 1).
struct Format {
  int exponent_bits, mantissa_bits;
  int bias() const { return (1 << (exponent_bits - 1)) - 1; }
  std::uint32_t max_exponent() const { return (1u << exponent_bits) - 1; }
};
constexpr Format kHalf{5, 10};
constexpr Format kBf16{8, 7};

// Value of bit pattern h by the IEEE definition; NaN for NaN patterns.
double reference_value(std::uint16_t h, Format f) {
  const bool negative = (h >> 15) != 0;
  const std::uint32_t e = (h >> f.mantissa_bits) & f.max_exponent();
  const std::uint32_t m = h & ((1u << f.mantissa_bits) - 1);
  double v;
  if (e == f.max_exponent()) {
    v = m == 0 ? INFINITY : NAN;
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(m), 1 - f.bias() - f.mantissa_bits);
  } else {
    v = std::ldexp(static_cast<double>(m + (1u << f.mantissa_bits)),
                   static_cast<int>(e) - f.bias() - f.mantissa_bits);
  }
  return negative ? -v : v;
}

bool is_nan_pattern(std::uint16_t h, Format f) {
  return ((h >> f.mantissa_bits) & f.max_exponent()) == f.max_exponent() &&
         (h & ((1u << f.mantissa_bits) - 1)) != 0;
}

// All non-negative finite values of the format in ascending order, plus infinity as a
// pseudo-value at the next power of two (its pattern is even, so ties at the overflow
// threshold go to infinity, as IEEE specifies).
std::vector<std::pair<double, std::uint16_t>> positive_table(Format f) {
  std::vector<std::pair<double, std::uint16_t>> t;
  const std::uint16_t inf = static_cast<std::uint16_t>(f.max_exponent() << f.mantissa_bits);
  for (std::uint32_t h = 0; h < inf; ++h) {
    t.emplace_back(reference_value(static_cast<std::uint16_t>(h), f),
                   static_cast<std::uint16_t>(h));
  }
  t.emplace_back(std::ldexp(1.0, static_cast<int>(f.max_exponent()) - f.bias()), inf);
  return t;
}

// Correct round-to-nearest-even of a finite double x, found by search in the table.
std::uint16_t reference_round(double x, const std::vector<std::pair<double, std::uint16_t>>& t) {
  const std::uint16_t sign = std::signbit(x) ? 0x8000 : 0;
  const double a = std::fabs(x);
  if (a >= t.back().first) return sign | t.back().second;
  const auto up = std::lower_bound(t.begin(), t.end(), std::make_pair(a, std::uint16_t{0}),
                                   [](const auto& p, const auto& q) { return p.first < q.first; });
  if (up->first == a) return sign | up->second;
  const auto lo = up - 1;
  const double mid = (lo->first + up->first) / 2;  // exact: few significant bits
  std::uint16_t r;
  if (a < mid) {
    r = lo->second;
  } else if (a > mid) {
    r = up->second;
  } else {
    r = (lo->second & 1u) == 0 ? lo->second : up->second;
  }
  return sign | r;
}

void check_to_float_exhaustive(Format f, float (*to_float)(std::uint16_t),
                               std::uint16_t (*from_float)(float)) {
  int mismatches = 0, round_trip_failures = 0;
  for (std::uint32_t i = 0; i < 65536; ++i) {
    const auto h = static_cast<std::uint16_t>(i);
    const float v = to_float(h);
    const double expected = reference_value(h, f);
    if (is_nan_pattern(h, f)) {
      // NaN: stays NaN with its sign; the payload moves to the top of the float mantissa.
      const std::uint32_t payload = h & ((1u << f.mantissa_bits) - 1);
      const bool ok = std::isnan(v) && std::signbit(v) == ((h >> 15) != 0) &&
                      ((float_bits(v) & 0x7FFFFFu) >> (23 - f.mantissa_bits)) == payload;
      mismatches += ok ? 0 : 1;
      const std::uint16_t back = from_float(v);
      round_trip_failures += is_nan_pattern(back, f) && (back >> 15) == (h >> 15) ? 0 : 1;
      continue;
    }
    const bool ok = static_cast<double>(v) == expected && std::signbit(v) == std::signbit(expected);
    mismatches += ok ? 0 : 1;
    round_trip_failures += from_float(v) == h ? 0 : 1;
  }
  CHECK(mismatches == 0);
  CHECK(round_trip_failures == 0);
}

// Floats to test narrowing with: every exact midpoint between neighbouring 16-bit values, the
// floats one ulp either side of it, the values themselves, and random floats over the range.
std::vector<float> narrowing_inputs(const std::vector<std::pair<double, std::uint16_t>>& t,
                                    std::uint32_t seed) {
  std::vector<float> xs;
  for (std::size_t i = 0; i + 1 < t.size(); ++i) {
    const auto mid = static_cast<float>((t[i].first + t[i + 1].first) / 2);  // exact in float
    xs.push_back(mid);
    xs.push_back(std::nextafter(mid, 0.0f));
    xs.push_back(std::nextafter(mid, INFINITY));
    xs.push_back(static_cast<float>(t[i].first));
  }
  std::mt19937 gen(seed);
  std::uniform_int_distribution<std::uint32_t> bits(0, 0x7F7FFFFFu);  // finite, non-negative
  for (int i = 0; i < 200000; ++i) xs.push_back(bits_float(bits(gen)));
  xs.push_back(INFINITY);
  xs.push_back(std::numeric_limits<float>::max());
  xs.push_back(std::numeric_limits<float>::denorm_min());
  const std::size_t n = xs.size();
  for (std::size_t i = 0; i < n; ++i) xs.push_back(-xs[i]);
  return xs;
}

}  // namespace

TEST_CASE("half_to_float is exact for all 65536 patterns and float_to_half inverts it") {
  check_to_float_exhaustive(kHalf, half_to_float, float_to_half);
}

TEST_CASE("bf16_to_float is exact for all 65536 patterns and float_to_bf16 inverts it") {
  check_to_float_exhaustive(kBf16, bf16_to_float, float_to_bf16);
}

TEST_CASE("float_to_half rounds to nearest even, overflows and underflows like IEEE") {
  // Hand-checked ties and boundaries (bit patterns worked out from the binary16 layout).
  CHECK(float_to_half(1.0f) == 0x3C00);
  CHECK(float_to_half(1.0f + 0x1p-11f) == 0x3C00);             // tie between 1 and 1+2^-10: even
  CHECK(float_to_half(1.0f + 3 * 0x1p-11f) == 0x3C02);         // tie between odd 0x3C01 and 0x3C02
  CHECK(float_to_half(1.0f + 0x1p-11f + 0x1p-23f) == 0x3C01);  // just above the tie
  CHECK(float_to_half(65504.0f) == 0x7BFF);                    // largest finite
  CHECK(float_to_half(65519.996f) == 0x7BFF);                  // below the overflow tie
  CHECK(float_to_half(65520.0f) == 0x7C00);                    // tie with 2^16 goes to infinity
  CHECK(float_to_half(-1e30f) == 0xFC00);
  CHECK(float_to_half(0x1p-24f) == 0x0001);  // smallest subnormal
  CHECK(float_to_half(0x1p-25f) == 0x0000);  // tie between 0 and 2^-24: even
  CHECK(float_to_half(0x1p-25f + 0x1p-40f) == 0x0001);
  CHECK(float_to_half(3 * 0x1p-25f) == 0x0002);         // tie between 1 and 2 (x 2^-24)
  CHECK(float_to_half(0x1p-14f - 0x1p-25f) == 0x0400);  // tie rounds up into the normals
  CHECK(float_to_half(-0.0f) == 0x8000);
  CHECK(float_to_half(-0x1p-26f) == 0x8000);  // underflow keeps the sign
  CHECK(is_nan_pattern(float_to_half(NAN), kHalf));
  CHECK(is_nan_pattern(float_to_half(bits_float(0x7F800001u)), kHalf));  // payload lost below
                                                                         // bit 13: still NaN
  const auto table = positive_table(kHalf);
  int mismatches = 0;
  for (float x : narrowing_inputs(table, 7)) {
    mismatches += float_to_half(x) == reference_round(x, table) ? 0 : 1;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("float_to_bf16 rounds to nearest even, overflows like IEEE") {
  CHECK(float_to_bf16(1.0f) == 0x3F80);
  CHECK(float_to_bf16(1.0f + 0x1p-8f) == 0x3F80);      // tie between 1 and 1+2^-7: even
  CHECK(float_to_bf16(1.0f + 3 * 0x1p-8f) == 0x3F82);  // tie between 0x3F81 and 0x3F82
  CHECK(float_to_bf16(1.0f + 0x1p-8f + 0x1p-23f) == 0x3F81);
  CHECK(float_to_bf16(std::numeric_limits<float>::max()) == 0x7F80);  // above the last tie
  CHECK(float_to_bf16(bits_float(0x7F7F7FFFu)) == 0x7F7F);            // just below it
  CHECK(float_to_bf16(bits_float(0x00008000u)) == 0x0000);            // subnormal tie: even
  CHECK(float_to_bf16(bits_float(0x00018000u)) == 0x0002);
  CHECK(float_to_bf16(-0.0f) == 0x8000);
  CHECK(is_nan_pattern(float_to_bf16(bits_float(0x7F800001u)), kBf16));  // low payload only
  CHECK(is_nan_pattern(float_to_bf16(bits_float(0xFFC00000u)), kBf16));
  CHECK((float_to_bf16(bits_float(0xFFC00000u)) >> 15) == 1);
  const auto table = positive_table(kBf16);
  int mismatches = 0;
  for (float x : narrowing_inputs(table, 11)) {
    mismatches += float_to_bf16(x) == reference_round(x, table) ? 0 : 1;
  }
  CHECK(mismatches == 0);
}

TEST_CASE("double_to_half and double_to_bf16 round once, not twice") {
  // 1 + 2^-11 + 2^-40 lies just above a binary16 tie; rounding to float first lands exactly on
  // the tie (the 2^-40 is below float precision) and would then round down to 1.
  const double just_above = 1.0 + 0x1p-11 + 0x1p-40;
  CHECK(float_to_half(static_cast<float>(just_above)) == 0x3C00);  // the double-rounding trap
  CHECK(double_to_half(just_above) == 0x3C01);
  CHECK(double_to_half(1.0 + 0x1p-11) == 0x3C00);  // the exact tie: even
  CHECK(double_to_half(1.0 + 0x1p-11 - 0x1p-40) == 0x3C00);
  CHECK(double_to_bf16(1.0 + 0x1p-8 + 0x1p-40) == 0x3F81);
  CHECK(double_to_bf16(1.0 + 0x1p-8) == 0x3F80);
  CHECK(double_to_half(1e300) == 0x7C00);
  CHECK(double_to_bf16(-1e300) == 0xFF80);
  CHECK(double_to_bf16(0x1.fep127 + 0x1p100) == 0x7F7F);  // below the bf16 overflow tie
  CHECK(double_to_half(1e-300) == 0x0000);
  CHECK(is_nan_pattern(double_to_half(NAN), kHalf));

  // Random doubles near every 16-bit midpoint, against the table search.
  for (const Format f : {kHalf, kBf16}) {
    const auto table = positive_table(f);
    std::mt19937_64 gen(3);
    std::uniform_int_distribution<int> offset(-3, 3);
    int mismatches = 0;
    for (std::size_t i = 0; i + 1 < table.size(); i += 3) {
      const double mid = (table[i].first + table[i + 1].first) / 2;
      const double ulp = std::fabs(std::nextafter(mid, INFINITY) - mid);
      for (int k = 0; k < 4; ++k) {
        const double x = mid + offset(gen) * ulp * 16;  // few double ulps off the tie
        const std::uint16_t got = f.mantissa_bits == 10 ? double_to_half(x) : double_to_bf16(x);
        mismatches += got == reference_round(x, table) ? 0 : 1;
      }
    }
    CHECK(mismatches == 0);
  }
}
