"""Depth scheduling: curves, depths from models, manual patterns, accumulation, skipping."""

import math

import keras
import numpy as np
import pytest

from nested_research import NestedLearningOptimizer
from nested_research.optimizers.nested.intervals import (applied_updates, curve_interval,
                                                         is_update_step)
from nested_research.optimizers.nested.layer_stats import last_update_step

from reference import NumpyNested


# ---------------------------------------------------------------- curves
def _expected(d, D, K, curve, reverse):
    s = (1 - d / D) if reverse else d / D
    k = {"linear": 1 + (K - 1) * s, "exponential": K ** s,
         "cosine": 1 + (K - 1) * (1 - math.cos(math.pi * s)) / 2}[curve]
    return int(min(max(math.floor(k + 0.5), 1), K))


@pytest.mark.parametrize("curve", ["linear", "exponential", "cosine"])
@pytest.mark.parametrize("reverse", [True, False])
def test_curves(curve, reverse):
    D, K = 7, 6
    got = [curve_interval(d, D, K, curve, reverse) for d in range(D + 1)]
    assert got == [_expected(d, D, K, curve, reverse) for d in range(D + 1)]
    ends = (got[0], got[-1])
    assert ends == ((K, 1) if reverse else (1, K))
    assert got == sorted(got, reverse=reverse)


def test_curve_shapes_differ():
    lin = [curve_interval(d, 10, 9, "linear") for d in range(11)]
    exp = [curve_interval(d, 10, 9, "exponential") for d in range(11)]
    cos = [curve_interval(d, 10, 9, "cosine") for d in range(11)]
    assert lin[5] == 5
    assert exp[5] == 3 and cos[2] == 8  # exponential falls fast, cosine stays high
    assert len({tuple(lin), tuple(exp), tuple(cos)}) == 3


def test_single_depth_and_max_interval_one():
    assert curve_interval(0, 0, 6, "cosine") == 6
    assert all(curve_interval(d, 5, 1, "linear") == 1 for d in range(6))


# ---------------------------------------------------------------- depths from models
def _dense(n, name):
    return keras.layers.Dense(n, name=name)


def test_depths_sequential():
    model = keras.Sequential([keras.Input((4,)), _dense(8, "a"), keras.layers.ReLU(),
                              _dense(8, "b"), keras.layers.Dropout(0.1), _dense(2, "c")])
    opt = NestedLearningOptimizer()
    depths = opt.compute_depths_from_model(model)
    assert depths == {"sequential/a/kernel": 0, "sequential/a/bias": 0,
                      "sequential/b/kernel": 1, "sequential/b/bias": 1,
                      "sequential/c/kernel": 2, "sequential/c/bias": 2}


def test_depths_functional_branches_and_shared_layer():
    x = keras.Input((4,))
    a = _dense(4, "a")(x)                      # depth 0
    long = _dense(4, "l2")(_dense(4, "l1")(a))  # 1, 2
    short = _dense(4, "s1")(a)                 # 1
    merged = keras.layers.Add()([long, short])
    shared = _dense(4, "shared")
    y = shared(merged)                         # called at depth 3 ...
    z = shared(x)                              # ... and at depth 0 -> min = 0
    out = _dense(2, "out")(keras.layers.Concatenate()([y, z]))  # after y: depth 4
    model = keras.Model(x, out)
    d = NestedLearningOptimizer().compute_depths_from_model(model)
    assert {k.split("/")[0]: v for k, v in d.items()} == {
        "a": 0, "l1": 1, "l2": 2, "s1": 1, "shared": 0, "out": 4}


def test_depths_nested_model():
    inner_in = keras.Input((4,))
    inner = keras.Model(inner_in, _dense(4, "i2")(_dense(4, "i1")(inner_in)), name="inner")
    x = keras.Input((4,))
    out = _dense(2, "head")(inner(_dense(4, "stem")(x)))
    model = keras.Model(x, out)
    d = NestedLearningOptimizer().compute_depths_from_model(model)
    by_layer = {k.rsplit("/", 1)[0]: v for k, v in d.items()}
    assert by_layer == {"stem": 0, "i1": 1, "i2": 2, "head": 3}


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.first = _dense(8, "first")
        self.second = _dense(8, "second")
        self.third = _dense(3, "third")

    def call(self, x):
        return self.third(self.second(self.first(x)))


def test_depths_subclassed_model():
    model = _Subclassed()
    model(np.zeros((1, 4), "float32"))
    d = NestedLearningOptimizer().compute_depths_from_model(model)
    order = [d[v.path] for v in model.trainable_variables]
    assert order == [0, 0, 1, 1, 2, 2]


def test_unbuilt_model_rejected():
    model = keras.Sequential([_dense(3, "a")])
    with pytest.raises(ValueError, match="not built"):
        NestedLearningOptimizer().compute_depths_from_model(model)


def _mlp(n_layers=4, width=6):
    layers = [keras.Input((5,))] + [_dense(width, f"dense_{i}") for i in range(n_layers - 1)]
    return keras.Sequential(layers + [_dense(3, "logits")], name="m")


def test_intervals_fixed_at_build_and_reported():
    model = _mlp(4)
    opt = NestedLearningOptimizer(max_interval=6, schedule_curve="linear")
    opt.compute_depths_from_model(model)
    opt.build(model.trainable_variables)
    by_layer = {p.rsplit("/", 1)[0]: k for p, k in opt.intervals.items()}
    assert by_layer == {"m/dense_0": 6, "m/dense_1": 4, "m/dense_2": 3, "m/logits": 1}
    with pytest.raises(RuntimeError, match="already built"):
        opt.compute_depths_from_model(model)


def test_register_layer_and_variable_depth():
    model = _mlp(3)
    opt = NestedLearningOptimizer(max_interval=5, schedule_curve="linear")
    opt.register_layer_depth(model.get_layer("dense_0"), depth=0)
    opt.register_layer_depth(model.get_layer("logits"), depth=10)
    opt.register_variable_depth(model.get_layer("dense_1").kernel, 5)
    opt.build(model.trainable_variables)
    iv = opt.intervals
    assert iv["m/dense_0/kernel"] == 5 and iv["m/logits/kernel"] == 1
    assert iv["m/dense_1/kernel"] == 3       # depth 5 of 10: 1 + 4 * 0.5
    assert iv["m/dense_1/bias"] == 1          # unregistered: every step
    with pytest.raises(ValueError, match="depth"):
        opt2 = NestedLearningOptimizer()
        opt2.register_variable_depth(model.get_layer("dense_1").kernel, -1)


def test_reverse_depth_order_false_makes_deep_layers_slow():
    model = _mlp(4)
    opt = NestedLearningOptimizer(max_interval=4, reverse_depth_order=False,
                                  schedule_curve="linear")
    opt.compute_depths_from_model(model)
    opt.build(model.trainable_variables)
    assert opt.intervals["m/dense_0/kernel"] == 1 and opt.intervals["m/logits/kernel"] == 4


# ---------------------------------------------------------------- manual patterns
def test_manual_patterns_first_match_full_path_and_default():
    model = _mlp(4)
    opt = NestedLearningOptimizer(
        auto_schedule=False, default_interval=2,
        layer_update_intervals={r"dense_0/kernel": 7, r"dense_[01]": 3, r"^m/logits": 1})
    opt.build(model.trainable_variables)
    iv = opt.intervals
    assert iv["m/dense_0/kernel"] == 7       # first match wins
    assert iv["m/dense_0/bias"] == 3
    assert iv["m/dense_1/kernel"] == 3
    assert iv["m/dense_2/kernel"] == 2       # default
    assert iv["m/logits/bias"] == 1


def test_manual_pattern_matching_nothing_warns():
    model = _mlp(2)
    opt = NestedLearningOptimizer(auto_schedule=False,
                                  layer_update_intervals=[("encoder", 4), ("dense_0", 2)])
    with pytest.warns(UserWarning, match="encoder"):
        opt.build(model.trainable_variables)
    assert opt.intervals["m/dense_0/kernel"] == 2


@pytest.mark.parametrize("k,warmup", [(1, 0), (3, 0), (4, 5), (2, 1)])
def test_one_step_rule_on_the_host_and_in_the_step(k, warmup):
    """``is_update_step`` is the rule's one copy: the same answer for Python integers, a NumPy
    array of steps (the schedule report) and integer tensors (the training step, eager and in a
    compiled function)."""
    from keras import ops

    want = [t < warmup or (t - warmup + 1) % k == 0 for t in range(30)]
    assert [bool(is_update_step(t, k, warmup)) for t in range(30)] == want
    assert is_update_step(np.arange(30), k, warmup).tolist() == want
    steps = ops.arange(30, dtype="int64")
    assert ops.convert_to_numpy(is_update_step(steps, k, warmup)).tolist() == want
    import tensorflow as tf

    compiled = tf.function(lambda s: is_update_step(s, k, warmup), jit_compile=True)
    assert compiled(tf.range(30, dtype=tf.int64)).numpy().tolist() == want


# ---------------------------------------------------------------- step rule
@pytest.mark.parametrize("k,warmup", [(1, 0), (3, 0), (4, 5), (2, 1)])
def test_step_rule_host_helpers(k, warmup):
    due = [t < warmup or (t - warmup + 1) % k == 0 for t in range(30)]
    for n in range(31):
        assert applied_updates(n, k, warmup) == sum(due[:n])
        last = max([t for t in range(n) if due[t]], default=None)
        assert last_update_step(n, k, warmup) == last


def _run(opt, variables, grads, check=None):
    for t, g in enumerate(grads):
        before = [v.numpy().copy() for v in variables]
        opt.apply(g, variables)
        if check:
            check(t, before, [v.numpy() for v in variables])


@pytest.mark.parametrize("mode", ["attention", "fixed", "adaptive", "none"])
def test_interval_with_accumulation_equals_averaged_steps(mode):
    """Interval k + accumulation == the same optimizer every k steps on the mean gradient."""
    k, steps = 3, 15
    shapes = [(4, 3), (3,)]
    rng = np.random.default_rng(0)
    grads = [[rng.normal(size=s) for s in shapes] for _ in range(steps)]
    slow_vars = [keras.Variable(np.zeros(s), dtype="float64", name=f"slow{i}")
                 for i, s in enumerate(shapes)]
    fast_vars = [keras.Variable(np.zeros(s), dtype="float64", name=f"fast{i}")
                 for i, s in enumerate(shapes)]
    slow = NestedLearningOptimizer(memory_blend_mode=mode, auto_schedule=False,
                                   layer_update_intervals=[("slow", k)], learning_rate=0.01)
    every = NestedLearningOptimizer(memory_blend_mode=mode, learning_rate=0.01,
                                    auto_schedule=False)

    def check(t, before, after):
        if (t + 1) % k:
            for b, a in zip(before, after):
                np.testing.assert_array_equal(a, b)   # skipped step: untouched
        else:
            mean = [np.mean([grads[s][i] for s in range(t + 1 - k, t + 1)], axis=0)
                    for i in range(len(shapes))]
            every.apply(mean, fast_vars)
            for a, b, f in zip(after, before, fast_vars):
                np.testing.assert_allclose(a, f.numpy(), rtol=1e-10, atol=1e-12)
                assert np.max(np.abs(a - b)) > 0

    _run(slow, slow_vars, grads, check)
    counts = [float(slow.slots(i)["updates"]) for i in range(len(slow.model_variables))]
    assert counts == [steps // k] * len(shapes)


def test_skipped_steps_leave_memories_and_moments_untouched():
    k = 4
    shapes = [(5,)]
    var = [keras.Variable(np.zeros(5), dtype="float64", name="slow")]
    opt = NestedLearningOptimizer(auto_schedule=False, layer_update_intervals=[("slow", k)])
    rng = np.random.default_rng(2)
    for t in range(12):
        opt.apply([rng.normal(size=5)], var)
        state = [v.numpy().copy() for v in opt.variables if "accumulator" not in v.path
                 and "iteration" not in v.path]
        if t % k != k - 1 and t > k:
            for s, p in zip(state, prev):
                np.testing.assert_array_equal(s, p)
        prev = state


def test_without_accumulation_only_the_current_gradient_counts():
    k, steps = 3, 12
    rng = np.random.default_rng(4)
    grads = [[rng.normal(size=(6,))] for _ in range(steps)]
    var = [keras.Variable(np.zeros(6), dtype="float64", name="slow")]
    opt = NestedLearningOptimizer(auto_schedule=False, layer_update_intervals=[("slow", k)],
                                  accumulate_gradients=False)
    ref = NumpyNested([(6,)], intervals=[k], accumulate=False)
    params = [np.zeros(6)]
    for g in grads:
        opt.apply(g, var)
        params = ref.step(params, g)
        np.testing.assert_allclose(var[0].numpy(), params[0], rtol=1e-7, atol=1e-14)  # lr is a float32 variable
    assert not any("accumulator" in v.path for v in opt.variables)


@pytest.mark.parametrize("warmup", [0, 4])
def test_warmup_then_intervals_match_reference(warmup):
    shapes = [(3, 3), (3,), (2,)]
    ivs = [2, 3, 1]
    rng = np.random.default_rng(5)
    variables = [keras.Variable(np.zeros(s), dtype="float64", name=f"v{i}")
                 for i, s in enumerate(shapes)]
    opt = NestedLearningOptimizer(auto_schedule=False, warmup_steps=warmup,
                                  layer_update_intervals=[("v0", 2), ("v1", 3)])
    ref = NumpyNested(shapes, intervals=ivs, warmup=warmup)
    params = [np.zeros(s) for s in shapes]
    for t in range(20):
        g = [rng.normal(size=s) for s in shapes]
        opt.apply(g, variables)
        params = ref.step(params, g)
        for v, p in zip(variables, params):
            np.testing.assert_allclose(v.numpy(), p, rtol=1e-7, atol=1e-14)
    counts = [int(opt.slots(i)["updates"]) for i in range(len(opt.model_variables))]
    assert counts == [applied_updates(20, k, warmup) for k in ivs]


@pytest.mark.parametrize("mode,epochs", [("attention", 1), ("fixed", 2)])
def test_fit_with_depth_schedule_under_xla_matches_eager(mode, epochs):
    """jit_compile=True and False agree to float32 rounding.

    (Attention retrieval amplifies rounding differences over many steps, as a
    softmax of inner products does, so it is compared over one epoch.)
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 5)).astype("float32")
    y = rng.integers(0, 3, size=64)
    weights = []
    for jit in (False, True):
        keras.utils.set_random_seed(1)
        model = _mlp(4)
        opt = NestedLearningOptimizer(learning_rate=0.01, warmup_steps=2,
                                      memory_blend_mode=mode)
        opt.compute_depths_from_model(model)
        model.compile(opt, "sparse_categorical_crossentropy", jit_compile=jit)
        model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0)
        weights.append([w.numpy() for w in model.trainable_variables])
        assert int(opt.iterations.numpy()) == 8 * epochs
        assert max(opt.intervals.values()) == 6
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
