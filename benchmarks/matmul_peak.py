"""The machine's measured fp32 matmul peak: the best of numpy, torch and jax on one large square matmul.

MFU in the other benchmarks is model FLOP/s divided by the best of these (a *measured* peak, not the
datasheet number), so a ratio of 1.0 means "as fast as the best GEMM library on this machine".

    python benchmarks/matmul_peak.py [--size 2048] [--reps 5] [--threads N] [--model-shapes]

Each library runs C = A @ B (n×n fp32, 2·n³ FLOPs) ``reps`` times after one warm-up; the best time counts.
``--model-shapes`` also times the GEMMs of the small config's train step (``train_step.py``: 384 LLM tokens of
width 512, MLP 1408, the 32000-column lm_head over 126 target rows, 1024 ViT patches of width 256): the ceiling
an MFU measured against the square peak can reach when a step is nothing but these matmuls.
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


def add_malloc_argument(p) -> None:
    """``--malloc reuse|default`` for the JAX-vs-torch benchmarks (``apply_malloc`` acts on it)."""
    p.add_argument("--malloc", default="reuse", choices=["reuse", "default"],
                   help="reuse: dreamjax.hostmem.reuse_freed_memory() as the dreamjax CLI's compute commands do (both "
                        "frameworks run in this process); default: glibc's defaults (large temporaries are mapped "
                        "and unmapped, and faulted back in, on every call)")


def apply_malloc(choice: str) -> None:
    """Before JAX/torch start: with ``reuse``, keep freed host memory for reuse (``dreamjax.hostmem``)."""
    if choice == "reuse":
        from dreamjax.hostmem import reuse_freed_memory

        reuse_freed_memory()


def _best_seconds(fn, reps: int) -> float:
    fn()  # warm-up (allocations, jit compile)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


# (name, M, K, N) of the small train-step config's GEMMs (forward; the backward's are the same sizes permuted)
MODEL_SHAPES = (
    ("llm qkv/o proj", 384, 512, 512), ("llm mlp up/gate", 384, 512, 1408), ("llm mlp down", 384, 1408, 512),
    ("lm_head (targets)", 126, 512, 32000), ("vit qkv", 1024, 256, 768), ("vit mlp up", 1024, 256, 1024),
    ("vit mlp down", 1024, 1024, 256),
)


def measure_matmul(m: int, k: int, n: int, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of an fp32 [m, k] @ [k, n] matmul for numpy, torch and jax (best of ``reps``)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
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
    flops = 2.0 * m * k * n
    return {name: flops / _best_seconds(fn, reps) / 1e9 for name, fn in runs.items()}


def measure_peak(size: int = 2048, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of an fp32 ``size``² matmul for numpy, torch and jax (best of ``reps``)."""
    return measure_matmul(size, size, size, reps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="cores to use (default: all this process may use)")
    p.add_argument("--model-shapes", action="store_true", help="also the small train-step config's GEMM shapes")
    args = p.parse_args()
    threads = limit_threads(args.threads)
    peak = measure_peak(args.size, args.reps)
    for name, gflops in peak.items():
        print(f"{name:>6}: {gflops:8.1f} GFLOP/s  (fp32 {args.size}x{args.size}, best of {args.reps}, "
              f"{threads} threads)")
    record = {"bench": "matmul_peak", "size": args.size, "threads": threads,
              "gflops": {k: round(v, 1) for k, v in peak.items()}, "best": max(peak, key=peak.get)}
    if args.model_shapes:
        best = max(peak.values())
        print(f"\n{'GEMM (M x K x N)':<34} {'numpy':>7} {'torch':>7} {'jax':>7}  GFLOP/s; jax / square peak")
        record["model_shapes"] = {}
        for name, m, k, n in MODEL_SHAPES:
            r = measure_matmul(m, k, n, max(args.reps, 20))
            print(f"{name + f' ({m}x{k}x{n})':<34} {r['numpy']:7.1f} {r['torch']:7.1f} {r['jax']:7.1f}  "
                  f"{100 * r['jax'] / best:5.1f} %")
            record["model_shapes"][name] = {k_: round(v, 1) for k_, v in r.items()}
    print(json.dumps(record))


if __name__ == "__main__":
    main()
