"""What the W&B tracker measures of the optimizer beside training, on the host.

:class:`LearningRateLog`: the learning rate each step used, from the
schedule, evaluated in blocks.  :class:`OptimizerTimer`: the wall time of one
``optimizer.apply`` in its own ``tf.function``, state restored afterwards.
Both read the optimizer through ``optimizers.protocols``.
"""

from __future__ import annotations

import contextlib
import math
import time

import keras
import numpy as np

from nested_research.optimizers.protocols import RecordsStats, base_optimizer


class LearningRateLog:
    """The rate each step used, from the schedule host-side, evaluated in blocks.

    A ``LearningRateSchedule`` is evaluated on a vector of steps once per
    ``block`` steps (one eager call); a schedule that does not vectorise
    (``ops.cond`` on the step, as Keras' ``CosineDecay`` with warmup) is mapped
    over the block in one ``tf.function``.  A plain rate (a variable) is
    re-read every ``block`` steps and at every epoch start (where
    ``ReduceLROnPlateau`` changes it).
    """

    def __init__(self, optimizer, block: int = 256):
        self.opt = base_optimizer(optimizer)
        self.block = int(block)
        self._start, self._values, self._scalar = None, None, None
        self._mapped = None

    def _map(self, lr, steps):
        import tensorflow as tf

        if self._mapped is None:
            self._mapped = tf.function(lambda s: tf.map_fn(
                lambda t: tf.cast(lr(t), tf.float32), s, fn_output_signature=tf.float32))
        return self._mapped(tf.constant(steps)).numpy()

    def refresh(self) -> None:
        """Re-read a plain rate on the next call (a schedule needs no refresh)."""
        self._scalar = None

    def __call__(self, index: int) -> float:
        """The learning rate of the update at 0-based step ``index``."""
        lr = self.opt._learning_rate  # (Keras: the schedule, or the variable of a plain rate)
        if not isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
            if self._scalar is None or self._start is None or \
                    not self._start <= index < self._start + self.block:
                self._start = index
                self._scalar = float(keras.ops.convert_to_numpy(self.opt.learning_rate))
            return self._scalar
        if self._values is None or not self._start <= index < self._start + len(self._values):
            self._start = index
            steps = np.arange(index, index + self.block, dtype=np.int64)
            try:
                values = np.asarray(keras.ops.convert_to_numpy(lr(steps)), np.float64)
                if values.shape != steps.shape:
                    raise ValueError("schedule did not vectorise")
            except Exception:  # noqa: BLE001 - e.g. a schedule with ops.cond on the step
                values = np.asarray(self._map(lr, steps), np.float64)
            self._values = values
        return float(self._values[index - self._start])


# ---------------------------------------------------------------- optimizer timing
class OptimizerTimer:
    """Time of one ``optimizer.apply`` in its own ``tf.function``, state restored after.

    All optimizer and trainable variables are copied (one ``tf.function``),
    then ``apply`` runs on "gradients" that are the copies of the trainable
    variables (the update rules cost the same for any finite values, and no
    memory is allocated for them), then everything is assigned back (one
    ``tf.function``, not timed): training continues exactly as without the
    measurement.  The first call traces and is not timed; later calls time
    ``repeats`` applies and keep the fastest.  The apply runs at the current
    step index, so slow layers that skip this step are skipped here too.
    """

    def __init__(self, model, optimizer, jit_compile: bool = False, repeats: int = 1):
        import tensorflow as tf

        self.model, self.opt = model, optimizer
        self.repeats = max(int(repeats), 1)
        self.calls = 0
        variables = list(model.trainable_variables)
        state = list(optimizer.variables) + variables
        self._n_opt = len(state) - len(variables)

        base = base_optimizer(optimizer)
        records = isinstance(base, RecordsStats)

        def apply(grads):
            # the optimizer as on most steps: without the in-step statistics (stats_window.StatsWindow)
            with base.stats_recording(False) if records else contextlib.nullcontext():
                optimizer.apply(grads, variables)
            return tf.identity(optimizer.iterations.value)

        def restore(values):
            for v, x in zip(state, values):
                v.assign(x)
            return tf.constant(0)

        self._fn = tf.function(apply, jit_compile=bool(jit_compile), autograph=False)
        self._snapshot = tf.function(lambda: [tf.identity(v.value) for v in state],
                                     autograph=False)
        self._restore = tf.function(restore, autograph=False)

    def measure(self) -> float:
        """Milliseconds of one ``apply``."""
        saved = self._snapshot()
        grads = saved[self._n_opt:]
        best = math.inf
        for r in range(self.repeats + (1 if self.calls == 0 else 0)):
            try:
                t0 = time.perf_counter()
                self._fn(grads).numpy()  # .numpy(): waits for the device
                elapsed = time.perf_counter() - t0
            finally:  # every call starts from (and leaves) the state training left
                self._restore(saved).numpy()
            if not (self.calls == 0 and r == 0):
                best = min(best, elapsed)
        self.calls += 1
        return best * 1e3
