"""One jitted train step: (state, batch) → (state, metrics), with explicit in/out shardings and the state
donated.

Inside: the per-step rng ``fold_in(key(seed), step)``; the loss differentiated with respect to the *trained*
part of the variables only (frozen leaves are closed over, so XLA never computes their weight gradients);
optional gradient accumulation over ``accum`` micro-batches (``lax.scan``); global-norm and update masking of
partially trained stacked params; the optax update.

Gradient accumulation. Micro-batch ``a`` takes the samples ``a, a + A, a + 2A, …`` of the global batch (a
strided split, so every device keeps its own rows and no data moves). A token-weighted loss (the task's
metrics include ``num_targets``) is accumulated as ``Σ_a n_a·∇L_a / Σ_a n_a`` — the gradient of the token mean
over the whole global batch, what one big batch would give. The reference (HF Trainer) instead averages the
per-micro-batch means (``Σ_a ∇L_a / A``); with equal token counts the two agree. Losses without
``num_targets`` are averaged uniformly. Each micro-batch draws its noise from ``fold_in(step_rng, a)``
(with ``accum=1`` the step rng itself).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec

from dreamjax import sharding
from dreamjax.train import freeze
from dreamjax.train.distributed import barrier
from dreamjax.train.optimizer import global_norm
from dreamjax.train.state import StatePlan, TrainState


def _micro_batches(batch: dict, accum: int, global_batch: int, data_spec) -> dict:
    """[N, …] arrays (N = k·B for k rows per sample) → [A, N/A, …]: micro-batch a holds samples a, a+A, …"""
    def split(x):
        k = x.shape[0] // global_batch
        y = x.reshape((global_batch // accum, accum, k) + x.shape[1:])
        y = jnp.moveaxis(y, 1, 0).reshape((accum, (global_batch // accum) * k) + x.shape[1:])
        return jax.lax.with_sharding_constraint(y, PartitionSpec(None, data_spec))

    return {k: split(v) for k, v in batch.items()}


def make_train_step(task, optimizer: optax.GradientTransformation, schedule: Callable, plan: StatePlan, mesh,
                    rules, batch_shardings: dict, *, global_batch: int, accum: int = 1, seed: int = 0,
                    donate: bool = True, compiler_options: dict | None = None):
    """The compiled-on-first-call step function ``step(state, batch) -> (state, metrics)``.

    compiler_options: XLA options for the step's compile (``train.compiler_options``, see ``loop.train``)."""
    if accum < 1 or global_batch % accum:
        raise ValueError(f"train.grad_accum={accum} must be ≥ 1 and divide train.batch_size={global_batch}")
    mask = plan.mask
    trained_rows = freeze.row_masks(mask)  # None except for partially trained (stacked) params
    data_spec = sharding.batch_sharding(mesh, rules).spec[0]
    base_key = jax.random.key(seed)

    def grads_of(trained, frozen, batch, rng):
        def objective(tp):
            loss, metrics = task.loss(freeze.combine(tp, frozen), batch, rng)
            return loss, metrics

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(trained)
        return loss, metrics, grads

    def step_fn(state: TrainState, batch: dict):
        rng = jax.random.fold_in(base_key, state.step)
        trained, frozen = freeze.split(state.params, mask)
        if accum == 1:
            loss, metrics, grads = grads_of(trained, frozen, batch, rng)
            metrics = dict(metrics)
        else:
            micro = _micro_batches(batch, accum, global_batch, data_spec)
            zeros = jax.tree_util.tree_map(lambda p: jnp.zeros(p.shape, jnp.float32), trained)

            probe = jax.eval_shape(lambda mb: grads_of(trained, frozen, mb, rng)[1],
                                   jax.tree_util.tree_map(lambda x: x[0], micro))
            weighted = "num_targets" in probe
            names = ["loss"] + [k for k in probe if k != "num_targets"]

            def body(carry, xs):
                g_acc, w_acc, n_acc, sums = carry
                a, mb = xs
                loss, metrics, grads = grads_of(trained, frozen, mb, jax.random.fold_in(rng, a))
                n = metrics["num_targets"].astype(jnp.float32) if weighted else jnp.float32(0.0)
                w = n if weighted else jnp.float32(1.0)
                g_acc = jax.tree_util.tree_map(lambda acc, g: acc + w * g.astype(jnp.float32), g_acc, grads)
                vals = {"loss": loss, **metrics}
                sums = {k: sums[k] + w * vals[k].astype(jnp.float32) for k in names}
                return (g_acc, w_acc + w, n_acc + n, sums), None

            init = (zeros, jnp.float32(0.0), jnp.float32(0.0), {k: jnp.float32(0.0) for k in names})
            (g_acc, w_sum, n_sum, sums), _ = jax.lax.scan(body, init, (jnp.arange(accum), micro))
            denom = jnp.maximum(w_sum, 1e-12)
            grads = jax.tree_util.tree_map(lambda g, p: (g / denom).astype(p.dtype), g_acc, trained)
            metrics = {k: v / denom for k, v in sums.items()}
            loss = metrics.pop("loss")
            if weighted:
                metrics["num_targets"] = n_sum
        grads = freeze.apply_row_masks(grads, trained_rows)
        grad_norm = global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, trained)
        updates = freeze.apply_row_masks(updates, trained_rows)
        trained = optax.apply_updates(trained, updates)
        new_state = TrainState(step=state.step + 1, params=freeze.combine(trained, frozen), opt_state=opt_state)
        metrics.update(loss=loss, grad_norm=grad_norm, lr=schedule(state.step))
        return new_state, metrics

    replicated = NamedSharding(mesh, PartitionSpec())
    jitted = jax.jit(step_fn, in_shardings=(plan.shardings, batch_shardings), out_shardings=(plan.shardings, replicated),
                     donate_argnums=(0,) if donate else ())

    compiled = {}

    def run(state, batch):
        """Compiles on the first call, then (multi-process) waits for every process before running it."""
        if "step" not in compiled:
            lowered = _lower(jitted, mesh, rules, state, batch)
            compiled["step"] = lowered.compile(compiler_options=compiler_options or None)
            barrier("dreamjax-train-step-compiled")
        return compiled["step"](state, batch)

    run.jitted = jitted
    run.lower = lambda state, batch: _lower(jitted, mesh, rules, state, batch)
    return run


def _lower(jitted, mesh, rules, state, batch) -> Any:
    with sharding.activation_sharding(mesh, rules):
        return jitted.lower(state, batch)
