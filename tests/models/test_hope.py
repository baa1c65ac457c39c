"""The Hope-style block: its delta-rule memory against a NumPy loop, the chunked form against
the recurrence, causality, the plain-block limit, saving and compilation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import keras

import nested_research  # noqa: F401  (registers the layers)
from nested_research.models import HopeBlock
from nested_research.models.hope import delta_rule_chunked, delta_rule_recurrent

SEED = 1234
D = 8


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(SEED)
    yield


def _block(**kw):
    kw = {"num_heads": 2, "conv_size": 3, "chunk_size": 4, "cms_hidden_units": (6, 5),
          "cms_chunk_sizes": (2, 3), "cms_inner_learning_rates": (0.1, 0.05), **kw}
    block = HopeBlock(**kw)
    block.build((None, None, D))
    return block


def _x(seed, batch=2, length=10):
    return np.random.default_rng(seed).normal(size=(batch, length, D)).astype("float32")


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _reference_memory(block, x):
    """``x + Wo o`` by a plain NumPy loop over sequences, heads and tokens."""
    w = {v.name: v.numpy().astype(np.float64) for v in block.weights}
    x = x.astype(np.float64)
    batch, length, d = x.shape
    heads, dh, taps = block.num_heads, d // block.num_heads, block.conv_size
    out = np.zeros_like(x)
    for b in range(batch):
        c = np.zeros((length, d))
        for t in range(length):
            for j in range(taps):  # conv[taps - 1] multiplies x_t, conv[taps - 2] x_{t-1}, ...
                if t - (taps - 1 - j) >= 0:
                    c[t] += w["conv"][j] * x[b, t - (taps - 1 - j)]
        eta = _sigmoid(c @ w["w_eta"] + w["b_eta"])
        alpha = _sigmoid(c @ w["w_alpha"] + w["b_alpha"])
        o = np.zeros((length, d))
        for h in range(heads):
            cols = slice(h * dh, (h + 1) * dh)
            m = np.zeros((dh, dh))
            for t in range(length):
                q, k = (c[t] @ w["wq"])[cols], (c[t] @ w["wk"])[cols]
                q, k = q / math.sqrt(q @ q + 1e-6), k / math.sqrt(k @ k + 1e-6)
                v = (c[t] @ w["wv"])[cols]
                m = m @ (alpha[t, h] * np.eye(dh) - eta[t, h] * np.outer(k, k)) \
                    + eta[t, h] * np.outer(v, k)
                o[t, cols] = m @ q
        out[b] = x[b] + o @ w["wo"]
    return out


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 4, 10, 16])
def test_memory_matches_numpy_loop(chunk_size):
    block = _block(chunk_size=chunk_size)
    x = _x(0)
    np.testing.assert_allclose(block.memory(x).numpy(), _reference_memory(block, x),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 7, 13, 32])
def test_chunked_equals_recurrence(chunk_size):
    """Random q, k, v, gates over several chunk sizes, some not dividing the length 13."""
    rng = np.random.default_rng(chunk_size)
    n, length, dk, dv = 3, 13, 4, 5

    def unit(a):
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    q = unit(rng.normal(size=(n, length, dk))).astype("float32")
    k = unit(rng.normal(size=(n, length, dk))).astype("float32")
    v = rng.normal(size=(n, length, dv)).astype("float32")
    eta = rng.uniform(0.0, 1.0, size=(n, length)).astype("float32")
    alpha = rng.uniform(0.5, 1.0, size=(n, length)).astype("float32")
    seq = delta_rule_recurrent(q, k, v, eta, alpha).numpy()
    par = delta_rule_chunked(q, k, v, eta, alpha, chunk_size).numpy()
    np.testing.assert_allclose(par, seq, rtol=1e-5, atol=1e-5)


def test_chunked_block_equals_token_by_token_block():
    x = _x(1, length=11)
    token = _block(chunk_size=None)
    for c in (2, 4, 5):
        chunked = _block(chunk_size=c)
        chunked.set_weights(token.get_weights())
        np.testing.assert_allclose(chunked(x).numpy(), token(x).numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_causal(chunk_size):
    block = _block(chunk_size=chunk_size)
    rng = np.random.default_rng(2)
    x = _x(2, batch=1)
    base = block(x).numpy()
    for t in range(x.shape[1]):
        changed = x.copy()
        changed[:, t + 1:] = rng.normal(size=changed[:, t + 1:].shape)
        np.testing.assert_allclose(block(changed).numpy()[:, :t + 1], base[:, :t + 1],
                                   rtol=0, atol=1e-6)


def test_zero_inner_rate_is_the_plain_block():
    """CMS rates 0: the memory's output through plain residual MLPs (the block without
    in-context CMS updates)."""
    block = _block(cms_inner_learning_rates=(0.0, 0.0))
    x = _x(3)
    h = _reference_memory(block, x)
    erf = np.vectorize(math.erf)
    for w1, w2 in zip(block.cms.w1, block.cms.w2):
        pre = h @ w1.numpy()
        h = h + (pre * 0.5 * (1.0 + erf(pre / math.sqrt(2.0)))) @ w2.numpy()
    np.testing.assert_allclose(block(x).numpy(), h, rtol=1e-5, atol=1e-5)


def _model(block, length=10):
    inputs = keras.Input(shape=(length, D))
    return keras.Model(inputs, block(inputs))


def test_config_and_keras_round_trip(tmp_path):
    block = HopeBlock(num_heads=4, conv_size=2, chunk_size=3, cms_hidden_units=(6,),
                      cms_chunk_sizes=(None,), cms_inner_learning_rates=(0.2,),
                      stop_inner_gradient=True)
    config = block.get_config()
    assert HopeBlock.from_config(config).get_config() == config
    model = _model(block)
    x = _x(4)
    path = tmp_path / "hope.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[-1], HopeBlock)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_compiled_equals_eager():
    model = _model(_block(chunk_size=3, cms_inner_learning_rates=(0.01, 0.005)))
    x = _x(5, batch=4)
    eager = model(x).numpy()
    model.compile(jit_compile=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), eager, rtol=1e-5, atol=1e-5)


def test_gradients_are_finite():
    import tensorflow as tf

    block = _block(chunk_size=3)
    x = tf.constant(_x(6))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(block(x) ** 2)
    grads = tape.gradient(loss, block.trainable_variables)
    assert len(grads) == len(block.trainable_variables) == 9 + 4
    assert all(g is not None and np.isfinite(g.numpy()).all() for g in grads)


@pytest.mark.parametrize("kwargs, message", [
    ({"chunk_size": 0}, "chunk_size=0 must be an integer >= 1 or None"),
    ({"chunk_size": 2.0}, "chunk_size=2.0 must be an integer >= 1 or None"),
    ({"num_heads": 0}, "num_heads=0 must be an integer >= 1"),
    ({"cms_chunk_sizes": (2, 4)}, "chunk_sizes=[2, 4] must be a list of 1 entries"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError) as err:
        HopeBlock(**kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_heads_must_divide_the_width():
    with pytest.raises(ValueError, match=r"^num_heads=3 must divide the input width d=8$"):
        HopeBlock(num_heads=3).build((None, 10, D))
