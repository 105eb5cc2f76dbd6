#pragma once
/// \file packing.hpp
/// Packing of integer quantization codes and zero points into 32-bit words, in the layout of
/// GPTQ checkpoints (GPTQ-for-LLaMa, AutoGPTQ), so that q2n results can be stored as `qweight`,
/// `qzeros` and `scales` tensors.
///
/// Layout. A linear layer has `rows` outputs and `cols` inputs; its codes form a rows x cols
/// matrix. The checkpoint stores
///  - `qweight`: int32 [cols * bits / 32, rows]. Column r holds the codes of output row r as one
///    little-endian bit stream: code (r, k) occupies bits [k * bits, (k + 1) * bits) of the
///    stream, where bit b of the stream is bit (b % 32) of word b / 32 (least significant bit
///    first). A code may straddle two words.
///  - `qzeros`: int32 [groups, rows * bits / 32]. Row g holds the zero points of group g for all
///    output rows as the same kind of bit stream, indexed by output row.
///  - `scales`: float [groups, rows], the transpose of q2n's rows x groups scales (not packed).
///
/// For bits = 2, 4 and 8 the stream puts 32 / bits whole codes in each word, code j of a word at
/// bit bits * j: exactly the GPTQ layout. For bits = 3 the stream puts 32 codes in 3 words, code
/// 10 split over words 0 and 1 (2 + 1 bits) and code 21 over words 1 and 2 (1 + 2 bits): exactly
/// the cross-word layout of GPTQ-for-LLaMa and AutoGPTQ. No common checkpoint format defines 5,
/// 6 or 7 bits; for those q2n uses the same dense stream (32 codes in `bits` words).
///
/// Zero points come in two conventions (ZeroFormat): v1, the original GPTQ checkpoints
/// (AutoGPTQ "gptq"), store zero - 1, and readers add 1 back; v2 (AutoGPTQ "gptq_v2") stores the
/// zero point itself. v1 cannot store a zero point of 0.
///
/// Codes, zero points and packed words are `Eigen::Matrix<std::int32_t, ...>`: int32 is the
/// checkpoint element type and holds every v1 zero point (up to 2^bits), at 4 bytes per weight
/// while unpacked. Inputs may be any integer (or integral-valued floating) Eigen expression.
///
/// \code
/// #include <q2n/packing.hpp>
/// #include <q2n/io/safetensors.hpp>
///
/// q2n::IntCodes codes = ...;   // rows x cols, values in [0, 15]
/// q2n::IntCodes zeros = ...;   // rows x groups, values in [0, 15]
/// Eigen::MatrixXf scales = ...;  // rows x groups
/// q2n::io::SafetensorsWriter w;
/// w.add("layer.qweight", q2n::pack_codes(codes, 4), q2n::io::DType::I32);
/// w.add("layer.qzeros", q2n::pack_zeros(zeros, 4, q2n::ZeroFormat::v1), q2n::io::DType::I32);
/// w.add("layer.scales", scales.transpose(), q2n::io::DType::F16);
/// // and back:
/// q2n::IntCodes codes2 = q2n::unpack_codes(q2n::io::SafetensorsReader(path)
///                                                .read_matrix<std::int32_t>("layer.qweight"), 4);
/// \endcode

#include <Eigen/Core>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "detail/check.hpp"

namespace q2n {

/// Integer codes or zero points as 32-bit integers, one per weight (rows x cols) or per group
/// (rows x groups); a storage's 8-bit q2n::CodeMatrix converts with .cast<std::int32_t>().
using IntCodes = Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic>;

/// Packed 32-bit words in checkpoint orientation; row-major, so its memory order is the C order
/// of the checkpoint tensor.
using PackedMatrix = Eigen::Matrix<std::int32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// How zero points are stored in `qzeros`.
enum class ZeroFormat {
  v1,  ///< zero - 1 (GPTQ-for-LLaMa, AutoGPTQ checkpoint_format "gptq"); zero must be >= 1
  v2   ///< zero as is (AutoGPTQ checkpoint_format "gptq_v2")
};

namespace detail {

inline void check_pack_bits(int bits, const char* function) {
  if (bits < 2 || bits > 8)
    fail(function, ": bits = ", bits, " is outside 2..8; pass bits in [2, 8]");
}

// Calls f with the expression itself when its coefficients are directly addressable, otherwise
// with its evaluated copy (products and other expressions without cheap coefficient access).
template <class D, class F>
decltype(auto) with_evaluated(const Eigen::MatrixBase<D>& m, F&& f) {
  if constexpr ((static_cast<unsigned>(D::Flags) & Eigen::DirectAccessBit) != 0) {
    return f(m.derived());
  } else {
    const typename D::PlainObject evaluated = m.derived();
    return f(evaluated);
  }
}

// The unsigned value of an integer (or integral floating) entry when it lies in [lo, hi];
// `ok` false otherwise.
template <class Scalar>
std::uint32_t checked_entry(Scalar v, std::int64_t lo, std::int64_t hi, bool& ok) {
  static_assert(std::is_arithmetic_v<Scalar> && !std::is_same_v<Scalar, bool>,
                "q2n packing: codes, zero points and packed words must be integer (or "
                "integral-valued floating) matrices; use .cast<std::int32_t>()");
  if constexpr (std::is_floating_point_v<Scalar>) {
    ok = std::isfinite(v) && v == std::trunc(v) && v >= static_cast<Scalar>(lo) &&
         v <= static_cast<Scalar>(hi);
    return ok ? static_cast<std::uint32_t>(static_cast<std::int64_t>(v)) : 0u;
  } else if constexpr (std::is_signed_v<Scalar>) {
    const auto w = static_cast<std::int64_t>(v);
    ok = w >= lo && w <= hi;
    return ok ? static_cast<std::uint32_t>(w) : 0u;  // modulo 2^32: a negative int32 keeps its bits
  } else {
    const auto w = static_cast<std::uint64_t>(v);
    ok = (lo <= 0 || w >= static_cast<std::uint64_t>(lo)) && w <= static_cast<std::uint64_t>(hi);
    return ok ? static_cast<std::uint32_t>(w) : 0u;
  }
}

template <class Scalar>
std::string entry_string(Scalar v) {
  if constexpr (std::is_floating_point_v<Scalar>) {
    return std::to_string(static_cast<double>(v));
  } else {
    return std::to_string(v);
  }
}

// The int32 with the same 32 bits as u.
inline std::int32_t as_int32(std::uint32_t u) {
  return static_cast<std::int32_t>(u <= 0x7FFFFFFFu
                                       ? static_cast<std::int64_t>(u)
                                       : static_cast<std::int64_t>(u) - (std::int64_t{1} << 32));
}

// Bits [pos, pos + bits) of the stream whose 32-bit words are word(0), word(1), ...
template <class Word>
std::uint32_t extract(Word&& word, std::int64_t pos, int bits) {
  const std::int64_t w = pos / 32;
  const int shift = static_cast<int>(pos % 32);
  std::uint64_t v = word(w) >> shift;
  if (shift + bits > 32) v |= static_cast<std::uint64_t>(word(w + 1)) << (32 - shift);
  return static_cast<std::uint32_t>(v & ((1u << bits) - 1u));
}

// Number of packed words for `count` values of `bits` bits; fails unless count * bits is a
// multiple of 32.
inline Eigen::Index packed_words(Eigen::Index count, int bits, const char* function,
                                 const char* what) {
  if ((count * bits) % 32 != 0) {
    const int multiple = 32 / (bits & -bits);  // 32 / largest power of two dividing bits
    fail(function, ": ", what, " = ", count, " times bits = ", bits,
         " is not a multiple of 32; pad ", what, " to a multiple of ", multiple);
  }
  return count * bits / 32;
}

}  // namespace detail

/// Packs quantization codes into the GPTQ `qweight` layout (see the file description).
/// \param codes rows x cols codes, each in [0, 2^bits - 1] (any integer Eigen expression).
/// \param bits  code width, 2..8; cols * bits must be a multiple of 32.
/// \return qweight, cols * bits / 32 x rows.
/// \throws std::invalid_argument for bits outside 2..8, a code outside its range, or cols * bits
///         not a multiple of 32.
template <class Derived>
PackedMatrix pack_codes(const Eigen::MatrixBase<Derived>& codes, int bits) {
  constexpr const char* fn = "q2n::pack_codes";
  detail::check_pack_bits(bits, fn);
  const Eigen::Index rows = codes.rows(), cols = codes.cols();
  const Eigen::Index words = detail::packed_words(cols, bits, fn, "cols");
  const std::int64_t maxq = (std::int64_t{1} << bits) - 1;
  Eigen::Matrix<std::uint32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> packed =
      Eigen::Matrix<std::uint32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>::Zero(words,
                                                                                          rows);
  detail::with_evaluated(codes, [&](const auto& c) {
    for (Eigen::Index k = 0; k < cols; ++k) {
      const std::int64_t pos = static_cast<std::int64_t>(k) * bits;
      const Eigen::Index w = static_cast<Eigen::Index>(pos / 32);
      const int shift = static_cast<int>(pos % 32);
      for (Eigen::Index r = 0; r < rows; ++r) {
        bool ok;
        const std::uint32_t v = detail::checked_entry(c.coeff(r, k), 0, maxq, ok);
        if (!ok) {
          detail::fail(fn, ": codes(", r, ", ", k, ") = ", detail::entry_string(c.coeff(r, k)),
                       " is outside 0..", maxq, " for bits = ", bits,
                       "; pass integer codes in [0, 2^bits - 1]");
        }
        packed(w, r) |= v << shift;
        if (shift + bits > 32) packed(w + 1, r) |= v >> (32 - shift);
      }
    }
  });
  return packed.unaryExpr([](std::uint32_t u) { return detail::as_int32(u); });
}

/// Unpacks a GPTQ `qweight` back into codes.
/// \param qweight packed words, words x rows (int32 bit patterns, e.g. as read from a
///                checkpoint; uint32 or wider integers holding 32-bit patterns also work).
/// \param bits    code width, 2..8; words * 32 must be a multiple of bits.
/// \return codes, rows x (words * 32 / bits), each in [0, 2^bits - 1].
template <class Derived>
IntCodes unpack_codes(const Eigen::MatrixBase<Derived>& qweight, int bits) {
  constexpr const char* fn = "q2n::unpack_codes";
  detail::check_pack_bits(bits, fn);
  const Eigen::Index words = qweight.rows(), rows = qweight.cols();
  if ((words * 32) % bits != 0) {
    detail::fail(fn, ": qweight has ", words,
                 " rows of words, which do not hold a whole number of ", bits,
                 "-bit codes; pass a qweight with a multiple of ", bits, " rows");
  }
  const Eigen::Index cols = words * 32 / bits;
  IntCodes codes(rows, cols);
  detail::with_evaluated(qweight, [&](const auto& q) {
    Eigen::Matrix<std::uint32_t, Eigen::Dynamic, 1> stream(words);
    for (Eigen::Index r = 0; r < rows; ++r) {
      for (Eigen::Index w = 0; w < words; ++w) {
        bool ok;
        stream(w) = detail::checked_entry(q.coeff(w, r), std::numeric_limits<std::int32_t>::min(),
                                          std::numeric_limits<std::uint32_t>::max(), ok);
        if (!ok) {
          detail::fail(fn, ": qweight(", w, ", ", r, ") = ", detail::entry_string(q.coeff(w, r)),
                       " is not a 32-bit word; pass int32 or uint32 words");
        }
      }
      for (Eigen::Index k = 0; k < cols; ++k) {
        codes(r, k) = static_cast<std::int32_t>(detail::extract(
            [&](std::int64_t i) { return stream(i); }, static_cast<std::int64_t>(k) * bits, bits));
      }
    }
  });
  return codes;
}

/// Packs zero points into the GPTQ `qzeros` layout (see the file description).
/// \param zeros  rows x groups zero points (q2n orientation; any integer Eigen expression), in
///               [0, 2^bits - 1] for ZeroFormat::v2 and in [1, 2^bits] for ZeroFormat::v1.
/// \param bits   code width, 2..8; rows * bits must be a multiple of 32.
/// \param format ZeroFormat::v1 stores zero - 1, ZeroFormat::v2 stores zero.
/// \return qzeros, groups x (rows * bits / 32).
/// \note A v1 file cannot represent zero point 0 (asymmetric quantization of a group with no
///       negative weight produces it); such zeros throw: write ZeroFormat::v2 instead.
template <class Derived>
PackedMatrix pack_zeros(const Eigen::MatrixBase<Derived>& zeros, int bits,
                        ZeroFormat format = ZeroFormat::v1) {
  constexpr const char* fn = "q2n::pack_zeros";
  detail::check_pack_bits(bits, fn);
  const Eigen::Index rows = zeros.rows(), groups = zeros.cols();
  const Eigen::Index words = detail::packed_words(rows, bits, fn, "rows");
  const std::int64_t offset = format == ZeroFormat::v1 ? 1 : 0;
  const std::int64_t lo = offset, hi = (std::int64_t{1} << bits) - 1 + offset;
  Eigen::Matrix<std::uint32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> packed =
      Eigen::Matrix<std::uint32_t, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>::Zero(groups,
                                                                                          words);
  detail::with_evaluated(zeros, [&](const auto& z) {
    for (Eigen::Index g = 0; g < groups; ++g) {
      for (Eigen::Index r = 0; r < rows; ++r) {
        bool ok;
        const std::uint32_t v = detail::checked_entry(z.coeff(r, g), lo, hi, ok);
        if (!ok) {
          detail::fail(fn, ": zeros(", r, ", ", g, ") = ", detail::entry_string(z.coeff(r, g)),
                       " is outside ", lo, "..", hi, " for bits = ", bits, " and ZeroFormat::",
                       format == ZeroFormat::v1 ? "v1 (which stores zero - 1); pass zeros in "
                                                  "[1, 2^bits] or use ZeroFormat::v2"
                                                : "v2; pass zeros in [0, 2^bits - 1]");
        }
        const std::uint32_t stored = v - static_cast<std::uint32_t>(offset);
        const std::int64_t pos = static_cast<std::int64_t>(r) * bits;
        const Eigen::Index w = static_cast<Eigen::Index>(pos / 32);
        const int shift = static_cast<int>(pos % 32);
        packed(g, w) |= stored << shift;
        if (shift + bits > 32) packed(g, w + 1) |= stored >> (32 - shift);
      }
    }
  });
  return packed.unaryExpr([](std::uint32_t u) { return detail::as_int32(u); });
}

/// Unpacks a GPTQ `qzeros` back into zero points.
/// \param qzeros packed words, groups x words (int32 bit patterns).
/// \param bits   code width, 2..8; words * 32 must be a multiple of bits.
/// \param format ZeroFormat::v1 adds 1 to each stored value, ZeroFormat::v2 does not.
/// \return zero points, rows x groups with rows = words * 32 / bits.
template <class Derived>
IntCodes unpack_zeros(const Eigen::MatrixBase<Derived>& qzeros, int bits,
                        ZeroFormat format = ZeroFormat::v1) {
  constexpr const char* fn = "q2n::unpack_zeros";
  detail::check_pack_bits(bits, fn);
  const Eigen::Index groups = qzeros.rows(), words = qzeros.cols();
  if ((words * 32) % bits != 0) {
    detail::fail(fn, ": qzeros has ", words,
                 " columns of words, which do not hold a whole number of ", bits,
                 "-bit zero points; pass a qzeros with a multiple of ", bits, " columns");
  }
  const Eigen::Index rows = words * 32 / bits;
  const std::int32_t offset = format == ZeroFormat::v1 ? 1 : 0;
  IntCodes zeros(rows, groups);
  detail::with_evaluated(qzeros, [&](const auto& q) {
    Eigen::Matrix<std::uint32_t, Eigen::Dynamic, 1> stream(words);
    for (Eigen::Index g = 0; g < groups; ++g) {
      for (Eigen::Index w = 0; w < words; ++w) {
        bool ok;
        stream(w) = detail::checked_entry(q.coeff(g, w), std::numeric_limits<std::int32_t>::min(),
                                          std::numeric_limits<std::uint32_t>::max(), ok);
        if (!ok) {
          detail::fail(fn, ": qzeros(", g, ", ", w, ") = ", detail::entry_string(q.coeff(g, w)),
                       " is not a 32-bit word; pass int32 or uint32 words");
        }
      }
      for (Eigen::Index r = 0; r < rows; ++r) {
        zeros(r, g) =
            static_cast<std::int32_t>(detail::extract([&](std::int64_t i) { return stream(i); },
                                                      static_cast<std::int64_t>(r) * bits, bits)) +
            offset;
      }
    }
  });
  return zeros;
}

}  // namespace q2n
