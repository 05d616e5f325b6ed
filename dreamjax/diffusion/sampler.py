"""Dream's masked-diffusion sampler (``diffusion_generate``, spec §5), compiled once per setting.

The canvas is the prompt followed by ``max_new_tokens`` mask tokens. Each of ``steps`` iterations runs the
bidirectional model over the whole canvas, shifts the logits (position j is scored by the hidden state at
j − 1, spec §11.1), proposes a token for every masked position and commits a subset:

* ``origin``: each masked position independently with probability ``1 − s/t``;
* ``maskgit_plus`` / ``topk_margin`` / ``entropy``: the ``int(M·(1 − s/t))`` most confident (top-1
  probability / top-1 − top-2 margin / negative entropy), or a sample of that many positions without
  replacement ∝ ``softmax(confidence / alg_temp)`` when ``alg_temp > 0``.

The last step commits every remaining mask. The schedule (:mod:`dreamjax.diffusion.schedule`) is the
reference's float32 arithmetic bit for bit, integer truncation included.

Compiled shape: one ``jax.jit`` per (model, :class:`SamplerSettings`, shapes); the loop is a ``lax.scan``
over steps; the vision tower runs once, before the loop. Like the HF generator's embedding cache (spec
§5.3 (B), §11.13) the loop carries the input embeddings and, after each step, re-embeds only the positions
that were masked at the start of that step. Prompts without mask tokens only compute ``lm_head`` over the
generated window.

Batches: by default every row is sampled on its own (its own mask count M, its own top-k); this is what
both reference implementations do for batch size 1, the only size their evaluations use. **[QUIRK]** the
HF Dream-VL/VLA generator (B) counts M over the whole batch and ranks the flattened masked positions of all
rows together, so rows compete for reveals; ``flat_batch=True`` reproduces that. (The LLaVA-Dream copy (A)
uses the batch-average M per row — not offered: its top-k can then overwrite unmasked tokens with masks, and
its alg_temp path samples from the raw −inf-filled confidences instead of their softmax.)

Other reference behaviours, kept: a proposed token may be the mask token itself, and that position then
stays masked (it is counted as revealed in that step's budget); the canvas is never stopped early — the
model fills the tail with ``<|endoftext|>`` and :func:`cut_at_stop` cuts at the first EOS / ``<|im_end|>``.
Position ids come from the initial canvas (prompt + masks); (B) recomputes them every step with
``get_rope_index``, which gives the same ids unless a generated token is ``<|vision_start|>``.
Logits are upcast to float32 before sampling (the reference samples in the model dtype).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamjax.diffusion import schedule
from dreamjax.models.llm import ACT

ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")
_NEG = float(np.finfo(np.float32).min)  # the reference's masked_fill value for filtered logits


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Static sampler settings (spec §5.1); each distinct value compiles its own loop."""

    steps: int
    alg: str = "origin"
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    alg_temp: float | None = None
    eos_penalty: float = 0.0
    eps: float = 1e-3
    flat_batch: bool = False
    output_history: bool = False

    def validate(self) -> "SamplerSettings":
        if not isinstance(self.steps, (int, np.integer)) or self.steps < 1:
            raise ValueError(f"steps must be an integer ≥ 1, got {self.steps!r}")
        if self.alg not in ALGS:
            raise ValueError(f"unknown alg {self.alg!r}; expected one of {ALGS}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be ≥ 0 (0 = argmax), got {self.temperature}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p}")
        if self.top_k is not None and (not isinstance(self.top_k, (int, np.integer)) or self.top_k < 1):
            raise ValueError(f"top_k must be an integer ≥ 1 or None, got {self.top_k!r}")
        if self.alg_temp is not None and self.alg_temp < 0:
            raise ValueError(f"alg_temp must be ≥ 0 or None, got {self.alg_temp}")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        return self


# --------------------------------------------------------------------------------------------- per-position rules
def filter_logits(logits: jax.Array, top_p: float | None = None, top_k: int | None = None) -> jax.Array:
    """The reference's nucleus then top-k filters; removed entries get float32 min (not −inf).

    top_p (< 1): sort descending, drop every token after the first whose cumulative probability exceeds
    top_p (that first one is kept). top_k: drop tokens below the k-th largest logit (ties kept).
    """
    if top_p is not None and top_p < 1:
        order = jnp.argsort(logits, axis=-1, descending=True, stable=True)
        cum = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(logits, order, axis=-1), axis=-1), axis=-1)
        drop_sorted = jnp.concatenate([jnp.zeros_like(cum[..., :1], bool), (cum > top_p)[..., :-1]], axis=-1)
        drop = jnp.take_along_axis(drop_sorted, jnp.argsort(order, axis=-1), axis=-1)
        logits = jnp.where(drop, _NEG, logits)
    if top_k is not None:
        kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
        logits = jnp.where(logits < kth, _NEG, logits)
    return logits


def propose_tokens(logits: jax.Array, rng: jax.Array, settings: SamplerSettings) -> tuple[jax.Array, jax.Array]:
    """The reference's ``sample_tokens``: (confidence, token) per position from [..., V] logits.

    logits / temperature (if > 0) → filters → probs. Token: a categorical sample if temperature > 0, else
    argmax. Confidence: the chosen token's probability (``maskgit_plus``, ``origin``), top-1 − top-2
    probability (``topk_margin``) or Σ p·log(p + 1e-10) (``entropy``), all from the filtered probs.
    """
    logits = logits.astype(jnp.float32)
    if settings.temperature > 0:
        logits = logits / settings.temperature
    logits = filter_logits(logits, settings.top_p, settings.top_k)
    probs = jax.nn.softmax(logits, axis=-1)
    if settings.temperature > 0:
        tokens = jax.random.categorical(rng, logits, axis=-1)
    else:
        tokens = jnp.argmax(probs, axis=-1)
    confidence = jnp.take_along_axis(probs, tokens[..., None], axis=-1)[..., 0]
    if settings.alg == "topk_margin":
        top2 = jax.lax.top_k(probs, 2)[0]
        confidence = top2[..., 0] - top2[..., 1]
    elif settings.alg == "entropy":
        confidence = jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1)
    return confidence, tokens.astype(jnp.int32)


def top_n_mask(score: jax.Array, masked: jax.Array, count: jax.Array) -> jax.Array:
    """[B, N] bool: per row, the ``count[b]`` masked positions with the highest score (ties: lower index)."""
    s = jnp.where(masked, score, -jnp.inf)
    order = jnp.argsort(s, axis=-1, descending=True, stable=True)
    rank = jnp.argsort(order, axis=-1)
    return (rank < count[:, None]) & masked


def denoise_step(logits: jax.Array, x: jax.Array, masked: jax.Array, fraction: jax.Array, rng: jax.Array,
                 settings: SamplerSettings) -> jax.Array:
    """One commit: logits [B, N, V] (shifted, penalised), canvas x [B, N], masked [B, N] → new x.

    fraction = ``1 − s/t`` of this step in float32 (1 at the last step).
    """
    k_tok, k_pick = jax.random.split(rng)
    confidence, tokens = propose_tokens(logits, k_tok, settings)
    return commit_proposals(confidence, tokens, x, masked, fraction, k_pick, settings)


def commit_proposals(confidence: jax.Array, tokens: jax.Array, x: jax.Array, masked: jax.Array,
                     fraction: jax.Array, rng: jax.Array | None, settings: SamplerSettings) -> jax.Array:
    """The commit half of :func:`denoise_step`: every masked slot proposed ``tokens`` [B, N] with ``confidence``;
    reveal per ``settings.alg`` (``origin``: each with probability ``fraction``; otherwise the ``floor(M ·
    fraction)`` best of a row's M masked slots). ``rng`` draws the picks (None only for deterministic algs)."""
    if settings.alg == "origin":
        reveal = masked & (jax.random.uniform(rng, masked.shape, jnp.float32) < fraction)
        return jnp.where(reveal, tokens, x)
    score = confidence
    if settings.alg_temp:  # sampling without replacement ∝ softmax(conf/alg_temp): Gumbel top-k
        score = confidence / settings.alg_temp + jax.random.gumbel(rng, confidence.shape, jnp.float32)
    shape = x.shape
    if settings.flat_batch:  # (B): one budget and one ranking over the flattened masked positions
        score, masked = score.reshape(1, -1), masked.reshape(1, -1)
    num_masked = jnp.sum(masked, axis=-1).astype(jnp.float32)
    count = jnp.floor(num_masked * fraction).astype(jnp.int32)  # int(M·(1 − s/t)); M at the last step
    reveal = top_n_mask(score, masked, count).reshape(shape)
    return jnp.where(reveal, tokens, x)


# --------------------------------------------------------------------------------------------- compiled loop
def _initial_embeddings(module, input_ids, images):
    features = module.encode_images(*images) if images is not None else None
    return nn.with_logical_constraint(module.embed(input_ids, features), ACT)


def _window_logits(module, embeds, segment_ids, position_ids, start: int):
    """Shifted logits (position j ← hidden j − 1; position 0 keeps its own) for positions ``start:``."""
    hidden = module.decode(embeds, segment_ids, position_ids)
    shifted = jnp.concatenate([hidden[:, :1], hidden[:, :-1]], axis=1)[:, start:]
    return module.lm_logits(shifted).astype(jnp.float32)


def _token_embeddings(module, ids):
    return module.embed(ids)


@functools.partial(jax.jit, static_argnames=("model", "settings", "start"))
def _sample(params, input_ids, segment_ids, position_ids, images, fractions, penalties, rng, *, model,
            settings: SamplerSettings, start: int):
    c = model.config
    mask_id = c.mask_token_id
    embeds = model.apply(params, input_ids, images, method=_initial_embeddings)  # vision tower: once

    def step(carry, per_step):
        x, embeds = carry
        i, fraction, penalty = per_step
        window = x[:, start:]
        masked = window == mask_id
        logits = model.apply(params, embeds, segment_ids, position_ids, start, method=_window_logits)
        if settings.eos_penalty:
            logits = logits.at[..., c.pad_token_id].add(penalty)
        new = denoise_step(logits, window, masked, fraction, jax.random.fold_in(rng, i), settings)
        x = jnp.concatenate([x[:, :start], new], axis=1)
        # Embedding cache: positions masked at the start of the step take the embedding of their new token.
        fresh = model.apply(params, new, method=_token_embeddings).astype(embeds.dtype)
        embeds = jnp.concatenate([embeds[:, :start], jnp.where(masked[..., None], fresh, embeds[:, start:])], axis=1)
        return (x, embeds), (x if settings.output_history else None)

    steps = jnp.arange(settings.steps, dtype=jnp.int32)
    (x, _), history = jax.lax.scan(step, (input_ids, embeds), (steps, fractions, penalties))
    return x, history


def make_canvas(input_ids, attention_mask, max_new_tokens: int, mask_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Prompt ids [B, P] (+ mask, 0 = left padding) → canvas [B, P + max_new_tokens] filled with mask tokens,
    and its attention mask (ones over the new part), as the reference pads both."""
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or ids.shape[1] < 1:
        raise ValueError(f"input_ids must be [batch, length ≥ 1], got shape {ids.shape}")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer ≥ 1, got {max_new_tokens!r}")
    mask = np.ones(ids.shape, np.int32) if attention_mask is None else np.asarray(attention_mask, np.int32)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    b = ids.shape[0]
    canvas = np.concatenate([ids, np.full((b, max_new_tokens), mask_token_id, ids.dtype)], axis=1)
    canvas_mask = np.concatenate([mask, np.ones((b, max_new_tokens), np.int32)], axis=1)
    if (canvas[:, 0] == mask_token_id).any():
        raise ValueError(f"the first token of every row must not be the mask token (id {mask_token_id}): no "
                         "logit predicts position 0 (the reference asserts the same)")
    return canvas.astype(np.int32), canvas_mask


def diffusion_generate(model, params, inputs: dict[str, Any], settings: SamplerSettings, *, prompt_length: int,
                       rng: jax.Array | None = None):
    """Run the compiled sampler on a prepared canvas.

    model: a ``DreamVLModel``; inputs: ``DreamVL.prepare_inputs`` of the canvas (:func:`make_canvas`), i.e.
    ``input_ids``, ``attention_mask``, ``position_ids`` and, with images, ``pixel_values`` +
    ``patch_positions`` + ``patch_segment_ids``. prompt_length: P. rng: a ``jax.random`` key or an int seed
    (default ``jax.random.key(0)``: deterministic; ``origin`` and temperature/alg_temp > 0 consume it).

    Returns the canvas [B, P + N] int32 (prompt included), or ``(canvas, history [steps, B, P + N])`` when
    ``settings.output_history``.
    """
    settings.validate()
    ids = np.asarray(inputs["input_ids"])
    mask_id = model.config.mask_token_id
    # Masks inside the prompt (infilling) are generated too; then logits are needed over the whole canvas.
    start = 0 if (ids[:, :prompt_length] == mask_id).any() else prompt_length
    images = None
    if inputs.get("pixel_values") is not None:
        images = (inputs["pixel_values"], inputs["patch_positions"], inputs["patch_segment_ids"])
    fractions = schedule.transfer_fractions(settings.steps, settings.eps)
    penalties = schedule.eos_penalty_terms(settings.steps, settings.eps, settings.eos_penalty)
    if rng is None or isinstance(rng, (int, np.integer)):
        rng = jax.random.key(0 if rng is None else int(rng))
    x, history = _sample(params, ids, np.asarray(inputs["attention_mask"], np.int32), inputs["position_ids"],
                         images, fractions, penalties, rng, model=model, settings=settings, start=start)
    return (x, history) if settings.output_history else x


# --------------------------------------------------------------------------------------------- host-side output
def cut_at_stop(ids, prompt_length: int, stop_ids: Iterable[int]) -> list[list[int]]:
    """The generated part of each row (after the prompt), cut before the first stop token (EOS,
    ``<|im_end|>``), as lists of ints — the reference's post-processing."""
    arr = np.asarray(ids)
    if arr.ndim != 2:
        raise ValueError(f"ids must be [batch, length], got shape {arr.shape}")
    stops = {int(s) for s in stop_ids}
    out = []
    for row in arr[:, prompt_length:].tolist():
        cut = next((k for k, tok in enumerate(row) if tok in stops), len(row))
        out.append(row[:cut])
    return out


def default_stop_ids(config, tokenizer=None) -> tuple[int, ...]:
    """EOS (and ``<|im_end|>`` when the tokenizer knows it): where evaluation cuts the generated text."""
    stops = [config.eos_token_id]
    if tokenizer is not None:
        im_end = tokenizer.token_to_id("<|im_end|>")
        if im_end is not None:
            stops.append(int(im_end))
    return tuple(dict.fromkeys(stops))


def decode_generated(tokenizer, ids, prompt_length: int, stop_ids: Sequence[int]) -> list[str]:
    """Text of each row's generated part, cut at the first stop token."""
    return [tokenizer.decode(row) for row in cut_at_stop(ids, prompt_length, stop_ids)]
