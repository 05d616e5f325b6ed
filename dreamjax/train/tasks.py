"""Build the :class:`Task` a config asks for: ``task_from_config(cfg)``.

``cfg.task.kind``:

* ``sft`` — Dream-VL masked-diffusion SFT (spec §4) on ``dreamjax.data.sft`` batches, through
  :func:`dreamjax.diffusion.objective.loss_fn` (``task.weighting`` cart/original/linear/none, ``task.cart_q``,
  ``task.freeze_pad_embedding``);
* ``vla`` — Dream-VLA, built by ``dreamjax.vla.task.make_vla_task(cfg)`` (imported lazily).

Then, for any kind: the freeze preset ``train.freeze`` (:mod:`dreamjax.train.freeze`; a task's own
``trainable`` wins when the preset is ``none``) and LoRA when ``train.lora.rank > 0``
(:mod:`dreamjax.train.lora_task`).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from dreamjax.config_loader import model_config
from dreamjax.train import freeze
from dreamjax.train.task import Task

TASK_KINDS = ("sft", "vla")
SFT_BATCH_KEYS = ("input_ids", "labels", "attention_mask", "pixel_values", "patch_positions", "patch_segment_ids")


def _init_inputs(config):
    """Smallest inputs that create every param (one 2×2-window image when there is a vision tower)."""
    from dreamjax.models.positions import vision_patch_layout

    ids = np.zeros((1, 8), np.int32)
    if config.vision is None:
        return (ids,)
    m = config.vision.spatial_merge_size
    pp, ps = vision_patch_layout(np.array([[1, 2 * m, 2 * m]]), m)
    return ids, None, None, np.zeros((len(ps), config.vision.patch_dim), np.float32), pp, ps


def sft_batch_shapes(cfg, config):
    """Global batch size → {key: (shape, dtype)} of one ``dreamjax.data.sft`` batch for this config."""
    d = cfg.data

    def shapes(b: int):
        s = int(d.canvas_length)
        out = {k: ((b, s), jnp.int32) for k in ("input_ids", "labels", "attention_mask")}
        if config.vision is not None:
            rows, length = b * int(d.get("image_rows", 1)), int(d.get("row_len", 16))
            out.update(pixel_values=((rows, length, config.vision.patch_dim), jnp.float32),
                       patch_positions=((rows, length, 2), jnp.int32), patch_segment_ids=((rows, length), jnp.int32))
        return out

    return shapes


def _check_mask_token(config) -> None:
    """The objective feeds ``mask_token_id`` through the embedding table; an id outside the vocabulary does
    not fail in XLA (its gather returns NaN rows for out-of-range indices), it turns every loss into NaN.
    PyTorch's ``nn.Embedding`` raises an IndexError instead; we raise before compiling, naming the field."""
    if not 0 <= config.mask_token_id < config.vocab_size:
        raise ValueError(f"model.mask_token_id={config.mask_token_id} is outside the vocabulary "
                         f"[0, model.vocab_size={config.vocab_size}): the masked-diffusion loss embeds it")


def sft_task(cfg) -> Task:
    from dreamjax.diffusion.objective import loss_fn
    from dreamjax.models.dream_vl import DreamVLModel
    from dreamjax.train.metrics import dreamvl_train_flops

    config = model_config(cfg)
    _check_mask_token(config)
    module = DreamVLModel(config)
    inputs = _init_inputs(config)
    t = cfg.task
    kw = dict(weighting=t.get("weighting", "cart"), cart_q=t.get("cart_q", 0.1),
              freeze_pad_embedding=t.get("freeze_pad_embedding", False))

    def init(rng):
        return module.init(rng, *inputs)

    def loss(variables, batch, rng):
        value, aux = loss_fn(variables, batch, rng, module, **kw)
        n = aux["num_targets"]
        return value, dict(num_targets=n, nll=aux["nll_sum"] / jnp.maximum(n, 1.0))

    keys = SFT_BATCH_KEYS if config.vision is not None else SFT_BATCH_KEYS[:3]
    return Task(name="dream_vl_sft", init=init, loss=loss, batch_keys=keys, model_config=config,
                batch_shapes=sft_batch_shapes(cfg, config),
                flops_per_batch=lambda shapes: dreamvl_train_flops(config, shapes),
                export=lambda variables: {"params": variables["params"]})


def task_from_config(cfg) -> Task:
    kind = cfg.task.kind
    if kind == "sft":
        task = sft_task(cfg)
    elif kind == "vla":
        from dreamjax.vla.task import make_vla_task  # owned by the VLA side; imported only when asked for

        task = make_vla_task(cfg)
    else:
        raise ValueError(f"task.kind={kind!r}; expected one of {TASK_KINDS}")
    t = cfg.train
    if t.get("vision_init_gain") is not None:
        from dreamjax.train.image_path_init import with_image_path_gain

        task = dataclasses.replace(task, init=with_image_path_gain(task.init, float(t.vision_init_gain)))
    preset = t.get("freeze", "none")
    fn = freeze.preset_mask_fn(preset, vit_trainable_from=t.get("vit_trainable_from", 16),
                               patterns=tuple(t.get("trainable_patterns") or ()))
    if fn is not None:
        task = dataclasses.replace(task, trainable=fn)
    lora_cfg = t.get("lora")
    if lora_cfg is not None and int(lora_cfg.get("rank", 0)) > 0:
        if preset != "none":
            raise ValueError(f"train.freeze={preset!r} and train.lora.rank={lora_cfg.rank}: with LoRA the base is "
                             "frozen; name trainable base params in train.lora.train_base instead")
        from dreamjax.train.lora_task import lora_config_from, with_lora

        task = with_lora(task, lora_config_from(lora_cfg), tuple(lora_cfg.get("train_base") or ()))
    return task
