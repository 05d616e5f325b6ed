"""Dream-VLA continuous action heads and input projectors (spec §6.5), as pure Flax modules.

Shapes (D = LLM hidden size, A = action dim, C = chunk length, P = proprio dim):

* ``MLPResNet(num_blocks, hidden, out)``: LayerNorm(in) → Linear(in→hidden) → ReLU →
  ``num_blocks × [x + ReLU(Linear(LayerNorm(x)))]`` → LayerNorm(hidden) → Linear(hidden→out).
  LayerNorm eps 1e-5 (PyTorch default), every Linear has a bias.
* ``L1RegressionActionHead`` / ``DiffusionActionHead`` (noise predictor) / ``FlowMatchingActionHead``
  (flow predictor): ``MLPResNet(2, A·D, D, A)`` applied to action hidden states (B, C, A·D) → (B, C, A).
  ``group_action_tokens`` turns the per-token features (B, C·A, D) into that layout, as the reference does.
* ``ProprioProjector``: Linear(P→D) → exact (erf) GELU → Linear(D→D).
* ``NoisyActionProjector``: Linear(1→D) → exact GELU → Linear(D→D), applied to (B, C·A, 1).
* ``sinusoidal_embedding(x, dim)``: the timestep encoder of the DDIM and flow heads.

Param names mirror the PyTorch state-dict keys, so ``conversion/heads.py`` is a one-to-one table:
``model.mlp_resnet_blocks.0.ffn.1.weight`` ↔ ``model/mlp_resnet_blocks_0/ffn_1/kernel``.

Init follows PyTorch's defaults (spec §1.10: heads use them): Linear weight and bias ~ U(±1/√fan_in),
LayerNorm 1/0.

Logical axis names used on params (add them to the rule table in ``dreamjax/sharding.py``):

* ``action_in``      MLPResNet input features (A·D): layer_norm1, fc1 rows;
* ``action_hidden``  MLPResNet hidden width (D): fc1 columns, block LayerNorms and block Linear outputs,
  layer_norm2, fc2 rows;
* ``action_mlp``     input axis of the residual-block Linear (D);
* ``action_io``      small feature axes that are never worth sharding: head outputs (A) and the projector
  inputs (P, or 1).

The projectors' D axes use the backbone's ``mlp`` / ``embed`` names, like Dream-VL's ``Projector``.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dreamjax.models.layers import gelu_exact, layer_norm, param_init

LAYER_NORM_EPS = 1e-5


def _torch_uniform(fan_in: int):
    """U(−1/√fan_in, 1/√fan_in): PyTorch's default for nn.Linear weight (kaiming_uniform a=√5) and bias."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def torch_linear(features: int, fan_in: int, names: tuple[str, str], *, dtype, param_dtype, name: str) -> nn.Dense:
    """nn.Dense (kernel [in, out], bias [out]) with PyTorch's default init and logical axis names."""
    return nn.Dense(features, use_bias=True, dtype=dtype, param_dtype=param_dtype, name=name,
                    kernel_init=param_init(_torch_uniform(fan_in), names),
                    bias_init=param_init(_torch_uniform(fan_in), (names[1],)))


def torch_layer_norm(axis_name: str, *, dtype, param_dtype, name: str) -> nn.LayerNorm:
    """PyTorch nn.LayerNorm defaults: eps 1e-5, two-pass variance (``layers.layer_norm``)."""
    return layer_norm(LAYER_NORM_EPS, dtype=dtype, param_dtype=param_dtype, name=name, axis_name=axis_name)


class MLPResNetBlock(nn.Module):
    """``x + ReLU(Linear(LayerNorm(x)))``; torch ``ffn = Sequential(LayerNorm, Linear, ReLU)``."""

    dim: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = torch_layer_norm("action_hidden", name="ffn_0", **kw)(x)
        h = torch_linear(self.dim, self.dim, ("action_mlp", "action_hidden"), name="ffn_1", **kw)(h)
        return x + nn.relu(h)


class MLPResNet(nn.Module):
    """Spec §6.5 ``MLPResNet(num_blocks, in, hidden, out)``; ``in_dim`` is fixed so init needs no data."""

    num_blocks: int
    in_dim: int
    hidden: int
    out: int
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        if x.shape[-1] != self.in_dim:
            raise ValueError(f"MLPResNet: input feature size {x.shape[-1]} != {self.in_dim} (shape {x.shape})")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = torch_layer_norm("action_in", name="layer_norm1", **kw)(x)
        x = nn.relu(torch_linear(self.hidden, self.in_dim, ("action_in", "action_hidden"), name="fc1", **kw)(x))
        for i in range(self.num_blocks):
            x = MLPResNetBlock(self.hidden, name=f"mlp_resnet_blocks_{i}", **kw)(x)
        x = torch_layer_norm("action_hidden", name="layer_norm2", **kw)(x)
        return torch_linear(self.out, self.hidden, ("action_hidden", "action_io"), name="fc2", **kw)(x)


def group_action_tokens(hidden: jax.Array, action_dim: int) -> jax.Array:
    """(B, C·A, D) action-token hidden states → (B, C, A·D): the A per-timestep token features concatenated
    (row-major, as the reference's ``reshape(batch, NUM_ACTIONS_CHUNK, -1)``)."""
    b, n, d = hidden.shape
    if n % action_dim:
        raise ValueError(f"{n} action tokens are not a whole number of {action_dim}-dim actions")
    return hidden.reshape(b, n // action_dim, action_dim * d)


def sinusoidal_embedding(x: jax.Array, dim: int) -> jax.Array:
    """``concat(sin(x·f), cos(x·f))`` with ``f_k = exp(−k·ln(10000)/(half−1))``, k < half = dim/2 (sin first).

    ``x`` (...,) of integer DDIM timesteps or continuous flow times (not rescaled) → (..., dim) float32.
    The exponent is formed as the reference does (``k · −ln 10000`` then ``/ (half−1)``, in fp32); the
    frequencies are host constants, exp taken in float64 and rounded once to fp32, so they do not depend on
    the backend's exp (the reference's fp32 exp agrees to within 1 ulp).
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"sinusoidal_embedding: dim must be even and ≥ 4, got {dim}")
    half = dim // 2
    exponent = np.arange(half, dtype=np.float32) * np.float32(-math.log(10000.0)) / np.float32(half - 1)
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)
    args = jnp.asarray(x).astype(jnp.float32)[..., None] * freqs
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class _ActionHeadBase(nn.Module):
    hidden_size: int  # D
    action_dim: int = 7  # A
    num_blocks: int = 2
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    def _mlp_resnet_args(self) -> dict:
        return dict(num_blocks=self.num_blocks, in_dim=self.action_dim * self.hidden_size, hidden=self.hidden_size,
                    out=self.action_dim, dtype=self.dtype, param_dtype=self.param_dtype)


class L1RegressionActionHead(_ActionHeadBase):
    """L1 head: ``model = MLPResNet(2, A·D, D, A)``; (B, C, A·D) → actions (B, C, A)."""

    @nn.compact
    def __call__(self, action_hidden):
        return MLPResNet(**self._mlp_resnet_args(), name="model")(action_hidden)


class _Predictor(nn.Module):
    """The reference's ``NoisePredictionModel`` / flow predictor: a holder of one ``mlp_resnet``."""

    mlp_args: dict

    @nn.compact
    def __call__(self, x):
        return MLPResNet(**self.mlp_args, name="mlp_resnet")(x)


class DiffusionActionHead(_ActionHeadBase):
    """DDIM head: ``noise_predictor.mlp_resnet``; (B, C, A·D) → predicted noise ε̂ (B, C, A).

    ``time_embedding(k)`` is the timestep token (sinusoid of the integer timestep, D dims).
    """

    @nn.compact
    def __call__(self, action_hidden):
        return _Predictor(self._mlp_resnet_args(), name="noise_predictor")(action_hidden)

    def time_embedding(self, t):
        return sinusoidal_embedding(t, self.hidden_size)


class FlowMatchingActionHead(_ActionHeadBase):
    """Flow-matching head: ``flow_predictor.mlp_resnet``; (B, C, A·D) → velocity v̂ (B, C, A).

    ``time_embedding(t)`` encodes the continuous t ∈ [0, 1] as is (spec §11.20).
    """

    @nn.compact
    def __call__(self, action_hidden):
        return _Predictor(self._mlp_resnet_args(), name="flow_predictor")(action_hidden)

    def time_embedding(self, t):
        return sinusoidal_embedding(t, self.hidden_size)


def _two_layer_projector(x, in_dim: int, hidden_size: int, dtype, param_dtype, who: str):
    """fc1 (in→D) → exact GELU → fc2 (D→D), as both reference projectors."""
    if x.shape[-1] != in_dim:
        raise ValueError(f"{who}: input feature size {x.shape[-1]} != {in_dim} (shape {x.shape})")
    kw = dict(dtype=dtype, param_dtype=param_dtype)
    x = torch_linear(hidden_size, in_dim, ("action_io", "mlp"), name="fc1", **kw)(x)
    return torch_linear(hidden_size, hidden_size, ("mlp", "embed"), name="fc2", **kw)(gelu_exact(x))


class ProprioProjector(nn.Module):
    """Proprio state (B, P) → one prefix embedding (B, D): fc1 → exact GELU → fc2."""

    hidden_size: int  # D
    proprio_dim: int  # P
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, proprio):
        return _two_layer_projector(proprio, self.proprio_dim, self.hidden_size, self.dtype, self.param_dtype,
                                    "ProprioProjector")


class NoisyActionProjector(nn.Module):
    """Noisy action scalars (B, C·A, 1) → embeddings (B, C·A, D): fc1 → exact GELU → fc2."""

    hidden_size: int  # D
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, noisy_actions):
        return _two_layer_projector(noisy_actions, 1, self.hidden_size, self.dtype, self.param_dtype,
                                    "NoisyActionProjector")
