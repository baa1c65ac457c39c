"""Learning-rate schedules against NumPy formulas written from their docstrings.

``PerEpochSchedule`` (warmup -> hold -> half-cosine decay, restarting every
epoch), ``WarmupCosineSchedule``, their serialization, and the optimizer's
``steps_per_epoch`` / ``set_steps_per_epoch`` plumbing (through ``apply`` and
``model.fit``).
"""

import copy
import math

import numpy as np
import pytest
import keras

from nested_research import NestedLearningOptimizer, PerEpochSchedule, WarmupCosineSchedule

from reference import NumpyNested


# ---------------------------------------------------------------- NumPy formulas (docstrings)
def per_epoch_np(step, lr0, steps, warmup=0.25, hold=0.25, decay=0.5, min_fraction=0.01):
    """lr_min + (lr0 - lr_min) * shape(u), u = (step mod S) / S (lr_min = min_fraction * lr0)."""
    u = (step % steps) / steps
    lr_min = min_fraction * lr0
    if u < warmup:
        return lr_min + (lr0 - lr_min) * u / warmup
    if u < warmup + hold:
        return lr0
    return lr_min + (lr0 - lr_min) * (1 + math.cos(math.pi * (u - warmup - hold) / decay)) / 2


def warmup_cosine_np(t, lr0, total, warmup=0, min_fraction=0.0):
    if t < warmup:
        return lr0 * (t + 1) / warmup
    pos = min(1.0, (t - warmup) / (total - warmup))
    return lr0 * (min_fraction + (1 - min_fraction) * (1 + math.cos(math.pi * pos)) / 2)


def values(schedule, steps):
    return np.array([float(schedule(keras.ops.convert_to_tensor(s, "int64"))) for s in steps])


FRACTIONS = [
    (0.25, 0.25, 0.50, 0.01),  # the defaults
    (0.10, 0.00, 0.90, 0.00),  # no hold, decay to zero
    (0.00, 0.00, 1.00, 0.10),  # no warmup: decay from the first step
    (1.00, 0.00, 0.00, 0.05),  # warmup only
    (0.30, 0.70, 0.00, 0.20),  # warmup then hold to the end
    (0.20, 0.30, 0.50, 1.00),  # floor == peak: constant
]


# ---------------------------------------------------------------- PerEpochSchedule
@pytest.mark.parametrize("fractions", FRACTIONS, ids=lambda f: "-".join(map(str, f)))
@pytest.mark.parametrize("steps_per_epoch", [20, 7])
def test_per_epoch_every_step_over_three_epochs(fractions, steps_per_epoch):
    w, h, d, f = fractions
    lr0 = 0.3
    sched = PerEpochSchedule(lr0, steps_per_epoch, w, h, d, f)
    steps = np.arange(3 * steps_per_epoch)
    got = values(sched, steps)
    want = np.array([per_epoch_np(s, lr0, steps_per_epoch, w, h, d, f) for s in steps])
    # rtol 1e-6; the atol (1e-7 of the peak) only matters near a zero floor (float32 cos).
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * lr0)
    # Restarts: every epoch is the same curve.
    np.testing.assert_array_equal(got[:steps_per_epoch], got[steps_per_epoch:2 * steps_per_epoch])
    np.testing.assert_array_equal(got[:steps_per_epoch], got[2 * steps_per_epoch:])
    assert np.all(got >= f * lr0 * (1 - 1e-6)) and np.all(got <= lr0 * (1 + 1e-6))
    # factor() is the same curve divided by lr0.
    np.testing.assert_allclose(
        [float(sched.factor(s)) for s in steps[:steps_per_epoch]], want[:steps_per_epoch] / lr0,
        rtol=1e-6, atol=1e-7)


def test_per_epoch_phase_boundaries():
    lr0, S = 0.2, 20  # W, H, D = 0.25, 0.25, 0.5 -> warmup 0..4, hold 5..9, decay 10..19
    sched = PerEpochSchedule(lr0, S)
    v = dict(zip(range(2 * S + 1), values(sched, range(2 * S + 1))))
    lr_min = 0.01 * lr0
    assert v[0] == pytest.approx(lr_min, rel=1e-6)  # the first step is never zero
    assert v[1] == pytest.approx(lr_min + (lr0 - lr_min) * 0.05 / 0.25, rel=1e-6)
    assert v[4] == pytest.approx(lr_min + (lr0 - lr_min) * 0.8, rel=1e-6)  # last warmup step
    assert v[4] < lr0
    for s in range(5, 11):  # hold, and the first decay step (cos 0 = 1) are the peak
        assert v[s] == pytest.approx(lr0, rel=1e-6), s
    assert v[15] == pytest.approx(lr_min + (lr0 - lr_min) * 0.5, rel=1e-6)  # half way down
    assert v[19] == pytest.approx(
        lr_min + (lr0 - lr_min) * (1 + math.cos(math.pi * 0.9)) / 2, rel=1e-6)
    assert all(v[s] > v[s + 1] for s in range(10, 19))  # strictly decaying
    assert all(v[s] < v[s + 1] for s in range(0, 4))  # strictly warming up
    assert v[20] == pytest.approx(v[0], rel=1e-7) and v[25] == pytest.approx(lr0, rel=1e-6)
    assert v[40] == pytest.approx(v[0], rel=1e-7)


def test_per_epoch_exact_at_large_step_counts():
    """The position in the epoch must not depend on float32 rounding of the global step.

    After 2**24 steps float32 no longer holds every integer, so ``mod(float32(step), S)``
    lands on the wrong step of the epoch (here 16777217 -> 16777216).
    """
    S = 8
    sched = PerEpochSchedule(1.0, S, 0.5, 0.0, 0.5, 0.0)  # warmup over 4 steps: 0, .25, .5, .75
    for step in (2 ** 24 + 1, 2 ** 25 + 3, 10 ** 9 + 2):
        got = float(sched(keras.ops.convert_to_tensor(step, "int64")))
        assert got == pytest.approx(per_epoch_np(step, 1.0, S, 0.5, 0.0, 0.5, 0.0), abs=1e-6), step


def test_per_epoch_with_a_schedule_as_base():
    base = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    S = 6
    sched = PerEpochSchedule(base, S, 0.5, 0.0, 0.5, 0.1)
    steps = np.arange(3 * S)
    got = values(sched, steps)
    want = np.array([per_epoch_np(s, 0.1 * 0.5 ** (s / 10), S, 0.5, 0.0, 0.5, 0.1)
                     for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # The base really varies: epoch 3 peaks lower than epoch 1.
    assert got[2 * S + 3] < 0.9 * got[3]


@pytest.mark.parametrize("base", ["float", "schedule"])
def test_per_epoch_serialization_round_trip(base):
    lr0 = 0.05 if base == "float" else keras.optimizers.schedules.CosineDecay(0.05, 30)
    sched = PerEpochSchedule(lr0, 9, 0.2, 0.3, 0.5, 0.02)
    blob = keras.optimizers.schedules.serialize(sched)
    rebuilt = keras.optimizers.schedules.deserialize(copy.deepcopy(blob))
    assert type(rebuilt) is PerEpochSchedule
    assert rebuilt.get_config() == sched.get_config()
    assert keras.optimizers.schedules.serialize(rebuilt) == blob
    assert PerEpochSchedule.from_config(copy.deepcopy(sched.get_config())).get_config() == \
        sched.get_config()
    if base == "schedule":
        assert isinstance(rebuilt.initial_learning_rate, keras.optimizers.schedules.CosineDecay)
    steps = range(30)
    np.testing.assert_array_equal(values(rebuilt, steps), values(sched, steps))


@pytest.mark.parametrize("kwargs,name,bad", [
    (dict(lr_warmup_fraction=-0.1, lr_hold_fraction=0.35), "lr_warmup_fraction", "-0.1"),
    (dict(lr_hold_fraction=-0.25, lr_decay_fraction=1.0), "lr_hold_fraction", "-0.25"),
    (dict(lr_decay_fraction=1.5, lr_warmup_fraction=0.0, lr_hold_fraction=-0.5),
     "lr_hold_fraction", "-0.5"),
    (dict(lr_decay_fraction=0.6), "lr_decay_fraction", "0.6"),  # sums to 1.1
    (dict(lr_warmup_fraction=0.1, lr_hold_fraction=0.1, lr_decay_fraction=0.1),
     "lr_warmup_fraction", "0.1"),  # sums to 0.3
    (dict(lr_min_fraction=1.5), "lr_min_fraction", "1.5"),
    (dict(lr_min_fraction=-0.01), "lr_min_fraction", "-0.01"),
    (dict(steps_per_epoch=0), "steps_per_epoch", "0"),
    (dict(steps_per_epoch=2.5), "steps_per_epoch", "2.5"),
])
def test_per_epoch_bad_arguments(kwargs, name, bad):
    kw = dict(steps_per_epoch=10)
    kw.update(kwargs)
    with pytest.raises(ValueError) as err:
        PerEpochSchedule(0.1, **kw)
    assert name in str(err.value) and bad in str(err.value), str(err.value)
    # The optimizer validates the same arguments up front.
    with pytest.raises(ValueError) as err:
        NestedLearningOptimizer(**kw)
    assert name in str(err.value) and bad in str(err.value), str(err.value)


def test_fraction_sum_message_names_all_three():
    with pytest.raises(ValueError) as err:
        PerEpochSchedule(0.1, 10, 0.5, 0.5, 0.5)
    msg = str(err.value)
    for name in ("lr_warmup_fraction", "lr_hold_fraction", "lr_decay_fraction", "1.5"):
        assert name in msg, msg


# ---------------------------------------------------------------- WarmupCosineSchedule
@pytest.mark.parametrize("total,warmup,f", [(30, 5, 0.0), (30, 0, 0.1), (12, 11, 0.5), (1, 0, 0.0)])
def test_warmup_cosine_every_step(total, warmup, f):
    lr0 = 0.4
    sched = WarmupCosineSchedule(lr0, total, warmup, f)
    steps = np.arange(total + 6)  # past the end it stays at the floor
    got = values(sched, steps)
    want = np.array([warmup_cosine_np(s, lr0, total, warmup, f) for s in steps])
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7 * lr0)
    if warmup:
        assert got[0] == pytest.approx(lr0 / warmup, rel=1e-6)
        assert got[warmup - 1] == pytest.approx(lr0, rel=1e-6)
    assert got[warmup] == pytest.approx(lr0, rel=1e-6)
    np.testing.assert_allclose(got[total:], f * lr0, rtol=1e-6, atol=1e-7 * lr0)


def test_warmup_cosine_serialization_round_trip():
    sched = WarmupCosineSchedule(0.02, 50, 7, 0.1)
    blob = keras.optimizers.schedules.serialize(sched)
    rebuilt = keras.optimizers.schedules.deserialize(copy.deepcopy(blob))
    assert type(rebuilt) is WarmupCosineSchedule
    assert rebuilt.get_config() == sched.get_config() == {
        "initial_learning_rate": 0.02, "total_steps": 50, "warmup_steps": 7,
        "lr_min_fraction": 0.1}
    np.testing.assert_array_equal(values(rebuilt, range(60)), values(sched, range(60)))
    # It also serializes as the base of a PerEpochSchedule and as an optimizer's rate.
    outer = PerEpochSchedule(sched, 10)
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(outer))
    np.testing.assert_array_equal(values(again, range(60)), values(outer, range(60)))
    opt = NestedLearningOptimizer(learning_rate=sched)
    rebuilt_opt = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert rebuilt_opt.get_config() == opt.get_config()
    assert isinstance(rebuilt_opt._learning_rate, WarmupCosineSchedule)


@pytest.mark.parametrize("kwargs,name,bad", [
    (dict(total_steps=0), "total_steps", "0"),
    (dict(total_steps=10, warmup_steps=10), "warmup_steps", "10"),
    (dict(total_steps=10, warmup_steps=-1), "warmup_steps", "-1"),
    (dict(total_steps=10, lr_min_fraction=1.5), "lr_min_fraction", "1.5"),
])
def test_warmup_cosine_bad_arguments(kwargs, name, bad):
    with pytest.raises(ValueError) as err:
        WarmupCosineSchedule(0.1, **kwargs)
    assert name in str(err.value) and bad in str(err.value), str(err.value)


# ---------------------------------------------------------------- the optimizer's schedule
SHAPES = [(5,), (3, 4)]


def _grads(steps, seed=0):
    rng = np.random.default_rng(seed)
    drift = [rng.normal(size=s) for s in SHAPES]
    return [[d + rng.normal(size=d.shape) for d in drift] for _ in range(steps)]


def _vars():
    rng = np.random.default_rng(1)
    return [keras.Variable(rng.normal(size=s), dtype="float64", name=f"v{i}")
            for i, s in enumerate(SHAPES)]


def test_optimizer_steps_per_epoch_uses_the_schedule():
    S, lr0 = 6, 0.05
    kw = dict(lr_warmup_fraction=0.5, lr_hold_fraction=0.0, lr_decay_fraction=0.5,
              lr_min_fraction=0.1)
    opt = NestedLearningOptimizer(learning_rate=lr0, steps_per_epoch=S, max_interval=1, **kw)
    assert isinstance(opt._learning_rate, PerEpochSchedule)
    variables = _vars()
    ref = NumpyNested(SHAPES)
    params = [v.numpy() for v in variables]
    for n, g in enumerate(_grads(2 * S + 2)):
        lr_n = opt.current_learning_rate
        assert lr_n == pytest.approx(per_epoch_np(n, lr0, S, 0.5, 0.0, 0.5, 0.1), rel=1e-6), n
        opt.apply(g, variables)
        params = ref.step(params, g, lr=lr_n)
        for v, p in zip(variables, params):
            np.testing.assert_allclose(v.numpy(), p, rtol=1e-6, atol=1e-10)
    assert opt.current_learning_rate == pytest.approx(
        per_epoch_np(2 * S + 2, lr0, S, 0.5, 0.0, 0.5, 0.1), rel=1e-6)
    cfg = opt.get_config()
    assert cfg["learning_rate"] == lr0 and cfg["steps_per_epoch"] == S


def test_set_steps_per_epoch_resizes_and_keeps_the_base_rate():
    base = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=5, decay_rate=0.5)
    opt = NestedLearningOptimizer(learning_rate=base)
    opt.set_steps_per_epoch(4)
    opt.set_steps_per_epoch(10)  # re-size: no schedule inside a schedule
    assert opt.steps_per_epoch == 10
    sched = opt._learning_rate
    assert isinstance(sched, PerEpochSchedule) and sched.initial_learning_rate is base
    np.testing.assert_allclose(
        values(sched, range(25)),
        [per_epoch_np(s, 0.1 * 0.5 ** (s / 5), 10) for s in range(25)], rtol=1e-6)
    # The config round trip rebuilds the same schedule.
    rebuilt = NestedLearningOptimizer.from_config(copy.deepcopy(opt.get_config()))
    assert rebuilt.steps_per_epoch == 10
    np.testing.assert_allclose(values(rebuilt._learning_rate, range(25)),
                               values(sched, range(25)), rtol=1e-7)

    flt = NestedLearningOptimizer(learning_rate=0.03)
    flt.set_steps_per_epoch(5)
    flt.set_steps_per_epoch(8)
    assert flt._learning_rate.initial_learning_rate == pytest.approx(0.03)
    assert flt.current_learning_rate == pytest.approx(0.01 * 0.03, rel=1e-6)
    with pytest.raises(ValueError, match="steps_per_epoch"):
        flt.set_steps_per_epoch(0)


def _mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                             keras.layers.Dense(1)])


class RecordLR(keras.callbacks.Callback):
    def __init__(self, opt):
        super().__init__()
        self.opt, self.lrs = opt, []

    def on_train_batch_begin(self, batch, logs=None):
        self.lrs.append(self.opt.current_learning_rate)


@pytest.mark.parametrize("when", ["before_compile", "after_compile"])
def test_set_steps_per_epoch_with_fit(when):
    S, lr0 = 4, 0.05
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 3)).astype("float32")
    y = np.sin(x.sum(1, keepdims=True)).astype("float32")

    def late():
        model = _mlp()
        opt = NestedLearningOptimizer(learning_rate=lr0, max_interval=1)
        if when == "before_compile":
            opt.set_steps_per_epoch(S)
        model.compile(optimizer=opt, loss="mse")
        if when == "after_compile":
            opt.set_steps_per_epoch(S)
        rec = RecordLR(opt)
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[rec])
        return model, opt, rec

    def fitted(**kw):
        model = _mlp()
        opt = NestedLearningOptimizer(learning_rate=lr0, max_interval=1, **kw)
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        return model

    model, opt, rec = late()
    # The rate the optimizer reports before each of the 12 steps follows the schedule.
    assert int(opt.iterations) == 12
    np.testing.assert_allclose(rec.lrs, [per_epoch_np(n, lr0, S) for n in range(12)], rtol=1e-6)
    # ... and it is the rate the compiled train step used: same weights as a run with
    # steps_per_epoch in the constructor, different from a run without the schedule.
    scheduled, constant = fitted(steps_per_epoch=S), fitted()
    for a, b, c in zip(model.trainable_variables, scheduled.trainable_variables,
                       constant.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    assert max(np.max(np.abs(a.numpy() - c.numpy()))
               for a, c in zip(model.trainable_variables, constant.trainable_variables)) > 1e-3
    assert opt.get_config()["steps_per_epoch"] == S
