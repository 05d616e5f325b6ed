"""Bidirectional multi-head attention with segment ids: one function, several implementations.

Masking model (static shapes): every query/key position has an integer segment id; 0 means padding.
A query attends to the keys of its own segment only, so

* the LLM passes ``attention_mask`` (1 = token, 0 = pad) → padding mask, bidirectional (spec §1.7);
* the ViT passes one id per image/temporal slice → block-diagonal attention (Qwen2-VL ``cu_seqlens``);
* packed training samples can use ids 1, 2, 3, … per row.

Query rows whose segment is 0 (padding) produce exactly 0, never NaN (spec §11.21), whatever the backend.

Implementations (``impl``):

* ``"xla"``: einsum + fp32 softmax; runs everywhere and is the numerical reference.
* ``"jax"``: ``jax.nn.dot_product_attention`` with XLA's choice of kernel.
* ``"cudnn"``: ``jax.nn.dot_product_attention(implementation="cudnn")`` (GPU, bf16/fp16 only).
* ``"splash"``: the Pallas splash-attention kernel (TPU), segment ids passed natively. Sequence lengths must
  suit its blocks (multiples of 128). Under a sharded jit it is not partitioned yet (shard_map it for pods).
* ``"splash_interpret"``: the same kernel in Pallas' interpreter, on any backend (slow; lets CPU tests check
  the splash path's numerics).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

def _allowed(q_seg: jax.Array, kv_seg: jax.Array) -> jax.Array:
    """[B, 1, S, T] boolean: same segment and the key is not padding."""
    ok = (q_seg[:, :, None] == kv_seg[:, None, :]) & (kv_seg[:, None, :] != 0)
    return ok[:, None]

def _xla_attention(q, k, v, q_seg, kv_seg, scale):
    b, s, h, d = q.shape
    kh = k.shape[2]
    qg = q.reshape(b, s, kh, h // kh, d)  # query head j*G+g reads kv head j (repeat_interleave layout)
    scores = jnp.einsum("bskgd,btkd->bkgst", qg, k, preferred_element_type=jnp.float32) * scale
    mask = _allowed(q_seg, kv_seg)[:, :, None]  # [B,1,1,S,T]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgst,btkd->bskgd", probs, v, preferred_element_type=jnp.float32)
    return out.reshape(b, s, h, d).astype(q.dtype)

def _jax_nn_attention(q, k, v, q_seg, kv_seg, scale, implementation):
    return jax.nn.dot_product_attention(
        q, k, v, mask=_allowed(q_seg, kv_seg), scale=scale, is_causal=False, implementation=implementation)

def _splash_attention(q, k, v, q_seg, kv_seg, scale, interpret: bool):
    """Pallas splash attention (TPU); ``interpret`` runs the same kernel in Pallas' interpreter (any backend)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, s, h, d = q.shape
    t = k.shape[1]
    kh = k.shape[2]
    if kh != h:  # the MHA kernel wants one kv head per query head (repeat_interleave layout)
        k = jnp.repeat(k, h // kh, axis=2)
        v = jnp.repeat(v, h // kh, axis=2)
    mask = sm.MultiHeadMask([sm.FullMask((s, t)) for _ in range(h)])
    bq, bkv = min(512, s), min(512, t)
    blocks = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq, block_kv_dkv=bkv,
                           block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
    kernel = sk.make_splash_mha(mask, block_sizes=blocks, head_shards=1, q_seq_shards=1,
                                interpret=interpret)
    seg = sk.SegmentIds(q=q_seg.astype(jnp.int32), kv=kv_seg.astype(jnp.int32))
    to_heads = lambda x: x.transpose(0, 2, 1, 3)  # noqa: E731  [B, S, H, D] -> [B, H, S, D]
    out = jax.vmap(kernel)(to_heads(q * jnp.asarray(scale, q.dtype)), to_heads(k), to_heads(v), segment_ids=seg)
    return to_heads(out)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
              kv_segment_ids: jax.Array | None = None, *, impl: str = "xla", scale: float | None = None) -> jax.Array:
    """Segment-masked attention.

    Args:
      q: [B, S, H, D]; k, v: [B, T, K, D] with H a multiple of K (GQA; kv head j serves query heads
        j·H/K … (j+1)·H/K − 1, as the reference's ``repeat_interleave``).
      q_segment_ids: [B, S] int, 0 = padding. kv_segment_ids: [B, T] (defaults to q's).
      impl: "xla" | "jax" | "cudnn" | "splash" | "splash_interpret".
      scale: defaults to 1/sqrt(D).
    Returns:
      [B, S, H, D] in q's dtype; rows of padding queries are 0.
    """
    if kv_segment_ids is None:
        kv_segment_ids = q_segment_ids
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads {q.shape[2]} not a multiple of kv heads {k.shape[2]}")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if impl == "xla":
        out = _xla_attention(q, k, v, q_segment_ids, kv_segment_ids, scale)
    elif impl == "jax":
        out = _jax_nn_attention(q, k, v, q_segment_ids, kv_segment_ids, scale, None)
    elif impl == "cudnn":
        out = _jax_nn_attention(q, k, v, q_segment_ids, kv_segment_ids, scale, "cudnn")
    elif impl in ("splash", "splash_interpret"):
        out = _splash_attention(q, k, v, q_segment_ids, kv_segment_ids, scale, interpret=impl == "splash_interpret")
    else:
        raise ValueError(f"unknown attention impl {impl!r}; expected xla, jax, cudnn, splash or splash_interpret")
    return jnp.where((q_segment_ids != 0)[:, :, None, None], out, jnp.zeros((), out.dtype))
