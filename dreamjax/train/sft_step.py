"""A minimal jitted train step for Dream-VL SFT: masked-diffusion loss (``objective.loss_fn``) + an optax
optimizer (AdamW as the reference's HF Trainer: β 0.9/0.999, eps 1e-8, warmup + cosine, grad clip 1.0).

Deliberately small: one device (or whatever sharding the inputs already carry), no gradient accumulation,
no checkpointing. The full training loop (mesh, data sharding, checkpoints, metrics) builds on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dreamjax.diffusion.objective import loss_fn
from dreamjax.train.optimizer import clip_by_global_norm, global_norm

# Keys of an SFT batch (``dreamjax.data.sft``) that the loss reads; anything else stays on the host.
LOSS_KEYS = ("input_ids", "labels", "attention_mask", "position_ids", "pixel_values", "patch_positions",
             "patch_segment_ids")


def adamw(learning_rate: float, total_steps: int, *, warmup_ratio: float = 0.03, weight_decay: float = 0.0,
          b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, clip_norm: float | None = 1.0
          ) -> optax.GradientTransformation:
    """AdamW with linear warmup (``warmup_ratio`` of ``total_steps``) then cosine decay to 0, after global-norm
    clipping — the Dream-VL stage recipe (spec §4 stage table: wd 0, warmup 0.03, cosine, clip 1.0)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be ≥ 1, got {total_steps}")
    warmup = max(1, int(round(warmup_ratio * total_steps)))
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(total_steps, warmup + 1))
    chain = [clip_by_global_norm(clip_norm)] if clip_norm else []
    chain.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
    return optax.chain(*chain)


def make_train_step(model_module, optimizer: optax.GradientTransformation, **loss_kwargs
                    ) -> Callable[[Any, Any, Mapping[str, Any], jax.Array], tuple[Any, Any, dict]]:
    """``step(params, opt_state, batch, rng) -> (params, opt_state, metrics)``, jitted (params and optimizer
    state donated).

    model_module: a ``DreamVLModel``; loss_kwargs go to ``objective.loss_fn`` (weighting, cart_q, eps,
    mask_token_id, freeze_pad_embedding). Only the :data:`LOSS_KEYS` of ``batch`` are passed to the device.
    metrics: ``loss``, ``num_targets`` (masked targets in the batch), ``nll`` (unweighted mean over targets),
    ``grad_norm``.
    """

    def step(params, opt_state, batch, rng):
        def objective(p):
            return loss_fn(p, batch, rng, model_module, **loss_kwargs)

        (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = dict(loss=loss, num_targets=aux["num_targets"],
                       nll=aux["nll_sum"] / jnp.maximum(aux["num_targets"], 1.0),
                       grad_norm=global_norm(grads))
        return params, opt_state, metrics

    jitted = jax.jit(step, donate_argnums=(0, 1))

    def run(params, opt_state, batch, rng):
        return jitted(params, opt_state, {k: batch[k] for k in LOSS_KEYS if k in batch}, rng)

    return run
