"""Small building blocks shared by the vision tower and the LLM.

Every parameter is created through ``param_init`` so it carries logical axis names (DESIGN.md: one rule
table maps them to mesh axes; model code never names a mesh axis).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype

# Reference init (spec §1.10): Linear / Conv3d / Embedding ~ N(0, 0.02), biases 0, norm weights 1.
default_kernel_init = nn.initializers.normal(stddev=0.02)


def param_init(init, names: Sequence[str | None]):
    """Wrap an initializer so the created param is boxed with logical axis ``names``."""
    return nn.with_logical_partitioning(init, tuple(names))


def _matmul(x, w):
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _weight_grad_cpu(x2, g2):
    # The input's transpose made a buffer of its own: XLA:CPU then runs dW as a plain [in, n]·[n, out] GEMM
    # (YNNPACK) instead of a contraction over both operands' leading dim. The barrier does not stop fusion
    # (XLA:CPU drops it first): the transposing copy may still recompute x's elementwise producer, e.g. the
    # ViT MLP's bias + activation before fc2 (benchmarks/README.md, the variants tried on 2026-11-22).
    return jnp.dot(jax.lax.optimization_barrier(x2.T), g2)


def _weight_grad(x2, g2):
    return jnp.dot(x2.T, g2)


@jax.custom_vjp
def _dense_dot(x, w):
    return _matmul(x, w)


def _dense_dot_fwd(x, w):
    return _matmul(x, w), (x, w)


def _dense_dot_bwd(res, g):
    x, w = res
    dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    dw = jax.lax.platform_dependent(x2, g2, cpu=_weight_grad_cpu, default=_weight_grad)
    return dx.astype(x.dtype), dw.astype(w.dtype)


_dense_dot.defvjp(_dense_dot_fwd, _dense_dot_bwd)


def dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    """``lax.dot_general`` for ``nn.Dense`` (x [..., in] · kernel [in, out]) whose backward, on CPU, computes
    the weight gradient as ``materialized(xᵀ) · g`` (``benchmarks/README.md``, train_step: −10 % step time on
    one core). Same values; other platforms and other contractions use XLA's own gradient."""
    if (precision is not None or preferred_element_type is not None or rhs.ndim != 2
            or dimension_numbers != (((lhs.ndim - 1,), (0,)), ((), ()))):
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    return _dense_dot(lhs, rhs)


def dense(features: int, names: tuple[str | None, str | None], *, use_bias: bool, dtype, param_dtype,
          name: str) -> nn.Dense:
    """A Dense whose kernel ([in, out]) and bias ([out]) carry logical axis names."""
    return nn.Dense(
        features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, name=name, dot_general=dense_dot_general,
        kernel_init=param_init(default_kernel_init, names),
        bias_init=param_init(nn.initializers.zeros_init(), (names[1],)))


class RMSNorm(nn.Module):
    """Qwen2 RMSNorm (spec §1.5): normalize in fp32, cast to the input dtype, *then* multiply by the weight."""

    eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    axis_name: str = "norm"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", param_init(nn.initializers.ones_init(), (self.axis_name,)), (x.shape[-1],),
                           self.param_dtype)
        in_dtype = x.dtype
        xf = x.astype(jnp.float32)
        xf = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        return xf.astype(in_dtype).astype(self.dtype) * scale.astype(self.dtype)


def layer_norm(eps: float, *, dtype, param_dtype, name: str, axis_name: str = "norm") -> nn.LayerNorm:
    """LayerNorm with bias (ViT blocks, merger); statistics in fp32, variance in two passes as torch computes
    it (flax's default E[x²]−E[x]² loses digits when the mean is large)."""
    return nn.LayerNorm(
        epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name, use_fast_variance=False,
        scale_init=param_init(nn.initializers.ones_init(), (axis_name,)),
        bias_init=param_init(nn.initializers.zeros_init(), (axis_name,)))


def quick_gelu(x: jax.Array) -> jax.Array:
    """x·sigmoid(1.702x), the ViT MLP activation."""
    return x * jax.nn.sigmoid(1.702 * x)


def gelu_exact(x: jax.Array) -> jax.Array:
    """erf GELU (merger and projector); not the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def maybe_remat(block_cls, policy: str, static_argnums=()):
    """``nn.remat`` the block class unless ``policy == 'none'``."""
    if policy == "none":
        return block_cls
    return nn.remat(block_cls, policy=REMAT_POLICIES[policy], prevent_cse=True, static_argnums=static_argnums)
