"""``skip_nonfinite``: the bare optimizer leaves weights and every slot untouched on a NaN/inf
step, counts it, and then trains as if the step had not happened."""

import numpy as np
import pytest
import keras
import tensorflow as tf

from nested_research import NestedLearningOptimizer

SHAPES = [(5, 4), (4,)]


def _vars(seed=0):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=s).astype("float32"), name=f"v{i}")
            for i, s in enumerate(SHAPES)]


def _grads(n, seed=1):
    rng = np.random.default_rng(seed)
    return [[rng.normal(size=s).astype("float32") for s in SHAPES] for _ in range(n)]


def _state(opt, variables):
    return [np.asarray(v).copy() for v in variables] + \
        [np.asarray(v).copy() for v in opt.variables if not v.path.endswith("skipped_steps")]


@pytest.mark.parametrize("form", ["eager", "graph", "xla"])
@pytest.mark.parametrize("mode", ["attention", "none"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_bad_step_changes_nothing_and_training_continues_as_without_it(form, mode, bad):
    kw = dict(learning_rate=0.01, memory_blend_mode=mode, amsgrad=True, auto_schedule=False,
              layer_update_intervals=[("v0", 2)], skip_nonfinite=True)
    opt, ref = NestedLearningOptimizer(**kw), NestedLearningOptimizer(**kw)
    a, b = _vars(), _vars()

    def stepper(o, v):
        fn = lambda g: o.apply(g, v)  # noqa: E731
        return fn if form == "eager" else tf.function(fn, jit_compile=form == "xla")
    step_a, step_b = stepper(opt, a), stepper(ref, b)
    grads = _grads(7)
    for g in grads[:3]:
        step_a([tf.constant(x) for x in g])
        step_b([tf.constant(x) for x in g])
    before = _state(opt, a)
    poisoned = [grads[3][0].copy(), grads[3][1]]
    poisoned[0][2, 1] = bad
    step_a([tf.constant(x) for x in poisoned])
    after = _state(opt, a)
    for x, y in zip(before, after):
        np.testing.assert_array_equal(x, y)
    assert opt.skipped_steps == 1 and int(opt.iterations) == 3
    for g in grads[4:]:
        step_a([tf.constant(x) for x in g])
        step_b([tf.constant(x) for x in g])
    for x, y in zip(_state(opt, a), _state(ref, b)):
        np.testing.assert_array_equal(x, y)
    assert ref.skipped_steps == 0


def test_off_by_default_and_then_a_nan_corrupts_the_tiers():
    opt = NestedLearningOptimizer(learning_rate=0.01, max_interval=1)
    assert opt.skip_nonfinite is False and opt.get_config()["skip_nonfinite"] is False
    v = _vars()
    g = _grads(1)[0]
    g[1][0] = np.nan
    opt.apply(g, v)
    assert np.isnan(np.asarray(opt.slots(1)["long"])).any()  # what skip_nonfinite prevents


def test_model_fit_skips_the_batch_and_round_trips_the_setting(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.normal(size=(32, 2)).astype("float32")
    x_bad = x.copy()
    x_bad[8:16] = np.inf  # the second batch of 8: loss and gradients non-finite
    models = []
    for data in (x, x_bad):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d0"),
                                  keras.layers.Dense(2, name="d1")], name="m")
        opt = NestedLearningOptimizer(learning_rate=0.01, skip_nonfinite=True, max_interval=1)
        model.compile(optimizer=opt, loss="mse", jit_compile=True)
        model.fit(data, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        models.append(model)
    good, skipped = models
    assert skipped.optimizer.skipped_steps == 1 and int(skipped.optimizer.iterations) == 3
    assert all(np.isfinite(np.asarray(v)).all() for v in skipped.optimizer.variables)
    assert all(np.isfinite(w).all() for w in skipped.get_weights())
    assert not np.allclose(good.get_weights()[0], skipped.get_weights()[0])  # 3 steps, not 4
    path = tmp_path / "m.keras"
    skipped.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.skip_nonfinite is True
    assert loaded.optimizer.skipped_steps == 1


def test_mixed_float16_fit_with_a_nan_batch_keeps_everything_finite():
    """Under ``mixed_float16`` Keras' LossScaleOptimizer sees the non-finite scaled gradients
    first (an overflow: it halves the scale and skips); the inner optimizer stays finite."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    x[12] = np.nan
    y = rng.integers(0, 3, size=(32,))
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d0"),
                                  keras.layers.Dense(3, name="d1", dtype="float32")], name="m")
        opt = NestedLearningOptimizer(learning_rate=0.01, skip_nonfinite=True, max_interval=1)
        model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(
            from_logits=True))
        model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    inner = model.optimizer.inner_optimizer
    assert inner is opt and int(opt.iterations) == 3  # 4 batches, one skipped
    assert all(np.isfinite(np.asarray(v)).all() for v in opt.variables)
    assert all(np.isfinite(w).all() for w in model.get_weights())
