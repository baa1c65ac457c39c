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
    retrieval_entropy               entropy of the retrieval weights in nats, per variable,
                                    averaged over the layer by size (uniform: ln 3 = 1.0986;
                                    attention: ``stats_every > 0``)
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

Both read the optimizer through its public interface only: ``model_variables``,
``slots(i)`` (the state of variable ``i`` by name), ``intervals``,
``depth_of`` and the parameters.  Nothing here runs in the training step: the
optimizer's in-step recording is ``recorder.py``, the trainer's choice of
which steps record is ``stats_window.py``.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from nested_research.optimizers.nested.memory import TIERS
from nested_research.optimizers.nested.recorder import STAT_FIELDS

FIELDS = (
    "depth", "interval", "applied_updates", "steps_since_update", "accum_norm", "v_rms",
    "norm_short", "norm_medium", "norm_long",
    "weight_short", "weight_medium", "weight_long", "retrieval_entropy",
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


class Layout:
    """How an optimizer's variables group into layers, with each layer's depth and interval."""

    def __init__(self, opt):
        if not opt.built:
            raise RuntimeError("memory_stats: the optimizer is not built yet (no step taken)")
        self.groups: "OrderedDict[str, list[int]]" = OrderedDict()
        variables = opt.model_variables
        for i, var in enumerate(variables):
            self.groups.setdefault(layer_of(var.path), []).append(i)
        intervals = opt.intervals
        self.sizes, self.depth, self.interval = {}, {}, {}
        for layer, idxs in self.groups.items():
            vars_ = [variables[i] for i in idxs]
            self.sizes[layer] = np.array([max(int(np.prod(v.shape)), 1) for v in vars_],
                                         dtype=np.float64)
            depths = [d for d in (opt.depth_of(v.path) for v in vars_) if d is not None]
            self.depth[layer] = min(depths) if depths else None
            self.interval[layer] = max(intervals[v.path] for v in vars_)
        self.warmup_steps = int(opt.warmup_steps)

    @property
    def layers(self) -> list[str]:
        return list(self.groups)


def _columns(opt) -> dict:
    names = list(RAW_FIELDS) + ([f"stat_{f}" for f in STAT_FIELDS] if opt.stats_every else [])
    return {name: j for j, name in enumerate(names)}


def entropy(weights) -> np.ndarray:
    """Entropy in nats of the normalised weights along the last axis (``0 log 0 = 0``)."""
    w = np.clip(np.asarray(weights, np.float64), 0.0, None)
    p = w / np.maximum(w.sum(axis=-1, keepdims=True), 1e-300)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def _softmax(x):
    e = np.exp(x - np.max(x))
    return e / e.sum()


def _tiers(slots: dict) -> list:
    """The memory tiers of ``opt.slots(i)`` (memory off: the first moment)."""
    return [slots[t] for t in TIERS] if "short" in slots else [slots["momentum"]]


def _row(slots: dict, sq, total, softmax, zero, stats: bool) -> list:
    """``RAW_FIELDS`` (+ the in-step record) of one variable, with the given reductions."""
    acc, logits = slots["accumulator"], slots["blend_logits"]
    tiers = [sq(t) for t in _tiers(slots)]
    row = [slots["updates"], sq(acc) if acc is not None else zero, total(slots["velocity"])]
    row += tiers + [zero] * (3 - len(tiers))
    row += list(softmax(logits)) if logits is not None else [zero] * 3
    if stats:
        row += list(slots["stats"])
    return row


def variable_sums(opt) -> tuple[np.ndarray, int]:
    """``RAW_FIELDS`` (+ the in-step record) per variable, in float64 NumPy; and ``iterations``."""
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    sq = lambda x: float(np.sum(f64(x) ** 2))  # noqa: E731
    total = lambda x: float(np.sum(f64(x)))  # noqa: E731
    rows = [_row({k: (f64(v) if v is not None else None) for k, v in opt.slots(i).items()},
                 sq, total, _softmax, 0.0, bool(opt.stats_every))
            for i in range(len(opt.model_variables))]
    return np.asarray(rows, np.float64).reshape(len(rows), len(_columns(opt))), \
        int(np.asarray(opt.iterations))


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
        sq = lambda x: tf.reduce_sum(tf.square(f32(x)))  # noqa: E731
        total = lambda x: tf.reduce_sum(f32(x))  # noqa: E731
        softmax = lambda x: tf.unstack(tf.nn.softmax(f32(x)))  # noqa: E731
        zero = tf.zeros((), tf.float32)
        rows = []
        for i in range(len(opt.model_variables)):
            slots = opt.slots(i)
            row = _row(slots, sq, total, softmax, zero, False)
            row = tf.stack([f32(x) for x in row])
            if opt.stats_every:
                row = tf.concat([row, f32(slots["stats"])], axis=0)
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
        for t, tier in enumerate(TIERS[:3 if opt.memory_on else 1]):
            row[f"norm_{tier}"] = math.sqrt(max(s[:, col[f"tier_sq_{t}"]].sum(), 0.0))
        if opt.memory_blend_mode == "fixed":
            for tier, w in zip(TIERS, opt.fixed_weights):
                row[f"weight_{tier}"] = w
            row["retrieval_entropy"] = float(entropy(opt.fixed_weights))
        elif opt.memory_blend_mode == "adaptive":
            _weights(row, s[:, [col[f"blend_{t}"] for t in range(3)]], sizes)
        if opt.stats_every:
            _in_step(opt, row, s, sizes, col)
        out[layer] = row
    return out


def _weights(row, w, sizes):
    """The layer's retrieval weights and their entropy from per-variable weights ``w``
    (``[variables, 3]``), averaged by variable size."""
    for t, tier in enumerate(TIERS):
        row[f"weight_{tier}"] = float((w[:, t] * sizes).sum() / sizes.sum())
    row["retrieval_entropy"] = float((entropy(w) * sizes).sum() / sizes.sum())


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
        _weights(row, np.stack([st(f"weight_{tier}") for tier in TIERS], axis=1), sizes)
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
