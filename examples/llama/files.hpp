#pragma once
/// \file files.hpp
/// Reading the files a user names, defensively: regular files only (a FIFO would block, a
/// device like /dev/zero never ends, a directory is not a file), a size limit checked before
/// reading, and JSON whose nesting depth is bounded before the parser sees it. Every error
/// names the file.

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>

namespace llama {

/// Builds a message from streamable parts and throws std::invalid_argument with it.
template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw std::invalid_argument(os.str());
}

/// Checks that `path` is a regular file of at most `max_bytes` bytes and returns its size.
/// \param what what the file is for, for the message ("the model's config.json", ...)
inline std::uintmax_t check_regular_file(const std::string& path, std::uintmax_t max_bytes,
                                         const std::string& what) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) fail(path, " (", what, ") does not exist");
  if (!fs::is_regular_file(st))
    fail(path, " (", what, ") is not a regular file",
         fs::is_directory(st) ? " but a directory" : " (a pipe, device or socket cannot be read)");
  const std::uintmax_t size = fs::file_size(path, ec);
  if (ec) fail("cannot read the size of ", path, " (", what, "): ", ec.message());
  if (size > max_bytes)
    fail(path, " (", what, ") has ", size, " bytes, more than the ", max_bytes, " allowed");
  return size;
}

/// The bytes of `path`, which must be a regular file of at most `max_bytes` bytes.
inline std::string read_regular_file(const std::string& path, std::uintmax_t max_bytes,
                                     const std::string& what) {
  const std::uintmax_t size = check_regular_file(path, max_bytes, what);
  std::ifstream in(path, std::ios::binary);
  std::string bytes(static_cast<std::size_t>(size), '\0');
  if (!in || !in.read(bytes.data(), static_cast<std::streamsize>(size)))
    fail("cannot read ", path, " (", what, ")");
  return bytes;
}

/// Deepest nesting of arrays and objects in JSON text (strings skipped).
inline int json_depth(const std::string& text) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char ch : text) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (ch == '\\') escaped = true;
      else if (ch == '"') in_string = false;
    } else if (ch == '"') {
      in_string = true;
    } else if (ch == '[' || ch == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (ch == ']' || ch == '}') {
      --depth;
    }
  }
  return deepest;
}

/// Parses the JSON file `path` (a regular file of at most max_bytes, nested at most 64 deep:
/// configs are flat, and a deeper document makes copies and destruction recurse).
inline nlohmann::json read_json(const std::string& path, std::uintmax_t max_bytes,
                                const std::string& what) {
  const std::string text = read_regular_file(path, max_bytes, what);
  constexpr int kMaxDepth = 64;
  if (const int d = json_depth(text); d > kMaxDepth)
    fail(path, " (", what, ") nests arrays/objects ", d, " deep; at most ", kMaxDepth,
         " is accepted");
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {  // syntax errors and out-of-range numbers
    fail(path, " is not valid JSON (", e.what(), ")");
  }
}

}  // namespace llama
