"""Sharded forward on an 8-device CPU mesh equals the single-device forward; mesh/rule errors are clear."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dreamjax import sharding
from dreamjax.models.dream_vl import DreamVLModel
from dreamjax.models.positions import text_position_ids, vision_patch_layout
from tests.tiny import rel_err, tiny_config

GRIDS = np.array([[1, 4, 4], [1, 4, 8], [1, 8, 4], [1, 4, 4]] * 2)  # one image per row, batch 8


def _inputs(c):
    rng = np.random.default_rng(0)
    ids = rng.integers(20, c.vocab_size, (len(GRIDS), 40))
    tok = [int(np.prod(g)) // 4 for g in GRIDS]
    for b, n in enumerate(tok):  # one image per row, at varying offsets
        ids[b, 3 + b:3 + b + n] = c.image_token_id
    mask = np.ones_like(ids)
    mask[1, 30:] = 0
    mask[3, 25:] = 0
    pv = rng.standard_normal((int(np.prod(GRIDS, axis=1).sum()), c.vision.patch_dim)).astype(np.float32)
    pp, ps = vision_patch_layout(GRIDS)
    return ids, mask, text_position_ids(mask), pv, pp, ps


@pytest.mark.parametrize("mesh_shape,scan_layers", [
    (dict(data=2, fsdp=2, tensor=2), False), (dict(data=2, fsdp=2, tensor=2), True),
    (dict(data=1, fsdp=-1, tensor=1), False), (dict(data=1, fsdp=2, tensor=4), True)])
def test_sharded_forward_equals_unsharded(scan_layers, mesh_shape):
    assert jax.device_count() == 8
    c = tiny_config(scan_layers=scan_layers)
    model = DreamVLModel(c)
    inputs = _inputs(c)
    variables = model.init(jax.random.key(0), *inputs)
    params = jax.tree_util.tree_map(np.asarray, nn.unbox(variables))
    ref = np.asarray(jax.jit(model.apply)(params, *inputs))

    mesh = sharding.make_mesh(mesh_shape)
    abstract = jax.eval_shape(model.init, jax.random.key(0), *inputs)
    shardings = sharding.param_shardings(abstract, mesh)
    sharded = sharding.shard_params(params, shardings)
    q_kernel = sharded["params"]["model"]["layers" if scan_layers else "layers_0"]["self_attn"]["q_proj"]["kernel"]
    expect = P(None, "fsdp", "tensor") if scan_layers else P("fsdp", "tensor")
    assert q_kernel.sharding.spec == expect, "params must be laid out by the rule table"

    batch = sharding.batch_sharding(mesh)
    ids, mask, pos, pv, pp, ps = inputs
    with sharding.activation_sharding(mesh):
        fwd = jax.jit(model.apply, in_shardings=(shardings, batch, batch, sharding.replicated(mesh),
                                                 *(sharding.replicated(mesh),) * 3))
        out = fwd(sharded, ids, mask, pos, pv, pp, ps)
    data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
    assert out.sharding.shard_shape(out.shape)[0] == out.shape[0] // data_ways, "logits stay batch-sharded"
    assert rel_err(np.asarray(out), ref) <= 1e-5


def test_mesh_errors():
    with pytest.raises(ValueError, match="has 4 devices in all, but there are 8"):
        sharding.make_mesh(dict(data=2, fsdp=2, tensor=1))
    with pytest.raises(ValueError, match="unknown axis"):
        sharding.make_mesh(dict(data=2, pipeline=4))
    with pytest.raises(ValueError, match="at most one axis may be -1"):
        sharding.make_mesh(dict(data=-1, fsdp=-1))
    with pytest.raises(ValueError, match="unknown mesh axis"):
        sharding.rules_from_config([["embed", "model"]])


def test_unknown_logical_axis_and_indivisible_dims_fail_early():
    c = tiny_config()
    model = DreamVLModel(c)
    abstract = jax.eval_shape(model.init, jax.random.key(0), *_inputs(c))
    mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=8))
    rules = tuple(r for r in sharding.DEFAULT_RULES if r[0] != "kv_heads")
    with pytest.raises(ValueError, match="logical axis \\['kv_heads'\\] has no sharding rule"):
        sharding.param_shardings(abstract, mesh, rules)
    # an MLP width of 100 cannot be split 8 ways over `tensor`
    c = tiny_config(intermediate_size=100)
    abstract = jax.eval_shape(DreamVLModel(c).init, jax.random.key(0), *_inputs(c))
    with pytest.raises(ValueError, match=r"\[.mlp.\].*dim 100 .* not divisible by mesh axes tensor of size 8"):
        sharding.param_shardings(abstract, mesh)
