"""Rotary position embeddings: LLM 1-D / M-RoPE (spec §1.6) and the ViT's 2-D rotary (spec §1.3).

Tables are computed in fp32 (the reference disables autocast for them); the LLM casts cos/sin to the
compute dtype before rotating, the ViT rotates q/k in fp32 and casts back.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def inv_freq(dim: int, theta: float) -> np.ndarray:
    """1/theta^(arange(0, dim, 2)/dim) as fp32 (pow taken in fp64 and rounded: matches torch's fp32 table)."""
    exps = np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return np.float32(1.0) / np.power(np.float64(theta), exps.astype(np.float64)).astype(np.float32)


def rotate_half(x: jax.Array) -> jax.Array:
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: [..., S, H, D]; cos/sin: [..., S, D] (broadcast over heads)."""
    return x * cos[..., None, :] + rotate_half(x) * sin[..., None, :]


def mrope_cos_sin(position_ids: jax.Array, head_dim: int, theta: float, sections: Sequence[int],
                  dtype) -> tuple[jax.Array, jax.Array]:
    """M-RoPE tables.

    position_ids: [3, B, S] (temporal, height, width rows) or [B, S] (1-D; all rows equal).
    Channel block i of ``sections`` (repeated for both halves) reads row ``i mod 3``; with three equal rows
    this is ordinary RoPE. Returns cos, sin: [B, S, head_dim] in ``dtype``.
    """
    if position_ids.ndim == 2:
        position_ids = jnp.broadcast_to(position_ids[None], (3,) + position_ids.shape)
    freqs = position_ids.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq(head_dim, theta))  # [3,B,S,D/2]
    if sum(sections) != head_dim // 2:
        raise ValueError(f"mrope sections {list(sections)} do not sum to head_dim/2={head_dim // 2}")
    bounds = np.cumsum([0, *sections])
    freqs = jnp.concatenate(
        [freqs[i % 3, ..., bounds[i]:bounds[i + 1]] for i in range(len(sections)) if sections[i]], axis=-1)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb).astype(dtype), jnp.sin(emb).astype(dtype)


def vision_cos_sin(patch_positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """2-D rotary for ViT patches.

    patch_positions: [..., 2] int (row, col) in 14-px patch units, already in merge-window order.
    freqs = concat(row·f, col·f) with f = inv_freq(head_dim/2) → duplicated to head_dim. fp32 [..., head_dim].
    """
    f = jnp.asarray(inv_freq(head_dim // 2, theta))
    pos = patch_positions.astype(jnp.float32)
    freqs = jnp.concatenate([pos[..., 0:1] * f, pos[..., 1:2] * f], axis=-1)
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)
