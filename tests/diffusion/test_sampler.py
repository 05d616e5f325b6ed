"""The compiled sampler (spec §5) against an independent step-by-step numpy implementation.

``reference_generate`` below re-implements §5.2 from the spec in numpy: the canvas, the schedule from
``torch.linspace`` (float32) with Python ``int()`` truncation through torch scalars as the reference
computes it, the logit shift, the eos penalty, the filters, the confidences, the per-row or flattened-batch
top-k and the HF generator's embedding cache (vision features computed once; masked positions re-embedded
from the token table). It calls the model only for its embedding/vision methods and a jitted
decoder + lm_head forward.

Deterministic settings must match token for token, with equal reveal counts at every step. Random settings
(``origin``, temperature, top_p, top_k, alg_temp) are checked statistically over many rows sharing one
prompt: every empirical frequency f of a probability p must satisfy |f − p| ≤ 5·sqrt(p(1 − p)/N) + 3/N.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402

from dreamjax.diffusion import sampler, schedule  # noqa: E402
from dreamjax.models.dream_vl import DreamVLModel  # noqa: E402
from dreamjax.models.positions import text_position_ids  # noqa: E402
from tests.diffusion import random_dream_vl  # noqa: E402
from tests.tiny import tiny_config  # noqa: E402

GRID = np.array([[1, 4, 4]])  # one 4×4-patch image → 4 image tokens


@pytest.fixture(scope="module")
def dv():
    return random_dream_vl(tiny_config(), seed=0, head_gain=3.0)


@pytest.fixture(scope="module")
def prompt(dv):
    """Two rows: row 0 holds an image, row 1 is left-padded (attention 0 on the pads)."""
    c = dv.config
    img = c.image_token_id
    ids = np.array([[20, 21, img, img, img, img, 22, 23],
                    [c.pad_token_id, c.pad_token_id, 24, 25, 26, 27, 28, 29]])
    mask = np.array([[1] * 8, [0, 0] + [1] * 6])
    pv = np.random.default_rng(0).standard_normal((16, c.vision.patch_dim)).astype(np.float32)
    return ids, mask, pv


# --------------------------------------------------------------------------------------------- numpy reference
@jax.jit
def _logits(params, embeds, attention_mask, position_ids):
    return DreamVLModel(tiny_config()).apply(params, embeds, attention_mask, position_ids,
                                             method=lambda m, e, a, p: m.lm_logits(m.decode(e, a, p)))


@jax.jit
def _embed(params, canvas, images):
    def fn(m, ids, images):
        return m.embed(ids, m.encode_images(*images) if images is not None else None)

    return DreamVLModel(tiny_config()).apply(params, canvas, images, method=fn)


def _initial_embeds(dv, canvas, attention_mask, pv):
    """Token embeddings with the image features spliced in (vision tower run once)."""
    kw = dv.prepare_inputs(canvas, attention_mask, pv, GRID if pv is not None else None)
    images = (kw["pixel_values"], kw["patch_positions"], kw["patch_segment_ids"]) if pv is not None else None
    return np.array(_embed(dv.params, canvas, images))


def np_softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def np_filter(logits, top_p=None, top_k=None):
    lg = logits.astype(np.float32).copy()
    neg = np.finfo(np.float32).min
    for row in lg:
        if top_p is not None and top_p < 1:
            order = np.argsort(-row, kind="stable")
            cum = np.cumsum(np_softmax(row[order].astype(np.float64)))
            drop = np.concatenate([[False], cum[:-1] > top_p])  # keep the first token over the threshold
            row[order[drop]] = neg
        if top_k is not None:
            kth = np.sort(row)[-min(top_k, len(row))]
            row[row < kth] = neg
    return lg


def np_propose(logits, alg, top_p=None, top_k=None):
    """temperature 0: (confidence, argmax token) per row of [n, V] logits."""
    probs = np_softmax(np_filter(logits, top_p, top_k).astype(np.float64))
    tokens = probs.argmax(-1)
    conf = probs.max(-1)
    if alg == "topk_margin":
        srt = np.sort(probs, -1)
        conf = srt[:, -1] - srt[:, -2]
    elif alg == "entropy":
        conf = (probs * np.log(probs + 1e-10)).sum(-1)
    return conf, tokens


def reference_generate(dv, ids, mask, pv, *, max_new, steps, alg, eps=1e-3, top_p=None, top_k=None,
                       eos_penalty=0.0, flat=False):
    """Spec §5.2 / §5.3 (B) with temperature 0 (deterministic algs). Returns (canvas, history list)."""
    c = dv.config
    b = ids.shape[0]
    x = np.concatenate([ids, np.full((b, max_new), c.mask_token_id)], 1)
    attn = np.concatenate([mask, np.ones((b, max_new), int)], 1)
    pos = text_position_ids(attn)
    embeds = _initial_embeds(dv, x, attn, pv)
    table = np.asarray(dv.params["params"]["model"]["embed_tokens"]["embedding"])
    ts = torch.linspace(1, eps, steps + 1)
    history = []
    for i in range(steps):
        mask_index = x == c.mask_token_id
        logits = np.asarray(_logits(dv.params, embeds, attn, pos))
        logits = np.concatenate([logits[:, :1], logits[:, :-1]], axis=1)  # position j ← logit j − 1
        rows, cols = np.nonzero(mask_index)  # row-major: the order of torch's boolean indexing
        t, s = ts[i], ts[i + 1]
        mask_logits = logits[rows, cols].copy()
        mask_logits[:, c.pad_token_id] += np.float32((eos_penalty * torch.log(1 - t + eps)).item())
        conf, x0 = np_propose(mask_logits, alg, top_p, top_k)
        groups = [np.arange(len(rows))] if flat else [np.flatnonzero(rows == r) for r in range(b)]
        for g in groups:
            m = len(g)
            n = int(torch.tensor(m) * (1 - s / t)) if i < steps - 1 else m
            chosen = g[np.argsort(-conf[g], kind="stable")[:n]]
            x[rows[chosen], cols[chosen]] = x0[chosen]
        embeds[mask_index] = table[x[mask_index]]  # the HF generator's embedding cache
        history.append(x.copy())
    return x, history


def reveals_per_step(history, mask_id, start_masks):
    left = [start_masks] + [(h == mask_id).sum(1) for h in history]
    return np.stack([a - b for a, b in zip(left[:-1], left[1:])])


# --------------------------------------------------------------------------------------------- schedule
def test_schedule_is_torch_linspace_bit_for_bit_and_truncates_like_int():
    for steps in list(range(1, 300)) + [511, 512, 1024]:
        for eps in (1e-3, 1e-2, 0.25):
            np.testing.assert_array_equal(schedule.timesteps(steps, eps), torch.linspace(1, eps, steps + 1).numpy())
    # Spec §5.2: steps = canvas length L → step 0 reveals 0, then 1 per step, the last step 2.
    for length in (128, 512):
        counts = schedule.reveal_counts(length, length)
        assert counts[0] == 0 and counts[-1] == 2 and (counts[1:-1] == 1).all() and counts.sum() == length
    assert list(schedule.reveal_counts(10, 1)) == [10]
    with pytest.raises(ValueError, match="steps"):
        schedule.timesteps(0)


# --------------------------------------------------------------------------------------------- deterministic parity
DETERMINISTIC = [
    dict(alg="maskgit_plus", steps=5, max_new=8),
    dict(alg="topk_margin", steps=8, max_new=8, image=False),
    dict(alg="entropy", steps=3, max_new=8, eos_penalty=2.0, image=False),
    dict(alg="maskgit_plus", steps=4, max_new=8, top_p=0.7, top_k=4, image=False),
    dict(alg="entropy", steps=10, max_new=4, image=False),  # more steps than tokens: allowed, some reveal 0
    dict(alg="maskgit_plus", steps=5, max_new=8, flat=True),
]


@pytest.mark.parametrize("case", DETERMINISTIC, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_deterministic_generation_matches_numpy_reference(dv, prompt, case):
    ids, mask, pv = prompt
    case = dict(case)
    max_new, flat = case.pop("max_new"), case.pop("flat", False)
    if not case.pop("image", True):  # text-only prompt (one compile less of the vision tower)
        ids, pv = np.where(ids == dv.config.image_token_id, 30, ids), None
    out, hist = dv.generate(ids, mask, pv, GRID if pv is not None else None, max_new_tokens=max_new,
                            flat_batch=flat, output_history=True, **case)
    ref, ref_hist = reference_generate(dv, ids, mask, pv, max_new=max_new, flat=flat, **case)
    np.testing.assert_array_equal(np.asarray(out), ref)
    np.testing.assert_array_equal(np.asarray(hist), np.stack(ref_hist))
    mask_id = dv.config.mask_token_id
    start = np.full(ids.shape[0], max_new)
    np.testing.assert_array_equal(reveals_per_step(list(np.asarray(hist)), mask_id, start),
                                  reveals_per_step(ref_hist, mask_id, start))
    assert (np.asarray(out)[:, : ids.shape[1]] == ids).all()


def test_rows_are_independent_and_flat_batch_couples_them(dv, prompt):
    """Default: a row's result does not depend on the other rows (deterministic and random algs). With
    flat_batch=True rows compete for one reveal budget (the HF generator), so changing row 1 can change row 0;
    that behaviour equals the numpy reference in flat mode (previous test)."""
    ids, mask, pv = prompt
    others = [np.array([30, 31, 32, 33, 34, 35, 36, 37]), np.array([40, 41, 42, 43, 44, 45, 46, 47]),
              np.array([50, 51, 52, 53, 54, 55, 56, 57])]
    kw = dict(max_new_tokens=8, steps=5, output_history=True)  # the parity test's settings: no new compile
    results = {}
    for alg, extra in (("maskgit_plus", {}), ("origin", dict(rng=jax.random.key(7), temperature=1.0)),
                       ("maskgit_plus", dict(flat_batch=True))):
        rows0 = []
        for other in others:
            ids2 = ids.copy()
            ids2[1] = other
            out = np.asarray(dv.generate(ids2, np.ones_like(mask), pv, GRID, alg=alg, **kw, **extra)[0])
            rows0.append(out[0])
        results[(alg, bool(extra.get("flat_batch")))] = rows0
    for key in (("maskgit_plus", False), ("origin", False)):
        for row in results[key][1:]:
            np.testing.assert_array_equal(row, results[key][0])
    flat_rows = results[("maskgit_plus", True)]
    assert any(not np.array_equal(row, flat_rows[0]) for row in flat_rows[1:])


# --------------------------------------------------------------------------------------------- statistics
def _step0_logits(dv, prompt_row, max_new):
    c = dv.config
    x = np.concatenate([prompt_row, np.full(max_new, c.mask_token_id)])[None]
    attn = np.ones_like(x)
    embeds = _initial_embeds(dv, x, attn, None)
    logits = np.asarray(_logits(dv.params, embeds, attn, text_position_ids(attn)))[0]
    return np.concatenate([logits[:1], logits[:-1]])[len(prompt_row):]  # shifted, canvas positions


def _assert_frequencies(samples, probs, n):
    freq = np.bincount(samples, minlength=len(probs)) / n
    tol = 5 * np.sqrt(probs * (1 - probs) / n) + 3 / n
    bad = np.flatnonzero(np.abs(freq - probs) > tol)
    assert bad.size == 0, (bad, freq[bad], probs[bad])


def test_origin_reveal_probability_and_sampled_tokens(dv):
    """origin, step 0 of 3: each masked position is revealed with probability p = 1 − s/t with a sample of
    softmax(logits / T) of the shared step-0 canvas. A sample may be the mask token itself (the reference
    does not exclude it), so a position stays masked with probability (1 − p) + p·P(mask token), and the
    visible tokens follow the softmax without the mask token."""
    n_rows, max_new, steps, temperature = 3000, 2, 3, 1.5
    row = np.array([20, 21, 22, 23])
    _, hist = dv.generate(np.tile(row, (n_rows, 1)), max_new_tokens=max_new, steps=steps, alg="origin",
                          temperature=temperature, rng=jax.random.key(1), output_history=True)
    step0 = np.asarray(hist)[0, :, len(row):]
    mask_id = dv.config.mask_token_id
    ts = torch.linspace(1, 1e-3, steps + 1)
    p = float(1 - ts[1] / ts[0])
    logits = _step0_logits(dv, row, max_new)
    for j in range(max_new):
        probs = np_softmax(logits[j].astype(np.float64) / temperature)
        still = (1 - p) + p * probs[mask_id]
        assert abs((step0[:, j] == mask_id).mean() - still) <= 5 * np.sqrt(still * (1 - still) / n_rows)
        visible = step0[:, j] != mask_id
        probs[mask_id] = 0
        _assert_frequencies(step0[visible, j], probs / probs.sum(), int(visible.sum()))


def test_sampled_tokens_follow_the_filtered_softmax(dv):
    """steps = 1 reveals every position at once with a sampled token: over N rows, token frequencies at each
    position match softmax(filter(logits / T)) with nucleus 0.8 and top-k 5; filtered-out tokens never
    appear."""
    n_rows, max_new, temperature, top_p, top_k = 2000, 2, 0.8, 0.8, 5
    row = np.array([20, 21, 22, 23])
    out = np.asarray(dv.generate(np.tile(row, (n_rows, 1)), max_new_tokens=max_new, steps=1, alg="maskgit_plus",
                                 temperature=temperature, top_p=top_p, top_k=top_k, rng=jax.random.key(3)))
    logits = _step0_logits(dv, row, max_new)
    for j in range(max_new):
        probs = np_softmax(np_filter(logits[j:j + 1] / np.float32(temperature), top_p, top_k).astype(np.float64))[0]
        samples = out[:, len(row) + j]
        assert probs[samples].min() > 0 and (probs > 0).sum() > 1  # inside the nucleus ∩ top-k, not argmax
        _assert_frequencies(samples, probs, n_rows)


def test_alg_temp_samples_positions_by_softmax_of_confidence(dv):
    """maskgit_plus with alg_temp: step 0 of (4 masks, 2 steps) reveals int(4·(1 − s/t)) = 1 position, drawn
    ∝ softmax(confidence / alg_temp) with confidence the argmax probability (temperature 0)."""
    n_rows, max_new, alg_temp = 2000, 4, 0.05
    row = np.array([20, 21, 22, 23])
    _, hist = dv.generate(np.tile(row, (n_rows, 1)), max_new_tokens=max_new, steps=2, alg="maskgit_plus",
                          alg_temp=alg_temp, rng=jax.random.key(5), output_history=True)
    first = np.asarray(hist)[0, :, len(row):] != dv.config.mask_token_id
    assert (first.sum(1) == 1).all()
    conf, _ = np_propose(_step0_logits(dv, row, max_new), "maskgit_plus")
    want = np_softmax(conf / alg_temp)
    assert want.max() < 0.9  # a non-degenerate distribution over positions
    _assert_frequencies(first.argmax(1), want, n_rows)


# --------------------------------------------------------------------------------------------- structure
class _MarkedModel(DreamVLModel):
    """Marks every vision-tower run with a debug callback, so the traced program shows where it runs."""

    def encode_images(self, pixel_values, patch_positions, patch_segment_ids):
        jax.debug.callback(lambda: None)
        return super().encode_images(pixel_values, patch_positions, patch_segment_ids)


def _count_callbacks(jaxpr, in_loop=False, counts=None):
    """{False: callbacks outside any loop, True: inside a scan/while body} over the nested jaxprs."""
    counts = {False: 0, True: 0} if counts is None else counts
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "debug_callback":
            counts[in_loop] += 1
        loop = in_loop or eqn.primitive.name in ("scan", "while")
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", None)
                if inner is not None:
                    _count_callbacks(getattr(inner, "jaxpr", inner), loop, counts)
    return counts


def test_vision_tower_runs_once_per_call(dv, prompt):
    """The traced sampler (5 steps) holds exactly one vision-tower run, outside the step loop; each step only
    re-embeds tokens (the HF generator's embedding cache, spec §11.13)."""
    ids, mask, pv = prompt
    settings = sampler.SamplerSettings(steps=5, alg="maskgit_plus")
    canvas, canvas_mask = sampler.make_canvas(ids, mask, 8, dv.config.mask_token_id)
    kw = dv.prepare_inputs(canvas, canvas_mask, pv, GRID)
    images = (kw["pixel_values"], kw["patch_positions"], kw["patch_segment_ids"])
    traced = jax.make_jaxpr(lambda prm: sampler._sample(
        prm, kw["input_ids"], kw["attention_mask"], kw["position_ids"], images,
        schedule.transfer_fractions(5), schedule.eos_penalty_terms(5), jax.random.key(0),
        model=_MarkedModel(dv.config), settings=settings, start=ids.shape[1]))(dv.params)
    assert _count_callbacks(traced.jaxpr) == {False: 1, True: 0}


def test_output_is_cut_at_the_first_stop_token():
    ids = np.array([[7, 8, 40, 41, 2, 42, 2], [7, 8, 43, 11, 44, 2, 2], [7, 8, 45, 46, 47, 48, 49]])
    assert sampler.cut_at_stop(ids, 2, [2]) == [[40, 41], [43, 11, 44], [45, 46, 47, 48, 49]]
    assert sampler.cut_at_stop(ids, 2, [2, 11]) == [[40, 41], [43], [45, 46, 47, 48, 49]]

    class Tok:
        def token_to_id(self, token):
            return {"<|im_end|>": 11}.get(token)

        def decode(self, row):
            return " ".join(map(str, row))

    stops = sampler.default_stop_ids(tiny_config(), Tok())
    assert stops == (2, 11)
    assert sampler.decode_generated(Tok(), ids, 2, stops) == ["40 41", "43", "45 46 47 48 49"]
    assert sampler.default_stop_ids(tiny_config()) == (2,)


@pytest.mark.parametrize("kwargs,match", [
    (dict(alg="greedy"), "unknown alg"),
    (dict(steps=0), "steps"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(alg_temp=-0.1), "alg_temp"),
    (dict(eps=0.0), "eps"),
])
def test_bad_settings_fail_early(dv, kwargs, match):
    kw = dict(max_new_tokens=4, steps=2)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        dv.generate(np.array([[20, 21]]), **kw)


def test_bad_inputs_fail_early(dv):
    mask_id = dv.config.mask_token_id
    with pytest.raises(ValueError, match="first token"):
        dv.generate(np.array([[mask_id, 21]]), max_new_tokens=2, steps=2)
    with pytest.raises(ValueError, match="image-pad tokens but no pixel_values"):
        dv.generate(np.array([[20, dv.config.image_token_id]]), max_new_tokens=2, steps=2)
    with pytest.raises(ValueError, match="attention_mask shape"):
        dv.generate(np.array([[20, 21]]), np.ones((1, 3)), max_new_tokens=2, steps=2)
    with pytest.raises(ValueError, match="input_ids must be"):
        dv.generate(np.array([20, 21]), max_new_tokens=2, steps=2)


def test_mask_tokens_in_the_prompt_are_filled_too(dv):
    """Infilling: a mask token inside the prompt is generated like the canvas (the reference's mask_index
    covers the whole sequence), with the model's logits over the whole canvas."""
    c = dv.config
    ids = np.array([[20, 21, c.mask_token_id, 23]])
    out = dv.generate(ids, max_new_tokens=3, steps=4, alg="entropy")
    ref, _ = reference_generate(dv, ids, np.ones_like(ids), None, max_new=3, steps=4, alg="entropy")
    np.testing.assert_array_equal(np.asarray(out), ref)
    assert np.asarray(out)[0, 2] != c.mask_token_id
