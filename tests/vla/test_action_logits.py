"""The policy's predictor (``dreamjax.vla.action_logits``): scoring the discrete objectives' action slots over
the action ids only picks the same chunks as the full-vocabulary path (``objectives.predict_normalized``, itself
checked against numpy / torch elsewhere); ``DreamVLA`` keeps its params on the device and pads little."""

import dataclasses

import jax
import numpy as np
import pytest
from PIL import Image

import dreamjax
from dreamjax.data.vla_layout import collate, layout_sample
from dreamjax.vla import synthetic
from dreamjax.vla.action_logits import action_id_range, lm_head_columns, predict_chunk
from dreamjax.vla.model import DreamVLAModel
from dreamjax.vla.objectives import predict_normalized
from dreamjax.vla.task import layout_from_config, objective_settings
from tests.vla import numpy_params, synthetic_tokenizer, tiny_model

SPEC = synthetic.SyntheticVLASpec()


def _model(objective, tied=False):
    cfg, model = tiny_model(objective)
    if tied:
        model = DreamVLAModel(model.config.replace(tie_word_embeddings=True), model.head)
    return cfg, model


def _inference_batch(cfg, n=3):
    frames = [{k: v for k, v in synthetic.make_frame(SPEC, i).items() if k != "actions"} for i in range(n)]
    frames[1]["instruction"] += " and then wait for the next command"  # another action_start per row
    lay = dataclasses.replace(layout_from_config(cfg), canvas_length=96)
    return collate([layout_sample(f, synthetic_tokenizer(), lay) for f in frames])


@pytest.mark.parametrize("objective,steps,tied", [("discrete_diffusion", 1, False), ("discrete_diffusion", 3, True),
                                                  ("discrete", 1, False)])
def test_action_id_scoring_picks_the_same_chunk_as_the_full_vocabulary(objective, steps, tied):
    cfg, model = _model(objective, tied)
    settings = dataclasses.replace(objective_settings(cfg), discrete_steps=steps)
    params = numpy_params(model, seed=3, gain=4.0)
    batch = _inference_batch(cfg)
    rng = jax.random.key(5)
    full = np.asarray(predict_normalized(params, batch, rng, model=model, settings=settings))
    fast = np.asarray(predict_chunk(params, batch, rng, model=model, settings=settings))
    assert fast.shape == (3, model.head.chunk, model.head.action_dim)
    assert len(np.unique(full)) > 3  # the weights spread the chosen bins: the comparison can fail
    np.testing.assert_array_equal(fast, full)


@pytest.mark.parametrize("tied", [False, True])
def test_lm_head_columns_are_the_lm_logits_columns(tied):
    cfg, model = _model("discrete_diffusion", tied)
    params = numpy_params(model, seed=1)
    first, stop = action_id_range(objective_settings(cfg))
    rows = np.random.default_rng(0).standard_normal((2, 5, model.config.hidden_size)).astype(np.float32)
    want = np.asarray(model.apply(params, rows, method=DreamVLAModel.lm_logits))[..., first:stop]
    got = np.asarray(lm_head_columns(model, params, rows, first, stop))
    assert got.shape == (2, 5, 256) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_policy_holds_device_params_and_pads_the_canvas_to_a_multiple_of_8():
    cfg, model = tiny_model("discrete_diffusion")
    tok = synthetic_tokenizer()
    policy = dreamjax.DreamVLA(model.config, model.head, numpy_params(model), tok, settings=objective_settings(cfg),
                               num_images=2, image_size=28)
    assert all(isinstance(a, jax.Array) for a in jax.tree_util.tree_leaves(policy.params))
    f = synthetic.make_frame(SPEC, 0)
    for extra in ("", " now", " slowly and carefully, then stop"):
        instruction = f["instruction"] + extra
        layout = policy.layout_for(instruction)
        sample = layout_sample({**f, "actions": None, "instruction": instruction}, tok, layout)
        need = int(sample["attention_mask"].sum())
        assert layout.canvas_length % 8 == 0 and need <= layout.canvas_length < need + 8
    chunk = policy.predict_action(f["images"], f["instruction"], f["proprio"])
    batch = collate([layout_sample({**f, "actions": None}, tok, policy.layout_for(f["instruction"]))])
    want = predict_normalized(policy.params, batch, jax.random.key(0), model=policy.module, settings=policy.settings)
    np.testing.assert_array_equal(chunk, np.asarray(want)[0])  # no statistics: normalized actions
    as_pil = [Image.fromarray(im) for im in f["images"]]  # the other input kind takes the PIL path
    np.testing.assert_array_equal(policy.predict_action(as_pil, f["instruction"], f["proprio"]), chunk)
