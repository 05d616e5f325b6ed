"""Offline action metrics of a Dream-VLA policy on held-out RLDS episodes, split over processes, merged by
process 0.

Frames come from the training pipeline (``dreamjax.data.vla_pipeline``: same standardization, chunking and
normalization — with the policy's own ``dataset_statistics.json`` when it has one) with augmentation and
shuffling off and one pass over the split; each process reads its share of the episodes (``[p::n]``). Each
frame is laid out without its actions (``vla_layout.layout_sample``, the inference layout ``predict_action``
uses), batched, and the policy predicts normalized chunks (``dreamjax.vla.objectives.predict_normalized``,
under the policy's mesh when it has one). Metrics, all in the normalized action space the model is trained in:

* ``l1``: mean |predicted − target| over every chunk element (the reference's L1 metric); ``l1_current``:
  the same over row 0 (the action executed first); ``l1_per_dim``;
* ``token_accuracy``: the fraction of elements whose predicted value falls in the target's action-token bin
  (``ActionTokenizer.encode``; the reference's "acc" of the discrete objectives, defined for every head).

The reference computes these per training batch only (its validation path crashes, spec §6.8); this is a
separate pass over a held-out split.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from dreamjax.eval import fanout
from dreamjax.eval.store import ResultsStore, write_merged

log = logging.getLogger("dreamjax.eval")
CAMERAS = ("primary", "wrist")


def _data_config(policy, data: Mapping):
    from dreamjax.data.vla_pipeline import VLADataConfig

    h = policy.head
    # offline metrics see what predict_action sees: un-augmented frames resized on the host (a training data
    # section may ask for augment/resize "device", which only the train step applies)
    fixed = dict(augment=False, resize="host", shuffle_episodes=False, shuffle_buffer=1, num_epochs=1, chunk=h.chunk,
                 action_dim=h.action_dim, proprio_dim=h.proprio_dim, image_size=policy.image_size,
                 normalization=policy.normalization)
    cfg = dict(data)
    cfg.setdefault("cameras", CAMERAS[: policy.num_images])
    return VLADataConfig.from_mapping(cfg | fixed)


class _Accumulator:
    def __init__(self, action_dim: int):
        self.frames = 0
        self.abs_sum = np.zeros(action_dim)
        self.abs_sum_current = np.zeros(action_dim)
        self.elements = 0
        self.correct_tokens = 0

    def add(self, pred: np.ndarray, target: np.ndarray, action_tok) -> None:
        err = np.abs(pred.astype(np.float64) - target)
        self.frames += len(pred)
        self.abs_sum += err.sum((0, 1))
        self.abs_sum_current += err[:, 0].sum(0)
        self.elements += err.size
        self.correct_tokens += int((action_tok.encode(pred) == action_tok.encode(target)).sum())

    def record(self, key: str) -> dict:
        return dict(key=key, frames=self.frames, abs_sum=self.abs_sum.tolist(),
                    abs_sum_current=self.abs_sum_current.tolist(), elements=self.elements,
                    correct_tokens=self.correct_tokens)


def summarize(records) -> dict:
    frames = sum(r["frames"] for r in records)
    if not frames:
        return dict(frames=0, l1=None, l1_current=None, l1_per_dim=None, token_accuracy=None)
    abs_sum = np.sum([r["abs_sum"] for r in records], 0)
    cur = np.sum([r["abs_sum_current"] for r in records], 0)
    elements = sum(r["elements"] for r in records)
    per_elem = elements / len(abs_sum)  # elements per action dim
    return dict(frames=frames, l1=float(abs_sum.sum() / elements), l1_current=float(cur.sum() / (frames * len(cur))),
                l1_per_dim=(abs_sum / per_elem).tolist(),
                token_accuracy=sum(r["correct_tokens"] for r in records) / elements)


def _predict(policy, frames, rng):
    from dreamjax import sharding
    from dreamjax.data.vla_layout import collate, layout_sample
    from dreamjax.vla.objectives import predict_normalized

    canvas = max(policy.layout_for(f["instruction"]).canvas_length for f in frames)
    layout = dataclasses.replace(policy.layout_for(frames[0]["instruction"]), canvas_length=canvas)
    batch = collate([layout_sample({k: v for k, v in f.items() if k != "actions"}, policy.tokenizer, layout)
                     for f in frames])
    run = lambda: predict_normalized(policy.params, batch, rng, model=policy.module,  # noqa: E731
                                     settings=policy.settings)
    if policy.mesh is None:
        return np.asarray(run(), np.float32)
    with sharding.activation_sharding(policy.mesh, policy.rules):
        return np.asarray(run(), np.float32)


def offline_metrics(policy, data: Mapping, out: str | os.PathLike, *, batch_size: int = 8,
                    max_frames: int | None = None, seed: int = 0, process_index: int | None = None,
                    process_count: int | None = None) -> dict | None:
    """Evaluate ``policy`` (a ``dreamjax.DreamVLA``) on the frames of ``data`` (a ``VLADataConfig`` mapping:
    ``data_dir``, ``mixture``, ``split``, …); ``max_frames`` caps this process's frames. Writes
    ``out/results.json`` + ``out/results.md`` on process 0 and returns the summary there (None elsewhere)."""
    import jax

    from dreamjax.data.vla_pipeline import vla_pipeline

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    index, count = fanout.process_layout(process_index, process_count)
    if count > 1 and not fanout.distributed_active():
        raise ValueError("offline metrics over several processes need jax.distributed (records are summed on "
                         "process 0)")
    cfg = _data_config(policy, data)
    pipe = vla_pipeline(cfg, process_index=index, process_count=count, statistics=policy.norm_stats)
    acc = _Accumulator(policy.head.action_dim)
    key = jax.random.key(seed)
    pending, n_batches = [], 0

    def flush():
        nonlocal n_batches
        pred = _predict(policy, pending, jax.random.fold_in(jax.random.fold_in(key, index), n_batches))
        acc.add(pred, np.stack([f["actions"] for f in pending]).astype(np.float64), policy.action_tokenizer)
        n_batches += 1
        pending.clear()

    for frame in pipe.dataset:
        pending.append(frame)
        if len(pending) == batch_size:
            flush()
            if n_batches % 10 == 0:
                log.info("offline eval p%d: %d frames", index, acc.frames)
        if max_frames is not None and acc.frames + len(pending) >= max_frames:
            break
    if pending:
        flush()
    store = ResultsStore(out)
    mine = acc.record(f"offline/process{index:04d}_of{count:04d}")
    store.write(mine)
    gathered = fanout.gather_records([mine])
    if gathered is None:
        return None
    summary = summarize(gathered)
    settings = dict(data={k: v for k, v in dataclasses.asdict(cfg).items()}, batch_size=batch_size,
                    max_frames=max_frames, seed=seed, processes=count)
    table = ("| frames | L1 (all) | L1 (current step) | token accuracy |\n|---:|---:|---:|---:|\n"
             f"| {summary['frames']} | {summary['l1']:.4f} | {summary['l1_current']:.4f} | "
             f"{100 * summary['token_accuracy']:.1f}% |\n" if summary["frames"] else "no frames\n")
    write_merged(Path(out), summary, gathered, table, settings)
    log.info("offline metrics over %d frames: L1 %s, token accuracy %s", summary["frames"], summary["l1"],
             summary["token_accuracy"])
    return summary
