"""The image processor normalizes by table lookup (``image_processor.normalization_table``): every uint8 level of
every channel gives the same float32 bits as transformers' Qwen2-VL PIL processor, whose per-pixel arithmetic
it replaces — the policy's and the pipeline's pixel values do not change."""

import numpy as np
import pytest
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from dreamjax.data.image_processor import normalization_table, preprocess


def _every_level_image():
    """56×56 RGB holding each of the 256 levels in each channel (channels shifted against each other)."""
    levels = np.arange(56 * 56) % 256
    return np.stack([levels, (levels + 85) % 256, (255 - levels)], -1).reshape(56, 56, 3).astype(np.uint8)


@pytest.mark.parametrize("stats", [None, ((0.5, 0.25, 0.125), (0.2, 0.3, 0.7))])
def test_every_level_bit_identical_to_transformers(stats):
    image = _every_level_image()
    kw = {} if stats is None else dict(image_mean=stats[0], image_std=stats[1])
    ours, grid = preprocess(image, 56 * 56, 56 * 56, **kw)
    theirs = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56, **kw)(image, return_tensors="np")
    np.testing.assert_array_equal(grid, theirs["image_grid_thw"])
    assert ours.dtype == np.float32 and np.array_equal(ours, np.asarray(theirs["pixel_values"]))


def test_normalization_table_is_read_only_and_checks_its_statistics():
    table = normalization_table()
    assert table.shape == (3, 256) and table.dtype == np.float32 and not table.flags.writeable
    with pytest.raises(ValueError, match="3 values"):
        normalization_table((0.5, 0.5), (0.2, 0.2))
