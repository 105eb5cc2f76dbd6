#!/usr/bin/env bash
# Builds and runs the whole test suite twice: optimized, then under ASan + UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
run() {  # run NAME CMAKE_ARGS...
  local dir=build/$1; shift
  cmake -S . -B "$dir" -DQ2N_BUILD_BENCHMARKS=OFF "$@" >/dev/null
  cmake --build "$dir" -j "$jobs"
  (cd "$dir" && ctest --output-on-failure -j "$jobs")
}
run test-release -DCMAKE_BUILD_TYPE=Release
# -O1 keeps Eigen fast enough at run time and the sanitizer build's compile time modest.
run test-sanitize -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O1 \
    -DQ2N_SANITIZE=ON
