"""Dream-VL-7B SFT, stage SI-1 of the reference (spec §4 stage table), on TPU pod slices / GPU meshes.

    dreamjax train --config configs/dream_vl_7b_sft.py --workdir gs://BUCKET/runs/si1 \\
        --config.data.train_json=/data/mammoth_si.json --config.data.tokenizer=/ckpt/dream-vl-7b \\
        --config.train.init_from=/ckpt/dream-vl-7b      # an HF snapshot or a dreamjax checkpoint
    dreamjax train --config configs/dream_vl_7b_sft.py --compile-only --topology v5p-8   # does it fit?

Reference SI-1: LLM + projector + ViT blocks ≥ 16 + merger trained, lr 1e-5 (ViT 2e-6), AdamW wd 0, warmup 3 %
+ cosine, clip 1.0, bf16 compute, gradient checkpointing, 1 epoch. Stage variants: ``dream_vl_7b_pretrain``
(projector only, lr 1e-3), ``dream_vl_7b_si2`` (lr 5e-6, 2 epochs), ``dream_vl_7b_ov`` (lr 5e-6).

Shapes: a canvas of 8192 tokens (the reference's model_max_length); one image row of 8192 patches per sample
(images between 512 and 2048 LLM tokens: min/max_pixels 401408 / 1605632 — the reference allows up to 4096
tokens per image; raise row_len and max_pixels together for that). Batch: 32 samples per optimizer step in
8 micro-batches of 4 (one per chip on v5p-8); scale batch_size with the slice and keep batch_size/grad_accum
a multiple of the data-parallel ways. Mesh: FSDP over every chip.

Per slice (``--compile-only``, numbers in benchmarks/README.md), one sample per chip per micro-batch:
v5p-8 ``grad_accum=8`` (peak 54.9 GiB of 95), v5p-16 ``grad_accum=4`` (35.4 GiB), v4-32 ``grad_accum=2``
(29.0 of 32 GiB). v5e-16 (16 GiB) does not fit: with XLA attention at canvas 8192 the step needs 26.8 GiB of
temporaries per chip, mostly the S² attention scores and the fp32 logits (16.1 GiB with ``mesh.fsdp=4,
mesh.tensor=4``); it fits (13.0 GiB) with canvas_length = row_len = 4096, max_pixels 802816 and that mesh. Both towers stay scanned with full remat per
layer (``dream_vl_7b``); the TPU compile takes ~5 CPU-minutes (libtpu's per-kernel backend, not the layers:
an unrolled 28-layer decoder compiled ~4x slower in the AOT study).
"""

import ml_collections

from dreamjax.config_loader import load_config


def get_config() -> ml_collections.ConfigDict:
    c = load_config("dream_vl_7b")  # the released architecture: bf16 compute, scanned layers, full remat
    c.task = dict(kind="sft", weighting="cart", cart_q=0.1, freeze_pad_embedding=False)
    c.data = dict(
        kind="sft", train_json="", tokenizer="", seed=0, canvas_length=8192, image_rows=1, row_len=8192,
        min_pixels=401408, max_pixels=1605632, eos_targets="canvas", on_too_long="skip", num_threads=8,
    )
    c.train = dict(
        seed=0, steps=20000, batch_size=32, grad_accum=8, optimizer="sft", learning_rate=1e-5, warmup_ratio=0.03,
        weight_decay=0.0, clip_norm=1.0, lr_groups=[("^params/visual/", 2e-6)], freeze="llm_projector_vit_top",
        vit_trainable_from=16, trainable_patterns=(), lora=dict(rank=0, alpha=16.0, train_base=()), init_from="",
        log_every=10, save_every=1000, keep=3, keep_period=5000, async_checkpoint=True, tensorboard=True,
        peak_flops_per_device=0.0,
    )
    c.mesh = dict(data=1, fsdp=-1, tensor=1)
    return c
