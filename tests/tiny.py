"""Tiny models and inputs shared by tests (no downloads: everything is built here)."""

from __future__ import annotations

import numpy as np

from dreamjax.models.config import DreamVLConfig, VisionConfig

# Small ids for special tokens (tiny vocabularies remap them; config.json carries them).
IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=2, mask_token_id=3, image_token_id=5, video_token_id=6,
           vision_start_token_id=7, vision_end_token_id=8, vision_token_id=9)


def tiny_config(**overrides) -> DreamVLConfig:
    """A Dream-VL-shaped tiny config: GQA 4/2 heads, head_dim 16, M-RoPE sections (2, 3, 3), 2+2 layers."""
    kw = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, mrope_section=(2, 3, 3), rope_theta=10000.0, max_position_embeddings=4096,
              vision=VisionConfig(depth=2, embed_dim=32, num_heads=4, hidden_size=64), **IDS)
    kw.update(overrides)
    return DreamVLConfig(**kw).validate()


def hf_qwen2vl_config_dict(c: DreamVLConfig) -> dict:
    """transformers Qwen2VLConfig kwargs for the same architecture (no projector)."""
    v = c.vision
    return dict(
        text_config=dict(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
            num_key_value_heads=c.num_key_value_heads, rms_norm_eps=c.rms_norm_eps,
            max_position_embeddings=c.max_position_embeddings,
            rope_parameters=dict(rope_type="default", mrope_section=list(c.mrope_section), rope_theta=c.rope_theta),
            bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id),
        vision_config=dict(depth=v.depth, embed_dim=v.embed_dim, num_heads=v.num_heads, mlp_ratio=int(v.mlp_ratio),
                           hidden_size=v.hidden_size, patch_size=v.patch_size,
                           temporal_patch_size=v.temporal_patch_size, spatial_merge_size=v.spatial_merge_size),
        image_token_id=c.image_token_id, video_token_id=c.video_token_id,
        vision_start_token_id=c.vision_start_token_id, vision_end_token_id=c.vision_end_token_id)


def randomize_torch_(module, seed: int = 0) -> None:
    """Non-trivial init in place: no zero biases, no unit norms, weights large enough to matter."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name or "ln_q" in name:
                p.copy_((1.0 + 0.2 * noise) if name.endswith("weight") else 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.08 * noise)


def random_params_np(shapes: dict, seed: int = 0) -> dict:
    """Random numpy tensors for a {name: shape} dict (HF-side weights for conversion tests)."""
    rng = np.random.default_rng(seed)
    return {k: (0.05 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()}


def rel_err(a, b) -> float:
    """max |a − b| / max |b|: the normalized max error the parity tests bound."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
