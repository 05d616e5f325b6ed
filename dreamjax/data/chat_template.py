"""The Dream-VL chat template (spec §3) and image/video pad expansion.

Rendered form (the Jinja template set in the reference's ``export.py``)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n     only if the first message is not a system one
    <|im_start|>{role}\\n{content}<|im_end|>\\n                          per message
    <|im_start|>assistant\\n                                             if add_generation_prompt

List contents: ``{"type": "image"}`` (or any item with an ``image``/``image_url`` key) → ``<|image_pad|>``,
``{"type": "video"}`` (or a ``video`` key) → ``<|video_pad|>``, ``{"type": "text", "text": ...}`` → the text
verbatim. No separators and no ``<|vision_start|>``/``<|vision_end|>`` around the pads (unlike Qwen2-VL).
With ``add_vision_id=True`` each image is preceded by ``"Picture k: "`` and each video by ``"Video k: "``, k
counted from 1 over the whole conversation (as in the Qwen2-VL template).

Note: the reference's *training* template (LLaVA ``preprocess_qwen``) puts ``<image>\\n`` at the start of the
user turn; the inference template rendered here has no ``\\n`` after the image (spec §3 [DISAGREE]).

After rendering, :func:`expand_image_pads` repeats the i-th pad ``t·h·w / merge_size²`` times (the number of
merged vision tokens of image i), as the reference processor does before tokenizing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from dreamjax.data.tokenizer import IMAGE_PAD, VIDEO_PAD

if TYPE_CHECKING:
    from dreamjax.data.tokenizer import Tokenizer

DEFAULT_SYSTEM_MESSAGE = "You are a helpful assistant."


def _media_kind(item: Any, where: str) -> str:
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: content items must be dicts, got {type(item).__name__}")
    if item.get("type") == "image" or "image" in item or "image_url" in item:
        return "image"
    if item.get("type") == "video" or "video" in item:
        return "video"
    if "text" in item:
        return "text"
    # The Jinja template silently drops such items; we refuse them instead (no silent fallbacks).
    raise ValueError(f"{where}: content item {dict(item)!r} is neither image, video nor text")


def render_chat(
    messages: Sequence[Mapping[str, Any]],
    add_generation_prompt: bool = False,
    add_vision_id: bool = False,
) -> str:
    """Render ``messages`` (dicts with ``role`` and ``content``: str or list of items) to the prompt string."""
    parts: list[str] = []
    n_images = n_videos = 0
    for m, msg in enumerate(messages):
        if not isinstance(msg, Mapping) or "role" not in msg or "content" not in msg:
            raise ValueError(f"message {m}: expected a dict with 'role' and 'content', got {msg!r}")
        role, content = str(msg["role"]), msg["content"]
        if m == 0 and role != "system":
            parts.append(f"<|im_start|>system\n{DEFAULT_SYSTEM_MESSAGE}<|im_end|>\n")
        parts.append(f"<|im_start|>{role}\n")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, Sequence):
            for k, item in enumerate(content):
                kind = _media_kind(item, f"message {m} item {k}")
                if kind == "image":
                    n_images += 1
                    parts.append((f"Picture {n_images}: " if add_vision_id else "") + IMAGE_PAD)
                elif kind == "video":
                    n_videos += 1
                    parts.append((f"Video {n_videos}: " if add_vision_id else "") + VIDEO_PAD)
                else:
                    parts.append(str(item["text"]))
        else:
            raise ValueError(f"message {m}: content must be a str or a list of items, got {type(content).__name__}")
        parts.append("<|im_end|>\n")
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def count_media(messages: Sequence[Mapping[str, Any]]) -> tuple[int, int]:
    """(number of images, number of videos) in ``messages``."""
    kinds = [
        _media_kind(item, f"message {m} item {k}")
        for m, msg in enumerate(messages)
        if not isinstance(msg.get("content"), str)
        for k, item in enumerate(msg.get("content") or [])
    ]
    return kinds.count("image"), kinds.count("video")


def tokens_per_grid(grid_thw: Any, merge_size: int = 2, what: str = "image") -> np.ndarray:
    """Merged vision tokens per image: ``t·h·w // merge_size²`` for each row of an (N, 3) grid."""
    grid = np.asarray(grid_thw, dtype=np.int64)
    if grid.ndim == 1 and grid.size == 3:
        grid = grid[None]
    if grid.ndim != 2 or grid.shape[1] != 3:
        raise ValueError(f"{what}_grid_thw must have shape (num_{what}s, 3), got {grid.shape}")
    if (grid <= 0).any():
        raise ValueError(f"{what}_grid_thw entries must be positive, got {grid.tolist()}")
    prod = grid.prod(axis=1)
    bad = prod % (merge_size * merge_size) != 0
    if bad.any():
        raise ValueError(
            f"{what}_grid_thw rows {grid[bad].tolist()}: t*h*w is not divisible by merge_size²={merge_size ** 2}"
        )
    return prod // (merge_size * merge_size)


def _check_count(found: int, counts: np.ndarray, what: str, pad: str) -> None:
    if found != len(counts):
        raise ValueError(
            f"prompt has {found} {pad} placeholder(s) but {what}_grid_thw describes {len(counts)} {what}(s)"
        )


def expand_image_pads(
    text_or_ids: str | Sequence[int] | np.ndarray,
    image_grid_thw: Any = None,
    merge_size: int = 2,
    *,
    video_grid_thw: Any = None,
    image_pad_id: int | None = None,
    video_pad_id: int | None = None,
) -> str | list[int] | np.ndarray:
    """Repeat the i-th ``<|image_pad|>`` ``prod(image_grid_thw[i]) // merge_size²`` times (same for videos).

    Works on a rendered string or on token ids (then pass ``image_pad_id`` / ``video_pad_id``, e.g. the
    tokenizer's). A grid of ``None`` leaves that modality's pads as they are; otherwise the number of pads must
    equal the number of grid rows (ValueError naming both). Returns the same kind it was given (str, list, or
    1-D array of the same dtype).
    """
    img = None if image_grid_thw is None else tokens_per_grid(image_grid_thw, merge_size, "image")
    vid = None if video_grid_thw is None else tokens_per_grid(video_grid_thw, merge_size, "video")

    if isinstance(text_or_ids, str):
        pieces = re.split(f"({re.escape(IMAGE_PAD)}|{re.escape(VIDEO_PAD)})", text_or_ids)
        if img is not None:
            _check_count(pieces.count(IMAGE_PAD), img, "image", IMAGE_PAD)
        if vid is not None:
            _check_count(pieces.count(VIDEO_PAD), vid, "video", VIDEO_PAD)
        out, i_img, i_vid = [], 0, 0
        for p in pieces:
            if p == IMAGE_PAD and img is not None:
                p, i_img = IMAGE_PAD * int(img[i_img]), i_img + 1
            elif p == VIDEO_PAD and vid is not None:
                p, i_vid = VIDEO_PAD * int(vid[i_vid]), i_vid + 1
            out.append(p)
        return "".join(out)

    ids = np.asarray(text_or_ids)
    if ids.ndim != 1:
        raise ValueError(f"expand_image_pads expects one sequence of ids (1-D), got shape {ids.shape}")
    repeats = np.ones(ids.shape, dtype=np.int64)
    for counts, pad_id, what, pad in ((img, image_pad_id, "image", IMAGE_PAD), (vid, video_pad_id, "video", VIDEO_PAD)):
        if counts is None:
            continue
        if pad_id is None:
            raise TypeError(f"expand_image_pads on token ids needs {what}_pad_id= (the tokenizer's {what}_pad_id)")
        where = np.flatnonzero(ids == pad_id)
        _check_count(len(where), counts, what, pad)
        repeats[where] = counts
    out_ids = np.repeat(ids, repeats)
    return out_ids if isinstance(text_or_ids, np.ndarray) else out_ids.tolist()


def build_prompt(
    tokenizer: Tokenizer,
    messages: Sequence[Mapping[str, Any]],
    image_grid_thw: Any = None,
    add_generation_prompt: bool = True,
    *,
    video_grid_thw: Any = None,
    merge_size: int = 2,
    add_vision_id: bool = False,
) -> np.ndarray:
    """Render, tokenize and expand the pads of a conversation → int32 ids.

    A conversation with images (videos) needs ``image_grid_thw`` (``video_grid_thw``) with one row per item.
    """
    text = render_chat(messages, add_generation_prompt=add_generation_prompt, add_vision_id=add_vision_id)
    n_images, n_videos = count_media(messages)
    for n, grid, what in ((n_images, image_grid_thw, "image"), (n_videos, video_grid_thw, "video")):
        if n and grid is None:
            raise ValueError(f"messages contain {n} {what}(s) but no {what}_grid_thw was given")
    ids = np.asarray(tokenizer.encode(text), dtype=np.int32)
    return expand_image_pads(  # type: ignore[return-value]
        ids, image_grid_thw, merge_size, video_grid_thw=video_grid_thw,
        image_pad_id=tokenizer.image_pad_id, video_pad_id=tokenizer.video_pad_id,
    )
