"""Dream-VL image processor: bit parity with transformers' Qwen2-VL PIL processor, the Dream-specific
small-image branch, the aspect-ratio limit, and the exact patch order (spec §2)."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from dreamjax.data.image_processor import (
    CLIP_MEAN,
    CLIP_STD,
    PIXELS_RELEASE,
    PIXELS_TRAIN,
    PIXELS_VLA,
    num_image_tokens,
    preprocess,
    smart_resize,
)

# (height, width): odd sizes, exact multiples, round-half-to-even cases (70 -> 56, 98 -> 112), large downscale.
SIZES = [(37, 91), (123, 517), (640, 479), (29, 1003), (800, 800), (224, 224), (70, 98), (1500, 2300)]
BUDGETS = {"release": PIXELS_RELEASE, "vla": PIXELS_VLA, "train": PIXELS_TRAIN}


def make_image(height, width, seed=0):
    """Deterministic RGB uint8 image: noise over gradients and a block pattern (structure for the resampler)."""
    rng = np.random.default_rng(seed + 1000 * height + width)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([255 * y / max(height - 1, 1), 255 * x / max(width - 1, 1), 255 * (((y // 7) + (x // 5)) % 2)], -1)
    noise = rng.integers(-40, 41, size=(height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def hf_preprocess(images, min_pixels, max_pixels):
    processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    out = processor(images, return_tensors="np")
    return np.asarray(out["pixel_values"]), np.asarray(out["image_grid_thw"])


@pytest.mark.parametrize("budget", list(BUDGETS))
@pytest.mark.parametrize("size", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_bit_identical_to_transformers(size, budget):
    """Exact equality (no tolerance) of pixel_values and grid_thw with transformers' PIL Qwen2-VL processor."""
    min_pixels, max_pixels = BUDGETS[budget]
    image = make_image(*size)
    ours = preprocess(Image.fromarray(image), min_pixels, max_pixels)
    theirs = hf_preprocess(Image.fromarray(image), min_pixels, max_pixels)
    assert ours[0].dtype == np.float32 and ours[1].dtype == np.int64
    np.testing.assert_array_equal(ours[1], theirs[1])
    assert np.array_equal(ours[0], theirs[0])
    # A numpy HxWx3 uint8 input gives the same result as the PIL image.
    from_array = preprocess(image, min_pixels, max_pixels)
    assert np.array_equal(from_array[0], ours[0]) and np.array_equal(from_array[1], ours[1])


def test_multi_image_call_matches_transformers():
    images = [Image.fromarray(make_image(123, 517)), Image.fromarray(make_image(640, 479, seed=1))]
    for min_pixels, max_pixels in (PIXELS_RELEASE, PIXELS_VLA):
        pixel_values, grid = preprocess(images, min_pixels, max_pixels)
        hf_values, hf_grid = hf_preprocess(images, min_pixels, max_pixels)
        np.testing.assert_array_equal(grid, hf_grid)
        assert np.array_equal(pixel_values, hf_values)
        # Rows are the per-image results concatenated in order.
        singles = [preprocess(image, min_pixels, max_pixels)[0] for image in images]
        assert np.array_equal(pixel_values, np.concatenate(singles))
        assert pixel_values.shape == (int(grid.prod(axis=1).sum()), 1176)


def test_shapes_tokens_and_libero_frame():
    pixel_values, grid = preprocess(make_image(224, 224), *PIXELS_VLA)
    assert grid.tolist() == [[1, 16, 16]] and pixel_values.shape == (256, 1176)
    assert num_image_tokens(grid) == [64]
    assert num_image_tokens([[1, 4, 8], [1, 16, 16]]) == [8, 64]
    assert num_image_tokens(np.array([1, 2, 2])) == [1]
    with pytest.raises(ValueError, match="merge_size"):
        num_image_tokens([1, 3, 4])


def test_smart_resize_rounding():
    # Python round() is round-half-to-even: 70/28 = 2.5 -> 2, 98/28 = 3.5 -> 4.
    assert smart_resize(70, 70) == (56, 56)
    assert smart_resize(70, 98) == (56, 112)
    assert smart_resize(224, 224, min_pixels=PIXELS_VLA[0]) == (224, 224)
    for h, w in [(37, 91), (640, 479), (5000, 40)]:
        for budget in BUDGETS.values():
            assert smart_resize(h, w, 28, *budget) == hf_smart_resize(h, w, 28, *budget)


def spec_small_image_size(height, width, min_pixels, max_pixels):
    """Spec §2 rule written out independently: short side -> 28, long side -> round(long/short*28), then the
    standard Qwen2-VL rule (taken from transformers) on that size."""
    if height < width:
        up_h, up_w = 28, round(width / height * 28)
    else:
        up_h, up_w = round(height / width * 28), 28
    return hf_smart_resize(up_h, up_w, 28, min_pixels, max_pixels)


# sizes: (10, 50) and (27, 300) coincide with transformers 5.x; (13, 77) and (5, 40) do not at the release budget.
@pytest.mark.parametrize("size", [(10, 50), (27, 300), (300, 27), (13, 77), (5, 40), (3, 3)])
@pytest.mark.parametrize("budget", ["release", "vla"])
def test_small_image_branch(size, budget):
    min_pixels, max_pixels = BUDGETS[budget]
    image = make_image(*size)
    h, w = spec_small_image_size(*size, min_pixels, max_pixels)
    pixel_values, grid = preprocess(image, min_pixels, max_pixels)
    assert grid.tolist() == [[1, h // 14, w // 14]]
    # Pixels: resize to (h, w) ourselves, then let transformers process that already-fitting image (its
    # smart_resize leaves it as is and PIL's same-size resize is a copy) -> must equal our values bit for bit.
    assert hf_smart_resize(h, w, 28, min_pixels, max_pixels) == (h, w)
    resized = Image.fromarray(image).resize((w, h), resample=Image.Resampling.BICUBIC)
    hf_values, hf_grid = hf_preprocess(resized, min_pixels, max_pixels)
    assert hf_grid.tolist() == grid.tolist()
    assert np.array_equal(pixel_values, hf_values)


def test_small_image_differs_from_transformers():
    # transformers' Qwen2-VL resizes 13x77 and 5x40 straight from the original size and lands elsewhere.
    assert smart_resize(13, 77) == (28, 168) != hf_smart_resize(13, 77, 28, *PIXELS_RELEASE) == (28, 140)
    assert smart_resize(5, 40) == (28, 224) != hf_smart_resize(5, 40, 28, *PIXELS_RELEASE) == (28, 168)
    # The reference let small slivers skip the aspect-ratio check (`elif`); dreamjax rejects them as
    # transformers does.
    with pytest.raises(ValueError, match=r"aspect ratio 250\.00"):
        smart_resize(10, 2500)
    with pytest.raises(ValueError):
        hf_smart_resize(10, 2500, 28, *PIXELS_RELEASE)


def test_aspect_ratio_limit():
    assert smart_resize(28, 28 * 200) == (28, 5600)
    assert preprocess(make_image(5600, 28))[1].tolist() == [[1, 400, 2]]
    with pytest.raises(ValueError, match=r"aspect ratio 200\.04"):
        smart_resize(28, 5601)
    with pytest.raises(ValueError, match="aspect ratio"):
        preprocess(np.zeros((6000, 29, 3), np.uint8))


def test_patch_order():
    """Every value of pixel_values traced back to (frame, channel, y, x) with the spec's formula."""
    h, w = 56, 84  # grid (1, 4, 6): two merge-rows, three merge-cols
    y, x = np.mgrid[0:h, 0:w]
    # Channel 0 holds y, channel 1 holds x, channel 2 a constant: all exactly representable and distinct.
    image = np.stack([y, x, np.full_like(y, 200)], -1).astype(np.uint8)
    pixel_values, grid = preprocess(image)
    assert grid.tolist() == [[1, 4, 6]]
    mean, std = np.float32(CLIP_MEAN), np.float32(CLIP_STD)
    decode = lambda v, c: np.round((v * std[c] + mean[c]) * 255).astype(int)  # noqa: E731
    gh, gw = 4, 6
    for r in range(gh * gw):
        block, in_window = divmod(r, 4)
        merge_row, merge_col = divmod(block, gw // 2)
        py = merge_row * 2 + in_window // 2
        px = merge_col * 2 + in_window % 2
        row = pixel_values[r]
        for t in range(2):
            for yy in range(14):
                for xx in range(14):
                    i = yy * 14 + xx
                    assert decode(row[0 * 392 + t * 196 + i], 0) == py * 14 + yy
                    assert decode(row[1 * 392 + t * 196 + i], 1) == px * 14 + xx
                    assert decode(row[2 * 392 + t * 196 + i], 2) == 200
    # Both frames of a tiled single image are identical.
    frames = pixel_values.reshape(-1, 3, 2, 196)
    assert np.array_equal(frames[:, :, 0], frames[:, :, 1])


def test_input_modes():
    rgb = make_image(60, 90)
    gray = rgb[..., 0]
    ref_gray = preprocess(np.repeat(gray[..., None], 3, -1))
    for variant in (gray, gray[..., None], Image.fromarray(gray)):
        out = preprocess(variant)
        assert np.array_equal(out[0], ref_gray[0])
    # RGBA: alpha dropped, as PIL's convert("RGB") in the reference (transformers 4.x).
    rgba = np.concatenate([rgb, np.full((60, 90, 1), 7, np.uint8)], -1)
    ref = preprocess(rgb)[0]
    assert np.array_equal(preprocess(rgba)[0], ref)
    assert np.array_equal(preprocess(Image.fromarray(rgba, "RGBA"))[0], ref)
    assert np.array_equal(preprocess((Image.fromarray(rgb),))[0], ref)


@pytest.mark.parametrize(
    "bad, error, message",
    [
        ("image.png", TypeError, "str"),
        (None, TypeError, "NoneType"),
        ([], ValueError, "empty list"),
        ([make_image(30, 30), 3], TypeError, "image 1"),
        (np.zeros((0, 10, 3), np.uint8), ValueError, "empty"),
        (Image.new("RGB", (0, 10)), ValueError, "empty"),
        (np.zeros((10, 10, 3), np.float32), TypeError, "uint8"),
        (np.zeros((3, 40, 40), np.uint8), ValueError, "shape"),
    ],
)
def test_bad_input(bad, error, message):
    with pytest.raises(error, match=message):
        preprocess(bad)


def test_bad_budget():
    with pytest.raises(ValueError, match="min_pixels"):
        preprocess(make_image(30, 30), min_pixels=1000, max_pixels=10)


def test_importable_without_jax_or_torch():
    code = (
        "import sys; import dreamjax.data.image_processor as m; "
        "bad = [k for k in ('jax', 'torch', 'transformers') if k in sys.modules]; "
        "assert not bad, bad; print(m.preprocess(__import__('numpy').zeros((30, 30, 3), 'uint8'))[1])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "[[1 4 4]]" in result.stdout  # 30x30 -> 28x28 is below 3136 px -> 56x56
