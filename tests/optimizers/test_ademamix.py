"""AdEMAMix against an independent NumPy reference of the paper's Algorithm 1 (arXiv 2409.03137),
its reduction to Keras' AdamW, its schedulers, validation and round trips."""

import copy
import math

import numpy as np
import pytest
import keras

from nested_research import AdEMAMix

from family_helpers import follow_reference, grad_stream, make_vars

SHAPES = [(6, 5), (5,), (3, 2, 4), ()]


class NumpyAdEMAMix:
    """Algorithm 1 in float64.  ``eps`` as Keras' Adam places it (see ademamix.py's NOTE): the
    paper's ``eps`` is ``eps / sqrt(1 - beta_2^t)`` here."""

    def __init__(self, shapes, lr, b1=0.9, b2=0.999, b3=0.9999, alpha=5.0, t_alpha=None,
                 t_b3=None, eps=1e-8, wd=0.0):
        self.lr, self.b1, self.b2, self.b3, self.alpha = lr, b1, b2, b3, alpha
        self.t_alpha, self.t_b3, self.eps, self.wd = t_alpha, t_b3, eps, wd
        self.m1 = [np.zeros(s) for s in shapes]
        self.m2 = [np.zeros(s) for s in shapes]
        self.nu = [np.zeros(s) for s in shapes]
        self.t = 0

    def alpha_t(self, t):
        return self.alpha if self.t_alpha is None else self.alpha * min(t / self.t_alpha, 1.0)

    def beta3_t(self, t):
        if self.t_b3 is None:
            return self.b3
        # linear in half-life space: 1 / ln(beta) moves linearly from 1/ln(b1) to 1/ln(b3)
        s = min(t / self.t_b3, 1.0)
        inv = (1 - s) / math.log(self.b1) + s / math.log(self.b3)
        return min(math.exp(1.0 / inv), self.b3)

    def step(self, params, grads):
        self.t += 1
        t = self.t
        b3, a = self.beta3_t(t), self.alpha_t(t)
        out = []
        for i, (x, g) in enumerate(zip(params, grads)):
            g = np.asarray(g, float)
            self.m1[i] = self.b1 * self.m1[i] + (1 - self.b1) * g
            self.m2[i] = b3 * self.m2[i] + (1 - b3) * g
            self.nu[i] = self.b2 * self.nu[i] + (1 - self.b2) * g * g
            m1_hat = self.m1[i] / (1 - self.b1 ** t)
            nu_hat = self.nu[i] / (1 - self.b2 ** t)
            eps_t = self.eps / math.sqrt(1 - self.b2 ** t)
            out.append(x - self.lr * ((m1_hat + a * self.m2[i]) / (np.sqrt(nu_hat) + eps_t)
                                      + self.wd * x))
        return out


def _vars(dtype="float64", seed=0):
    return make_vars(SHAPES, dtype, seed)


def _grads(steps, seed=1):
    return grad_stream(SHAPES, steps, seed)


@pytest.mark.parametrize("kw,ref_kw", [
    ({}, {}),
    (dict(alpha_warmup_steps=15, beta_3_warmup_steps=12, beta_3=0.999, alpha=8.0),
     dict(t_alpha=15, t_b3=12, b3=0.999, alpha=8.0)),
    (dict(weight_decay=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-6, alpha_warmup_steps=7),
     dict(wd=0.05, b1=0.8, b2=0.99, eps=1e-6, t_alpha=7)),
])
@pytest.mark.parametrize("jit", [False, True])
def test_matches_the_numpy_reference_over_24_steps(kw, ref_kw, jit):
    lr = float(np.float32(0.01))  # as the float32 learning-rate variable holds it
    opt = AdEMAMix(learning_rate=0.01, **kw)
    ref = NumpyAdEMAMix(SHAPES, lr=lr, **ref_kw)
    variables = _vars()
    follow_reference(opt, ref, variables, _grads(24), jit)
    assert all(np.max(np.abs(v.numpy() - w)) > 1e-3 for v, w in zip(variables, _vars()))
    np.testing.assert_allclose(np.asarray(opt.slots(0)["m2"]), ref.m2[0], rtol=1e-10,
                               atol=1e-14)


def test_alpha_zero_is_keras_adamw():
    kw = dict(learning_rate=0.02, weight_decay=0.01, beta_1=0.85, beta_2=0.995, epsilon=1e-7)
    a, b = _vars("float32"), _vars("float32")
    ours, adamw = AdEMAMix(alpha=0.0, **kw), keras.optimizers.AdamW(**kw)
    for grads in _grads(20):
        grads = [g.astype("float32") for g in grads]
        ours.apply(grads, a)
        adamw.apply(grads, b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_schedulers_start_end_and_half_life():
    from nested_research.optimizers.ademamix import AdEMAMixParams, alpha_at, beta_3_at

    p = AdEMAMixParams(beta_1=0.9, beta_3=0.9999, alpha=5.0, alpha_warmup_steps=100,
                       beta_3_warmup_steps=200)
    ts = np.array([0.0, 50.0, 100.0, 200.0, 400.0])
    alphas = np.asarray(alpha_at(p, keras.ops.convert_to_tensor(ts)))
    np.testing.assert_allclose(alphas, [0.0, 2.5, 5.0, 5.0, 5.0])
    betas = np.asarray(beta_3_at(p, keras.ops.convert_to_tensor(ts)), np.float64)
    np.testing.assert_allclose(betas[[0, 3, 4]], [0.9, 0.9999, 0.9999], rtol=1e-6)
    half = np.log(0.5) / np.log(betas[:4])
    h0, h1 = np.log(0.5) / np.log(0.9), np.log(0.5) / np.log(0.9999)
    np.testing.assert_allclose(half, h0 + (h1 - h0) * ts[:4] / 200.0, rtol=1e-4)


@pytest.mark.parametrize("kwargs,name,bad", [
    (dict(beta_3=1.0), "beta_3", "1.0"),
    (dict(beta_1=-0.1), "beta_1", "-0.1"),
    (dict(alpha=-1.0), "alpha", "-1.0"),
    (dict(alpha_warmup_steps=0), "alpha_warmup_steps", "0"),
    (dict(beta_3_warmup_steps=2.5), "beta_3_warmup_steps", "2.5"),
    (dict(epsilon=0.0), "epsilon", "0.0"),
    (dict(beta_3=0.5, beta_3_warmup_steps=10), "beta_3", "0.5"),
])
def test_bad_arguments_name_the_parameter_and_the_value(kwargs, name, bad):
    with pytest.raises(ValueError) as err:
        AdEMAMix(**kwargs)
    assert name in str(err.value) and bad in str(err.value)


def test_config_and_keras_file_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.integers(0, 3, size=(32,))

    def model():
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(3)])
        return m
    opt = AdEMAMix(learning_rate=0.01, alpha=3.0, beta_3_warmup_steps=10, alpha_warmup_steps=5,
                   weight_decay=0.01, clipnorm=1.0, skip_nonfinite=True)
    config = opt.get_config()
    assert config["beta_3_warmup_steps"] == 10 and config["skip_nonfinite"] is True
    assert AdEMAMix.from_config(copy.deepcopy(config)).get_config() == config
    blob = keras.optimizers.serialize(opt)
    assert type(keras.optimizers.deserialize(copy.deepcopy(blob))) is AdEMAMix
    m = model()
    m.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    m.fit(x[:16], y[:16], batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "m.keras"
    m.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, AdEMAMix)
    for a, b in zip(opt.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    m.fit(x[16:], y[16:], batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x[16:], y[16:], batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(m.get_weights(), loaded.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_the_job_sets_the_warmups_to_the_run_length_as_the_paper_does():
    from nested_research.training.builders import build_optimizer
    from nested_research.core.errors import ConfigError
    from nested_research.studies.runner import compose

    def build(*overrides, total=700):
        cfg = compose(["optimizer=ademamix", "lr_schedule=constant", "logger=none", *overrides])
        return build_optimizer(cfg, steps_per_epoch=10, total_steps=total, stats_every=0)

    opt = build()
    assert (opt.alpha_warmup_steps, opt.beta_3_warmup_steps) == (700, 700)
    assert build(total=33).alpha_warmup_steps == 33
    kept = build("optimizer.run_length_params=[]", "optimizer.params.alpha_warmup_steps=50")
    assert (kept.alpha_warmup_steps, kept.beta_3_warmup_steps) == (50, None)
    with pytest.raises(ConfigError, match=r"run_length_params: 'alpha_warmup' .*allowed: \["):
        build("optimizer.run_length_params=[alpha_warmup]")
