#!/usr/bin/python3
"""The Q2N reference's dense path in numpy, timed stage by stage; prints one JSON line.

  reference_dense.py LAYER.safetensors [--dtype float32|float64] [--m-out M.npy]
  reference_dense.py --check-blas        # BLAS report; exit status 3 unless it is OpenBLAS

The layer file is what q2n-layer reads: W (rows x cols), X (nseq x seqlen x cols, or
tokens x cols as one sequence) and Q (rows x cols, the name set by --q-tensor). Without Q,
Q is W rounded to a 4-bit per-row min-max grid (q_source "rtn4_minmax").

The dense path, as in the released reference code:
  Abar = mean over sequences of X (positions x cols), every sequence weighted equally
  X = Abar^T Abar, eigh(X), eigenvalues descending s
  paper cut (threshold t): S = s[1:], prefix[i] = S[0] + ... + S[i]; the first i with
    i + 1 < len(S), prefix[i] > 1e-12 and (sum(S) - prefix[i] - S[i+1]) / prefix[i] <= t
    keeps r = i + 2 eigenvectors U1; when there is none, P = I (kept 0, cut_index -1)
  P = I - U1 U1^T (dense, cols x cols), B = W (I - P) + Q P
  m_r = (<B_r, Q_r> + lambda) / (||Q_r||^2 + lambda)
X, eigh, P and m run in --dtype; Abar is summed in float64. The cut sums run in float64.
"""

import argparse
import contextlib
import io
import json
import os
import struct
import sys
import time

import numpy as np

# safetensors dtype -> numpy storage dtype (little-endian). BF16 is stored as uint16 and
# widened to float32 by to_float().
_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I32": np.dtype("<i4"),
}


class SafeTensors:
    """Read-only safetensors file: header parsed once, tensors memory-mapped on request."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        self.metadata = header.pop("__metadata__", {}) or {}
        self.info = header
        self.data_start = 8 + n

    def __contains__(self, name):
        return name in self.info

    def shape(self, name):
        return tuple(self.info[name]["shape"])

    def dtype(self, name):
        return self.info[name]["dtype"]

    def raw(self, name):
        """The tensor as stored (a read-only memory map; BF16 as uint16)."""
        entry = self.info[name]
        kind = entry["dtype"]
        if kind not in _DTYPES:
            raise ValueError(f"{self.path}: tensor {name} has dtype {kind}; "
                             f"supported: {', '.join(_DTYPES)}")
        dt = _DTYPES[kind]
        shape = tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        count = int(np.prod(shape, dtype=np.int64))
        if end - begin != count * dt.itemsize:
            raise ValueError(f"{self.path}: tensor {name} has {end - begin} bytes, "
                             f"shape {list(shape)} of {kind} needs {count * dt.itemsize}")
        if count == 0:
            return np.zeros(shape, dt)
        return np.memmap(self.path, dtype=dt, mode="r", offset=self.data_start + begin,
                         shape=shape)

    def read(self, name, dtype=np.float32):
        """The tensor converted to `dtype` (an in-memory copy)."""
        return to_float(self.raw(name), self.dtype(name)).astype(dtype, copy=False)


def to_float(a, kind):
    """Stored values as floating point: BF16 bits widened to float32, others as stored."""
    if kind == "BF16":
        return (np.asarray(a, np.uint32) << 16).view(np.float32)
    return np.asarray(a)


def sample_mean(st, name="X"):
    """Abar: X's positions averaged over sequences in float64 (a 2-D X is one sequence)."""
    x = st.raw(name)
    kind = st.dtype(name)
    if x.ndim == 2:
        return to_float(x, kind).astype(np.float64)
    if x.ndim != 3:
        raise ValueError(f"{st.path}: {name} has shape {list(x.shape)}; "
                         "pass nseq x seqlen x cols or tokens x cols")
    acc = np.zeros(x.shape[1:], np.float64)
    for s in range(x.shape[0]):
        acc += to_float(x[s], kind)
    return acc / x.shape[0]


def rtn_minmax(w, bits=4):
    """W rounded to a per-row asymmetric grid spanning the row's [min, max] (float32)."""
    w = np.asarray(w, np.float64)
    levels = 2 ** bits - 1
    lo = w.min(axis=1, keepdims=True)
    hi = w.max(axis=1, keepdims=True)
    scale = (hi - lo) / levels
    scale[scale == 0] = 1.0
    zero = np.round(-lo / scale)
    codes = np.clip(np.round(w / scale) + zero, 0, levels)
    return (scale * (codes - zero)).astype(np.float32)


def paper_cut(s_desc, threshold=0.1):
    """Kept count r of the paper rule on descending eigenvalues; 0 when there is no cut."""
    S = np.asarray(s_desc, np.float64)[1:]
    if S.size < 2:
        return 0
    prefix = np.cumsum(S)[:-1]                 # prefix[i], i + 1 < len(S)
    rest = S.sum() - (prefix + S[1:])          # total_S - (prefix[i] + S[i+1])
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (prefix > 1e-12) & (rest / prefix <= threshold)
    hits = np.flatnonzero(ok)
    return int(hits[0]) + 2 if hits.size else 0


def _library_kind(paths):
    """openblas, reference (Debian's /blas/ and /lapack/ alternatives), other or none."""
    if not paths:
        return "none"
    if all("openblas" in p.lower() for p in paths):
        return "openblas"
    if any("/blas/" in p or "/lapack/" in p for p in paths):
        return "reference"
    return "other"


def loaded_blas():
    """Shared libraries with 'blas' or 'lapack' in their name mapped into this process, and the
    kind of the BLAS and of the LAPACK among them. numpy's GEMMs resolve to the libblas it
    links, which can be a different library from the one its LAPACK brings in; a process that
    loads only a self-contained OpenBLAS (no libblas / liblapack) counts as OpenBLAS for both."""
    paths = set()
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(None, 5)
            if len(parts) == 6:
                p = parts[5].strip()
                base = os.path.basename(p).lower()
                if "blas" in base or "lapack" in base:
                    paths.add(p)
    paths = sorted(paths)
    names = [(p, os.path.basename(p).lower()) for p in paths]
    blas = [p for p, b in names if b.startswith(("libblas", "libcblas"))]
    lapack = [p for p, b in names if b.startswith("liblapack")]
    openblas = [p for p, b in names if "openblas" in b]
    kinds = {"blas": _library_kind(blas or openblas), "lapack": _library_kind(lapack or openblas)}
    kind = "openblas" if set(kinds.values()) == {"openblas"} else (
        "reference" if "reference" in kinds.values() else "other")
    return kind, kinds, paths


def blas_report():
    kind, kinds, paths = loaded_blas()
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        try:
            np.show_config()
        except Exception as e:  # show_config is informational only
            print(f"show_config failed: {e}")
    config = {}
    for key in ("blas_opt_info", "lapack_opt_info"):  # numpy < 1.26
        info = getattr(np.__config__, key, None)
        if info:
            config[key] = {k: v for k, v in info.items() if k in ("libraries", "library_dirs")}
    return {"kind": kind, **kinds, "loaded": paths, "numpy": np.__version__,
            "numpy_config": config, "show_config": text.getvalue().strip()}


def thread_count():
    env = os.environ.get("OPENBLAS_NUM_THREADS")
    return int(env) if env and env.isdigit() else os.cpu_count()


def dense_path(abar, w, q, dtype, threshold=0.1, lam=0.2):
    """Runs the reference's dense path; returns (m, kept, seconds)."""
    seconds = {}
    cols = abar.shape[1]

    t = time.perf_counter()
    a = np.ascontiguousarray(abar, dtype=dtype)
    x = a.T @ a
    seconds["covariance"] = time.perf_counter() - t

    t = time.perf_counter()
    s, u = np.linalg.eigh(x)
    s, u = s[::-1], u[:, ::-1]                 # descending
    seconds["eigh"] = time.perf_counter() - t
    del x

    t = time.perf_counter()
    kept = paper_cut(s, threshold)
    eye = np.eye(cols, dtype=dtype)
    if kept:
        u1 = np.ascontiguousarray(u[:, :kept])
        p = eye - u1 @ u1.T
    else:
        p = eye.copy()                         # no cut: P = I
    seconds["projector"] = time.perf_counter() - t
    del u

    t = time.perf_counter()
    b = w @ (eye - p) + q @ p
    m = ((b * q).sum(axis=1) + dtype(lam)) / ((q * q).sum(axis=1) + dtype(lam))
    seconds["m"] = time.perf_counter() - t

    seconds["total_refine"] = sum(seconds[k] for k in ("covariance", "eigh", "projector", "m"))
    return m.astype(np.float64), kept, seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("layer", nargs="?", help="safetensors file with W, X and optionally Q")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                    help="precision of X, eigh, P and m (default float32, as the reference)")
    ap.add_argument("--q-tensor", default="Q", help="name of the quantized weights (default Q)")
    ap.add_argument("--threshold", type=float, default=0.1, help="cut threshold t (0.1)")
    ap.add_argument("--lambda", dest="lam", type=float, default=0.2, help="ridge weight (0.2)")
    ap.add_argument("--m-out", help="write m (float64 .npy) here")
    ap.add_argument("--check-blas", action="store_true",
                    help="print the BLAS report only; exit 3 unless OpenBLAS is loaded")
    args = ap.parse_args()

    if args.check_blas:
        report = blas_report()
        print(json.dumps({"blas": report, "threads": thread_count()}))
        return 0 if report["kind"] == "openblas" else 3
    if not args.layer:
        ap.error("LAYER is required")

    dtype = np.dtype(args.dtype).type
    st = SafeTensors(args.layer)
    for name in ("W", "X"):
        if name not in st:
            sys.exit(f"{args.layer}: no tensor {name}; need W (rows x cols) and "
                     "X (nseq x seqlen x cols or tokens x cols)")
    w = st.read("W", dtype)
    if args.q_tensor in st:
        q = st.read(args.q_tensor, dtype)
        q_source = args.q_tensor
    else:
        q = rtn_minmax(w).astype(dtype)
        q_source = "rtn4_minmax"
    if q.shape != w.shape:
        sys.exit(f"{args.layer}: {q_source} is {q.shape} but W is {w.shape}")

    t = time.perf_counter()
    abar = sample_mean(st)
    abar_seconds = time.perf_counter() - t
    if abar.shape[1] != w.shape[1]:
        sys.exit(f"{args.layer}: X has {abar.shape[1]} columns but W has {w.shape[1]}")
    xshape = st.shape("X")

    m, kept, seconds = dense_path(abar, w, q, dtype, args.threshold, args.lam)
    if args.m_out:
        np.save(args.m_out, m)

    out = {
        "dtype": args.dtype,
        "rows": w.shape[0],
        "cols": w.shape[1],
        "sequences": xshape[0] if len(xshape) == 3 else 1,
        "positions": abar.shape[0],
        "kept": kept,
        "cut_index": kept if kept else -1,
        "threshold": args.threshold,
        "lambda": args.lam,
        "q_source": q_source,
        "seconds": {"abar": abar_seconds, **seconds},
        "blas": blas_report(),
        "threads": thread_count(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
