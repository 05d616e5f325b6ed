"""The embedded demo's Dream-VLA (``dreamjax demo``): a tiny model trained from scratch on CPU on Meta-World
scripted-expert demonstrations (dataset ``metaworld_expert``, written by ``dreamjax.eval.collect``).

Same structure as ``dream_vla_7b_libero`` (Qwen2-VL ViT + merger + projector, bidirectional Dream decoder,
proprio projector, action head), sized for a 2-core CPU and a ≤ 20 minute budget. Choices and why:

* ``objective="l1"`` — the L1-regression head: one forward pass per prediction (flow / DDIM need K passes at
  inference, the discrete objectives learn 256-way classifications per dimension), and on tiny models the
  regression loss falls fastest per step. Flow matching is an override away (``--config.vla.objective=flow``).
* two cameras at 84 px, ``corner3`` (above the table's corner: the table fills the frame) and ``corner`` (low,
  from the side, roughly at right angles to ``corner3``), each a 6×6 patch grid → 9 LLM tokens. One view leaves
  the 3-D goal ambiguous along its line of sight: with ``corner3`` alone the tiny policy stopped 5–13 cm short
  of or beyond the goal along that line (reach 55 %). The goal marker is drawn at the 5 cm success radius
  (``MetaWorldSim(goal_marker_radius=0.05)``): at 84 px Meta-World's 2 cm marker is one or two pixels beside a
  robot of the same red, and a model trained on it learned to ignore the image (same action for every goal).
* the data: ``dreamjax.demo`` records reach with the scripted expert steering the tool centre point
  (``MetaWorldExpertPolicy(tcp_tasks=…)``). Meta-World's own reach expert parks the hand on the goal, which leaves
  the TCP — where success is measured — on the rim of the 5 cm success sphere; a policy imitating it stopped
  5–8 cm from the goal whenever its estimate was 1–2 cm off (reach 55–60 % with either camera setup).
* chunk 4 (actions padded to the 7-d EEF_POS layout by the ``metaworld_expert`` standardization: 28 action
  tokens), the closed loop executes all 4 before asking again; proprio = hand xyz + gripper opening (4-d).
* width 64, 2 decoder layers, a 2-block ViT of width 64 (~0.5M params): 0.1–0.5 s per batch of 32 on the
  shared 2-core machine (width 96 / 3 layers: 0.9 M params, ~2× the time per step). The demo
  sets ``vla.canvas_length`` to the longest prompt of its tasks (80 tokens for reach / push).
* AdamW lr 1e-3 with warmup, ×0.1 for the last 20 % of the steps (the ``vla`` optimizer: MultiStepLR).
* ``train.vision_init_gain=1.0`` (``dreamjax/train/image_path_init.py``): trained from scratch, the image
  features otherwise reach the decoder ~50× smaller than the text embeddings, and the decoder ignores them.
* no image augmentation (``data.augment="none"``): training and evaluation render the same camera.

``vla.tokenizer_len`` / ``data.data_dir`` / ``data.tokenizer`` are set by ``dreamjax.demo`` at run time (the
tokenizer is trained on the task instructions, its last 256 ids are the action tokens).
Special ids follow ``train_sentencepiece`` (1 ``<|endoftext|>``, 7 ``<|image_pad|>``, 9 ``<|mask|>``).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = dict(
        vocab_size=720, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=10000.0, mrope_section=(4, 2, 2),
        max_position_embeddings=512, use_projector=True, model_type="dream-vla",
        bos_token_id=1, eos_token_id=1, pad_token_id=1, mask_token_id=9, image_token_id=7, video_token_id=8,
        vision_start_token_id=4, vision_end_token_id=5, vision_token_id=6,
        vision=dict(depth=2, embed_dim=64, num_heads=4, mlp_ratio=2.0, hidden_size=64),
        dtype="float32", param_dtype="float32", scan_layers=False, remat="none", attention_impl="xla",
    )
    c.vla = dict(
        objective="l1", chunk=4, action_dim=7, proprio_dim=4, use_proprio=True, num_blocks=2,
        num_images=2, image_size=84, canvas_length=96, n_action_bins=256, tokenizer_len=0,
        lowercase_instruction=True, normalization="bounds_q99",
        flow_steps=4, ddim_train_steps=50, ddim_inference_steps=10, discrete_steps=1,
        reweighting="cart", cart_q=0.1, full_mask_ratio=None,
    )
    c.task = dict(kind="vla")
    c.data = dict(kind="rlds", data_dir="", tokenizer="", mixture="metaworld_expert", cameras=("primary", "secondary"),
                  augment="none", shuffle_buffer=2000, seed=0, decode_threads=0)
    c.train = dict(
        seed=0, steps=4000, batch_size=32, optimizer="vla", learning_rate=1e-3, decay_at=3200, warmup_steps=50,
        weight_decay=0.0, clip_norm=1.0, log_every=25, save_every=100000, keep=1, tensorboard=False,
        async_checkpoint=False, vision_init_gain=1.0,
    )
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.sharding_rules = None
    return c
