"""A tiny Dream-VL (same shapes' structure as 7B: GQA, M-RoPE sections, ViT + merger + projector) for tests,
demos and CPU runs. Special-token ids follow a sentencepiece tokenizer trained by dreamjax
(``dreamjax.data.tokenizer.train_sentencepiece``: ids 1–9 are the special tokens)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0, mrope_section=(4, 6, 6),
        max_position_embeddings=4096, use_projector=True, model_type="dream-vl",
        bos_token_id=1, eos_token_id=1, pad_token_id=1, mask_token_id=9, image_token_id=7, video_token_id=8,
        vision_start_token_id=4, vision_end_token_id=5, vision_token_id=6,
        vision=dict(depth=2, embed_dim=64, num_heads=4, mlp_ratio=4.0, hidden_size=128),
        dtype="float32", param_dtype="float32", scan_layers=False, remat="none", attention_impl="xla",
    )
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.sharding_rules = None
    return c
