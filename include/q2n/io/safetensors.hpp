#pragma once
/// \file safetensors.hpp
/// Reading and writing the safetensors checkpoint format.
///
/// A safetensors file is an 8-byte little-endian header length N, N bytes of a JSON object
/// `{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...,
/// "__metadata__": {string: string}}`, then the raw little-endian, C-order (row-major) tensor
/// data. `data_offsets` count from the first byte after the header.
///
/// SafetensorsReader parses and validates the header when constructed and reads each tensor
/// from disk on request (seek + read), so reading one tensor costs memory for that tensor only.
/// Every inconsistency in a file is reported as a q2n::io::FormatError whose message names the
/// file, the tensor and the problem. SafetensorsWriter collects tensors and metadata and writes
/// them atomically (to `path.tmp`, then renamed).
///
/// Requires nlohmann-json (link the CMake target `q2n::io`).
///
/// \code
/// #include <q2n/io/safetensors.hpp>
///
/// q2n::io::SafetensorsWriter writer;
/// Eigen::MatrixXf w = Eigen::MatrixXf::Random(4, 8);
/// writer.add("layer.weight", w);                          // F32, shape [4, 8]
/// writer.add("layer.weight_fp16", w, q2n::io::DType::F16);
/// writer.set_metadata("bits", "4");
/// writer.write("layer.safetensors");
///
/// q2n::io::SafetensorsReader reader("layer.safetensors");
/// for (const auto& name : reader.names()) std::cout << name << "\n";
/// auto w2 = reader.read_matrix<float>("layer.weight");    // 4 x 8, row-major
/// std::vector<double> flat = reader.read_flat<double>("layer.weight_fp16");
/// \endcode

#include "../detail/atomic_file.hpp"

#include <Eigen/Core>
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "../detail/half.hpp"
#include "format_error.hpp"

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__)
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "q2n/io/safetensors.hpp supports little-endian hosts only (safetensors data is "
              "little-endian and is read and written without byte swapping)");
#endif
static_assert(std::numeric_limits<float>::is_iec559 && sizeof(float) == 4 &&
                  std::numeric_limits<double>::is_iec559 && sizeof(double) == 8,
              "q2n/io/safetensors.hpp needs IEEE 754 binary32 float and binary64 double");

namespace q2n::io {

/// Element types of safetensors tensors that q2n reads and writes. The names in files are the
/// enumerator names ("F32", "BF16", ...).
enum class DType { BOOL, U8, I8, I16, U16, I32, U32, I64, U64, F16, BF16, F32, F64 };

/// Size in bytes of one element of `dtype`.
inline std::size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::BOOL:
    case DType::U8:
    case DType::I8:
      return 1;
    case DType::I16:
    case DType::U16:
    case DType::F16:
    case DType::BF16:
      return 2;
    case DType::I32:
    case DType::U32:
    case DType::F32:
      return 4;
    case DType::I64:
    case DType::U64:
    case DType::F64:
      return 8;
  }
  throw std::invalid_argument(
      "q2n::io::dtype_size: dtype = " + std::to_string(static_cast<int>(dtype)) +
      " is not a DType enumerator; pass one of DType::BOOL ... DType::F64");
}

/// Name of `dtype` as written in safetensors headers ("F32", "BF16", ...).
inline const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::BOOL:
      return "BOOL";
    case DType::U8:
      return "U8";
    case DType::I8:
      return "I8";
    case DType::I16:
      return "I16";
    case DType::U16:
      return "U16";
    case DType::I32:
      return "I32";
    case DType::U32:
      return "U32";
    case DType::I64:
      return "I64";
    case DType::U64:
      return "U64";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::F32:
      return "F32";
    case DType::F64:
      return "F64";
  }
  throw std::invalid_argument(
      "q2n::io::dtype_name: dtype = " + std::to_string(static_cast<int>(dtype)) +
      " is not a DType enumerator; pass one of DType::BOOL ... DType::F64");
}

/// DType for a header name such as "F32".
/// \throws FormatError for names q2n does not support (e.g. the 8-bit float types "F8_E4M3").
inline DType dtype_from_name(const std::string& name) {
  static const std::pair<const char*, DType> kTable[] = {
      {"BOOL", DType::BOOL}, {"U8", DType::U8},   {"I8", DType::I8},     {"I16", DType::I16},
      {"U16", DType::U16},   {"I32", DType::I32}, {"U32", DType::U32},   {"I64", DType::I64},
      {"U64", DType::U64},   {"F16", DType::F16}, {"BF16", DType::BF16}, {"F32", DType::F32},
      {"F64", DType::F64}};
  for (const auto& entry : kTable) {
    if (name == entry.first) return entry.second;
  }
  throw FormatError("q2n::io::dtype_from_name: dtype \"" + name +
                    "\" is not supported; supported are BOOL, U8, I8, I16, U16, I32, U32, I64, "
                    "U64, F16, BF16, F32, F64");
}

/// Header entry of one tensor: element type, shape, and its byte range [begin, end) in the
/// data section.
struct TensorInfo {
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0, end = 0;

  /// Number of elements: the product of `shape` (1 for a scalar, shape `[]`).
  /// \throws std::invalid_argument for a negative extent or a product beyond int64.
  std::int64_t numel() const {
    for (std::int64_t d : shape) {
      if (d < 0) {
        throw std::invalid_argument("q2n::io::TensorInfo::numel: shape has a negative extent " +
                                    std::to_string(d) + "; extents must be >= 0");
      }
      if (d == 0) return 0;
    }
    std::int64_t n = 1;
    for (std::int64_t d : shape) {
      if (n > std::numeric_limits<std::int64_t>::max() / d) {
        throw std::invalid_argument(
            "q2n::io::TensorInfo::numel: the product of the shape overflows int64; "
            "use a shape with fewer elements");
      }
      n *= d;
    }
    return n;
  }
};

namespace detail {

inline bool is_float_dtype(DType dtype) {
  return dtype == DType::F16 || dtype == DType::BF16 || dtype == DType::F32 || dtype == DType::F64;
}

/// a * b into `out`; false when the product does not fit in 64 bits.
inline bool mul_u64(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}

inline std::string shape_string(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

/// Does integer value `v` (of integer type S) fit in integer type T? (The early returns keep
/// comparisons that are always true out of the code.)
template <class T, class S>
bool int_fits(S v) {
  static_assert(std::is_integral_v<T> && std::is_integral_v<S>, "integers only");
  using ls = std::numeric_limits<S>;
  using lt = std::numeric_limits<T>;
  if constexpr (std::is_same_v<T, bool>) {
    return v == 0 || v == 1;
  } else if constexpr (ls::is_signed == lt::is_signed) {
    if constexpr (ls::digits <= lt::digits) {
      return true;
    } else {
      return v >= static_cast<S>(lt::min()) && v <= static_cast<S>(lt::max());
    }
  } else if constexpr (ls::is_signed) {  // signed source, unsigned target
    if (v < 0) return false;
    if constexpr (ls::digits <= lt::digits) {
      return true;
    } else {
      return v <= static_cast<S>(lt::max());
    }
  } else {  // unsigned source, signed target
    if constexpr (ls::digits <= lt::digits) {
      return true;
    } else {
      return v <= static_cast<S>(lt::max());
    }
  }
}

/// Is the floating value `v` an integer representable in integer type T?
template <class T, class F>
bool float_fits_int(F v) {
  if (!std::isfinite(v) || v != std::trunc(v)) return false;
  if constexpr (std::is_same_v<T, bool>) {
    return v == 0 || v == 1;
  } else {
    // Both bounds are zero or powers of two and therefore exact in F.
    const F lo = static_cast<F>(std::numeric_limits<T>::min());
    const F hi_exclusive = std::ldexp(F(1), std::numeric_limits<T>::digits);
    return v >= lo && v < hi_exclusive;
  }
}

template <class T>
std::string value_string(T v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v ? "1" : "0";
  } else if constexpr (std::is_floating_point_v<T>) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%.17g", static_cast<double>(v));
    return buf;
  } else {
    return std::to_string(v);
  }
}

/// Element type T is stored by `dtype` with the same bytes (a plain copy reads it).
template <class T>
bool same_representation(DType dtype) {
  if constexpr (std::is_same_v<T, float>) {
    return dtype == DType::F32;
  } else if constexpr (std::is_same_v<T, double>) {
    return dtype == DType::F64;
  } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    switch (dtype) {
      case DType::U8:
      case DType::U16:
      case DType::U32:
      case DType::U64:
        return std::is_unsigned_v<T> && sizeof(T) == dtype_size(dtype);
      case DType::I8:
      case DType::I16:
      case DType::I32:
      case DType::I64:
        return std::is_signed_v<T> && sizeof(T) == dtype_size(dtype);
      default:
        return false;
    }
  } else {
    return false;
  }
}

template <class S>
S load(const char* p) {
  S v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

/// Calls f(value) with the element at `p` decoded to its natural C++ type: the fixed-width
/// integer of an integer dtype, std::uint8_t for BOOL, float for F16/BF16/F32, double for F64.
template <class F>
void visit_element(DType dtype, const char* p, F&& f) {
  switch (dtype) {
    case DType::BOOL:
      f(load<std::uint8_t>(p));
      break;
    case DType::U8:
      f(load<std::uint8_t>(p));
      break;
    case DType::I8:
      f(load<std::int8_t>(p));
      break;
    case DType::I16:
      f(load<std::int16_t>(p));
      break;
    case DType::U16:
      f(load<std::uint16_t>(p));
      break;
    case DType::I32:
      f(load<std::int32_t>(p));
      break;
    case DType::U32:
      f(load<std::uint32_t>(p));
      break;
    case DType::I64:
      f(load<std::int64_t>(p));
      break;
    case DType::U64:
      f(load<std::uint64_t>(p));
      break;
    case DType::F16:
      f(q2n::detail::half_to_float(load<std::uint16_t>(p)));
      break;
    case DType::BF16:
      f(q2n::detail::bf16_to_float(load<std::uint16_t>(p)));
      break;
    case DType::F32:
      f(load<float>(p));
      break;
    case DType::F64:
      f(load<double>(p));
      break;
  }
}

template <class S>
void store(char* p, S v) {
  std::memcpy(p, &v, sizeof v);
}

/// Rounds an integer to a 16-bit float pattern, correctly (round to odd in float, then to
/// nearest-even in 16 bits).
template <class S>
std::uint16_t int_to_16bit_float(S v, bool bf16) {
  bool negative = false;
  std::uint64_t magnitude = static_cast<std::uint64_t>(v);
  if constexpr (std::is_signed_v<S>) {
    // Two's complement negation in unsigned arithmetic also covers the most negative value.
    negative = v < 0;
    if (negative) magnitude = std::uint64_t{0} - magnitude;
  }
  float f = q2n::detail::u64_to_float_round_to_odd(magnitude);
  if (negative) f = -f;
  return bf16 ? q2n::detail::float_to_bf16(f) : q2n::detail::float_to_half(f);
}

/// Encodes `v` as one element of `dtype` at `out`. Float -> float conversions round to nearest
/// even; integer targets require an exactly representable value. Returns false (and writes
/// nothing) when `v` cannot be stored in `dtype`.
template <class S>
bool encode(S v, DType dtype, char* out) {
  static_assert(std::is_arithmetic_v<S>, "encode: arithmetic values only");
  auto to_int = [&](auto tag) -> bool {
    using T = decltype(tag);
    if constexpr (std::is_floating_point_v<S>) {
      if (!float_fits_int<T>(v)) return false;
    } else if constexpr (std::is_same_v<S, bool>) {
      // bool always fits any integer type
    } else {
      if (!int_fits<T>(v)) return false;
    }
    store<T>(out, static_cast<T>(v));
    return true;
  };
  switch (dtype) {
    case DType::BOOL: {
      if constexpr (!std::is_same_v<S, bool>) {
        if (v != 0 && v != 1) return false;
      }
      store<std::uint8_t>(out, v ? 1 : 0);
      return true;
    }
    case DType::U8:
      return to_int(std::uint8_t{});
    case DType::I8:
      return to_int(std::int8_t{});
    case DType::I16:
      return to_int(std::int16_t{});
    case DType::U16:
      return to_int(std::uint16_t{});
    case DType::I32:
      return to_int(std::int32_t{});
    case DType::U32:
      return to_int(std::uint32_t{});
    case DType::I64:
      return to_int(std::int64_t{});
    case DType::U64:
      return to_int(std::uint64_t{});
    case DType::F16:
    case DType::BF16: {
      const bool bf16 = dtype == DType::BF16;
      std::uint16_t h;
      if constexpr (std::is_same_v<S, float>) {
        h = bf16 ? q2n::detail::float_to_bf16(v) : q2n::detail::float_to_half(v);
      } else if constexpr (std::is_floating_point_v<S>) {
        const auto d = static_cast<double>(v);  // exact for float and double sources
        h = bf16 ? q2n::detail::double_to_bf16(d) : q2n::detail::double_to_half(d);
      } else if constexpr (std::is_same_v<S, bool>) {
        h = bf16 ? q2n::detail::float_to_bf16(v ? 1.0f : 0.0f)
                 : q2n::detail::float_to_half(v ? 1.0f : 0.0f);
      } else {
        h = int_to_16bit_float(v, bf16);
      }
      store<std::uint16_t>(out, h);
      return true;
    }
    case DType::F32: {
      float f;
      if constexpr (std::is_same_v<S, float>) {
        f = v;
      } else if constexpr (std::is_floating_point_v<S>) {
        f = q2n::detail::double_to_float(static_cast<double>(v));
      } else {
        f = static_cast<float>(v);  // integers: one correct rounding
      }
      store<float>(out, f);
      return true;
    }
    case DType::F64:
      store<double>(out, static_cast<double>(v));
      return true;
  }
  return false;
}

}  // namespace detail

/// Reads a safetensors file: header parsed and validated once, tensors read on demand.
///
/// Validation (each failure throws FormatError naming the file, the tensor and the problem):
/// the header length fits in the file and is at most 100,000,000 bytes; the header is a JSON
/// object without duplicate keys; every tensor entry is an object with a known "dtype" string, a
/// "shape" array of non-negative integers and a "data_offsets" array of two non-negative
/// integers with begin <= end <= size of the data section; end - begin equals
/// numel * dtype_size (computed without overflow); no two tensors overlap; "__metadata__", when
/// present, maps strings to strings. Extra fields in a tensor entry are ignored; gaps between
/// tensors are allowed.
///
/// \note The reader keeps only the path and the parsed header; each read opens the file
/// anew, so one reader may be used from several threads at once. A file that shrinks after
/// construction is reported as truncated (FormatError) when read.
///
/// \code
/// q2n::io::SafetensorsReader reader("model.safetensors");
/// if (reader.contains("W")) {
///   const auto& info = reader.info("W");                       // dtype, shape, offsets
///   auto w = reader.read_matrix<double>("W");                    // converts F16/BF16/F32/F64
///   std::string fmt = reader.metadata().at("format");            // "pt"
/// }
/// \endcode
class SafetensorsReader {
 public:
  /// Largest header accepted, in bytes (the limit of the reference implementation).
  static constexpr std::uint64_t kMaxHeaderBytes = 100000000;

  /// Opens `path`, reads and validates the header.
  /// \throws std::runtime_error if the file cannot be opened or read,
  ///         FormatError if its content is not a valid safetensors file.
  explicit SafetensorsReader(const std::string& path) : path_(path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::file_status status = fs::status(path, ec);
    if (ec || !fs::exists(status)) {
      throw std::runtime_error(
          where() + "cannot open the file: " + (ec ? ec.message() : std::string("no such file")));
    }
    if (!fs::is_regular_file(status)) {
      throw std::runtime_error(where() + "cannot open the file: not a regular file");
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      throw std::runtime_error(where() + "cannot open the file: " + std::strerror(errno));
    }
    in.seekg(0, std::ios::end);
    const std::streamoff size = in.tellg();
    in.seekg(0, std::ios::beg);
    if (size < 0 || !in) throw std::runtime_error(where() + "cannot determine the file size");
    const auto file_size = static_cast<std::uint64_t>(size);
    if (file_size < 8) {
      throw FormatError(where() + "file is " + std::to_string(file_size) +
                        " bytes, shorter than the 8-byte header length field "
                        "(truncated, or not a safetensors file)");
    }
    unsigned char len_bytes[8];
    if (!in.read(reinterpret_cast<char*>(len_bytes), 8)) {
      throw std::runtime_error(where() + "cannot read the header length");
    }
    std::uint64_t header_len = 0;
    for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
    if (header_len > kMaxHeaderBytes) {
      throw FormatError(where() + "header length " + std::to_string(header_len) +
                        " bytes exceeds the limit of " + std::to_string(kMaxHeaderBytes) +
                        " bytes (corrupt, or not a safetensors file)");
    }
    if (header_len > file_size - 8) {
      throw FormatError(where() + "header length " + std::to_string(header_len) +
                        " bytes exceeds the " + std::to_string(file_size - 8) +
                        " bytes that follow the length field (file truncated)");
    }
    std::string header(static_cast<std::size_t>(header_len), '\0');
    if (header_len > 0 && !in.read(&header[0], static_cast<std::streamsize>(header_len))) {
      throw std::runtime_error(where() + "cannot read the " + std::to_string(header_len) +
                               "-byte header");
    }
    data_start_ = 8 + header_len;
    parse_header(header, file_size - data_start_);
  }

  /// The path given to the constructor.
  const std::string& path() const { return path_; }

  /// Tensor names in the order of their data offsets.
  const std::vector<std::string>& names() const { return names_; }

  /// Whether the file holds a tensor called `name`.
  bool contains(const std::string& name) const { return infos_.count(name) != 0; }

  /// Header entry of tensor `name`.
  /// \throws std::invalid_argument if there is no such tensor.
  const TensorInfo& info(const std::string& name) const { return lookup("info", name); }

  /// The "__metadata__" string map (empty when the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  /// All elements of tensor `name` in C (row-major) order, converted to T.
  ///
  /// Any dtype reads into a floating T (integers round to nearest when T cannot hold them
  /// exactly). Integer and BOOL dtypes read into an integral T when every value fits.
  /// \tparam T an arithmetic type: float, double, std::int32_t, std::int64_t, std::uint8_t, ...
  /// \throws std::invalid_argument if there is no such tensor, if a floating dtype is read as an
  ///         integer type, or if an integer value does not fit in T;
  ///         FormatError if the data is truncated or a BOOL byte is neither 0 nor 1;
  ///         std::runtime_error on I/O failure.
  template <class T>
  std::vector<T> read_flat(const std::string& name) const {
    static_assert(std::is_arithmetic_v<T>,
                  "SafetensorsReader::read_flat<T>: T must be an arithmetic type such as float, "
                  "double, std::int32_t or std::uint8_t");
    const TensorInfo& ti = lookup("read_flat", name);
    const auto n = static_cast<std::size_t>(ti.numel());
    if constexpr (std::is_same_v<T, bool>) {  // std::vector<bool> has no data()
      std::unique_ptr<bool[]> tmp(new bool[n == 0 ? 1 : n]);
      read_into("read_flat", name, ti, tmp.get());
      return std::vector<bool>(tmp.get(), tmp.get() + n);
    } else {
      std::vector<T> out(n);
      read_into("read_flat", name, ti, out.data());
      return out;
    }
  }

  /// Tensor `name` as a row-major matrix: a 2-D tensor as is, a 1-D tensor of n elements as
  /// n x 1, a scalar as 1 x 1, and an N-D tensor as prod(shape[:-1]) x shape[-1] (so
  /// activations [samples, seqlen, cols] become (samples * seqlen) x cols).
  /// Conversions and errors as in read_flat.
  template <class T>
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> read_matrix(
      const std::string& name) const {
    static_assert(std::is_arithmetic_v<T>,
                  "SafetensorsReader::read_matrix<T>: T must be an arithmetic type such as "
                  "float, double, std::int32_t or std::uint8_t");
    const TensorInfo& ti = lookup("read_matrix", name);
    Eigen::Index rows = 1, cols = 1;
    if (ti.shape.size() == 1) {
      rows = static_cast<Eigen::Index>(ti.shape[0]);
    } else if (ti.shape.size() >= 2) {
      // Header validation guarantees these products fit in int64.
      for (std::size_t i = 0; i + 1 < ti.shape.size(); ++i) {
        rows *= static_cast<Eigen::Index>(ti.shape[i]);
      }
      cols = static_cast<Eigen::Index>(ti.shape.back());
    }
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> m(rows, cols);
    read_into("read_matrix", name, ti, m.data());
    return m;
  }

  /// Rows [first, first + count) of read_matrix(name), read from the file alone: a part of a
  /// tensor too large to hold whole (an embedding table, an LM head) costs only its own memory.
  /// \throws std::invalid_argument unless 0 ≤ first, 0 ≤ count and first + count ≤ rows;
  ///         otherwise as read_matrix
  template <class T>
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> read_rows(
      const std::string& name, std::int64_t first, std::int64_t count) const {
    static_assert(std::is_arithmetic_v<T>,
                  "SafetensorsReader::read_rows<T>: T must be an arithmetic type such as "
                  "float, double, std::int32_t or std::uint8_t");
    const TensorInfo& ti = lookup("read_rows", name);
    const std::int64_t cols = ti.shape.size() >= 2 ? ti.shape.back() : 1;
    const std::int64_t rows = cols == 0 ? 0 : ti.numel() / cols;
    if (first < 0 || count < 0 || first > rows || count > rows - first) {
      throw std::invalid_argument("q2n::io::SafetensorsReader::read_rows: rows [" +
                                  std::to_string(first) + ", " + std::to_string(first) + " + " +
                                  std::to_string(count) + ") of tensor '" + name + "' in '" +
                                  path_ + "', which has " + std::to_string(rows) +
                                  " rows; pass 0 <= first <= first + count <= rows");
    }
    Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> m(count, cols);
    read_into("read_rows", name, ti, m.data(), static_cast<std::uint64_t>(first * cols),
              count * cols);
    return m;
  }

 private:
  std::string where() const { return "q2n::io::SafetensorsReader: '" + path_ + "': "; }

  std::string where(const std::string& tensor) const {
    return where() + "tensor '" + tensor + "': ";
  }

  const TensorInfo& lookup(const char* fn, const std::string& name) const {
    const auto it = infos_.find(name);
    if (it == infos_.end()) {
      throw std::invalid_argument(
          "q2n::io::SafetensorsReader::" + std::string(fn) + ": no tensor '" + name + "' in '" +
          path_ + "'; names() lists the " + std::to_string(names_.size()) + " tensors it holds");
    }
    return it->second;
  }

  static std::string json_excerpt(const nlohmann::json& j) {
    std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (s.size() > 40) s = s.substr(0, 40) + "...";
    return s;
  }

  // Reads a non-negative JSON integer that must fit in int64.
  std::uint64_t json_count(const nlohmann::json& j, const std::string& tensor,
                           const std::string& what) const {
    if (!j.is_number_integer()) {
      throw FormatError(where(tensor) + what + " = " + json_excerpt(j) + " is not an integer");
    }
    if (j.is_number_unsigned()) {
      const auto v = j.get<std::uint64_t>();
      if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
        throw FormatError(where(tensor) + what + " = " + std::to_string(v) +
                          " is too large (above 2^63 - 1)");
      }
      return v;
    }
    const auto v = j.get<std::int64_t>();
    if (v < 0) throw FormatError(where(tensor) + what + " = " + std::to_string(v) + " is negative");
    return static_cast<std::uint64_t>(v);
  }

  void parse_header(const std::string& header, std::uint64_t data_size) {
    using json = nlohmann::json;
    // The callback rejects duplicate keys (the parser would silently keep one of them) and
    // nesting deeper than a valid header ever needs (root > tensor > shape > extent).
    std::vector<std::set<std::string>> open_objects;
    const json::parser_callback_t check = [&](int depth, json::parse_event_t event,
                                              json& parsed) -> bool {
      if (depth > 3) {
        throw FormatError(where() + "header nests deeper than a safetensors header can");
      }
      if (event == json::parse_event_t::object_start) {
        open_objects.emplace_back();
      } else if (event == json::parse_event_t::object_end) {
        if (!open_objects.empty()) open_objects.pop_back();
      } else if (event == json::parse_event_t::key && !open_objects.empty()) {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!open_objects.back().insert(key).second) {
          throw FormatError(where() + (depth == 1 ? "tensor name" : "key") + " '" + key +
                            "' appears twice in the header");
        }
      }
      return true;
    };
    json root;
    try {
      root = json::parse(header, check);
    } catch (const json::exception& e) {
      throw FormatError(where() + "header is not valid JSON (" + e.what() + ")");
    }
    if (!root.is_object()) throw FormatError(where() + "header is not a JSON object");

    for (const auto& item : root.items()) {
      const std::string& name = item.key();
      const json& entry = item.value();
      if (name == "__metadata__") {
        if (!entry.is_object()) {
          throw FormatError(where() + "\"__metadata__\" is not a JSON object");
        }
        for (const auto& kv : entry.items()) {
          if (!kv.value().is_string()) {
            throw FormatError(where() + "\"__metadata__\" value of key '" + kv.key() + "' is " +
                              json_excerpt(kv.value()) + ", not a string");
          }
          metadata_[kv.key()] = kv.value().get<std::string>();
        }
        continue;
      }
      if (!entry.is_object()) throw FormatError(where(name) + "entry is not a JSON object");
      TensorInfo ti;

      const auto dt = entry.find("dtype");
      if (dt == entry.end()) throw FormatError(where(name) + "field \"dtype\" is missing");
      if (!dt->is_string()) throw FormatError(where(name) + "field \"dtype\" is not a string");
      try {
        ti.dtype = dtype_from_name(dt->get<std::string>());
      } catch (const FormatError&) {
        throw FormatError(where(name) + "dtype \"" + dt->get<std::string>() +
                          "\" is unknown or unsupported (supported: BOOL, U8, I8, I16, U16, "
                          "I32, U32, I64, U64, F16, BF16, F32, F64)");
      }

      const auto sh = entry.find("shape");
      if (sh == entry.end()) throw FormatError(where(name) + "field \"shape\" is missing");
      if (!sh->is_array()) throw FormatError(where(name) + "field \"shape\" is not an array");
      std::uint64_t numel = 1, nonzero_product = 1;
      for (std::size_t i = 0; i < sh->size(); ++i) {
        const std::uint64_t d = json_count((*sh)[i], name, "shape[" + std::to_string(i) + "]");
        ti.shape.push_back(static_cast<std::int64_t>(d));
        // Also bound the product of the non-zero extents, so that every partial product
        // (numel(), read_matrix row counts) fits in int64 even for empty tensors.
        if (!detail::mul_u64(nonzero_product, d == 0 ? 1 : d, nonzero_product) ||
            nonzero_product >
                static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
          throw FormatError(where(name) + "shape " + detail::shape_string(ti.shape) +
                            (i + 1 < sh->size() ? " (first extents)" : "") +
                            " has more elements than fit in int64");
        }
        numel = (d == 0) ? 0 : numel * d;  // cannot overflow: bounded by nonzero_product
      }

      const auto off = entry.find("data_offsets");
      if (off == entry.end()) {
        throw FormatError(where(name) + "field \"data_offsets\" is missing");
      }
      if (!off->is_array() || off->size() != 2) {
        throw FormatError(where(name) + "field \"data_offsets\" is not an array [begin, end]");
      }
      ti.begin = json_count((*off)[0], name, "data_offsets[0]");
      ti.end = json_count((*off)[1], name, "data_offsets[1]");
      if (ti.begin > ti.end) {
        throw FormatError(where(name) + "data_offsets [" + std::to_string(ti.begin) + ", " +
                          std::to_string(ti.end) + "] have begin > end");
      }
      if (ti.end > data_size) {
        throw FormatError(where(name) + "data_offsets [" + std::to_string(ti.begin) + ", " +
                          std::to_string(ti.end) + "] reach past the end of the data section (" +
                          std::to_string(data_size) + " bytes; file truncated?)");
      }
      std::uint64_t nbytes = 0;
      if (!detail::mul_u64(numel, dtype_size(ti.dtype), nbytes) || nbytes != ti.end - ti.begin) {
        throw FormatError(where(name) + "shape " + detail::shape_string(ti.shape) + " of " +
                          dtype_name(ti.dtype) + " needs " + std::to_string(numel) + " x " +
                          std::to_string(dtype_size(ti.dtype)) + " bytes, but data_offsets [" +
                          std::to_string(ti.begin) + ", " + std::to_string(ti.end) + "] span " +
                          std::to_string(ti.end - ti.begin) + " bytes");
      }
      names_.push_back(name);
      infos_.emplace(name, std::move(ti));
    }

    std::sort(names_.begin(), names_.end(), [&](const std::string& a, const std::string& b) {
      const TensorInfo& x = infos_.at(a);
      const TensorInfo& y = infos_.at(b);
      return std::tie(x.begin, x.end, a) < std::tie(y.begin, y.end, b);
    });
    for (std::size_t i = 1; i < names_.size(); ++i) {
      const TensorInfo& prev = infos_.at(names_[i - 1]);
      const TensorInfo& cur = infos_.at(names_[i]);
      // Sorted by begin; empty tensors occupy no bytes, but one placed strictly inside another
      // tensor's range is still inconsistent.
      const bool overlap = cur.begin < prev.end && (cur.begin != cur.end || prev.begin < cur.begin);
      if (overlap) {
        throw FormatError(where(names_[i]) + "data_offsets [" + std::to_string(cur.begin) + ", " +
                          std::to_string(cur.end) + "] overlap those of tensor '" + names_[i - 1] +
                          "' [" + std::to_string(prev.begin) + ", " + std::to_string(prev.end) +
                          "]");
      }
    }
  }

  // Elements [first_elem, first_elem + n_elems) of the tensor (C order) into out; n_elems < 0:
  // to the end.
  template <class T>
  void read_into(const char* fn, const std::string& name, const TensorInfo& ti, T* out,
                 std::uint64_t first_elem = 0, std::int64_t n_elems = -1) const {
    const std::string func = "q2n::io::SafetensorsReader::" + std::string(fn) + ": ";
    if (detail::is_float_dtype(ti.dtype) && !std::is_floating_point_v<T>) {
      throw std::invalid_argument(func + "tensor '" + name + "' in '" + path_ + "' has dtype " +
                                  dtype_name(ti.dtype) +
                                  "; reading it as an integer type would drop fractions; "
                                  "read it as float or double");
    }
    const std::size_t esize = dtype_size(ti.dtype);
    const std::uint64_t nbytes = n_elems < 0 ? ti.end - ti.begin - first_elem * esize
                                             : static_cast<std::uint64_t>(n_elems) * esize;
    if (nbytes == 0) return;
    std::ifstream in(path_, std::ios::binary);
    if (!in) {
      throw std::runtime_error(func + "cannot reopen '" + path_ + "': " + std::strerror(errno));
    }
    in.seekg(static_cast<std::streamoff>(data_start_ + ti.begin + first_elem * esize),
             std::ios::beg);
    auto truncated = [&]() {
      return FormatError(where(name) +
                         "data ends early: the file is shorter than its header "
                         "says (truncated, or changed since it was opened)");
    };
    if (!in) throw truncated();
    if (detail::same_representation<T>(ti.dtype)) {
      in.read(reinterpret_cast<char*>(out), static_cast<std::streamsize>(nbytes));
      if (static_cast<std::uint64_t>(in.gcount()) != nbytes) throw truncated();
      return;
    }
    const std::uint64_t total = nbytes / esize;
    const std::uint64_t chunk = std::min<std::uint64_t>(total, (std::uint64_t{1} << 20) / esize);
    std::vector<char> buf(static_cast<std::size_t>(chunk * esize));
    for (std::uint64_t first = 0; first < total; first += chunk) {
      const std::uint64_t count = std::min(chunk, total - first);
      in.read(buf.data(), static_cast<std::streamsize>(count * esize));
      if (static_cast<std::uint64_t>(in.gcount()) != count * esize) throw truncated();
      for (std::uint64_t k = 0; k < count; ++k) {
        const std::uint64_t index = first + k;  // into out
        const std::uint64_t element = first_elem + index;  // of the tensor
        const char* p = buf.data() + k * esize;
        if (ti.dtype == DType::BOOL && static_cast<unsigned char>(*p) > 1) {
          throw FormatError(where(name) + "BOOL element " + std::to_string(element) + " is byte " +
                            std::to_string(static_cast<unsigned char>(*p)) + ", not 0 or 1");
        }
        detail::visit_element(ti.dtype, p, [&](auto v) {
          using S = decltype(v);
          if constexpr (std::is_floating_point_v<T>) {
            if constexpr (std::is_same_v<T, float> && std::is_same_v<S, double>) {
              out[index] = q2n::detail::double_to_float(v);
            } else {
              out[index] = static_cast<T>(v);
            }
          } else if constexpr (std::is_integral_v<S>) {
            if (!detail::int_fits<T>(v)) {
              throw std::invalid_argument(func + "tensor '" + name + "' in '" + path_ +
                                          "': element " + std::to_string(element) + " = " +
                                          detail::value_string(v) +
                                          " does not fit in the requested type; read it into a "
                                          "wider type");
            }
            out[index] = static_cast<T>(v);
          }
          // Floating S with integral T was rejected above.
        });
      }
    }
  }

  std::string path_;
  std::vector<std::string> names_;
  std::map<std::string, TensorInfo> infos_;
  std::map<std::string, std::string> metadata_;
  std::uint64_t data_start_ = 0;
};

/// Collects tensors and metadata and writes a safetensors file.
///
/// Tensors are laid out in the order they were added, each converted to its dtype: floating
/// targets round to nearest even (F16/BF16 correctly, also from double and from integers);
/// integer and BOOL targets require every value to be exactly representable (a NaN, a fraction
/// or an out-of-range value is an error, never a silent wrap). The header is padded with spaces
/// so that the data section starts at a multiple of 8 bytes. "__metadata__" always holds
/// "format": "pt" unless set_metadata("format", ...) overrides it.
///
/// \code
/// q2n::io::SafetensorsWriter w;
/// Eigen::MatrixXf x(8 * 16, 32);                  // 8 sequences of 16 tokens, stacked
/// x.setRandom();
/// w.add("X", x, q2n::io::DType::F32, {8, 16, 32});  // stored as a 3-D tensor
/// w.add_flat<std::int32_t>("g_idx", std::vector<std::int32_t>(32, 0), q2n::io::DType::I32, {32});
/// w.set_metadata("seqlen", "16");
/// w.write("calibration.safetensors");
/// \endcode
class SafetensorsWriter {
 public:
  /// Sets "__metadata__"[key] = value.
  /// \throws std::invalid_argument if key or value is not valid UTF-8.
  void set_metadata(const std::string& key, const std::string& value) {
    check_utf8("set_metadata", key, "key");
    check_utf8("set_metadata", value, "value");
    metadata_[key] = value;
  }

  /// Adds matrix (or array expression) `m` as tensor `name`, converted to `dtype`, with
  /// `shape` (default {rows, cols}; any shape with rows * cols elements). Elements are stored in
  /// C (row-major) order of `m`, whatever its storage order.
  /// \throws std::invalid_argument for an empty, reserved or repeated name, a negative extent, a
  ///         shape whose element count differs from rows * cols, or a value that `dtype` cannot
  ///         hold (see the class description).
  template <class D>
  void add(const std::string& name, const Eigen::DenseBase<D>& m, DType dtype = DType::F32,
           std::vector<std::int64_t> shape = {}) {
    using Scalar = typename D::Scalar;
    static_assert(std::is_arithmetic_v<Scalar>,
                  "SafetensorsWriter::add: the matrix scalar must be an arithmetic type");
    const std::int64_t rows = m.rows(), cols = m.cols();
    if (shape.empty()) shape = {rows, cols};
    Entry entry = make_entry("add", name, dtype, std::move(shape), rows * cols);
    if constexpr ((static_cast<unsigned>(D::Flags) & Eigen::DirectAccessBit) != 0) {
      fill(entry, m.derived(), rows, cols);
    } else {
      const auto evaluated = m.derived().eval();  // expressions are evaluated once
      fill(entry, evaluated, rows, cols);
    }
    entries_.push_back(std::move(entry));
  }

  /// Adds `values` (C order) as tensor `name` with the given dtype and shape (an empty shape
  /// means a scalar and needs exactly one value).
  /// \throws std::invalid_argument as add(), with values.size() as the element count.
  template <class T>
  void add_flat(const std::string& name, const std::vector<T>& values, DType dtype,
                std::vector<std::int64_t> shape) {
    static_assert(std::is_arithmetic_v<T>,
                  "SafetensorsWriter::add_flat: T must be an arithmetic type");
    Entry entry = make_entry("add_flat", name, dtype, std::move(shape),
                             static_cast<std::int64_t>(values.size()));
    const std::size_t esize = dtype_size(dtype);
    for (std::size_t i = 0; i < values.size(); ++i) {
      encode_or_throw("add_flat", entry, values[i], i, &entry.bytes[i * esize]);
    }
    entries_.push_back(std::move(entry));
  }

  /// The complete file content.
  std::vector<char> to_bytes() const {
    const std::string header = header_bytes();
    std::size_t total = header.size();
    for (const Entry& e : entries_) total += e.bytes.size();
    std::vector<char> out;
    out.reserve(total);
    out.insert(out.end(), header.begin(), header.end());
    for (const Entry& e : entries_) out.insert(out.end(), e.bytes.begin(), e.bytes.end());
    return out;
  }

  /// Writes the file to `path + ".tmp"` and renames it to `path`, so readers never see a
  /// partial file.
  /// \throws std::runtime_error if writing or renaming fails (the temporary file is removed).
  void write(const std::string& path) const {
    const std::string header = header_bytes();
    q2n::detail::write_file_atomically(path, "q2n::io::SafetensorsWriter::write", [&](std::ofstream& out) {
      out.write(header.data(), static_cast<std::streamsize>(header.size()));
      for (const Entry& e : entries_) out.write(e.bytes.data(), static_cast<std::streamsize>(e.bytes.size()));
    });
  }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<char> bytes;
  };

  static void check_utf8(const char* fn, const std::string& s, const char* what) {
    try {
      (void)nlohmann::json(s).dump();
    } catch (const nlohmann::json::exception&) {
      throw std::invalid_argument("q2n::io::SafetensorsWriter::" + std::string(fn) + ": " + what +
                                  " is not valid UTF-8; pass UTF-8 text");
    }
  }

  Entry make_entry(const char* fn, const std::string& name, DType dtype,
                   std::vector<std::int64_t> shape, std::int64_t count) const {
    const std::string func = "q2n::io::SafetensorsWriter::" + std::string(fn) + ": ";
    if (name.empty()) throw std::invalid_argument(func + "name is empty; pass a tensor name");
    if (name == "__metadata__") {
      throw std::invalid_argument(func + "name '__metadata__' is reserved; pick another name");
    }
    check_utf8(fn, name, "name");
    for (const Entry& e : entries_) {
      if (e.name == name) {
        throw std::invalid_argument(func + "tensor '" + name +
                                    "' was already added; use a distinct name");
      }
    }
    const std::size_t esize = dtype_size(dtype);  // also rejects invalid enumerators
    std::uint64_t numel = 1;
    bool overflow = false;
    for (std::int64_t d : shape) {
      if (d < 0) {
        throw std::invalid_argument(func + "tensor '" + name + "': shape " +
                                    detail::shape_string(shape) +
                                    " has a negative extent; extents must be >= 0");
      }
      overflow = overflow || !detail::mul_u64(numel, static_cast<std::uint64_t>(d), numel);
    }
    if (overflow || numel != static_cast<std::uint64_t>(count)) {
      throw std::invalid_argument(
          func + "tensor '" + name + "': shape " + detail::shape_string(shape) +
          " does not hold the " + std::to_string(count) +
          " given elements; pass a shape whose product is " + std::to_string(count));
    }
    Entry e{name, dtype, std::move(shape), {}};
    e.bytes.resize(static_cast<std::size_t>(count) * esize);
    return e;
  }

  template <class S>
  static void encode_or_throw(const char* fn, const Entry& e, S v, std::size_t index, char* out) {
    if (!detail::encode(v, e.dtype, out)) {
      throw std::invalid_argument(
          "q2n::io::SafetensorsWriter::" + std::string(fn) + ": tensor '" + e.name + "': element " +
          std::to_string(index) + " = " + detail::value_string(v) + " cannot be stored as " +
          dtype_name(e.dtype) + " exactly; pass integral in-range values or a float dtype");
    }
  }

  template <class M>
  static void fill(Entry& e, const M& m, std::int64_t rows, std::int64_t cols) {
    const std::size_t esize = dtype_size(e.dtype);
    std::size_t k = 0;
    for (std::int64_t i = 0; i < rows; ++i) {
      for (std::int64_t j = 0; j < cols; ++j, ++k) {
        encode_or_throw("add", e, m.coeff(i, j), k, &e.bytes[k * esize]);
      }
    }
  }

  std::string header_bytes() const {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& kv : metadata_) meta[kv.first] = kv.second;
    header["__metadata__"] = std::move(meta);
    std::uint64_t offset = 0;
    for (const Entry& e : entries_) {
      nlohmann::ordered_json t = nlohmann::ordered_json::object();
      t["dtype"] = dtype_name(e.dtype);
      t["shape"] = e.shape;
      t["data_offsets"] = {offset, offset + e.bytes.size()};
      offset += e.bytes.size();
      header[e.name] = std::move(t);
    }
    std::string json = header.dump();
    json.append((8 - json.size() % 8) % 8, ' ');  // data section starts 8-byte aligned
    std::string out(8, '\0');
    std::uint64_t n = json.size();
    for (int i = 0; i < 8; ++i, n >>= 8) out[i] = static_cast<char>(n & 0xFF);
    return out + json;
  }

  std::vector<Entry> entries_;
  std::map<std::string, std::string> metadata_{{"format", "pt"}};
};

}  // namespace q2n::io
