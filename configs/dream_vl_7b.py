"""Dream-VL-7B: the exact released architecture (spec §1.1) for inference and SFT on pods.

Usage: ``--config configs/dream_vl_7b.py`` (override with ``--config.model.dtype=float32`` etc.).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, hidden_act="silu", rms_norm_eps=1e-6,
        rope_theta=1000000.0, mrope_section=(16, 24, 24), max_position_embeddings=131072,
        tie_word_embeddings=False, use_projector=True, projector_hidden_act="gelu",
        bos_token_id=151643, eos_token_id=151643, pad_token_id=151643, mask_token_id=151666,
        image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
        vision_end_token_id=151653, vision_token_id=151654, model_type="dream-vl",
        vision=dict(depth=32, embed_dim=1280, num_heads=16, mlp_ratio=4.0, hidden_size=3584, in_channels=3,
                    patch_size=14, temporal_patch_size=2, spatial_merge_size=2, hidden_act="quick_gelu"),
        # runtime
        dtype="bfloat16", param_dtype="float32", scan_layers=True, remat="full", attention_impl="xla",
    )
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    c.sharding_rules = None  # None = dreamjax.sharding.DEFAULT_RULES
    return c
