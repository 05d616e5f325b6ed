"""Dream-VL image preprocessing in plain numpy + PIL (spec §2, `DreamVLImageProcessor`).

Turns images into the flat patch rows the Qwen2-VL vision tower eats:

1. convert to RGB (``PIL.Image.convert("RGB")``: alpha is dropped, as in the reference's transformers 4.x;
   transformers >= 5 composites transparency onto white instead);
2. :func:`smart_resize` to multiples of 28 inside a pixel budget;
3. PIL bicubic resize of the uint8 image, ``x.astype(float64) * (1/255)`` cast to float32, then
   ``(x - mean) / std`` in float32 with the CLIP statistics (bit-identical to transformers' PIL path). The
   result depends only on the uint8 level and the channel, so it is read from a [3, 256] table computed with
   that same float32 arithmetic (``normalization_table``): bit-identical, ~5× faster than per pixel;
4. a single image is tiled to ``temporal_patch_size`` (2) frames, so ``grid_t == 1``;
5. patchify: rows ordered (time block, merge-row, merge-col, in-window row, in-window col); within a row the
   1176 values are ordered (channel, frame, y, x), i.e. ``c*392 + t*196 + y*14 + x``.

Pixel budgets ``(min_pixels, max_pixels)`` seen in the reference (all multiples of 28*28 = 784 px = 1 LLM token):

=====================  ===================  =======================================================
constant               (min, max)           where
=====================  ===================  =======================================================
``PIXELS_RELEASE``     (3136, 3211264)      HF release ``preprocessor_config.json`` (4..4096 tokens)
``PIXELS_CLASS``       (3136, 1003520)      ``DreamVLImageProcessor`` class defaults (4..1280 tokens)
``PIXELS_TRAIN``       (401408, 3211264)    Dream-VL LLaVA-style training (512..4096 tokens)
``PIXELS_LMMS_EVAL``   (200704, 12845056)   lmms-eval Dream-VL wrapper (256..16384 tokens)
``PIXELS_VLA``         (50176, 3211264)     Dream-VLA fine-tune/eval (64 tokens min, release max)
=====================  ===================  =======================================================

This module imports neither jax nor torch: data workers use it.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PIXELS_RELEASE = (3136, 3211264)
PIXELS_CLASS = (3136, 1003520)
PIXELS_TRAIN = (401408, 3211264)
PIXELS_LMMS_EVAL = (200704, 12845056)
PIXELS_VLA = (50176, PIXELS_RELEASE[1])

MAX_ASPECT_RATIO = 200


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = PIXELS_RELEASE[0],
    max_pixels: int = PIXELS_RELEASE[1],
) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, area within [min_pixels, max_pixels], ratio kept.

    Same arithmetic as the reference (Python ``round`` is round-half-to-even: 70 px -> 56, not 84):

    * Dream-specific: if a side is < ``factor``, the short side becomes ``factor`` and the long side
      ``round(long / short * factor)``; the result replaces the input size for the steps below.
    * an aspect ratio above 200 raises ``ValueError``. Fix vs the reference: its check is an ``elif`` after
      the small-image branch, so a tiny sliver such as 10x2500 slipped through as a 28x7000 strip; here the
      ratio of the original size is always checked.
    * ``round`` each side to ``factor``; if the area is above ``max_pixels`` scale down (floor), if below
      ``min_pixels`` scale up (ceil), by ``beta = sqrt(area ratio)``.

    Fix vs the reference: the floor branch is clamped to at least ``factor`` (as current transformers does);
    the reference returns 0 there, which only happens when ``max_pixels < 784 * aspect_ratio`` and then
    crashes later. No output of the reference that is usable changes.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(
            f"image of height={height}, width={width} has aspect ratio {ratio:.2f}; "
            f"at most {MAX_ASPECT_RATIO} is supported"
        )
    if height < factor or width < factor:
        if height < width:
            height, width = factor, round(width / height * factor)
        else:
            height, width = round(height / width * factor), factor
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _to_rgb(image, index: int) -> Image.Image:
    """A PIL RGB image from a PIL image (any mode) or an HxW / HxWx{1,3,4} uint8 array."""
    if not isinstance(image, Image.Image):
        if not isinstance(image, np.ndarray) and not hasattr(image, "__array__"):
            raise TypeError(
                f"image {index}: expected a PIL.Image.Image or a HxWx3 uint8 numpy array, got {type(image).__name__}"
            )
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise TypeError(f"image {index}: expected a uint8 array with values 0..255, got dtype {array.dtype}")
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
            raise ValueError(
                f"image {index}: expected an array of shape HxW, HxWx1, HxWx3 or HxWx4 (channels last), "
                f"got shape {array.shape}"
            )
        if array.shape[0] == 0 or array.shape[1] == 0:
            raise ValueError(f"image {index}: empty image of shape {array.shape}")
        image = Image.fromarray(np.ascontiguousarray(array))
    if image.width == 0 or image.height == 0:
        raise ValueError(f"image {index}: empty image of size {image.width}x{image.height} (WxH)")
    return image if image.mode == "RGB" else image.convert("RGB")


@functools.lru_cache(maxsize=8)
def normalization_table(image_mean: tuple[float, ...] = CLIP_MEAN,
                        image_std: tuple[float, ...] = CLIP_STD) -> np.ndarray:
    """[3, 256] float32: ``(float32(level * (1/255)) - mean[c]) / std[c]`` for every uint8 level and channel c,
    in float32 as the per-pixel formula (so looking a pixel up gives the same bits). Read-only, cached."""
    mean = np.asarray(image_mean, dtype=np.float32).reshape(-1, 1)
    std = np.asarray(image_std, dtype=np.float32).reshape(-1, 1)
    if len(mean) not in (1, 3) or len(std) not in (1, 3):
        raise ValueError(f"image_mean and image_std need 1 or 3 values (R, G, B), got {image_mean} and {image_std}")
    mean, std = np.broadcast_to(mean, (3, 1)), np.broadcast_to(std, (3, 1))  # one value: every channel, as before
    levels = (np.arange(256, dtype=np.float64) * (1 / 255)).astype(np.float32)[None, :]
    table = (levels - mean) / std
    table.setflags(write=False)
    return table


def _patchify(frames: np.ndarray, patch_size: int, merge_size: int, temporal_patch_size: int) -> np.ndarray:
    """(T, C, H, W) -> (T/tp * H/ps * W/ps, C * tp * ps * ps) in the reference's row and column order."""
    t, c, h, w = frames.shape
    gt, gh, gw = t // temporal_patch_size, h // patch_size, w // patch_size
    x = frames.reshape(
        gt, temporal_patch_size, c,
        gh // merge_size, merge_size, patch_size,
        gw // merge_size, merge_size, patch_size,
    )
    # -> (gt, gh/m, gw/m, m_row, m_col, C, tp, ps_y, ps_x)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, c * temporal_patch_size * patch_size * patch_size)


def preprocess(
    images,
    min_pixels: int = PIXELS_RELEASE[0],
    max_pixels: int = PIXELS_RELEASE[1],
    *,
    patch_size: int = 14,
    temporal_patch_size: int = 2,
    merge_size: int = 2,
    image_mean: Sequence[float] = CLIP_MEAN,
    image_std: Sequence[float] = CLIP_STD,
) -> tuple[np.ndarray, np.ndarray]:
    """Images -> ``(pixel_values float32 [sum_rows, 1176], image_grid_thw int64 [n_images, 3])``.

    ``images`` is one image or a list/tuple of images; each is a ``PIL.Image.Image`` (any mode, converted to
    RGB) or a uint8 numpy array HxW / HxWx1 / HxWx3 / HxWx4 (channels last). Each image is resized on its
    own (the reference's "first frame's size for every frame" rule only matters for videos). Rows of all
    images are concatenated in order; image i has ``prod(image_grid_thw[i])`` rows.
    """
    if min_pixels <= 0 or max_pixels < min_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got min_pixels={min_pixels}, max_pixels={max_pixels}")
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("preprocess got an empty list of images")
        images = list(images)
    else:
        images = [images]

    factor = patch_size * merge_size
    table = normalization_table(tuple(float(m) for m in image_mean), tuple(float(s) for s in image_std))
    rows, grids = [], []
    for i, image in enumerate(images):
        rgb = _to_rgb(image, i)
        h, w = smart_resize(rgb.height, rgb.width, factor, min_pixels, max_pixels)
        resized = np.asarray(rgb.resize((w, h), resample=Image.Resampling.BICUBIC))  # (h, w, 3) uint8
        frame = np.stack([np.take(table[c], resized[..., c]) for c in range(3)])  # (3, h, w) float32, normalized
        frames = np.broadcast_to(frame, (temporal_patch_size, *frame.shape))
        rows.append(_patchify(frames, patch_size, merge_size, temporal_patch_size))
        grids.append((1, h // patch_size, w // patch_size))
    pixel_values = np.ascontiguousarray(np.concatenate(rows, axis=0), dtype=np.float32)
    return pixel_values, np.asarray(grids, dtype=np.int64)


def num_image_tokens(grid_thw, merge_size: int = 2) -> list[int]:
    """LLM tokens per image, ``t * h * w / merge_size**2``, for a grid of shape (n, 3) or a single (3,) row."""
    grid = np.asarray(grid_thw, dtype=np.int64).reshape(-1, 3)
    if np.any(grid[:, 1:] % merge_size):
        raise ValueError(f"grid_thw h and w must be multiples of merge_size={merge_size}, got {grid.tolist()}")
    return [int(t * h * w) // (merge_size * merge_size) for t, h, w in grid]
