#!/usr/bin/env bash
# Builds the examples (Release) and runs the end-to-end Llama quantization on the shipped model.
# Extra arguments go to q2n_llama (see `q2n_llama --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake -S . -B build/example -DCMAKE_BUILD_TYPE=Release -DQ2N_BUILD_TESTS=OFF \
      -DQ2N_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build build/example -j "$(nproc)" --target q2n_llama
exec build/example/examples/q2n_llama --report build/example/report "$@"
