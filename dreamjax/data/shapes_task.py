"""A toy image-question-answer task ("shapes") in the LLaVA conversation format, for learning demos and tests.

Each image is a small canvas (default 56×56, one 2×2 merge window per 28×28 → 4 LLM image tokens) on a
plain mid-grey background (``BACKGROUND``, the CLIP mean colour: background patches normalize to ≈ 0) with
1..``max_count`` shapes that all share one kind and one colour (each in its own cell of a 2×2 grid, i.e. its
own 2×2 merge window at 56 px; ``jitter`` sets how far from the cell centre it may sit), so every question
has a single one-word answer:

* "What colour are the shapes?" → ``red`` / ``green`` / ``blue`` / ``yellow``
* "What shape are they?"        → ``circle`` / ``square`` / ``triangle``
* "How many shapes are there?"  → ``one`` / ``two`` / ``three``

:func:`write_shapes_dataset` renders ``n`` samples as PNG files plus a ``data.json`` list in the LLaVA format
``{"id", "image": "images/00000.png", "conversations": [{"from": "human", "value": "<image>\\n…"},
{"from": "gpt", "value": "red"}]}`` (image paths relative to the JSON file), deterministic in ``seed``. It is
what ``dreamjax.data.sft`` reads. Plain PIL + numpy; no jax.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
KINDS = ("circle", "square", "triangle")
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
QUESTIONS = {
    "colour": "What colour are the shapes?",
    "kind": "What shape are they?",
    "count": "How many shapes are there?",
}
# Mid grey = the CLIP mean colour the image processor subtracts, so a background patch normalizes to ≈ 0.
# (A near-white background normalizes to ≈ +1.8 in every one of the 1176 values of a patch; with such
# uncentered input, Adam's per-coordinate steps grow the bias-free patch embedding along the mean patch by
# ≈ lr·‖x‖₁ per step, and the LayerNorms after it then squash the image-specific part: measured on the
# tiny demo model, patch-embedding norm 6 → 113 in 25 steps while the spread between images only 2 → 23.)
BACKGROUND = (123, 117, 104)
SHAPE_SCALE = (0.45, 0.8)  # side of a shape, as fractions of its grid cell


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if kind == "circle":
        draw.ellipse(box, fill=fill)
    elif kind == "square":
        draw.rectangle(box, fill=fill)
    elif kind == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    else:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {KINDS}")


def render_shapes(kind: str, colour: str, count: int, rng: np.random.Generator, size: int = 56, *,
                  scale: tuple[float, float] = SHAPE_SCALE, background: tuple[int, int, int] = BACKGROUND,
                  jitter: float = 1.0) -> Image.Image:
    """An RGB ``size``×``size`` image with ``count`` non-overlapping ``colour`` ``kind`` shapes.

    Shapes sit in distinct cells of a 2×2 grid (so ``count`` ≤ 4), each with a random side in ``scale``
    (fractions of the cell) and an offset inside its cell: centred, plus a uniform random shift over
    ``jitter`` × the free space (1: anywhere inside the cell, 0: always centred).
    """
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {sorted(COLOURS)}")
    if not 1 <= count <= 4:
        raise ValueError(f"count must be in 1..4 (cells of a 2×2 grid), got {count}")
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale must be (low, high) with 0 < low ≤ high ≤ 1 (fractions of a cell), got {scale}")
    if not 0.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be in [0, 1] (fraction of a cell's free space), got {jitter}")
    image = Image.new("RGB", (size, size), tuple(background))
    draw = ImageDraw.Draw(image)
    cell = size // 2
    for c in rng.permutation(4)[:count]:
        cy, cx = divmod(int(c), 2)
        side = int(rng.integers(max(1, int(scale[0] * cell)), int(scale[1] * cell) + 1))
        free = cell - side
        ox, oy = (int(round(free / 2 + jitter * (u - 0.5) * free)) for u in rng.random(2))
        x0, y0 = cx * cell + ox, cy * cell + oy
        _draw_shape(draw, kind, (x0, y0, x0 + side - 1, y0 + side - 1), COLOURS[colour])
    return image


def sample_record(rng: np.random.Generator, max_count: int = 3) -> tuple[dict, str]:
    """Draw one (scene, question) pair: ``({"kind", "colour", "count", "question_type"}, answer)``."""
    scene = dict(kind=KINDS[rng.integers(len(KINDS))], colour=sorted(COLOURS)[rng.integers(len(COLOURS))],
                 count=int(rng.integers(1, max_count + 1)), question_type=list(QUESTIONS)[rng.integers(len(QUESTIONS))])
    answer = {"colour": scene["colour"], "kind": scene["kind"], "count": NUMBER_WORDS[scene["count"]]}
    return scene, answer[scene["question_type"]]


def write_shapes_dataset(out_dir: str | os.PathLike, n: int, seed: int = 0, *, size: int = 56,
                         max_count: int = 3, scale: tuple[float, float] = SHAPE_SCALE,
                         background: tuple[int, int, int] = BACKGROUND, jitter: float = 1.0,
                         json_name: str = "data.json") -> Path:
    """Render ``n`` samples into ``out_dir`` (``images/*.png`` + ``json_name``); returns the JSON path.

    Deterministic: the same (n, seed, size, max_count) give byte-identical files. The JSON is written to a
    temporary name and renamed, so a crash never leaves a half-written list.
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    if not 1 <= max_count <= 4:
        raise ValueError(f"max_count must be in 1..4, got {max_count}")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        scene, answer = sample_record(rng, max_count)
        image = render_shapes(scene["kind"], scene["colour"], scene["count"], rng, size, scale=tuple(scale),
                              background=tuple(background), jitter=jitter)
        rel = f"images/{i:05d}.png"
        image.save(out / rel, format="PNG")
        records.append({
            "id": f"shapes-{seed}-{i}",
            "image": rel,
            "conversations": [
                {"from": "human", "value": "<image>\n" + QUESTIONS[scene["question_type"]]},
                {"from": "gpt", "value": answer},
            ],
            "meta": scene,
        })
    path = out / json_name
    fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{json_name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(records, f, indent=1)
    os.replace(tmp, path)
    return path


def task_texts() -> list[str]:
    """A corpus for a tiny tokenizer: every question and answer, the default system message and the role
    names of the chat template (with ``train_sentencepiece(..., vocab_size=400)`` each becomes whole words)."""
    from dreamjax.data.chat_template import DEFAULT_SYSTEM_MESSAGE

    return [*QUESTIONS.values(), *COLOURS, *KINDS, *NUMBER_WORDS[1:], DEFAULT_SYSTEM_MESSAGE, "system", "user",
            "assistant"]
