"""The Keras callback that logs training to a W&B run (``WandbTracker.callbacks``).

What :class:`TrackingCallback` logs (step axis ``trainer/step`` = optimizer
steps taken, ``trainer/epoch`` for the per-epoch keys):

every ``log_every`` steps (default 10; 1 logs every step)
    ``train/loss``, ``train/accuracy`` (Keras' running epoch means),
    ``train/lr`` (the rate that step's update used: the schedule at the step's
    0-based index), ``timing/step_ms`` (mean wall time per step since the
    previous logged row, measured between batch ends).
every ``stats_every`` steps (the optimizer's in-step statistics period; 0: off)
    ``layers/<layer>/state/...`` for every optimizer: its state's norms under
    one naming scheme (``state/fast_norm``, ``state/medium_norm``,
    ``state/slow_norm``, ``state/second_rms``; ``state_norms.py``), so Adam's
    ``m`` sits beside AdEMAMix's ``m1`` and the nested short tier, and
    AdEMAMix's slow EMA beside the nested long tier.  And for the nested optimizer
    ``layers/<layer>/<field>`` for every field of ``memory_stats()`` (see
    ``layer_stats.py``): tier norms, retrieval weights, gradient/tier cosines,
    gradient, update and parameter norms, update-to-weight ratio, depth,
    interval, applied updates, steps since the last update, accumulated
    gradient norm.  Read with one on-device reduction (``StatsReader``) on
    these steps only; the optimizer wrote them inside its step (the trainer
    runs its recording train function on the window's steps only:
    ``stats_window.StatsWindow``).
every ``timing_every`` steps
    ``timing/optimizer_ms`` (a separate ``tf.function`` of
    ``optimizer.apply`` on gradient-shaped noise, state restored afterwards),
    ``timing/step_median_ms`` (median wall time per step over the last
    ``timing_every`` steps) and ``timing/optimizer_share`` (their ratio).
every epoch
    ``val/*`` and ``train_epoch/*`` against ``trainer/epoch``.

The end-of-run rows are the tracker's (``tracking.py``).
"""

from __future__ import annotations

import array
import collections
import math
import time
import warnings

import keras
import numpy as np

from nested_research.optimizers.protocols import RecordsStats, base_optimizer
from nested_research.tracking.probes import LearningRateLog, OptimizerTimer
from nested_research.tracking.state_norms import StateReader
from nested_research.optimizers.nested.layer_stats import StatsReader
from nested_research.core.steps import StepCounter

#: Most rows of the end-of-run per-step learning-rate table.
LR_POINTS = 10000


def layer_log(stats: dict) -> dict:
    """Layer rows (``memory_stats()``) flattened to W&B keys ``layers/<layer>/<field>``."""
    out = {}
    for layer, row in stats.items():
        for key, value in row.items():
            if value is not None:
                out[f"layers/{layer}/{key}"] = value
    return out


class TrackingCallback(keras.callbacks.Callback):
    """Logs training to ``log`` (``run.log``); see the module docstring for the keys.

    On steps that are not logging steps it reads no variable: the step number
    is counted on the host, the learning rate comes from ``LearningRateLog``,
    and the wall time from ``time.perf_counter``.
    """

    def __init__(self, log, optimizer, stats_every: int = 100, timing_every: int = 200,
                 log_every: int = 10, start_step: int | None = None):
        super().__init__()
        self.log = log
        self.start_step = start_step  # batches already trained (a resumed run); None: iterations
        self.opt = optimizer
        base = base_optimizer(optimizer)
        self.stats_every = int(base.stats_every or stats_every) \
            if isinstance(base, RecordsStats) else int(stats_every)
        self.timing_every = int(timing_every)
        self.log_every = max(int(log_every), 1)
        self.lr = LearningRateLog(optimizer, block=max(256, self.stats_every))
        self.lr_used = array.array("f")  # the rate of every step, from the first one seen
        self.first_step = None
        self.reader: StatsReader | None = None
        self.state_reader: StateReader | None = None
        self.timer: OptimizerTimer | None = None
        self.step = 0
        self.last_stats: dict = {}
        self.last_stats_step = None
        self._t_last = None
        self._counter = StepCounter()
        self._pending_ms = []
        self._window = collections.deque(maxlen=max(self.timing_every, 1))

    # -- helpers
    def _guarded(self, what: str, fn):
        """``fn()``; on an error, warn once and stop doing ``what`` (training goes on)."""
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - tracking never stops training
            warnings.warn(f"W&B tracker: {what} failed and is switched off: {err!r}",
                          stacklevel=2)
            if what == "optimizer timing":
                self.timing_every = 0
            else:
                self.stats_every = 0
            return None

    def read_stats(self):
        """``{layer: {field: value}}``: the state norms, and for the nested optimizer its
        ``memory_stats()`` fields; ``None`` before the optimizer is built."""
        base = base_optimizer(self.opt)
        if not base.built:
            return None
        if self.state_reader is None:
            self.state_reader = StateReader(base)
        rows = self.state_reader.read()
        if isinstance(base, RecordsStats):
            if self.reader is None:
                self.reader = StatsReader(base)
            iterations, stats = self.reader.read()
            self.last_stats, self.last_stats_step = stats, iterations
            for layer, row in stats.items():
                rows.setdefault(layer, {}).update(row)
        return rows

    def lr_rows(self, limit: int = LR_POINTS) -> list[list]:
        """``[trainer/step, lr]`` for every step taken (evenly thinned to ``limit`` rows)."""
        n = len(self.lr_used)
        stride = max(1, math.ceil(n / limit))
        idx = list(range(0, n, stride))
        if n and idx[-1] != n - 1:
            idx.append(n - 1)
        first = self.first_step or 0
        return [[first + i + 1, float(self.lr_used[i])] for i in idx]

    def _timing(self) -> dict:
        if self.timer is None:
            model_opt = self.model.optimizer or self.opt  # (the compiled model's: wrapped or not)
            self.timer = OptimizerTimer(self.model, model_opt,
                                        jit_compile=bool(self.model.jit_compile))
        opt_ms = self.timer.measure()
        step_ms = float(np.median(self._window)) if self._window else float("nan")
        return {"timing/optimizer_ms": opt_ms, "timing/step_median_ms": step_ms,
                "timing/optimizer_share": opt_ms / step_ms if step_ms > 0 else float("nan")}

    # -- Keras hooks
    def on_train_begin(self, logs=None):
        self.step = int(keras.ops.convert_to_numpy(base_optimizer(self.opt).iterations)) \
            if self.start_step is None else int(self.start_step)
        if self.first_step is None:
            self.first_step = 0 if self.start_step is not None else self.step
            for i in range(self.first_step, self.step):  # a resumed run: the earlier steps' rates
                self.lr_used.append(self.lr(i))
        self._t_last = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.lr.refresh()
        self._counter.on_epoch_begin()
        self._t_last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        n = self._counter.advance(batch)  # several steps per call with steps_per_execution
        dt_ms = (now - self._t_last) * 1e3 / n
        self._pending_ms.append(dt_ms)
        self._window.append(dt_ms)
        # the optimizer's step index lags the batch count by the steps skipped as non-finite
        # (``guard.py`` reports their running total as ``skipped_steps``)
        skipped = int(float((logs or {}).get("skipped_steps", 0) or 0))
        for i in range(self.step, self.step + n):
            self.lr_used.append(self.lr(max(i - skipped, 0)))
        self.step += n
        step = self.step
        due = lambda every: every and step // every > (step - n) // every  # noqa: E731
        stats_due, timing_due = due(self.stats_every), due(self.timing_every)
        if not (stats_due or timing_due or due(self.log_every)):
            self._t_last = time.perf_counter()
            return
        row = {f"train/{k}": float(v) for k, v in (logs or {}).items()}
        row["train/lr"] = float(self.lr_used[-1])
        row["timing/step_ms"] = float(np.mean(self._pending_ms))
        self._pending_ms = []
        if stats_due:
            stats = self._guarded("per-layer statistics", self.read_stats)
            if stats:
                row.update(layer_log(stats))
        row["trainer/step"] = self.step
        if timing_due:
            row.update(self._guarded("optimizer timing", self._timing) or {})
        self.log(row)
        self._t_last = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        row = {("val/" + k[4:] if k.startswith("val_") else f"train_epoch/{k}"): float(v)
               for k, v in (logs or {}).items()}
        row["trainer/epoch"] = epoch + 1
        row["trainer/step"] = self.step
        self.log(row)
