"""The time schedule of Dream's discrete-diffusion sampler (spec §5.2), computed on the host.

The reference uses ``timesteps = torch.linspace(1, eps, steps + 1)`` in float32 and, at step ``i`` with
``t = timesteps[i]`` and ``s = timesteps[i + 1]``:

* ``origin`` reveals each masked position with probability ``1 − s/t`` (1 at the last step);
* the confidence algorithms reveal ``int(M·(1 − s/t))`` positions — Python ``int()`` truncation of a
  float32 product, M the number of masked positions — and all M at the last step;
* ``eos_penalty`` adds ``eos_penalty·log(1 − t + eps)`` to the pad/EOS logit of masked positions.

Because truncation turns last-bit differences into different reveal counts, the float32 values here are the
reference's bit for bit: ``torch.linspace`` evaluates ``start + step·i`` (first half) and
``end − step·(n − 1 − i)`` (second half) with a fused multiply-add, reproduced below through an exact
float64 product rounded once to float32. The compiled loop receives these arrays, so it never recomputes
them (and XLA cannot re-associate them).
"""

from __future__ import annotations

import numpy as np

_F32 = np.float32


def timesteps(steps: int, eps: float = 1e-3) -> np.ndarray:
    """``torch.linspace(1, eps, steps + 1)`` in float32, bit-identical ([steps + 1] float32).

    Exact for ``steps < 2**20`` and eps ≥ 1e-7 (the float64 product and sum below are then exact, so one
    rounding to float32 is the fused multiply-add torch performs).
    """
    if steps < 1:
        raise ValueError(f"steps must be ≥ 1, got {steps}")
    n = steps + 1
    start, end = _F32(1.0), _F32(eps)
    step = (end - start) / _F32(n - 1)  # float32 division, as torch
    i = np.arange(n, dtype=np.float64)
    first = (np.float64(step) * i + np.float64(start)).astype(_F32)
    second = (np.float64(end) - np.float64(step) * (n - 1 - i)).astype(_F32)
    return np.where(np.arange(n) < n // 2, first, second).astype(_F32)


def transfer_fractions(steps: int, eps: float = 1e-3) -> np.ndarray:
    """``1 − s/t`` per step in float32 ([steps]); the last entry is exactly 1 (reveal everything).

    ``origin``: the per-position reveal probability. Confidence algorithms: the reveal count is
    ``floor(float32(M)·fraction)`` — the reference's ``int(num_mask_token * (1 - s / t))``.
    """
    ts = timesteps(steps, eps)
    frac = (_F32(1.0) - ts[1:] / ts[:-1]).astype(_F32)
    frac[-1] = _F32(1.0)
    return frac


def eos_penalty_terms(steps: int, eps: float = 1e-3, eos_penalty: float = 0.0) -> np.ndarray:
    """``eos_penalty·log(1 − t + eps)`` per step in float32 ([steps]), added to the pad/EOS logit."""
    t = timesteps(steps, eps)[:-1]
    return (_F32(eos_penalty) * np.log(_F32(1.0) - t + _F32(eps))).astype(_F32)


def reveal_counts(num_masked: int, steps: int, eps: float = 1e-3) -> np.ndarray:
    """Tokens revealed per step by the confidence algorithms for a canvas of ``num_masked`` masks, when
    every revealed token stays revealed ([steps] int; sums to ``num_masked``). For inspection and docs."""
    frac = transfer_fractions(steps, eps)
    left, out = num_masked, []
    for f in frac:
        n = int(np.floor(_F32(left) * f))
        out.append(n)
        left -= n
    return np.asarray(out)
