#pragma once
/// \file half.hpp
/// Bit-exact conversions between IEEE binary32 (`float`) and the two 16-bit floating point
/// formats used in checkpoints: IEEE binary16 ("F16", 1 sign, 5 exponent, 10 mantissa bits) and
/// bfloat16 ("BF16", the upper 16 bits of a binary32).
///
/// The narrowing conversions round to nearest, ties to even, exactly as IEEE 754 prescribes;
/// values beyond the largest finite 16-bit value round to infinity, tiny values round into the
/// subnormal range or to a signed zero. NaN stays NaN (quiet, sign kept, leading payload bits
/// kept where they fit). The widening conversions are exact.
///
/// Values are passed as raw `std::uint16_t` bit patterns so that no compiler extension
/// (`_Float16`, `__bf16`) is needed.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace q2n::detail {

/// Bit pattern of a `float` (no aliasing tricks).
inline std::uint32_t float_bits(float f) noexcept {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

/// The `float` with bit pattern `u`.
inline float bits_float(std::uint32_t u) noexcept {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

/// bfloat16 bit pattern -> float. Exact: bfloat16 is the upper half of a binary32.
inline float bf16_to_float(std::uint16_t h) noexcept {
  return bits_float(static_cast<std::uint32_t>(h) << 16);
}

/// float -> bfloat16 bit pattern, round to nearest, ties to even.
/// \note Overflow is handled by the rounding itself: the carry out of the mantissa of the largest
/// finite values lands in the exponent and produces the infinity pattern 0x7F80.
inline std::uint16_t float_to_bf16(float f) noexcept {
  const std::uint32_t u = float_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
    // NaN: keep sign and the upper payload bits, force the quiet bit so that the payload can
    // never truncate to zero (which would turn NaN into infinity).
    return static_cast<std::uint16_t>((u >> 16) | 0x0040u);
  }
  const std::uint32_t lsb = (u >> 16) & 1u;  // parity of the kept part decides ties
  return static_cast<std::uint16_t>((u + 0x7FFFu + lsb) >> 16);
}

/// IEEE binary16 bit pattern -> float. Exact for every one of the 65536 patterns.
inline float half_to_float(std::uint16_t h) noexcept {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t exponent = (h >> 10) & 0x1Fu;
  std::uint32_t mantissa = h & 0x3FFu;
  if (exponent == 0x1Fu) {  // infinity or NaN; the payload moves to the top of the mantissa
    return bits_float(sign | 0x7F800000u | (mantissa << 13));
  }
  if (exponent != 0) {  // normal: rebias 15 -> 127
    return bits_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
  }
  if (mantissa == 0) return bits_float(sign);  // signed zero
  // Subnormal: value = mantissa * 2^-24. Normalize so that the leading one becomes implicit.
  std::uint32_t e = 113;  // biased float exponent of 2^-14, the half subnormal scale
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    --e;
  }
  return bits_float(sign | (e << 23) | ((mantissa & 0x3FFu) << 13));
}

/// float -> IEEE binary16 bit pattern, round to nearest, ties to even, with correct overflow to
/// infinity, gradual underflow to subnormals, and signed zeros.
inline std::uint16_t float_to_half(float f) noexcept {
  const std::uint32_t u = float_bits(f);
  const auto sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t a = u & 0x7FFFFFFFu;  // |f| as bits; order of bits == order of values
  if (a > 0x7F800000u) {                    // NaN: quiet, keep sign and leading payload bits
    return static_cast<std::uint16_t>(sign | 0x7E00u | ((a >> 13) & 0x3FFu));
  }
  // 65520 = 0x477FF000 is the midpoint between the largest half (65504, odd mantissa) and
  // 2^16; ties go to the even neighbour, which is 2^16, i.e. infinity.
  if (a >= 0x477FF000u) return static_cast<std::uint16_t>(sign | 0x7C00u);
  if (a >= 0x38800000u) {  // |f| >= 2^-14: result is a normal half (or rounds up to one)
    const std::uint32_t rebiased = a - 0x38000000u;  // exponent 127 -> 15 bias
    std::uint32_t r = rebiased >> 13;
    const std::uint32_t rest = rebiased & 0x1FFFu;
    if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) ++r;  // a carry may bump the exponent
    return static_cast<std::uint16_t>(sign | r);
  }
  // |f| < 2^-14: subnormal half m * 2^-24, m in [0, 1023], or 2^-14 after rounding up.
  // 2^-25 (0x33000000) is the midpoint between 0 and the smallest subnormal; the tie goes to 0.
  if (a <= 0x33000000u) return sign;
  const std::uint32_t e = a >> 23;  // 102..112 here (float subnormals are far below 2^-25)
  const std::uint32_t m = (a & 0x7FFFFFu) | 0x800000u;
  const std::uint32_t shift = 126u - e;  // |f| / 2^-24 = m * 2^(e - 126), shift in 14..24
  std::uint32_t r = m >> shift;
  const std::uint32_t rest = m & ((1u << shift) - 1u);
  const std::uint32_t halfway = 1u << (shift - 1u);
  if (rest > halfway || (rest == halfway && (r & 1u))) ++r;  // 0x400 is the smallest normal
  return static_cast<std::uint16_t>(sign | r);
}

/// double -> float with round-to-odd: exact values pass unchanged; an inexact value becomes the
/// float just below it in magnitude with its last mantissa bit forced to 1. Finite values beyond
/// the float range become the largest finite float (odd), infinities and NaN pass through.
/// \note Rounding a round-to-odd result with at least two extra bits once more to nearest-even
/// gives the correctly rounded result; plain double -> float -> half rounding does not (a double
/// just above a half midpoint can first round onto the midpoint and then tie the wrong way).
inline float double_to_float_round_to_odd(double d) noexcept {
  constexpr double kMax = static_cast<double>(std::numeric_limits<float>::max());
  if (std::isnan(d)) return static_cast<float>(d);
  if (std::isinf(d))
    return d > 0 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
  if (std::fabs(d) > kMax) return static_cast<float>(std::copysign(kMax, d));
  const float f = static_cast<float>(d);  // nearest (any rounding mode would do here)
  if (static_cast<double>(f) == d) return f;
  std::uint32_t u = float_bits(f);
  if (std::fabs(static_cast<double>(f)) > std::fabs(d)) --u;  // step back towards zero
  return bits_float(u | 1u);
}

/// double -> IEEE binary16 bit pattern, correctly rounded (nearest, ties to even).
inline std::uint16_t double_to_half(double d) noexcept {
  return float_to_half(double_to_float_round_to_odd(d));
}

/// double -> bfloat16 bit pattern, correctly rounded (nearest, ties to even).
inline std::uint16_t double_to_bf16(double d) noexcept {
  return float_to_bf16(double_to_float_round_to_odd(d));
}

/// double -> float, correctly rounded, with IEEE overflow to infinity made explicit (a plain
/// cast of a double beyond the float range is undefined behaviour in C++).
inline float double_to_float(double d) noexcept {
  constexpr double kMax = static_cast<double>(std::numeric_limits<float>::max());
  // Midpoint between FLT_MAX and 2^128: the tie goes to the even neighbour, infinity.
  constexpr double kOverflow = 0x1.ffffffp127;
  if (std::fabs(d) > kMax && !std::isnan(d)) {
    return std::fabs(d) < kOverflow ? static_cast<float>(std::copysign(kMax, d))
                                    : (d > 0 ? std::numeric_limits<float>::infinity()
                                             : -std::numeric_limits<float>::infinity());
  }
  return static_cast<float>(d);
}

/// Unsigned 64-bit magnitude -> float with round-to-odd (see double_to_float_round_to_odd);
/// used to round integers to 16-bit floats correctly.
inline float u64_to_float_round_to_odd(std::uint64_t v) noexcept {
  int width = 0;
  for (std::uint64_t t = v; t != 0; t >>= 1) ++width;
  if (width <= 24) return static_cast<float>(v);  // exact
  const int shift = width - 24;
  const std::uint64_t sticky = (v & ((std::uint64_t{1} << shift) - 1u)) != 0 ? 1u : 0u;
  const std::uint64_t m = (v >> shift) | sticky;  // 24 significant bits, exact in a float
  return std::ldexp(static_cast<float>(m), shift);
}

}  // namespace q2n::detail
