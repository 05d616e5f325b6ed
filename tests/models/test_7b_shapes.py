"""The dream_vl_7b preset has the reference's parameters: the 734 tensors of spec §1.9 map one-to-one onto
dreamjax params with matching shapes, and the total parameter count agrees (no allocation: eval_shape)."""

import math

import flax.linen as nn
import jax
import numpy as np
import pytest

from conversion.keymap import expected_hf_keys, hf_to_target
from dreamjax.config_loader import load_config, model_config
from dreamjax.models.dream_vl import DreamVLModel
from dreamjax.models.positions import vision_patch_layout

D, V, W, MLP, KV = 3584, 152064, 1280, 18944, 512


def reference_tensors() -> dict[str, tuple[int, ...]]:
    """Spec §1.9, written out independently of the key map."""
    t = {"visual.patch_embed.proj.weight": (W, 3, 2, 14, 14)}
    for b in range(32):
        p = f"visual.blocks.{b}."
        t.update({p + "norm1.weight": (W,), p + "norm1.bias": (W,), p + "norm2.weight": (W,), p + "norm2.bias": (W,),
                  p + "attn.qkv.weight": (3 * W, W), p + "attn.qkv.bias": (3 * W,), p + "attn.proj.weight": (W, W),
                  p + "attn.proj.bias": (W,), p + "mlp.fc1.weight": (4 * W, W), p + "mlp.fc1.bias": (4 * W,),
                  p + "mlp.fc2.weight": (W, 4 * W), p + "mlp.fc2.bias": (W,)})
    t.update({"visual.merger.ln_q.weight": (W,), "visual.merger.ln_q.bias": (W,),
              "visual.merger.mlp.0.weight": (4 * W, 4 * W), "visual.merger.mlp.0.bias": (4 * W,),
              "visual.merger.mlp.2.weight": (D, 4 * W), "visual.merger.mlp.2.bias": (D,),
              "projector.linear_1.weight": (D, D), "projector.linear_1.bias": (D,),
              "projector.linear_2.weight": (D, D), "projector.linear_2.bias": (D,),
              "model.embed_tokens.weight": (V, D), "model.norm.weight": (D,), "lm_head.weight": (V, D)})
    for layer in range(28):
        p = f"model.layers.{layer}."
        t.update({p + "self_attn.q_proj.weight": (D, D), p + "self_attn.q_proj.bias": (D,),
                  p + "self_attn.k_proj.weight": (KV, D), p + "self_attn.k_proj.bias": (KV,),
                  p + "self_attn.v_proj.weight": (KV, D), p + "self_attn.v_proj.bias": (KV,),
                  p + "self_attn.o_proj.weight": (D, D), p + "mlp.gate_proj.weight": (MLP, D),
                  p + "mlp.up_proj.weight": (MLP, D), p + "mlp.down_proj.weight": (D, MLP),
                  p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,)})
    return t


def _jax_shape(hf_shape, transform_name):
    if transform_name == "linear":
        return tuple(reversed(hf_shape))
    if transform_name == "patch_embed":
        return (math.prod(hf_shape[1:]), hf_shape[0])
    return tuple(hf_shape)


@pytest.mark.parametrize("scan_layers", [True, False])
def test_7b_params_match_reference_tensors(scan_layers):
    ref = reference_tensors()
    assert len(ref) == 734
    config = model_config(load_config("dream_vl_7b", [f"--config.model.scan_layers={scan_layers}"]))
    grid = np.array([[1, 4, 4]])
    pp, ps = vision_patch_layout(grid)
    ids = np.zeros((1, 8), np.int32)
    abstract = nn.unbox(jax.eval_shape(DreamVLModel(config).init, jax.random.key(0), ids, None, None,
                                       jax.ShapeDtypeStruct((16, 1176), np.float32), pp, ps))["params"]
    leaves = {tuple(k.key for k in kp): v.shape for kp, v in jax.tree_util.tree_leaves_with_path(abstract)}

    n_params = sum(math.prod(s) for s in leaves.values())
    assert n_params == sum(math.prod(s) for s in ref.values())
    assert 8.2e9 < n_params < 8.4e9  # ≈0.675B vision + 0.026B projector + 7.6B LLM

    assert sorted(expected_hf_keys(config)) == sorted(ref)
    covered: dict[tuple, set] = {}
    for key, hf_shape in ref.items():
        target = hf_to_target(key, config)
        assert target is not None, key
        want = _jax_shape(hf_shape, target.transform.name)
        got = leaves[target.path]
        if target.stacked:
            assert got == (config.num_hidden_layers if target.path[0] == "model" else 32,) + want, key
            covered.setdefault(target.path, set()).add(target.layer)
        else:
            assert got == want, key
            covered.setdefault(target.path, set()).add(None)
    assert set(covered) == set(leaves), "every dreamjax param is the image of some reference tensor"
    for path, layers in covered.items():
        assert len(layers) == (leaves[path][0] if None not in layers else 1), path
