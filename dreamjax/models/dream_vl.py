"""Dream-VL: embed → splice projected image features → bidirectional decoder → lm_head (spec §1.2).

``DreamVLModel`` is a pure Flax module. Its entry points (all usable through ``model.apply(...,
method=...)``) let the generator run the vision tower once and the decoder per step:

* ``__call__``: the full forward → logits [B, S, V] (logits[b, i] scores token i+1, as the reference);
* ``encode_images``: ViT + merger + projector → [N/4, D] features;
* ``embed``: token embeddings with image features spliced in;
* ``decode``: decoder over embeddings → final hidden states; ``lm_logits``: hidden → logits.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamjax.models.config import DreamVLConfig
from dreamjax.models.layers import default_kernel_init, dense, dense_dot_general, gelu_exact, param_init
from dreamjax.models.llm import ACT, DreamLM
from dreamjax.models.vision import VisionTransformer


class Projector(nn.Module):
    """Dream-VL's MLP after the merger: Linear(D→D) → exact GELU → Linear(D→D) (spec §1.4)."""

    hidden_size: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = dense(self.hidden_size, ("embed", "mlp"), use_bias=True, name="linear_1", **kw)(x)
        return dense(self.hidden_size, ("mlp", "embed"), use_bias=True, name="linear_2", **kw)(gelu_exact(x))


def splice_features(embeds: jax.Array, input_ids: jax.Array, features: jax.Array, token_id: int,
                    offset: jax.Array | int = 0) -> jax.Array:
    """Put ``features[offset + k]`` at the k-th occurrence of ``token_id`` (row-major over batch, then
    sequence), as the reference's ``masked_scatter``. Static shapes: features beyond the last such token
    (padding) are never read. The count check lives on the host (``DreamVL``), since jit cannot raise."""
    is_tok = (input_ids == token_id).reshape(-1)
    idx = jnp.cumsum(is_tok) - 1 + offset
    gathered = jnp.take(features, jnp.clip(idx, 0, features.shape[0] - 1), axis=0).astype(embeds.dtype)
    flat = jnp.where(is_tok[:, None], gathered, embeds.reshape(-1, embeds.shape[-1]))
    return flat.reshape(embeds.shape)


class DreamVLModel(nn.Module):
    config: DreamVLConfig

    def setup(self):
        c = self.config
        dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
        if c.vision is not None:
            self.visual = VisionTransformer(c.vision, dtype=dt, param_dtype=pdt, scan_layers=c.scan_layers,
                                            remat=c.remat, impl=c.attention_impl)
            if c.use_projector:
                self.projector = Projector(c.hidden_size, dtype=dt, param_dtype=pdt)
        self.model = DreamLM(c)
        if not c.tie_word_embeddings:
            self.lm_head = nn.Dense(c.vocab_size, use_bias=False, dtype=dt, param_dtype=pdt, dot_general=dense_dot_general,
                                    kernel_init=param_init(default_kernel_init, ("embed", "vocab")))

    def encode_images(self, pixel_values, patch_positions, patch_segment_ids):
        """Patches → features ready to splice (merger + projector), one per 2×2 window, in image order.

        Flat [N, patch_dim] input gives [N/m², D]. Row-packed [R, L, patch_dim] input
        (``positions.vision_patch_rows``) gives [R·L/m², D] with the valid windows first, in order (the
        padding windows between images are moved to the end; the splice never reads them).
        """
        if self.config.vision is None:
            raise ValueError("this model has no vision tower (text-only checkpoint); pass no pixel_values")
        feats = self.visual(pixel_values, patch_positions, patch_segment_ids)
        if pixel_values.ndim == 3:
            m2 = self.config.vision.spatial_merge_size**2
            valid = patch_segment_ids.reshape(-1, m2)[:, 0] != 0
            order = jnp.argsort(~valid, stable=True)  # valid windows first, original order kept
            feats = feats[order]
        return self.projector(feats) if self.config.use_projector else feats

    def embed(self, input_ids, image_features=None, video_features=None):
        embeds = self.model.embed(input_ids)
        if image_features is not None:
            embeds = splice_features(embeds, input_ids, image_features, self.config.image_token_id)
        if video_features is not None:
            embeds = splice_features(embeds, input_ids, video_features, self.config.video_token_id)
        return embeds

    def decode(self, inputs_embeds, segment_ids, position_ids):
        return self.model(inputs_embeds, segment_ids, position_ids)

    def lm_logits(self, hidden):
        c = self.config
        if c.tie_word_embeddings:
            logits = self.model.embed_tokens.attend(hidden)
        else:
            logits = self.lm_head(hidden)
        return nn.with_logical_constraint(logits, ("batch", "length", "act_vocab"))

    def __call__(self, input_ids, attention_mask=None, position_ids=None, pixel_values=None,
                 patch_positions=None, patch_segment_ids=None, pixel_values_videos=None, video_patch_positions=None,
                 video_patch_segment_ids=None, return_hidden: bool = False):
        """Full forward.

        input_ids [B, S] int; attention_mask [B, S] (1 token / 0 pad; also accepts packed segment ids);
        position_ids [3, B, S] (default: 1-D positions over valid tokens, the effective Dream-VL behaviour);
        pixel_values [N, patch_dim] with patch_positions [N, 2] and patch_segment_ids [N] from
        ``positions.vision_patch_layout`` (same for videos). Returns logits [B, S, V] (and hidden if asked).
        """
        if attention_mask is None:
            attention_mask = jnp.ones(input_ids.shape, jnp.int32)
        segment_ids = attention_mask.astype(jnp.int32)
        if position_ids is None:
            valid = segment_ids != 0
            pos = jnp.where(valid, jnp.cumsum(valid, axis=-1) - 1, 1)
            position_ids = jnp.broadcast_to(pos[None], (3,) + pos.shape)
        image_features = video_features = None
        if pixel_values is not None:
            image_features = self.encode_images(pixel_values, patch_positions, patch_segment_ids)
        if pixel_values_videos is not None:
            video_features = self.encode_images(pixel_values_videos, video_patch_positions, video_patch_segment_ids)
        embeds = nn.with_logical_constraint(self.embed(input_ids, image_features, video_features), ACT)
        hidden = self.decode(embeds, segment_ids, position_ids)
        logits = self.lm_logits(hidden)
        return (logits, hidden) if return_hidden else logits
