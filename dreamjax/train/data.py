"""Host-side training data: a grain ``DatasetIterator`` per process, and per-host batches → global arrays.

``cfg.data.kind``:

* ``sft`` — LLaVA-style JSON (``data.train_json``) + a tokenizer directory (``data.tokenizer``) through the
  ``dreamjax.data.sft`` transforms;
* ``shapes`` — the rendered shapes task (``dreamjax.data.shapes_task``) generated into ``data.dir``
  (default ``WORKDIR/data``) with a sentencepiece tokenizer trained on its texts: runs anywhere, no files;
* ``rlds`` — Open X-Embodiment / LIBERO RLDS through ``dreamjax.data.vla_pipeline`` with the Dream-VLA
  layout (delegated; imported lazily);
* ``synthetic_vla`` — ``dreamjax.vla.synthetic`` (delegated; imported lazily).

Multi-host: every process reads only the samples of *its* rows of each global batch. The global batch k is
samples ``k·B … (k+1)·B − 1`` of the (shuffled, repeated) stream, whatever the process count, and process p
reads the contiguous block of rows its devices hold (:class:`ProcessRows`), so 1 process and N processes
train on identical global batches. :func:`global_batch` assembles them with
``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Mapping

import grain
import jax
import numpy as np

log = logging.getLogger("dreamjax.train")

DATA_KINDS = ("sft", "shapes", "rlds", "synthetic_vla")


class ProcessRows(grain.MapDataset):
    """Index remap: element i of this dataset is element ``(i // b)·B + offset + i % b`` of the parent — the
    rows ``offset … offset + b − 1`` of every global batch of B samples (b = local batch)."""

    def __init__(self, parent: grain.MapDataset, global_batch: int, local_batch: int, offset: int):
        super().__init__(parent)
        self._b, self._global, self._offset = local_batch, global_batch, offset

    def __len__(self) -> int:
        n = len(self._parent)
        return sys.maxsize if n >= sys.maxsize // 2 else (n // self._global) * self._b

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._parent[(index // self._b) * self._global + self._offset + index % self._b]

    def __str__(self) -> str:
        return f"ProcessRows(global={self._global}, local={self._b}, offset={self._offset})"


def process_rows(sharding: jax.sharding.Sharding, global_batch: int) -> tuple[int, int]:
    """(offset, count) of the batch rows this process's devices hold; they must be one contiguous block."""
    idx = sharding.addressable_devices_indices_map((global_batch,))
    starts = sorted({(s[0].start or 0, s[0].stop if s[0].stop is not None else global_batch) for s in idx.values()})
    lo, hi = starts[0][0], max(stop for _, stop in starts)
    covered = set()
    for a, b in starts:
        covered.update(range(a, b))
    if covered != set(range(lo, hi)):
        raise ValueError(f"the mesh gives process {jax.process_index()} non-contiguous batch rows {starts}; order the "
                         "mesh so each process's devices hold one block of the batch")
    return lo, hi - lo


def _sft_pipeline(records, tokenizer, layout, *, global_batch: int, local_batch: int, offset: int, seed: int,
                  num_threads: int) -> grain.IterDataset:
    from dreamjax.data import sft

    ds = grain.MapDataset.source(list(records)).shuffle(seed=seed).repeat(None)
    ds = ProcessRows(ds, global_batch, local_batch, offset)
    ds = ds.map(sft.EncodeSample(tokenizer, layout))
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * local_batch if num_threads else 0)
    it = ds.to_iter_dataset(read, allow_nones=True)
    if layout.on_too_long == "skip":
        log.warning("data.on_too_long='skip': dropped samples shift the batches, so runs with different process "
                    "counts no longer see identical global batches")
        it = it.filter(sft.is_sample)
    return it.batch(local_batch, drop_remainder=True, batch_fn=sft.CollateSFT(tokenizer, layout))


def sft_layout(d):
    from dreamjax.data import sft

    kw = {k: d[k] for k in ("image_rows", "row_len", "min_pixels", "max_pixels", "eos_targets", "on_too_long")
          if k in d}
    return sft.SFTLayout(canvas_length=int(d.canvas_length), **kw)


def _tokenizer_assets(tokenizer) -> dict[str, bytes]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def _shapes_files(d, workdir: Path) -> tuple[Path, Path]:
    """Render the shapes dataset + train its tokenizer once (process 0), other processes wait."""
    from dreamjax.data.shapes_task import task_texts, write_shapes_dataset
    from dreamjax.data.tokenizer_spm import train_sentencepiece

    root = Path(d.get("dir") or workdir / "data")
    train_json, tok_dir = root / "train" / "data.json", root / "tokenizer"
    if jax.process_index() == 0 and not (train_json.exists() and tok_dir.exists()):
        write_shapes_dataset(root / "train", int(d.num_train), seed=int(d.get("seed", 0)),
                             size=int(d.get("image_size", 56)), max_count=int(d.get("max_count", 3)))
        train_sentencepiece(task_texts(), tok_dir, vocab_size=int(d.get("tokenizer_vocab_size", 400)))
    from dreamjax.train.distributed import barrier

    barrier("dreamjax-shapes-data")
    return train_json, tok_dir


def make_iterator(cfg, workdir: Path, *, global_batch: int, local_batch: int, offset: int
                  ) -> tuple[grain.DatasetIterator, dict[str, bytes]]:
    """(this process's iterator of local batches, asset files to store with checkpoints)."""
    d = cfg.data
    kind = d.kind
    seed = int(d.get("seed", cfg.train.get("seed", 0)))
    threads = int(d.get("num_threads", 0))
    if kind in ("sft", "shapes"):
        from dreamjax.data import sft
        from dreamjax.data.tokenizer import Tokenizer

        if kind == "shapes":
            train_json, tok_dir = _shapes_files(d, workdir)
        else:
            for key in ("train_json", "tokenizer"):
                if not d.get(key):
                    raise ValueError(f"data.kind='sft' needs data.{key}")
            train_json, tok_dir = Path(d.train_json), Path(d.tokenizer)
        tokenizer = Tokenizer.from_pretrained(tok_dir)
        model = cfg.model
        for name, tok_id in (("pad_token_id", tokenizer.pad_id), ("mask_token_id", tokenizer.mask_id),
                             ("image_token_id", tokenizer.image_pad_id)):
            if tok_id is not None and int(model[name]) != int(tok_id):
                raise ValueError(f"model.{name}={model[name]} but the tokenizer in {tok_dir} has id {tok_id}")
        if len(tokenizer) > int(model.vocab_size):
            raise ValueError(f"tokenizer {tok_dir} has {len(tokenizer)} tokens > model.vocab_size={model.vocab_size}")
        records = sft.load_records(train_json)
        it = _sft_pipeline(records, tokenizer, sft_layout(d), global_batch=global_batch, local_batch=local_batch,
                           offset=offset, seed=seed, num_threads=threads)
        return iter(it), _tokenizer_assets(tokenizer)
    if kind == "rlds":
        return _rlds_iterator(cfg, global_batch=global_batch, local_batch=local_batch, offset=offset)
    if kind == "synthetic_vla":
        from dreamjax.vla import synthetic

        return synthetic.train_iterator(cfg, global_batch=global_batch, local_batch=local_batch, offset=offset)
    raise ValueError(f"data.kind={kind!r}; expected one of {DATA_KINDS}")


def _rlds_iterator(cfg, *, global_batch: int, local_batch: int, offset: int):
    """``(iterator, assets)`` for ``data.kind = "rlds"``: Dream-VLA batches of
    ``local_batch`` samples laid out by ``dreamjax.data.vla_layout`` with the tokenizer in ``data.tokenizer``.

    Multi-host: process ``offset // local_batch`` of ``global_batch // local_batch`` reads its own disjoint
    share of every dataset's episodes (unlike the map-style SFT data, the global batch depends on the process
    count). ``chunk``/``action_dim``/``proprio_dim``/``image_size``/``cameras`` default to the layout's.
    assets: tokenizer files, ``dataset_statistics.json`` (what ``predict_action`` un-normalizes with) and
    ``vla.json``.

    ``data.augment="device"``: batches carry un-augmented images plus ``augment_seed`` / ``image_mask``;
    ``data.resize="device"``: uint8 ``images`` at the stored size in place of ``pixel_values``. The task
    (``dreamjax.vla.task.step_images``) lists these keys, so they are sharded and assembled like the others,
    and its loss turns them into ``pixel_values`` inside the jitted step.
    """
    import functools
    import json
    import tempfile
    from pathlib import Path

    from dreamjax.data import vla_layout
    from dreamjax.data.tokenizer import Tokenizer
    from dreamjax.data.vla_pipeline import VLADataConfig, vla_pipeline
    from dreamjax.vla.task import layout_from_config, vla_json

    if global_batch % local_batch or offset % local_batch:
        raise ValueError(f"global batch {global_batch} / offset {offset} must be multiples of the local batch "
                         f"{local_batch}")
    if not cfg.data.get("tokenizer"):
        raise ValueError("data.kind='rlds' needs data.tokenizer (a tokenizer directory)")
    layout = layout_from_config(cfg)
    data = dict(cfg.data)
    defaults = {"chunk": layout.chunk, "action_dim": layout.action_dim, "proprio_dim": layout.proprio_dim,
                "image_size": layout.image_size, "cameras": ("primary", "wrist")[: layout.num_images]}
    config = VLADataConfig.from_mapping({**defaults, **data})
    tok = Tokenizer.from_pretrained(data["tokenizer"])
    pipe = vla_pipeline(config, batch_size=local_batch, sample_fn=functools.partial(
        vla_layout.layout_sample, tokenizer=tok, layout=layout, device_images=config.resize == "device"),
        collate=vla_layout.collate, process_index=offset // local_batch, process_count=global_batch // local_batch)
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(tmp)
        assets = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    assets["dataset_statistics.json"] = json.dumps(pipe.dataset_statistics(), indent=2).encode()
    assets["vla.json"] = json.dumps(vla_json(cfg), indent=2).encode()
    return iter(pipe.dataset), assets


def check_batch(local: Mapping[str, Any], keys, local_batch: int, where: str = "data") -> None:
    """Every device key is present and its leading dim is a multiple of the local batch."""
    missing = [k for k in keys if k not in local]
    if missing:
        raise ValueError(f"{where}: the batch lacks {missing} (has {sorted(local)})")
    for k in keys:
        n = np.shape(local[k])[0]
        if n % local_batch:
            raise ValueError(f"{where}: batch[{k!r}] has leading dim {n}, not a multiple of the local batch "
                             f"{local_batch}")


def global_batch(local: Mapping[str, Any], keys, shardings: Mapping[str, Any], process_count: int) -> dict:
    """Per-host numpy batch → global jax arrays laid out by ``shardings`` (rows of all processes stacked)."""
    out = {}
    for k in keys:
        x = np.asarray(local[k])
        shape = (x.shape[0] * process_count,) + x.shape[1:]
        out[k] = jax.make_array_from_process_local_data(shardings[k], x, shape)
    return out
