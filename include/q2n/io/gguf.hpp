#pragma once
/// \file io/gguf.hpp
/// Writing (and reading back) GGUF v3 files, the format llama.cpp loads: metadata key/values,
/// dense F32/F16/BF16 tensors, and the ggml block types that carry q2n's uniform codes
/// exactly (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0).
///
/// Layout (little-endian): `"GGUF"`, u32 version 3, u64 tensor count, u64 key/value count; the
/// key/values (`string key`, u32 value type, value; a string is a u64 byte count and UTF-8
/// bytes); the tensor infos (name, u32 n_dims, u64 ne[n_dims] with ne[0] the row length, u32
/// ggml type, u64 offset into the data section); zero padding to `general.alignment` (32); the
/// data section, every tensor at an aligned offset.
///
/// A matrix W (rows × cols, q2n's orientation: one output per row) is stored with
/// `ne = [cols, rows]`. Block types cut every row into blocks of 32 consecutive columns with
/// one fp16 scale `d` each (and an fp16 offset `m` for Q4_1/Q5_1):
///
/// | type | bytes per block | value of element t | carries exactly (per block) |
/// |---|---|---|---|
/// | Q4_0 | 18: d, 16 nibble bytes | `d·(n_t − 8)` | `s·(q − z)` with `q − z ∈ [−8, 7]`: symmetric ≤ 4-bit |
/// | Q4_1 | 20: d, m, 16 nibble bytes | `d·n_t + m` | `s·q + o` (≤ 4-bit), or `s·(q − z)` if `−s·z` is an fp16 number |
/// | Q5_0 | 22: d, 4 high-bit bytes, 16 nibble bytes | `d·(n_t − 16)` | `q − z ∈ [−16, 15]`: asymmetric ≤ 4-bit, symmetric 5-bit |
/// | Q5_1 | 24: d, m, 4 + 16 bytes | `d·n_t + m` | `s·q + o` (5-bit) |
/// | Q8_0 | 34: d, 32 int8 | `d·qs_t` | `q − z ∈ [−128, 127]`: everything up to asymmetric 7-bit and symmetric 8-bit |
///
/// Nibbles: element t < 16 is the low nibble of byte t, element t ≥ 16 the high nibble of byte
/// t − 16; for the 5-bit types bit 4 of element t is bit t of the little-endian u32 of the 4
/// high-bit bytes.
///
/// A storage has an exact carrier (gguf_carrier()) when it is a single uniform grid whose every
/// run of 32 columns [32k, 32k + 32) lies in one group (group sizes that are multiples of 32,
/// or one group per row, with cols a multiple of 32; not GPTQ's act-order groups), whose scales
/// (and offsets) are fp16 numbers (q2n::round_values) and whose codes fit one of the rows
/// above. Storages with full-precision columns, binarized entries, a codebook or transforms
/// (OWQ, PB-LLM, QuIP, QuaRot) have none: write `dequantize(storage)` densely instead.
///
/// GgufReader parses a file and decodes any of these types back to float, for tests and
/// tools; every inconsistency raises q2n::io::FormatError naming the file.
///
/// \code
/// q2n::io::GgufWriter w;
/// w.set_string("general.architecture", "llama");
/// w.add_dense("token_embd.weight", embeddings);               // F32, ne = [cols, rows]
/// w.add_quantized("blk.0.attn_v.weight", result.storage);     // Q4_0 / Q5_0 / Q8_0 as exact
/// w.write("model.gguf");
/// q2n::io::GgufReader r("model.gguf");
/// Eigen::MatrixXf v = r.dequantize("blk.0.attn_v.weight");    // == dequantize(result.storage)
/// \endcode

#include "../detail/atomic_file.hpp"
#include "../detail/half.hpp"
#include "format_error.hpp"

#include <q2n/storage.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "q2n/io/gguf.hpp supports little-endian hosts only (GGUF is little-endian)");
#endif

namespace q2n::io {

/// ggml tensor types q2n writes and reads (the enumerator values are the codes in the file).
enum class GgmlType : std::uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  BF16 = 30,
};

/// "F32", "Q4_0", ...
inline const char* ggml_type_name(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return "F32";
    case GgmlType::F16: return "F16";
    case GgmlType::Q4_0: return "Q4_0";
    case GgmlType::Q4_1: return "Q4_1";
    case GgmlType::Q5_0: return "Q5_0";
    case GgmlType::Q5_1: return "Q5_1";
    case GgmlType::Q8_0: return "Q8_0";
    case GgmlType::BF16: return "BF16";
  }
  return "?";
}

/// The type with file code `code`, or nothing for codes q2n does not handle.
inline std::optional<GgmlType> ggml_type_from_code(std::uint32_t code) {
  for (GgmlType t : {GgmlType::F32, GgmlType::F16, GgmlType::Q4_0, GgmlType::Q4_1,
                     GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0, GgmlType::BF16})
    if (static_cast<std::uint32_t>(t) == code) return t;
  return std::nullopt;
}

/// Elements per block (1 for the dense types).
inline std::size_t ggml_block_elements(GgmlType t) {
  return t == GgmlType::F32 || t == GgmlType::F16 || t == GgmlType::BF16 ? 1 : 32;
}

/// Bytes per block.
inline std::size_t ggml_block_bytes(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return 4;
    case GgmlType::F16:
    case GgmlType::BF16: return 2;
    case GgmlType::Q4_0: return 18;
    case GgmlType::Q4_1: return 20;
    case GgmlType::Q5_0: return 22;
    case GgmlType::Q5_1: return 24;
    case GgmlType::Q8_0: return 34;
  }
  return 0;
}

/// GGUF metadata value types (the enumerator values are the codes in the file).
enum class GgufType : std::uint32_t {
  u8 = 0, i8 = 1, u16 = 2, i16 = 3, u32 = 4, i32 = 5, f32 = 6, boolean = 7,
  string = 8, array = 9, u64 = 10, i64 = 11, f64 = 12,
};

/// One metadata value. Integers are held in `i` (signed types) or `u` (unsigned, bool),
/// floating point in `f`, strings in `s`, arrays in `array` with their element type.
struct GgufValue {
  GgufType type = GgufType::u32;
  GgufType element_type = GgufType::u32;  ///< arrays only
  std::int64_t i = 0;
  std::uint64_t u = 0;
  double f = 0;
  std::string s;
  std::vector<GgufValue> array;

  static GgufValue of(GgufType t, std::uint64_t v) { GgufValue x; x.type = t; x.u = v; return x; }
  static GgufValue of_signed(GgufType t, std::int64_t v) { GgufValue x; x.type = t; x.i = v; return x; }
  static GgufValue of_float(GgufType t, double v) { GgufValue x; x.type = t; x.f = v; return x; }
  static GgufValue of_string(std::string v) {
    GgufValue x;
    x.type = GgufType::string;
    x.s = std::move(v);
    return x;
  }
  static GgufValue of_array(GgufType element, std::vector<GgufValue> items) {
    GgufValue x;
    x.type = GgufType::array;
    x.element_type = element;
    x.array = std::move(items);
    return x;
  }
};

namespace detail {

inline bool is_unsigned(GgufType t) {
  return t == GgufType::u8 || t == GgufType::u16 || t == GgufType::u32 || t == GgufType::u64 ||
         t == GgufType::boolean;
}
inline bool is_signed(GgufType t) {
  return t == GgufType::i8 || t == GgufType::i16 || t == GgufType::i32 || t == GgufType::i64;
}
inline std::size_t scalar_bytes(GgufType t) {
  switch (t) {
    case GgufType::u8: case GgufType::i8: case GgufType::boolean: return 1;
    case GgufType::u16: case GgufType::i16: return 2;
    case GgufType::u32: case GgufType::i32: case GgufType::f32: return 4;
    case GgufType::u64: case GgufType::i64: case GgufType::f64: return 8;
    default: return 0;
  }
}

inline void put_le(std::string& out, std::uint64_t v, std::size_t bytes) {
  for (std::size_t k = 0; k < bytes; ++k) out.push_back(static_cast<char>((v >> (8 * k)) & 0xFF));
}
inline void put_string(std::string& out, const std::string& s) {
  put_le(out, s.size(), 8);
  out += s;
}
inline void put_f16(unsigned char* p, std::uint16_t h) {
  p[0] = static_cast<unsigned char>(h & 0xFF);
  p[1] = static_cast<unsigned char>(h >> 8);
}

inline void put_value(std::string& out, const GgufValue& v) {
  switch (v.type) {
    case GgufType::string: put_string(out, v.s); return;
    case GgufType::array:
      put_le(out, static_cast<std::uint32_t>(v.element_type), 4);
      put_le(out, v.array.size(), 8);
      for (const GgufValue& e : v.array) put_value(out, e);
      return;
    case GgufType::f32: {
      const std::uint32_t bits = q2n::detail::float_bits(static_cast<float>(v.f));
      put_le(out, bits, 4);
      return;
    }
    case GgufType::f64: {
      std::uint64_t bits;
      std::memcpy(&bits, &v.f, 8);
      put_le(out, bits, 8);
      return;
    }
    default:
      put_le(out, is_signed(v.type) ? static_cast<std::uint64_t>(v.i) : v.u, scalar_bytes(v.type));
  }
}

// The fp16 bit pattern of `v` when v is exactly an fp16 number, else nothing.
inline std::optional<std::uint16_t> exact_f16(double v) {
  const std::uint16_t h = q2n::detail::double_to_half(v);
  if (static_cast<double>(q2n::detail::half_to_float(h)) != v) return std::nullopt;
  return h;
}

}  // namespace detail

/// Why a storage has no exact GGUF block carrier, or nothing when it has one; `type` receives
/// the carrier gguf_carrier() picks. Rules: one uniform grid, no other part, no transforms;
/// cols a multiple of 32 and every run of 32 columns in one group; then, zero-point form:
/// symmetric grids (every z = 2^(bits−1)) of ≤ 4 bits → Q4_0, 5 bits → Q5_0, 6..8 bits → Q8_0;
/// other grids of ≤ 4 bits → Q4_1 when every −s·z is an fp16 number, else Q5_0; 5..7 bits
/// → Q8_0; offset form: ≤ 4 bits → Q4_1, 5 bits → Q5_1. Scales (offsets) must be fp16 numbers.
template <class Scalar>
std::optional<std::string> gguf_carrier_refusal(const QuantStorage<Scalar>& s, GgmlType* type = nullptr) {
  const auto why = [](std::string w) { return std::optional<std::string>(std::move(w)); };
  if (s.full_precision || s.binarized || s.codebook || !s.uniform)
    return why("the storage holds " +
               std::string(s.full_precision ? "full-precision columns (OWQ)"
                           : s.binarized    ? "binarized entries (PB-LLM)"
                           : s.codebook     ? "a codebook"
                                            : "no uniform grid") +
               ", which no GGUF block type holds; write dequantize(storage) as a dense tensor");
  if (!s.transforms.identity())
    return why("the storage is quantized in a transformed basis, which GGUF block types cannot "
               "express; write dequantize(storage) as a dense tensor");
  const auto& u = *s.uniform;
  if (s.cols % 32 != 0)
    return why("cols = " + std::to_string(s.cols) + " is not a multiple of 32, the GGUF block length");
  for (Eigen::Index j = 0; j < s.cols; ++j)
    if (u.g_idx(j) != u.g_idx(j - j % 32))
      return why("columns " + std::to_string(j - j % 32) + " and " + std::to_string(j) +
                 " share a block of 32 but lie in groups " + std::to_string(u.g_idx(j - j % 32)) +
                 " and " + std::to_string(u.g_idx(j)) +
                 " (act-order groups, or a group size that is not a multiple of 32); quantize "
                 "with contiguous groups (GPTQ: static groups) of a multiple of 32 columns");
  for (Eigen::Index g = 0; g < u.scales.cols(); ++g)
    for (Eigen::Index r = 0; r < s.rows; ++r) {
      if (!detail::exact_f16(static_cast<double>(u.scales(r, g))))
        return why("scales(" + std::to_string(r) + ", " + std::to_string(g) + ") = " +
                   std::to_string(static_cast<double>(u.scales(r, g))) +
                   " is not an fp16 number; round the storage first (q2n::round_values)");
      if (u.form == AffineForm::offset && !detail::exact_f16(static_cast<double>(u.offsets(r, g))))
        return why("offsets(" + std::to_string(r) + ", " + std::to_string(g) +
                   ") is not an fp16 number; round the storage first (q2n::round_values)");
    }
  GgmlType t;
  if (u.form == AffineForm::offset) {
    if (u.bits > 5)
      return why("an offset-form grid of " + std::to_string(u.bits) +
                 " bits has no GGUF carrier (Q4_1 holds 4, Q5_1 5 bits)");
    t = u.bits <= 4 ? GgmlType::Q4_1 : GgmlType::Q5_1;
  } else {
    const double half = static_cast<double>(1 << (u.bits - 1));
    const bool sym = (u.zeros.array().template cast<double>() == half).all();
    bool offset_exact = u.bits <= 4;
    for (Eigen::Index g = 0; g < u.zeros.cols() && offset_exact; ++g)
      for (Eigen::Index r = 0; r < s.rows && offset_exact; ++r)
        offset_exact = detail::exact_f16(-static_cast<double>(u.scales(r, g)) *
                                         static_cast<double>(u.zeros(r, g))).has_value();
    if (sym) t = u.bits <= 4 ? GgmlType::Q4_0 : u.bits == 5 ? GgmlType::Q5_0 : GgmlType::Q8_0;
    else if (u.bits <= 4) t = offset_exact ? GgmlType::Q4_1 : GgmlType::Q5_0;
    else if (u.bits <= 7) t = GgmlType::Q8_0;
    else
      return why("an asymmetric 8-bit grid has codes minus zero points in [-255, 255], which no "
                 "GGUF block type holds; quantize with a symmetric grid or at most 7 bits");
  }
  if (type) *type = t;
  return std::nullopt;
}

/// The exact carrier of a storage (see gguf_carrier_refusal for the rules).
/// \throws std::invalid_argument saying why there is none and what to do instead
template <class Scalar>
GgmlType gguf_carrier(const QuantStorage<Scalar>& s) {
  q2n::detail::check_storage(s, "q2n::io::gguf_carrier");
  GgmlType t = GgmlType::F32;
  if (auto why = gguf_carrier_refusal(s, &t)) q2n::detail::fail("q2n::io::gguf_carrier: ", *why);
  return t;
}

/// Collects metadata and tensors and writes a GGUF v3 file.
class GgufWriter {
 public:
  /// Alignment of the data section and of every tensor (written as `general.alignment`).
  static constexpr std::uint32_t kAlignment = 32;

  GgufWriter() { set("general.alignment", GgufValue::of(GgufType::u32, kAlignment)); }

  /// Sets metadata `key` (replacing an earlier value of the same key).
  void set(const std::string& key, GgufValue v) {
    if (key.empty()) q2n::detail::fail("q2n::io::GgufWriter::set: key is empty; name the key");
    for (auto& kv : kv_)
      if (kv.first == key) {
        kv.second = std::move(v);
        return;
      }
    kv_.emplace_back(key, std::move(v));
  }
  void set_u32(const std::string& key, std::uint32_t v) { set(key, GgufValue::of(GgufType::u32, v)); }
  void set_i32(const std::string& key, std::int32_t v) { set(key, GgufValue::of_signed(GgufType::i32, v)); }
  void set_f32(const std::string& key, float v) { set(key, GgufValue::of_float(GgufType::f32, v)); }
  void set_bool(const std::string& key, bool v) { set(key, GgufValue::of(GgufType::boolean, v ? 1 : 0)); }
  void set_string(const std::string& key, std::string v) { set(key, GgufValue::of_string(std::move(v))); }
  void set_strings(const std::string& key, const std::vector<std::string>& v) {
    std::vector<GgufValue> items;
    for (const auto& x : v) items.push_back(GgufValue::of_string(x));
    set(key, GgufValue::of_array(GgufType::string, std::move(items)));
  }
  void set_i32s(const std::string& key, const std::vector<std::int32_t>& v) {
    std::vector<GgufValue> items;
    for (auto x : v) items.push_back(GgufValue::of_signed(GgufType::i32, x));
    set(key, GgufValue::of_array(GgufType::i32, std::move(items)));
  }

  /// Adds a dense tensor: a matrix M (rows × cols) as `ne = [cols, rows]`, a vector (one
  /// column) as `ne = [n]`. F16 and BF16 round to nearest, ties to even.
  /// \param row_order empty, or a permutation: row i of the file is row row_order[i] of M
  template <class Derived>
  void add_dense(const std::string& name, const Eigen::MatrixBase<Derived>& M,
                 GgmlType type = GgmlType::F32, const std::vector<Eigen::Index>& row_order = {}) {
    const char* fn = "q2n::io::GgufWriter::add_dense";
    if (type != GgmlType::F32 && type != GgmlType::F16 && type != GgmlType::BF16)
      q2n::detail::fail(fn, ": tensor '", name, "': type ", ggml_type_name(type),
                        " is not dense; pass F32, F16 or BF16 (or use add_quantized)");
    const bool vector = M.cols() == 1;
    const Eigen::Index rows = vector ? 1 : M.rows(), cols = vector ? M.rows() : M.cols();
    check_rows(fn, name, rows, row_order);
    q2n::detail::require_finite(M, fn, "M");
    Entry e = make_entry(fn, name, type, vector ? std::vector<std::uint64_t>{std::uint64_t(cols)}
                                                : std::vector<std::uint64_t>{std::uint64_t(cols), std::uint64_t(rows)});
    const std::size_t es = ggml_block_bytes(type);
    for (Eigen::Index i = 0; i < rows; ++i) {
      const Eigen::Index src = row_order.empty() ? i : row_order[static_cast<std::size_t>(i)];
      for (Eigen::Index j = 0; j < cols; ++j) {
        const double v = static_cast<double>(vector ? M(j, 0) : M(src, j));
        unsigned char* p = e.bytes.data() + (static_cast<std::size_t>(i * cols + j)) * es;
        if (type == GgmlType::F32) {
          const std::uint32_t b = q2n::detail::float_bits(q2n::detail::double_to_float(v));
          for (int k = 0; k < 4; ++k) p[k] = static_cast<unsigned char>((b >> (8 * k)) & 0xFF);
        } else {
          detail::put_f16(p, type == GgmlType::F16 ? q2n::detail::double_to_half(v)
                                                   : q2n::detail::double_to_bf16(v));
        }
      }
    }
    tensors_.push_back(std::move(e));
  }

  /// Adds a quantized storage as ggml blocks of `type` (default: gguf_carrier(storage)).
  /// The file's values equal dequantize(storage) exactly, element for element.
  /// \param row_order empty, or a permutation: row i of the file is storage row row_order[i]
  ///        (whole rows move, so any permutation is lossless)
  /// \throws std::invalid_argument when the storage has no exact carrier, or not in `type`,
  ///         naming the reason (see gguf_carrier_refusal)
  template <class Scalar>
  void add_quantized(const std::string& name, const QuantStorage<Scalar>& s,
                     std::optional<GgmlType> type = std::nullopt,
                     const std::vector<Eigen::Index>& row_order = {}) {
    const char* fn = "q2n::io::GgufWriter::add_quantized";
    q2n::detail::check_storage(s, fn);
    GgmlType auto_type = GgmlType::F32;
    if (auto why = gguf_carrier_refusal(s, &auto_type))
      q2n::detail::fail(fn, ": tensor '", name, "': ", *why);
    const GgmlType t = type.value_or(auto_type);
    if (ggml_block_elements(t) != 32)
      q2n::detail::fail(fn, ": tensor '", name, "': ", ggml_type_name(t),
                        " is not a block type; pass Q4_0, Q4_1, Q5_0, Q5_1 or Q8_0 (or use add_dense)");
    check_rows(fn, name, s.rows, row_order);
    const auto& u = *s.uniform;
    Entry e = make_entry(fn, name, t, {std::uint64_t(s.cols), std::uint64_t(s.rows)});
    const std::size_t bb = ggml_block_bytes(t);
    const Eigen::Index blocks = s.cols / 32;
    std::array<int, 32> n{};
    for (Eigen::Index i = 0; i < s.rows; ++i) {
      const Eigen::Index r = row_order.empty() ? i : row_order[static_cast<std::size_t>(i)];
      for (Eigen::Index k = 0; k < blocks; ++k) {
        const int g = u.g_idx(k * 32);
        const double d = static_cast<double>(u.scales(r, g));
        const bool zp = u.form == AffineForm::zero_point;
        const int z = zp ? static_cast<int>(u.zeros(r, g)) : 0;
        const double m = zp ? -d * z : static_cast<double>(u.offsets(r, g));
        // Element values in the type's own terms, and their range.
        int lo = 0, hi = 0, bias = 0;
        bool with_min = false;
        switch (t) {
          case GgmlType::Q4_0: bias = 8; hi = 15; break;
          case GgmlType::Q5_0: bias = 16; hi = 31; break;
          case GgmlType::Q8_0: lo = -128; hi = 127; break;
          case GgmlType::Q4_1: hi = 15; with_min = true; break;
          case GgmlType::Q5_1: hi = 31; with_min = true; break;
          default: break;
        }
        for (int tt = 0; tt < 32; ++tt) {
          const int q = u.codes(r, k * 32 + tt);
          n[static_cast<std::size_t>(tt)] = with_min ? q : q - z + bias;
          if (n[static_cast<std::size_t>(tt)] < lo || n[static_cast<std::size_t>(tt)] > hi)
            q2n::detail::fail(fn, ": tensor '", name, "': code ", q, " with zero point ", z,
                              " at (", r, ", ", k * 32 + tt, ") does not fit ", ggml_type_name(t),
                              " (its element range is [", lo - bias, ", ", hi - bias,
                              "]); let gguf_carrier pick the type");
        }
        const auto dh = detail::exact_f16(d);
        const auto mh = detail::exact_f16(m);
        if (!dh) q2n::detail::fail(fn, ": tensor '", name, "': scale of row ", r, " is not fp16");
        if (with_min && !mh)
          q2n::detail::fail(fn, ": tensor '", name, "': the offset −s·z = ", m, " of row ", r,
                            ", group ", g, " is not an fp16 number, so ", ggml_type_name(t),
                            " cannot hold it exactly; use Q5_0 (or let gguf_carrier pick)");
        unsigned char* p = e.bytes.data() + static_cast<std::size_t>(i * blocks + k) * bb;
        detail::put_f16(p, *dh);
        p += 2;
        if (with_min) {
          detail::put_f16(p, *mh);
          p += 2;
        }
        if (t == GgmlType::Q8_0) {
          for (int tt = 0; tt < 32; ++tt)
            p[tt] = static_cast<unsigned char>(static_cast<std::int8_t>(n[static_cast<std::size_t>(tt)]));
          continue;
        }
        if (t == GgmlType::Q5_0 || t == GgmlType::Q5_1) {
          std::uint32_t qh = 0;
          for (int tt = 0; tt < 32; ++tt)
            qh |= static_cast<std::uint32_t>((n[static_cast<std::size_t>(tt)] >> 4) & 1) << tt;
          for (int b = 0; b < 4; ++b) p[b] = static_cast<unsigned char>((qh >> (8 * b)) & 0xFF);
          p += 4;
        }
        for (int b = 0; b < 16; ++b)
          p[b] = static_cast<unsigned char>((n[static_cast<std::size_t>(b)] & 15) |
                                            ((n[static_cast<std::size_t>(b + 16)] & 15) << 4));
      }
    }
    tensors_.push_back(std::move(e));
  }

  /// Number of tensors added so far.
  std::size_t tensor_count() const { return tensors_.size(); }

  /// The complete file.
  std::vector<char> to_bytes() const {
    std::string head;
    head += "GGUF";
    detail::put_le(head, 3, 4);
    detail::put_le(head, tensors_.size(), 8);
    detail::put_le(head, kv_.size(), 8);
    for (const auto& kv : kv_) {
      detail::put_string(head, kv.first);
      detail::put_le(head, static_cast<std::uint32_t>(kv.second.type), 4);
      detail::put_value(head, kv.second);
    }
    std::uint64_t offset = 0;
    std::vector<std::uint64_t> offsets;
    for (const Entry& e : tensors_) {
      detail::put_string(head, e.name);
      detail::put_le(head, e.ne.size(), 4);
      for (auto x : e.ne) detail::put_le(head, x, 8);
      detail::put_le(head, static_cast<std::uint32_t>(e.type), 4);
      detail::put_le(head, offset, 8);
      offsets.push_back(offset);
      offset = padded(offset + e.bytes.size());
    }
    head.append(padded(head.size()) - head.size(), '\0');
    std::vector<char> out(head.begin(), head.end());
    out.resize(head.size() + offset, '\0');
    for (std::size_t k = 0; k < tensors_.size(); ++k)
      std::memcpy(out.data() + head.size() + offsets[k], tensors_[k].bytes.data(),
                  tensors_[k].bytes.size());
    return out;
  }

  /// Writes the file to `path + ".tmp"` and renames it to `path`.
  /// \throws std::runtime_error if writing or renaming fails
  void write(const std::string& path) const {
    const std::vector<char> bytes = to_bytes();
    q2n::detail::write_file_atomically(path, "q2n::io::GgufWriter::write", [&](std::ofstream& out) {
      out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    });
  }

 private:
  struct Entry {
    std::string name;
    GgmlType type;
    std::vector<std::uint64_t> ne;
    std::vector<unsigned char> bytes;
  };

  static std::uint64_t padded(std::uint64_t n) { return (n + kAlignment - 1) / kAlignment * kAlignment; }

  static void check_rows(const char* fn, const std::string& name, Eigen::Index rows,
                         const std::vector<Eigen::Index>& order) {
    if (order.empty()) return;
    std::vector<char> seen(static_cast<std::size_t>(rows), 0);
    bool ok = static_cast<Eigen::Index>(order.size()) == rows;
    for (std::size_t i = 0; ok && i < order.size(); ++i) {
      ok = order[i] >= 0 && order[i] < rows && !seen[static_cast<std::size_t>(order[i])];
      if (ok) seen[static_cast<std::size_t>(order[i])] = 1;
    }
    if (!ok)
      q2n::detail::fail(fn, ": tensor '", name, "': row_order is not a permutation of 0..",
                        rows - 1, "; pass one index per row, each once (or none)");
  }

  Entry make_entry(const char* fn, const std::string& name, GgmlType type,
                   std::vector<std::uint64_t> ne) const {
    if (name.empty() || name.size() > 64)
      q2n::detail::fail(fn, ": tensor name '", name, "' must have 1 to 64 bytes");
    for (const Entry& e : tensors_)
      if (e.name == name) q2n::detail::fail(fn, ": tensor '", name, "' was already added");
    std::uint64_t numel = 1;
    for (auto x : ne) numel *= x;
    Entry e{name, type, std::move(ne), {}};
    e.bytes.resize(static_cast<std::size_t>(numel / ggml_block_elements(type) * ggml_block_bytes(type)));
    return e;
  }

  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<Entry> tensors_;
};

/// One tensor of a GGUF file.
struct GgufTensorInfo {
  std::string name;
  std::vector<std::uint64_t> ne;  ///< ne[0] = row length
  GgmlType type = GgmlType::F32;
  std::uint64_t offset = 0;       ///< from the start of the data section
  std::uint64_t bytes = 0;
  std::uint64_t rows() const {
    std::uint64_t r = 1;
    for (std::size_t k = 1; k < ne.size(); ++k) r *= ne[k];
    return r;
  }
};

/// Reads a GGUF file (v2 or v3): metadata and tensor infos when constructed, tensor data on
/// request. Validation (FormatError naming the file): magic and version, string and array
/// lengths within the file, known value and tensor types, 1..4 dimensions whose row length is
/// a multiple of the type's block, aligned offsets, tensors inside the file and not overlapping.
class GgufReader {
 public:
  explicit GgufReader(const std::string& path) : path_(path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw std::runtime_error(where() + "cannot open the file: " + std::strerror(errno));
    bytes_.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    parse();
  }

  const std::string& path() const { return path_; }
  std::uint32_t version() const { return version_; }
  /// Metadata in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  /// The value of `key`. \throws FormatError when the file has no such key
  const GgufValue& value(const std::string& key) const {
    for (const auto& kv : kv_)
      if (kv.first == key) return kv.second;
    throw FormatError(where() + "has no metadata key '" + key + "'");
  }
  bool contains_key(const std::string& key) const {
    for (const auto& kv : kv_)
      if (kv.first == key) return true;
    return false;
  }
  /// Tensor infos in file order.
  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  /// Byte offset of the data section in the file (tensor offsets count from here).
  std::size_t data_offset() const { return data_start_; }
  /// The info of tensor `name`. \throws std::invalid_argument when there is none
  const GgufTensorInfo& info(const std::string& name) const {
    for (const auto& t : tensors_)
      if (t.name == name) return t;
    q2n::detail::fail("q2n::io::GgufReader::info: '", path_, "' has no tensor '", name, "'");
  }
  /// The raw bytes of tensor `name`.
  std::vector<unsigned char> raw(const std::string& name) const {
    const auto& t = info(name);
    const auto* p = reinterpret_cast<const unsigned char*>(bytes_.data()) + data_start_ + t.offset;
    return std::vector<unsigned char>(p, p + t.bytes);
  }
  /// Tensor `name` decoded to float, rows = ne[1]·ne[2]·…, cols = ne[0] (a vector: 1 × n); a
  /// tensor without elements (a zero dimension) is 0 × 0.
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> dequantize(
      const std::string& name) const {
    const auto& t = info(name);
    // A zero dimension holds no bytes, so the file's size bounds none of the others: their
    // product could be any number (or wrap), and looping over it would never end.
    for (auto n : t.ne)
      if (n == 0) return {};
    const Eigen::Index rows = static_cast<Eigen::Index>(t.rows());
    const Eigen::Index cols = static_cast<Eigen::Index>(t.ne[0]);
    Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> out(rows, cols);
    const auto* base = reinterpret_cast<const unsigned char*>(bytes_.data()) + data_start_ + t.offset;
    const std::size_t bb = ggml_block_bytes(t.type);
    const std::size_t be = ggml_block_elements(t.type);
    for (Eigen::Index r = 0; r < rows; ++r)
      for (Eigen::Index b = 0; b < cols / static_cast<Eigen::Index>(be); ++b)
        decode_block(t.type, base + (static_cast<std::size_t>(r) * (static_cast<std::size_t>(cols) / be) +
                                     static_cast<std::size_t>(b)) * bb,
                     out.data() + r * cols + b * static_cast<Eigen::Index>(be));
    return out;
  }

  /// Decodes one block of `type` at `p` into `out` (ggml_block_elements(type) floats).
  static void decode_block(GgmlType type, const unsigned char* p, float* out) {
    auto f16 = [](const unsigned char* q) {
      return q2n::detail::half_to_float(static_cast<std::uint16_t>(q[0] | (q[1] << 8)));
    };
    switch (type) {
      case GgmlType::F32: {
        std::uint32_t b = 0;
        for (int k = 3; k >= 0; --k) b = (b << 8) | p[k];
        out[0] = q2n::detail::bits_float(b);
        return;
      }
      case GgmlType::F16: out[0] = f16(p); return;
      case GgmlType::BF16:
        out[0] = q2n::detail::bf16_to_float(static_cast<std::uint16_t>(p[0] | (p[1] << 8)));
        return;
      case GgmlType::Q8_0: {
        const float d = f16(p);
        for (int k = 0; k < 32; ++k) out[k] = d * static_cast<float>(static_cast<std::int8_t>(p[2 + k]));
        return;
      }
      default: break;
    }
    const bool with_min = type == GgmlType::Q4_1 || type == GgmlType::Q5_1;
    const bool five = type == GgmlType::Q5_0 || type == GgmlType::Q5_1;
    const float d = f16(p);
    const float m = with_min ? f16(p + 2) : 0.0f;
    const unsigned char* q = p + (with_min ? 4 : 2);
    std::uint32_t qh = 0;
    if (five) {
      qh = static_cast<std::uint32_t>(q[0]) | (static_cast<std::uint32_t>(q[1]) << 8) |
           (static_cast<std::uint32_t>(q[2]) << 16) | (static_cast<std::uint32_t>(q[3]) << 24);
      q += 4;
    }
    for (int k = 0; k < 32; ++k) {
      int n = k < 16 ? (q[k] & 15) : (q[k - 16] >> 4);
      if (five) n |= static_cast<int>((qh >> k) & 1u) << 4;
      out[k] = with_min ? d * static_cast<float>(n) + m
                        : d * static_cast<float>(n - (five ? 16 : 8));
    }
  }

 private:
  std::string where() const { return "q2n::io::GgufReader: '" + path_ + "': "; }

  [[noreturn]] void bad(const std::string& what) const { throw FormatError(where() + what); }

  std::uint64_t take(std::size_t n) {
    if (pos_ + n > bytes_.size() || pos_ + n < pos_)
      bad("truncated at byte " + std::to_string(pos_) + " (needs " + std::to_string(n) + " more)");
    std::uint64_t v = 0;
    for (std::size_t k = n; k-- > 0;) v = (v << 8) | static_cast<unsigned char>(bytes_[pos_ + k]);
    pos_ += n;
    return v;
  }
  std::string take_string() {
    const std::uint64_t n = take(8);
    if (n > bytes_.size() - pos_)
      bad("a string at byte " + std::to_string(pos_ - 8) + " claims " + std::to_string(n) +
          " bytes, past the end of the file");
    std::string s(bytes_.data() + pos_, static_cast<std::size_t>(n));
    pos_ += static_cast<std::size_t>(n);
    return s;
  }
  GgufValue take_value(std::uint32_t code, int depth) {
    if (code > 12) bad("unknown metadata value type " + std::to_string(code));
    GgufValue v;
    v.type = static_cast<GgufType>(code);
    switch (v.type) {
      case GgufType::string: v.s = take_string(); break;
      case GgufType::array: {
        if (depth > 2) bad("arrays nest too deeply");
        const std::uint32_t et = static_cast<std::uint32_t>(take(4));
        const std::uint64_t n = take(8);
        if (n > bytes_.size() - pos_) bad("an array claims " + std::to_string(n) + " elements, more than the file holds");
        v.element_type = static_cast<GgufType>(et);
        v.array.reserve(static_cast<std::size_t>(n));
        for (std::uint64_t k = 0; k < n; ++k) v.array.push_back(take_value(et, depth + 1));
        break;
      }
      case GgufType::f32: v.f = q2n::detail::bits_float(static_cast<std::uint32_t>(take(4))); break;
      case GgufType::f64: {
        const std::uint64_t b = take(8);
        std::memcpy(&v.f, &b, 8);
        break;
      }
      default: {
        const std::size_t n = detail::scalar_bytes(v.type);
        const std::uint64_t raw = take(n);
        if (detail::is_signed(v.type)) {
          const int shift = static_cast<int>(64 - 8 * n);
          v.i = static_cast<std::int64_t>(raw << shift) >> shift;
        } else {
          v.u = raw;
          if (v.type == GgufType::boolean && raw > 1) bad("a bool value is " + std::to_string(raw));
        }
      }
    }
    return v;
  }

  void parse() {
    if (bytes_.size() < 24 || std::memcmp(bytes_.data(), "GGUF", 4) != 0)
      bad("does not start with the GGUF magic (not a GGUF file, or truncated)");
    pos_ = 4;
    version_ = static_cast<std::uint32_t>(take(4));
    if (version_ != 2 && version_ != 3) bad("version " + std::to_string(version_) + " is not 2 or 3");
    const std::uint64_t n_tensors = take(8), n_kv = take(8);
    if (n_tensors > bytes_.size() || n_kv > bytes_.size()) bad("tensor or key counts exceed the file size");
    std::uint64_t alignment = 32;
    for (std::uint64_t k = 0; k < n_kv; ++k) {
      std::string key = take_string();
      const std::uint32_t code = static_cast<std::uint32_t>(take(4));
      GgufValue v = take_value(code, 0);
      if (key == "general.alignment") {
        if (v.type != GgufType::u32 || v.u == 0 || (v.u & (v.u - 1)) != 0)
          bad("general.alignment is not a power-of-two u32");
        alignment = v.u;
      }
      for (const auto& kv : kv_)
        if (kv.first == key) bad("metadata key '" + key + "' appears twice");
      kv_.emplace_back(std::move(key), std::move(v));
    }
    for (std::uint64_t k = 0; k < n_tensors; ++k) {
      GgufTensorInfo t;
      t.name = take_string();
      const std::uint32_t dims = static_cast<std::uint32_t>(take(4));
      if (dims < 1 || dims > 4) bad("tensor '" + t.name + "' has " + std::to_string(dims) + " dimensions");
      for (std::uint32_t d = 0; d < dims; ++d) t.ne.push_back(take(8));
      const std::uint32_t code = static_cast<std::uint32_t>(take(4));
      const auto type = ggml_type_from_code(code);
      if (!type) bad("tensor '" + t.name + "' has ggml type " + std::to_string(code) + ", which q2n does not read");
      t.type = *type;
      t.offset = take(8);
      if (t.offset % alignment) bad("tensor '" + t.name + "' is at an unaligned offset");
      if (t.ne[0] % ggml_block_elements(t.type))
        bad("tensor '" + t.name + "' has rows of " + std::to_string(t.ne[0]) +
            " elements, not a multiple of its block");
      std::uint64_t numel = 1;
      for (auto x : t.ne) {
        if (x != 0 && numel > std::numeric_limits<std::uint64_t>::max() / x) bad("tensor '" + t.name + "' is too large");
        numel *= x;
      }
      t.bytes = numel / ggml_block_elements(t.type) * ggml_block_bytes(t.type);
      for (const auto& o : tensors_)
        if (o.name == t.name) bad("tensor '" + t.name + "' appears twice");
      tensors_.push_back(std::move(t));
    }
    data_start_ = (pos_ + alignment - 1) / alignment * alignment;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> spans;
    for (const auto& t : tensors_) {
      if (data_start_ > bytes_.size() || t.offset > bytes_.size() - data_start_ ||
          t.bytes > bytes_.size() - data_start_ - t.offset)
        bad("tensor '" + t.name + "' extends past the end of the file (truncated)");
      spans.emplace_back(t.offset, t.offset + t.bytes);
    }
    std::sort(spans.begin(), spans.end());
    for (std::size_t k = 1; k < spans.size(); ++k)
      if (spans[k].first < spans[k - 1].second) bad("two tensors overlap");
  }

  std::string path_;
  std::vector<char> bytes_;
  std::size_t pos_ = 0;
  std::size_t data_start_ = 0;
  std::uint32_t version_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::vector<GgufTensorInfo> tensors_;
};

}  // namespace q2n::io
