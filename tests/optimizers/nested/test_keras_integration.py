"""The optimizer as a first-class Keras citizen.

Everything here goes through the Keras base class (``apply`` / ``model.fit``):
XLA vs graph vs eager, gradient clipping, decoupled weight decay, mixed
precision (``LossScaleOptimizer``), Keras gradient accumulation, EMA, config
and ``.keras`` round trips, ``memory_stats`` and user learning-rate schedules.
Numbers are checked against the independent NumPy reference ``NumpyNested``
(and, for ``fit``, a hand-written NumPy backprop of the MLP), not against the
package itself.
"""

import copy
import warnings

import numpy as np
import pytest
import keras

from nested_research import NestedLearningOptimizer, PerEpochSchedule

from reference import NumpyNested

LR = float(np.float32(0.01))  # the float32 learning-rate variable, exactly
SIZES = (4, 6, 5, 3)  # MLP input, hidden, hidden, output


# ---------------------------------------------------------------- helpers
def mlp(seed=0, name="mlp", functional=False):
    """tanh-tanh-linear MLP with fixed layer names (so paths repeat across instances)."""
    keras.utils.set_random_seed(seed)
    inp = keras.Input((SIZES[0],))
    layers = []
    for i, units in enumerate(SIZES[1:]):
        act = "tanh" if i < len(SIZES) - 2 else None
        layers.append(keras.layers.Dense(units, activation=act, name=f"dense_{i}"))
    if not functional:
        return keras.Sequential([inp] + layers, name=name)
    h = inp
    for layer in layers:
        h = layer(h)
    return keras.Model(inp, h, name=name)


def regression_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, SIZES[0])).astype("float32")
    a = rng.normal(size=(SIZES[0], SIZES[-1]))
    y = (np.tanh(x @ a) + 0.1 * rng.normal(size=(n, SIZES[-1]))).astype("float32")
    return x, y


def numpy_mlp_grads(params, x, y):
    """d mean((f(x) - y)^2) / d params for ``mlp()`` in float64 (Keras MSE = mean over all)."""
    w0, b0, w1, b1, w2, b2 = [np.asarray(p, np.float64) for p in params]
    x = np.asarray(x, np.float64)
    h1 = np.tanh(x @ w0 + b0)
    h2 = np.tanh(h1 @ w1 + b1)
    out = h2 @ w2 + b2
    d = 2.0 * (out - y) / out.size
    gw2, gb2 = h2.T @ d, d.sum(0)
    dz2 = (d @ w2.T) * (1.0 - h2 ** 2)
    gw1, gb1 = h1.T @ dz2, dz2.sum(0)
    dz1 = (dz2 @ w1.T) * (1.0 - h1 ** 2)
    gw0, gb0 = x.T @ dz1, dz1.sum(0)
    return [gw0, gb0, gw1, gb1, gw2, gb2]


def weights_of(model):
    return [np.asarray(v.numpy(), np.float64) for v in model.trainable_variables]


def assert_weights_close(a, b, rtol, atol):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def make_vars(shapes, seed=1, dtype="float64"):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=s).astype(dtype), name=f"v{i}", dtype=dtype)
            for i, s in enumerate(shapes)]


def grad_stream(shapes, steps, seed=0, dtype="float64", scales=None):
    rng = np.random.default_rng(seed)
    drift = [rng.normal(size=s) for s in shapes]
    out = []
    for t in range(steps):
        scale = (0.5 + rng.uniform()) if scales is None else scales[t]
        out.append([((d + rng.normal(size=s)) * scale).astype(dtype)
                    for d, s in zip(drift, shapes)])
    return out


SHAPES = [(7,), (4, 5), (3,)]


class RecordWeights(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.after_batch = []

    def on_train_batch_end(self, batch, logs=None):
        self.after_batch.append(weights_of(self.model))


# ---------------------------------------------------------------- fit: jit / graph / eager
def _fit_mlp(mode, x, y, steps_batch=8, epochs=2):
    model = mlp()
    opt = NestedLearningOptimizer(learning_rate=LR, max_interval=3, memory_blend_mode="attention")
    opt.compute_depths_from_model(model)
    kw = {"jit": dict(jit_compile=True), "graph": dict(jit_compile=False),
          "eager": dict(run_eagerly=True)}[mode]
    model.compile(optimizer=opt, loss="mse", **kw)
    init = weights_of(model)
    model.fit(x, y, batch_size=steps_batch, epochs=epochs, shuffle=False, verbose=0)
    return model, opt, init


def test_fit_jit_graph_eager_agree_and_match_numpy_reference():
    x, y = regression_data(40)
    results = {m: _fit_mlp(m, x, y) for m in ("jit", "graph", "eager")}
    model, opt, init = results["graph"]
    # Depth scheduling is really on: input side every 3 steps, hidden every 2, output every step.
    assert list(opt.intervals.values()) == [3, 3, 2, 2, 1, 1]
    assert int(opt.iterations) == 10
    # 10 steps: dense_0 updated at steps 2, 5, 8 and holds step 9's gradient.
    stats = opt.memory_stats()
    assert stats["mlp/dense_0"]["applied_updates"] == 3
    assert stats["mlp/dense_0"]["accum_norm"] > 0
    assert stats["mlp/dense_1"]["applied_updates"] == 5
    assert stats["mlp/dense_2"]["applied_updates"] == 10

    for mode in ("jit", "eager"):
        assert_weights_close(weights_of(results[mode][0]), weights_of(model), rtol=1e-5, atol=1e-6)
        for a, b in zip(results[mode][1].variables, opt.variables):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)

    # Independent reference: NumPy backprop + NumpyNested on the same batches.
    ref = NumpyNested([p.shape for p in init], mode="attention", lr=LR,
                      intervals=[3, 3, 2, 2, 1, 1])
    params = init
    for epoch in range(2):
        for b in range(5):
            xb, yb = x[8 * b:8 * b + 8], y[8 * b:8 * b + 8]
            params = ref.step(params, numpy_mlp_grads(params, xb, yb))
    for mode in ("jit", "graph", "eager"):
        assert_weights_close(weights_of(results[mode][0]), params, rtol=1e-5, atol=2e-6)
    # Every layer moved (the comparison is not trivial), the slow one least often.
    assert all(np.max(np.abs(p - q)) > 1e-3 for p, q in zip(params, init))
    np.testing.assert_allclose(
        np.sqrt(sum(np.sum(a ** 2) for a in ref.acc[:2])),
        stats["mlp/dense_0"]["accum_norm"], rtol=1e-4)


# ---------------------------------------------------------------- clipping
def _clip_norm_np(grads, c):
    return [g * c / max(np.linalg.norm(g), c) for g in grads]


def _clip_global_np(grads, c):
    n = np.sqrt(sum(np.sum(g ** 2) for g in grads))
    return [g * c / max(n, c) for g in grads]


def _clip_value_np(grads, c):
    return [np.clip(g, -c, c) for g in grads]


@pytest.mark.parametrize("option,value,np_clip", [
    ("clipnorm", 1.0, _clip_norm_np),
    ("global_clipnorm", 2.0, _clip_global_np),
    ("clipvalue", 0.5, _clip_value_np),
])
def test_gradient_clipping_equals_numpy_clipped_gradients(option, value, np_clip):
    steps = 12
    # Step-dependent scales from 0.05 to 50: some steps are clipped hard, some not at all.
    scales = np.geomspace(50.0, 0.05, steps)[np.random.default_rng(4).permutation(steps)]
    grads = grad_stream(SHAPES, steps, seed=2, scales=scales)
    kw = dict(learning_rate=LR, auto_schedule=False, layer_update_intervals=[("v1", 2)])
    clipped = NestedLearningOptimizer(**kw, **{option: value})
    plain = NestedLearningOptimizer(**kw)
    unclipped = NestedLearningOptimizer(**kw)
    a, b, c = make_vars(SHAPES), make_vars(SHAPES), make_vars(SHAPES)
    ref = NumpyNested(SHAPES, lr=LR, intervals=[1, 2, 1])
    params = [v.numpy() for v in a]
    n_clipped = 0
    for g in grads:
        g_np = np_clip([x.astype(np.float64) for x in g], value)
        n_clipped += any(not np.allclose(x, y) for x, y in zip(g, g_np))
        clipped.apply(g, a)
        plain.apply(g_np, b)
        unclipped.apply(g, c)
        params = ref.step(params, g_np)
        for x, y, p in zip(a, b, params):
            np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(x.numpy(), p, rtol=1e-9, atol=1e-12)
    assert 3 <= n_clipped < steps
    # Clipping changed the trajectory (it is not a no-op on this stream).
    assert max(np.max(np.abs(x.numpy() - z.numpy())) for x, z in zip(a, c)) > 1e-4


# ---------------------------------------------------------------- weight decay
def test_weight_decay_is_keras_decoupled_decay_before_the_update():
    wd = 0.5
    lr_sched = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=4, decay_rate=0.5)
    opt = NestedLearningOptimizer(learning_rate=lr_sched, weight_decay=wd, auto_schedule=False,
                                  layer_update_intervals=[("v1", 3)], memory_blend_mode="fixed")
    variables = make_vars(SHAPES)
    ref = NumpyNested(SHAPES, mode="fixed", intervals=[1, 3, 1])
    params = [v.numpy() for v in variables]
    no_decay = NumpyNested(SHAPES, mode="fixed", intervals=[1, 3, 1])
    params_nd = [p.copy() for p in params]
    for t, g in enumerate(grad_stream(SHAPES, 11, seed=5)):
        lr_t = float(lr_sched(t))
        opt.apply(g, variables)
        # Decay on every global step (a slow layer's skipped steps too), then the update.
        params = ref.step([p - lr_t * wd * p for p in params], g, lr=lr_t)
        params_nd = no_decay.step(params_nd, g, lr=lr_t)
        for v, p in zip(variables, params):
            np.testing.assert_allclose(v.numpy(), p, rtol=1e-6, atol=1e-9)
    assert max(np.max(np.abs(p - q)) for p, q in zip(params, params_nd)) > 1e-3


# ---------------------------------------------------------------- user LR schedule
def test_user_learning_rate_schedule_is_used_per_step():
    sched = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.4)
    opt = NestedLearningOptimizer(learning_rate=sched, auto_schedule=False,
                                  layer_update_intervals=[("v0", 2)])
    const = NestedLearningOptimizer(learning_rate=0.05, auto_schedule=False,
                                    layer_update_intervals=[("v0", 2)])
    variables, other = make_vars(SHAPES), make_vars(SHAPES)
    ref = NumpyNested(SHAPES, intervals=[2, 1, 1])
    params = [v.numpy() for v in variables]
    for t, g in enumerate(grad_stream(SHAPES, 10, seed=6)):
        expected_lr = 0.05 * 0.4 ** (t / 3)
        assert opt.current_learning_rate == pytest.approx(expected_lr, rel=1e-6)
        opt.apply(g, variables)
        const.apply(g, other)
        params = ref.step(params, g, lr=float(np.float32(expected_lr)))
        for v, p in zip(variables, params):
            np.testing.assert_allclose(v.numpy(), p, rtol=1e-6, atol=1e-9)
    assert opt.current_learning_rate == pytest.approx(0.05 * 0.4 ** (10 / 3), rel=1e-6)
    assert max(np.max(np.abs(a.numpy() - b.numpy())) for a, b in zip(variables, other)) > 1e-3


# ---------------------------------------------------------------- Keras gradient accumulation
def test_keras_gradient_accumulation_equals_updates_on_the_mean_gradient():
    k = 3
    kw = dict(learning_rate=LR, auto_schedule=False, layer_update_intervals=[("v0", 2)],
              memory_blend_mode="adaptive")
    acc_opt = NestedLearningOptimizer(gradient_accumulation_steps=k, **kw)
    mean_opt = NestedLearningOptimizer(**kw)
    a, b = make_vars(SHAPES), make_vars(SHAPES)
    ref = NumpyNested(SHAPES, mode="adaptive", lr=LR, intervals=[2, 1, 1])
    params = [v.numpy() for v in a]
    grads = grad_stream(SHAPES, 4 * k, seed=7)
    for w in range(4):
        window = grads[w * k:(w + 1) * k]
        before = [v.numpy().copy() for v in a]
        for j, g in enumerate(window):
            acc_opt.apply(g, a)
            if j < k - 1:  # inside the window nothing moves
                for v, p in zip(a, before):
                    np.testing.assert_array_equal(v.numpy(), p)
        mean = [np.mean([g[i] for g in window], axis=0) for i in range(len(SHAPES))]
        mean_opt.apply(mean, b)
        params = ref.step(params, mean)
        for x, y, p in zip(a, b, params):
            np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(x.numpy(), p, rtol=1e-8, atol=1e-12)
        assert int(acc_opt.iterations) == w + 1
    # The slow variable v0 (own interval 2) updated twice out of four optimizer steps.
    assert acc_opt.memory_stats()["v0"]["applied_updates"] == 2


# ---------------------------------------------------------------- EMA
def test_use_ema_overwrites_model_with_the_moving_average():
    x, y = regression_data(40, seed=1)
    momentum = 0.8
    runs = {}
    for use_ema in (False, True):
        model = mlp()
        kw = dict(use_ema=True, ema_momentum=momentum) if use_ema else {}
        opt = NestedLearningOptimizer(learning_rate=LR, max_interval=3, **kw)
        opt.compute_depths_from_model(model)
        model.compile(optimizer=opt, loss="mse")
        rec = RecordWeights()
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[rec])
        runs[use_ema] = (model, opt, rec)
    model, opt, rec = runs[True]
    final = weights_of(model)
    # Keras overwrote the model weights with the EMA variables at the end of fit.
    ema_vars = [np.asarray(v.numpy(), np.float64) for v in opt._model_variables_moving_average]
    assert_weights_close(final, ema_vars, rtol=0, atol=0)
    # The EMA of the per-step weights, recomputed in NumPy (first step: the weights themselves).
    avg = rec.after_batch[0]
    for w in rec.after_batch[1:]:
        avg = [momentum * a + (1 - momentum) * b for a, b in zip(avg, w)]
    assert_weights_close(final, avg, rtol=1e-5, atol=1e-6)
    # EMA does not change the training trajectory, only what is left in the model.
    plain_model, _, plain_rec = runs[False]
    assert_weights_close(rec.after_batch[-1], weights_of(plain_model), rtol=1e-6, atol=1e-7)
    assert max(np.max(np.abs(a - b)) for a, b in zip(final, weights_of(plain_model))) > 1e-4


# ---------------------------------------------------------------- mixed precision
def test_mixed_float16_wraps_in_loss_scale_optimizer_and_trains():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        x, y = regression_data(64, seed=2)
        model = mlp()
        assert model.layers[0].compute_dtype == "float16"
        opt = NestedLearningOptimizer(learning_rate=0.02, max_interval=3,
                                      memory_blend_mode="adaptive")
        opt.compute_depths_from_model(model)
        model.compile(optimizer=opt, loss="mse")
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert model.optimizer.inner_optimizer is opt
        before = model.evaluate(x, y, verbose=0)
        hist = model.fit(x, y, batch_size=16, epochs=10, shuffle=False, verbose=0)
        after = model.evaluate(x, y, verbose=0)
        assert np.all(np.isfinite(hist.history["loss"]))
        assert after < 0.7 * before, (before, after)
        for v in model.weights + opt.variables + model.optimizer.variables:
            assert np.all(np.isfinite(np.asarray(v.numpy(), np.float64))), v.path
        # Our optimizer really stepped (not every step skipped for overflow).
        assert opt.memory_stats()["mlp/dense_2"]["applied_updates"] > 20
        assert all(v.dtype == "float32" for v in model.trainable_variables)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert keras.mixed_precision.global_policy().name == "float32"


# ---------------------------------------------------------------- config round trip
def _config_optimizer(model):
    sched = keras.optimizers.schedules.ExponentialDecay(0.02, decay_steps=5, decay_rate=0.7)
    opt = NestedLearningOptimizer(
        learning_rate=sched, memory_blend_mode="adaptive", short_term_decay=0.8,
        medium_term_decay=0.95, long_term_decay=0.99, max_interval=4, schedule_curve="linear",
        steps_per_epoch=7, lr_warmup_fraction=0.2, lr_hold_fraction=0.3,
        lr_decay_fraction=0.5, lr_min_fraction=0.05, memory_mix=0.3, adaptive_rate=0.2,
        stats_every=2, clipnorm=3.0, weight_decay=0.01, amsgrad=True, epsilon=1e-6,
        beta_2=0.99, layer_update_intervals={"dense_1": 5}, default_interval=1)
    opt.compute_depths_from_model(model)
    return opt


@pytest.mark.parametrize("via", ["config", "serialize"])
def test_config_round_trip_and_identical_updates(via):
    model_a, model_b = mlp(), mlp()
    opt = _config_optimizer(model_a)
    config = opt.get_config()
    assert config["variable_depths"] == {
        f"mlp/dense_{i}/{w}": i for i in range(3) for w in ("kernel", "bias")}
    assert config["layer_update_intervals"] == [["dense_1", 5]]
    assert config["steps_per_epoch"] == 7
    if via == "config":
        rebuilt = NestedLearningOptimizer.from_config(copy.deepcopy(config))
    else:
        blob = keras.optimizers.serialize(opt)
        rebuilt = keras.optimizers.deserialize(copy.deepcopy(blob))
        assert keras.optimizers.serialize(rebuilt) == blob
    assert type(rebuilt) is NestedLearningOptimizer
    assert rebuilt.get_config() == config
    assert isinstance(rebuilt._learning_rate, PerEpochSchedule)
    assert isinstance(rebuilt._learning_rate.initial_learning_rate,
                      keras.optimizers.schedules.ExponentialDecay)
    # Same updates on the same gradients (identical starting weights).
    rng = np.random.default_rng(3)
    for t in range(9):
        grads = [rng.normal(size=v.shape).astype("float32") for v in model_a.trainable_variables]
        assert rebuilt.current_learning_rate == opt.current_learning_rate
        opt.apply(grads, model_a.trainable_variables)
        rebuilt.apply(grads, model_b.trainable_variables)
    assert rebuilt.intervals == opt.intervals
    assert sorted(set(opt.intervals.values())) == [1, 3, 4]  # linear curve over depths 0..2
    for a, b in zip(model_a.trainable_variables, model_b.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert len(rebuilt.variables) == len(opt.variables)
    for a, b in zip(opt.variables, rebuilt.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_config_round_trip_with_patterns_and_float_lr():
    opt = NestedLearningOptimizer(learning_rate=0.003, auto_schedule=False,
                                  layer_update_intervals=[("dense_0", 3), ("bias", 2)],
                                  default_interval=1, memory_blend_mode="none")
    config = opt.get_config()
    assert config["layer_update_intervals"] == [["dense_0", 3], ["bias", 2]]
    assert config["variable_depths"] is None
    rebuilt = NestedLearningOptimizer.from_config(copy.deepcopy(config))
    assert rebuilt.get_config() == config
    model = mlp()
    rebuilt.build(model.trainable_variables)
    assert rebuilt.intervals == {"mlp/dense_0/kernel": 3, "mlp/dense_0/bias": 3,
                                 "mlp/dense_1/kernel": 1, "mlp/dense_1/bias": 2,
                                 "mlp/dense_2/kernel": 1, "mlp/dense_2/bias": 2}


# ---------------------------------------------------------------- .keras save / load
@pytest.mark.parametrize("functional", [True, False], ids=["functional", "sequential"])
def test_keras_file_round_trip_continues_training_identically(tmp_path, functional):
    """A Sequential model's variable paths lose the model prefix on reload ("mlp/dense_0/kernel"
    -> "dense_0/kernel"), so the depths saved in the config must still find their variables."""
    x, y = regression_data(96, seed=3)
    model = mlp(functional=functional)
    opt = NestedLearningOptimizer(learning_rate=0.02, memory_blend_mode="adaptive",
                                  max_interval=3, steps_per_epoch=5, stats_every=3)
    opt.compute_depths_from_model(model)
    model.compile(optimizer=opt, loss="mse", jit_compile=False)
    # 7 steps: not a multiple of the intervals 3 and 2, so accumulators are non-empty.
    model.fit(x[:56], y[:56], batch_size=8, epochs=1, shuffle=False, verbose=0)
    stats = list(opt.memory_stats().values())
    assert stats[0]["accum_norm"] > 0 and stats[1]["accum_norm"] > 0

    path = tmp_path / "m.keras"
    model.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(path)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "Skipping variable loading" in m or "no layer depths" in m], \
        messages
    lopt = loaded.optimizer
    assert type(lopt) is NestedLearningOptimizer and lopt is not opt
    assert lopt.built
    assert list(lopt.intervals.values()) == [3, 3, 2, 2, 1, 1]
    assert list(opt.intervals.values()) == [3, 3, 2, 2, 1, 1]
    assert lopt.steps_per_epoch == 5
    assert isinstance(lopt._learning_rate, PerEpochSchedule)
    assert lopt._learning_rate.steps_per_epoch == 5
    assert lopt.get_config() == opt.get_config()
    assert len(lopt.variables) == len(opt.variables)
    assert [tuple(v.shape) for v in lopt.variables] == [tuple(v.shape) for v in opt.variables]
    for a, b in zip(opt.variables, lopt.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)
    assert int(lopt.iterations) == 7
    assert lopt.current_learning_rate == opt.current_learning_rate
    assert_weights_close(weights_of(loaded), weights_of(model), rtol=0, atol=0)

    # Continue both on the same batches.
    before = weights_of(model)
    model.fit(x[56:], y[56:], batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x[56:], y[56:], batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert_weights_close(weights_of(loaded), weights_of(model), rtol=1e-6, atol=1e-6)
    for a, b in zip(opt.variables, lopt.variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6,
                                   err_msg=a.path)
    assert all(np.max(np.abs(a - b)) > 1e-4 for a, b in zip(weights_of(model), before))


# ---------------------------------------------------------------- memory_stats
def test_memory_stats_match_numpy_recomputation(capsys):
    model = mlp()
    stats_every = 4
    opt = NestedLearningOptimizer(learning_rate=LR, auto_schedule=False,
                                  layer_update_intervals=[("dense_0", 3)],
                                  stats_every=stats_every, memory_blend_mode="attention")
    opt.compute_depths_from_model(model)  # depths are reported; intervals come from patterns
    variables = model.trainable_variables
    shapes = [tuple(v.shape) for v in variables]
    intervals = [3, 3, 1, 1, 1, 1]
    ref = NumpyNested(shapes, mode="attention", lr=LR, intervals=intervals)
    params = weights_of(model)
    rng = np.random.default_rng(11)
    drift = [rng.normal(size=s) for s in shapes]
    window = [[] for _ in shapes]  # gradients since each variable's last update
    for t in range(12):
        grads = [(d + rng.normal(size=d.shape)).astype("float32") for d in drift]
        opt.apply(grads, variables)
        for i, g in enumerate(grads):
            window[i].append(g.astype(np.float64))
        prev = params
        params = ref.step(params, grads)
        if t == 11:
            g_hat = [np.mean(w, axis=0) for w in window]
            update = [p - q for p, q in zip(prev, params)]
        for i, k in enumerate(intervals):
            if (t + 1) % k == 0:
                window[i] = []
    stats = opt.memory_stats()
    layers = ["mlp/dense_0", "mlp/dense_1", "mlp/dense_2"]
    assert list(stats) == layers
    for j, layer in enumerate(layers):
        row = stats[layer]
        idx = [2 * j, 2 * j + 1]
        assert row["depth"] == j
        assert row["interval"] == (3 if j == 0 else 1)
        assert row["applied_updates"] == (4 if j == 0 else 12)
        assert row["steps_since_update"] == 0
        assert row["accum_norm"] == 0.0
        # Tier norms are the norms of the optimizer's memory variables (and of the reference's).
        for ref_tier, name in zip(ref.mems, ("short", "medium", "long")):
            own = np.sqrt(sum(np.sum(np.asarray(opt.slots(i)[name], np.float64) ** 2)
                              for i in idx))
            np.testing.assert_allclose(row[f"norm_{name}"], own, rtol=1e-6)
            want = np.sqrt(sum(np.sum(ref_tier[i] ** 2) for i in idx))
            np.testing.assert_allclose(row[f"norm_{name}"], want, rtol=1e-4)
        v_rms = np.sqrt(sum(np.sum(ref.v[i]) for i in idx) / sum(ref.v[i].size for i in idx))
        np.testing.assert_allclose(row["v_rms"], v_rms, rtol=1e-4)
        # In-step statistics, recorded at step 11 (the last update of the window 8..11).
        assert row["stats_step"] == 11
        gsq = sum(np.sum(g_hat[i] ** 2) for i in idx)
        np.testing.assert_allclose(row["grad_norm"], np.sqrt(gsq), rtol=1e-6)
        np.testing.assert_allclose(
            row["update_norm"], np.sqrt(sum(np.sum(update[i] ** 2) for i in idx)), rtol=1e-4)
        sizes = np.array([g_hat[i].size for i in idx], float)
        for n, (name, ref_tier) in enumerate(zip(("short", "medium", "long"), ref.mems)):
            dot = sum(np.sum(g_hat[i] * ref_tier[i]) for i in idx)
            msq = sum(np.sum(ref_tier[i] ** 2) for i in idx)
            np.testing.assert_allclose(row[f"cos_{name}"], dot / np.sqrt(gsq * msq),
                                       rtol=1e-4, atol=1e-6)
            w = sum(ref.last_weights[i][n] * s for i, s in zip(idx, sizes)) / sizes.sum()
            np.testing.assert_allclose(row[f"weight_{name}"], w, rtol=1e-5)
        assert -1.0 <= row["cos_long"] <= 1.0 and row["cos_short"] > 0.3

    # One more step: the slow layer skips it and keeps the gradient.
    grads = [(d + rng.normal(size=d.shape)).astype("float32") for d in drift]
    opt.apply(grads, variables)
    row = opt.memory_stats()["mlp/dense_0"]
    assert row["applied_updates"] == 4 and row["steps_since_update"] == 1
    np.testing.assert_allclose(
        row["accum_norm"], np.sqrt(sum(np.sum(grads[i].astype(float) ** 2) for i in (0, 1))),
        rtol=1e-6)
    assert opt.memory_stats()["mlp/dense_2"]["applied_updates"] == 13

    opt.print_memory_stats()
    out = capsys.readouterr().out
    for layer in layers:
        assert layer in out
    assert "applied_updates" in out and "cos_short" in out
    assert len(out.strip().splitlines()) == 2 + len(layers)
