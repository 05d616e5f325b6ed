"""The Dream-VLA training task: ``make_vla_task(cfg) -> Task`` (the contract of ``dreamjax.train.task``).

Config sections read (see ``configs/dream_vla_7b_libero.py``):

* ``model`` — the Dream-VL architecture (``dreamjax.config_loader.model_config``);
* ``vla`` — ``objective`` (l1 | ddim | flow | discrete_diffusion | discrete), ``chunk``, ``action_dim``,
  ``proprio_dim``, ``use_proprio``, ``num_blocks`` (head depth), the layout (``num_images``, ``image_size``,
  ``canvas_length``, ``n_action_bins``, ``lowercase_instruction``), the tokenizer length ``tokenizer_len``
  (action tokens are its last ``n_action_bins`` ids) and the objective settings (``ddim_train_steps``,
  ``ddim_inference_steps``, ``flow_steps``, ``discrete_steps``, ``reweighting``, ``cart_q``,
  ``full_mask_ratio``).

Variables: ``{"params": Dream-VL params + action_head / noisy_action_projector / proprio_projector}``
(:class:`dreamjax.vla.model.DreamVLAModel`). Every param is trainable by default — the heads included, which
is the fix of the reference's flow-matching [QUIRK] (its optimizer never received the flow head or the
noisy-action projector). The reference recipe (LoRA on the VLM, heads trained in full) is
``train.lora = {rank: 32, alpha: 16, exclude: heads + lm_head + embeddings, train_base: heads}`` in the config;
``dreamjax.train.tasks`` applies it.

Images: with ``data.augment="device"`` (and/or ``data.resize="device"``) the batch also carries the data-only
keys ``augment_seed`` / ``image_mask`` (and uint8 ``images`` in place of ``pixel_values``); the loss first
builds the model's ``pixel_values`` from them on device (:func:`step_images`, ``device_augment.StepImages``),
so the augmentation runs inside the jitted step, before the model, on every grad-accumulation micro-batch.
The reference augments on the host (tf.data); the ops and ranges are the same (``device_augment``).
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from dreamjax.config_loader import model_config
from dreamjax.data.device_augment import StepImages
from dreamjax.data.vla_decode import image_modes
from dreamjax.data.vla_layout import VLALayout
from dreamjax.vla.model import HEAD_COMPONENTS, DreamVLAModel, VLAHeadConfig, dummy_inputs
from dreamjax.vla.objectives import ObjectiveSettings, batch_keys, vla_loss

# Regexes of the head params (LoRA leaves them out and trains them in full, as the reference).
HEAD_PATTERNS = tuple(rf"(^|/){c}/" for c in HEAD_COMPONENTS)


def _section(cfg, name: str) -> dict[str, Any]:
    if name not in cfg:
        raise ValueError(f"config has no {name!r} section (a Dream-VLA config needs model, vla, task, data, train)")
    s = cfg[name]
    return s.to_dict() if hasattr(s, "to_dict") else dict(s)


def head_config(cfg) -> VLAHeadConfig:
    v = _section(cfg, "vla")
    return VLAHeadConfig(objective=v.get("objective", "flow"), chunk=int(v.get("chunk", 8)),
                         action_dim=int(v.get("action_dim", 7)), proprio_dim=int(v.get("proprio_dim", 8)),
                         use_proprio=bool(v.get("use_proprio", True)), num_blocks=int(v.get("num_blocks", 2)))


def layout_from_config(cfg) -> VLALayout:
    v = _section(cfg, "vla")
    head = head_config(cfg)
    if "canvas_length" not in v:
        raise ValueError("config vla.canvas_length is required (tokens per sample, prefix slots included)")
    return VLALayout(canvas_length=int(v["canvas_length"]), num_images=int(v.get("num_images", 2)),
                     image_size=int(v.get("image_size", 224)), chunk=head.chunk, action_dim=head.action_dim,
                     proprio_dim=head.proprio_dim, proprio_token=head.use_proprio,
                     timestep_token=head.timestep_token, n_action_bins=int(v.get("n_action_bins", 256)),
                     lowercase_instruction=bool(v.get("lowercase_instruction", True)))


def objective_settings(cfg) -> ObjectiveSettings:
    v = _section(cfg, "vla")
    m = _section(cfg, "model")
    if "tokenizer_len" not in v:
        raise ValueError("config vla.tokenizer_len is required (len(tokenizer); its last n_action_bins ids are the "
                         "action tokens — 151923 for Dream-VLA)")
    ratio = v.get("full_mask_ratio")
    return ObjectiveSettings(
        ddim_train_steps=int(v.get("ddim_train_steps", 50)), ddim_inference_steps=int(v.get("ddim_inference_steps", 50)),
        flow_steps=int(v.get("flow_steps", 4)), discrete_steps=int(v.get("discrete_steps", 1)),
        reweighting=v.get("reweighting", "cart"), cart_q=float(v.get("cart_q", 0.1)),
        full_mask_ratio=None if ratio is None else float(ratio), mask_token_id=int(m["mask_token_id"]),
        vocab_len=int(v["tokenizer_len"]), n_bins=int(v.get("n_action_bins", 256)))


def check_consistent(config, head: VLAHeadConfig, settings: ObjectiveSettings) -> None:
    if settings.vocab_len > config.vocab_size:
        raise ValueError(f"vla.tokenizer_len={settings.vocab_len} > model.vocab_size={config.vocab_size}")
    if config.vision is None:
        raise ValueError("Dream-VLA needs a vision tower (model.vision)")


def _stored_size(value) -> tuple[int, int] | None:
    if value is None:
        return None
    size = (int(value), int(value)) if np.ndim(value) == 0 else tuple(int(v) for v in value)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"data.stored_image_size={value!r}; expected a positive int or (height, width)")
    return size


def step_images(cfg, layout: VLALayout) -> StepImages | None:
    """What the train step does to the images before the model (``device_augment.StepImages``), from
    ``data.augment`` / ``data.resize`` / ``data.augment_correlated`` / ``data.stored_image_size``; None when the
    batch carries the model's ``pixel_values`` as they are (``augment`` host or none, ``resize`` host)."""
    d = _section(cfg, "data") if "data" in cfg else {}
    augment = d.get("augment", "host")
    mode, resize = image_modes(augment, d.get("resize", "host"), key_prefix="data.")
    if mode != "device" and resize != "device":
        return None
    if d.get("kind") != "rlds":
        raise ValueError(f"data.augment={augment!r} / data.resize={resize!r}: on-device augmentation and resize "
                         f"read the RLDS pipeline's augment_seed / image_mask / stored images; data.kind="
                         f"{d.get('kind')!r} has none (use data.kind='rlds', or augment/resize 'host')")
    return StepImages(layout, augment=mode == "device", resize=resize == "device",
                      correlated=bool(d.get("augment_correlated", False)),
                      stored_size=_stored_size(d.get("stored_image_size")))


def batch_shapes_fn(layout: VLALayout, objective: str, patch_dim: int, images: StepImages | None = None):
    """Global batch size → {key: (shape, dtype)} of one batch as the data delivers it (``images``: with the
    data-only keys of on-device augmentation / resize)."""
    keys = images.batch_keys(batch_keys(objective)) if images is not None else batch_keys(objective)

    def shapes(b: int) -> dict[str, tuple[tuple[int, ...], Any]]:
        s, rows, length = layout.canvas_length, b * layout.num_images, layout.row_len
        out = dict(input_ids=((b, s), jnp.int32), attention_mask=((b, s), jnp.int32), labels=((b, s), jnp.int32),
                   action_start=((b,), jnp.int32), pixel_values=((rows, length, patch_dim), jnp.float32),
                   patch_positions=((rows, length, 2), jnp.int32), patch_segment_ids=((rows, length), jnp.int32),
                   proprio=((b, layout.proprio_dim), jnp.float32),
                   actions=((b, layout.chunk, layout.action_dim), jnp.float32))
        if images is not None:
            out.update(images.batch_shapes(b))
        return {k: out[k] for k in keys}

    return shapes


def head_flops(config, head: VLAHeadConfig, batch: int) -> float:
    """Forward matmul FLOPs of the action head and projectors for ``batch`` samples."""
    d, a, c = config.hidden_size, head.action_dim, head.chunk
    total = 0.0
    if head.objective in ("l1", "ddim", "flow"):
        total += 2 * batch * c * (a * d * d + head.num_blocks * d * d + d * a)
    if head.timestep_token:
        total += 2 * batch * c * a * (d + d * d)
    if head.use_proprio:
        total += 2 * batch * (head.proprio_dim * d + d * d)
    return total


def make_vla_task(cfg):
    """The Dream-VLA :class:`~dreamjax.train.task.Task` for ``cfg`` (module docstring)."""
    from dreamjax.train.metrics import dreamvl_train_flops
    from dreamjax.train.task import Task

    config = model_config(cfg)
    head = head_config(cfg)
    settings = objective_settings(cfg)
    check_consistent(config, head, settings)
    layout = layout_from_config(cfg)
    images = step_images(cfg, layout)
    module = DreamVLAModel(config, head)
    inputs = dummy_inputs(config, head)

    def init(rng):
        return module.init(rng, *inputs)

    def loss(variables, batch, rng):
        if images is not None:  # on-device augmentation / resize, inside the step, before the model
            batch = images.model_batch(batch)
        return vla_loss(module, settings, variables, batch, rng)

    def flops(shapes):
        shapes = images.model_shapes(shapes) if images is not None else shapes
        return dreamvl_train_flops(config, shapes) + 3.0 * head_flops(config, head, shapes["input_ids"][0])

    keys = batch_keys(head.objective)
    return Task(name=f"dream_vla_{head.objective}", init=init, loss=loss,
                batch_keys=images.batch_keys(keys) if images is not None else keys,
                model_config=config.replace(model_type="dream-vla"),
                batch_shapes=batch_shapes_fn(layout, head.objective, config.vision.patch_dim, images),
                flops_per_batch=flops)


def vla_json(cfg) -> dict[str, Any]:
    """The ``vla`` section as stored beside a checkpoint (``assets/vla.json``), for ``DreamVLA.from_pretrained``."""
    v = _section(cfg, "vla")
    return {k: (list(x) if isinstance(x, tuple) else x) for k, x in v.items()
            if isinstance(x, (int, float, str, bool, type(None), tuple, list, np.integer))}
