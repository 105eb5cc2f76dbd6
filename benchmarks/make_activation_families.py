#!/usr/bin/python3
"""Writes q2n-layer input files for three activation families and prints the kept count the
paper cut rule gives for each.

  make_activation_families.py --rows 64 --cols 256 --nseq 2 --seqlen 128 --seed 0 --out-dir DIR

Each DIR/<family>.safetensors holds W (rows x cols, Gaussian with sd 0.02), Q (W on a 4-bit
per-row min-max grid, reference_dense.rtn_minmax) and X (nseq x positions x cols), all F32:

  steep           16 directions with strengths decaying by 0.7 per direction, noise sd 1e-3
  flat_massive    LLM-like: position 0 carries a massive activation (4 channels at 100x the
                  typical entry, the same in every sequence), 32 structured directions with
                  slowly decaying strengths and an isotropic noise floor whose total energy is
                  0.15x the structured energy; at cols 4096, seqlen 2048 and nseq 2 the cut
                  keeps about 340 directions (with a 0.10x floor about 80, 0.20x about 510)
  rank_deficient  positions = min(seqlen, cols / 2) < cols, so Abar has rank < cols; i.i.d.
                  entries with log-normal channel scales and 8 outlier channels at 10x

The kept count uses reference_dense's reader, sample mean and cut rule; its spectrum comes
from the smaller of Abar Abar^T and Abar^T Abar in float64 (the same nonzero eigenvalues,
zeros filled in to cols).
"""

import argparse
import json
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_dense as ref  # noqa: E402

FAMILIES = ("steep", "flat_massive", "rank_deficient")


def orthonormal_rows(rng, k, cols):
    """k orthonormal directions in R^cols (k x cols)."""
    q, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    return q.T


def steep(rng, nseq, seqlen, cols):
    k = min(16, cols // 4)
    basis = orthonormal_rows(rng, k, cols) * (4.0 * 0.7 ** np.arange(k))[:, None]
    for _ in range(nseq):
        yield rng.standard_normal((seqlen, k)) @ basis + 1e-3 * rng.standard_normal((seqlen, cols))


def flat_massive(rng, nseq, seqlen, cols):
    k = min(32, cols // 4)
    strengths = 1.0 / np.sqrt(1.0 + np.arange(k) / 4.0)
    basis = orthonormal_rows(rng, k, cols) * strengths[:, None]
    structured = float(np.sum(strengths ** 2))        # per-position energy of the structure
    noise_sd = np.sqrt(0.15 * structured / cols)      # noise energy = 0.15x structured
    typical = np.sqrt(1.15 * structured / cols)       # RMS of an ordinary entry
    massive = np.zeros(cols)
    channels = rng.choice(cols, size=min(4, cols), replace=False)
    massive[channels] = 100.0 * typical * rng.choice([-1.0, 1.0], size=channels.size)
    for _ in range(nseq):
        x = rng.standard_normal((seqlen, k)) @ basis
        x += noise_sd * rng.standard_normal((seqlen, cols))
        x[0] += massive
        yield x


def rank_deficient(rng, nseq, seqlen, cols):
    positions = min(seqlen, cols // 2)
    scales = np.exp(0.5 * rng.standard_normal(cols))
    scales[rng.choice(cols, size=min(8, cols), replace=False)] *= 10.0
    for _ in range(nseq):
        yield rng.standard_normal((positions, cols)) * scales


def write_safetensors(path, tensors, metadata):
    """tensors: (name, float32 array) pairs, written as F32 in this order."""
    header, offset = {}, 0
    for name, a in tensors:
        header[name] = {"dtype": "F32", "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)                   # data starts 8-byte aligned
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, a in tensors:
            np.ascontiguousarray(a, "<f4").tofile(f)
    os.replace(tmp, path)


def paper_kept(abar, threshold=0.1):
    """Paper-rule kept count of Abar^T Abar's spectrum (float64, smaller Gram side)."""
    a = np.asarray(abar, np.float64)
    g = a @ a.T if a.shape[0] < a.shape[1] else a.T @ a
    s = np.zeros(a.shape[1])
    s[: g.shape[0]] = np.linalg.eigvalsh(g)[::-1]
    return ref.paper_cut(s, threshold), int(np.sum(s > s[0] * 1e-12))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cols", type=int, default=256)
    ap.add_argument("--nseq", type=int, default=2)
    ap.add_argument("--seqlen", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help="comma list of families to write (default all)")
    args = ap.parse_args()
    if min(args.rows, args.cols, args.nseq, args.seqlen) <= 0 or args.cols < 8:
        ap.error("rows, nseq and seqlen must be positive and cols at least 8")
    families = args.families.split(",")
    for f in families:
        if f not in FAMILIES:
            ap.error(f"unknown family {f}; choose from {', '.join(FAMILIES)}")
    os.makedirs(args.out_dir, exist_ok=True)

    makers = {"steep": steep, "flat_massive": flat_massive, "rank_deficient": rank_deficient}
    for index, name in enumerate(FAMILIES):
        if name not in families:
            continue
        # One stream per family: a family's file does not depend on which others are written.
        rng = np.random.default_rng([args.seed, index])
        w = rng.normal(0.0, 0.02, (args.rows, args.cols)).astype(np.float32)
        q = ref.rtn_minmax(w, 4)
        x = np.stack([s.astype(np.float32)
                      for s in makers[name](rng, args.nseq, args.seqlen, args.cols)])
        path = os.path.join(args.out_dir, name + ".safetensors")
        write_safetensors(path, [("W", w), ("X", x), ("Q", q)],
                          {"family": name, "seed": args.seed, "q": "rtn4_minmax"})
        del x
        abar = ref.sample_mean(ref.SafeTensors(path))
        kept, rank = paper_kept(abar)
        print(json.dumps({"family": name, "file": path, "rows": args.rows, "cols": args.cols,
                          "nseq": args.nseq, "positions": abar.shape[0], "rank": rank,
                          "kept": kept}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
