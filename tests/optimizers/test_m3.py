"""M3 (arXiv 2512.24695, Algorithm 1) against an independent NumPy reference (eager and XLA), its
Adam path against Keras' Adam, Newton-Schulz against Keras' Muon, the orthogonal step, the slow
memory's period, validation, the conf file and round trips."""

import copy
import math

import numpy as np
import pytest
import keras
import tensorflow as tf

from nested_research import M3
from nested_research.optimizers.m3 import newton_schulz

from family_helpers import follow_reference, grad_stream, make_vars, stepper

#: a wide and a tall kernel, a conv kernel (kh, kw, c_in, c_out), a bias, a scalar
SHAPES = [(5, 7), (6, 5), (3, 2, 4, 3), (5,), ()]
NS_PATH = [True, True, True, False, False]


def numpy_ns(x, steps):
    """Muon's quintic Newton-Schulz iteration in NumPy."""
    a, b, c = 3.4445, -4.7750, 2.0315
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class NumpyM3:
    """Algorithm 1 in float64 with the readings of m3.py's NOTEs: EMAs for M1, V and (per chunk
    of f steps, on the chunk's mean gradient) M2; ``eps`` as Keras' Adam places it."""

    def __init__(self, shapes, ns_path, lr, b1=0.9, b2=0.999, b3=0.9, alpha=0.5, f=10, T=5,
                 eps=1e-4, wd=0.0):
        self.lr, self.b1, self.b2, self.b3, self.alpha = lr, b1, b2, b3, alpha
        self.f, self.T, self.eps, self.wd, self.ns_path = f, T, eps, wd, ns_path
        self.m1, self.v, self.m2, self.o2, self.chunk = (
            [np.zeros(s) for s in shapes] for _ in range(5))
        self.t = 0

    def orth(self, x):
        rows = math.prod(x.shape[:-1])
        return numpy_ns(x.reshape(rows, x.shape[-1]), self.T).reshape(x.shape)

    def step(self, params, grads):
        self.t += 1
        t = self.t
        eps_t = self.eps / math.sqrt(1 - self.b2 ** t)
        out = []
        for i, (x, g) in enumerate(zip(params, grads)):
            g = np.asarray(g, float)
            self.m1[i] = self.b1 * self.m1[i] + (1 - self.b1) * g
            self.v[i] = self.b2 * self.v[i] + (1 - self.b2) * g * g
            denom = np.sqrt(self.v[i] / (1 - self.b2 ** t)) + eps_t
            if self.ns_path[i]:
                self.chunk[i] = self.chunk[i] + g
                step = (self.orth(self.m1[i]) + self.alpha * self.o2[i]) / denom
                if t % self.f == 0:
                    mean = self.chunk[i] / self.f
                    self.m2[i] = self.b3 * self.m2[i] + (1 - self.b3) * mean
                    self.o2[i] = self.orth(self.m2[i])
                    self.chunk[i] = np.zeros_like(g)
            else:
                step = self.m1[i] / (1 - self.b1 ** t) / denom
            out.append(x - self.lr * (step + self.wd * x))
        return out


def _vars(dtype="float64", seed=0, shapes=SHAPES):
    return make_vars(shapes, dtype, seed)


def _grads(steps, seed=1, shapes=SHAPES):
    return grad_stream(shapes, steps, seed)


_stepper = stepper


@pytest.mark.parametrize("kw,ref_kw", [
    ({}, {}),
    (dict(frequency=3, alpha=2.0, beta_1=0.8, beta_2=0.99, beta_3=0.7, ns_steps=3,
          epsilon=1e-6, weight_decay=0.05),
     dict(f=3, alpha=2.0, b1=0.8, b2=0.99, b3=0.7, T=3, eps=1e-6, wd=0.05)),
])
@pytest.mark.parametrize("jit", [False, True])
def test_matches_the_numpy_reference_over_24_steps(kw, ref_kw, jit):
    lr = float(np.float32(0.01))  # as the float32 learning-rate variable holds it
    opt = M3(learning_rate=0.01, **kw)
    ref = NumpyM3(SHAPES, NS_PATH, lr=lr, **ref_kw)
    variables = _vars()
    follow_reference(opt, ref, variables, _grads(24), jit)
    assert [opt.uses_newton_schulz(v) for v in variables] == NS_PATH
    assert all(np.max(np.abs(v.numpy() - w)) > 1e-3 for v, w in zip(variables, _vars()))
    for i in (0, 2):  # the slow memory took part (2 or 8 chunks)
        assert np.max(np.abs(ref.o2[i])) > 0.05
        np.testing.assert_allclose(np.asarray(opt.slots(i)["o2"]), ref.o2[i], rtol=1e-9,
                                   atol=1e-12)
        np.testing.assert_allclose(np.asarray(opt.slots(i)["m2"]), ref.m2[i], rtol=1e-9,
                                   atol=1e-14)


def test_newton_schulz_is_keras_muons():
    rng = np.random.default_rng(3)
    muon = keras.optimizers.Muon()
    for shape in [(6, 4), (4, 6), (5, 5)]:
        x = rng.normal(size=shape).astype("float32")
        ours = np.asarray(newton_schulz(keras.ops.convert_to_tensor(x), 5))
        np.testing.assert_allclose(ours, np.asarray(muon.zeropower_via_newtonschulz5(x, 5)),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ours, numpy_ns(x.astype(float), 5), rtol=1e-4, atol=1e-5)
    # the value Keras' own Muon test pins
    x = np.array([[0.2499, 0.9105], [0.2655, 0.8824]], "float32")
    np.testing.assert_allclose(np.asarray(newton_schulz(keras.ops.convert_to_tensor(x), 5)),
                               [[-0.4422, 0.6457], [0.7285, 0.2968]], atol=1e-3)


@pytest.mark.parametrize("shape", [(16, 8), (8, 16), (3, 3, 4, 6)])
def test_a_kernels_step_is_orthogonal(shape):
    """Gradients of constant magnitude keep ``V`` uniform, so the step is ``O1`` times a scalar:
    its singular values (of the ``matrix_shape``) are near-equal, the momentum's are not."""
    rng = np.random.default_rng(0)
    rows = math.prod(shape[:-1])
    var = keras.Variable(np.zeros(shape), name="kernel")
    opt = M3(learning_rate=0.1, alpha=0.0, epsilon=1e-8)
    bias = rng.normal(size=(rows, 1)) * 1.5  # a dominant direction: ill-conditioned momentum
    for _ in range(6):
        g = np.sign(bias + rng.normal(size=(rows, shape[-1]))).reshape(shape) * 0.01
        before = var.numpy().copy()
        opt.apply([tf.constant(g)], [var])
    step = (before - var.numpy()).reshape(rows, shape[-1])
    momentum = np.asarray(opt.slots(0)["m1"]).reshape(rows, shape[-1])
    s, s_m = (np.linalg.svd(a, compute_uv=False) for a in (step, momentum))
    s = s / (0.1 * math.sqrt(1 - 0.999 ** 6) / (0.01 * math.sqrt(1 - 0.999 ** 6) + 1e-8))
    assert s_m.max() / s_m.min() > 3.0
    assert 0.6 < s.min() and s.max() < 1.2, s


def test_the_slow_memory_changes_only_every_f_steps():
    f, steps = 4, 13
    opt = M3(learning_rate=0.01, frequency=f, alpha=5.0)
    plain = M3(learning_rate=0.01, frequency=f, alpha=0.0)
    a, b = _vars(), _vars()
    grads = _grads(steps)
    previous = {k: np.zeros(SHAPES[0]) for k in ("m2", "o2")}
    total = np.zeros(SHAPES[0])
    for t, g in enumerate(grads, start=1):
        opt.apply([tf.constant(x) for x in g], a)
        plain.apply([tf.constant(x) for x in g], b)
        slots = {k: np.asarray(opt.slots(0)[k]) for k in ("m2", "o2", "chunk")}
        total += g[0]
        changed = [not np.array_equal(slots[k], previous[k]) for k in ("m2", "o2")]
        assert changed == [t % f == 0] * 2, t
        if t % f == 0:
            np.testing.assert_allclose(slots["chunk"], 0.0)
            total = np.zeros(SHAPES[0])
        else:
            np.testing.assert_allclose(slots["chunk"], total, rtol=1e-12)
        previous = {k: slots[k] for k in ("m2", "o2")}
        # O2 is 0 until the first chunk ends, so alpha plays no part in steps 1..f
        same = all(np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a, b))
        assert same == (t <= f), t
    assert opt.slots(3)["m2"] is None and opt.slots(3)["chunk"] is None  # the bias: Adam


def test_rank_0_and_1_embeddings_and_excluded_layers_take_keras_adams_step():
    shapes = [(5,), (), (6, 4), (4, 3), (3, 4)]
    names = ["bias", "scale", "token_embedding", "logits_kernel", "hidden_kernel"]
    rng = np.random.default_rng(0)
    init = [rng.normal(size=s).astype("float32") for s in shapes]
    ours = [keras.Variable(x, name=n) for x, n in zip(init, names)]
    theirs = [keras.Variable(x, name=n) for x, n in zip(init, names)]
    kw = dict(learning_rate=0.02, beta_1=0.85, beta_2=0.995, epsilon=1e-7)
    m3, adam = M3(exclude_layers=["^logits"], **kw), keras.optimizers.Adam(**kw)
    for grads in _grads(20, shapes=shapes):
        grads = [g.astype("float32") for g in grads]
        m3.apply(grads, ours)
        adam.apply(grads, theirs)
    assert [m3.uses_newton_schulz(v) for v in ours] == [False] * 4 + [True]
    for x, y in zip(ours[:4], theirs[:4]):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert not np.allclose(ours[4].numpy(), theirs[4].numpy(), atol=1e-3)
    assert M3(exclude_embeddings=False).uses_newton_schulz(ours[2])


@pytest.mark.parametrize("kwargs,name,bad", [
    (dict(beta_3=1.0), "beta_3", "1.0"),
    (dict(beta_1=-0.1), "beta_1", "-0.1"),
    (dict(beta_2=1.5), "beta_2", "1.5"),
    (dict(alpha=-1.0), "alpha", "-1.0"),
    (dict(frequency=0), "frequency", "0"),
    (dict(frequency=2.5), "frequency", "2.5"),
    (dict(ns_steps=0), "ns_steps", "0"),
    (dict(epsilon=0.0), "epsilon", "0.0"),
    (dict(exclude_embeddings=1), "exclude_embeddings", "1"),
    (dict(exclude_layers="logits"), "exclude_layers", "'logits'"),
    (dict(exclude_layers=["("]), "exclude_layers", "['(']"),
])
def test_bad_arguments_name_the_parameter_and_the_value(kwargs, name, bad):
    with pytest.raises(ValueError) as err:
        M3(**kwargs)
    assert name in str(err.value) and bad in str(err.value)


def test_config_and_keras_file_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 3, size=(32,))

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(4, 3),
                                 keras.layers.Flatten(), keras.layers.Dense(8, activation="tanh"),
                                 keras.layers.Dense(3, name="logits")])
    opt = M3(learning_rate=0.003, frequency=3, alpha=1.5, beta_3=0.8, exclude_layers=["logits"],
             weight_decay=0.01, clipnorm=1.0, skip_nonfinite=True)
    config = opt.get_config()
    assert config["frequency"] == 3 and config["exclude_layers"] == ("logits",)
    assert M3.from_config(copy.deepcopy(config)).get_config() == config
    blob = keras.optimizers.serialize(opt)
    assert type(keras.optimizers.deserialize(copy.deepcopy(blob))) is M3
    m = model()
    m.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x[:16], y[:16], batch_size=4, epochs=1, shuffle=False, verbose=0)  # 4 steps: 1 chunk
    assert [opt.uses_newton_schulz(v) for v in opt.model_variables] == \
        [True, False, True, False, False, False]
    path = tmp_path / "m.keras"
    m.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, M3)
    assert loaded.optimizer.get_config() == config
    for a, b in zip(opt.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    m.fit(x[16:], y[16:], batch_size=4, epochs=1, shuffle=False, verbose=0)  # another chunk ends
    loaded.fit(x[16:], y[16:], batch_size=4, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(m.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_skip_nonfinite_leaves_the_state_untouched():
    opt = M3(learning_rate=0.01, frequency=2, skip_nonfinite=True)
    variables = _vars("float32")
    grads = [[g.astype("float32") for g in gs] for gs in _grads(3)]
    opt.apply(grads[0], variables)  # the next step would end a chunk
    before = [np.asarray(v).copy() for v in [*variables, *opt.variables]]
    grads[1][2][0, 0, 0, 0] = np.nan
    opt.apply(grads[1], variables)
    keep = [not v.path.endswith("skipped_steps") for v in opt.variables]
    after = [np.asarray(v) for v in [*variables, *opt.variables]]
    for b, a, k in zip(before, after, [True] * len(variables) + keep):
        if k:
            np.testing.assert_array_equal(b, a)
    assert opt.skipped_steps == 1 and int(opt.iterations) == 1
    opt.apply(grads[2], variables)  # the good step ends the chunk, as the skipped one would have
    assert np.abs(np.asarray(opt.slots(0)["o2"])).max() > 0
