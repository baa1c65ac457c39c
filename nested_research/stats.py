"""Per-layer statistics of a ``NestedLearningOptimizer``, read on the host.

A layer is a variable path without its last component
(``sequential/dense_1/kernel`` -> ``sequential/dense_1``).  Norms over a layer
are taken over all its variables together (``sqrt(sum of squares)``);
cosines are ``sum <g, M> / sqrt(sum |g|^2 * sum |M|^2)`` over the layer;
retrieval weights are averaged over the layer's variables weighted by size.

Fields (``None`` where the configuration has no such quantity):

    depth, interval, applied_updates, steps_since_update
    accum_norm                      norm of the pending accumulated gradient sum
    v_rms                           sqrt(mean second moment)
    norm_short/medium/long          tier norms (memory off: norm_short = first moment)
    weight_short/medium/long        retrieval weights
    cos_short/medium/long           cosine(gradient, tier)      (stats_every > 0)
    grad_norm, update_norm, param_norm, update_ratio, stats_step  (stats_every > 0)

The in-step fields (``stats_every > 0``) are those the optimizer recorded at
the layer's last update of the latest ``stats_every`` window (``stats_step``
is that step, 0-based); they are ``None`` until a first record exists.

Two readers compute the same per-variable sums (``RAW_FIELDS``), then one
aggregation turns them into layer rows:

* ``layer_stats(opt)`` (what ``memory_stats()`` returns): copies the variables
  to the host and sums in float64 NumPy.
* ``StatsReader(opt).read()`` (what the W&B tracker uses on logging steps):
  one ``tf.function`` reduces every variable on the device and returns a small
  ``[variables, fields]`` matrix, so reading the statistics of a large model
  moves a few kilobytes, not the optimizer state.

Nothing here runs in the training step.  ``StatsWindow`` (a Keras callback)
chooses, on the host, which of two traced train functions a step runs: the one
that records the in-step fields or the one that does not (see
``NestedLearningOptimizer.stats_recording``).
"""

from __future__ import annotations

import math
import warnings
from collections import OrderedDict

import keras
import numpy as np

from nested_research.memory import TIERS

FIELDS = (
    "depth", "interval", "applied_updates", "steps_since_update", "accum_norm", "v_rms",
    "norm_short", "norm_medium", "norm_long",
    "weight_short", "weight_medium", "weight_long",
    "cos_short", "cos_medium", "cos_long",
    "grad_norm", "update_norm", "param_norm", "update_ratio", "stats_step",
)

#: Per-variable sums both readers produce, before the optimizer's ``STAT_FIELDS``
#: (appended when ``stats_every > 0``).  ``tier_sq_*`` are the squared norms of
#: the memory tiers (memory off: tier 0 is the first moment, the others 0);
#: ``blend_*`` the adaptive retrieval weights (softmax of the logits; else 0).
RAW_FIELDS = ("updates", "accum_sq", "v_sum", "tier_sq_0", "tier_sq_1", "tier_sq_2",
              "blend_0", "blend_1", "blend_2")

#: In-step fields, ``None`` until the optimizer has recorded statistics once.
IN_STEP_FIELDS = ("cos_short", "cos_medium", "cos_long", "grad_norm", "update_norm",
                  "param_norm", "update_ratio", "stats_step")


def in_stats_window(step, every: int, longest: int):
    """Whether the 0-based ``step`` is one of the last ``longest`` steps of its ``every``-step
    window (``step mod every >= every - longest``): a variable whose interval is at most
    ``longest`` applies its last update of the window among them.  ``step``: an int (a bool
    comes back) or a tensor (a boolean tensor)."""
    if isinstance(step, (int, np.integer)):
        return step % every >= every - longest
    from keras import ops

    return ops.greater_equal(ops.mod(step, every), every - longest)


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
        self.opt = getattr(optimizer, "inner_optimizer", optimizer)  # under a LossScaleOptimizer
        self.start_step = start_step
        self.active = bool(getattr(self.opt, "stats_every", 0)) and \
            hasattr(self.opt, "stats_recording")
        self.step = 0
        self.recording_steps = 0
        self._fns: dict[bool, object] = {}
        self._last_batch = -1

    def on_train_begin(self, logs=None):
        if not self.active:
            return
        model = self.model
        model.make_train_function()  # (what fit already made; Keras' returns nothing)
        if model.train_function is not self._fns.get(False):  # else: ours, kept (a benchmark)
            self._fns = {False: traced_with_stats(self.opt, model.train_function, False)}
            model.train_function = self._fns[False]
        self._per_call = int(getattr(model, "steps_per_execution", 1) or 1)
        self.longest = self._longest_interval()
        self.step = int(keras.ops.convert_to_numpy(self.opt.iterations)) \
            if self.start_step is None else int(self.start_step)
        self.recording_steps = 0

    def _longest_interval(self) -> int:
        """The optimizer's ``longest_interval``, also before it is built (the first step)."""
        if self.opt.built:
            return self.opt.longest_interval
        with warnings.catch_warnings():  # (a warning about missing depths comes at build)
            warnings.simplefilter("ignore")
            return max(self.opt._resolve_intervals(self.model.trainable_variables), default=1)

    def on_epoch_begin(self, epoch, logs=None):
        self._last_batch = -1

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
        # Keras passes the epoch's last step index (several per call with steps_per_execution)
        self.step += max(int(batch) - self._last_batch, 1)
        self._last_batch = int(batch)

    def on_train_end(self, logs=None):
        if self.active:
            self.model.train_function = None


def layer_of(path: str) -> str:
    return path.rsplit("/", 1)[0] if "/" in path else path


def last_update_step(iterations: int, interval: int, warmup_steps: int) -> int | None:
    """The last global step (0-based) < ``iterations`` on which the interval rule applies."""
    if iterations <= 0:
        return None
    last = iterations - 1
    if last < warmup_steps:
        return last
    windows = (last - warmup_steps + 1) // interval
    if windows >= 1:
        return warmup_steps - 1 + windows * interval
    return warmup_steps - 1 if warmup_steps > 0 else None


def is_update_step(step: int, interval: int, warmup_steps: int) -> bool:
    """Host-side twin of ``intervals.is_update_step`` (``step`` 0-based)."""
    return step < warmup_steps or (step - warmup_steps + 1) % interval == 0


class Layout:
    """How an optimizer's variables group into layers, with each layer's depth and interval."""

    def __init__(self, opt):
        if not opt.built:
            raise RuntimeError("memory_stats: the optimizer is not built yet (no step taken)")
        self.groups: "OrderedDict[str, list[int]]" = OrderedDict()
        for i, var in enumerate(opt._trainable_variables):
            self.groups.setdefault(layer_of(var.path), []).append(i)
        self.sizes, self.depth, self.interval = {}, {}, {}
        for layer, idxs in self.groups.items():
            vars_ = [opt._trainable_variables[i] for i in idxs]
            self.sizes[layer] = np.array([max(int(np.prod(v.shape)), 1) for v in vars_],
                                         dtype=np.float64)
            depths = [d for d in (opt._depth_of(v.path) for v in vars_) if d is not None]
            self.depth[layer] = min(depths) if depths else None
            self.interval[layer] = max(opt._intervals[i] for i in idxs)
        self.warmup_steps = int(opt.warmup_steps)

    @property
    def layers(self) -> list[str]:
        return list(self.groups)


def _columns(opt) -> dict:
    from nested_research.optimizer import STAT_FIELDS

    names = list(RAW_FIELDS) + ([f"stat_{f}" for f in STAT_FIELDS] if opt.stats_every else [])
    return {name: j for j, name in enumerate(names)}


def _sq(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.sum(x * x))


def _softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


def variable_sums(opt) -> tuple[np.ndarray, int]:
    """``RAW_FIELDS`` (+ the in-step record) per variable, in float64 NumPy; and ``iterations``."""
    col = _columns(opt)
    raw = np.zeros((len(opt._trainable_variables), len(col)), np.float64)
    for i in range(len(opt._trainable_variables)):
        raw[i, col["updates"]] = float(np.asarray(opt._update_counts[i]))
        if opt._accumulators[i] is not None:
            raw[i, col["accum_sq"]] = _sq(opt._accumulators[i])
        raw[i, col["v_sum"]] = float(np.sum(np.asarray(opt._velocities[i], np.float64)))
        for t, tier_vars in enumerate(opt._memories):
            raw[i, col[f"tier_sq_{t}"]] = _sq(tier_vars[i])
        if opt.memory_blend_mode == "adaptive":
            raw[i, col["blend_0"]:col["blend_2"] + 1] = _softmax(
                np.asarray(opt._blend_logits[i], np.float64))
        if opt.stats_every:
            start = len(RAW_FIELDS)
            raw[i, start:] = np.asarray(opt._stats[i], np.float64)
    return raw, int(np.asarray(opt.iterations))


class StatsReader:
    """Reads ``memory_stats()`` with one on-device reduction per call (see the module doc).

    ``read()`` returns ``(iterations, {layer: {field: value}})``; build the
    reader once (after the optimizer is built) and call it on logging steps.
    ``calls`` counts the reads.
    """

    def __init__(self, opt):
        import tensorflow as tf

        self.opt = opt
        self.layout = Layout(opt)
        self.calls = 0
        self._fn = tf.function(self._sums, autograph=False)

    def _sums(self):
        import tensorflow as tf

        opt = self.opt
        f32 = lambda x: tf.cast(x, tf.float32)  # noqa: E731
        zero = tf.zeros((), tf.float32)
        rows = []
        for i in range(len(opt._trainable_variables)):
            cols = [f32(opt._update_counts[i].value)]
            acc = opt._accumulators[i]
            cols.append(tf.reduce_sum(tf.square(f32(acc.value))) if acc is not None else zero)
            cols.append(tf.reduce_sum(f32(opt._velocities[i].value)))
            tiers = [tf.reduce_sum(tf.square(f32(t[i].value))) for t in opt._memories]
            cols += tiers + [zero] * (3 - len(tiers))
            if opt.memory_blend_mode == "adaptive":
                probs = tf.nn.softmax(f32(opt._blend_logits[i].value))
                cols += [probs[0], probs[1], probs[2]]
            else:
                cols += [zero] * 3
            row = tf.stack(cols)
            if opt.stats_every:
                row = tf.concat([row, f32(opt._stats[i].value)], axis=0)
            rows.append(row)
        return tf.stack(rows), tf.identity(opt.iterations.value)

    def read(self) -> tuple[int, "OrderedDict[str, dict]"]:
        raw, iterations = self._fn()
        self.calls += 1
        iterations = int(iterations.numpy())
        return iterations, aggregate(self.opt, self.layout, raw.numpy().astype(np.float64),
                                     iterations)

    @property
    def traces(self) -> int:
        """How many times the reduction was traced (1 after the first read)."""
        return self._fn.experimental_get_tracing_count()


def aggregate(opt, layout: Layout, raw: np.ndarray, iterations: int) -> "OrderedDict[str, dict]":
    """Layer rows (``FIELDS``) from per-variable sums (``variable_sums``/``StatsReader``)."""
    col = _columns(opt)
    out = OrderedDict()
    for layer, idxs in layout.groups.items():
        s = raw[idxs]
        sizes = layout.sizes[layer]
        row = dict.fromkeys(FIELDS)
        row["depth"] = layout.depth[layer]
        row["interval"] = layout.interval[layer]
        row["applied_updates"] = int(round(s[:, col["updates"]].min()))
        last = last_update_step(iterations, row["interval"], layout.warmup_steps)
        row["steps_since_update"] = None if last is None else iterations - 1 - last
        row["accum_norm"] = math.sqrt(max(s[:, col["accum_sq"]].sum(), 0.0))
        row["v_rms"] = math.sqrt(max(s[:, col["v_sum"]].sum(), 0.0) / float(sizes.sum()))
        for t, tier in enumerate(TIERS[:len(opt._memories)]):
            row[f"norm_{tier}"] = math.sqrt(max(s[:, col[f"tier_sq_{t}"]].sum(), 0.0))
        if opt.memory_blend_mode == "fixed":
            for tier, w in zip(TIERS, opt.fixed_weights):
                row[f"weight_{tier}"] = w
        elif opt.memory_blend_mode == "adaptive":
            for t, tier in enumerate(TIERS):
                row[f"weight_{tier}"] = float((s[:, col[f"blend_{t}"]] * sizes).sum()
                                              / sizes.sum())
        if opt.stats_every:
            _in_step(opt, row, s, sizes, col)
        out[layer] = row
    return out


def _in_step(opt, row, s, sizes, col):
    st = lambda name: s[:, col[f"stat_{name}"]]  # noqa: E731
    grad_sq = st("grad_sq").sum()
    if grad_sq <= 0 and st("param_sq").sum() <= 0 and st("update_sq").sum() <= 0:
        return  # nothing recorded yet
    row["grad_norm"] = math.sqrt(grad_sq)
    if opt.memory_on:
        for tier in TIERS:
            denom = math.sqrt(grad_sq * st(f"mem_sq_{tier}").sum())
            row[f"cos_{tier}"] = float(st(f"dot_{tier}").sum() / denom) if denom > 0 else 0.0
            row[f"weight_{tier}"] = float((st(f"weight_{tier}") * sizes).sum() / sizes.sum())
    row["update_norm"] = math.sqrt(max(st("update_sq").sum(), 0.0))
    row["param_norm"] = math.sqrt(max(st("param_sq").sum(), 0.0))
    row["update_ratio"] = row["update_norm"] / row["param_norm"] \
        if row["param_norm"] > 0 else 0.0
    row["stats_step"] = int(round(st("step").max()))


def layer_stats(opt) -> "OrderedDict[str, dict]":
    """``{layer: {field: value}}`` for every layer the optimizer updates (host copy, float64)."""
    layout = Layout(opt)
    raw, iterations = variable_sums(opt)
    return aggregate(opt, layout, raw, iterations)


def format_table(stats: dict) -> str:
    """A fixed-width table of the non-empty fields, one row per layer."""
    if not stats:
        return "(no layers)"
    fields = [f for f in FIELDS if any(row.get(f) is not None for row in stats.values())]
    header = ["layer"] + fields
    rows = [[layer] + [_fmt(row.get(f)) for f in fields] for layer, row in stats.items()]
    widths = [max(len(str(r[j])) for r in [header] + rows) for j in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
