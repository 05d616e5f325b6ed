"""Dream-VL SFT data: LLaVA-style conversation JSON → fixed-shape numpy batches (spec §3 training template, §4).

Input: a JSON list of records ::

    [{"image": "images/0.png",                       # optional; a str or a list; relative to the JSON file
      "conversations": [{"from": "human", "value": "<image>\\nWhat colour is the square?"},
                        {"from": "gpt", "value": "red"}]}, ...]

Per sample (:class:`EncodeSample`, a grain ``Map`` at module level so spawned workers can pickle it):

1. roles ``human``/``user`` → user, ``gpt``/``assistant`` → assistant, ``system`` → system; a message with
   exactly one ``<image>`` not already at its start has it moved to the start followed by ``\\n`` (LLaVA
   ``preprocess_multimodal``, the training template of spec §3); every ``<image>`` becomes ``<|image_pad|>``;
2. render with the Dream-VL template (``chat_template.render_chat``: default system message when the first
   turn is not a system turn), tokenize, load + ``image_processor.preprocess`` the images and repeat each pad
   ``t·h·w / merge²`` times (``expand_image_pads``);
3. mark the assistant turns (``sft_labels.assistant_turn_mask``) and pad the ids to ``canvas_length``;
4. pack the image patches into ``image_rows`` rows of ``row_len`` patches (``positions.vision_patch_rows``
   + ``pack_pixel_rows``): the per-sample image budget.

Per batch (:class:`CollateSFT`): the maskable set and labels come from ``sft_labels.sft_labels`` (assistant
turns + structural tokens; image pads never), the EOS tail from ``eos_targets``, and the image rows of the
samples are concatenated in batch order (``[B·image_rows, row_len, patch_dim]``), which is the order
``DreamVLModel`` splices features in (row-major over batch, then sequence).

Batch keys (all numpy, fixed shapes): ``input_ids`` / ``labels`` / ``attention_mask`` [B, S] int32,
``lengths`` [B] int32 (tokens of each sample before padding), ``pixel_values`` [B·R, L, patch_dim] float32,
``patch_positions`` [B·R, L, 2] int32, ``patch_segment_ids`` [B·R, L] int32 — what
``dreamjax.diffusion.objective.loss_fn`` takes. Position ids are left to ``loss_fn``'s default (1-D positions
over attended tokens), which is what ``get_rope_index`` gives for the Dream-VL template (no
``<|vision_start|>``).

Differences from the reference, on purpose:

* the reference truncates to ``model_max_length``; here a sample longer than the canvas (or with more image
  patches than the budget) is an error naming the sample, or — with ``on_too_long="skip"`` — is dropped
  with a log line that counts the skips of this process;
* ``eos_targets="canvas"`` (default) makes every position after the sample an attended ``<|endoftext|>``
  target, as the reference collator does for the tail up to the batch's longest sample; ``"batch"`` is the
  reference exactly (EOS targets up to the longest sample of the batch, the rest attention-masked), and
  ``"none"`` has no EOS targets at all.

The batch builder (:func:`sft_dataset`) is a grain pipeline: ``MapDataset.source(records).shuffle(seed)
.repeat(epochs).map(EncodeSample) → to_iter_dataset → [filter] → batch(CollateSFT) → [mp_prefetch]``;
deterministic for a seed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grain
import numpy as np
from PIL import Image

from dreamjax.data import image_processor
from dreamjax.data.chat_template import DEFAULT_SYSTEM_MESSAGE, expand_image_pads, render_chat
from dreamjax.data.tokenizer import IMAGE_PAD
from dreamjax.data.sft_labels import assistant_turn_mask, sft_labels
from dreamjax.models.positions import pack_pixel_rows, vision_patch_rows

log = logging.getLogger(__name__)

IMAGE_PLACEHOLDER = "<image>"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
EOS_TARGETS = ("canvas", "batch", "none")
ON_TOO_LONG = ("error", "skip")


@dataclasses.dataclass(frozen=True)
class SFTLayout:
    """Static shapes and preprocessing of an SFT pipeline.

    canvas_length: tokens per sample (S). image_rows / row_len: the per-sample image budget, ``image_rows``
    rows of ``row_len`` patches (a multiple of merge²; each image slice must fit one row). min/max_pixels:
    ``image_processor.preprocess`` budget. eos_targets / on_too_long: see the module docstring.
    """

    canvas_length: int
    image_rows: int = 1
    row_len: int = 16
    min_pixels: int = image_processor.PIXELS_RELEASE[0]
    max_pixels: int = image_processor.PIXELS_RELEASE[1]
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    eos_targets: str = "canvas"
    on_too_long: str = "error"
    system_message: str = DEFAULT_SYSTEM_MESSAGE

    def __post_init__(self):
        m2 = self.merge_size**2
        if self.canvas_length < 2:
            raise ValueError(f"canvas_length must be ≥ 2, got {self.canvas_length}")
        if self.image_rows < 1 or self.row_len < m2 or self.row_len % m2:
            raise ValueError(f"image budget: need image_rows ≥ 1 and row_len a positive multiple of {m2}, got "
                             f"image_rows={self.image_rows}, row_len={self.row_len}")
        if self.eos_targets not in EOS_TARGETS:
            raise ValueError(f"eos_targets={self.eos_targets!r}; expected one of {EOS_TARGETS}")
        if self.on_too_long not in ON_TOO_LONG:
            raise ValueError(f"on_too_long={self.on_too_long!r}; expected one of {ON_TOO_LONG}")

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size**2


class SampleError(ValueError):
    """Bad input in one record; the message names the JSON file and the sample index."""


# --------------------------------------------------------------------------------------------- records
def load_records(json_path: str | os.PathLike) -> list[dict]:
    """Read a LLaVA-style JSON list. Each record gets ``_index`` (its position) and ``_base_dir`` (the JSON's
    folder, for relative image paths) so errors and image loading work after shuffling."""
    path = Path(json_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"SFT data file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of conversation records, got {type(data).__name__}")
    records = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list):
            raise SampleError(f"{path} sample {i}: expected a dict with a 'conversations' list")
        records.append({**rec, "_index": i, "_base_dir": str(path.parent), "_source": str(path)})
    return records


def _where(rec: Mapping[str, Any]) -> str:
    return f"{rec.get('_source', '<records>')} sample {rec.get('_index', '?')}"


def image_paths(rec: Mapping[str, Any]) -> list[Path]:
    """The record's image files (``image``: a str or a list), resolved against the JSON's folder."""
    images = rec.get("image")
    if images is None:
        return []
    images = [images] if isinstance(images, str) else images
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise SampleError(f"{_where(rec)}: 'image' must be a path or a list of paths, got {images!r}")
    base = Path(rec.get("_base_dir", "."))
    return [base / p for p in images]


def to_messages(rec: Mapping[str, Any], *, drop_last_answer: bool = False) -> list[dict]:
    """LLaVA conversation → chat messages with ``<|image_pad|>`` placeholders (training template, spec §3).

    drop_last_answer: leave out a final assistant turn (an inference prompt for the same record).
    Raises SampleError when the number of ``<image>`` placeholders differs from the number of images.
    """
    where = _where(rec)
    n_images = len(image_paths(rec))
    turns = list(rec["conversations"])
    if drop_last_answer and turns and ROLES.get(turns[-1].get("from")) == "assistant":
        turns = turns[:-1]
    messages, n_placeholders = [], 0
    for k, turn in enumerate(turns):
        if not isinstance(turn, Mapping) or not isinstance(turn.get("value"), str):
            raise SampleError(f"{where} turn {k}: expected {{'from': ..., 'value': str}}, got {turn!r}")
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise SampleError(f"{where} turn {k}: unknown role {turn.get('from')!r}; expected one of {sorted(ROLES)}")
        text = turn["value"]
        count = text.count(IMAGE_PLACEHOLDER)
        if count and role != "user":
            raise SampleError(f"{where} turn {k}: <image> in a {role} turn (only user turns may hold images)")
        if count == 1 and n_images == 1 and not text.startswith(IMAGE_PLACEHOLDER):
            text = IMAGE_PLACEHOLDER + "\n" + text.replace(IMAGE_PLACEHOLDER, "").strip()
        n_placeholders += count
        messages.append({"role": role, "content": text.replace(IMAGE_PLACEHOLDER, IMAGE_PAD)})
    if n_placeholders != n_images:
        raise SampleError(f"{where}: {n_placeholders} <image> placeholder(s) in the conversation but {n_images} "
                          f"image(s) in 'image'")
    if not any(m["role"] == "assistant" for m in messages) and not drop_last_answer:
        raise SampleError(f"{where}: no assistant ('gpt') turn, nothing to train on")
    return messages


def _render(messages: list[dict], layout: SFTLayout, add_generation_prompt: bool) -> str:
    if messages and messages[0]["role"] != "system" and layout.system_message != DEFAULT_SYSTEM_MESSAGE:
        messages = [{"role": "system", "content": layout.system_message}, *messages]
    return render_chat(messages, add_generation_prompt=add_generation_prompt)


def load_images(rec: Mapping[str, Any], layout: SFTLayout) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(pixel_values [N, patch_dim], image_grid_thw [n, 3])`` of the record's images, or ``(None, None)``."""
    paths = image_paths(rec)
    if not paths:
        return None, None
    images = []
    for p in paths:
        if not p.is_file():
            raise SampleError(f"{_where(rec)}: image file {p} does not exist")
        try:
            with Image.open(p) as im:
                im.load()
                images.append(im.copy())
        except OSError as e:
            raise SampleError(f"{_where(rec)}: cannot read image {p} ({e})") from e
    return image_processor.preprocess(images, layout.min_pixels, layout.max_pixels, patch_size=layout.patch_size,
                                      temporal_patch_size=layout.temporal_patch_size, merge_size=layout.merge_size)


def encode_prompt(rec: Mapping[str, Any], tokenizer, layout: SFTLayout) -> dict[str, np.ndarray | None]:
    """The inference prompt of a record (its conversation without the last answer, plus
    ``<|im_start|>assistant\\n``) in the training template: ``input_ids`` [P] int32, ``pixel_values``
    [N, patch_dim] and ``image_grid_thw`` [n, 3] (None without images) — ready for ``DreamVL.generate``."""
    messages = to_messages(rec, drop_last_answer=True)
    pixel_values, grid = load_images(rec, layout)
    ids = np.asarray(tokenizer.encode(_render(messages, layout, add_generation_prompt=True)), np.int32)
    if grid is not None:
        ids = expand_image_pads(ids, grid, layout.merge_size, image_pad_id=tokenizer.image_pad_id)
    return dict(input_ids=np.asarray(ids, np.int32), pixel_values=pixel_values, image_grid_thw=grid)


# --------------------------------------------------------------------------------------------- grain transforms
_SKIPPED = 0  # samples dropped by on_too_long="skip" in this process (each one is logged)


class EncodeSample(grain.transforms.Map):
    """One record → fixed-shape arrays (see the module docstring); None for a skipped over-long sample.

    Holds the tokenizer (both backends pickle) and the layout, so spawned grain workers can rebuild it.
    """

    def __init__(self, tokenizer, layout: SFTLayout):
        self.tokenizer = tokenizer
        self.layout = layout
        self.role_ids = tuple(tokenizer.encode("assistant\n"))
        missing = [n for n in ("im_start_id", "im_end_id", "newline_id", "pad_id", "image_pad_id")
                   if getattr(tokenizer, n, None) is None]
        if missing:
            raise ValueError(f"tokenizer lacks the Dream-VL chat tokens {missing}")

    def map(self, rec: Mapping[str, Any]) -> dict[str, np.ndarray] | None:
        global _SKIPPED
        lay, tok = self.layout, self.tokenizer
        messages = to_messages(rec)
        pixel_values, grid = load_images(rec, lay)
        ids = np.asarray(tok.encode(_render(messages, lay, add_generation_prompt=False)), np.int32)
        if grid is not None:
            ids = np.asarray(expand_image_pads(ids, grid, lay.merge_size, image_pad_id=tok.image_pad_id), np.int32)
        elif (ids == tok.image_pad_id).any():
            raise SampleError(f"{_where(rec)}: the text contains {IMAGE_PAD} but the record has no image")
        too_long = None
        if len(ids) > lay.canvas_length:
            too_long = f"{len(ids)} tokens > canvas_length {lay.canvas_length}"
        rows = None
        if grid is not None and too_long is None:
            try:
                rows = vision_patch_rows(grid, lay.row_len, lay.image_rows, spatial_merge_size=lay.merge_size)
            except ValueError as e:
                too_long = f"image budget exceeded (grid {grid.tolist()}): {e}"
        if too_long is not None:
            if lay.on_too_long == "error":
                raise SampleError(f"{_where(rec)}: too long: {too_long} (on_too_long='skip' drops such samples)")
            _SKIPPED += 1
            log.warning("skipping %s: %s (%d skipped so far in this process)", _where(rec), too_long, _SKIPPED)
            return None

        n = len(ids)
        canvas = np.full(lay.canvas_length, tok.pad_id, np.int32)
        canvas[:n] = ids
        assistant = assistant_turn_mask(canvas[None], im_start_id=tok.im_start_id, im_end_id=tok.im_end_id,
                                        newline_id=tok.newline_id, assistant_role_ids=self.role_ids)[0]
        assistant[n:] = False
        if rows is None:
            gather = np.full(lay.image_rows * lay.row_len, -1, np.int32)
            positions = np.zeros((lay.image_rows, lay.row_len, 2), np.int32)
            segments = np.zeros((lay.image_rows, lay.row_len), np.int32)
            pixel_values = np.zeros((1, lay.patch_dim), np.float32)
        else:
            gather, positions, segments = rows
        return dict(input_ids=canvas, assistant_mask=assistant, length=np.int32(n),
                    pixel_values=pack_pixel_rows(pixel_values, gather, lay.row_len).astype(np.float32),
                    patch_positions=positions.astype(np.int32), patch_segment_ids=segments.astype(np.int32))


def is_sample(x: Any) -> bool:
    """grain filter: drop the ``None`` that :class:`EncodeSample` returns for a skipped sample."""
    return x is not None


class CollateSFT:
    """``batch_fn``: stack samples, build labels with ``sft_labels.sft_labels``, concatenate the image rows."""

    def __init__(self, tokenizer, layout: SFTLayout):
        self.layout = layout
        self.structural_ids = (tokenizer.newline_id, tokenizer.im_start_id, tokenizer.im_end_id)
        self.never_maskable_ids = tuple(i for i in (tokenizer.image_pad_id, tokenizer.video_pad_id) if i is not None)
        self.pad_id = tokenizer.pad_id

    def __call__(self, samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        ids = np.stack([s["input_ids"] for s in samples])
        lengths = np.asarray([int(s["length"]) for s in samples], np.int64)
        s = ids.shape[1]
        eos = {"canvas": s - lengths, "batch": lengths.max() - lengths, "none": np.zeros_like(lengths)}
        out = sft_labels(ids, np.stack([x["assistant_mask"] for x in samples]), lengths,
                         structural_ids=self.structural_ids, pad_token_id=self.pad_id,
                         never_maskable_ids=self.never_maskable_ids,
                         num_eos_targets=eos[self.layout.eos_targets])
        out = {k: v.astype(np.int32) for k, v in out.items()}
        out["lengths"] = lengths.astype(np.int32)
        for key in ("pixel_values", "patch_positions", "patch_segment_ids"):
            out[key] = np.concatenate([x[key] for x in samples], axis=0)
        return out


def sft_dataset(records: str | os.PathLike | Sequence[Mapping[str, Any]], tokenizer, layout: SFTLayout, *,
                batch_size: int, seed: int = 0, shuffle: bool = True, num_epochs: int | None = 1,
                drop_remainder: bool = True, num_threads: int = 0, worker_count: int = 0) -> grain.IterDataset:
    """A grain ``IterDataset`` of SFT batches (dicts of numpy arrays, fixed shapes).

    records: a JSON path (:func:`load_records`) or already loaded records. num_epochs: None repeats forever;
    each epoch is reshuffled (grain's per-epoch shuffle). num_threads: grain read threads (0: map in the
    consuming thread; deterministic either way). worker_count > 0: ``mp_prefetch`` with spawned worker
    processes (the transforms are module-level classes, so they pickle).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if isinstance(records, (str, os.PathLike)):
        records = load_records(records)
    if not records:
        raise ValueError("sft_dataset: no records")
    ds = grain.MapDataset.source(list(records))
    if shuffle:
        ds = ds.shuffle(seed=seed)
    if num_epochs != 1:
        ds = ds.repeat(num_epochs)
    ds = ds.map(EncodeSample(tokenizer, layout))
    read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=max(2 * batch_size, 1) if num_threads else 0)
    it = ds.to_iter_dataset(read, allow_nones=True)
    if layout.on_too_long == "skip":
        it = it.filter(is_sample)
    it = it.batch(batch_size, drop_remainder=drop_remainder, batch_fn=CollateSFT(tokenizer, layout))
    if worker_count > 0:
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    return it


def skipped_in_this_process() -> int:
    """How many over-long samples ``on_too_long="skip"`` has dropped in this process (workers count their own)."""
    return _SKIPPED
