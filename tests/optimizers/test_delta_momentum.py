"""DeltaMomentum (arXiv 2512.24695, Eq. 48-49) against an independent NumPy reference (eager and
XLA), its reduction to Keras' SGD, the delta rule's erase, validation, the conf file and round
trips."""

import copy
import math

import numpy as np
import pytest
import keras
import tensorflow as tf

from nested_research import DeltaMomentum

from family_helpers import follow_reference, grad_stream, make_vars

#: a tall and a wide kernel (both association orders), a conv kernel, a bias, a scalar
SHAPES = [(6, 5), (3, 7), (3, 2, 4, 3), (5,), ()]


class NumpyDeltaMomentum:
    """Eq. 48-49 as delta_momentum.py reads them, in float64: the key Gram matrix of the
    gradient over the layer's inputs, normalised; ``eps`` as Keras' Adam places it."""

    def __init__(self, shapes, lr, momentum=0.9, delta=0.5, precond="identity", b2=0.999,
                 eps=1e-7, wd=0.0):
        self.lr, self.alpha, self.delta, self.precond = lr, momentum, delta, precond
        self.b2, self.eps, self.wd = b2, eps, wd
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]
        self.t = 0

    @staticmethod
    def gram(g):
        """``G_hat G_hat^T`` over the inputs: (fan_in, fan_in); 1x1 for rank 0 and 1."""
        k = g.reshape(math.prod(g.shape[:-1]), g.shape[-1]) if g.ndim >= 2 else g.reshape(1, -1)
        n = np.sum(k * k)
        return k @ k.T / n if n > 0 else np.zeros((k.shape[0], k.shape[0]))

    def step(self, params, grads):
        self.t += 1
        out = []
        for i, (x, g) in enumerate(zip(params, grads)):
            g = np.asarray(g, float)
            write = g
            if self.precond == "adam":
                self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
                write = g / (np.sqrt(self.v[i] / (1 - self.b2 ** self.t))
                             + self.eps / math.sqrt(1 - self.b2 ** self.t))
            m = self.m[i]
            mat = m.reshape(math.prod(m.shape[:-1]), m.shape[-1]) if m.ndim >= 2 \
                else m.reshape(1, -1)
            decay = self.alpha * np.eye(mat.shape[0]) - self.delta * self.gram(g)
            self.m[i] = (decay @ mat).reshape(m.shape) - self.lr * write
            out.append(x - self.lr * self.wd * x + self.m[i])
        return out


def _vars(dtype="float64", seed=0, shapes=SHAPES):
    return make_vars(shapes, dtype, seed)


def _grads(steps, seed=1, shapes=SHAPES):
    return grad_stream(shapes, steps, seed)


@pytest.mark.parametrize("kw,ref_kw", [
    ({}, {}),
    (dict(momentum=0.95, delta_rate=0.95, weight_decay=0.05),
     dict(momentum=0.95, delta=0.95, wd=0.05)),
    (dict(preconditioner="adam", delta_rate=0.3, beta_2=0.99, epsilon=1e-6),
     dict(precond="adam", delta=0.3, b2=0.99, eps=1e-6)),
])
@pytest.mark.parametrize("jit", [False, True])
def test_matches_the_numpy_reference_over_24_steps(kw, ref_kw, jit):
    lr = float(np.float32(0.01))  # as the float32 learning-rate variable holds it
    opt = DeltaMomentum(learning_rate=0.01, **kw)
    ref = NumpyDeltaMomentum(SHAPES, lr=lr, **ref_kw)
    variables = _vars()
    grads = _grads(24)
    grads[5][3] = np.zeros(5)  # a zero gradient: no key, so nothing to erase
    follow_reference(opt, ref, variables, grads, jit)
    assert all(np.max(np.abs(v.numpy() - w)) > 1e-3 for v, w in zip(variables, _vars()))
    np.testing.assert_allclose(np.asarray(opt.slots(2)["momentum"]), ref.m[2], rtol=1e-9,
                               atol=1e-12)


def test_delta_rate_zero_is_keras_sgd_with_momentum():
    kw = dict(learning_rate=0.02, momentum=0.85, weight_decay=0.01)
    a, b = _vars("float32"), _vars("float32")
    ours, sgd = DeltaMomentum(delta_rate=0.0, **kw), keras.optimizers.SGD(**kw)
    for grads in _grads(20):
        grads = [g.astype("float32") for g in grads]
        ours.apply(grads, a)
        sgd.apply(grads, b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_the_delta_rule_replaces_what_the_momentum_holds_along_the_key():
    """A rank-1 gradient ``u w^T`` (unit ``u``: one input direction): with ``delta_rate =
    momentum`` the memory along ``u`` is overwritten by the new write, the rest only decays."""
    rng = np.random.default_rng(0)
    var = keras.Variable(np.zeros((6, 4)), name="kernel")
    opt = DeltaMomentum(learning_rate=0.1, momentum=0.9, delta_rate=0.9)
    opt.apply([tf.constant(rng.normal(size=(6, 4)))], [var])  # fill the memory
    m_old = np.asarray(opt.slots(0)["momentum"]).copy()
    u = rng.normal(size=6)
    u /= np.linalg.norm(u)
    g = np.outer(u, rng.normal(size=4))
    opt.apply([tf.constant(g)], [var])
    m_new = np.asarray(opt.slots(0)["momentum"])
    lr = float(np.float32(0.1))  # as the float32 learning-rate variable holds it
    np.testing.assert_allclose(u @ m_new, -lr * (u @ g), rtol=1e-9, atol=1e-12)
    across = np.eye(6) - np.outer(u, u)
    np.testing.assert_allclose(across @ m_new, 0.9 * across @ m_old, rtol=1e-9, atol=1e-12)
    # a bias's key is the layer's constant input: its whole momentum is erased
    bias = keras.Variable(np.zeros(3), name="bias")
    opt = DeltaMomentum(learning_rate=0.1, momentum=0.9, delta_rate=0.9)
    for _ in range(2):
        opt.apply([tf.constant(np.array([1.0, -2.0, 3.0]))], [bias])
    np.testing.assert_allclose(np.asarray(opt.slots(0)["momentum"]), [-0.1, 0.2, -0.3],
                               rtol=1e-6)


def test_the_momentum_never_grows_without_new_writes():
    """The decay's spectrum lies in ``[momentum - delta_rate, momentum]``: with a tiny learning
    rate (writes negligible) the memory's norm only shrinks, whatever the gradient's scale."""
    rng = np.random.default_rng(1)
    var = keras.Variable(np.zeros((8, 5)), name="kernel")
    opt = DeltaMomentum(learning_rate=1.0, momentum=0.99, delta_rate=0.99)
    opt.apply([tf.constant(rng.normal(size=(8, 5)))], [var])
    opt.learning_rate = 1e-30
    norms = [np.linalg.norm(np.asarray(opt.slots(0)["momentum"]))]
    for scale in (1e-6, 1.0, 1e6, 1e3):
        opt.apply([tf.constant(scale * rng.normal(size=(8, 5)))], [var])
        norms.append(np.linalg.norm(np.asarray(opt.slots(0)["momentum"])))
    assert all(b <= a * 0.99 + 1e-12 for a, b in zip(norms, norms[1:])), norms
    assert norms[-1] > 0.0


@pytest.mark.parametrize("kwargs,name,bad", [
    (dict(momentum=1.0), "momentum", "1.0"),
    (dict(momentum=-0.1, delta_rate=0.0), "momentum", "-0.1"),
    (dict(delta_rate=-0.1), "delta_rate", "-0.1"),
    (dict(delta_rate=0.95), "delta_rate", "0.95"),
    (dict(preconditioner="shampoo"), "preconditioner", "'shampoo'"),
    (dict(beta_2=1.0), "beta_2", "1.0"),
    (dict(epsilon=0.0), "epsilon", "0.0"),
])
def test_bad_arguments_name_the_parameter_and_the_value(kwargs, name, bad):
    with pytest.raises(ValueError) as err:
        DeltaMomentum(**kwargs)
    assert name in str(err.value) and bad in str(err.value)


@pytest.mark.parametrize("preconditioner", ["identity", "adam"])
def test_config_and_keras_file_round_trips(tmp_path, preconditioner):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, size=(32,))

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3),
                                 keras.layers.Flatten(), keras.layers.Dense(8, activation="tanh"),
                                 keras.layers.Dense(3)])
    opt = DeltaMomentum(learning_rate=0.01, momentum=0.8, delta_rate=0.6,
                        preconditioner=preconditioner, weight_decay=0.01, clipnorm=1.0,
                        skip_nonfinite=True)
    config = opt.get_config()
    assert config["delta_rate"] == 0.6 and config["preconditioner"] == preconditioner
    assert DeltaMomentum.from_config(copy.deepcopy(config)).get_config() == config
    blob = keras.optimizers.serialize(opt)
    assert type(keras.optimizers.deserialize(copy.deepcopy(blob))) is DeltaMomentum
    m = model()
    m.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x[:16], y[:16], batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "m.keras"
    m.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, DeltaMomentum)
    assert loaded.optimizer.get_config() == config
    for a, b in zip(opt.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    m.fit(x[16:], y[16:], batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x[16:], y[16:], batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(m.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
