"""``train.vision_init_gain``: a from-scratch initialization of the image path that lets a tiny model see.

Every dreamjax Linear starts at N(0, 0.02) (the HF ``initializer_range``, layers.py) — right for the checkpoints
the reference fine-tunes, wrong for a model trained from nothing: the image features pass through the ViT's
final norm and then four such Linears (merger ``mlp_0``/``mlp_2``, projector ``linear_1``/``linear_2``), each
shrinking them by ≈ 0.02·√fan_in, so on a width-64 model they reach the decoder ~50× smaller than the text
embeddings they sit beside. Measured on the embedded demo (tiny Dream-VLA, 1500 steps on Meta-World experts):
without rescaling, the predicted action chunk at the first step of 40 different episodes was *identical*
(std 0 across episodes; target std 0.3–0.6) — the decoder learned to ignore the image.

With ``vision_init_gain = g`` those four kernels start at std ``g / √fan_in`` (variance preserving for g ≈ 1;
the N(0, 0.02) draw is rescaled, so the random pattern is the same). Only fresh initializations are touched:
``train.init_from`` overwrites them with the checkpoint's weights, and a resumed run restores its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from flax import traverse_util

IMAGE_PATH_KERNELS = (("visual", "merger", "mlp_0"), ("visual", "merger", "mlp_2"), ("projector", "linear_1"),
                      ("projector", "linear_2"))


def rescale_image_path(variables: Any, gain: float) -> Any:
    """``variables`` (``{"params": …}``, boxed or not) with the image-path kernels at std ``gain/√fan_in``."""
    if not gain > 0:
        raise ValueError(f"train.vision_init_gain={gain}: must be > 0")
    flat = traverse_util.flatten_dict(dict(variables["params"]), keep_empty_nodes=True)
    found = []
    for key, leaf in flat.items():
        if key[-1] != "kernel" or key[:-1] not in IMAGE_PATH_KERNELS:
            continue
        boxed = isinstance(leaf, nn.meta.AxisMetadata)
        k = leaf.unbox() if boxed else leaf
        fan_in = k.shape[-2]
        scaled = (k * (gain / (jnp.sqrt(fan_in) * jnp.maximum(jnp.std(k), 1e-12)))).astype(k.dtype)
        flat[key] = leaf.replace_boxed(scaled) if boxed else scaled
        found.append(key[:-1])
    missing = [p for p in IMAGE_PATH_KERNELS if p not in found]
    if missing:
        raise ValueError(f"train.vision_init_gain: the model has no {['/'.join(p) for p in missing]} kernels "
                         "(expected a Dream-VL / Dream-VLA with a merger and a projector)")
    return {**variables, "params": traverse_util.unflatten_dict(flat)}


def with_image_path_gain(init: Callable[[Any], Any], gain: float) -> Callable[[Any], Any]:
    """A task ``init`` whose fresh variables have the image path rescaled (:func:`rescale_image_path`)."""

    def init_rescaled(rng):
        return rescale_image_path(init(rng), gain)

    init_rescaled.__wrapped_init__ = init  # the unscaled init (tests compare the two)
    return init_rescaled
