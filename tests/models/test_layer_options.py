"""Config switches that must not change the math: scanned layers and rematerialization give the same loss
and gradients as the plain unrolled stack; bf16 compute stays close to fp32."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conversion.keymap import hf_to_params, params_to_hf
from dreamjax.models.dream_vl import DreamVLModel
from dreamjax.models.positions import text_position_ids, vision_patch_layout
from tests.tiny import rel_err, tiny_config

GRID = np.array([[1, 4, 4]])


def _inputs(c):
    rng = np.random.default_rng(0)
    ids = rng.integers(20, c.vocab_size, (2, 12))
    ids[0, 2:6] = c.image_token_id
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    pv = rng.standard_normal((16, c.vision.patch_dim)).astype(np.float32)
    pp, ps = vision_patch_layout(GRID)
    return ids, mask, text_position_ids(mask), pv, pp, ps


def _loss_and_grads(config, hf_tensors, inputs):
    params = {"params": hf_to_params(hf_tensors, hf_tensors.keys(), config)}
    model = DreamVLModel(config)
    targets = jnp.asarray(np.roll(inputs[0], -1, axis=1))

    def loss_fn(p):
        logits = model.apply(p, *inputs).astype(jnp.float32)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1))

    loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
    return float(loss), dict(params_to_hf(jax.device_get(grads["params"]), config))


@pytest.fixture(scope="module")
def reference():
    c = tiny_config()
    inputs = _inputs(c)
    init = nn.unbox(DreamVLModel(c).init(jax.random.key(1), *inputs))["params"]
    hf = dict(params_to_hf(jax.device_get(init), c))
    return hf, inputs, _loss_and_grads(c, hf, inputs)


@pytest.mark.parametrize("scan_layers,remat", [(True, "none"), (False, "full"), (True, "dots")])
def test_scan_and_remat_keep_loss_and_gradients(reference, scan_layers, remat):
    hf, inputs, (loss_ref, grads_ref) = reference
    loss, grads = _loss_and_grads(tiny_config(scan_layers=scan_layers, remat=remat), hf, inputs)
    assert abs(loss - loss_ref) <= 1e-6 * abs(loss_ref)
    assert grads.keys() == grads_ref.keys()
    for k in grads:
        assert rel_err(grads[k], grads_ref[k]) <= 1e-5, k


@pytest.mark.parametrize("scan_layers", [False, True])
def test_dense_weight_gradient_equals_xla_autodiff(reference, monkeypatch, scan_layers):
    """Every Dense computes its weight gradient itself on CPU (``layers.dense_dot_general``); the model's loss
    and gradients must equal those of plain ``lax.dot_general`` autodiff, scanned layers included."""
    import dreamjax.models.dream_vl as dream_vl
    import dreamjax.models.layers as layers

    hf, inputs, _ = reference
    c = tiny_config(scan_layers=scan_layers)
    loss, grads = _loss_and_grads(c, hf, inputs)
    monkeypatch.setattr(layers, "dense_dot_general", jax.lax.dot_general)
    monkeypatch.setattr(dream_vl, "dense_dot_general", jax.lax.dot_general)
    loss_xla, grads_xla = _loss_and_grads(c, hf, inputs)
    assert loss == loss_xla
    for k in grads:
        assert rel_err(grads[k], grads_xla[k]) <= 1e-6, k


def test_bf16_compute_close_to_fp32(reference):
    hf, inputs, _ = reference
    out = {}
    for dtype in ("float32", "bfloat16"):
        c = tiny_config(dtype=dtype)
        params = {"params": hf_to_params(hf, hf.keys(), c)}
        logits = DreamVLModel(c).apply(params, *inputs)
        assert logits.dtype == jnp.dtype(dtype), "logits stay in the compute dtype, as the reference"
        out[dtype] = np.asarray(logits, np.float32)
    valid = inputs[1].astype(bool)
    assert rel_err(out["bfloat16"][valid], out["float32"][valid]) < 3e-2


def test_fully_padded_row_gives_finite_logits_and_leaves_other_rows_alone(reference):
    hf, (ids, mask, pos, pv, pp, ps), _ = reference
    c = tiny_config()
    params = {"params": hf_to_params(hf, hf.keys(), c)}
    model = DreamVLModel(c)
    base = np.asarray(model.apply(params, ids, mask, pos, pv, pp, ps))
    mask2 = mask.copy()
    mask2[1] = 0  # row 1 is all padding
    out = np.asarray(model.apply(params, ids, mask2, pos, pv, pp, ps))
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[0], base[0])
