"""The smoke demo (``dreamjax demo --smoke``): the inference path end to end, on one CPU in well under a minute.

1. Train a small sentencepiece tokenizer (with Dream's special tokens) on a handful of robot instructions.
2. Draw a test image with PIL and run the Dream-VL image processor on it.
3. Render the Dream-VL chat template for a question about the image, expand the image pads.
4. Build a tiny Dream-VL (configs/dream_vl_tiny.py), save it as a dreamjax checkpoint, load it back with
   ``DreamVL.from_pretrained`` and run the forward pass.
5. Print the shapes, timings and the model's top tokens for the first answer position, and run the
   compiled masked-diffusion sampler (``DreamVL.generate``: 16 new tokens in 16 steps, maskgit_plus).

The model is randomly initialized, so its predictions are noise; what the run shows is that the whole
path — tokenizer, processor, template, model, checkpoint, loader, sampler — works on real inputs. The embedded
default (``dreamjax demo``: collect, train, evaluate a Dream-VLA on Meta-World) is :mod:`dreamjax.demo`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("dreamjax.smoke")

INSTRUCTIONS = [
    "put the red block in the bowl", "pick up the blue cup", "move the green cube to the left",
    "open the drawer", "close the top drawer", "push the yellow block forward", "stack the red block on the blue block",
    "what colour is the square", "how many circles are in the picture", "describe the image",
    "put the spoon next to the towel", "turn the knob to the right", "wipe the table with the sponge",
]


def token_label(tokenizer, token_id: int) -> str:
    """The token's text, or a marker for embedding rows beyond the tokenizer (checkpoints keep spare rows)."""
    return tokenizer.id_to_token(token_id) if token_id < len(tokenizer) else f"<unused row {token_id}>"


def draw_scene(size=(224, 160)):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", size, (235, 230, 220))
    d = ImageDraw.Draw(img)
    d.rectangle([20, 30, 80, 90], fill=(200, 30, 30))
    d.ellipse([120, 50, 190, 120], fill=(30, 60, 200))
    d.polygon([(100, 140), (130, 100), (160, 140)], fill=(30, 160, 60))
    return img


def run(out_dir: str | Path, seed: int = 0) -> dict:
    import jax

    from dreamjax.config_loader import load_config, model_config
    from dreamjax.data.chat_template import build_prompt
    from dreamjax.data.image_processor import PIXELS_VLA, preprocess
    from dreamjax.data.tokenizer import train_sentencepiece
    from dreamjax.pretrained import DreamVL

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tok = train_sentencepiece(INSTRUCTIONS * 4, out / "tokenizer", vocab_size=320)
    log.info("[1/6] sentencepiece tokenizer: %d tokens, image pad id %d, mask id %d", len(tok), tok.image_pad_id,
             tok.mask_id)

    image = draw_scene()
    image.save(out / "scene.png")
    pixel_values, grid = preprocess([image], *PIXELS_VLA)
    log.info("[2/6] image %dx%d -> pixel_values %s, grid_thw %s", image.width, image.height, pixel_values.shape,
             grid.tolist())

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what colour is the square"}]}]
    ids = build_prompt(tok, messages, grid)[None]
    log.info("[3/6] prompt: %d tokens (%d image tokens)", ids.shape[1], int((ids == tok.image_pad_id).sum()))

    config = model_config(load_config("dream_vl_tiny"))
    special = tok.special_ids()
    if any(getattr(config, k) != v for k, v in special.items()):
        raise ValueError(f"configs/dream_vl_tiny.py special ids {config} disagree with the tokenizer's {special}")
    config = config.replace(vocab_size=len(tok))  # the embedding table sized to this tokenizer
    model = DreamVL.from_config(config, seed=seed, tokenizer=tok)
    ckpt = model.save_pretrained(out / "checkpoint", overwrite=True)
    model = DreamVL.from_pretrained(ckpt)
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(model.params))
    log.info("[4/6] tiny Dream-VL: %.2fM params, saved and reloaded from %s", n_params / 1e6, ckpt)

    t1 = time.perf_counter()
    logits = np.asarray(model(ids, None, pixel_values, grid))
    t_first = time.perf_counter() - t1
    t1 = time.perf_counter()
    np.asarray(model(ids, None, pixel_values, grid))
    t_second = time.perf_counter() - t1
    top = np.argsort(-logits[0, -1])[:5]
    words = [token_label(model.tokenizer, int(i)) for i in top]
    log.info("[5/6] logits %s finite=%s; forward %.2fs (with compile), %.3fs (compiled); top next tokens %s",
             logits.shape, bool(np.isfinite(logits).all()), t_first, t_second, words)

    from dreamjax.diffusion.sampler import decode_generated, default_stop_ids

    t1 = time.perf_counter()
    canvas = model.generate(ids, None, pixel_values, grid, max_new_tokens=16, steps=16, alg="maskgit_plus")
    t_gen = time.perf_counter() - t1
    answer = decode_generated(model.tokenizer, canvas, ids.shape[1], default_stop_ids(model.config, model.tokenizer))[0]
    log.info("[6/6] generate: 16 tokens in 16 diffusion steps, %.2fs (with compile): %r", t_gen, answer)
    summary = dict(prompt_tokens=int(ids.shape[1]), image_grid=grid.tolist(), logits_shape=list(logits.shape),
                   params=int(n_params), forward_compiled_s=round(t_second, 4), total_s=round(time.perf_counter() - t0, 2),
                   top_tokens=words, generated=answer, generated_canvas=list(np.asarray(canvas).shape),
                   checkpoint=str(ckpt))
    log.info("done in %.1fs; outputs in %s", summary["total_s"], out)
    return summary
