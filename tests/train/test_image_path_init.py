"""``train.vision_init_gain``: the from-scratch image path starts at variance-preserving scale, nothing else moves."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from flax import traverse_util

from dreamjax.config_loader import load_config
from dreamjax.train.image_path_init import IMAGE_PATH_KERNELS, rescale_image_path
from dreamjax.train.tasks import task_from_config


def _flat(variables):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(nn.unbox(variables)["params"]).items()}


def test_gain_sets_the_image_path_kernels_and_leaves_everything_else():
    cfg = load_config("dream_vl_tiny_train")
    cfg.train.vision_init_gain = 1.5  # what `dreamjax train` applies to a fresh initialization
    task = task_from_config(cfg)
    variables = jax.jit(task.init.__wrapped_init__)(jax.random.key(3))
    before, after = _flat(variables), _flat(jax.jit(rescale_image_path, static_argnums=1)(variables, 1.5))
    assert before.keys() == after.keys()
    touched = {k for k in before if k[:-1] in IMAGE_PATH_KERNELS and k[-1] == "kernel"}
    assert len(touched) == len(IMAGE_PATH_KERNELS)
    for key in before:
        if key in touched:
            fan_in = before[key].shape[-2]
            np.testing.assert_allclose(after[key].std(), 1.5 / np.sqrt(fan_in), rtol=1e-4)
            # the same random draw, rescaled: the pattern (correlation 1) is kept
            assert np.corrcoef(before[key].ravel(), after[key].ravel())[0, 1] > 0.9999
        else:
            np.testing.assert_array_equal(after[key], before[key], err_msg="/".join(key))


def test_bad_gain_and_models_without_an_image_path_are_refused():
    with pytest.raises(ValueError, match="vision_init_gain=0"):
        rescale_image_path({"params": {}}, 0.0)
    with pytest.raises(ValueError, match="no .*visual/merger/mlp_0"):
        rescale_image_path({"params": {"model": {"kernel": np.zeros((2, 2))}}}, 1.0)
