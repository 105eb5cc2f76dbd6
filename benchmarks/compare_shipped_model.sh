#!/usr/bin/env bash
# The dense-reference comparison (compare_dense_reference.sh) on every linear of the shipped
# model: q2n_llama dumps each linear's calibration inputs, weights and RTN 4-bit Q
# (--dump-linear, the default 128 windows of 256 tokens), then q2n-layer and the reference's
# numpy path refine that Q in one run per layer.
#
#   benchmarks/compare_shipped_model.sh Q2N_LLAMA Q2N_LAYER OUT_DIR [more q2n-layer flags]
#
# OUT_DIR receives the dumps (about 1.3 GB for the 28 linears) and the comparison's JSON
# lines (compare.jsonl). The binaries come from a build of the examples, e.g.
#   cmake -S . -B build/bench -DCMAKE_BUILD_TYPE=Release && cmake --build build/bench \
#     --target q2n_llama q2n_layer
# compare_dense_reference.sh installs numpy and OpenBLAS when they are missing.
set -euo pipefail

if (($# < 3)); then
  echo "usage: $0 Q2N_LLAMA Q2N_LAYER OUT_DIR [more q2n-layer flags]" >&2
  exit 2
fi
llama=$1 layer_bin=$2 out=$3
shift 3
for b in "$llama" "$layer_bin"; do
  [[ -x $b ]] || { echo "compare_shipped_model: $b is not an executable" >&2; exit 2; }
done
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"

modules=(self_attn.q_proj self_attn.k_proj self_attn.v_proj self_attn.o_proj mlp.gate_proj
         mlp.up_proj mlp.down_proj)
dumps=()
for layer in 0 1 2 3; do
  for m in "${modules[@]}"; do
    f=$out/$layer.$m.safetensors
    if [[ ! -s $f ]]; then
      # One evaluation window: the dump is what is wanted, not the perplexity.
      "$llama" --methods rtn --bits 4 --q2n off --eval-windows 1 \
        --dump-linear "$layer.$m" --dump-file "$f" >/dev/null
    fi
    dumps+=("$f")
  done
done

Q_TENSOR=Q_before RAW_LOG=$out/compare.jsonl Q2N_FLAGS="$*" \
  "$here/compare_dense_reference.sh" "$layer_bin" "${dumps[@]}"
