"""The decode stage of the VLA pipeline (:mod:`.vla_pipeline`): encoded frames → decoded, resized, optionally
augmented frames → ``sample_fn`` → ``collate``.

JPEG decode (simplejpeg) and the Lanczos resize (numba) release the GIL, so ``decode_threads`` threads decode
the frames of a batch in parallel inside one process. Augmentation is ``"host"`` (numpy, here), ``"device"``
(here only the per-sample ``augment_seed`` and ``image_mask``; :mod:`.device_augment` runs in the train step)
or ``"none"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from dreamjax.data import frame_transforms as ft

AUGMENT_MODES = {True: "host", False: "none", "host": "host", "device": "device", "none": "none"}


RESIZE_MODES = ("host", "device")


def image_modes(augment, resize, *, where: str = "", key_prefix: str = "") -> tuple[str, str]:
    """A data config's (augment mode, resize mode), checked: ``augment`` one of :data:`AUGMENT_MODES` (booleans
    mean host / none), ``resize`` one of :data:`RESIZE_MODES`, and no host augmentation of frames left at their
    stored size. Errors start with ``where`` and name the keys as ``key_prefix`` + key (the pipeline's
    ``VLADataConfig`` and the train step's ``dreamjax.vla.task.step_images`` both check through here)."""
    k = key_prefix
    mode = AUGMENT_MODES.get(augment) if isinstance(augment, (bool, str)) else None
    if mode is None:
        raise ValueError(f"{where}{k}augment={augment!r}; expected one of 'host', 'device', 'none' (or True/False)")
    if resize not in RESIZE_MODES:
        raise ValueError(f"{where}{k}resize={resize!r}; expected one of {RESIZE_MODES}")
    if resize == "device" and mode == "host":
        raise ValueError(f"{where}{k}resize='device' with {k}augment='host': host augmentation needs resized frames; "
                         "use augment='device' (or resize='host')")
    return mode, resize


def _decode_camera(raw: Mapping, cam: int, fn: Callable, *args, **kwargs) -> np.ndarray:
    try:
        return fn(raw["images"][cam], *args, **kwargs)
    except ft.ImageDecodeError as e:
        raise ft.ImageDecodeError(f"dataset {raw['dataset_name']}: frame {raw['seed']} (seed, dataset, episode "
                                  f"stream position, timestep), camera {cam}: {e}") from e


def _decoded_at_stored_size(raw: Mapping, image_size: int, dct: str) -> np.ndarray:
    cams = raw["images"]
    decoded = {cam: _decode_camera(raw, cam, ft.decode_image, dct=dct) for cam, data in enumerate(cams) if data}
    shapes = sorted({im.shape for im in decoded.values()})
    if len(shapes) > 1:
        raise ValueError(f"dataset {raw['dataset_name']}: resize='device' needs the cameras of a frame at one size, "
                         f"got {shapes}; use resize='host'")
    images = np.zeros((len(cams), *(shapes[0] if shapes else (image_size, image_size, 3))), np.uint8)
    for cam, im in decoded.items():
        images[cam] = im
    return images


def decode_frame(raw: Mapping, image_size: int, augment: str = "host", correlated: bool = False,
                 dct: str = "accurate", resize: str = "host") -> dict:
    """Encoded frame → contract frame: decode + resize each camera into one uint8 [n_cam, S, S, 3] array
    (``resize="device"``: decode only, images at their stored size — the train step resizes them,
    ``device_augment.pixel_values_from_images``), then ``augment``: ``"host"`` augments here (seeded per frame
    and camera); ``"device"`` adds ``augment_seed`` (uint32 [2]) and ``image_mask`` (bool [n_cam], False for
    padding cameras) for :mod:`dreamjax.data.device_augment`; ``"none"`` does neither. Padding cameras are
    never augmented, as in the reference."""
    cams = raw["images"]
    if resize == "device":
        images = _decoded_at_stored_size(raw, image_size, dct)
    else:
        images = np.zeros((len(cams), image_size, image_size, 3), np.uint8)
        for cam, data in enumerate(cams):
            if data:
                _decode_camera(raw, cam, ft.decode_resize, image_size, out=images[cam], dct=dct)
    if augment == "host":
        for cam, data in enumerate(cams):
            if data:
                images[cam] = ft.augment_image(images[cam], np.random.default_rng([*raw["seed"], cam]), correlated)
    frame = {"images": images, "proprio": raw["proprio"], "actions": raw["actions"],
             "instruction": raw["instruction"], "dataset_name": raw["dataset_name"]}
    if augment == "device":
        frame["augment_seed"] = ft.augment_seed(raw["seed"])
        frame["image_mask"] = np.array([bool(d) for d in cams])
    for k in ("episode_index", "timestep"):
        if k in raw:
            frame[k] = raw[k]
    return frame


DEVICE_AUGMENT_KEYS = ("augment_seed", "image_mask")


def stack_frames(samples: Sequence[Mapping]) -> dict:
    """Default collate: numpy values stacked per key, strings (and other objects) as lists."""
    out = {}
    for k in samples[0]:
        values = [s[k] for s in samples]
        if isinstance(values[0], (str, bytes)):
            out[k] = values
            continue
        arrays = [np.asarray(v) for v in values]
        shapes = sorted({a.shape for a in arrays})
        if len(shapes) > 1:
            names = sorted({str(s.get("dataset_name")) for s in samples})
            raise ValueError(f"collate: {k!r} has shapes {shapes} in one batch (datasets {names}); images of "
                             "several sizes come from resize='device' over datasets stored at different sizes "
                             "(use resize='host')")
        out[k] = np.stack(arrays)
    return out


class DecodeAndCollate:
    """``batch_fn``: decode/augment the frames of a batch (in ``threads`` threads: JPEG decode, the resize and
    the host augmentation release the GIL), ``sample_fn``, ``collate``. With device augmentation, ``augment_seed`` and
    ``image_mask`` are carried past ``sample_fn`` into its output."""

    def __init__(self, image_size: int, augment="host", sample_fn: Callable | None = None,
                 collate: Callable | None = None, threads: int = 0, correlated: bool = False,
                 dct: str = "accurate", resize: str = "host"):
        self.image_size, self.augment, self.threads = image_size, AUGMENT_MODES[augment], threads
        self.correlated, self.dct, self.resize = correlated, dct, resize
        self.sample_fn, self.collate = sample_fn, collate or stack_frames
        self._pool = None

    def __getstate__(self):
        return {**self.__dict__, "_pool": None}

    def one(self, raw):
        frame = decode_frame(raw, self.image_size, self.augment, self.correlated, self.dct, self.resize)
        if self.sample_fn is None:
            return frame
        sample = self.sample_fn(frame)
        if self.augment == "device" and isinstance(sample, dict):
            sample = {**sample, **{k: frame[k] for k in DEVICE_AUGMENT_KEYS}}
        return sample

    def __call__(self, raws: Sequence[Mapping]) -> Any:
        if self.threads > 1:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="dreamjax-decode")
            samples = list(self._pool.map(self.one, raws))
        else:
            samples = [self.one(r) for r in raws]
        return self.collate(samples)


class DecodeOne:
    """``map`` function for unbatched pipelines: one encoded frame → one decoded frame / sample."""

    def __init__(self, image_size, augment, sample_fn, correlated=False, dct="accurate", resize="host"):
        self.inner = DecodeAndCollate(image_size, augment, sample_fn, correlated=correlated, dct=dct, resize=resize)

    def __call__(self, raw):
        return self.inner.one(raw)
