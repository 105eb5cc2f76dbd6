#!/usr/bin/env bash
# Peak resident memory of q2n_llama on a checkpoint larger than the shipped model, loaded whole
# and streamed layer by layer (--stream), each run under /usr/bin/time -v (Debian: time).
# make_synthetic_llama writes the checkpoint: Llama-shaped, random weights, BF16, sharded;
# 12 layers, hidden 1024, intermediate 2816, vocabulary 32000 (803 MB in float32).
#   benchmarks/streaming_memory.sh BUILD_DIR [WORK_DIR]
# BUILD_DIR: configured with -DQ2N_BUILD_BENCHMARKS=ON (it holds make_synthetic_llama and
# examples/q2n_llama). Prints both runs' perplexities, peak RSS and wall time.
set -euo pipefail
build=${1:?usage: streaming_memory.sh BUILD_DIR [WORK_DIR]}
work=${2:-/tmp/q2n-streaming}
mkdir -p "$work"
"$build/benchmarks/make_synthetic_llama" "$work/model"
args=(--model "$work/model" --methods gptq --bits 4 --group 128 --q2n on --nsamples 32
      --eval-windows 16)
for mode in stream whole; do
  flag=()
  [[ $mode == stream ]] && flag=(--stream)
  rm -rf "$work/saved-$mode"
  /usr/bin/time -v "$build/examples/q2n_llama" "${args[@]}" "${flag[@]}" \
      --save "$work/saved-$mode" >"$work/$mode.jsonl" 2>"$work/$mode.log"
  echo "$mode: $(grep -o '"ppl":[0-9.]*' "$work/$mode.jsonl" | tr '\n' ' ')" \
       "peak RSS $(awk '/Maximum resident/ {print int($6 / 1024)}' "$work/$mode.log") MiB," \
       "wall $(awk '/Elapsed/ {print $8}' "$work/$mode.log")"
done
