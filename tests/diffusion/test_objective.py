"""The masked-diffusion objective (spec §4) against an independent numpy implementation.

The numpy reference below is written from the spec with loops and dense formulas (the CART weight as the
explicit O(L²) sum over all other positions) in float64. Tolerance: max |Δ| / max |ref| ≤ 1e-6 for the loss,
the per-token weights and the gradient w.r.t. the logits (analytic: w_k / N · (softmax − one-hot)); ≤ 1e-5
where two different compiled model forwards are compared.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamjax.data import sft_labels
from dreamjax.diffusion import objective
from dreamjax.diffusion.objective import IGNORE_INDEX, WEIGHTINGS
from dreamjax.models.positions import text_position_ids
from tests.diffusion import random_dream_vl
from tests.tiny import rel_err, tiny_config

TOL = 1e-6


# --------------------------------------------------------------------------------------------- numpy reference
def np_shifted_targets(labels, masked):
    b, s = labels.shape
    targets = np.full((b, s), IGNORE_INDEX)
    for r in range(b):
        for i in range(s - 1):  # logit i is trained on token i + 1, if that token was masked and is maskable
            if masked[r, i + 1] and labels[r, i + 1] != IGNORE_INDEX:
                targets[r, i] = labels[r, i + 1]
    return targets


def np_cart(loss_mask, q):
    b, s = loss_mask.shape
    w = np.zeros((b, s))
    for r in range(b):
        for j in range(s):
            if not loss_mask[r, j]:
                continue
            for i in range(s):
                if i != j and not loss_mask[r, i]:
                    w[r, j] += 0.5 * q * (1 - q) ** (abs(i - j) - 1)
    return w


def np_objective(logits, labels, masked, p, weighting, q=0.1):
    """(loss, weights [B,S], nll [B,S], dloss/dlogits [B,S,V]) in float64."""
    lg = np.asarray(logits, np.float64)
    b, s, v = lg.shape
    targets = np_shifted_targets(labels, masked)
    loss_mask = targets != IGNORE_INDEX
    nll = np.zeros((b, s))
    probs = np.zeros((b, s, v))
    for r in range(b):
        for i in range(s):
            z = lg[r, i] - lg[r, i].max()
            log_z = np.log(np.exp(z).sum())
            probs[r, i] = np.exp(z - log_z)
            if loss_mask[r, i]:
                nll[r, i] = log_z - z[targets[r, i]]
    if weighting == "cart":
        w = np_cart(loss_mask, q)
    else:
        per_row = {"original": 1 / p, "linear": 1 - p, "none": np.ones_like(p)}[weighting]
        w = np.where(loss_mask, np.asarray(per_row, np.float64)[:, None], 0.0)
    n = loss_mask.sum()
    loss = (nll * w).sum() / n
    grad = np.zeros_like(lg)
    for r in range(b):
        for i in range(s):
            if loss_mask[r, i]:
                onehot = np.eye(v)[targets[r, i]]
                grad[r, i] = w[r, i] / n * (probs[r, i] - onehot)
    return loss, w, nll, grad


@pytest.fixture(scope="module")
def fixed_case():
    """Fixed masks: a prompt (−100), maskable spans, masked subsets incl. position 0, the last column and a
    long masked span, so every CART regime and the shift edge cases occur."""
    rng = np.random.default_rng(0)
    b, s, v = 3, 24, 11
    logits = (2.0 * rng.standard_normal((b, s, v))).astype(np.float32)
    labels = rng.integers(0, v, (b, s))
    labels[0, :6] = IGNORE_INDEX
    labels[1, 10:14] = IGNORE_INDEX
    labels[2, 20:] = IGNORE_INDEX
    maskable = labels != IGNORE_INDEX
    masked = maskable & (rng.random((b, s)) < np.array([[0.3], [0.7], [0.95]]))
    masked[1, 0] = True  # position 0 masked: no logit predicts it
    masked[1, -1] = True  # last position masked: its target sits at logit s − 2
    p = np.array([0.31, 0.72, 0.93], np.float32)
    return logits, labels, masked, p


@pytest.mark.parametrize("weighting", WEIGHTINGS)
def test_loss_weights_and_gradient_match_numpy(fixed_case, weighting):
    logits, labels, masked, p = fixed_case
    ref_loss, ref_w, ref_nll, ref_grad = np_objective(logits, labels, masked, p, weighting)

    def loss_of(lg):
        return objective.masked_diffusion_loss(lg, jnp.asarray(labels), jnp.asarray(masked), jnp.asarray(p),
                                               weighting=weighting)

    (loss, aux), grad = jax.jit(jax.value_and_grad(loss_of, has_aux=True))(jnp.asarray(logits))
    assert abs(float(loss) - ref_loss) / abs(ref_loss) <= TOL
    assert rel_err(aux["weights"], ref_w) <= TOL
    assert rel_err(aux["nll"], ref_nll) <= TOL
    assert rel_err(grad, ref_grad) <= TOL
    assert float(aux["num_targets"]) == (np_shifted_targets(labels, masked) != IGNORE_INDEX).sum()


def test_shift_drops_position_zero_and_keeps_last(fixed_case):
    _, labels, masked, _ = fixed_case
    targets = np.asarray(jax.jit(objective.shift_targets)(jnp.asarray(labels), jnp.asarray(masked)))
    np.testing.assert_array_equal(targets, np_shifted_targets(labels, masked))
    assert targets[1, -2] == labels[1, -1] and targets[1, -1] == IGNORE_INDEX


def test_cart_long_sequences_match_the_dense_sum_and_build_no_lxl_matrix():
    rng = np.random.default_rng(1)
    s = 200
    mask = rng.random((2, s)) < 0.5
    mask[0, 30:170] = True  # a long masked span: weights decay to ≈ 0 inside it
    mask[1, :] = False
    mask[1, 100] = True  # one masked target surrounded by clean context: weight ≈ 1
    for q in (0.1, 0.8):
        w = np.asarray(jax.jit(objective.cart_weights, static_argnums=1)(jnp.asarray(mask), q))
        assert rel_err(w, np_cart(mask, q)) <= TOL
    assert abs(w[1, 100] - 1.0) < 1e-6 and w[0, 100] < 1e-6
    assert ((w >= 0) & (w <= 1 + 1e-6)).all()

    # O(L) memory: no intermediate anywhere in the program is as large as L×L.
    big = 4096
    jaxpr = jax.make_jaxpr(lambda m: objective.cart_weights(m, 0.1))(jnp.zeros((1, big), bool))
    assert _largest_intermediate(jaxpr.jaxpr) < big * big // 64


def _largest_intermediate(jaxpr) -> int:
    biggest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            biggest = max(biggest, int(np.prod(getattr(var.aval, "shape", ()))))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    biggest = max(biggest, _largest_intermediate(getattr(inner, "jaxpr", inner)))
    return biggest


def test_no_target_gives_zero_not_nan():
    logits = jnp.zeros((1, 4, 5))
    labels = jnp.full((1, 4), IGNORE_INDEX)
    loss, aux = jax.jit(objective.masked_diffusion_loss)(logits, labels, jnp.zeros((1, 4), bool), jnp.ones(1))
    assert float(loss) == 0.0 and float(aux["num_targets"]) == 0.0

@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_token_nll_value_and_gradient_equal_autodiff_of_log_softmax(dtype):
    """token_nll writes its gradient out (softmax − one-hot); it must equal autodiff of the plain formula,
    keep the logits' dtype, and give ignored positions exactly no gradient."""
    rng = np.random.default_rng(3)
    logits = jnp.asarray(rng.standard_normal((2, 6, 40)) * 4, dtype)
    targets = jnp.asarray(rng.integers(0, 40, (2, 6)), jnp.int32).at[1, 2].set(IGNORE_INDEX).at[0, 5].set(
        IGNORE_INDEX)
    cot = jnp.asarray(rng.random((2, 6)), jnp.float32)

    def plain(lg):
        logp = jax.nn.log_softmax(lg.astype(jnp.float32), axis=-1)
        picked = jnp.take_along_axis(logp, jnp.maximum(targets, 0)[..., None], axis=-1)[..., 0]
        return jnp.where(targets != IGNORE_INDEX, -picked, 0.0)

    got = objective.token_nll(logits, targets)
    got_vjp = jax.grad(lambda lg: jnp.sum(objective.token_nll(lg, targets) * cot))(logits)
    want, want_vjp = plain(logits), jax.grad(lambda lg: jnp.sum(plain(lg) * cot))(logits)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # the value is the same ops
    assert got_vjp.dtype == dtype
    tol = 1e-6 if dtype == jnp.float32 else 1e-2
    assert rel_err(got_vjp.astype(jnp.float32), want_vjp.astype(jnp.float32)) <= tol
    assert not np.any(np.asarray(got_vjp[1, 2])) and not np.any(np.asarray(got_vjp[0, 5]))



def test_forward_process_statistics():
    """t ~ U(0,1) per row, p = (1 − 1e-3)·t + 1e-3, masks only maskable positions with probability p.
    Tolerance: 5 binomial / uniform standard deviations."""
    b, s = 2000, 256
    maskable = jnp.asarray(np.random.default_rng(2).random((b, s)) < 0.6)
    masked, p = jax.jit(objective.forward_process)(jax.random.key(0), maskable)
    masked, p, maskable = np.asarray(masked), np.asarray(p), np.asarray(maskable)
    assert not (masked & ~maskable).any()
    assert (p >= 1e-3).all() and (p <= 1.0).all()
    t = (p - 1e-3) / (1 - 1e-3)
    assert abs(t.mean() - 0.5) < 5 * np.sqrt(1 / 12 / b)
    frac = masked.sum() / maskable.sum()
    expected = (p * maskable.sum(1)).sum() / maskable.sum()
    assert abs(frac - expected) < 5 * np.sqrt(0.25 / maskable.sum())
    per_row = masked.sum(1) / maskable.sum(1)
    assert np.corrcoef(per_row, p)[0, 1] > 0.99  # one noise level per row
    noised = np.asarray(jax.jit(objective.noise_inputs, static_argnums=2)(jnp.full((b, s), 7), jnp.asarray(masked), 3))
    np.testing.assert_array_equal(noised, np.where(masked, 3, 7))


# --------------------------------------------------------------------------------------------- through the model
@pytest.fixture(scope="module")
def model_batch():
    c = tiny_config()
    dv = random_dream_vl(c, seed=0)
    rng = np.random.default_rng(3)
    grid = np.array([[1, 4, 4]])  # 16 patches → 4 image tokens
    pad, s = c.pad_token_id, 20
    row0 = [20, 21] + [c.image_token_id] * 4 + list(rng.integers(20, 300, 8))  # 14 tokens
    row1 = [22, 23, 24, 25] + list(rng.integers(20, 300, 6))  # 10 tokens, no image
    ids = np.full((2, s), pad)
    ids[0, :14], ids[1, :10] = row0, row1
    labels = np.where(ids == pad, pad, ids)
    labels[0, :6] = IGNORE_INDEX  # prompt + image
    labels[1, :4] = IGNORE_INDEX
    mask = np.ones((2, s), np.int32)
    mask[0, 18:] = 0  # post-splice padding: not attended, not maskable
    labels[0, 18:] = IGNORE_INDEX
    pv = rng.standard_normal((16, c.vision.patch_dim)).astype(np.float32)
    kw = dv.prepare_inputs(ids, mask, pv, grid)
    batch = dict(kw, labels=labels)
    return dv, batch


def test_loss_fn_equals_reference_on_the_full_forward(model_batch):
    """loss_fn (vision tower + mask embedding + decoder) equals the numpy objective evaluated on the logits
    of ``DreamVLModel.__call__`` for the same masks, for two weightings (tolerance 1e-5: two compiled
    programs)."""
    dv, batch = model_batch

    @jax.jit
    def run(prm, r):
        cart, aux = objective.loss_fn(prm, batch, r, dv.module, weighting="cart")
        original = objective.loss_fn(prm, batch, r, dv.module, weighting="original")[0]
        noised = jnp.where(aux["masked"], dv.config.mask_token_id, batch["input_ids"])
        logits = dv.module.apply(prm, noised, batch["attention_mask"], batch["position_ids"], batch["pixel_values"],
                                 batch["patch_positions"], batch["patch_segment_ids"])
        return cart, aux, original, logits

    cart, aux, original, logits = run(dv.params, jax.random.key(1))
    masked, p = np.asarray(aux["masked"]), np.asarray(aux["p"])
    assert masked.any() and not (masked & (batch["labels"] == IGNORE_INDEX)).any()
    for loss, weighting in ((cart, "cart"), (original, "original")):
        ref_loss = np_objective(np.asarray(logits), batch["labels"], masked, p, weighting)[0]
        assert abs(float(loss) - ref_loss) / abs(ref_loss) <= 1e-5, weighting
    assert rel_err(aux["weights"], np_objective(np.asarray(logits), batch["labels"], masked, p, "cart")[1]) <= TOL


def test_loss_fn_gradient_directional_finite_difference_and_pad_row(model_batch):
    """d loss / d params along a random direction of lm_head equals a central finite difference (same masks:
    the rng is fixed; fp32 with step 1e-2 → tolerance 1e-2 relative). With ``freeze_pad_embedding`` the
    ``pad_token_id`` row of embed_tokens gets exactly zero gradient; other rows are unchanged. Text only, and
    without ``position_ids`` in the batch: the default positions equal the reference's 0, 1, 2, …"""
    dv, image_batch = model_batch
    batch = {k: v for k, v in image_batch.items()
             if k in ("input_ids", "labels", "attention_mask")}
    batch["input_ids"] = np.where(batch["input_ids"] == dv.config.image_token_id, 40, batch["input_ids"])
    rng = jax.random.key(2)
    head = dv.params["params"]["lm_head"]["kernel"]
    direction = jax.random.normal(jax.random.key(3), head.shape)
    eps = 1e-2

    def loss(prm, freeze=False, positions=None):
        b = batch if positions is None else dict(batch, position_ids=positions)
        return objective.loss_fn(prm, b, rng, dv.module, freeze_pad_embedding=freeze)

    def with_head(prm, h):
        prm = jax.tree_util.tree_map(lambda x: x, prm)
        prm["params"]["lm_head"]["kernel"] = h
        return loss(prm)[0]

    @jax.jit  # one program: XLA shares the common forward computations
    def run(prm):
        (default_pos_loss, aux), grads = jax.value_and_grad(loss, has_aux=True)(prm)
        frozen = jax.grad(lambda q: loss(q, freeze=True)[0])(prm)
        fd = (with_head(prm, head + eps * direction) - with_head(prm, head - eps * direction)) / (2 * eps)
        explicit_pos_loss = loss(prm, positions=text_position_ids(batch["attention_mask"]))[0]
        return aux["masked"], grads, frozen, fd, default_pos_loss, explicit_pos_loss

    masked, grads, frozen, fd, default_pos_loss, explicit_pos_loss = run(dv.params)
    assert float(default_pos_loss) == pytest.approx(float(explicit_pos_loss), rel=1e-6)
    analytic = float(jnp.sum(grads["params"]["lm_head"]["kernel"] * direction))
    assert abs(float(fd) - analytic) <= 1e-2 * abs(analytic)

    # The pad row is looked up at attended, unmasked EOS-pad positions, so it has a gradient unless frozen.
    pad = dv.config.pad_token_id
    attended_pad = (batch["input_ids"] == pad) & (batch["attention_mask"] == 1) & ~np.asarray(masked)
    assert attended_pad.any()
    table = lambda g: np.asarray(g["params"]["model"]["embed_tokens"]["embedding"])  # noqa: E731
    assert np.abs(table(grads)[pad]).max() > 0
    assert np.abs(table(frozen)[pad]).max() == 0.0
    other = batch["input_ids"][1, 5]
    np.testing.assert_allclose(table(frozen)[other], table(grads)[other], rtol=1e-5, atol=1e-9)


# --------------------------------------------------------------------------------------------- SFT maskable set
IM_START, IM_END, NL, ASSISTANT, USER, SYSTEM, IMG, PAD = 10, 11, 12, 13, 14, 15, 5, 2


def _turn(role, content):
    return [IM_START, role, NL] + content + [IM_END, NL]


def test_sft_labels_follow_the_reference_rules():
    sys_turn = _turn(SYSTEM, [20, 21])
    user = _turn(USER, [IMG, IMG, IMG, NL, 22, NL, 23])  # "<image>\n" + text with a lone "\n" token
    answer = _turn(ASSISTANT, [24, 25, 26])
    row0 = sys_turn + user + answer + _turn(USER, [27]) + _turn(ASSISTANT, [28, NL, 29])
    row1 = sys_turn + _turn(USER, [30]) + answer
    s = len(row0) + 6
    ids = np.full((2, s), 0)
    ids[0, :len(row0)], ids[1, :len(row1)] = row0, row1
    lengths = [len(row0), len(row1)]
    assistant = sft_labels.assistant_turn_mask(ids, im_start_id=IM_START, im_end_id=IM_END, newline_id=NL,
                                              assistant_role_ids=[ASSISTANT, NL])
    out = sft_labels.sft_labels(ids, assistant, lengths, structural_ids=[NL, IM_START, IM_END], pad_token_id=PAD,
                               never_maskable_ids=[IMG])

    # Independent expectation, token by token.
    for r, row in enumerate([row0, row1]):
        in_assistant, want_labels, turn_role = [], [], None
        for k, tok in enumerate(row):
            if tok == IM_START:
                turn_role = row[k + 1]
            in_assistant.append(turn_role == ASSISTANT)
            if turn_role == ASSISTANT or tok in (NL, IM_START, IM_END):
                want_labels.append(tok)
            else:
                want_labels.append(IGNORE_INDEX)
            if tok == NL and k > 0 and row[k - 1] == IM_END:
                turn_role = None
        np.testing.assert_array_equal(assistant[r, :len(row)], in_assistant)
        np.testing.assert_array_equal(out["labels"][r, :len(row)], want_labels)
    # Padding: row 1 gets (len0 − len1) EOS targets, attended; beyond that ignored and not attended.
    n_eos = lengths[0] - lengths[1]
    np.testing.assert_array_equal(out["labels"][1, lengths[1]:lengths[1] + n_eos], PAD)
    np.testing.assert_array_equal(out["attention_mask"][1, :lengths[1] + n_eos], 1)
    np.testing.assert_array_equal(out["labels"][:, lengths[0]:], IGNORE_INDEX)
    np.testing.assert_array_equal(out["attention_mask"][:, lengths[0]:], 0)
    np.testing.assert_array_equal(out["input_ids"][1, lengths[1]:], PAD)
    assert (out["labels"][ids == IMG] == IGNORE_INDEX).all()
    # Explicit per-row EOS counts (the reference's pre-splice text lengths) override the default.
    out2 = sft_labels.sft_labels(ids, assistant, lengths, structural_ids=[NL, IM_START, IM_END], pad_token_id=PAD,
                                num_eos_targets=[2, 1])
    assert list((out2["labels"] == PAD).sum(1)) == [2, 1]


def test_sft_labels_bad_input():
    ids = np.zeros((1, 4), int)
    with pytest.raises(ValueError, match="lengths"):
        sft_labels.sft_labels(ids, np.zeros((1, 4), bool), [5], structural_ids=[1], pad_token_id=2)
    with pytest.raises(ValueError, match="assistant_mask shape"):
        sft_labels.sft_labels(ids, np.zeros((1, 3), bool), [4], structural_ids=[1], pad_token_id=2)
    with pytest.raises(ValueError, match="weighting"):
        objective.token_weights(jnp.ones((1, 2), bool), jnp.ones(1), "1/t")
