"""``state_dtype="bfloat16"``: memory tiers stored in bfloat16, everything else in full precision.

The rule (``NestedLearningOptimizer`` docstring): each tier is computed in the
variable's dtype from its widened bfloat16 value and rounded to nearest on
store; the step uses the unrounded values.  The NumPy reference below is
``NumpyNested`` with exactly that rounding added, so the optimizer is held to
it as tightly as the float32 state is held to ``NumpyNested``.
"""

import copy

import keras
import ml_dtypes
import numpy as np
import pytest

from nested_research import NestedLearningOptimizer
from nested_research.optimizers.nested.optimizer import STATE_DTYPES

from reference import NumpyNested
from test_optimizer import FORM_SHAPES, FORMS, form_step, grad_stream, make_vars

LR = float(np.float32(0.01))  # the float32 learning-rate variable, exactly


def bf16(x):
    """Round to nearest bfloat16, as a float64 array."""
    return np.asarray(x, np.float64).astype(ml_dtypes.bfloat16).astype(np.float64)


class Bf16Reference(NumpyNested):
    """``NumpyNested`` whose stored tiers (or first moment) and accumulators are rounded to
    bfloat16 after each step (the step itself used the unrounded values)."""

    def step(self, params, grads, lr=None):
        out = super().step(params, grads, lr)
        tiers = [self.m] if self.mode == "none" else self.mems
        for tier in tiers + [self.acc]:
            for i in range(len(tier)):
                tier[i] = bf16(tier[i])
        return out


# ---------------------------------------------------------------- validation and config
@pytest.mark.parametrize("bad", ["float16", "bf16", "Float32", None, 32, np.float32])
def test_state_dtype_validated(bad):
    with pytest.raises(ValueError) as err:
        NestedLearningOptimizer(state_dtype=bad)
    msg = str(err.value)
    assert "state_dtype" in msg and repr(bad) in msg and str(STATE_DTYPES) in msg


def test_default_is_full_precision_and_float64_stays_float64():
    opt = NestedLearningOptimizer()
    assert opt.state_dtype == "float32" and opt.get_config()["state_dtype"] == "float32"
    variables = make_vars([(3,)])  # float64 variables keep float64 tiers
    opt.build(variables)
    stacks = [v for v in opt.variables if v.path.endswith("_memory")]
    assert stacks and all(v.dtype == "float64" for v in stacks)


@pytest.mark.parametrize("mode", ["attention", "fixed", "adaptive", "none"])
def test_bfloat16_state_variables(mode):
    opt = NestedLearningOptimizer(memory_blend_mode=mode, state_dtype="bfloat16",
                                  auto_schedule=False, default_interval=2)
    full = NestedLearningOptimizer(memory_blend_mode=mode, auto_schedule=False,
                                   default_interval=2)
    variables = make_vars([(4, 3), (3,)], dtype="float32")
    opt.build(variables)
    full.build(variables)
    assert [v.path for v in opt.variables] == [v.path for v in full.variables]
    assert [tuple(v.shape) for v in opt.variables] == [tuple(v.shape) for v in full.variables]
    # the tier stack (memory off: the first moment) and the accumulator of each variable
    tiers = {id(v) for v in opt.variables
             if v.path.endswith(("_memory", "_momentum", "_accumulator"))}
    assert len(tiers) == 2 * len(variables)
    for v in opt.variables:
        assert (v.dtype == "bfloat16") == (id(v) in tiers), v.path
    velocities = [v for v in opt.variables if v.path.endswith("_velocity")]
    assert len(velocities) == len(variables)
    assert all(v.dtype == "float32" for v in velocities)


def test_config_round_trip_and_keras_file(tmp_path):
    x = np.random.default_rng(0).normal(size=(48, 4)).astype("float32")
    y = np.tanh(x[:, :2]).astype("float32")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh",
                              name="d0"), keras.layers.Dense(2, name="d1")], name="m")
    opt = NestedLearningOptimizer(learning_rate=0.02, state_dtype="bfloat16", max_interval=2)
    opt.compute_depths_from_model(model)
    config = opt.get_config()
    assert config["state_dtype"] == "bfloat16"
    assert NestedLearningOptimizer.from_config(copy.deepcopy(config)).get_config() == config
    model.compile(optimizer=opt, loss="mse")
    model.fit(x[:24], y[:24], batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    lopt = loaded.optimizer
    assert lopt.state_dtype == "bfloat16"
    # (a reloaded Sequential's paths lose the model name; dtypes and shapes are kept)
    assert [(tuple(v.shape), v.dtype) for v in lopt.variables] == \
        [(tuple(v.shape), v.dtype) for v in opt.variables]
    # the tier stacks of 4 variables + the accumulators of d0 (interval 2)
    assert sum(v.dtype == "bfloat16" for v in lopt.variables) == 6
    assert sum(int(np.prod(v.shape)) for v in lopt.variables if v.dtype == "bfloat16") == \
        3 * (4 * 5 + 5 + 5 * 2 + 2) + (4 * 5 + 5)
    for a, b in zip(opt.variables, lopt.variables):
        np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))
    model.fit(x[24:], y[24:], batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x[24:], y[24:], batch_size=8, epochs=1, shuffle=False, verbose=0)
    for a, b in zip(model.trainable_variables, loaded.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- bytes
def _state_bytes_per_param(opt, variables):
    n = sum(int(np.prod(v.shape)) for v in variables)
    return sum(int(np.prod(v.shape)) * np.dtype(str(v.dtype)).itemsize
               for v in opt.variables) / n


@pytest.mark.parametrize("mode,interval,f32_bytes,bf16_bytes", [
    ("attention", 1, 16, 10), ("fixed", 1, 16, 10), ("none", 1, 8, 6),
    ("attention", 3, 20, 12)])  # slow layers: + a gradient accumulator
def test_state_bytes_per_parameter(mode, interval, f32_bytes, bf16_bytes):
    shapes = [(256, 128), (128,), (128, 64), (64,)]
    sizes = {}
    for dtype in ("float32", "bfloat16"):
        variables = make_vars(shapes, dtype="float32")
        opt = NestedLearningOptimizer(memory_blend_mode=mode, state_dtype=dtype,
                                      auto_schedule=False, default_interval=interval)
        opt.build(variables)
        sizes[dtype] = _state_bytes_per_param(opt, variables)
    # (+ a few bytes of per-variable counters and the iteration count, spread over 41k params)
    assert sizes["float32"] == pytest.approx(f32_bytes, abs=0.01)
    assert sizes["bfloat16"] == pytest.approx(bf16_bytes, abs=0.01)
    if mode != "none":
        assert 1 - sizes["bfloat16"] / sizes["float32"] >= 0.35


# ---------------------------------------------------------------- numbers
@pytest.mark.parametrize("mode", ["attention", "fixed", "adaptive", "none"])
@pytest.mark.parametrize("form", FORMS)
def test_bfloat16_state_matches_the_rounded_reference(mode, form):
    """float64 parameters with bfloat16 tiers == the float64 reference that rounds its tiers."""
    import tensorflow as tf

    opt = NestedLearningOptimizer(memory_blend_mode=mode, learning_rate=0.01,
                                  state_dtype="bfloat16")
    ref = Bf16Reference(FORM_SHAPES, mode=mode, lr=LR)
    step, variables, params = form_step(opt, form)
    for grads in grad_stream(FORM_SHAPES, 10, seed=7):
        step([tf.constant(g, tf.float64) for g in grads])
        params = ref.step(params, grads)
    for v, p in zip(variables, params):
        np.testing.assert_allclose(v.numpy(), p, rtol=1e-6, atol=1e-9)
    tiers = [ref.m] if mode == "none" else ref.mems
    names = ["momentum"] if mode == "none" else ["short", "medium", "long"]
    for name, ref_tier in zip(names, tiers):
        for i, r in enumerate(ref_tier):
            m = opt.slots(i)[name]
            assert m.dtype == "bfloat16"
            got = np.asarray(m, np.float64)
            # equal, or one bfloat16 step apart where float64 sums round differently
            np.testing.assert_allclose(got, r, rtol=2 ** -7, atol=1e-30)
            assert np.mean(got == r) > 0.99


@pytest.mark.parametrize("warmup", [0, 3])
def test_bfloat16_accumulators_match_the_rounded_reference(warmup):
    """Intervals with accumulation: the window sum is stored in bfloat16, rounded once per add."""
    shapes = [(3, 4), (5,), (2,)]
    ivs = [2, 3, 1]
    opt = NestedLearningOptimizer(learning_rate=0.01, state_dtype="bfloat16", auto_schedule=False,
                                  warmup_steps=warmup,
                                  layer_update_intervals=[("v0", 2), ("v1", 3)])
    ref = Bf16Reference(shapes, lr=LR, intervals=ivs, warmup=warmup)
    variables = make_vars(shapes, zeros=False)
    params = [v.numpy().astype(float) for v in variables]
    for grads in grad_stream(shapes, 14, seed=4):
        opt.apply(grads, variables)
        params = ref.step(params, grads)
        for v, p in zip(variables, params):
            np.testing.assert_allclose(v.numpy(), p, rtol=1e-6, atol=1e-9)
    for acc, r in zip([opt.slots(i)["accumulator"] for i in range(len(shapes))], ref.acc):
        if acc is not None:
            assert acc.dtype == "bfloat16"
            np.testing.assert_array_equal(np.asarray(acc, np.float64), r)


def test_bfloat16_state_tracks_float32_state():
    """float32 training: bfloat16 tiers move the parameters like float32 tiers, within rounding."""
    shapes = [(32, 16), (16,)]
    runs = {}
    for dtype in ("float32", "bfloat16"):
        variables = make_vars(shapes, zeros=False, dtype="float32")
        start = [v.numpy().copy() for v in variables]
        opt = NestedLearningOptimizer(learning_rate=0.01, state_dtype=dtype)
        for grads in grad_stream(shapes, 30, seed=2):
            opt.apply(grads, variables)
        runs[dtype] = [v.numpy() - s for v, s in zip(variables, start)]
    for a, b in zip(runs["float32"], runs["bfloat16"]):
        moved = np.linalg.norm(a)
        assert moved > 0.1
        assert np.linalg.norm(a - b) < 0.02 * moved  # bfloat16 keeps ~3 significant digits


# ---------------------------------------------------------------- accuracy (slow)
@pytest.mark.slow
def test_bfloat16_state_accuracy_within_the_seed_spread(tmp_path_factory):
    """digits (MLP) and mnist1d (CNN), 3 seeds each: bf16 state within the f32 seed spread."""
    import os

    from nested_research.bench.accuracy import accuracy_comparison

    os.environ["NESTED_RESEARCH_DATA_DIR"] = str(tmp_path_factory.mktemp("data_dir"))

    result = accuracy_comparison([0, 1, 2], quick=False, log=lambda *a: None)
    for workload, row in result.items():
        f32, b16 = row["float32"], row["bfloat16"]
        spread = max(np.ptp(f32["test_accuracy"]), np.ptp(b16["test_accuracy"]), 0.01)
        assert abs(f32["mean"] - b16["mean"]) <= spread, (workload, row)
