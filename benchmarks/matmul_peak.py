"""The machine's measured fp32 matmul peak: the best of numpy, torch and jax on one large square matmul.

MFU in the other benchmarks is model FLOP/s divided by the best of these (a *measured* peak, not the
datasheet number), so a ratio of 1.0 means "as fast as the best GEMM library on this machine".

    python benchmarks/matmul_peak.py [--size 2048] [--reps 5] [--threads N]

Each library runs C = A @ B (n×n fp32, 2·n³ FLOPs) ``reps`` times after one warm-up; the best time counts.
Thread limits (``--threads``) must be in place before numpy/torch/jax start their pools; ``limit_threads``
does that and is shared with ``forward.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def limit_threads(threads: int | None) -> int:
    """Pin this process to ``threads`` cores (all if None) *before* importing numpy/torch/jax.

    XLA's CPU client sizes its thread pool from the process's CPU affinity, OpenBLAS/MKL/OpenMP from the
    ``*_NUM_THREADS`` variables, so both are set. Returns the thread count in force.
    """
    cores = sorted(os.sched_getaffinity(0))
    threads = len(cores) if not threads else min(threads, len(cores))
    os.sched_setaffinity(0, cores[:threads])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    return threads


def _best_seconds(fn, reps: int) -> float:
    fn()  # warm-up (allocations, jit compile)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure_peak(size: int = 2048, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of an fp32 ``size``² matmul for numpy, torch and jax (best of ``reps``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    ja, jb = jax.device_put(a), jax.device_put(b)
    jmm = jax.jit(jnp.matmul)

    def torch_mm():
        with torch.inference_mode():
            torch.mm(ta, tb)

    runs = {
        "numpy": lambda: np.matmul(a, b),
        "torch": torch_mm,
        "jax": lambda: jmm(ja, jb).block_until_ready(),
    }
    flops = 2.0 * size**3
    return {name: flops / _best_seconds(fn, reps) / 1e9 for name, fn in runs.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="cores to use (default: all this process may use)")
    args = p.parse_args()
    threads = limit_threads(args.threads)
    peak = measure_peak(args.size, args.reps)
    for name, gflops in peak.items():
        print(f"{name:>6}: {gflops:8.1f} GFLOP/s  (fp32 {args.size}x{args.size}, best of {args.reps}, "
              f"{threads} threads)")
    print(json.dumps({"bench": "matmul_peak", "size": args.size, "threads": threads,
                      "gflops": {k: round(v, 1) for k, v in peak.items()}, "best": max(peak, key=peak.get)}))


if __name__ == "__main__":
    main()
