"""Times numpy's float32 matmul (OpenBLAS) on the linear-layer shapes `delo bench gemm` uses.

Usage: python3 numpy_gemm.py REPS M,N,K [M,N,K ...]   (y[M,N] = x[M,K] · W[N,K]ᵀ)
Prints one JSON object: {"M,N,K": best seconds, ..., "numpy": version, "blas": name}.
"""

import json
import sys
import time

import numpy as np


def best_time(m, n, k, reps):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((m, k), dtype=np.float32)
    w = rng.standard_normal((n, k), dtype=np.float32)
    x @ w.T  # warm-up: thread pool start, page faults
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        x @ w.T
        best = min(best, time.perf_counter() - t)
    return best


def blas_name():
    try:
        cfg = np.show_config(mode="dicts")
        return cfg["Build Dependencies"]["blas"]["name"]
    except Exception:  # older numpy: no dict mode
        return "unknown"


def main():
    out = {"numpy": np.__version__, "blas": blas_name()}
    reps = int(sys.argv[1])
    for spec in sys.argv[2:]:
        m, n, k = (int(v) for v in spec.split(","))
        out[spec] = best_time(m, n, k, reps)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
