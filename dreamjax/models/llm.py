"""The Dream language model: a Qwen2-shaped decoder with bidirectional attention (spec §1.5–1.7).

GQA with q/k/v bias and bias-free o_proj, SwiGLU MLP without biases, RMSNorm (fp32 normalize → cast →
weight), rotary with M-RoPE sections, and *no causal mask*: the only mask is padding (segment ids).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamjax.models.attention import attention
from dreamjax.models.config import DreamVLConfig
from dreamjax.models.layers import RMSNorm, default_kernel_init, dense, maybe_remat, param_init
from dreamjax.models.rotary import apply_rotary, mrope_cos_sin

ACT = ("batch", "length", "act_embed")


def _dtypes(config: DreamVLConfig) -> dict:
    return dict(dtype=jnp.dtype(config.dtype), param_dtype=jnp.dtype(config.param_dtype))


class DreamAttention(nn.Module):
    config: DreamVLConfig

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids):
        c = self.config
        kw = _dtypes(c)
        b, s, _ = x.shape
        hd = c.head_dim
        q = dense(c.num_attention_heads * hd, ("embed", "heads"), use_bias=True, name="q_proj", **kw)(x)
        k = dense(c.num_key_value_heads * hd, ("embed", "kv_heads"), use_bias=True, name="k_proj", **kw)(x)
        v = dense(c.num_key_value_heads * hd, ("embed", "kv_heads"), use_bias=True, name="v_proj", **kw)(x)
        q = q.reshape(b, s, c.num_attention_heads, hd)
        k = k.reshape(b, s, c.num_key_value_heads, hd)
        v = v.reshape(b, s, c.num_key_value_heads, hd)
        q = nn.with_logical_constraint(apply_rotary(q, cos, sin), ("batch", "length", "act_heads", "head_dim"))
        k = nn.with_logical_constraint(apply_rotary(k, cos, sin), ("batch", "length", "act_kv_heads", "head_dim"))
        out = attention(q, k, v, segment_ids, impl=c.attention_impl)
        out = nn.with_logical_constraint(out, ("batch", "length", "act_heads", "head_dim"))
        return dense(c.hidden_size, ("heads", "embed"), use_bias=False, name="o_proj", **kw)(
            out.reshape(b, s, c.num_attention_heads * hd))


class DreamMLP(nn.Module):
    config: DreamVLConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        kw = _dtypes(c)
        gate = dense(c.intermediate_size, ("embed", "mlp"), use_bias=False, name="gate_proj", **kw)(x)
        up = dense(c.intermediate_size, ("embed", "mlp"), use_bias=False, name="up_proj", **kw)(x)
        h = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        return dense(c.hidden_size, ("mlp", "embed"), use_bias=False, name="down_proj", **kw)(h)


class DreamDecoderLayer(nn.Module):
    config: DreamVLConfig

    @nn.compact
    def __call__(self, h, cos, sin, segment_ids):
        c = self.config
        kw = _dtypes(c)
        h = h + DreamAttention(c, name="self_attn")(
            RMSNorm(c.rms_norm_eps, name="input_layernorm", **kw)(h), cos, sin, segment_ids)
        h = h + DreamMLP(c, name="mlp")(RMSNorm(c.rms_norm_eps, name="post_attention_layernorm", **kw)(h))
        return nn.with_logical_constraint(h, ACT)


class _ScannedDecoderLayer(DreamDecoderLayer):
    @nn.compact
    def __call__(self, h, cos, sin, segment_ids):  # type: ignore[override]
        return super().__call__(h, cos, sin, segment_ids), None


class DreamLM(nn.Module):
    """Embedding table + decoder stack + final norm (HF ``model.*``). ``lm_head`` lives in ``DreamVLModel``."""

    config: DreamVLConfig

    def setup(self):
        c = self.config
        self.embed_tokens = nn.Embed(
            c.vocab_size, c.hidden_size, dtype=jnp.dtype(c.dtype), param_dtype=jnp.dtype(c.param_dtype),
            embedding_init=param_init(default_kernel_init, ("vocab", "embed")))
        if c.scan_layers:
            layer = maybe_remat(_ScannedDecoderLayer, c.remat)
            self.layers = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                                  in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                                  length=c.num_hidden_layers, metadata_params={nn.PARTITION_NAME: "layers"})(c)
        else:
            layer = maybe_remat(DreamDecoderLayer, c.remat)
            self.layers = [layer(c, name=f"layers_{i}") for i in range(c.num_hidden_layers)]
        self.norm = RMSNorm(c.rms_norm_eps, **_dtypes(c))

    def embed(self, input_ids: jax.Array) -> jax.Array:
        return nn.with_logical_constraint(self.embed_tokens(input_ids), ACT)

    def __call__(self, inputs_embeds: jax.Array, segment_ids: jax.Array, position_ids: jax.Array) -> jax.Array:
        """inputs_embeds [B, S, D]; segment_ids [B, S] (0 = pad); position_ids [3, B, S] or [B, S] → [B, S, D]."""
        c = self.config
        cos, sin = mrope_cos_sin(position_ids, c.head_dim, c.rope_theta, c.mrope_section, jnp.dtype(c.dtype))
        h = nn.with_logical_constraint(inputs_embeds.astype(jnp.dtype(c.dtype)), ACT)
        if c.scan_layers:
            h, _ = self.layers(h, cos, sin, segment_ids)
        else:
            for layer in self.layers:
                h = layer(h, cos, sin, segment_ids)
        return self.norm(h)
