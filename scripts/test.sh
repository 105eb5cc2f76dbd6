#!/usr/bin/env bash
# Builds and runs the tests: everything optimized, then the library tests that index raw buffers
# (tests/CMakeLists.txt lists them) and the fuzzers under ASan + UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
# Ninja, not make: it compiles a target's sources while the libraries they link are still being
# built, so neither core waits at the end of the build.
run() {  # run NAME CTEST_EXCLUDE_REGEX CMAKE_ARGS...
  local dir=build/$1 exclude=$2; shift 2
  if [[ -f $dir/CMakeCache.txt ]] && ! grep -q "^CMAKE_GENERATOR:INTERNAL=Ninja$" "$dir/CMakeCache.txt"; then
    rm -rf "$dir"  # configured by another generator
  fi
  cmake -S . -B "$dir" -G Ninja -DQ2N_BUILD_BENCHMARKS=OFF "$@" >/dev/null
  cmake --build "$dir" -j "$jobs"
  (cd "$dir" && ctest --output-on-failure -j "$jobs" ${exclude:+-E "$exclude"})
}
# Everything: library tests, the three consumption routes, the examples and their tests. -O2
# rather than Release's -O3: the same code compiles a fifth faster, and the tests compare
# results within one build (the library tests build at -O1, tests/CMakeLists.txt).
run test-release "" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O2 -DNDEBUG"
# Those library tests under ASan + UBSan, unoptimized: -O0 compiles them in two thirds of
# -O1's time, and their test cases are small enough to run in seconds even so. The examples
# are left out here (their sanitizer build alone costs more than the rest of this script); the
# consumption tests build without sanitizers anyway, and the compile-time check of
# compile_fail.* does not depend on the build's flags.
run test-sanitize "^(consume_|compile_fail)" -DCMAKE_BUILD_TYPE=Debug \
    -DCMAKE_CXX_FLAGS_DEBUG=-O0 -DQ2N_SANITIZE=ON -DQ2N_BUILD_EXAMPLES=OFF
