"""Qwen2-VL vision tower (ViT + PatchMerger), spec §1.3.

Input is the image processor's patch rows ([N, 1176] = C·T·14·14, in merge-window order) with their 2-D
rotary coordinates and segment ids (``positions.vision_patch_layout``). The tower works on one flat
sequence of all patches of all images (as the reference does); attention is block-diagonal through the
segment ids, so the shapes stay static while images vary. Output: one token per 2×2 window, width
``hidden_size``, in the order of the input windows.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamjax.models.attention import attention
from dreamjax.models.config import VisionConfig
from dreamjax.models.layers import dense, gelu_exact, layer_norm, maybe_remat, quick_gelu
from dreamjax.models.rotary import apply_rotary, vision_cos_sin


class VisionAttention(nn.Module):
    config: VisionConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    impl: str = "xla"

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids):
        """x [R, L, E]: a patch attends within its row, and there within its segment."""
        c = self.config
        r, n = segment_ids.shape
        qkv = dense(3 * c.embed_dim, ("vit_embed", "vit_qkv"), use_bias=True, dtype=self.dtype,
                    param_dtype=self.param_dtype, name="qkv")(x)
        q, k, v = jnp.moveaxis(qkv.reshape(r, n, 3, c.num_heads, c.head_dim), 2, 0)  # [q; k; v], head-major
        # Rotary in fp32, cast back (reference apply_rotary_pos_emb_vision).
        q = apply_rotary(q.astype(jnp.float32), cos, sin).astype(self.dtype)
        k = apply_rotary(k.astype(jnp.float32), cos, sin).astype(self.dtype)
        out = attention(q, k, v, segment_ids, impl=self.impl)
        return dense(c.embed_dim, ("vit_heads", "vit_embed"), use_bias=True, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="proj")(out.reshape(r, n, c.embed_dim))


class VisionMLP(nn.Module):
    config: VisionConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        c = self.config
        h = dense(c.mlp_dim, ("vit_embed", "vit_mlp"), use_bias=True, dtype=self.dtype,
                  param_dtype=self.param_dtype, name="fc1")(x)
        return dense(c.embed_dim, ("vit_mlp", "vit_embed"), use_bias=True, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="fc2")(quick_gelu(h))


class VisionBlock(nn.Module):
    """Pre-LN block: x += attn(norm1(x)); x += mlp(norm2(x))."""

    config: VisionConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    impl: str = "xla"

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = x + VisionAttention(c, impl=self.impl, name="attn", **kw)(
            layer_norm(c.layer_norm_eps, name="norm1", axis_name="vit_norm", **kw)(x), cos, sin, segment_ids)
        x = x + VisionMLP(c, name="mlp", **kw)(layer_norm(c.layer_norm_eps, name="norm2", axis_name="vit_norm", **kw)(x))
        return x


class _ScannedVisionBlock(VisionBlock):
    """VisionBlock with the (carry, out) signature nn.scan wants."""

    @nn.compact
    def __call__(self, x, cos, sin, segment_ids):  # type: ignore[override]
        return super().__call__(x, cos, sin, segment_ids), None


class PatchMerger(nn.Module):
    """LN per patch, 4 consecutive patches (one 2×2 window) → 5120 → Linear → exact GELU → Linear → hidden."""

    config: VisionConfig
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x):
        c = self.config
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = layer_norm(c.layer_norm_eps, name="ln_q", axis_name="vit_norm", **kw)(x)
        x = x.reshape(-1, c.merged_dim)
        x = dense(c.merged_dim, ("vit_merged", "vit_mlp"), use_bias=True, name="mlp_0", **kw)(x)
        return dense(c.hidden_size, ("vit_mlp", "embed"), use_bias=True, name="mlp_2", **kw)(gelu_exact(x))


class VisionTransformer(nn.Module):
    """Qwen2-VL ViT: PatchEmbed (bias-free dense over 1176-d rows) → blocks → PatchMerger.

    ``scan_layers`` stacks the blocks under one ``blocks`` param tree with a leading ``layers`` axis.
    """

    config: VisionConfig
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    scan_layers: bool = False
    remat: str = "none"
    impl: str = "xla"

    @nn.compact
    def __call__(self, pixel_values: jax.Array, patch_positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """Patch rows → merged tokens.

        Flat: pixel_values [N, patch_dim], patch_positions [N, 2], segment_ids [N] (0 = padding), the
        reference's layout; every patch is scored against all N (masked block-diagonally).
        Row-packed: [R, L, patch_dim], [R, L, 2], [R, L] (``positions.vision_patch_rows``): attention stays
        inside each row of L patches — R·L² scores instead of (R·L)², the same result when no image slice
        crosses a row. Returns [N/m², hidden] (flat) or [R·L/m², hidden] (row-packed, padding windows kept).
        """
        c = self.config
        if pixel_values.ndim == 2:
            pixel_values, patch_positions, segment_ids = pixel_values[None], patch_positions[None], segment_ids[None]
        if segment_ids.shape[-1] % (c.spatial_merge_size**2):
            raise ValueError(f"{segment_ids.shape[-1]} patches per row is not a multiple of spatial_merge_size²")
        if pixel_values.shape[-1] != c.patch_dim:
            raise ValueError(f"pixel_values rows have {pixel_values.shape[-1]} values; the vision tower expects "
                             f"C·T·P·P = {c.patch_dim}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = dense(c.embed_dim, ("vit_patch", "vit_embed"), use_bias=False, name="patch_embed", **kw)(
            pixel_values.astype(self.dtype))
        cos, sin = vision_cos_sin(patch_positions, c.head_dim, c.rope_theta)
        if self.scan_layers:
            block = maybe_remat(_ScannedVisionBlock, self.remat)
            x, _ = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                           in_axes=(nn.broadcast, nn.broadcast, nn.broadcast), length=c.depth,
                           metadata_params={nn.PARTITION_NAME: "layers"})(
                c, impl=self.impl, name="blocks", **kw)(x, cos, sin, segment_ids)
        else:
            block = maybe_remat(VisionBlock, self.remat)
            for i in range(c.depth):
                x = block(c, impl=self.impl, name=f"blocks_{i}", **kw)(x, cos, sin, segment_ids)
        return PatchMerger(c, name="merger", **kw)(x)
