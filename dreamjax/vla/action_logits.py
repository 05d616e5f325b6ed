"""The policy's compiled predictor; its discrete objectives score the action slots over the action ids only.

The reference decodes discrete actions (spec §6.4.4 ``diffusion_generate``, §6.4.5 one-step discrete) from
``lm_head`` over every position and the whole vocabulary, then reads C·A + 2 rows of it.
``dreamjax.vla.objectives`` already runs ``lm_head`` on those C·A + 2 target rows only, and then sets every
non-action column of the C·A action rows to float32 min (dreamjax picks action tokens among the action ids —
a deliberate difference from the reference, see its docstring). Those columns are computed and thrown away:
on the small benchmark config that is 56 × 512 × 32000 multiply-adds, 95 % of ``predict_action``'s ``lm_head``
time and ~30 ms of a 200 ms chunk; on the 7B it would be 151936 columns.

Here the action rows multiply the hidden state by the ``n_bins`` action columns of ``lm_head`` only
(``lm_head_columns``); the two suffix rows (``<|im_end|>\\n``) keep the whole vocabulary, as the reference —
except with one decoding step (the reference eval's), which reveals every masked target at once: the suffix
cannot change the actions then and is not scored (2 rows, yet a full read of the lm_head weights). The
decoding rule is unchanged — maskgit_plus at temperature 0 (``dreamjax.diffusion.sampler``: argmax, confidence
= its probability, the ``floor(M · fraction)`` most confident masked slots revealed per step) — and picks the
same tokens as ``objectives.predict_normalized``: a softmax over the action columns equals the softmax of the
restricted full row (the other columns contribute exp(float32 min − max) = 0). ``tests/vla/
test_action_logits.py`` checks the two paths give identical chunks.

:func:`predict_chunk` is what ``DreamVLA.predict_action`` runs: these predictors for ``discrete_diffusion``
and ``discrete``, ``objectives.PREDICTORS`` for the continuous objectives.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from dreamjax.diffusion.sampler import SamplerSettings, propose_tokens, top_n_mask
from dreamjax.diffusion.schedule import transfer_fractions
from dreamjax.vla.model import DreamVLAModel, gather_rows, slot_indices
from dreamjax.vla.objectives import (PREDICTORS, ObjectiveSettings, _decode, _decode_bins, _encode, _target_tokens,
                                     _zeros_for_actions)


def action_id_range(settings: ObjectiveSettings) -> tuple[int, int]:
    """[first, stop) of the action ids: the last ``n_bins`` ids of the tokenizer (``ActionTokenizer``)."""
    return settings.vocab_len - settings.n_bins, settings.vocab_len


def lm_head_columns(model: DreamVLAModel, params, rows: jax.Array, first: int, stop: int) -> jax.Array:
    """float32 logits of vocabulary columns [first, stop) for hidden rows [B, N, D] — ``lm_logits`` restricted
    to those columns (the untied ``lm_head`` kernel [D, V] or the tied embedding [V, D]), in the model's dtype."""
    c = model.config
    tree = params["params"]
    if c.tie_word_embeddings:
        weight = tree["model"]["embed_tokens"]["embedding"][first:stop].T
    else:
        weight = tree["lm_head"]["kernel"][:, first:stop]
    dtype = jnp.dtype(c.dtype)
    return jnp.dot(rows.astype(dtype), weight.astype(dtype)).astype(jnp.float32)


def target_rows(model: DreamVLAModel, hidden: jax.Array, action_start: jax.Array, count: int) -> jax.Array:
    """Hidden states scoring tokens ``action_start + j`` (j < count): one place earlier (the shift)."""
    return gather_rows(hidden, slot_indices(action_start, count, offset=-1))


def split_target_logits(model: DreamVLAModel, params, hidden, action_start, settings: ObjectiveSettings,
                        num_suffix: int) -> tuple[jax.Array, jax.Array | None]:
    """(action rows' logits over the action ids [B, C·A, n_bins], suffix rows' logits over the whole vocabulary
    [B, num_suffix, V] or None), float32."""
    n_actions = model.head.num_action_tokens
    rows = target_rows(model, hidden, action_start, n_actions + num_suffix)
    action_logits = lm_head_columns(model, params, rows[:, :n_actions], *action_id_range(settings))
    if not num_suffix:
        return action_logits, None
    suffix = model.apply(params, rows[:, n_actions:], method=DreamVLAModel.lm_logits).astype(jnp.float32)
    return action_logits, suffix


def commit_step(action_logits, suffix_logits, x, masked, fraction, rng, sampler: SamplerSettings,
                first_action_id: int) -> jax.Array:
    """``sampler.denoise_step`` (maskgit_plus, temperature 0, no alg_temp) on rows whose logits come in two
    widths: action rows over the action ids, suffix rows over the vocabulary. Same tokens, same reveals."""
    if sampler.alg != "maskgit_plus" or sampler.temperature or sampler.alg_temp or sampler.flat_batch:
        raise ValueError(f"commit_step implements maskgit_plus at temperature 0 only, got {sampler}")
    k_tok, _ = jax.random.split(rng)
    confidence, tokens = propose_tokens(action_logits, k_tok, sampler)
    tokens = tokens + first_action_id
    if suffix_logits is not None:
        suffix_confidence, suffix_tokens = propose_tokens(suffix_logits, k_tok, sampler)
        confidence = jnp.concatenate([confidence, suffix_confidence], axis=1)
        tokens = jnp.concatenate([tokens, suffix_tokens], axis=1)
    count = jnp.floor(jnp.sum(masked, axis=-1).astype(jnp.float32) * fraction).astype(jnp.int32)
    return jnp.where(top_n_mask(confidence, masked, count), tokens, x)


def predict_discrete_diffusion(model, params, batch, rng, settings: ObjectiveSettings):
    """``objectives._predict_discrete_diffusion`` (the reference's ``diffusion_generate`` over the C·A + 2
    masked targets) with the action rows scored over the action ids only."""
    h = model.head
    index, n = _target_tokens(model, batch)
    rows = jnp.arange(index.shape[0])[:, None]
    canvas = batch["input_ids"].at[rows, index].set(settings.mask_token_id)
    embeds = _encode(model, params, batch, canvas)  # vision once; target embeddings refreshed per step
    sampler = SamplerSettings(steps=settings.discrete_steps, alg="maskgit_plus", temperature=0.0, alg_temp=0.0,
                              eps=settings.eps)
    first_action_id = action_id_range(settings)[0]
    if settings.discrete_steps == 1:  # one step reveals every masked target: the suffix rows cannot change the
        hidden = _decode(model, params, embeds, batch)  # actions, and scoring them would read all of lm_head
        action_logits, _ = split_target_logits(model, params, hidden, batch["action_start"], settings, 0)
        ids = propose_tokens(action_logits, rng, sampler)[1] + first_action_id
        return _decode_bins(settings, ids).reshape(-1, h.chunk, h.action_dim)

    def step(carry, per_step):
        x, embeds = carry
        i, fraction = per_step
        masked = x == settings.mask_token_id
        hidden = _decode(model, params, embeds, batch)
        action_logits, suffix_logits = split_target_logits(model, params, hidden, batch["action_start"], settings,
                                                           n - h.num_action_tokens)
        new = commit_step(action_logits, suffix_logits, x, masked, fraction, jax.random.fold_in(rng, i), sampler,
                          first_action_id)
        fresh = model.apply(params, new, method=DreamVLAModel.embed_tokens).astype(embeds.dtype)
        current = jnp.take_along_axis(embeds, index[..., None], axis=1)
        embeds = embeds.at[rows, index].set(jnp.where(masked[..., None], fresh, current))
        return (new, embeds), None

    x0 = jnp.full(index.shape, settings.mask_token_id, jnp.int32)
    steps = jnp.arange(settings.discrete_steps, dtype=jnp.int32)
    fractions = jnp.asarray(transfer_fractions(settings.discrete_steps, settings.eps))
    (x, _), _ = jax.lax.scan(step, (x0, embeds), (steps, fractions))
    return _decode_bins(settings, x[:, :h.num_action_tokens]).reshape(-1, h.chunk, h.action_dim)


def predict_discrete(model, params, batch, rng, settings: ObjectiveSettings):
    """``objectives._predict_discrete`` (zero action embeddings, one forward, argmax among the action ids)."""
    h = model.head
    embeds = _encode(model, params, batch)
    hidden = _decode(model, params, embeds, batch, _zeros_for_actions(model, embeds))
    action_logits, _ = split_target_logits(model, params, hidden, batch["action_start"], settings, 0)
    ids = jnp.argmax(action_logits, axis=-1) + action_id_range(settings)[0]
    return _decode_bins(settings, ids).reshape(-1, h.chunk, h.action_dim)


POLICY_PREDICTORS = {**PREDICTORS, "discrete_diffusion": predict_discrete_diffusion, "discrete": predict_discrete}


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def predict_chunk(params, batch: Mapping[str, Any], rng: jax.Array, *, model: DreamVLAModel,
                  settings: ObjectiveSettings) -> jax.Array:
    """Normalized action chunks [B, C, A] — ``objectives.predict_normalized``'s contract and results, with the
    discrete objectives' action slots scored over the action ids only (module docstring)."""
    return POLICY_PREDICTORS[model.head.objective](model, params, batch, rng, settings)
