#!/usr/bin/env bash
# Times q2n-layer's Q2N refinement and the reference's dense path (reference_dense.py, numpy
# on OpenBLAS) on the same layers in one run, and compares their kept counts and m.
#
#   benchmarks/compare_dense_reference.sh Q2N_LAYER_BINARY LAYER.safetensors [more layers...]
#
# Each layer needs W, X and Q (make_activation_families.py writes such files): q2n-layer runs
# with --method given --q2n, which refines the file's Q. Both tools run with
# OPENBLAS_NUM_THREADS = OMP_NUM_THREADS = nproc, one layer after the other.
# Environment: Q_TENSOR (name of Q, default Q), REF_DTYPE (float32 or float64, default
# float32), RAW_LOG (a file to append both tools' JSON lines to), Q2N_FLAGS (more q2n-layer
# flags, e.g. "--eigensolver lapack").
#
# Per layer: kept count (reference/q2n), seconds (reference: covariance + eigh + projector +
# m; q2n: null space + m; neither counts forming Abar), their ratio, q2n's assembly of the
# refined result beside it (copying the storage, folding m in, dequantizing: work the
# reference does not do), max |dm| / |m| and max |dm| / max |m - 1| with dm = m_reference - m_q2n.
#
# Both tools run with glibc's malloc on transparent huge pages (GLIBC_TUNABLES
# glibc.malloc.hugetlb=1): on the project's VM a first touch of fresh memory costs about
# 2.5 ms per MiB with 4 KiB pages, which neither computation is about.
set -euo pipefail

if (($# < 2)); then
  echo "usage: $0 Q2N_LAYER_BINARY LAYER.safetensors [more layers...]" >&2
  exit 2
fi
bin=$1
shift
[[ -x $bin ]] || { echo "compare: $bin is not an executable q2n-layer" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
py=/usr/bin/python3
q_tensor=${Q_TENSOR:-Q}
ref_dtype=${REF_DTYPE:-float32}

# Debian's numpy links libblas.so.3 and liblapack.so.3, which the alternatives system points
# to OpenBLAS once libopenblas0-pthread is installed.
packages=(python3-numpy libopenblas0-pthread)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "compare: installing ${missing[*]}" >&2
  sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
fi

threads=$(nproc)
export OPENBLAS_NUM_THREADS=$threads OMP_NUM_THREADS=$threads
export GLIBC_TUNABLES=glibc.malloc.hugetlb=1
read -r -a q2n_flags <<<"${Q2N_FLAGS:-}"

# numpy on the reference BLAS is about 20x slower than on OpenBLAS: its times would compare
# nothing. reference_dense.py --check-blas reads the libraries mapped into its process.
if ! blas=$("$py" "$here/reference_dense.py" --check-blas); then
  "$py" - "$blas" >&2 <<'PY'
import json, platform, sys
b = json.loads(sys.argv[1])["blas"]
print(f"compare: numpy's BLAS is {b['blas']} and its LAPACK {b['lapack']}, not OpenBLAS; "
      "timing it proves nothing. Loaded:")
print("\n".join("  " + p for p in b["loaded"]) or "  (no BLAS library found)")
arch = platform.machine()
print("compare: install libopenblas0-pthread, or point the alternatives to it:\n"
      f"  update-alternatives --config libblas.so.3-{arch}-linux-gnu\n"
      f"  update-alternatives --config liblapack.so.3-{arch}-linux-gnu\n"
      "(and check that LD_LIBRARY_PATH does not name another BLAS)")
PY
  exit 1
fi
"$py" - "$blas" <<'PY'
import json, sys
d = json.loads(sys.argv[1])
print("# numpy", d["blas"]["numpy"], "on", " ".join(d["blas"]["loaded"]), "| threads", d["threads"])
PY

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

printf '# %-26s %9s %10s %10s %7s %9s %11s %12s\n' layer "kept r/q" "ref s" "q2n s" "ref/q2n" \
  "q2n asm s" "max|dm|/|m|" "dm/max|m-1|"
for layer in "$@"; do
  "$py" - "$here" "$layer" "$q_tensor" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
import reference_dense as r
if sys.argv[3] not in r.SafeTensors(sys.argv[2]):
    sys.exit(f"compare: {sys.argv[2]} has no tensor {sys.argv[3]}; q2n-layer --method given "
             "refines the file's Q (set its name with Q_TENSOR)")
PY
  q2n_json=$("$bin" --input "$layer" --output "$tmp/q2n.safetensors" --method given \
    --q-tensor "$q_tensor" --q2n "${q2n_flags[@]}")
  ref_json=$("$py" "$here/reference_dense.py" "$layer" --q-tensor "$q_tensor" \
    --dtype "$ref_dtype" --m-out "$tmp/m_ref.npy")
  if [[ -n ${RAW_LOG:-} ]]; then
    printf '{"layer": "%s", "tool": "q2n-layer", "result": %s}\n' "$layer" "$q2n_json" >>"$RAW_LOG"
    printf '{"layer": "%s", "tool": "reference_dense", "result": %s}\n' "$layer" "$ref_json" \
      >>"$RAW_LOG"
  fi
  "$py" - "$here" "$layer" "$q2n_json" "$ref_json" "$tmp/q2n.safetensors" "$tmp/m_ref.npy" <<'PY'
import json, os, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import reference_dense as r
layer, q2n, ref = sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
if ref["blas"]["kind"] != "openblas":
    sys.exit("compare: the reference run did not load OpenBLAS: " + " ".join(ref["blas"]["loaded"]))
m_q2n = r.SafeTensors(sys.argv[5]).read("m", np.float64)
m_ref = np.load(sys.argv[6])
dm = np.abs(m_ref - m_q2n)
rel = float(np.max(dm / np.abs(m_q2n)))
dev = float(np.max(np.abs(m_q2n - 1)))
rel_dev = float(np.max(dm) / dev) if dev > 0 else float("nan")
sec = q2n["seconds"]
q2n_s = sec.get("null_space", 0.0) + sec.get("refine_m", 0.0)
asm_s = sec.get("refine", 0.0) - sec.get("refine_m", 0.0)
ref_s = ref["seconds"]["total_refine"]
kept_q2n = q2n.get("kept", 0)
name = os.path.basename(layer).removesuffix(".safetensors")
print("  %-26s %9s %10.4g %10.4g %7.3g %9.3g %11.3g %12.3g%s" % (
    name, f"{ref['kept']}/{kept_q2n}", ref_s, q2n_s, ref_s / q2n_s if q2n_s > 0 else float("inf"),
    asm_s, rel, rel_dev, "" if ref["kept"] == kept_q2n else "  KEPT DIFFERS"))
PY
done
