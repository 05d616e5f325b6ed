"""The Dream-VLA training pipeline over RLDS / Open X-Embodiment episodes, in grain (spec §8).

Per dataset of the mixture (:mod:`.vla_mixture` resolves names, statistics and weights)::

    EpisodeSource (TFRecord or ArrayRecord)  → [process_index::process_count]   each process: a disjoint share
      → shuffle(seed) → repeat(num_epochs)    episodes, reshuffled every epoch (MapDataset: index-addressable)
      → map_with_index(EpisodeToFrames)       standardize, checks, normalize, chunk → list of encoded frames
      → to_iter_dataset → FlatMap             frames
    IterDataset.mix(datasets, weights) → WindowShuffle(shuffle_buffer)
      → batch(batch_size, DecodeAndCollate)   JPEG decode, resize 224, augment, sample_fn, collate
      → [mp_prefetch(worker_count)]

Every stage is a grain dataset with ``get_state``/``set_state``, so ``iter(dataset)`` is checkpointable and
restores the identical stream. Augmentation randomness is derived from (seed, dataset, position in the
dataset's episode stream, timestep), never from iteration order, so it is the same after a restore and with
any number of threads or workers.

A *frame* (interface A of the team contract) is a dict of numpy values: ``images`` uint8 [num_cameras, 224,
224, 3] (the configured cameras in order; a camera the dataset lacks is zeros), ``proprio`` float32
[proprio_dim] (normalized, zero-padded to proprio_dim), ``actions`` float32 [chunk, action_dim] (normalized;
row 0 = current step), ``instruction`` str (lowercased, as ``DreamRLDSBatchTransform`` prepares it),
``dataset_name`` str; with ``with_ids`` also ``episode_index`` and ``timestep`` (ints); with
``augment="device"`` also ``augment_seed`` uint32 [2] and ``image_mask`` bool [num_cameras] (the decode stage,
:mod:`.vla_decode`; augmentation then runs in the train step: ``dreamjax.vla.task`` applies
:class:`.device_augment.StepImages` in its loss). The last stage
applies ``sample_fn(frame)`` (e.g. ``functools.partial(vla_layout.layout_sample, ...)``) and ``collate``
(default: stack arrays per key, strings as lists).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import grain
import numpy as np

from dreamjax.data import frame_transforms as ft
from dreamjax.data.normalization import normalize
from dreamjax.data.rlds.reader import EpisodeSource, open_dataset
from dreamjax.data.traj_transforms import EpisodeError, check_trajectory, chunk_indices, standardize_episode
from dreamjax.data.vla_decode import (AUGMENT_MODES, DEVICE_AUGMENT_KEYS, RESIZE_MODES,  # noqa: F401
                                      DecodeAndCollate, DecodeOne, decode_frame, image_modes, stack_frames)
from dreamjax.data.vla_mixture import DatasetPlan, plan_mixture

log = logging.getLogger(__name__)
_SKIPPED: Counter = Counter()  # bad-episode reason → count (this process)


# cfg.data keys read by dreamjax.train / dreamjax.vla.task, not by the pipeline (stored_image_size: the frames'
# size on disk, for --compile-only's abstract batch with resize="device")
IGNORED_TRAIN_KEYS = {"kind", "batch_size", "tokenizer", "num_threads", "stored_image_size"}


@dataclasses.dataclass(frozen=True)
class VLADataConfig:
    """What the pipeline reads and how. ``mixture``: a name (``oxe.mixtures``, or one dataset) or a tuple of
    (name, weight). ``on_bad_episode``/``on_corrupt``: ``"error"`` (default) or ``"skip"`` (counted, logged).
    ``statistics_path``: a ``dataset_statistics.json`` to normalize with instead of computing statistics.
    ``shuffle_buffer``: frames per shuffle window. ``decode_threads``: threads decoding the frames of a batch;
    ``worker_count``: grain worker processes (0 = none). ``augment``: ``"host"`` (or True: numpy, in the
    pipeline), ``"device"`` (the pipeline adds ``augment_seed`` and ``image_mask``; the train step calls
    :mod:`dreamjax.data.device_augment`) or ``"none"`` (or False). ``augment_correlated``: reproduce the
    reference's single-uniform coupling of the augmentation values ([QUIRK] in ``frame_transforms``).
    ``jpeg_dct``: ``"accurate"`` or ``"fast"`` (TensorFlow's IFAST IDCT, bit-identical to the reference's
    decode; see ``frame_transforms``). ``resize``: ``"host"`` (to ``image_size`` here) or ``"device"`` (images
    stay at their stored size; the train step resizes with ``device_augment.pixel_values_from_images``;
    needs one stored size per mixture and ``augment`` "device" or "none")."""

    data_dir: str
    mixture: Any = "libero_10_no_noops"
    split: str = "train"
    chunk: int = 8
    action_dim: int = 7
    proprio_dim: int = 8
    cameras: tuple = ("primary", "wrist")
    image_size: int = 224
    augment: Any = "host"
    augment_correlated: bool = False
    jpeg_dct: str = "accurate"
    resize: str = "host"
    normalization: str = "bounds_q99"
    balance_weights: bool = True
    shuffle_buffer: int = 10_000
    shuffle_episodes: bool = True
    num_epochs: int | None = None
    seed: int = 0
    on_bad_episode: str = "error"
    on_corrupt: str = "error"
    statistics_path: str | None = None
    read_threads: int = 0
    decode_threads: int = 0
    worker_count: int = 0
    with_ids: bool = False

    def __post_init__(self):
        for field, allowed in (("on_bad_episode", ("error", "skip")), ("on_corrupt", ("error", "skip")),
                               ("jpeg_dct", ft.JPEG_DCT)):
            if getattr(self, field) not in allowed:
                raise ValueError(f"data config {field}={getattr(self, field)!r}; expected one of {allowed}")
        if self.chunk < 1 or self.image_size < 1 or self.shuffle_buffer < 1:
            raise ValueError("data config: chunk, image_size and shuffle_buffer must be ≥ 1")
        if not self.cameras:
            raise ValueError("data config: cameras must name at least one view (e.g. ('primary', 'wrist'))")
        mode, _ = image_modes(self.augment, self.resize, where="data config ")
        object.__setattr__(self, "augment", mode)

    @classmethod
    def from_mapping(cls, cfg: Mapping) -> VLADataConfig:
        """From a dict / ml_collections ConfigDict (unknown keys are an error naming them)."""
        names = {f.name for f in dataclasses.fields(cls)}
        cfg = dict(cfg)
        unknown = sorted(set(cfg) - names - IGNORED_TRAIN_KEYS)
        if unknown:
            raise ValueError(f"data config: unknown keys {unknown}; known: {sorted(names)}")
        kw = {k: v for k, v in cfg.items() if k in names}
        for k in ("cameras",):
            if k in kw:
                kw[k] = tuple(kw[k])
        if isinstance(kw.get("mixture"), (list, tuple)):
            kw["mixture"] = tuple((str(n), float(w)) for n, w in kw["mixture"])
        return cls(**kw)


class EpisodeToFrames:
    """One episode → its frames with encoded images (``map_with_index`` of a dataset's episode stream)."""

    def __init__(self, plan: DatasetPlan, dataset_index: int, config: VLADataConfig):
        self.name, self.dataset_config, self.dataset_index, self.cfg = plan.name, plan.config, dataset_index, config
        self.action_stats, self.proprio_stats = plan.statistics["action"], plan.statistics["proprio"]

    def _bad(self, error: EpisodeError) -> list:
        if self.cfg.on_bad_episode == "error":
            raise error
        _SKIPPED[error.reason] += 1
        log.warning("skipping episode: %s (%d %s skips so far in this process)", error, _SKIPPED[error.reason],
                    error.reason)
        return []

    def __call__(self, stream_index: int, episode: dict | None) -> list[dict]:
        if episode is None:  # a corrupt record skipped by the source
            return []
        cfg = self.cfg
        try:
            traj = standardize_episode(episode, self.dataset_config, cfg.cameras, self.name)
            check_trajectory(traj, chunk=cfg.chunk)
            if traj.action.shape[1] != cfg.action_dim:
                raise EpisodeError(traj.where, "bad_shape", f"{traj.action.shape[1]}-dim actions, the pipeline is "
                                   f"configured for action_dim={cfg.action_dim}")
            if traj.proprio.shape[1] > cfg.proprio_dim:
                raise EpisodeError(traj.where, "bad_shape", f"{traj.proprio.shape[1]}-dim proprio > "
                                   f"proprio_dim={cfg.proprio_dim}")
        except EpisodeError as e:
            return self._bad(e)
        actions = normalize(traj.action, self.action_stats, cfg.normalization)
        proprio = normalize(traj.proprio, self.proprio_stats, cfg.normalization, mask=[True] * traj.proprio.shape[1])
        proprio = np.pad(proprio, ((0, 0), (0, cfg.proprio_dim - proprio.shape[1])))
        windows = actions[chunk_indices(len(traj), cfg.chunk)]  # [T − chunk + 1, chunk, A]
        episode_index = int(episode.get("__index__", -1))
        frames = []
        for t in range(len(windows)):
            frame = {"images": tuple(traj.images[v][t] for v in cfg.cameras), "proprio": proprio[t],
                     "actions": windows[t], "instruction": traj.instruction[t].lower(), "dataset_name": self.name,
                     "seed": (cfg.seed, self.dataset_index, int(stream_index), t)}
            if cfg.with_ids:
                frame["episode_index"], frame["timestep"] = episode_index, t
            frames.append(frame)
        return frames


class _Flatten(grain.experimental.FlatMapTransform):
    max_fan_out = 1 << 20

    def flat_map(self, element):
        return element


class _IndexedSource:
    """Adds ``__index__`` (the episode's index in its split) to each parsed episode."""

    def __init__(self, source: EpisodeSource):
        self.source = source

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        episode = self.source[i]
        if episode is not None:
            episode["__index__"] = int(i)
        return episode


@dataclasses.dataclass
class VLAPipeline:
    """The built pipeline: ``dataset`` (grain IterDataset; ``iter()`` it), the per-dataset ``plans``,
    ``epoch_length`` (frames, reference definition) and :meth:`dataset_statistics` for checkpoints."""

    dataset: grain.IterDataset
    plans: list
    epoch_length: int
    config: VLADataConfig

    def __iter__(self):
        return iter(self.dataset)

    def dataset_statistics(self) -> dict:
        """``{name: entry}`` as ``dataset_statistics.json`` stores it (with ``action.mask``)."""
        return {p.name: p.statistics for p in self.plans}

    @property
    def weights(self) -> dict[str, float]:
        return {p.name: p.weight for p in self.plans}


def _process_share(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # only when the caller did not say: the processes of the running JAX job

        return jax.process_index(), jax.process_count()
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return process_index, process_count


def vla_pipeline(config: VLADataConfig | Mapping, *, batch_size: int | None = None, sample_fn: Callable | None = None,
                 collate: Callable | None = None, drop_remainder: bool = True, process_index: int | None = None,
                 process_count: int | None = None, statistics: dict | None = None) -> VLAPipeline:
    """Build the pipeline (module docstring). ``batch_size`` None yields single frames (or ``sample_fn``
    outputs). ``process_index``/``process_count`` default to ``jax.process_index()/process_count()``.
    ``statistics``: ``{name: entry}`` overriding ``config.statistics_path`` and computed statistics."""
    cfg = config if isinstance(config, VLADataConfig) else VLADataConfig.from_mapping(config)
    pi, pc = _process_share(process_index, process_count)
    if statistics is None and cfg.statistics_path:
        from dreamjax.data.statistics import load_dataset_statistics

        statistics = load_dataset_statistics(cfg.statistics_path)
    plans, epoch_length = plan_mixture(cfg.data_dir, cfg.mixture, statistics=statistics,
                                       balance_weights=cfg.balance_weights, on_bad_episode=cfg.on_bad_episode,
                                       on_corrupt=cfg.on_corrupt)
    read = grain.ReadOptions(num_threads=cfg.read_threads, prefetch_buffer_size=2 * cfg.read_threads)
    streams = []
    for d, plan in enumerate(plans):
        source = EpisodeSource(open_dataset(plan.path), cfg.split, on_corrupt=cfg.on_corrupt)
        if len(source) < pc:
            raise ValueError(f"dataset {plan.name} split {cfg.split}: {len(source)} episodes cannot be shared by "
                             f"{pc} processes")
        episodes = grain.MapDataset.source(_IndexedSource(source))[pi::pc]
        if cfg.shuffle_episodes:
            episodes = episodes.shuffle(seed=cfg.seed + 7919 * d)
        if cfg.num_epochs != 1:
            episodes = episodes.repeat(cfg.num_epochs)
        frames = episodes.map_with_index(EpisodeToFrames(plan, d, cfg)).to_iter_dataset(read)
        streams.append(grain.experimental.FlatMapIterDataset(frames, _Flatten()))
    ds = streams[0] if len(streams) == 1 else grain.IterDataset.mix(streams, [p.weight for p in plans])
    if cfg.shuffle_buffer > 1:
        ds = grain.experimental.WindowShuffleIterDataset(ds, window_size=cfg.shuffle_buffer, seed=cfg.seed)
    if batch_size is None:
        if collate is not None:
            raise ValueError("collate needs a batch_size")
        ds = ds.map(DecodeOne(cfg.image_size, cfg.augment, sample_fn, cfg.augment_correlated, cfg.jpeg_dct,
                              cfg.resize))
    else:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        ds = ds.batch(batch_size, drop_remainder=drop_remainder,
                      batch_fn=DecodeAndCollate(cfg.image_size, cfg.augment, sample_fn, collate, cfg.decode_threads,
                                                cfg.augment_correlated, cfg.jpeg_dct, cfg.resize))
    if cfg.worker_count > 0:
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
    return VLAPipeline(ds, plans, epoch_length, cfg)


def vla_dataset(config, **kwargs) -> grain.IterDataset:
    """:func:`vla_pipeline` returning only the grain IterDataset."""
    return vla_pipeline(config, **kwargs).dataset


def skipped_episodes() -> dict[str, int]:
    """Bad episodes skipped by ``on_bad_episode="skip"`` in this process, by reason."""
    return dict(_SKIPPED)
