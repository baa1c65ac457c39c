"""Statistics recorded only on the steps they are read for: ``stats_recording``, ``StatsWindow``.

The trainer traces two train functions, one that records the in-step statistics and one that
does not, and runs the recording one on the last ``longest_interval`` steps of each
``stats_every`` window.  Checked here: the plain function's graph is that of ``stats_every=0``
op for op; the window picks exactly the steps the optimizer's own window rule names; and
training with the window is bitwise the training of the optimizer's ``cond`` form, statistics
included.
"""

import collections

import keras
import numpy as np
import pytest
import tensorflow as tf

from nested_research import NestedLearningOptimizer
from nested_research.optimizers.nested.recorder import STAT_FIELDS
from nested_research.optimizers.nested.recorder import in_stats_window
from nested_research.training.stats_window import StatsWindow

STEP = STAT_FIELDS.index("step")


def _model(seed=1):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8, activation="relu", name="a")(inputs)
    h = keras.layers.Dense(8, activation="relu", name="b")(h)
    return keras.Model(inputs, keras.layers.Dense(3, name="c")(h))


def _opt(model, every, **kw):
    # linear depth curve, max_interval 3: a 3, b 2, c 1 (kernel and bias each)
    opt = NestedLearningOptimizer(learning_rate=0.01, memory_blend_mode="attention",
                                  max_interval=3, stats_every=every, steps_per_epoch=5, **kw)
    opt.compute_depths_from_model(model)
    return opt


def _traced_apply(opt, variables, record):
    def apply(grads):
        if record is None:
            opt.apply(grads, variables)
        else:
            with opt.stats_recording(record):
                opt.apply(grads, variables)
    return tf.function(apply, autograph=False)


def _op_counts(every, record):
    model = _model()
    opt = _opt(model, every)
    variables = model.trainable_variables
    opt.build(variables)
    fn = _traced_apply(opt, variables, record)
    graph = fn.get_concrete_function(
        [tf.TensorSpec(v.shape, v.dtype) for v in variables]).graph.as_graph_def()
    ops = collections.Counter(n.op for n in graph.node)
    for f in graph.library.function:  # the branches of the conds
        ops.update(n.op for n in f.node_def)
    return ops


def test_plain_trace_is_the_graph_without_statistics_and_the_recording_one_has_no_cond():
    off = _op_counts(0, None)
    assert _op_counts(4, False) == off  # op for op: no statistics work at all
    n_vars = 6
    recording, cond = _op_counts(4, True), _op_counts(4, None)
    conds = lambda c: c["If"] + c["StatelessIf"]  # noqa: E731
    assert conds(recording) == conds(off)  # only the interval conds
    assert conds(cond) == conds(off) + n_vars  # one statistics cond per variable
    for counts in (recording, cond):  # one Gram matrix and one write per variable
        assert counts["MatMul"] - off["MatMul"] == n_vars
        assert counts["AssignVariableOp"] - off["AssignVariableOp"] == n_vars


@pytest.mark.parametrize("record", [True, False, None])
def test_which_steps_write_the_statistics(record):
    every, steps = 4, 12
    model = _model()
    opt = _opt(model, every)
    variables = model.trainable_variables
    opt.build(variables)
    fn = _traced_apply(opt, variables, record)
    rng = np.random.default_rng(0)
    written = {i: [] for i in range(len(variables))}
    for t in range(steps):
        before = [np.asarray(s).copy() for s in opt.stats.variables]
        fn([rng.normal(size=v.shape).astype("float32") for v in variables])
        for i, s in enumerate(opt.stats.variables):
            now = np.asarray(s)
            if not np.array_equal(now, before[i]):
                written[i].append(t)
                assert now[STEP] == t  # the record says which step wrote it
    intervals = [opt.intervals[v.path] for v in variables]
    assert intervals == [3, 3, 2, 2, 1, 1] and opt.longest_interval == 3
    for i, k in enumerate(intervals):
        applied = [t for t in range(steps) if (t + 1) % k == 0]
        if record is True:
            want = applied
        elif record is False:
            want = []
        else:  # the window: t mod 4 >= 4 - 3
            want = [t for t in applied if t % every >= every - 3]
        assert written[i] == want, (i, k)
    if record is False:
        assert not any(np.any(np.asarray(s)) for s in opt.stats.variables)


def test_stats_window_rule():
    assert [t for t in range(12) if in_stats_window(t, 4, 3)] == [1, 2, 3, 5, 6, 7, 9, 10, 11]
    assert [t for t in range(10) if in_stats_window(t, 5, 1)] == [4, 9]
    on = in_stats_window(tf.constant(np.arange(10, dtype="int64")), 5, 2)
    np.testing.assert_array_equal(on.numpy(), [t % 5 >= 3 for t in range(10)])


def test_stats_recording_rejects_a_non_bool():
    opt = NestedLearningOptimizer(stats_every=2)
    with pytest.raises(ValueError, match=r"record=1 must be True or False"):
        opt.stats_recording(1)


class _Record(keras.callbacks.Callback):
    """Per batch: which function ran; on reading steps: memory_stats() and the raw records."""

    def __init__(self, opt, every, window=None):
        super().__init__()
        self.opt, self.every, self.window = opt, every, window
        self.recording, self.seen = [], {}

    def on_train_batch_end(self, batch, logs=None):
        if self.window is not None:
            self.recording.append(self.model.train_function is self.window._fns.get(True))
        step = int(self.opt.iterations.numpy())
        if step % self.every == 0:
            self.seen[step] = (self.opt.memory_stats(), [np.asarray(s) for s in self.opt.stats.variables])


def _fit(every, windowed, steps=24, batch=8):
    model = _model()
    opt = _opt(model, every)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(True))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * batch, 6)).astype("float32")
    y = rng.integers(0, 3, size=(steps * batch,)).astype("int32")
    window = StatsWindow(opt) if windowed else None
    probe = _Record(opt, every, window)
    callbacks = ([window] if windowed else []) + [probe]
    model.fit(x, y, batch_size=batch, epochs=2, shuffle=False, verbose=0, callbacks=callbacks)
    return model, opt, window, probe


def test_window_training_equals_the_cond_form_bitwise():
    every = 6
    model, opt, window, probe = _fit(every, windowed=True)
    keras.backend.clear_session()
    ref_model, ref_opt, _, ref_probe = _fit(every, windowed=False)

    # The recording function ran on exactly the window's steps, 0-based over both epochs.
    steps = 2 * 24
    want = [in_stats_window(t, every, 3) for t in range(steps)]
    assert probe.recording == want and window.recording_steps == sum(want) == 24
    assert model.train_function is None  # reset after fit: the next fit traces its own

    # What was read on every reading step, and every variable at the end: bitwise equal.
    assert sorted(probe.seen) == sorted(ref_probe.seen) == list(range(every, steps + 1, every))
    for step, (stats, raw) in probe.seen.items():
        ref_stats, ref_raw = ref_probe.seen[step]
        assert stats == ref_stats, step
        for a, b in zip(raw, ref_raw):
            np.testing.assert_array_equal(a, b)
        assert all(row["stats_step"] is not None for row in stats.values())
    for a, b in zip(opt.variables + model.weights, ref_opt.variables + ref_model.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)


def test_window_counts_from_a_resumed_step_and_is_idle_without_statistics():
    model = _model()
    opt = _opt(model, 6)
    window = StatsWindow(opt, start_step=4)
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(True))
    probe = _Record(opt, 10 ** 6, window)
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(48, 6)).astype("float32"), rng.integers(0, 3, 48).astype("int32")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[window, probe])
    # host steps 4..9: the window 3..5 of the first period and 9 of the second
    assert probe.recording == [in_stats_window(t, 6, 3) for t in range(4, 10)] \
        == [True, True, False, False, False, True]

    model = _model()
    idle = StatsWindow(_opt(model, 0))
    model.compile(optimizer=idle.opt, loss=keras.losses.SparseCategoricalCrossentropy(True))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[idle])
    assert not idle.active and idle.recording_steps == 0 and model.train_function is not None
