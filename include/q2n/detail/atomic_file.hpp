#pragma once
/// \file detail/atomic_file.hpp
/// Writing a file so that readers never see a partial one: the content goes to
/// `path + ".tmp"`, which is renamed to `path` only when every byte was written.

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <system_error>

namespace q2n::detail {

/// Calls `write(std::ofstream&)` on `path + ".tmp"` and renames the file to `path`.
/// \throws std::runtime_error starting with `who` if creating, writing or renaming fails (the
///         temporary file is removed)
template <class Write>
void write_file_atomically(const std::string& path, const char* who, Write&& write) {
  const std::string tmp = path + ".tmp";
  auto fail = [&](const std::string& what) {
    std::error_code ignored;
    std::filesystem::remove(tmp, ignored);
    return std::runtime_error(std::string(who) + ": " + what);
  };
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw fail("cannot create '" + tmp + "': " + std::strerror(errno));
    write(out);
    out.flush();
    if (!out) throw fail("cannot write '" + tmp + "'");
    out.close();
    if (!out) throw fail("cannot close '" + tmp + "'");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw fail("cannot rename '" + tmp + "' to '" + path + "': " + ec.message());
}

}  // namespace q2n::detail
