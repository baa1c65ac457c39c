"""``StatsWindow``: the trainer's callback that runs the statistics-recording step only where
a read needs it (``optimizers.nested.recorder.StatsRecorder`` is the optimizer's side).

Every ``stats_every`` steps the tracker reads the in-step statistics, and each
variable's must come from its last applied update before the read; those
updates fall on the last ``longest_interval`` steps of each window
(``recorder.in_stats_window``).  The callback counts steps on the host and
switches the model between two traced train functions: one traced inside
``optimizer.stats_recording(True)`` and one inside ``stats_recording(False)``,
whose graph is that of ``stats_every=0`` op for op.
"""

from __future__ import annotations

import keras

from nested_research.optimizers.nested.recorder import in_stats_window
from nested_research.optimizers.protocols import RecordsStats, base_optimizer
from nested_research.core.steps import StepCounter


def traced_with_stats(opt, fn, record: bool):
    """``fn`` (a train function) called inside ``opt.stats_recording(record)``: the steps it
    traces (or runs eagerly) record statistics on every step, or on none."""
    context = opt.stats_recording(record)

    def train_function(*args, **kwargs):
        with context:  # read only while tracing (or run eagerly)
            return fn(*args, **kwargs)
    return train_function


class StatsWindow(keras.callbacks.Callback):
    """Runs the optimizer's statistics-recording step only on the steps that need it.

    With ``stats_every = N`` the in-step statistics are read after every N-th
    step, and each variable's must come from its last applied update before
    that.  This callback counts steps on the host and runs one of two traced
    train functions per step (``optimizer.stats_recording``): the recording
    one on the last ``longest_interval`` steps of each window
    (``in_stats_window``), the plain one, which has no statistics work at all,
    on the others.  The recording function is traced when first needed.

    ``start_step``: steps already trained in a resumed run (``None``: the
    optimizer's ``iterations``).  Does nothing when the optimizer records no
    statistics.  After ``fit`` the model's train function is reset (the next
    ``fit`` traces its own).
    """

    def __init__(self, optimizer, start_step: int | None = None):
        super().__init__()
        self.opt = base_optimizer(optimizer)  # (under a LossScaleOptimizer)
        self.start_step = start_step
        self.active = isinstance(self.opt, RecordsStats) and bool(self.opt.stats_every)
        self.step = 0
        self.recording_steps = 0
        self._fns: dict[bool, object] = {}
        self._counter = StepCounter()

    def on_train_begin(self, logs=None):
        if not self.active:
            return
        model = self.model
        model.make_train_function()  # (what fit already made; Keras' returns nothing)
        if model.train_function is not self._fns.get(False):  # else: ours, kept (a benchmark)
            self._fns = {False: traced_with_stats(self.opt, model.train_function, False)}
            model.train_function = self._fns[False]
        self._per_call = int(model.steps_per_execution or 1)
        self.longest = self._longest_interval()
        self.step = int(keras.ops.convert_to_numpy(self.opt.iterations)) \
            if self.start_step is None else int(self.start_step)
        self.recording_steps = 0

    def _longest_interval(self) -> int:
        """The optimizer's ``longest_interval``, also before it is built (the first step)."""
        if self.opt.built:
            return self.opt.longest_interval
        return max(self.opt.planned_intervals(self.model.trainable_variables), default=1)

    def on_epoch_begin(self, epoch, logs=None):
        self._counter.on_epoch_begin()

    def on_train_batch_begin(self, batch, logs=None):
        if not self.active:
            return
        model, every, longest = self.model, self.opt.stats_every, self.longest
        record = any(in_stats_window(i, every, longest)
                     for i in range(self.step, self.step + self._per_call))
        if record and True not in self._fns:
            model.make_train_function(force=True)  # a second function, traced recording
            self._fns[True] = traced_with_stats(self.opt, model.train_function, True)
        fn = self._fns[record]
        if model.train_function is not fn:
            model.train_function = fn
        self.recording_steps += self._per_call if record else 0

    def on_train_batch_end(self, batch, logs=None):
        self.step += self._counter.advance(batch)

    def on_train_end(self, logs=None):
        if self.active:
            self.model.train_function = None
