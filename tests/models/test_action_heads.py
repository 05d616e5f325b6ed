"""Action heads and projectors (spec §6.5) against an independent numpy implementation and against the same
modules built in PyTorch from nn.Linear / nn.LayerNorm / nn.GELU, weights passed through conversion/heads.py.

Tolerance (fp32): max |flax − ref| / max |ref| ≤ 1e-6 (numpy reference computed in float64 from the fp32
params; torch in fp32).
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conversion.heads import build_module, params_to_head_state_dict
from dreamjax.models import action_heads as ah

torch = pytest.importorskip("torch")

D, A, C, P, B = 32, 7, 8, 8, 2
TOL = 1e-6
AXIS_NAMES = {"action_in", "action_hidden", "action_mlp", "action_io", "mlp", "embed"}
HEADS = {"l1": ah.L1RegressionActionHead, "ddim": ah.DiffusionActionHead, "flow": ah.FlowMatchingActionHead}


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ---------------------------------------------------------------- numpy reference (float64)

def np_layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def np_linear(x, p):  # p: {"kernel": [in, out], "bias": [out]}
    return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def np_gelu(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def np_mlp_resnet(x, p):
    f = lambda q: {k: np.asarray(v, np.float64) for k, v in q.items()}
    x = np.maximum(np_linear(np_layer_norm(x, **_ln(f(p["layer_norm1"]))), p["fc1"]), 0)
    i = 0
    while f"mlp_resnet_blocks_{i}" in p:
        blk = p[f"mlp_resnet_blocks_{i}"]
        x = x + np.maximum(np_linear(np_layer_norm(x, **_ln(f(blk["ffn_0"]))), blk["ffn_1"]), 0)
        i += 1
    return np_linear(np_layer_norm(x, **_ln(f(p["layer_norm2"]))), p["fc2"])


def _ln(q):
    return {"w": q["scale"], "b": q["bias"]}


def np_projector(x, p):
    return np_linear(np_gelu(np_linear(x, p["fc1"])), p["fc2"])


def np_sinusoid(x, dim):
    half = dim // 2
    exponent = np.arange(half, dtype=np.float32) * np.float32(-math.log(10000.0)) / np.float32(half - 1)  # fp32
    freqs = np.exp(exponent.astype(np.float64)).astype(np.float32)  # correctly rounded
    args = np.asarray(x, np.float32)[..., None] * freqs
    return np.concatenate([np.sin(args), np.cos(args)], -1)


# ---------------------------------------------------------------- torch reference modules (spec §6.5 layout)

class TorchMLPResNetBlock(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ffn = torch.nn.Sequential(torch.nn.LayerNorm(dim), torch.nn.Linear(dim, dim), torch.nn.ReLU())

    def forward(self, x):
        return x + self.ffn(x)


class TorchMLPResNet(torch.nn.Module):
    def __init__(self, num_blocks, in_dim, hidden, out):
        super().__init__()
        self.layer_norm1, self.fc1 = torch.nn.LayerNorm(in_dim), torch.nn.Linear(in_dim, hidden)
        self.relu = torch.nn.ReLU()
        self.mlp_resnet_blocks = torch.nn.ModuleList([TorchMLPResNetBlock(hidden) for _ in range(num_blocks)])
        self.layer_norm2, self.fc2 = torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, out)

    def forward(self, x):
        x = self.relu(self.fc1(self.layer_norm1(x)))
        for blk in self.mlp_resnet_blocks:
            x = blk(x)
        return self.fc2(self.layer_norm2(x))


class TorchPredictor(torch.nn.Module):
    def __init__(self, d, a):
        super().__init__()
        self.mlp_resnet = TorchMLPResNet(2, a * d, d, a)

    def forward(self, x):
        return self.mlp_resnet(x)


class TorchHead(torch.nn.Module):
    """L1: ``model``; DDIM: ``noise_predictor.mlp_resnet``; flow: ``flow_predictor.mlp_resnet``."""

    def __init__(self, kind, d=D, a=A):
        super().__init__()
        self.kind = kind
        if kind == "l1":
            self.model = TorchMLPResNet(2, a * d, d, a)
        else:
            setattr(self, {"ddim": "noise_predictor", "flow": "flow_predictor"}[kind], TorchPredictor(d, a))

    def forward(self, x):
        return {"l1": lambda: self.model(x), "ddim": lambda: self.noise_predictor(x),
                "flow": lambda: self.flow_predictor(x)}[self.kind]()


class TorchProjector(torch.nn.Module):
    def __init__(self, in_dim, d=D):
        super().__init__()
        self.fc1, self.fc2, self.act_fn1 = torch.nn.Linear(in_dim, d), torch.nn.Linear(d, d), torch.nn.GELU()

    def forward(self, x):
        return self.fc2(self.act_fn1(self.fc1(x)))


def torch_module(component, kind=None, d=D, a=A, p=P):
    if component == "action_head":
        return TorchHead(kind, d, a)
    return TorchProjector(p if component == "proprio_projector" else 1, d)


def load_into_torch(module, state_dict):
    """numpy state dict (any dtype ml_dtypes/numpy) → the torch module, strictly."""
    from conversion.heads import numpy_to_tensor
    module.load_state_dict({k: numpy_to_tensor(v).float() for k, v in state_dict.items()}, strict=True)
    return module.eval()


# ---------------------------------------------------------------- fixtures

CASES = [("action_head", "l1"), ("action_head", "ddim"), ("action_head", "flow"),
         ("proprio_projector", None), ("noisy_action_projector", None)]


def input_shape(component):
    shapes = {"action_head": (B, C, A * D), "proprio_projector": (B, P), "noisy_action_projector": (B, C * A, 1)}
    return shapes[component]


def random_params(component, kind, seed=0):
    """Flax init, then every leaf (LayerNorm 1/0 included) replaced by random values."""
    module = build_module(component, kind=kind, hidden_size=D, action_dim=A, proprio_dim=P)
    params = nn.meta.unbox(module.init(jax.random.key(seed), jnp.zeros(input_shape(component)))["params"])
    rng = np.random.default_rng(seed)
    params = jax.tree.map(lambda x: (rng.standard_normal(x.shape) * 0.3).astype(np.float32), params)
    return module, params


@pytest.mark.parametrize("component,kind", CASES)
def test_matches_numpy_and_torch(component, kind):
    module, params = random_params(component, kind)
    x = np.random.default_rng(1).standard_normal(input_shape(component)).astype(np.float32)
    out = np.asarray(module.apply({"params": params}, x))
    if component == "action_head":
        root = {"l1": lambda: params["model"], "ddim": lambda: params["noise_predictor"]["mlp_resnet"],
                "flow": lambda: params["flow_predictor"]["mlp_resnet"]}[kind]()
        ref = np_mlp_resnet(x.astype(np.float64), root)
        assert out.shape == (B, C, A)
    else:
        ref = np_projector(x.astype(np.float64), params)
        assert out.shape == input_shape(component)[:-1] + (D,)
    assert rel_err(out, ref) <= TOL

    tm = load_into_torch(torch_module(component, kind), params_to_head_state_dict(component, params))
    with torch.no_grad():
        tout = tm(torch.from_numpy(x)).numpy()
    assert rel_err(out, tout) <= TOL


def test_heads_take_grouped_action_tokens():
    """(B, C·A, D) token features → (B, C, A·D), the reference's reshape(batch, chunk, -1)."""
    h = np.random.default_rng(0).standard_normal((B, C * A, D)).astype(np.float32)
    grouped = np.asarray(ah.group_action_tokens(jnp.asarray(h), A))
    np.testing.assert_array_equal(grouped, torch.from_numpy(h).reshape(B, C, -1).numpy())
    np.testing.assert_array_equal(grouped[1, 2, 3 * D:4 * D], h[1, 2 * A + 3])
    with pytest.raises(ValueError, match="whole number"):
        ah.group_action_tokens(jnp.zeros((1, 10, D)), A)


def test_wrong_input_width_is_an_error():
    module, params = random_params("action_head", "l1")
    with pytest.raises(ValueError, match="input feature size"):
        module.apply({"params": params}, jnp.zeros((B, C * A, D)))  # forgot group_action_tokens


@pytest.mark.parametrize("dim", [32, 3584])
def test_sinusoidal_embedding(dim):
    """Integer DDIM timesteps and continuous flow times, vs numpy (|Δ| ≤ 1e-6) and vs the reference formula in
    torch (|Δ| ≤ 5e-6: torch's fp32 exp can be 1 ulp off the correctly rounded frequency, times |x| ≤ 49)."""
    for x in (np.arange(50), np.array([0.0, 0.001, 0.25, 0.999, 1.0], np.float32)):
        out = np.asarray(ah.sinusoidal_embedding(jnp.asarray(x), dim))
        assert out.shape == (len(x), dim) and out.dtype == np.float32
        np.testing.assert_allclose(out, np_sinusoid(x, dim), rtol=0, atol=1e-6)
        half = dim // 2
        f = torch.exp(torch.arange(half) * -math.log(10000) / (half - 1))
        e = torch.from_numpy(x)[:, None] * f[None, :]
        np.testing.assert_allclose(out, torch.cat((e.sin(), e.cos()), -1).numpy(), rtol=0, atol=5e-6)
    np.testing.assert_allclose(out[:, 0], np.sin(x), rtol=0, atol=1e-7)  # f_0 = 1, sin first
    via_head = ah.DiffusionActionHead(dim).apply({}, jnp.asarray(x), method="time_embedding")
    np.testing.assert_array_equal(np.asarray(via_head), out)
    with pytest.raises(ValueError, match="even"):
        ah.sinusoidal_embedding(jnp.zeros(2), 33)


@pytest.mark.parametrize("component,kind", CASES)
def test_params_have_logical_axes_and_torch_default_init(component, kind):
    module = build_module(component, kind=kind, hidden_size=D, action_dim=A, proprio_dim=P)
    boxed = module.init(jax.random.key(0), jnp.zeros(input_shape(component)))["params"]
    leaves = jax.tree.leaves(boxed, is_leaf=lambda v: isinstance(v, nn.Partitioned))
    assert all(isinstance(v, nn.Partitioned) and set(v.names) <= AXIS_NAMES for v in leaves)
    for path, v in jax.tree_util.tree_leaves_with_path(nn.meta.unbox(boxed)):
        name = jax.tree_util.keystr(path)
        if "kernel" in name:  # PyTorch Linear default: U(±1/√fan_in) for weight and bias
            assert np.abs(v).max() <= 1 / math.sqrt(v.shape[0]) and np.std(v) > 0.3 / math.sqrt(v.shape[0])


def test_bf16_compute_close_to_fp32():
    module, params = random_params("action_head", "flow")
    x = np.random.default_rng(2).standard_normal(input_shape("action_head")).astype(np.float32)
    ref = np.asarray(module.apply({"params": params}, x))
    m16 = ah.FlowMatchingActionHead(hidden_size=D, action_dim=A, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    out = m16.apply({"params": jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)}, x.astype(jnp.bfloat16))
    assert out.dtype == jnp.bfloat16 and rel_err(np.asarray(out, np.float32), ref) < 3e-2
