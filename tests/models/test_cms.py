"""The CMS layer (token mode) against an independent NumPy loop, its cadence, causality, the
plain-MLP limit, saving and compilation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
import keras

import nested_research  # noqa: F401  (registers the layers)
from nested_research.models import CMS

SEED = 1234


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(SEED)
    yield


def _gelu(h):
    erf = np.vectorize(math.erf)
    return h * 0.5 * (1.0 + erf(h / math.sqrt(2.0)))


def _reference(x, w1s, w2s, chunks, etas, act=_gelu):
    """Token by token: each position reads the weights of the last completed chunk; the update
    is the summed gradient of 1/2 ||W2 act(W1 x) - x||^2 over the chunk, from the chain rule
    with a central-difference derivative of act (independent of the layer's closed forms)."""
    x = x.astype(np.float64)
    batch, length, _ = x.shape
    finals, counts = [], []
    for w1, w2, c, eta in zip(w1s, w2s, chunks, etas):
        y = np.zeros_like(x)
        fin = []
        for b in range(batch):
            a1, a2 = w1.astype(np.float64).copy(), w2.astype(np.float64).copy()
            g1, g2 = np.zeros_like(a1), np.zeros_like(a2)
            n = 0
            for t in range(length):
                xt = x[b, t]
                h = xt @ a1
                y[b, t] = xt + act(h) @ a2
                err = act(h) @ a2 - xt
                eps = 1e-6
                dact = (act(h + eps) - act(h - eps)) / (2 * eps)
                g2 += np.outer(act(h), err)
                g1 += np.outer(xt, (a2 @ err) * dact)
                if c is not None and (t + 1) % c == 0:
                    a1, a2 = a1 - eta * g1, a2 - eta * g2
                    g1, g2 = np.zeros_like(a1), np.zeros_like(a2)
                    n += 1
            fin.append((a1, a2))
        finals.append(fin)
        counts.append(n)
        x = y
    return x, finals, counts


def _layer(d=6, **kw):
    kw = {"hidden_units": (5, 7), "chunk_sizes": (2, 4), "inner_learning_rates": (0.1, 0.05),
          **kw}
    layer = CMS(**kw)
    layer.build((None, None, d))
    return layer


def _weights(layer):
    return ([w.numpy() for w in layer.w1], [w.numpy() for w in layer.w2])


def test_matches_numpy_reference_and_counts_updates():
    rng = np.random.default_rng(0)
    layer = _layer()
    x = rng.normal(size=(3, 9, 6)).astype("float32")
    y, states = layer(x, return_state=True)
    ref, finals, counts = _reference(x, *_weights(layer), (2, 4), (0.1, 0.05))
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-5)
    # Cadence: 9 tokens, chunks 2 and 4 -> 4 and 2 updates.
    assert [s[2] for s in states] == counts == [4, 2] == list(layer.updates_per_level(9))
    for (w1, w2, _), fin in zip(states, finals):
        np.testing.assert_allclose(w1.numpy(), np.stack([f[0] for f in fin]), rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(w2.numpy(), np.stack([f[1] for f in fin]), rtol=1e-4,
                                   atol=1e-5)


@pytest.mark.parametrize("act", ["relu", "silu", "tanh", "linear"])
def test_other_activations_match_reference(act):
    fns = {"relu": lambda h: np.maximum(h, 0.0), "silu": lambda h: h / (1 + np.exp(-h)),
           "tanh": np.tanh, "linear": lambda h: h}
    rng = np.random.default_rng(1)
    layer = _layer(activation=act, chunk_sizes=(3, None))
    x = rng.normal(size=(2, 8, 6)).astype("float32")
    y, states = layer(x, return_state=True)
    ref, _, counts = _reference(x, *_weights(layer), (3, None), (0.1, 0.05), act=fns[act])
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-4, atol=1e-5)
    assert [s[2] for s in states] == counts == [2, 0]


def test_causal():
    rng = np.random.default_rng(2)
    layer = _layer(chunk_sizes=(2, 3))
    x = rng.normal(size=(1, 10, 6)).astype("float32")
    base = layer(x).numpy()
    for t in range(10):
        changed = x.copy()
        changed[:, t + 1:] = rng.normal(size=changed[:, t + 1:].shape)
        np.testing.assert_array_equal(layer(changed).numpy()[:, :t + 1], base[:, :t + 1])


def test_state_resets_per_sequence():
    """Each sequence of a batch has its own fast weights: a batch equals its rows run alone."""
    rng = np.random.default_rng(3)
    layer = _layer()
    x = rng.normal(size=(3, 9, 6)).astype("float32")
    together = layer(x).numpy()
    for b in range(3):
        np.testing.assert_allclose(layer(x[b:b + 1]).numpy()[0], together[b], rtol=1e-5,
                                   atol=1e-6)


def test_zero_inner_rate_is_the_plain_mlp():
    rng = np.random.default_rng(4)
    layer = _layer(inner_learning_rates=(0.0, 0.0))
    x = rng.normal(size=(2, 9, 6)).astype("float32")
    plain = x
    for w1, w2 in zip(*_weights(layer)):
        plain = plain + keras.ops.convert_to_numpy(keras.activations.gelu(plain @ w1,
                                                                          approximate=False)) @ w2
    np.testing.assert_allclose(layer(x).numpy(), plain, rtol=1e-5, atol=1e-6)
    never = _layer(chunk_sizes=(None, None))
    never.set_weights(layer.get_weights())
    np.testing.assert_array_equal(never(x).numpy(), layer(x).numpy())


def test_outer_gradient_flows_through_inner_updates_unless_stopped():
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(size=(2, 8, 6)).astype("float32"))
    grads = {}
    for stop in (False, True):
        keras.utils.set_random_seed(SEED)
        layer = _layer(stop_inner_gradient=stop)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(layer(x) ** 2)
        grads[stop] = [g.numpy() for g in tape.gradient(loss, layer.trainable_variables)]
        assert all(np.isfinite(g).all() for g in grads[stop])
    assert any(not np.allclose(a, b) for a, b in zip(grads[False], grads[True]))


def _model(layer, length=9, d=6):
    inputs = keras.Input(shape=(length, d))
    return keras.Model(inputs, layer(inputs))


def test_config_and_keras_round_trip(tmp_path):
    layer = _layer(chunk_sizes=(2, None), stop_inner_gradient=True, activation="silu")
    config = layer.get_config()
    again = CMS.from_config(config)
    assert again.get_config() == config
    model = _model(CMS(**{k: config[k] for k in ("hidden_units", "chunk_sizes",
                                                  "inner_learning_rates", "activation")}))
    x = np.random.default_rng(6).normal(size=(2, 9, 6)).astype("float32")
    path = tmp_path / "cms.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[-1], CMS)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


def test_compiled_equals_eager():
    model = _model(_layer(chunk_sizes=(2, 3)))
    x = np.random.default_rng(7).normal(size=(4, 9, 6)).astype("float32")
    eager = model(x).numpy()
    model.compile(jit_compile=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"chunk_sizes": (0, 4)}, "chunk_sizes=[0, 4] must be a list of 2 entries"),
    ({"chunk_sizes": (2.5, 4)}, "chunk_sizes=[2.5, 4] must be a list of 2 entries (one per"
                                 " level), each an integer >= 1 or None"),
    ({"chunk_sizes": (2, 4, 8)}, "chunk_sizes=[2, 4, 8] must be a list of 2 entries"),
    ({"chunk_sizes": 4}, "chunk_sizes=4 must be a list of 2 entries"),
    ({"inner_learning_rates": (0.1,)}, "inner_learning_rates=[0.1] must be a list of 2"),
    ({"inner_learning_rates": (0.1, -1.0)}, "inner_learning_rates=[0.1, -1.0] must be a list"
                                           " of 2 entries (one per level), each a number >= 0"),
    ({"hidden_units": ()}, "hidden_units=[] must be a list of integers >= 1"),
    ({"activation": "elu"}, "activation='elu' must be one of"),
])
def test_bad_arguments_name_the_argument(kwargs, message):
    with pytest.raises(ValueError) as err:
        CMS(**{"hidden_units": (5, 7), "chunk_sizes": (2, 4),
               "inner_learning_rates": (0.1, 0.05), **kwargs})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_needs_a_static_length():
    with pytest.raises(ValueError, match="static sequence length"):
        _model(CMS(), length=None)
