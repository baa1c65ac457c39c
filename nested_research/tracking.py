"""Experiment trackers: Weights & Biases (offline by default) and none.

A tracker is made at the entry point from the ``logger`` config group and
takes plain arguments.  The trainer uses three calls::

    tracker.start(config, run_dir)        before training
    tracker.callbacks(optimizer)          Keras callbacks that log during fit
    tracker.finish(summary, failed)       always, also when the run failed

What ``WandbTracker`` logs (step axis ``trainer/step`` = optimizer steps taken,
``trainer/epoch`` for the per-epoch keys):

every ``log_every`` steps (default 10; 1 logs every step)
    ``train/loss``, ``train/accuracy`` (Keras' running epoch means),
    ``train/lr`` (the rate that step's update used: the schedule at the step's
    0-based index), ``timing/step_ms`` (mean wall time per step since the
    previous logged row, measured between batch ends).
every ``stats_every`` steps (the optimizer's in-step statistics period)
    ``layers/<layer>/<field>`` for every field of ``memory_stats()`` (see
    ``stats.py``): tier norms, retrieval weights, gradient/tier cosines,
    gradient, update and parameter norms, update-to-weight ratio, depth,
    interval, applied updates, steps since the last update, accumulated
    gradient norm.  Read with one on-device reduction (``StatsReader``) on
    these steps only; the optimizer wrote them inside its step (the trainer
    runs its recording train function on the window's steps only:
    ``stats.StatsWindow``).
every ``timing_every`` steps
    ``timing/optimizer_ms`` (a separate ``tf.function`` of
    ``optimizer.apply`` on gradient-shaped noise, state restored afterwards),
    ``timing/step_median_ms`` (median wall time per step over the last
    ``timing_every`` steps) and ``timing/optimizer_share`` (their ratio).
every epoch
    ``val/*`` and ``train_epoch/*`` against ``trainer/epoch``.
at the end
    ``schedule/table`` (per layer: depth, interval, applied and expected
    updates, ...), ``schedule/heatmap`` (layers x steps, updated or not),
    ``schedule/lr`` (the learning rate used at every step, also the steps
    between logged rows; at most ``LR_POINTS`` rows, evenly thinned),
    ``layers/final`` (the ``memory_stats()`` table), the summary metrics,
    ``results.json``, and the model as an artifact with ``log_model``.

``stats_every`` is the optimizer's in-step statistics period (0: off).
"""

from __future__ import annotations

import array
import collections
import contextlib
import math
import os
import shutil
import sys
import time
import warnings

import keras
import numpy as np

from nested_research.stats import FIELDS, Layout, StatsReader, format_table, is_update_step

MODES = ("offline", "online", "disabled")
#: Steps of the heatmap kept at each end of a long run.
HEATMAP_CAP = 200
#: Most rows of the end-of-run per-step learning-rate table.
LR_POINTS = 10000


def _base(optimizer):
    """The optimizer under a ``LossScaleOptimizer`` wrapper, if any."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def _has_layer_stats(opt) -> bool:
    """A ``NestedLearningOptimizer`` (or anything with its per-layer statistics)."""
    return hasattr(opt, "memory_stats") and hasattr(opt, "stats_every")


def layer_log(stats: dict) -> dict:
    """Layer rows (``memory_stats()``) flattened to W&B keys ``layers/<layer>/<field>``."""
    out = {}
    for layer, row in stats.items():
        for key, value in row.items():
            if value is not None:
                out[f"layers/{layer}/{key}"] = value
    return out


def default_run_name(config: dict) -> str:
    """``<experiment>-<optimizer>[-<memory>]-s<seed>`` from the resolved config."""
    config = config or {}
    exp = config.get("experiment_name")
    if not exp:
        model = str((config.get("model") or {}).get("_target_", "")).rsplit(".", 1)[-1]
        data = (config.get("data") or {}).get("name")
        exp = "_".join(p for p in (data, model.replace("build_", "")) if p) or "run"
    opt = config.get("optimizer") or {}
    memory = (config.get("memory") or {}).get("memory_blend_mode") \
        if opt.get("uses_memory_groups") else None
    seed = (config.get("trainer") or {}).get("seed")
    parts = [exp, opt.get("name"), memory, None if seed is None else f"s{seed}"]
    return "-".join(str(p) for p in parts if p not in (None, ""))


def _hydra_job() -> dict | None:
    """The Hydra multirun job (number, overrides), or ``None`` outside a multirun."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        if hc.mode != RunMode.MULTIRUN:
            return None
        return {"num": int(hc.job.num), "override_dirname": hc.job.override_dirname,
                "sweep_dir": hc.sweep.dir}
    except Exception:  # noqa: BLE001 - best effort, never fails a run
        return None


# ---------------------------------------------------------------- learning rate
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
        self.opt = _base(optimizer)
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
        lr = getattr(self.opt, "_learning_rate", None)
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

        base = _base(optimizer)
        quiet = getattr(base, "stats_recording", None)

        def apply(grads):
            # the optimizer as on most steps: without the in-step statistics (stats.StatsWindow)
            with quiet(False) if quiet else contextlib.nullcontext():
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


# ---------------------------------------------------------------- schedule heatmap
def schedule_steps(total_steps: int, cap: int = HEATMAP_CAP) -> list[int]:
    """The 0-based steps the heatmap shows: all, or the first and last ``cap``."""
    if total_steps <= 2 * cap:
        return list(range(total_steps))
    return list(range(cap)) + list(range(total_steps - cap, total_steps))


def schedule_matrix(layout: Layout, steps: list[int]) -> np.ndarray:
    """``[layers, len(steps)]``: 1 where the layer applies an update at that step."""
    return np.array([[1 if is_update_step(s, layout.interval[layer], layout.warmup_steps) else 0
                      for s in steps] for layer in layout.layers], dtype=np.uint8)


def render_heatmap(path: str, layout: Layout, total_steps: int,
                   cap: int = HEATMAP_CAP) -> str | None:
    """Write the layers x steps update heatmap as a PNG (matplotlib, Agg); return ``path``."""
    steps = schedule_steps(total_steps, cap)
    if not steps or not layout.layers:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    matrix = schedule_matrix(layout, steps)
    n_layers = len(layout.layers)
    fig = Figure(figsize=(min(4 + 0.06 * len(steps), 24), 1.2 + 0.35 * n_layers), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(matrix, aspect="auto", interpolation="nearest", cmap="Greys", vmin=0, vmax=1)
    labels = [f"{layer}  (d={layout.depth[layer]}, k={layout.interval[layer]})"
              for layer in layout.layers]
    ax.set_yticks(range(n_layers), labels, fontsize=8)
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(nbins=12, integer=True))
    ax.xaxis.set_major_formatter(FuncFormatter(
        lambda x, _: str(steps[int(x)] + 1) if 0 <= int(x) < len(steps) else ""))
    ax.tick_params(axis="x", labelsize=8)
    if len(steps) < total_steps:
        ax.axvline(cap - 0.5, color="red", linewidth=1.5)
        ax.set_title(f"updates per layer (black = updated); steps 1-{cap} and "
                     f"{total_steps - cap + 1}-{total_steps} of {total_steps}", fontsize=9)
    else:
        ax.set_title(f"updates per layer (black = updated), steps 1-{total_steps}", fontsize=9)
    ax.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(path)
    return path


SCHEDULE_COLUMNS = ["layer", "depth", "interval", "applied_updates", "expected_updates",
                    "steps_since_update", "variables", "parameters"]


def schedule_rows(layout: Layout, stats: dict, total_steps: int) -> list[list]:
    """Rows of the per-layer schedule table (``SCHEDULE_COLUMNS``)."""
    from nested_research.intervals import applied_updates

    rows = []
    for layer in layout.layers:
        row = stats.get(layer, {})
        rows.append([layer, layout.depth[layer], layout.interval[layer],
                     row.get("applied_updates"),
                     applied_updates(total_steps, layout.interval[layer], layout.warmup_steps),
                     row.get("steps_since_update"), len(layout.groups[layer]),
                     int(layout.sizes[layer].sum())])
    return rows


# ---------------------------------------------------------------- logging thread
class AsyncLog:
    """Hands rows to ``log`` (``run.log``) on a background thread, in order.

    ``run.log`` is a round trip to W&B's service thread (a few hundred
    microseconds, more while training keeps the cores busy); the training
    thread only queues the row.  ``flush()`` waits until every queued row is
    logged; errors are kept and re-raised by ``flush``.
    """

    def __init__(self, log, maxsize: int = 10000):
        import queue
        import threading

        self._log = log
        self._queue = queue.Queue(maxsize=maxsize)
        self._error = None
        self._thread = threading.Thread(target=self._work, name="wandb-log", daemon=True)
        self._thread.start()

    def _work(self):
        import threading

        while True:
            item = self._queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                self._log(item)
            except Exception as err:  # noqa: BLE001 - reported by flush()
                self._error = err

    def __call__(self, row: dict) -> None:
        self._queue.put(row)

    def flush(self, timeout: float | None = None) -> None:
        import threading

        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self, timeout: float | None = 60) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)


# ---------------------------------------------------------------- trackers
class NullTracker:
    """Logs nothing; prints the per-layer table at the end."""

    def __init__(self, stats_every: int = 0):
        self.stats_every = int(stats_every)
        self.run_dir = None

    def start(self, config: dict, run_dir: str) -> None:
        self.run_dir = run_dir

    def callbacks(self, optimizer) -> list:
        return []

    def flush(self) -> None:
        """Nothing queued (a checkpoint calls this before it is written)."""

    def resume_info(self) -> dict | None:
        return None

    def finish(self, summary: dict | None, failed: bool = False, optimizer=None) -> None:
        opt = _base(optimizer) if optimizer is not None else None
        if opt is not None and hasattr(opt, "memory_stats") and opt.built:
            print("\nPer-layer optimizer state:")
            print(format_table(opt.memory_stats()))


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
        base = _base(optimizer)
        self.stats_every = int(getattr(base, "stats_every", 0) or stats_every) \
            if _has_layer_stats(base) else 0
        self.timing_every = int(timing_every)
        self.log_every = max(int(log_every), 1)
        self.lr = LearningRateLog(optimizer, block=max(256, self.stats_every))
        self.lr_used = array.array("f")  # the rate of every step, from the first one seen
        self.first_step = None
        self.reader: StatsReader | None = None
        self.timer: OptimizerTimer | None = None
        self.step = 0
        self.last_stats: dict = {}
        self.last_stats_step = None
        self._t_last = None
        self._last_batch = -1
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
        base = _base(self.opt)
        if not _has_layer_stats(base) or not base.built:
            return None
        if self.reader is None:
            self.reader = StatsReader(base)
        iterations, stats = self.reader.read()
        self.last_stats, self.last_stats_step = stats, iterations
        return stats

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
            model_opt = getattr(self.model, "optimizer", None) or self.opt
            self.timer = OptimizerTimer(self.model, model_opt,
                                        jit_compile=bool(getattr(self.model, "jit_compile",
                                                                 False)))
        opt_ms = self.timer.measure()
        step_ms = float(np.median(self._window)) if self._window else float("nan")
        return {"timing/optimizer_ms": opt_ms, "timing/step_median_ms": step_ms,
                "timing/optimizer_share": opt_ms / step_ms if step_ms > 0 else float("nan")}

    # -- Keras hooks
    def on_train_begin(self, logs=None):
        self.step = int(keras.ops.convert_to_numpy(_base(self.opt).iterations)) \
            if self.start_step is None else int(self.start_step)
        if self.first_step is None:
            self.first_step = 0 if self.start_step is not None else self.step
            for i in range(self.first_step, self.step):  # a resumed run: the earlier steps' rates
                self.lr_used.append(self.lr(i))
        self._t_last = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self.lr.refresh()
        self._last_batch = -1
        self._t_last = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        # Keras passes the epoch's last step index (several per call with steps_per_execution).
        n = max(int(batch) - self._last_batch, 1)
        self._last_batch = int(batch)
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


class WandbTracker:
    """A W&B run per training run; offline unless told otherwise, never waits on the network.

    ``WANDB_MODE`` and ``WANDB_DIR`` from the environment win over ``mode``
    and ``dir``.  Online mode that cannot start within ``init_timeout``
    seconds (no network, no credentials) falls back to offline with a warning;
    its end-of-run upload gives up after ``finish_timeout`` seconds (the data
    stays on disk for ``wandb sync``).
    """

    def __init__(self, mode: str = "offline", project: str = "nested-research",
                 entity: str | None = None, group: str | None = None, tags=(),
                 name: str | None = None, dir: str | None = None, stats_every: int = 100,
                 timing_every: int = 200, log_every: int = 10, log_model: bool = False,
                 sweep_id: str | None = None, init_timeout: float = 30.0,
                 finish_timeout: float = 120.0, heatmap_cap: int = HEATMAP_CAP,
                 async_log: bool = True):
        if mode not in MODES:
            raise ValueError(f"logger.mode={mode!r} is not one of {MODES}")
        for key, value in (("stats_every", stats_every), ("timing_every", timing_every),
                           ("log_every", log_every), ("heatmap_cap", heatmap_cap)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"logger.{key}={value!r} must be an integer >= 0")
        self.mode = os.environ.get("WANDB_MODE") or mode
        self.project, self.entity = project, entity
        self.group, self.name, self.dir = group, name, dir
        self.tags = [str(t) for t in (tags or [])]
        self.sweep_id = sweep_id or os.environ.get("WANDB_SWEEP_ID") or None
        self.stats_every, self.timing_every = int(stats_every), int(timing_every)
        self.log_every = max(int(log_every), 1)
        self.log_model = bool(log_model)
        self.init_timeout, self.finish_timeout = float(init_timeout), float(finish_timeout)
        self.heatmap_cap = int(heatmap_cap)
        self.async_log = bool(async_log)
        self.flush_timeout = 30.0  # seconds finish() waits for the log to be on disk
        # A resumed run (trainer.resume, set by train.run before start): the W&B run id to
        # continue, and the batches already trained; rows already in that run are not re-logged.
        self.resume_id: str | None = None
        self.start_step: int | None = None
        self._logged: tuple[int, int] | None = None
        self.replay_rows: list | None = None  # the checkpoint's rows (logged if the run lacks them)
        self.journal = None
        self._logger: AsyncLog | None = None
        self.run = None
        self.run_dir = None
        self.callback: TrackingCallback | None = None
        self.wandb_run_dir = None

    # -- start
    def _init(self, wandb, mode: str, config: dict, wandb_dir: str, name, group, tags):
        settings = wandb.Settings(silent=True, x_disable_stats=True,
                                  init_timeout=self.init_timeout,
                                  login_timeout=self.init_timeout,
                                  finish_timeout=self.finish_timeout if mode == "online" else 0)
        deadline = time.monotonic() + self.init_timeout
        while True:
            try:
                return wandb.init(project=self.project, entity=self.entity, group=group,
                                  tags=tags, name=name, dir=wandb_dir, mode=mode, config=config,
                                  reinit="create_new", settings=settings, id=self.resume_id,
                                  resume="allow" if self.resume_id else None)
            except Exception as err:  # noqa: BLE001
                # A resumed run's id stays "in use" until the W&B service of the interrupted
                # process notices that its parent is gone: wait for it, up to init_timeout.
                if not self.resume_id or "in use" not in str(err) or \
                        time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def start(self, config: dict, run_dir: str) -> None:
        import wandb

        self.run_dir = run_dir
        config = dict(config or {})
        job = _hydra_job()
        name = self.name or default_run_name(config) + (f"-j{job['num']}" if job else "")
        if job:
            config["hydra_job"] = job
        tags = list(self.tags)
        if config.get("experiment_name"):
            tags.append(f"experiment:{config['experiment_name']}")
        if self.sweep_id:
            tags.append(f"sweep:{self.sweep_id}")
            config["sweep_id"] = self.sweep_id
        tags = list(dict.fromkeys(t[:64] for t in tags))
        # A sweep groups its trials (the local runner also sets WANDB_RUN_GROUP).
        group = os.environ.get("WANDB_RUN_GROUP") or self.sweep_id or self.group
        wandb_dir = os.environ.get("WANDB_DIR") or self.dir or run_dir
        os.makedirs(wandb_dir, exist_ok=True)
        self.wandb_dir = wandb_dir
        if self.resume_id:
            from nested_research.checkpoint import logged_extent

            self._logged = logged_extent(wandb_dir, self.resume_id)
        try:
            self.run = self._init(wandb, self.mode, config, wandb_dir, name, group, tags)
        except Exception as err:  # noqa: BLE001 - online without network or credentials
            if self.mode != "online":
                raise
            warnings.warn(f"W&B online start failed ({err}); logging offline instead. "
                          "Upload later with `wandb sync`.", stacklevel=2)
            self.mode = "offline"
            self.run = self._init(wandb, "offline", config, wandb_dir, name, group, tags)
        self.run.define_metric("trainer/step")
        self.run.define_metric("trainer/epoch")
        for pattern in ("train/*", "layers/*", "timing/*", "schedule/*"):
            self.run.define_metric(pattern, step_metric="trainer/step")
        for pattern in ("val/*", "train_epoch/*"):
            self.run.define_metric(pattern, step_metric="trainer/epoch")
        run_files = getattr(self.run, "dir", None)
        self.wandb_run_dir = os.path.dirname(run_files) if run_files else None

    def callbacks(self, optimizer) -> list:
        log = self.run.log
        if self.async_log:
            self._logger = log = AsyncLog(self.run.log)
        from nested_research.checkpoint import RowJournal

        log = self.journal = RowJournal(log, *(self._logged or (-1, -1)))
        for row in self.replay_rows or []:  # rows a killed process logged but W&B never wrote
            log(row)
        self.callback = TrackingCallback(log, optimizer, self.stats_every,
                                         self.timing_every, self.log_every,
                                         start_step=self.start_step)
        return [self.callback]

    def flush(self) -> None:
        """Hand every queued row to W&B (a checkpoint calls this before it is written)."""
        if self._logger is not None:
            self._logger.flush(self.flush_timeout)

    def recent_rows(self) -> list:
        """The newest rows logged (stored in checkpoints, see ``checkpoint.RowJournal``)."""
        return list(self.journal.rows) if self.journal is not None else []

    def resume_info(self) -> dict | None:
        """What a resumed run needs to continue this W&B run (stored in checkpoints)."""
        if self.run is None:
            return None
        return {"id": self.run.id, "dir": getattr(self, "wandb_dir", None)}

    # -- finish
    def _end_of_run(self, optimizer) -> None:
        """The per-step learning rates; final layer statistics, schedule table and heatmap."""
        import wandb

        cb = self.callback
        if cb is not None and cb.lr_used:
            self.run.log({"schedule/lr": wandb.Table(columns=["trainer/step", "lr"],
                                                     data=cb.lr_rows()),
                          "trainer/step": cb.step})
        base = _base(optimizer) if optimizer is not None else (cb.opt if cb else None)
        if base is None or not _has_layer_stats(base) or not base.built:
            return
        if cb is not None:
            stats = cb.read_stats() or {}
            layout = cb.reader.layout
            step = int(keras.ops.convert_to_numpy(base.iterations))
        else:
            stats, layout = base.memory_stats(), Layout(base)
            step = int(keras.ops.convert_to_numpy(base.iterations))
        row = {"trainer/step": step}
        if stats:
            fields = [f for f in FIELDS if any(r.get(f) is not None for r in stats.values())]
            row["layers/final"] = wandb.Table(
                columns=["layer"] + fields,
                data=[[layer] + [r.get(f) for f in fields] for layer, r in stats.items()])
        row["schedule/table"] = wandb.Table(columns=SCHEDULE_COLUMNS,
                                            data=schedule_rows(layout, stats, step))
        out_dir = self.run_dir or self.wandb_run_dir or "."
        png = render_heatmap(os.path.join(out_dir, "schedule_heatmap.png"), layout, step,
                             self.heatmap_cap)
        if png:
            row["schedule/heatmap"] = wandb.Image(png, caption="black: layer updated at step")
        self.run.log(row)
        print("\nPer-layer optimizer state:")
        print(format_table(stats))

    def _save_outputs(self) -> None:
        import wandb

        if self.mode == "disabled":
            return

        results = os.path.join(self.run_dir or "", "results.json")
        if self.run_dir and os.path.exists(results) and getattr(self.run, "dir", None):
            copy = os.path.join(self.run.dir, "results.json")  # a copy, not a symlink
            shutil.copyfile(results, copy)
            self.run.save(copy, base_path=self.run.dir, policy="now")
        if self.log_model and self.callback is not None and self.callback.model is not None:
            path = os.path.join(self.run_dir or self.wandb_run_dir, "model.keras")
            if not os.path.exists(path):  # train.run saves it; a bare fit may not have
                self.callback.model.save(path)
            artifact = wandb.Artifact(f"model-{self.run.id}", type="model",
                                      metadata={"name": self.run.name})
            artifact.add_file(path)
            self.run.log_artifact(artifact)

    def finish(self, summary: dict | None, failed: bool = False, optimizer=None) -> None:
        if self.run is None:
            return
        steps = [("queued rows", self._drain),
                 ("end-of-run statistics", lambda: self._end_of_run(optimizer)),
                 ("summary", lambda: self._summary(summary, failed)),
                 ("results/model", self._save_outputs)]
        try:
            for what, step in steps:
                try:
                    step()
                except Exception as err:  # noqa: BLE001 - finishing the run comes first
                    warnings.warn(f"W&B tracker: could not log the {what}: {err!r}",
                                  stacklevel=2)
        finally:
            self.run.finish(exit_code=1 if failed else 0)
            if self.mode != "disabled" and self.wandb_run_dir:
                # run.finish() can return before the service has written the log out.
                from nested_research.wandb_reader import wait_for_exit

                if not wait_for_exit(self.wandb_run_dir, timeout=self.flush_timeout):
                    warnings.warn(f"W&B run {self.wandb_run_dir}: the transaction log was "
                                  f"not complete after {self.flush_timeout:g} s", stacklevel=2)
                print(f"W&B {self.mode} run: {self.wandb_run_dir}\n"
                      f"  upload with: wandb sync {self.wandb_run_dir}")
            self.run = None

    def _drain(self) -> None:
        if self._logger is not None:
            logger, self._logger = self._logger, None
            try:
                logger.flush()
            finally:
                logger.close()

    def _summary(self, summary: dict | None, failed: bool) -> None:
        for key, value in (summary or {}).items():
            if isinstance(value, (int, float, np.floating, np.integer)):
                self.run.summary[key] = value
        if self.callback is not None:
            self.run.summary["trainer/steps"] = self.callback.step
        if failed:
            err = sys.exc_info()[1]
            self.run.summary["failed"] = True
            if err is not None:
                self.run.summary["error"] = f"{type(err).__name__}: {err}"[:1000]
