"""The five Dream-VLA training objectives and their action predictors (spec §6.4), on ``DreamVLAModel``.

===================== ============================================== ============================================
objective             training                                       inference (``predict_normalized``)
===================== ============================================== ============================================
``l1``                zero action embeddings; L1RegressionActionHead zeros, one forward, head → actions
                      on the action features; mean |â − a|
``ddim``              ε ~ N, k ~ U{0..T−1}, x_k = add_noise(a, ε, k);  x ~ N, N DDIM steps (49 … 0), each a full
                      projected x_k in the action slots, sinusoid(k)   forward with proj(x) and sinusoid(t)
                      token; mean (ε̂ − ε)²
``flow``              t from the reference sampler, x_t = (1−t)ε+ta; x ~ N, K Euler steps at t = k/K
                      proj(x_t), sinusoid(t); mean (v̂ − (a − ε))²
``discrete_diffusion`` masked diffusion on the C·A + 2 target tokens  58 masks, ``steps`` maskgit_plus
                      (§4 forward process, shift), weighting          steps (temperature 0) → bins → values
                      cart / original / linear / none; Σ w·ℓ / count
``discrete``          zero action embeddings; CE on the C·A + 2       zeros, one forward, argmax → bins → values
                      shifted targets (mean)
===================== ============================================== ============================================

Reference bugs fixed here (each would stop an objective from training or a head from learning):

* **[QUIRK]** ``l1`` and ``discrete`` raise ``NameError`` in the reference's training step (an undefined name
  in a condition); both train here.
* **[QUIRK]** with flow matching the reference never gives the flow head or the noisy-action projector to
  the optimizer (they stay at their random init); here every head and projector is a param of the model
  and is trained (``dreamjax.vla.task`` marks them trainable).
* **[QUIRK]** ``full_mask_ratio`` (first ``floor(ratio·B)`` rows fully masked) reaches only the reference's
  validation call; here it is honoured in training.
* **[QUIRK]** the flow Euler loop runs exactly K steps (``dreamjax.diffusion.continuous``).

Other deliberate differences: computation in the model's dtype with float32 heads' outputs and losses (the
reference casts heads to bf16); at inference the discrete objectives choose action tokens among the action
ids only (the reference's argmax over the whole vocabulary maps any other id to the last bin silently), and
score the action slots over the action columns of ``lm_head`` only (``dreamjax.vla.action_logits``: the tokens
of the full rows with the other columns at float32 min, without computing them); the suffix positions of
discrete diffusion still sample over the whole vocabulary, as the reference, except with one decoding step (the
reference eval's), which reveals every target at once: the suffix cannot change the actions and is not scored.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dreamjax.data.action_tokenizer import ActionTokenizer
from dreamjax.diffusion import continuous
from dreamjax.diffusion.objective import (DEFAULT_CART_Q, DEFAULT_EPS, IGNORE_INDEX, WEIGHTINGS, forward_process,
                                          shift_targets, token_nll, token_weights)
from dreamjax.diffusion.schedule import transfer_fractions
from dreamjax.vla.action_logits import argmax_action_ids, commit_step, split_target_logits
from dreamjax.vla.model import DreamVLAModel, slot_indices

NUM_SUFFIX = 2


@dataclasses.dataclass(frozen=True)
class ObjectiveSettings:
    """Static settings of the objectives (each distinct value compiles its own functions).

    ddim_train_steps / ddim_inference_steps: T and N of the DDIM scheduler (50 / 50 in the reference).
    flow_steps: K Euler steps at inference (4 in the LIBERO eval). discrete_steps: denoising steps of discrete
    diffusion (1 in the eval). reweighting / cart_q / eps / full_mask_ratio: the discrete-diffusion loss.
    mask_token_id: the ``<|mask|>`` id. vocab_len / n_bins: the tokenizer length and number of action tokens
    (its last ids) — needed to decode the discrete objectives' tokens.
    """

    ddim_train_steps: int = continuous.DDIM_TRAIN_STEPS
    ddim_inference_steps: int = continuous.DDIM_TRAIN_STEPS
    flow_steps: int = 4
    discrete_steps: int = 1
    reweighting: str = "cart"
    cart_q: float = DEFAULT_CART_Q
    eps: float = DEFAULT_EPS
    full_mask_ratio: float | None = None
    mask_token_id: int = 151666
    vocab_len: int = 151923
    n_bins: int = 256

    def __post_init__(self):
        if self.reweighting not in WEIGHTINGS:
            raise ValueError(f"reweighting={self.reweighting!r}; expected one of {WEIGHTINGS}")
        if self.full_mask_ratio is not None and not 0.0 <= self.full_mask_ratio <= 1.0:
            raise ValueError(f"full_mask_ratio must be in [0, 1] or None, got {self.full_mask_ratio}")
        if self.flow_steps < 1 or self.discrete_steps < 1:
            raise ValueError(f"flow_steps and discrete_steps must be ≥ 1, got {self.flow_steps}, "
                             f"{self.discrete_steps}")
        continuous.DDIMSchedule(self.ddim_train_steps, self.ddim_inference_steps)  # validates

    @property
    def ddim(self) -> continuous.DDIMSchedule:
        return continuous.DDIMSchedule(self.ddim_train_steps, self.ddim_inference_steps)

    @property
    def action_tokenizer(self) -> ActionTokenizer:
        """Action ids ⇄ values of the discrete objectives (the last ``n_bins`` ids of ``vocab_len``)."""
        return ActionTokenizer(self.vocab_len, self.n_bins)


def _images(batch: Mapping[str, Any]):
    return batch["pixel_values"], batch["patch_positions"], batch["patch_segment_ids"]


def encode_batch(model: DreamVLAModel, params, batch, input_ids=None):
    """Input embeddings of a VLA batch: text (``input_ids``, or the batch's own) with the vision tower's image
    tokens and the proprio token in place (``DreamVLAModel.vla_embed``). Run once per batch: sampling loops
    reuse it at every denoising step."""
    ids = batch["input_ids"] if input_ids is None else input_ids
    return model.apply(params, ids, *_images(batch), batch.get("proprio"), method=DreamVLAModel.vla_embed)


def decode_batch(model, params, embeds, batch, action_embeds=None, time_embed=None):
    """Decoder hidden states over ``encode_batch``'s embeddings, the action-chunk positions given
    ``action_embeds`` (and a timestep embedding for the continuous heads) (``DreamVLAModel.vla_hidden``)."""
    return model.apply(params, embeds, batch["attention_mask"], batch["action_start"], action_embeds, time_embed,
                       method=DreamVLAModel.vla_hidden)


def _head(model, params, hidden, batch):
    feats = model.apply(params, hidden, batch["action_start"], method=DreamVLAModel.action_features)
    return model.apply(params, feats, method=DreamVLAModel.predict_head)


def _zeros_for_actions(model: DreamVLAModel, embeds):
    return jnp.zeros((embeds.shape[0], model.head.num_action_tokens, embeds.shape[-1]), embeds.dtype)


def _noisy_inputs(model, params, noisy, time_values):
    action_embeds = model.apply(params, noisy, method=DreamVLAModel.project_noisy)
    time_embed = model.apply(params, time_values, method=DreamVLAModel.time_embedding)
    return action_embeds, time_embed


# --------------------------------------------------------------------------------------------- losses
def l1_loss(model, params, batch, rng, settings):
    embeds = encode_batch(model, params, batch)
    hidden = decode_batch(model, params, embeds, batch, _zeros_for_actions(model, embeds))
    pred = _head(model, params, hidden, batch)
    loss = jnp.mean(jnp.abs(pred - batch["actions"].astype(jnp.float32)))
    return loss, dict(loss=loss, l1=loss, num_targets=jnp.float32(pred.size))


def ddim_loss(model, params, batch, rng, settings):
    actions = batch["actions"].astype(jnp.float32)
    k_noise, k_time = jax.random.split(rng)
    noise = jax.random.normal(k_noise, actions.shape, jnp.float32)
    t = jax.random.randint(k_time, (actions.shape[0],), 0, settings.ddim_train_steps)
    noisy = continuous.ddim_add_noise(settings.ddim.alphas_cumprod, actions, noise, t)
    embeds = encode_batch(model, params, batch)
    hidden = decode_batch(model, params, embeds, batch, *_noisy_inputs(model, params, noisy, t))
    eps_hat = _head(model, params, hidden, batch)
    loss = jnp.mean((eps_hat - noise) ** 2)
    return loss, dict(loss=loss, mse=loss, num_targets=jnp.float32(eps_hat.size))


def flow_loss(model, params, batch, rng, settings):
    actions = batch["actions"].astype(jnp.float32)
    k_noise, k_time = jax.random.split(rng)
    noise = jax.random.normal(k_noise, actions.shape, jnp.float32)
    t = continuous.flow_sample_time(k_time, (actions.shape[0],))
    x_t, velocity = continuous.flow_interpolate(actions, noise, t)
    embeds = encode_batch(model, params, batch)
    hidden = decode_batch(model, params, embeds, batch, *_noisy_inputs(model, params, x_t, t))
    v_hat = _head(model, params, hidden, batch)
    loss = jnp.mean((v_hat - velocity) ** 2)
    return loss, dict(loss=loss, mse=loss, num_targets=jnp.float32(v_hat.size))


def _target_tokens(model, batch):
    n = model.head.num_action_tokens + NUM_SUFFIX
    return slot_indices(batch["action_start"], n), n


def discrete_diffusion_loss(model, params, batch, rng, settings):
    """Masked diffusion over the C·A + 2 targets (spec §6.4.4): Σ w·ℓ / #masked, weights over length S − 1."""
    labels = batch["labels"]
    masked, p = forward_process(rng, labels != IGNORE_INDEX, settings.eps)
    if settings.full_mask_ratio:
        full_rows = int(np.floor(settings.full_mask_ratio * labels.shape[0]))
        masked = jnp.where((jnp.arange(labels.shape[0]) < full_rows)[:, None], labels != IGNORE_INDEX, masked)
    noised = jnp.where(masked, jnp.asarray(settings.mask_token_id, batch["input_ids"].dtype), batch["input_ids"])
    embeds = encode_batch(model, params, batch, noised)
    hidden = decode_batch(model, params, embeds, batch)
    index, n = _target_tokens(model, batch)
    logits = model.apply(params, hidden, batch["action_start"], n, method=DreamVLAModel.target_logits)
    # Shifted coordinates (position i scores token i + 1), over the first S − 1 columns as the reference.
    shifted = shift_targets(labels, masked)[:, :-1]
    weights_all = token_weights(shifted != IGNORE_INDEX, p, settings.reweighting, settings.cart_q)
    weights = jnp.take_along_axis(weights_all, index - 1, axis=1)
    targets = jnp.take_along_axis(shifted, index - 1, axis=1)
    nll = token_nll(logits, targets)
    valid = targets != IGNORE_INDEX
    count = jnp.sum(valid).astype(jnp.float32)
    loss = jnp.sum(nll * weights) / jnp.maximum(count, 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets) & valid
    return loss, dict(loss=loss, num_targets=count, nll=jnp.sum(nll) / jnp.maximum(count, 1.0),
                      accuracy=jnp.sum(correct) / jnp.maximum(count, 1.0))


def discrete_loss(model, params, batch, rng, settings):
    """One-step discrete (spec §6.4.5): zero action embeddings, CE on the C·A + 2 shifted targets, mean."""
    embeds = encode_batch(model, params, batch)
    hidden = decode_batch(model, params, embeds, batch, _zeros_for_actions(model, embeds))
    index, n = _target_tokens(model, batch)
    logits = model.apply(params, hidden, batch["action_start"], n, method=DreamVLAModel.target_logits)
    targets = jnp.take_along_axis(batch["labels"], index, axis=1)
    nll = token_nll(logits, targets)
    valid = targets != IGNORE_INDEX
    count = jnp.sum(valid).astype(jnp.float32)
    loss = jnp.sum(nll) / jnp.maximum(count, 1.0)
    correct = (jnp.argmax(logits, axis=-1) == targets) & valid
    return loss, dict(loss=loss, num_targets=count, accuracy=jnp.sum(correct) / jnp.maximum(count, 1.0))


LOSSES = {"l1": l1_loss, "ddim": ddim_loss, "flow": flow_loss, "discrete_diffusion": discrete_diffusion_loss,
          "discrete": discrete_loss}
BATCH_KEYS = {
    "l1": ("actions",), "ddim": ("actions",), "flow": ("actions",),
    "discrete_diffusion": ("labels",), "discrete": ("labels",),
}
COMMON_KEYS = ("input_ids", "attention_mask", "action_start", "pixel_values", "patch_positions", "patch_segment_ids",
               "proprio")


def batch_keys(objective: str) -> tuple[str, ...]:
    """The batch keys the loss of ``objective`` reads."""
    return COMMON_KEYS + BATCH_KEYS[objective]


def vla_loss(model: DreamVLAModel, settings: ObjectiveSettings, params, batch: Mapping[str, Any], rng: jax.Array):
    """``(loss, metrics)`` of ``model.head.objective`` on one batch (``dreamjax.data.vla_layout`` keys)."""
    objective = model.head.objective
    missing = [k for k in batch_keys(objective) if k not in batch and not (k == "proprio" and not model.head.use_proprio)]
    if missing:
        raise ValueError(f"VLA batch for objective {objective!r} lacks {missing} (has {sorted(batch)})")
    return LOSSES[objective](model, params, batch, rng, settings)


# --------------------------------------------------------------------------------------------- predictors
def _predict_l1(model, params, batch, rng, settings):
    embeds = encode_batch(model, params, batch)
    hidden = decode_batch(model, params, embeds, batch, _zeros_for_actions(model, embeds))
    return _head(model, params, hidden, batch)


def _predict_ddim(model, params, batch, rng, settings):
    h, sched = model.head, settings.ddim
    embeds = encode_batch(model, params, batch)  # vision tower + proprio once
    x = jax.random.normal(rng, (embeds.shape[0], h.chunk, h.action_dim), jnp.float32)

    def step(x, per_step):
        t, alpha_t, alpha_prev = per_step
        tt = jnp.full((x.shape[0],), t)
        hidden = decode_batch(model, params, embeds, batch, *_noisy_inputs(model, params, x, tt))
        eps_hat = _head(model, params, hidden, batch)
        return continuous.ddim_step(eps_hat, x, alpha_t, alpha_prev), None

    ts = sched.timesteps
    x, _ = jax.lax.scan(step, x, (ts, sched.alphas_cumprod[ts], sched.prev_alphas_cumprod))
    return x


def _predict_flow(model, params, batch, rng, settings):
    h = model.head
    embeds = encode_batch(model, params, batch)
    x = jax.random.normal(rng, (embeds.shape[0], h.chunk, h.action_dim), jnp.float32)

    def step(x, t):
        tt = jnp.full((x.shape[0],), t)
        hidden = decode_batch(model, params, embeds, batch, *_noisy_inputs(model, params, x, tt))
        return continuous.flow_euler_step(x, _head(model, params, hidden, batch), settings.flow_steps), None

    x, _ = jax.lax.scan(step, x, continuous.flow_euler_times(settings.flow_steps))
    return x


def _action_chunks(model, settings, ids):
    """Action ids [B, C·A] → normalized action chunks [B, C, A] (bin centers, ``ActionTokenizer``)."""
    return settings.action_tokenizer.decode_jax(ids).reshape(-1, model.head.chunk, model.head.action_dim)


def _argmax_chunks(model, params, hidden, batch, settings):
    """Every action slot takes its most likely action id at once; the suffix slots are not scored."""
    action_logits, _ = split_target_logits(model, params, hidden, batch["action_start"], settings, 0)
    return _action_chunks(model, settings, argmax_action_ids(action_logits, settings))


def predict_discrete(model, params, batch, rng, settings):
    """One-step discrete (spec §6.4.5): zero action embeddings, one forward, argmax among the action ids."""
    embeds = encode_batch(model, params, batch)
    return _argmax_chunks(model, params, decode_batch(model, params, embeds, batch, _zeros_for_actions(model, embeds)),
                          batch, settings)


def predict_discrete_diffusion(model, params, batch, rng, settings):
    """The reference's ``diffusion_generate`` over the C·A + 2 masked targets (maskgit_plus, temperature 0), the
    action rows scored over the action ids (``action_logits``); ``rng`` is unused (no sampling at temperature 0).

    The vision tower runs once; after each step only the target slots masked before it are re-embedded. One
    step reveals every target at once: the suffix cannot change the actions then and is not scored.
    """
    h = model.head
    index, n = _target_tokens(model, batch)
    rows = jnp.arange(index.shape[0])[:, None]
    canvas = batch["input_ids"].at[rows, index].set(settings.mask_token_id)
    embeds = encode_batch(model, params, batch, canvas)
    if settings.discrete_steps == 1:
        return _argmax_chunks(model, params, decode_batch(model, params, embeds, batch), batch, settings)

    def step(carry, fraction):
        x, embeds = carry
        masked = x == settings.mask_token_id
        hidden = decode_batch(model, params, embeds, batch)
        logits = split_target_logits(model, params, hidden, batch["action_start"], settings, n - h.num_action_tokens)
        new = commit_step(*logits, x, masked, fraction, settings)
        fresh = model.apply(params, new, method=DreamVLAModel.embed_tokens).astype(embeds.dtype)
        current = jnp.take_along_axis(embeds, index[..., None], axis=1)
        embeds = embeds.at[rows, index].set(jnp.where(masked[..., None], fresh, current))
        return (new, embeds), None

    x0 = jnp.full(index.shape, settings.mask_token_id, jnp.int32)
    fractions = jnp.asarray(transfer_fractions(settings.discrete_steps, settings.eps))
    (x, _), _ = jax.lax.scan(step, (x0, embeds), fractions)
    return _action_chunks(model, settings, x[:, :h.num_action_tokens])


PREDICTORS = {"l1": _predict_l1, "ddim": _predict_ddim, "flow": _predict_flow,
              "discrete_diffusion": predict_discrete_diffusion, "discrete": predict_discrete}


@functools.partial(jax.jit, static_argnames=("model", "settings"))
def predict_normalized(params, batch: Mapping[str, Any], rng: jax.Array, *, model: DreamVLAModel,
                       settings: ObjectiveSettings) -> jax.Array:
    """Normalized action chunks [B, C, A] for a batch of inference samples (``vla_layout`` without actions).

    One compiled function per (model, settings, shapes); the vision tower runs once per call, the denoising
    loops (DDIM, flow, discrete diffusion) are ``lax.scan``s of decoder passes.
    """
    return PREDICTORS[model.head.objective](model, params, batch, rng, settings)
