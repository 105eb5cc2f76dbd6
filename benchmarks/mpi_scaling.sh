#!/usr/bin/env bash
# One process against several on the synthetic 12-layer checkpoint (make_synthetic_llama:
# hidden 1024, intermediate 2816, BF16, six shards), GPTQ 4-bit g128 + Q2N: one process on one
# thread, one process on two threads, and `mpirun -np 2` with one thread each. Prints each run's
# stage seconds (as q2n_llama reports them), wall time and perplexities, and checks that the
# saved weights of all three are the same bytes.
#   benchmarks/mpi_scaling.sh BUILD_DIR [WORK_DIR]
# BUILD_DIR: configured with -DQ2N_BUILD_BENCHMARKS=ON and MPI found (it holds
# make_synthetic_llama, examples/q2n_llama and examples/q2n_llama_mpi).
set -euo pipefail
build=${1:?usage: mpi_scaling.sh BUILD_DIR [WORK_DIR]}
work=${2:-/tmp/q2n-scaling}
mkdir -p "$work"
[[ -f $work/model/config.json ]] || "$build/benchmarks/make_synthetic_llama" "$work/model"
args=(--model "$work/model" --methods gptq --bits 4 --group 128 --q2n on --nsamples 32
      --eval-windows 16)
mpirun=(mpirun --oversubscribe --allow-run-as-root -np 2)
run() {  # run NAME COMMAND...
  local name=$1; shift
  rm -rf "$work/saved-$name"
  local t0=$(date +%s.%N)
  "$@" "${args[@]}" --save "$work/saved-$name" >"$work/$name.jsonl" 2>"$work/$name.log"
  local t1=$(date +%s.%N)
  echo "$name: wall $(awk "BEGIN {printf \"%.1f\", $t1 - $t0}") s; $(grep -o 'pass [^)]*' "$work/$name.log" | tail -1);" \
       "$(grep -o '"ppl":[0-9.]*' "$work/$name.jsonl" | tr '\n' ' ')"
}
run one-thread "$build/examples/q2n_llama" --threads 1
run two-threads "$build/examples/q2n_llama" --threads 2
run two-processes "${mpirun[@]}" "$build/examples/q2n_llama_mpi" --threads 1
for name in two-threads two-processes; do
  cmp "$work/saved-one-thread/model.safetensors" "$work/saved-$name/model.safetensors"
done
echo "saved weights: the same bytes in all three runs"
