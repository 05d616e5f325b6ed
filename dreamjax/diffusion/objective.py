"""Dream's masked-diffusion training objective (spec §4, verified against ``llava_dream.py``).

One training example goes through:

1. **Forward process** (:func:`forward_process`): per sequence ``t ~ U(0, 1)`` and ``p = (1 − ε)·t + ε``
   (ε = 1e-3); every *maskable* position (``labels != −100``) is masked independently with probability
   ``p``. A masked position's input is the embedding of the mask token (the ids are replaced by
   ``mask_token_id`` before the embedding lookup).
2. **Targets and shift** (:func:`shift_targets`): labels survive only at masked positions, then move one to
   the left: the logit at position ``i`` is trained on the token at ``i + 1`` (Dream's AR-initialised shift,
   spec §11.1). The model itself is bidirectional.
3. **Per-token cross-entropy in fp32** (:func:`token_nll`) over the loss mask (shifted targets ≠ −100).
4. **Weighting** (:func:`token_weights`): ``cart`` (default, q = 0.1), ``original`` (1/p), ``linear``
   (1 − p) or ``none``.
5. **Token mean over the batch**: Σ weighted losses / number of loss-mask tokens in the batch.

:func:`loss_fn` runs all of it on a ``DreamVLModel`` (the vision tower included) and is what a train step
differentiates. The maskable set of Dream-VL SFT data is built on the host by
:mod:`dreamjax.data.sft_labels` (data code; the objective only reads ``labels``).

Reference behaviours kept or changed, each marked **[QUIRK]** where it lives:

* the first position can be maskable (``<|im_start|>`` is a structural target) and then be masked, but
  after the shift no logit predicts it: it is masked in the input and contributes no loss (kept);
* ``original`` divides by ``p`` (the masking probability), not by ``t`` (kept);
* CART treats *every* position that is not a masked target as clean context — prompt, image features,
  unmasked response tokens, attention-masked padding and the last column (kept);
* the reference materialises a 50000×50000 fp32 CART matrix (10 GB; caps sequences at 50000); here the
  weights are an O(L) two-sided geometric recurrence (a 1-D convolution with the same kernel), no L×L;
* a batch with no masked target divides 0 by 0 (NaN loss) in the reference; here the loss is 0 then;
* ``embed_tokens`` has ``padding_idx = pad_token_id`` in PyTorch: that row never gets a gradient. Offered
  as ``freeze_pad_embedding=True`` (a stop-gradient on lookups of the pad row).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dreamjax.models.llm import ACT

IGNORE_INDEX = -100
WEIGHTINGS = ("cart", "original", "linear", "none")
DEFAULT_EPS = 1e-3
DEFAULT_CART_Q = 0.1  # the reference's ``cart_p=0.1`` (its function default 0.8 is overridden)


# --------------------------------------------------------------------------------------------- forward process
def forward_process(rng: jax.Array, maskable: jax.Array, eps: float = DEFAULT_EPS) -> tuple[jax.Array, jax.Array]:
    """Sample which positions are masked.

    maskable: [B, S] bool (``labels != −100``). Returns ``(masked [B, S] bool, p [B] float32)`` with one
    ``t ~ U(0, 1)`` per row, ``p = (1 − eps)·t + eps`` and ``masked = (u < p) & maskable``, ``u ~ U[0, 1)``
    per position.
    """
    b, s = maskable.shape
    k_t, k_u = jax.random.split(rng)
    t = jax.random.uniform(k_t, (b,), jnp.float32)
    p = (1.0 - eps) * t + eps
    u = jax.random.uniform(k_u, (b, s), jnp.float32)
    return (u < p[:, None]) & maskable.astype(bool), p


def noise_inputs(input_ids: jax.Array, masked: jax.Array, mask_token_id: int) -> jax.Array:
    """Input ids with the masked positions replaced by the mask token (their embedding is the mask embedding).

    Image-pad positions are never maskable (their labels are −100), so image features still splice in."""
    return jnp.where(masked, jnp.asarray(mask_token_id, input_ids.dtype), input_ids)


def shift_targets(labels: jax.Array, masked: jax.Array) -> jax.Array:
    """Targets aligned with the logits: ``out[:, i] = labels[:, i + 1]`` where position i + 1 is masked.

    Labels at unmasked positions become −100 first; the last column is −100. **[QUIRK]** a masked position 0
    has no target (no logit scores it) — as in the reference.
    """
    kept = jnp.where(masked, labels, IGNORE_INDEX)
    pad = jnp.full((labels.shape[0], 1), IGNORE_INDEX, labels.dtype)
    return jnp.concatenate([kept[:, 1:], pad], axis=1)


# --------------------------------------------------------------------------------------------- per-token terms
def token_nll(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """``−log softmax(logits.float())[target]`` per position, [B, S] float32; 0 where ``target == −100``.

    The value is ``jax.nn.log_softmax`` picked at the target, op for op. The gradient is written out
    (``softmax − one_hot`` times the cotangent, one elementwise pass over the vocabulary): autodiff of
    ``log_softmax`` + ``take_along_axis`` builds a zero buffer, scatters into it and (on XLA:CPU) computes
    the logit gradient twice in two layouts, ~8 % of a small model's train step.
    """
    valid = targets != IGNORE_INDEX
    return _nll(logits.astype(jnp.float32), jnp.where(valid, targets, 0).astype(jnp.int32), valid)


@jax.custom_vjp
def _nll(x, t, valid):
    return _nll_fwd(x, t, valid)[0]


def _nll_fwd(x, t, valid):
    shifted = x - jnp.max(x, axis=-1, keepdims=True)
    log_s = jnp.log(jnp.sum(jnp.exp(shifted), axis=-1, keepdims=True))
    picked = jnp.take_along_axis(shifted, t[..., None], axis=-1)
    return jnp.where(valid, -(picked - log_s)[..., 0], 0.0), (shifted, log_s, t, valid)


def _nll_bwd(res, g):
    shifted, log_s, t, valid = res
    g = jnp.where(valid, g, 0.0)[..., None]
    one_hot = jax.lax.broadcasted_iota(jnp.int32, shifted.shape, shifted.ndim - 1) == t[..., None]
    dx = g * (jnp.exp(shifted - log_s) - one_hot.astype(shifted.dtype))
    return dx, None, None


_nll.defvjp(_nll_fwd, _nll_bwd)


def _geometric_prefix(x: jax.Array, r: float) -> jax.Array:
    """``y[:, j] = Σ_{i ≤ j} x[:, i]·r^(j − i)`` along axis 1 (the recurrence y_j = r·y_{j−1} + x_j), computed
    with a parallel associative scan (log depth; every factor ≤ 1, so it is numerically tame)."""
    decay = jnp.full_like(x, r)

    def combine(left, right):
        a1, b1 = left
        a2, b2 = right
        return a1 * a2, a2 * b1 + b2

    return jax.lax.associative_scan(combine, (decay, x), axis=1)[1]


def cart_weights(loss_mask: jax.Array, q: float = DEFAULT_CART_Q) -> jax.Array:
    """Context-adaptive reweighting (CART) per position, [B, S] float32 in [0, 1].

    With ``c = 1 − loss_mask`` (1 at every position that is not a masked target) the reference computes
    ``w_j = Σ_i c_i·W[i, j]`` with ``W[i, j] = 0.5·q·(1 − q)^(|i − j| − 1)`` for i ≠ j, ``W[i, i] = 0``, and
    zeroes ``w`` where ``c_j = 1``. That is a 1-D convolution of ``c`` with a two-sided geometric kernel; it
    splits into a left and a right geometric running sum, each an O(L) recurrence, so no L×L matrix is
    built. A masked target surrounded by clean tokens gets ≈ 1, one deep inside a masked span ≈ 0.
    **[QUIRK]** attention-masked padding and the last column count as clean context (as in the reference).
    """
    if not 0.0 < q <= 1.0:
        raise ValueError(f"cart q must be in (0, 1], got {q}")
    target = loss_mask.astype(bool)
    clean = (~target).astype(jnp.float32)
    r = 1.0 - q
    zero = jnp.zeros_like(clean[:, :1])
    # left[j] = Σ_{i<j} c_i r^(j−1−i): the inclusive prefix sum, shifted right by one.
    left = jnp.concatenate([zero, _geometric_prefix(clean, r)[:, :-1]], axis=1)
    # right[j] = Σ_{i>j} c_i r^(i−j−1): the same on the reversed sequence.
    right = jnp.concatenate([zero, _geometric_prefix(clean[:, ::-1], r)[:, :-1]], axis=1)[:, ::-1]
    return jnp.where(target, 0.5 * q * (left + right), 0.0)


def token_weights(loss_mask: jax.Array, p: jax.Array, weighting: str = "cart",
                  cart_q: float = DEFAULT_CART_Q) -> jax.Array:
    """Weight of each position's loss, [B, S] float32, 0 outside ``loss_mask``.

    ``cart``: :func:`cart_weights` (no 1/t factor); ``original``: 1/p; ``linear``: 1 − p; ``none``: 1, with
    ``p`` [B] the per-row masking probability. **[QUIRK]** ``original`` is 1/p, not 1/t, as in the reference.
    """
    mask = loss_mask.astype(bool)
    p = p.astype(jnp.float32)[:, None]
    if weighting == "cart":
        return cart_weights(mask, cart_q)
    if weighting == "original":
        w = 1.0 / p
    elif weighting == "linear":
        w = 1.0 - p
    elif weighting == "none":
        w = jnp.ones_like(p)
    else:
        raise ValueError(f"weighting={weighting!r}; expected one of {WEIGHTINGS}")
    return jnp.where(mask, w, 0.0)


def masked_diffusion_loss(logits: jax.Array, labels: jax.Array, masked: jax.Array, p: jax.Array, *,
                          weighting: str = "cart", cart_q: float = DEFAULT_CART_Q) -> tuple[jax.Array, dict]:
    """The loss from the model's logits on the noised input (steps 4–7 of spec §4).

    logits [B, S, V] (any float dtype; upcast to fp32), labels [B, S] (−100 = not maskable), masked [B, S]
    from :func:`forward_process`, p [B]. Returns ``(loss, aux)``: loss = Σ_k w_k·ℓ_k / Σ_k loss_mask_k
    over the whole batch (a token mean, not a per-sequence mean). **[QUIRK]** the reference returns NaN when
    the batch has no masked target; here the denominator is at least 1 (loss 0).
    aux: ``num_targets``, ``weighted_sum``, ``nll_sum`` (unweighted), ``weights`` and ``nll`` ([B, S]).
    """
    targets = shift_targets(labels, masked)
    loss_mask = targets != IGNORE_INDEX
    nll = token_nll(logits, targets)
    weights = token_weights(loss_mask, p, weighting, cart_q)
    weighted_sum = jnp.sum(nll * weights)
    num_targets = jnp.sum(loss_mask).astype(jnp.float32)
    loss = weighted_sum / jnp.maximum(num_targets, 1.0)
    aux = dict(num_targets=num_targets, weighted_sum=weighted_sum, nll_sum=jnp.sum(nll), weights=weights, nll=nll)
    return loss, aux


# --------------------------------------------------------------------------------------------- model entry
def _noised_logits(module, input_ids, segment_ids, position_ids, images, videos, freeze_row):
    """Inside ``model.apply``: vision tower → embed (mask ids → mask embedding) → splice → decoder → logits."""
    image_features = module.encode_images(*images) if images is not None else None
    video_features = module.encode_images(*videos) if videos is not None else None
    embeds = nn.with_logical_constraint(module.embed(input_ids, image_features, video_features), ACT)
    if freeze_row is not None:  # PyTorch padding_idx: lookups of this row pass no gradient to the table
        embeds = jnp.where((input_ids == freeze_row)[..., None], jax.lax.stop_gradient(embeds), embeds)
    return module.lm_logits(module.decode(embeds, segment_ids, position_ids))


def loss_fn(params: Any, batch: Mapping[str, Any], rng: jax.Array, model, *, weighting: str = "cart",
            cart_q: float = DEFAULT_CART_Q, eps: float = DEFAULT_EPS, mask_token_id: int | None = None,
            freeze_pad_embedding: bool = False) -> tuple[jax.Array, dict]:
    """Masked-diffusion loss of ``model`` (a ``DreamVLModel``) on one batch; differentiable in ``params``.

    batch: ``input_ids`` [B, S]; ``labels`` [B, S] (−100 = not maskable, e.g. from ``dreamjax.data.sft_labels``);
    optional ``attention_mask`` [B, S] (default all ones), ``position_ids`` [3, B, S] (default 0, 1, 2, …
    over attended tokens), ``pixel_values`` + ``patch_positions`` + ``patch_segment_ids`` (the layout of
    ``DreamVL.prepare_inputs``) and the same three ``*_videos`` / ``video_*`` keys.
    mask_token_id defaults to ``model.config.mask_token_id``; ``freeze_pad_embedding`` reproduces PyTorch's
    ``padding_idx``: no gradient into the ``pad_token_id`` row of ``embed_tokens``.

    Returns ``(loss, aux)`` for ``jax.value_and_grad(loss_fn, has_aux=True)``; aux as
    :func:`masked_diffusion_loss` plus ``masked`` [B, S] and ``p`` [B]. Note: the reference normalises per
    micro-batch (HF Trainer averages accumulated micro-batch losses); ``aux['weighted_sum']`` and
    ``aux['num_targets']`` allow a global token mean instead.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting={weighting!r}; expected one of {WEIGHTINGS}")
    for key in ("input_ids", "labels"):
        if key not in batch:
            raise ValueError(f"batch has no {key!r} (keys: {sorted(batch)})")
    c = model.config
    mask_id = c.mask_token_id if mask_token_id is None else mask_token_id
    input_ids = jnp.asarray(batch["input_ids"])
    labels = jnp.asarray(batch["labels"])
    if labels.shape != input_ids.shape:
        raise ValueError(f"labels shape {labels.shape} != input_ids shape {input_ids.shape}")
    attention_mask = batch.get("attention_mask")
    segment_ids = (jnp.ones(input_ids.shape, jnp.int32) if attention_mask is None
                   else jnp.asarray(attention_mask).astype(jnp.int32))
    position_ids = batch.get("position_ids")
    if position_ids is None:
        valid = segment_ids != 0
        pos = jnp.where(valid, jnp.cumsum(valid, axis=-1) - 1, 1)
        position_ids = jnp.broadcast_to(pos[None], (3,) + pos.shape)

    masked, p = forward_process(rng, labels != IGNORE_INDEX, eps)
    noised = noise_inputs(input_ids, masked, mask_id)
    images = videos = None
    if batch.get("pixel_values") is not None:
        images = (batch["pixel_values"], batch["patch_positions"], batch["patch_segment_ids"])
    if batch.get("pixel_values_videos") is not None:
        videos = (batch["pixel_values_videos"], batch["video_patch_positions"], batch["video_patch_segment_ids"])
    freeze_row = c.pad_token_id if freeze_pad_embedding else None
    logits = model.apply(params, noised, segment_ids, position_ids, images, videos, freeze_row,
                         method=_noised_logits)
    loss, aux = masked_diffusion_loss(logits, labels, masked, p, weighting=weighting, cart_q=cart_q)
    aux.update(masked=masked, p=p)
    return loss, aux
