#pragma once
/// \file reproducibility.hpp
/// The same bits on every machine.
///
/// q2n's results do not depend on the number of threads: its parallel products are cut into
/// panels that depend on the shapes only. They can depend on the CPU, through Eigen: Eigen sizes
/// the depth kc of its matrix-product blocks from the L1 data cache it detects, and a product
/// whose inner dimension exceeds kc sums its terms in runs of kc, so a CPU with another L1 size
/// rounds that product differently. With AVX2, float, kc is 288 on a 32 KiB L1 and 432 on a
/// 48 KiB one: the H⁻¹ factor of a 768-column layer then differs in its last bits, and so can
/// every later step (LeanQuant's grid, weighted by that factor's diagonal, moved the tiny
/// Llama's 2-bit perplexity from 3.8174 to 3.8266 between two such machines).
///
/// pin_product_blocking() removes that dependence: after it, a program gives the same bits on
/// every machine that runs the same build (compiler, flags and SIMD instruction set are still
/// part of the result).

#include <Eigen/Core>
#include <cstddef>

namespace q2n {

/// The cache sizes pin_product_blocking() gives Eigen: 48 KiB L1 (the L1 data cache of current
/// x86 server cores: Intel's since Ice Lake, AMD's since Zen 5), 1 MiB L2, 32 MiB L3. The L1
/// size sets the block depth, which decides the rounding; L2 and L3 size the row and column
/// blocks (a run with 1.25 MiB and 32 MiB gave the bits of Eigen's own 1 MiB and 384 MiB here).
/// The depth matters little for speed: a 4096³ float product ran at 247-255 GFLOP/s with Eigen
/// told 32, 48 or 64 KiB, on a 48 KiB machine.
inline constexpr std::ptrdiff_t kPinnedL1 = 48 * 1024;
inline constexpr std::ptrdiff_t kPinnedL2 = 1024 * 1024;
inline constexpr std::ptrdiff_t kPinnedL3 = 32 * 1024 * 1024;

/// Sets Eigen's cache sizes to kPinnedL1/L2/L3 (Eigen::setCpuCacheSizes), for every Eigen
/// product of the process, q2n's and the caller's. Call it once at the start of a program,
/// before any product runs; q2n's own programs (q2n_llama, q2n-layer) do.
inline void pin_product_blocking() { Eigen::setCpuCacheSizes(kPinnedL1, kPinnedL2, kPinnedL3); }

}  // namespace q2n
