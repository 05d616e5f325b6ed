"""The discrete predictors (``objectives.predict_normalized``, what ``DreamVLA.predict_action`` runs) score the
action slots over the action ids only (``dreamjax.vla.action_logits``); they must decode exactly the chunks of
the reference's rule, written plainly here: ``lm_head`` over every column of the target rows, the action rows'
non-action columns at float32 min, maskgit_plus at temperature 0 with the reference's float32 schedule, the
whole canvas re-embedded (vision tower included) at every step. ``DreamVLA`` keeps its params on the device and
pads little."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from PIL import Image

import dreamjax
from dreamjax.data.action_tokenizer import ActionTokenizer
from dreamjax.data.vla_layout import collate, layout_sample
from dreamjax.vla import synthetic
from dreamjax.vla.action_logits import action_id_range, lm_head_columns
from dreamjax.vla.model import DreamVLAModel
from dreamjax.vla.objectives import predict_normalized
from dreamjax.vla.task import layout_from_config, objective_settings
from tests.vla import numpy_params, synthetic_tokenizer, tiny_model

SPEC = synthetic.SyntheticVLASpec()
F32_MIN = np.finfo(np.float32).min
NUM_SUFFIX = 2  # <|im_end|>\n after the action tokens


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


@functools.partial(jax.jit, static_argnames=("model", "count", "zero_action_slots"))
def _full_forward_rows(params, canvas, batch, model, count, zero_action_slots):
    """A full forward of ``canvas`` (vision tower included; zero action-slot embeddings for one-step discrete),
    then ``lm_head`` over every column at the ``count`` positions one before the targets (the shift)."""
    embeds = model.apply(params, canvas, batch["pixel_values"], batch["patch_positions"], batch["patch_segment_ids"],
                         batch["proprio"], method=DreamVLAModel.vla_embed)
    n_actions = model.head.num_action_tokens
    zeros = jnp.zeros((canvas.shape[0], n_actions, model.config.hidden_size)) if zero_action_slots else None
    hidden = model.apply(params, embeds, batch["attention_mask"], batch["action_start"], zeros,
                         method=DreamVLAModel.vla_hidden)
    before_targets = batch["action_start"][:, None] - 1 + jnp.arange(count)
    shifted = jnp.take_along_axis(hidden, before_targets[..., None], axis=1)
    return model.apply(params, shifted, method=DreamVLAModel.lm_logits)


def _reference_target_logits(model, params, batch, canvas, settings, zero_action_slots):
    """The reference's logits of the C·A + 2 target slots [B, C·A + 2, V] (float32 numpy), the action rows
    restricted to the action ids by setting every other column to float32 min; and the target indices."""
    n_actions = model.head.num_action_tokens
    targets = np.asarray(batch["action_start"])[:, None] + np.arange(n_actions + NUM_SUFFIX)
    logits = np.array(_full_forward_rows(params, canvas, batch, model, n_actions + NUM_SUFFIX, zero_action_slots),
                      np.float32)
    first_action_id = settings.vocab_len - settings.n_bins
    logits[:, :n_actions, :first_action_id] = F32_MIN
    logits[:, :n_actions, settings.vocab_len:] = F32_MIN
    return logits, targets


def reference_discrete_diffusion(model, params, batch, settings):
    """``diffusion_generate`` on the C·A + 2 masked targets, one row at a time as the reference's eval (batch 1):
    per step, probs = softmax(logits), proposal = argmax, confidence = its probability; the
    ``int(M · (1 − s/t))`` most confident masked slots take their proposal (all remaining at the last step)."""
    canvas = np.array(batch["input_ids"], np.int64)
    n_actions = model.head.num_action_tokens
    _, targets = _reference_target_logits(model, params, batch, canvas, settings, False)
    rows = np.arange(canvas.shape[0])[:, None]
    canvas[rows, targets] = settings.mask_token_id
    timesteps = torch.linspace(1, settings.eps, settings.discrete_steps + 1)
    for i in range(settings.discrete_steps):
        logits, _ = _reference_target_logits(model, params, batch, canvas, settings, False)
        probs = torch.softmax(torch.from_numpy(logits), dim=-1)
        confidence, proposal = probs.max(dim=-1)
        for b in range(canvas.shape[0]):
            x = torch.from_numpy(canvas[b, targets[b]])
            masked = x == settings.mask_token_id
            num_masked = masked.sum().float()
            if i < settings.discrete_steps - 1:
                count = int(num_masked * (1 - timesteps[i + 1] / timesteps[i]))
            else:
                count = int(num_masked)
            full_confidence = torch.where(masked, confidence[b], -torch.inf)
            if count > 0:
                reveal = torch.topk(full_confidence, count).indices
                x[reveal] = proposal[b][reveal]
            canvas[b, targets[b]] = x.numpy()
    ids = canvas[rows, targets[:, :n_actions]]
    return ActionTokenizer(settings.vocab_len, settings.n_bins).decode(ids).reshape(-1, model.head.chunk,
                                                                                     model.head.action_dim)


def reference_discrete(model, params, batch, settings):
    """One-step discrete: zero action-slot embeddings, one forward, argmax of the action rows."""
    logits, _ = _reference_target_logits(model, params, batch, np.asarray(batch["input_ids"]), settings, True)
    ids = logits[:, :model.head.num_action_tokens].argmax(-1)
    return ActionTokenizer(settings.vocab_len, settings.n_bins).decode(ids).reshape(-1, model.head.chunk,
                                                                                     model.head.action_dim)


@pytest.mark.parametrize("objective,steps,tied", [("discrete_diffusion", 1, False), ("discrete_diffusion", 3, True),
                                                  ("discrete_diffusion", 3, False), ("discrete", 1, True),
                                                  ("discrete", 1, False)])
def test_predicted_chunks_equal_the_full_vocabulary_reference(objective, steps, tied):
    cfg, model = _model(objective, tied)
    settings = dataclasses.replace(objective_settings(cfg), discrete_steps=steps)
    params = numpy_params(model, seed=3, gain=4.0)
    batch = _inference_batch(cfg)
    reference = {"discrete_diffusion": reference_discrete_diffusion, "discrete": reference_discrete}[objective]
    want = reference(model, params, batch, settings)
    got = np.asarray(predict_normalized(params, batch, jax.random.key(5), model=model, settings=settings))
    assert got.shape == (3, model.head.chunk, model.head.action_dim) and got.dtype == np.float32
    assert len(np.unique(want)) > 3  # the weights spread the chosen bins: the comparison can fail
    np.testing.assert_array_equal(got, want)


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
    want = reference_discrete_diffusion(policy.module, policy.params, batch, policy.settings)[0]
    np.testing.assert_array_equal(chunk, want)  # no statistics: normalized actions
    as_pil = [Image.fromarray(im) for im in f["images"]]  # the other input kind takes the PIL path
    np.testing.assert_array_equal(policy.predict_action(as_pil, f["instruction"], f["proprio"]), chunk)
