"""Optimizer presets against the reference's PyTorch objects: torch.optim.AdamW + MultiStepLR (Dream-VLA)
and AdamW + clip_grad_norm_ + transformers' get_cosine_schedule_with_warmup (Dream-VL stages, HF Trainer)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dreamjax.train.optimizer import make_optimizer, sft_schedule

torch = pytest.importorskip("torch")


def _grads(n, shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) * (1 + 2 * i) for i in range(n)]


def _run_optax(t, p0, grads):
    params = {"p": jnp.asarray(p0)}
    opt, schedule = make_optimizer(t, params)
    state = opt.init(params)
    lrs = []
    for k, g in enumerate(grads):
        lrs.append(float(schedule(k)))
        upd, state = opt.update({"p": jnp.asarray(g)}, state, params)
        params = jax.tree_util.tree_map(lambda a, b: a + b, params, upd)
    return np.asarray(params["p"]), lrs


def test_vla_preset_is_torch_adamw_defaults_with_multistep_decay():
    p0 = np.random.default_rng(1).standard_normal((5, 3)).astype(np.float32)
    grads = _grads(8, p0.shape)
    t = ml_collections.ConfigDict(dict(optimizer="vla", learning_rate=5e-2, steps=8, decay_at=4))
    got, lrs = _run_optax(t, p0, grads)

    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.AdamW([p], lr=5e-2)  # torch defaults: betas (0.9, 0.999), eps 1e-8, weight_decay 0.01
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[4], gamma=0.1)
    torch_lrs = []
    for g in grads:
        torch_lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.from_numpy(g)
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs, torch_lrs, rtol=1e-6)
    np.testing.assert_allclose(got, p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_sft_preset_is_hf_trainer_adamw_cosine_warmup_clip():
    from transformers import get_cosine_schedule_with_warmup

    total, ratio = 40, 0.03
    p0 = np.random.default_rng(2).standard_normal((4, 6)).astype(np.float32)
    grads = _grads(total, p0.shape, seed=3)
    t = ml_collections.ConfigDict(dict(optimizer="sft", learning_rate=1e-2, steps=total, warmup_ratio=ratio,
                                       weight_decay=0.0, clip_norm=1.0))
    got, lrs = _run_optax(t, p0, grads)

    p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    opt = torch.optim.AdamW([p], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(ratio * total), total)  # HF Trainer's warmup steps
    torch_lrs = []
    for g in grads:
        torch_lrs.append(opt.param_groups[0]["lr"])
        p.grad = torch.from_numpy(g)
        torch.nn.utils.clip_grad_norm_([p], 1.0)
        opt.step()
        sched.step()
    np.testing.assert_allclose(lrs, torch_lrs, rtol=1e-5, atol=1e-12)
    assert lrs[0] == 0.0, "HF's first update runs at lr 0 (warmup from 0)"
    np.testing.assert_allclose(got, p.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_lr_groups_give_the_vit_its_own_rate():
    t = ml_collections.ConfigDict(dict(optimizer="sft", learning_rate=1e-5, steps=100, warmup_ratio=0.0,
                                       weight_decay=0.0, clip_norm=0.0, lr_groups=[("^params/visual/", 2e-6)]))
    params = {"params": {"visual": {"k": jnp.zeros(3)}, "model": {"k": jnp.zeros(3)}}}
    opt, _ = make_optimizer(t, params)
    state = opt.init(params)
    g = jax.tree_util.tree_map(jnp.ones_like, params)
    upd, _ = opt.update(g, state, params)
    # Adam's first update is lr·sign(g) (up to eps): the ratio of the two groups is the ratio of their rates
    ratio = float(upd["params"]["visual"]["k"][0] / upd["params"]["model"]["k"][0])
    np.testing.assert_allclose(ratio, 2e-6 / 1e-5, rtol=1e-4)


def test_sft_schedule_shape():
    s = sft_schedule(1.0, 100, 0.03)
    assert float(s(0)) == 0 and float(s(3)) == pytest.approx(1.0)
    assert float(s(100)) == pytest.approx(0.0, abs=1e-7)
    assert float(s(51)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 48 / 97)), rel=1e-5)


@pytest.mark.parametrize("scale", [0.01, 1.0, 50.0])
def test_clip_is_torch_clip_grad_norm_over_a_whole_tree(scale):
    """Every leaf × min(1, 1 / (‖all grads‖₂ + 1e-6)), as torch's clip_grad_norm_ over the parameter list;
    a norm below the threshold leaves the gradients as they were."""
    from dreamjax.train.optimizer import clip_by_global_norm, global_norm

    rng = np.random.default_rng(5)
    grads = {"a": rng.standard_normal((4, 3)).astype(np.float32) * scale,
             "b": {"c": rng.standard_normal(7).astype(np.float32) * scale}}
    got, _ = clip_by_global_norm(1.0).update(jax.tree_util.tree_map(jnp.asarray, grads), None)
    ts = [torch.nn.Parameter(torch.zeros(g.shape)) for g in (grads["a"], grads["b"]["c"])]
    for t, g in zip(ts, (grads["a"], grads["b"]["c"])):
        t.grad = torch.from_numpy(g.copy())
    total = float(torch.nn.utils.clip_grad_norm_(ts, 1.0))
    assert float(global_norm(grads)) == pytest.approx(total, rel=1e-6)
    for mine, t in zip((got["a"], got["b"]["c"]), ts):
        np.testing.assert_allclose(np.asarray(mine), t.grad.numpy(), rtol=1e-6, atol=0)
    if scale == 0.01:  # not clipped: unchanged bit for bit
        np.testing.assert_array_equal(np.asarray(got["a"]), grads["a"])


def test_negative_clip_norm_is_refused():
    t = ml_collections.ConfigDict(dict(optimizer="sft", learning_rate=1e-5, steps=10, warmup_ratio=0.0,
                                       weight_decay=0.0, clip_norm=-1.0))
    with pytest.raises(ValueError, match="clip_norm=-1.0"):
        make_optimizer(t, {"p": jnp.zeros(3)})
