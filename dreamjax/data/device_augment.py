"""The reference's training augmentation as a jitted, batched JAX function (spec §8.6), run inside the step.

Same ops, order, ranges and uint8 round trip as the host version (:mod:`dreamjax.data.frame_transforms`,
whose docstring describes the reference and its [QUIRK]): random resized crop (square, side √0.9, bilinear
back to the input size) → brightness ±0.2 → contrast ×[0.8, 1.2] → saturation ×[0.8, 1.2] → hue ±0.05, a
clip to [0, 1] after each, ``floor(x · 255.5)`` back to uint8. Padding cameras (a view the dataset lacks) are
left as they are, as the reference skips them.

Randomness: each sample carries ``augment_seed`` (uint32 [2]), derived on the host from the sample's identity
(pipeline seed, dataset, position in the dataset's episode stream, timestep) by
:func:`frame_transforms.augment_seed`; camera ``i`` uses ``fold_in(key(augment_seed), i)``. So the
augmentation of a sample does not depend on batch composition, device count or iteration order, and a
restored data iterator yields identically augmented batches. (The host path draws from numpy with the same
identity; the two paths have the same distribution, not the same values.)

How training uses it (``data.augment="device"``, optionally ``data.resize="device"``; wired by
``dreamjax.vla.task`` and :class:`StepImages`): the pipeline yields un-augmented frames plus ``augment_seed``
[B, 2] and ``image_mask`` [B, n_cam]; the Dream-VLA layout (``sample_fn``) lets both ride along beside
``pixel_values``. They are ordinary batch keys of the task, so the loop shards them on the batch axis like
every other key and the multi-host assembly (``dreamjax.train.data.global_batch``) carries them. Inside the
jitted train step, before the model, the task's loss calls :meth:`StepImages.model_batch`, which is::

    pixel_values = device_augment.augment_pixel_values(
        batch["pixel_values"], batch["augment_seed"], batch["image_mask"], grid_side=layout.grid_side)

(:func:`augment_images` is the same on uint8 images [B, n_cam, H, W, 3].) With ``resize="device"`` as well,
the host only decodes: frames keep their stored size (one size per mixture), the layout passes the uint8
``images`` through instead of computing ``pixel_values`` (``layout_sample(..., device_images=True)``), and the
step builds the ViT input with :func:`pixel_values_from_images` (resize → augment → normalize → patchify). The
functions are jitted (static: sizes and ``correlated``) and nest inside the step's jit. Everything is per
sample, so it shards with the batch axis and splits into gradient-accumulation micro-batches unchanged.
``augment_seed``, ``image_mask`` and ``images`` are data-only keys: the model never sees them. Evaluation and
``predict_action`` never augment.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from dreamjax.data import frame_transforms as ft
from dreamjax.data.image_processor import CLIP_MEAN, CLIP_STD
from dreamjax.data.vla_decode import DEVICE_AUGMENT_KEYS

if TYPE_CHECKING:
    from dreamjax.data.vla_layout import VLALayout


@functools.partial(jax.jit, static_argnames=("num_cameras", "correlated"))
def sample_params(seeds: jax.Array, num_cameras: int, correlated: bool = False) -> ft.AugmentParams:
    """uint32 [B, 2] seeds → :class:`~dreamjax.data.frame_transforms.AugmentParams` of float32 [B, num_cameras]
    (``correlated``: the reference's single-uniform coupling, see the frame_transforms [QUIRK])."""
    def one(seed):
        key = jax.random.wrap_key_data(jnp.asarray(seed, jnp.uint32), impl="threefry2x32")
        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(num_cameras))
        return jax.vmap(lambda k: jax.random.uniform(k, () if correlated else (6,)))(keys)

    u = jax.vmap(one)(jnp.asarray(seeds, jnp.uint32))
    return ft.params_from_uniforms(u, correlated)


def _crop_axis(x: jax.Array, offset: jax.Array, axis: int) -> jax.Array:
    """tf.image.crop_and_resize along one axis of [H, W, C]: box [offset, offset + √0.9], n samples."""
    n = x.shape[axis]
    end = offset + ft.CROP_SIDE
    pos = offset * (n - 1) + jnp.arange(n, dtype=jnp.float32) * ((end - offset) * (n - 1) / (n - 1))
    lo = jnp.floor(pos)
    frac = pos - lo
    lo = jnp.clip(lo.astype(jnp.int32), 0, n - 1)
    hi = jnp.minimum(lo + 1, n - 1)
    shape = [1, 1, 1]
    shape[axis] = n
    frac = frac.reshape(shape)
    return jnp.take(x, lo, axis=axis) * (1 - frac) + jnp.take(x, hi, axis=axis) * frac


def _rgb_to_hsv(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = jnp.maximum(jnp.maximum(r, g), b)
    delta = v - jnp.minimum(jnp.minimum(r, g), b)
    s = delta / jnp.where(v > 0, v, 1)
    inv = 1 / jnp.where(delta > 0, delta, 1)
    # which channel is the max, by comparisons rather than ``v == r``: XLA may compute r once with and once
    # without FMA contraction inside a fusion, and an equality against a recomputed value can fail
    r_max = (r >= g) & (r >= b)
    g_max = ~r_max & (g >= b)
    h = jnp.where(r_max, (g - b) * inv, jnp.where(g_max, (b - r) * inv + 2, (r - g) * inv + 4)) / 6
    return jnp.where(delta > 0, h - jnp.floor(h), 0), s, v


def _hsv_to_rgb(h: jax.Array, s: jax.Array, v: jax.Array) -> jax.Array:
    vs = v * s
    out = []
    for n in (5.0, 3.0, 1.0):  # channel n: v − v·s·clip(min(k, 4 − k), 0, 1), k = (n + 6h) mod 6
        k = n + 6 * h
        k = jnp.where(k >= 6, k - 6, k)
        out.append(v - vs * jnp.clip(jnp.minimum(k, 4 - k), 0, 1))
    return jnp.stack(out, axis=-1)


def _augment_one(image: jax.Array, p: ft.AugmentParams) -> jax.Array:
    """uint8 [H, W, 3] → uint8 [H, W, 3] with scalar params (the host ops in float32)."""
    x = image.astype(jnp.float32) * jnp.float32(1 / 255)
    x = jnp.clip(_crop_axis(_crop_axis(x, p.crop_y, 0), p.crop_x, 1), 0, 1)
    x = jnp.clip(x + p.brightness, 0, 1)
    mean = jnp.mean(x, axis=(0, 1), keepdims=True)
    x = jnp.clip((x - mean) * p.contrast + mean, 0, 1)
    h, s, v = _rgb_to_hsv(x)
    s = jnp.clip(s * p.saturation, 0, 1)
    h = h + p.hue
    x = jnp.clip(_hsv_to_rgb(h - jnp.floor(h), s, v), 0, 1)
    return (x * jnp.float32(255.5)).astype(jnp.uint8)


@jax.jit
def apply_augment(images: jax.Array, params: ft.AugmentParams) -> jax.Array:
    """uint8 [..., H, W, 3] with params of shape [...] → augmented uint8 [..., H, W, 3]."""
    lead = images.shape[:-3]
    flat = images.reshape((-1, *images.shape[-3:]))
    p = ft.AugmentParams(*(jnp.broadcast_to(jnp.asarray(v, jnp.float32), lead).reshape(-1) for v in params))
    return jax.vmap(_augment_one)(flat, p).reshape(images.shape)


@functools.partial(jax.jit, static_argnames=("correlated",))
def augment_images(images: jax.Array, seeds: jax.Array, image_mask: jax.Array | None = None, *,
                   correlated: bool = False) -> jax.Array:
    """uint8 [B, N, H, W, 3], seeds uint32 [B, 2], image_mask bool [B, N] (False: a padding camera, left
    as it is) → uint8 [B, N, H, W, 3]. Jit-friendly (call it inside the step)."""
    images = jnp.asarray(images)
    if images.ndim != 5 or images.shape[-1] != 3 or images.dtype != jnp.uint8:
        raise ValueError(f"augment_images: expected uint8 [B, num_cameras, H, W, 3], got {images.dtype} "
                         f"{list(images.shape)}")
    params = sample_params(seeds, num_cameras=images.shape[1], correlated=correlated)
    out = apply_augment(images, params)
    if image_mask is None:
        return out
    return jnp.where(jnp.asarray(image_mask, bool)[:, :, None, None, None], out, images)


@functools.partial(jax.jit, static_argnames=("size",))
def resize_lanczos3(images: jax.Array, size: int) -> jax.Array:
    """uint8 [..., H, W, C] → uint8 [..., size, size, C]: the reference's resize (TF lanczos3, antialias,
    round, clip) as two float32 matrix products with TensorFlow's weights (``frame_transforms.lanczos3_weights``;
    cheap on an accelerator). Images already at ``size`` are returned as they are."""
    h, w = images.shape[-3], images.shape[-2]
    if (h, w) == (size, size):
        return images
    wy = jnp.asarray(ft.lanczos3_weights(h, size))
    wx = jnp.asarray(ft.lanczos3_weights(w, size))
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,...hwc->...owc", wy, images.astype(jnp.float32), precision=hi)
    x = jnp.einsum("pw,...owc->...opc", wx, x, precision=hi)
    return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("size", "row_len", "correlated", "patch_size", "merge_size",
                                             "temporal_patch_size"))
def pixel_values_from_images(images: jax.Array, seeds: jax.Array | None, image_mask: jax.Array | None, *,
                             size: int, row_len: int, correlated: bool = False, patch_size: int = 14,
                             merge_size: int = 2, temporal_patch_size: int = 2) -> jax.Array:
    """The whole image path on device: uint8 [B, n_img, H, W, 3] as decoded (``VLADataConfig(resize="device")``)
    → resize to ``size`` → augment (``seeds`` None: no augmentation) → normalized pixel rows
    [B·n_img, row_len, 1176] in ``vla_layout.collate``'s order. Padding cameras stay zeros (black), as the host
    path leaves them."""
    resized = resize_lanczos3(images, size)
    if seeds is not None:
        resized = augment_images(resized, seeds, image_mask, correlated=correlated)
    return images_to_pixel_rows(resized.reshape(-1, *resized.shape[2:]), row_len, patch_size=patch_size,
                                merge_size=merge_size, temporal_patch_size=temporal_patch_size)


def _patch_geometry(patch_dim: int, grid_side: int, patch_size: int, merge_size: int, temporal_patch_size: int):
    if patch_dim != 3 * temporal_patch_size * patch_size**2 or grid_side % merge_size:
        raise ValueError(f"pixel rows of {patch_dim} values do not match patch_size={patch_size}, "
                         f"temporal_patch_size={temporal_patch_size} (expected 3·tp·ps² values) or grid_side "
                         f"{grid_side} is not a multiple of merge_size={merge_size}")
    g = grid_side // merge_size
    return (g, g, merge_size, merge_size, 3, temporal_patch_size, patch_size, patch_size)


def pixel_rows_to_images(rows: jax.Array, *, grid_side: int, patch_size: int = 14, merge_size: int = 2,
                         temporal_patch_size: int = 2) -> jax.Array:
    """Qwen2-VL pixel rows of one image per row [R, ≥grid_side², 3·tp·ps²] (normalized) → uint8
    [R, grid_side·ps, grid_side·ps, 3]: the inverse of ``image_processor.preprocess`` for unresized images."""
    geom = _patch_geometry(rows.shape[-1], grid_side, patch_size, merge_size, temporal_patch_size)
    x = rows[:, :grid_side**2].reshape((rows.shape[0], *geom))[:, :, :, :, :, :, 0]  # first temporal copy
    # (R, gh/m, gw/m, m_y, m_x, C, ps_y, ps_x) → (R, gh/m, m_y, ps_y, gw/m, m_x, ps_x, C)
    x = x.transpose(0, 1, 3, 6, 2, 4, 7, 5).reshape(rows.shape[0], grid_side * patch_size, grid_side * patch_size, 3)
    x = x * jnp.asarray(CLIP_STD, jnp.float32) + jnp.asarray(CLIP_MEAN, jnp.float32)
    return jnp.clip(jnp.round(x * 255), 0, 255).astype(jnp.uint8)


def images_to_pixel_rows(images: jax.Array, row_len: int, *, patch_size: int = 14, merge_size: int = 2,
                         temporal_patch_size: int = 2) -> jax.Array:
    """uint8 [R, H, W, 3] → normalized pixel rows [R, row_len, 3·tp·ps²] (zeros past the image's patches), as
    ``image_processor.preprocess`` + ``pack_pixel_rows`` lay out one image per row."""
    r, h, _, _ = images.shape
    grid_side = h // patch_size
    g = grid_side // merge_size
    x = (images.astype(jnp.float32) * jnp.float32(1 / 255) - jnp.asarray(CLIP_MEAN, jnp.float32)) \
        / jnp.asarray(CLIP_STD, jnp.float32)
    x = x.reshape(r, g, merge_size, patch_size, g, merge_size, patch_size, 3)
    x = x.transpose(0, 1, 4, 2, 5, 7, 3, 6)  # (R, gh/m, gw/m, m_y, m_x, C, ps_y, ps_x)
    x = jnp.broadcast_to(x[:, :, :, :, :, :, None], (*x.shape[:6], temporal_patch_size, patch_size, patch_size))
    x = x.reshape(r, grid_side**2, 3 * temporal_patch_size * patch_size**2)
    return jnp.pad(x, ((0, 0), (0, row_len - grid_side**2), (0, 0)))


@functools.partial(jax.jit, static_argnames=("grid_side", "patch_size", "merge_size", "temporal_patch_size", "correlated"))
def augment_pixel_values(pixel_values: jax.Array, seeds: jax.Array, image_mask: jax.Array | None = None, *,
                         grid_side: int, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2,
                         correlated: bool = False) -> jax.Array:
    """Augment a Dream-VLA batch's ``pixel_values`` [B·n_img, L, 1176] (``vla_layout.collate``: one image per
    row, sample-major) in place of its images: unpatchify → uint8 → :func:`augment_images` → normalize →
    patchify. ``seeds`` uint32 [B, 2]; ``image_mask`` bool [B, n_img]."""
    seeds = jnp.asarray(seeds)
    b = seeds.shape[0]
    if pixel_values.ndim != 3 or pixel_values.shape[0] % b:
        raise ValueError(f"augment_pixel_values: pixel_values {list(pixel_values.shape)} is not [B·n_img, L, D] "
                         f"for {b} seeds")
    kw = dict(patch_size=patch_size, merge_size=merge_size, temporal_patch_size=temporal_patch_size)
    images = pixel_rows_to_images(pixel_values, grid_side=grid_side, **kw)
    images = images.reshape(b, -1, *images.shape[1:])
    out = augment_images(images, seeds, image_mask, correlated=correlated)
    rows = images_to_pixel_rows(out.reshape(-1, *out.shape[2:]), pixel_values.shape[1], **kw)
    if image_mask is None:
        return rows.astype(pixel_values.dtype)
    keep = jnp.asarray(image_mask, bool).reshape(-1)[:, None, None]
    return jnp.where(keep, rows.astype(pixel_values.dtype), pixel_values)


def seeds_for(identities) -> np.ndarray:
    """Host helper: identities (tuples of ints) → uint32 [n, 2] seeds (:func:`frame_transforms.augment_seed`)."""
    return np.stack([ft.augment_seed(i) for i in identities])


@dataclasses.dataclass(frozen=True)
class StepImages:
    """What the train step does to a Dream-VLA batch's images before the model, when the data config says
    ``augment="device"`` and/or ``resize="device"`` (built by ``dreamjax.vla.task`` from ``cfg.data``).

    layout: the sample layout (image size, patch geometry). augment: augment with the batch's
    ``augment_seed`` / ``image_mask``. resize: the batch carries the decoded uint8 ``images`` [B, n_img, H, W, 3]
    at their stored size in place of ``pixel_values`` (``vla_layout.layout_sample(..., device_images=True)``).
    correlated: the reference's coupled augmentation values (``augment_correlated``). stored_size: (H, W) of
    the stored frames if the config names it (``data.stored_image_size``): ``--compile-only`` builds its abstract
    batch from it, and a traced batch of another size is refused.

    The data-only keys (``augment_seed``, ``image_mask``, ``images``) are part of the batch the loop shards
    and assembles (:meth:`batch_keys`); :meth:`model_batch` turns them into ``pixel_values`` and drops them,
    so the model never sees them.
    """

    layout: VLALayout
    augment: bool = False
    resize: bool = False
    correlated: bool = False
    stored_size: tuple[int, int] | None = None

    def batch_keys(self, model_keys: tuple[str, ...]) -> tuple[str, ...]:
        """The keys the data pipeline delivers for a model reading ``model_keys``."""
        keys = tuple("images" if k == "pixel_values" and self.resize else k for k in model_keys)
        return keys + (DEVICE_AUGMENT_KEYS if self.augment else ())

    def batch_shapes(self, batch_size: int) -> dict[str, tuple[tuple[int, ...], Any]]:
        """{key: (shape, dtype)} of the data-only keys of a batch of ``batch_size`` samples."""
        n = self.layout.num_images
        out: dict[str, tuple[tuple[int, ...], Any]] = {}
        if self.augment:
            out.update(augment_seed=((batch_size, 2), jnp.uint32), image_mask=((batch_size, n), jnp.bool_))
        if self.resize:
            if self.stored_size is None:
                raise ValueError("data.resize='device': the batch shapes need data.stored_image_size (the frames' "
                                 "size on disk, e.g. 256 for LIBERO); --compile-only builds the batch without "
                                 "reading data")
            out["images"] = ((batch_size, n, *self.stored_size, 3), jnp.uint8)
        return out

    def model_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Batch shapes → the shapes the model sees (``images`` → ``pixel_values``; data-only keys dropped)."""
        out = {k: v for k, v in shapes.items() if k not in ("images", *DEVICE_AUGMENT_KEYS)}
        if self.resize and "images" in shapes:
            lay = self.layout
            out["pixel_values"] = (shapes["images"][0] * shapes["images"][1], lay.row_len, lay.patch_dim)
        return out

    def model_batch(self, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """The batch the model sees: ``pixel_values`` made on device (resize → augment → normalize → patchify,
        or augment of the host-made ``pixel_values``), data-only keys dropped. Call it inside the jitted step."""
        lay = self.layout
        geometry = dict(patch_size=lay.patch_size, merge_size=lay.merge_size,
                        temporal_patch_size=lay.temporal_patch_size)
        seeds = batch["augment_seed"] if self.augment else None
        mask = batch["image_mask"] if self.augment else None
        out = {k: v for k, v in batch.items() if k not in ("images", *DEVICE_AUGMENT_KEYS)}
        if self.resize:
            images = batch["images"]
            if images.ndim != 5 or images.shape[1] != lay.num_images or images.shape[-1] != 3:
                raise ValueError(f"batch['images'] must be uint8 [B, {lay.num_images}, H, W, 3] (resize='device'), "
                                 f"got {images.dtype} {list(images.shape)}")
            if self.stored_size is not None and tuple(images.shape[2:4]) != tuple(self.stored_size):
                raise ValueError(f"batch['images'] are {images.shape[2]}×{images.shape[3]} but "
                                 f"data.stored_image_size is {self.stored_size[0]}×{self.stored_size[1]}")
            out["pixel_values"] = pixel_values_from_images(images, seeds, mask, size=lay.image_size,
                                                           row_len=lay.row_len, correlated=self.correlated,
                                                           **geometry)
        elif self.augment:
            out["pixel_values"] = augment_pixel_values(batch["pixel_values"], seeds, mask, grid_side=lay.grid_side,
                                                       correlated=self.correlated, **geometry)
        return out
