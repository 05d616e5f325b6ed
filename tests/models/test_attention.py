"""The attention function: segment masking semantics, GQA head mapping, padded rows, and agreement of the
implementations available on CPU (``xla`` einsum and ``jax.nn.dot_product_attention``)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dreamjax.models.attention import attention


def _naive(q, k, v, seg):
    """Per-row numpy reference: repeat kv heads (repeat_interleave), softmax over same-segment keys."""
    b, s, h, d = q.shape
    kh = k.shape[2]
    k = np.repeat(k, h // kh, axis=2)
    v = np.repeat(v, h // kh, axis=2)
    out = np.zeros_like(q)
    for i in range(b):
        for t in range(s):
            if seg[i, t] == 0:
                continue
            keys = np.flatnonzero(seg[i] == seg[i, t])
            for j in range(h):
                sc = k[i, keys, j] @ q[i, t, j] / np.sqrt(d)
                p = np.exp(sc - sc.max())
                out[i, t, j] = (p / p.sum()) @ v[i, keys, j]
    return out


@pytest.fixture
def qkv():
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 9, 6, 8)).astype(np.float32)
    k = rng.standard_normal((2, 9, 2, 8)).astype(np.float32)
    v = rng.standard_normal((2, 9, 2, 8)).astype(np.float32)
    seg = np.array([[1, 1, 1, 2, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 0, 0, 0]], np.int32)
    return q, k, v, seg


@pytest.mark.parametrize("impl", ["xla", "jax"])
def test_matches_naive_reference_with_segments_and_padding(qkv, impl):
    q, k, v, seg = qkv
    out = np.asarray(attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(seg), impl=impl))
    np.testing.assert_allclose(out, _naive(q, k, v, seg), rtol=2e-5, atol=2e-6)
    assert (out[seg == 0] == 0).all(), "padding query rows are exactly zero"


def test_all_padding_row_is_zero_not_nan(qkv):
    q, k, v, seg = qkv
    seg = seg.copy()
    seg[1] = 0
    for impl in ("xla", "jax"):
        out = np.asarray(attention(q, k, v, seg, impl=impl))
        assert np.isfinite(out).all() and (out[1] == 0).all()


def test_bidirectional_no_causal_mask(qkv):
    q, k, v, seg = qkv
    base = np.asarray(attention(q, k, v, seg))
    v2 = v.copy()
    v2[0, 2] += 1.0  # a later key of segment 1 changes the first query's output
    assert not np.allclose(np.asarray(attention(q, k, v2, seg))[0, 0], base[0, 0])
    assert np.allclose(np.asarray(attention(q, k, v2, seg))[0, 4], base[0, 4]), "other segments unaffected"


def test_bf16_inputs_keep_dtype_and_agree(qkv):
    q, k, v, seg = qkv
    out = attention(*(jnp.asarray(x, jnp.bfloat16) for x in (q, k, v)), jnp.asarray(seg))
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), _naive(q, k, v, seg), atol=5e-2)


def test_splash_kernel_matches_xla():
    """The TPU splash kernel (run in Pallas' interpreter here) with GQA, two segments and a padded tail."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, 256, 4, 128)).astype(np.float32)
    k, v = (rng.standard_normal((2, 256, 2, 128)).astype(np.float32) for _ in range(2))
    seg = np.ones((2, 256), np.int32)
    seg[0, 100:] = 2
    seg[1, 200:] = 0
    ref = np.asarray(attention(q, k, v, seg, impl="xla"))
    out = np.asarray(attention(q, k, v, seg, impl="splash_interpret"))
    assert np.abs(out - ref).max() <= 1e-5 * np.abs(ref).max()


def test_unknown_impl_fails_clearly(qkv):
    q, k, v, seg = qkv
    with pytest.raises(ValueError, match="unknown attention impl"):
        attention(q, k, v, seg, impl="flash")
    if jax.default_backend() != "tpu":
        with pytest.raises(ValueError, match="interpret mode"):
            jax.jit(lambda q, s: attention(q, q, q, s, impl="splash"))(jnp.zeros((1, 128, 2, 128)), seg[:1, :1].repeat(128, 1))
