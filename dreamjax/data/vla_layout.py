"""The Dream-VLA training / inference sample layout (spec §6.2, §8.8), one place for the pipeline and the policy.

A frame (``images`` uint8 [n_cam, H, W, 3], ``proprio`` [P], ``actions`` [C, A] normalized, ``instruction``)
becomes one fixed-shape sample. Token layout (``n_prefix`` reserved slots first, then the reference prompt)::

    [prefix slots]  <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<|image_pad|>×T (primary) [<|image_pad|>×T (wrist)]What action should the robot take to
    {instruction}?<|im_end|>\\n<|im_start|>assistant\\n  <C·A action tokens>  <|im_end|> \\n   [padding]

* Prefix slots: the reference *prepends* the proprio embedding and (DDIM / flow) the timestep embedding at
  sequence index 0, in the order ``[proprio, timestep, tokens…]``, and extends the attention mask. Here they
  are reserved in the canvas up front (id ``pad``, attention 1) and the model overwrites their embeddings,
  so shapes are static. Positions are ``cumsum(attention_mask)`` (1-based) over the whole canvas — exactly the
  reference's positions after prepending.
* Action tokens: the chunk flattened time-major (a0[0..A), a1[0..A), …) and tokenized by
  ``dreamjax.data.action_tokenizer`` (ids ``len(tok) − digitize``). Without ``actions`` (inference) the slots hold
  the placeholder ``<|action_0|>`` (the reference's 151667), whose embedding the continuous objectives replace.
* ``labels``: −100 except the C·A action tokens and the ``<|im_end|>\\n`` suffix (the reference keeps the last
  C·A + 2 labels). ``action_start``: canvas index of the first action token; the continuous heads read the
  final hidden state at ``action_start + j − 1`` for action token j (the shift, spec §6.2), the discrete
  objectives score token ``action_start + j`` with the logit at the same place.
* Images: each camera image must be ``image_size`` square (a multiple of 28); it is preprocessed with the
  Qwen2-VL processor at ``min_pixels = max_pixels = image_size²`` (224 → grid (1, 16, 16) → 64 tokens, the
  reference's ``patches·784`` budget) and packed one image per ViT row.

Output of :func:`layout_sample` (numpy, fixed shapes): ``input_ids``, ``attention_mask`` [S] int32,
``labels`` [S] int32 (only with actions), ``action_start`` [] int32, ``pixel_values`` [n_img, L, 1176] float32,
``patch_positions`` [n_img, L, 2] int32, ``patch_segment_ids`` [n_img, L] int32, ``proprio`` [P] float32,
``actions`` [C, A] float32 (only with actions); with ``device_images=True`` (``resize="device"``) ``images``
uint8 [n_img, H, W, 3] at the stored size in place of ``pixel_values``. :func:`collate` stacks samples and
concatenates the image rows in batch order (``[B·n_img, L, …]``), the order the model splices features in
(``images`` are stacked: [B, n_img, H, W, 3]).

Differences from the reference, on purpose: the instruction is lowercased for inference too (the reference
lowercases at training only — spec §9 — a train/eval mismatch; ``lowercase_instruction=False`` keeps the text);
a sample longer than ``canvas_length`` is an error (the reference truncates, which would cut the actions);
``proprio`` of a batch of one keeps its batch axis (the reference squeezes it away).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dreamjax.data import image_processor
from dreamjax.data.chat_template import DEFAULT_SYSTEM_MESSAGE, expand_image_pads, render_chat
from dreamjax.models.positions import pack_pixel_rows, vision_patch_rows
from dreamjax.data.action_tokenizer import NUM_BINS, ActionTokenizer

IGNORE_INDEX = -100
PROMPT = "What action should the robot take to {instruction}?"
NUM_SUFFIX_TOKENS = 2  # <|im_end|> \n after the action tokens


@dataclasses.dataclass(frozen=True)
class VLALayout:
    """Static shapes of a Dream-VLA sample.

    canvas_length: S, tokens per sample including the prefix slots. num_images: cameras per sample (1 or 2:
    primary, then wrist). image_size: side of every camera image (multiple of 28). chunk / action_dim: C, A.
    proprio_dim: P. proprio_token / timestep_token: reserve the proprio (``use_proprio``) / timestep (DDIM,
    flow matching) prefix slot.
    """

    canvas_length: int
    num_images: int = 2
    image_size: int = 224
    chunk: int = 8
    action_dim: int = 7
    proprio_dim: int = 8
    proprio_token: bool = True
    timestep_token: bool = False
    n_action_bins: int = NUM_BINS
    lowercase_instruction: bool = True
    system_message: str = DEFAULT_SYSTEM_MESSAGE
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2

    def __post_init__(self):
        factor = self.patch_size * self.merge_size
        if self.num_images not in (1, 2):
            raise ValueError(f"VLALayout.num_images must be 1 or 2 (primary [+ wrist]), got {self.num_images}")
        if self.image_size < factor or self.image_size % factor:
            raise ValueError(f"VLALayout.image_size must be a positive multiple of {factor}, got {self.image_size}")
        if self.chunk < 1 or self.action_dim < 1:
            raise ValueError(f"VLALayout: chunk and action_dim must be ≥ 1, got {self.chunk}, {self.action_dim}")
        if self.proprio_token and self.proprio_dim < 1:
            raise ValueError("VLALayout.proprio_token needs proprio_dim ≥ 1")

    @property
    def num_prefix(self) -> int:
        return int(self.proprio_token) + int(self.timestep_token)

    @property
    def proprio_slot(self) -> int:
        """Canvas index of the proprio embedding (0; the reference's final order is [proprio, timestep, …])."""
        return 0

    @property
    def timestep_slot(self) -> int:
        return int(self.proprio_token)

    @property
    def num_action_tokens(self) -> int:
        return self.chunk * self.action_dim

    @property
    def num_targets(self) -> int:
        """Action tokens + the ``<|im_end|>\\n`` suffix: the reference's trained labels."""
        return self.num_action_tokens + NUM_SUFFIX_TOKENS

    @property
    def grid_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def tokens_per_image(self) -> int:
        return (self.grid_side // self.merge_size) ** 2

    @property
    def row_len(self) -> int:
        return self.grid_side**2

    @property
    def patch_dim(self) -> int:
        return 3 * self.temporal_patch_size * self.patch_size**2


class LayoutError(ValueError):
    """A frame that does not fit the layout; the message names the key and what was expected."""


def _check_chat_tokens(tokenizer) -> None:
    missing = [n for n in ("im_start_id", "im_end_id", "newline_id", "pad_id", "image_pad_id")
               if getattr(tokenizer, n, None) is None]
    if missing:
        raise ValueError(f"tokenizer lacks the Dream chat tokens {missing}")


def prompt_ids(instruction: str, tokenizer, layout: VLALayout) -> np.ndarray:
    """Tokens from ``<|im_start|>system`` through ``<|im_start|>assistant\\n`` with the image pads expanded."""
    if not isinstance(instruction, str):
        raise LayoutError(f"frame['instruction'] must be a str, got {type(instruction).__name__}")
    text = instruction.lower() if layout.lowercase_instruction else instruction
    content = [{"type": "image"}] * layout.num_images + [{"type": "text", "text": PROMPT.format(instruction=text)}]
    messages = [{"role": "system", "content": layout.system_message}, {"role": "user", "content": content}]
    ids = np.asarray(tokenizer.encode(render_chat(messages, add_generation_prompt=True)), np.int32)
    grid = np.tile([1, layout.grid_side, layout.grid_side], (layout.num_images, 1))
    return np.asarray(expand_image_pads(ids, grid, layout.merge_size, image_pad_id=tokenizer.image_pad_id), np.int32)


def _stored_images(frame: Mapping[str, Any], layout: VLALayout) -> np.ndarray:
    """``device_images``: the decoded uint8 [num_images, H, W, 3] as they are (any H, W; resized on device)."""
    if "images" not in frame:
        raise LayoutError("frame has no 'images' (uint8 [num_cameras, H, W, 3])")
    images = np.asarray(frame["images"])
    if images.ndim != 4 or images.shape[0] != layout.num_images or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise LayoutError(f"frame['images'] must be uint8 [{layout.num_images}, H, W, 3] (num_images, stored size, "
                          f"RGB), got {images.dtype} {list(images.shape)}")
    return images


def _images(frame: Mapping[str, Any], layout: VLALayout):
    if "images" not in frame:
        raise LayoutError("frame has no 'images' (uint8 [num_cameras, H, W, 3])")
    images = np.asarray(frame["images"])
    want = (layout.num_images, layout.image_size, layout.image_size, 3)
    if images.shape != want or images.dtype != np.uint8:
        raise LayoutError(f"frame['images'] must be uint8 {list(want)} (num_images, image_size, image_size, 3), got "
                          f"{images.dtype} {list(images.shape)}")
    px = layout.image_size**2
    pixel_values, grid = image_processor.preprocess(
        list(images), px, px, patch_size=layout.patch_size, temporal_patch_size=layout.temporal_patch_size,
        merge_size=layout.merge_size)
    want_grid = np.tile([1, layout.grid_side, layout.grid_side], (layout.num_images, 1))
    if not np.array_equal(grid, want_grid):
        raise LayoutError(f"frame['images'] preprocess to grid {grid.tolist()}, expected {want_grid.tolist()}")
    gather, positions, segments = _patch_rows(layout.grid_side, layout.num_images, layout.merge_size)
    return (pack_pixel_rows(pixel_values, gather, layout.row_len).astype(np.float32), positions, segments)


@functools.lru_cache(maxsize=16)
def _patch_rows(grid_side: int, num_images: int, merge_size: int):
    """One ViT row per image (the same for every sample of a layout, so computed once)."""
    grid = np.tile([1, grid_side, grid_side], (num_images, 1))
    gather, positions, segments = vision_patch_rows(grid, grid_side**2, num_images, spatial_merge_size=merge_size)
    for a in (gather, positions, segments):
        a.setflags(write=False)
    return gather, positions.astype(np.int32), segments.astype(np.int32)


def _vector(frame: Mapping[str, Any], key: str, shape: tuple[int, ...]) -> np.ndarray:
    value = np.asarray(frame[key], np.float32)
    if value.shape != shape:
        raise LayoutError(f"frame[{key!r}] must have shape {list(shape)}, got {list(value.shape)}")
    if not np.all(np.isfinite(value)):
        raise LayoutError(f"frame[{key!r}] has non-finite values")
    return value


def layout_sample(frame: Mapping[str, Any], tokenizer, layout: VLALayout, *,
                  device_images: bool = False) -> dict[str, np.ndarray]:
    """One frame → one fixed-shape sample (module docstring). ``actions`` absent → an inference sample.

    ``device_images`` (training with ``VLADataConfig(resize="device")``): the sample carries the frame's uint8
    ``images`` [n_img, H, W, 3] at their stored size in place of ``pixel_values``; the train step resizes,
    augments and patchifies them (``device_augment.StepImages``). ``patch_positions`` / ``patch_segment_ids``
    are the same either way (they depend only on the layout)."""
    _check_chat_tokens(tokenizer)
    action_tok = ActionTokenizer.from_tokenizer(tokenizer, layout.n_action_bins)
    prompt = prompt_ids(frame.get("instruction"), tokenizer, layout)
    has_actions = frame.get("actions") is not None
    if has_actions:
        actions = _vector(frame, "actions", (layout.chunk, layout.action_dim))
        action_ids = action_tok.encode(actions.reshape(-1)).astype(np.int32)
    else:
        actions = None
        action_ids = np.full(layout.num_action_tokens, action_tok.first_id, np.int32)
    suffix = np.asarray([tokenizer.im_end_id, tokenizer.newline_id], np.int32)
    prefix = np.full(layout.num_prefix, tokenizer.pad_id, np.int32)
    ids = np.concatenate([prefix, prompt, action_ids, suffix])
    if len(ids) > layout.canvas_length:
        raise LayoutError(f"sample needs {len(ids)} tokens (instruction {frame.get('instruction')!r}) > "
                          f"canvas_length {layout.canvas_length}")
    n, s = len(ids), layout.canvas_length
    canvas = np.full(s, tokenizer.pad_id, np.int32)
    canvas[:n] = ids
    mask = np.zeros(s, np.int32)
    mask[:n] = 1
    if device_images:
        _, positions, segments = _patch_rows(layout.grid_side, layout.num_images, layout.merge_size)
        pixels = {"images": _stored_images(frame, layout)}
    else:
        pixel_values, positions, segments = _images(frame, layout)
        pixels = {"pixel_values": pixel_values}
    proprio_value = frame.get("proprio")
    proprio = (np.zeros(layout.proprio_dim, np.float32) if proprio_value is None
               else _vector(frame, "proprio", (layout.proprio_dim,)))
    out = dict(input_ids=canvas, attention_mask=mask,
               action_start=np.int32(layout.num_prefix + len(prompt)), **pixels,
               patch_positions=positions, patch_segment_ids=segments, proprio=proprio)
    if has_actions:
        labels = np.full(s, IGNORE_INDEX, np.int32)
        labels[n - layout.num_targets:n] = canvas[n - layout.num_targets:n]
        out.update(labels=labels, actions=actions)
    return out


IMAGE_KEYS = ("pixel_values", "patch_positions", "patch_segment_ids")


def collate(samples: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack samples into a batch; the image rows are concatenated in batch order ([B·n_img, L, …])."""
    if not samples:
        raise ValueError("collate: no samples")
    keys = set(samples[0])
    for i, s in enumerate(samples):
        if set(s) != keys:
            raise ValueError(f"collate: sample {i} has keys {sorted(s)}, sample 0 has {sorted(keys)}")
    return {k: (np.concatenate if k in IMAGE_KEYS else np.stack)([np.asarray(s[k]) for s in samples], axis=0)
            for k in sorted(keys)}
