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
* ``"splash"``: the Pallas splash-attention kernel (TPU only), segment ids passed natively.
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

def _splash_attention(q, k, v, q_seg, kv_seg, scale):
    if jax.default_backend() != "tpu":
        raise ValueError("attention_impl='splash' needs a TPU backend; use 'xla' (any backend) or 'cudnn' (GPU)")
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

    b, s, h, d = q.shape
    kh = k.shape[2]
    if kh != h:  # splash MHA kernel wants equal head counts
        k = jnp.repeat(k, h // kh, axis=2)
        v = jnp.repeat(v, h // kh, axis=2)
    mask = sm.MultiHeadMask([sm.FullMask((s, k.shape[1])) for _ in range(h)])
    kernel = sk.make_splash_mha(mask, head_shards=1, q_seq_shards=1)
    seg = sk.SegmentIds(q=q_seg.astype(jnp.int32), kv=kv_seg.astype(jnp.int32))
    qt = (q * scale).transpose(0, 2, 1, 3)
    out = jax.vmap(kernel)(qt, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), segment_ids=seg)
    return out.transpose(0, 2, 1, 3)

def attention(q: jax.Array, k: jax.Array, v: jax.Array, q_segment_ids: jax.Array,
              kv_segment_ids: jax.Array | None = None, *, impl: str = "xla", scale: float | None = None) -> jax.Array:
    """Segment-masked attention.

    Args:
      q: [B, S, H, D]; k, v: [B, T, K, D] with H a multiple of K (GQA; kv head j serves query heads
        j·H/K … (j+1)·H/K − 1, as the reference's ``repeat_interleave``).
      q_segment_ids: [B, S] int, 0 = padding. kv_segment_ids: [B, T] (defaults to q's).
      impl: "xla" | "jax" | "cudnn" | "splash".
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
    elif impl == "splash":
        out = _splash_attention(q, k, v, q_segment_ids, kv_segment_ids, scale)
    else:
        raise ValueError(f"unknown attention impl {impl!r}; expected xla, jax, cudnn or splash")
    return jnp.where((q_segment_ids != 0)[:, :, None, None], out, jnp.zeros((), out.dtype))
