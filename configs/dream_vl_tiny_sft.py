"""Tiny Dream-VL SFT from scratch on the rendered "shapes" task (``dreamjax.data.shapes_task``): the CPU
learning demo (``tests/test_learning_demo.py``). Smaller than ``dream_vl_tiny``: 2 decoder layers of width 64,
a 1-block ViT, 56×56 images → grid (1, 4, 4) → 4 image tokens, a 40-token canvas.

Special-token ids follow ``train_sentencepiece`` (1 ``<|endoftext|>``, 2/3 ``<|im_start|>``/``<|im_end|>``,
7 ``<|image_pad|>``, 9 ``<|mask|>``); the tokenizer is trained on ``shapes_task.task_texts()`` with
``data.tokenizer_vocab_size`` pieces, which must not exceed ``model.vocab_size``.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        vocab_size=400, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0, mrope_section=(2, 3, 3),
        max_position_embeddings=512, use_projector=True, model_type="dream-vl",
        bos_token_id=1, eos_token_id=1, pad_token_id=1, mask_token_id=9, image_token_id=7, video_token_id=8,
        vision_start_token_id=4, vision_end_token_id=5, vision_token_id=6,
        vision=dict(depth=1, embed_dim=32, num_heads=4, mlp_ratio=2.0, hidden_size=64),
        dtype="float32", param_dtype="float32", scan_layers=False, remat="none", attention_impl="xla",
    )
    c.data = dict(
        task="shapes", num_train=1000, num_eval=100, image_size=56, max_count=3, tokenizer_vocab_size=400,
        canvas_length=40, image_rows=1, row_len=16, min_pixels=3136, max_pixels=3136, eos_targets="canvas",
        on_too_long="error",
    )
    c.train = dict(
        seed=0, steps=1200, batch_size=32, learning_rate=2e-3, warmup_ratio=0.03, weight_decay=0.0,
        clip_norm=1.0, weighting="cart",
    )
    c.generate = dict(max_new_tokens=4, steps=4, alg="maskgit_plus", temperature=0.0)
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.sharding_rules = None
    return c
