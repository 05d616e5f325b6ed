"""Dream-VLA forward semantics and the discrete-diffusion loss against independent re-computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamjax.data.vla_layout import VLALayout, collate, layout_sample
from dreamjax.models.dream_vl import DreamVLModel
from dreamjax.vla import synthetic
from dreamjax.vla.model import DreamVLAModel
from dreamjax.vla.objectives import vla_loss
from dreamjax.vla.task import layout_from_config, objective_settings
from tests.vla import numpy_params, synthetic_tokenizer, tiny_model

SPEC = synthetic.SyntheticVLASpec()


def _batch(cfg, n=3, canvas=None, actions=True):
    lay = layout_from_config(cfg)
    if canvas:
        lay = VLALayout(**{**lay.__dict__, "canvas_length": canvas})
    frames = [synthetic.make_frame(SPEC, i) for i in range(n)]
    if not actions:
        frames = [{k: v for k, v in f.items() if k != "actions"} for f in frames]
    return collate([layout_sample(f, synthetic_tokenizer(), lay) for f in frames])


def test_prefix_tokens_positions_and_action_features_follow_the_reference():
    """Slots reserved in the canvas == the reference's prepending of [proprio, timestep] with positions
    cumsum(mask); the continuous heads read the hidden state one position before each action token."""
    cfg, model = tiny_model("ddim")
    params = numpy_params(model)
    b = _batch(cfg)
    rng = np.random.default_rng(0)
    noisy = rng.standard_normal((3, 4, 3)).astype(np.float32)
    t = np.array([3, 17, 42])
    images = (b["pixel_values"], b["patch_positions"], b["patch_segment_ids"])

    def mine(m):
        embeds = m.vla_embed(b["input_ids"], *images, b["proprio"])
        action_embeds = m.project_noisy(noisy)
        hidden = m.vla_hidden(embeds, b["attention_mask"], b["action_start"], action_embeds, m.time_embedding(t))
        return hidden, m.action_features(hidden, b["action_start"])

    def reference(m):
        """Canvas without reserved slots; action embeddings replaced; proprio, timestep prepended (index 0 each,
        timestep first, then proprio → order [proprio, timestep, tokens]); positions = cumsum(extended mask)."""
        ids, mask = b["input_ids"][:, 2:], b["attention_mask"][:, 2:]
        embeds = DreamVLModel.embed(m, ids, m.encode_images(*images))
        start = b["action_start"] - 2
        rows = jnp.arange(3)[:, None]
        embeds = embeds.at[rows, start[:, None] + jnp.arange(12)].set(m.project_noisy(noisy))
        embeds = jnp.concatenate([m.time_embedding(t)[:, None], embeds], axis=1)
        embeds = jnp.concatenate([m.proprio_projector(jnp.asarray(b["proprio"]))[:, None], embeds], axis=1)
        mask = jnp.concatenate([jnp.ones((3, 2), mask.dtype), mask], axis=1)
        pos = jnp.cumsum(mask, axis=1)
        return m.decode(embeds, mask, jnp.broadcast_to(pos[None], (3,) + pos.shape))

    hidden, feats = model.apply(params, method=mine)
    ref = model.apply(params, method=reference)
    valid = b["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(hidden)[valid], np.asarray(ref)[valid], atol=2e-5)
    for i in range(3):
        s = int(b["action_start"][i])
        np.testing.assert_allclose(np.asarray(feats)[i], np.asarray(ref)[i, s - 1:s + 11].reshape(4, 3 * 32), atol=2e-5)


def np_cart(loss_mask, q=0.1):
    """Spec §4 CART with the explicit matrix W[i, j] = 0.5·q·(1 − q)^(|i − j| − 1), W[i, i] = 0."""
    s = loss_mask.shape[1]
    d = np.abs(np.arange(s)[:, None] - np.arange(s)[None, :])
    w = np.where(d == 0, 0.0, 0.5 * q * (1 - q) ** np.maximum(d - 1, 0))
    c = 1.0 - loss_mask
    return np.where(loss_mask, c @ w, 0.0)


@pytest.mark.parametrize("weighting", ["cart", "original"])
def test_discrete_diffusion_loss_matches_numpy(weighting):
    cfg, model = tiny_model("discrete_diffusion", reweighting=weighting)
    settings = objective_settings(cfg)
    params = numpy_params(model)
    b = _batch(cfg, n=4)
    rng = jax.random.key(5)
    loss, metrics = vla_loss(model, settings, params, b, rng)
    # the same noise draw as the objective (spec §4 forward process on labels != −100)
    from dreamjax.diffusion.objective import forward_process

    masked, p = map(np.asarray, forward_process(rng, jnp.asarray(b["labels"] != -100), settings.eps))
    noised = np.where(masked, settings.mask_token_id, b["input_ids"])

    def full_logits(m):
        e = m.vla_embed(noised, b["pixel_values"], b["patch_positions"], b["patch_segment_ids"], b["proprio"])
        return m.lm_logits(m.vla_hidden(e, b["attention_mask"], b["action_start"]))

    logits = np.asarray(model.apply(params, method=full_logits), np.float64)[:, :-1]  # logits[:, :-1] vs labels[:, 1:]
    labels = np.where(masked, b["labels"], -100)[:, 1:]
    lm = labels != -100
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)
    nll = np.where(lm, -np.take_along_axis(logp, np.maximum(labels, 0)[..., None], -1)[..., 0], 0.0)
    w = {"cart": np_cart(lm), "original": lm / p[:, None], "linear": lm * (1 - p[:, None]), "none": lm * 1.0}[weighting]
    want = (nll * w).sum() / lm.sum()
    assert float(metrics["num_targets"]) == lm.sum() > 0
    np.testing.assert_allclose(float(loss), want, rtol=2e-5)


def test_full_mask_ratio_masks_whole_rows_in_training():
    cfg, model = tiny_model("discrete_diffusion", full_mask_ratio=1.0)
    params = numpy_params(model)
    b = _batch(cfg, n=4)
    _, m = vla_loss(model, objective_settings(cfg), params, b, jax.random.key(0))
    assert float(m["num_targets"]) == 4 * 14  # every action + suffix target of every row
    cfg, model = tiny_model("discrete_diffusion", full_mask_ratio=0.5)
    counts = [float(vla_loss(model, objective_settings(cfg), params, b, jax.random.key(s))[1]["num_targets"])
              for s in range(3)]
    assert min(counts) >= 2 * 14 and max(counts) < 4 * 14


@pytest.mark.parametrize("objective", ["discrete_diffusion", "flow"])
def test_predictions_do_not_depend_on_padding(objective):
    """``predict_action`` pads prompts to a multiple of 8 tokens: padding must not change the actions."""
    from dreamjax.vla.objectives import predict_normalized

    cfg, model = tiny_model(objective)
    params = numpy_params(model)
    settings = objective_settings(cfg)
    short = predict_normalized(params, _batch(cfg, 2, actions=False), jax.random.key(1), model=model, settings=settings)
    long = predict_normalized(params, _batch(cfg, 2, canvas=80, actions=False), jax.random.key(1), model=model,
                              settings=settings)
    assert short.shape == (2, 4, 3)
    # a leak of padding would move actions by O(0.1); float32 round-off of the longer reductions stays ≪ 1e-3
    np.testing.assert_allclose(np.asarray(short), np.asarray(long), atol=1e-4)
    assert isinstance(model, DreamVLAModel)
