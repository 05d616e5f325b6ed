"""Tests of dreamjax.diffusion. ``random_dream_vl`` builds a tiny random model without compiling an init."""

import jax
import numpy as np

from dreamjax.models.dream_vl import DreamVLModel
from dreamjax.models.positions import vision_patch_layout


def random_dream_vl(config, seed: int = 0, head_gain: float = 1.0):
    """A ``DreamVL`` with random params drawn in numpy (shapes from ``jax.eval_shape``: no compile).

    Kernels ~ N(0, 1/fan_in) (``lm_head`` times ``head_gain``: larger gives peakier next-token
    distributions), embeddings ~ N(0, 1), biases ~ N(0, 0.1²), norm scales ~ 1 + N(0, 0.2²): a well-conditioned
    network whose positions disagree clearly, so sampler decisions are not decided by float round-off.
    """
    from dreamjax.pretrained import DreamVL

    ids = np.zeros((1, 8), np.int32)
    args = (ids,)
    if config.vision is not None:
        m = config.vision.spatial_merge_size
        pp, ps = vision_patch_layout(np.array([[1, 2 * m, 2 * m]]), m)
        args = (ids, None, None, np.zeros((len(ps), config.vision.patch_dim), np.float32), pp, ps)
    abstract = jax.eval_shape(DreamVLModel(config).init, jax.random.key(0), *args)
    leaves, tree = jax.tree_util.tree_flatten_with_path(abstract)
    rng = np.random.default_rng(seed)
    values = []
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        shape = getattr(leaf, "value", leaf).shape
        z = rng.standard_normal(shape).astype(np.float32)
        if "embedding" in name:
            v = z
        elif len(shape) >= 2:
            v = z / np.sqrt(np.prod(shape[:-1])) * (head_gain if "lm_head" in name else 1.0)
        elif "bias" in name:
            v = 0.1 * z
        else:
            v = 1.0 + 0.2 * z
        values.append(v)
    import flax.linen as nn

    params = jax.tree_util.tree_unflatten(tree, values)
    return DreamVL(config, jax.tree_util.tree_map(jax.numpy.asarray, nn.unbox(params)))
