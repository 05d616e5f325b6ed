"""Scoring of the discrete objectives' target slots: the action rows over the action ids only.

The reference decodes discrete actions (spec §6.4.4 ``diffusion_generate``, §6.4.5 one-step discrete) from
``lm_head`` over every position and the whole vocabulary, then reads the C·A + 2 target rows of it (C·A action
tokens, then ``<|im_end|>\\n``). dreamjax picks action tokens among the action ids only (a deliberate difference,
see ``dreamjax.vla.objectives``): the rule is "the action rows' non-action columns at float32 min". Computing
those columns only to overwrite them would cost, on the small benchmark config, 56 × 512 × 32000 multiply-adds
(~30 ms of a 200 ms chunk; 151936 columns on the 7B), so here the action rows multiply the hidden state by the
``n_bins`` action columns of ``lm_head`` only (:func:`lm_head_columns`), and the two suffix rows keep the whole
vocabulary, as the reference. A softmax over the action columns equals the softmax of the restricted full row
(the other columns contribute exp(float32 min − max) = 0), so argmax and confidence — hence the tokens — are
the same; ``tests/vla/test_action_logits.py`` checks the decoded chunks against a plain full-vocabulary
implementation of the reference's rule.

These are the pieces; the decoding loops are ``objectives.predict_discrete_diffusion`` /
``objectives.predict_discrete`` (what ``predict_normalized`` and ``DreamVLA.predict_action`` run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp

from dreamjax.diffusion.sampler import SamplerSettings, commit_proposals, propose_tokens
from dreamjax.vla.model import DreamVLAModel, gather_rows, slot_indices

if TYPE_CHECKING:  # annotations only: objectives imports this module
    from dreamjax.vla.objectives import ObjectiveSettings

# maskgit_plus at temperature 0: the token is the argmax, its confidence the token's probability.
MASKGIT_ARGMAX = SamplerSettings(steps=1, alg="maskgit_plus", temperature=0.0, alg_temp=0.0)


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


def split_target_logits(model: DreamVLAModel, params, hidden, action_start, settings: ObjectiveSettings,
                        num_suffix: int) -> tuple[jax.Array, jax.Array | None]:
    """Logits of the target slots ``action_start + j``, each scored by the hidden state one place earlier (the
    shift): (the C·A action rows over the action ids [B, C·A, n_bins], the ``num_suffix`` rows after them over
    the whole vocabulary [B, num_suffix, V] or None when ``num_suffix`` is 0), float32."""
    n_actions = model.head.num_action_tokens
    rows = gather_rows(hidden, slot_indices(action_start, n_actions + num_suffix, offset=-1))
    action_logits = lm_head_columns(model, params, rows[:, :n_actions], *action_id_range(settings))
    if not num_suffix:
        return action_logits, None
    suffix = model.apply(params, rows[:, n_actions:], method=DreamVLAModel.lm_logits).astype(jnp.float32)
    return action_logits, suffix


def argmax_action_ids(action_logits: jax.Array, settings: ObjectiveSettings) -> jax.Array:
    """The most likely action id of each action row (logits over the action ids, :func:`split_target_logits`)."""
    return jnp.argmax(action_logits, axis=-1).astype(jnp.int32) + action_id_range(settings)[0]


def commit_step(action_logits, suffix_logits, x, masked, fraction, settings: ObjectiveSettings) -> jax.Array:
    """One maskgit_plus step at temperature 0 (``sampler.denoise_step``) over the target slots x [B, N], whose
    logits come in two widths (:func:`split_target_logits`): every masked slot proposes its argmax token, and
    the ``floor(M · fraction)`` most confident of a row's M masked slots take it (``sampler.commit_proposals``;
    ties: the lower index)."""
    confidence, tokens = propose_tokens(action_logits, None, MASKGIT_ARGMAX)  # temperature 0: no randomness
    tokens = tokens + action_id_range(settings)[0]
    if suffix_logits is not None:
        suffix_confidence, suffix_tokens = propose_tokens(suffix_logits, None, MASKGIT_ARGMAX)
        confidence = jnp.concatenate([confidence, suffix_confidence], axis=1)
        tokens = jnp.concatenate([tokens, suffix_tokens], axis=1)
    return commit_proposals(confidence, tokens, x, masked, fraction, None, MASKGIT_ARGMAX)
