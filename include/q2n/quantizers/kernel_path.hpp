#pragma once
/// \file quantizers/kernel_path.hpp
/// Selects the implementation of the quantizers' hot loops.

namespace q2n {

/// Which implementation runs the element-wise loops (quantize, dequantize, grid error).
/// Both give bit-identical results (see detail/uniform_kernels.hpp); `scalar` exists as a
/// reference and for debugging.
enum class KernelPath {
  simd,    ///< xsimd batches across rows (the default)
  scalar,  ///< plain scalar loops
};

}  // namespace q2n
