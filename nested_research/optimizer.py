"""``NestedLearningOptimizer``: the thin Keras shell around the update rules.

Per trainable variable ``x`` with gradient ``g`` the optimizer applies, on the
steps its update interval allows (``intervals``)::

    g_hat = mean of the gradients accumulated since the last update  (accumulate_gradients)
    g_hat = low_rank(g_hat, compression_rank)                        (use_gradient_compression)
    t     = number of updates this variable has applied, this one included
    # memory on (memory_blend_mode in fixed / attention / adaptive):  see memory.py
    M_i   <- d_i M_i + (1 - d_i) g_hat                   i in short, medium, long
    e     = (1 - memory_mix) g_hat + memory_mix * sum_i w_i M_i
    v     <- beta_2 v + (1 - beta_2) e^2                 (v_hat = max(v_hat, v) with amsgrad)
    x     <- x - lr * e / (sqrt(v / (1 - beta_2^t)) + epsilon)
    # memory off (memory_blend_mode="none"): exactly keras.optimizers.Adam
    m     <- beta_1 m + (1 - beta_1) g_hat
    v     <- beta_2 v + (1 - beta_2) g_hat^2
    x     <- x - lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)

Symbols map to arguments: ``d_i`` = ``short_term_decay`` / ``medium_term_decay``
/ ``long_term_decay``; ``w_i`` from ``memory_blend_mode`` (fixed weights are
``short_term_weight`` ...); ``lr`` is ``learning_rate``, wrapped in the
per-epoch ``PerEpochSchedule`` when ``steps_per_epoch`` is set.

Skipped steps (a variable with interval ``k > 1`` between updates): the
gradient is added to the accumulator (or dropped without accumulation) and
nothing else changes: the variable, its memories, second moment and update
count stay as they are, so the memory decays per *applied* update, not per
global step.  Accumulated gradients are averaged, not summed, so a slow layer
sees gradients of the same scale as a fast one: the attention scores
``<g, M>/sqrt(n)`` and the ``epsilon`` term then mean the same at every
interval, and "interval k with accumulation" equals "one step every k on the
averaged gradient" (optax ``apply_every``).

NOTE (deviations from the seed):
- The seed accepts ``beta_1`` and never uses it; here it is the first moment
  of ``memory_blend_mode="none"``, which reduces the optimizer to Adam.
- The seed hard-codes the 0.5/0.5 gradient/memory mix; ``memory_mix`` makes it
  a parameter (default 0.5).
- Bias correction uses each variable's own count of applied updates ``t``,
  not the global step, so slow layers are corrected as often as they update.
- ``reverse_depth_order=True`` makes the input-side layers the slowest (the
  seed's examples and prose), not the deeper ones (its table); see intervals.py.
- Decoupled ``weight_decay`` is applied by the Keras base class on every
  global step, including a slow layer's skipped steps.
"""

from __future__ import annotations

import math
import numbers
import warnings

import keras
import numpy as np
from keras import ops

from nested_research import compression, intervals, memory
from nested_research.depths import compute_depths
from nested_research.lr_schedule import PerEpochSchedule, validate_fractions

BLEND_MODES = ("fixed", "adaptive", "attention", "none")

#: Per-variable statistics recorded in the step (``stats_every > 0``), raw sums so
#: that layers aggregate exactly: squared norms and inner products.
STAT_FIELDS = (
    "grad_sq", "mem_sq_short", "mem_sq_medium", "mem_sq_long",
    "dot_short", "dot_medium", "dot_long",
    "weight_short", "weight_medium", "weight_long",
    "update_sq", "param_sq", "step",
)


def _check_number(name, value, low=None, high=None, low_open=False, high_open=False,
                  integer=False, allowed=None):
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or \
            (not integer and not math.isfinite(value)):
        raise ValueError(f"{name}={value!r} must be {allowed}")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name}={value!r} must be {allowed}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name}={value!r} must be {allowed}")


def validate_config(cfg: dict) -> None:
    """Raise ``ValueError`` naming the parameter, the value and what is allowed."""
    for name in ("short_term_decay", "medium_term_decay", "long_term_decay", "beta_1", "beta_2"):
        _check_number(name, cfg[name], 0.0, 1.0, high_open=True, allowed="a number in [0, 1)")
    if cfg["memory_blend_mode"] not in BLEND_MODES:
        raise ValueError(
            f"memory_blend_mode={cfg['memory_blend_mode']!r} is not one of {BLEND_MODES}")
    weights = [cfg["short_term_weight"], cfg["medium_term_weight"], cfg["long_term_weight"]]
    for name, w in zip(("short_term_weight", "medium_term_weight", "long_term_weight"), weights):
        _check_number(name, w, 0.0, allowed="a number >= 0")
    if sum(weights) <= 0:
        raise ValueError(
            f"short/medium/long_term_weight = {weights}: at least one weight must be > 0")
    _check_number("memory_mix", cfg["memory_mix"], 0.0, 1.0, allowed="a number in [0, 1]")
    _check_number("adaptive_rate", cfg["adaptive_rate"], 0.0, allowed="a number >= 0")
    if cfg["schedule_curve"] not in intervals.CURVES:
        raise ValueError(
            f"schedule_curve={cfg['schedule_curve']!r} is not one of {intervals.CURVES}")
    _check_number("max_interval", cfg["max_interval"], 1, integer=True,
                  allowed="an integer >= 1")
    _check_number("default_interval", cfg["default_interval"], 1, integer=True,
                  allowed="an integer >= 1")
    _check_number("warmup_steps", cfg["warmup_steps"], 0, integer=True,
                  allowed="an integer >= 0")
    if cfg["compression_rank"] is not None:
        _check_number("compression_rank", cfg["compression_rank"], 1, integer=True,
                      allowed="an integer >= 1 (or None)")
    elif cfg["use_gradient_compression"]:
        raise ValueError(
            "compression_rank=None: use_gradient_compression=True needs an integer "
            "compression_rank >= 1")
    _check_number("epsilon", cfg["epsilon"], 0.0, low_open=True, allowed="a number > 0")
    if cfg["steps_per_epoch"] is not None:
        _check_number("steps_per_epoch", cfg["steps_per_epoch"], 1, integer=True,
                      allowed="an integer >= 1 (or None)")
    validate_fractions(cfg["lr_warmup_fraction"], cfg["lr_hold_fraction"],
                       cfg["lr_decay_fraction"], cfg["lr_min_fraction"])
    _check_number("stats_every", cfg["stats_every"], 0, integer=True,
                  allowed="an integer >= 0 (0 disables in-step statistics)")


@keras.saving.register_keras_serializable(package="nested_research")
class NestedLearningOptimizer(keras.optimizers.Optimizer):
    """Adam-style optimizer over a three-tier gradient memory, with per-layer intervals.

    See the module docstring for the update rule; ``memory.py`` for the
    memory and retrieval, ``intervals.py`` for the depth curves and the step
    rule, ``lr_schedule.py`` for the per-epoch schedule.

    Args (seed names and defaults):
        learning_rate: float or ``LearningRateSchedule``.
        short_term_decay, medium_term_decay, long_term_decay: tier decays in [0, 1).
        memory_blend_mode: ``"fixed"``, ``"adaptive"``, ``"attention"`` or
            ``"none"`` (memory off: the optimizer is Adam with ``beta_1``).
        short_term_weight, medium_term_weight, long_term_weight: fixed weights
            (used as given, not normalised), and the adaptive mode's start.
        auto_schedule, max_interval, schedule_curve, reverse_depth_order,
        warmup_steps, accumulate_gradients: depth scheduling (intervals.py).
        layer_update_intervals, default_interval: manual ``(regex, interval)``
            rules for ``auto_schedule=False``.
        use_gradient_compression, compression_rank: low-rank gradients.
        beta_1, beta_2, epsilon, amsgrad: Adam parameters.
        steps_per_epoch, lr_warmup_fraction, lr_hold_fraction,
        lr_decay_fraction, lr_min_fraction: per-epoch LR schedule.
    Args (added here):
        memory_mix: share of the retrieved memory in the effective gradient
            (the seed's fixed 0.5).
        adaptive_rate: step size of the adaptive retrieval logits.
        variable_depths: ``{variable path: depth}``; filled by
            ``compute_depths_from_model``/``register_*`` and saved in the
            config so a reloaded optimizer rebuilds the same intervals.
        stats_every: record per-variable statistics in the step every this
            many steps (0: never); read them with ``memory_stats()``.
        Plus every ``keras.optimizers.Optimizer`` keyword (``weight_decay``,
        ``clipnorm``, ``use_ema``, ``gradient_accumulation_steps``, ...).
    """

    def __init__(
        self,
        learning_rate=0.001,
        short_term_decay=0.94,
        medium_term_decay=0.994,
        long_term_decay=0.9999,
        memory_blend_mode="attention",
        short_term_weight=0.1,
        medium_term_weight=0.3,
        long_term_weight=0.6,
        auto_schedule=True,
        max_interval=6,
        schedule_curve="cosine",
        reverse_depth_order=True,
        warmup_steps=0,
        accumulate_gradients=True,
        layer_update_intervals=None,
        default_interval=1,
        use_gradient_compression=False,
        compression_rank=None,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        steps_per_epoch=None,
        lr_warmup_fraction=0.25,
        lr_hold_fraction=0.25,
        lr_decay_fraction=0.50,
        lr_min_fraction=0.01,
        memory_mix=0.5,
        adaptive_rate=0.1,
        variable_depths=None,
        stats_every=0,
        name="nested_learning",
        **kwargs,
    ):
        cfg = dict(locals())
        validate_config(cfg)
        patterns = intervals.normalize_patterns(layer_update_intervals)
        if isinstance(learning_rate, int) and not isinstance(learning_rate, bool):
            learning_rate = float(learning_rate)
        if steps_per_epoch is not None:
            learning_rate = PerEpochSchedule(
                learning_rate, steps_per_epoch, lr_warmup_fraction, lr_hold_fraction,
                lr_decay_fraction, lr_min_fraction)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.short_term_decay = float(short_term_decay)
        self.medium_term_decay = float(medium_term_decay)
        self.long_term_decay = float(long_term_decay)
        self.memory_blend_mode = memory_blend_mode
        self.short_term_weight = float(short_term_weight)
        self.medium_term_weight = float(medium_term_weight)
        self.long_term_weight = float(long_term_weight)
        self.auto_schedule = bool(auto_schedule)
        self.max_interval = int(max_interval)
        self.schedule_curve = schedule_curve
        self.reverse_depth_order = bool(reverse_depth_order)
        self.warmup_steps = int(warmup_steps)
        self.accumulate_gradients = bool(accumulate_gradients)
        self.layer_update_intervals = patterns
        self.default_interval = int(default_interval)
        self.use_gradient_compression = bool(use_gradient_compression)
        self.compression_rank = compression_rank
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.amsgrad = bool(amsgrad)
        self.steps_per_epoch = steps_per_epoch
        self.lr_warmup_fraction = float(lr_warmup_fraction)
        self.lr_hold_fraction = float(lr_hold_fraction)
        self.lr_decay_fraction = float(lr_decay_fraction)
        self.lr_min_fraction = float(lr_min_fraction)
        self.memory_mix = float(memory_mix)
        self.adaptive_rate = float(adaptive_rate)
        self.stats_every = int(stats_every)
        self._variable_depths = {str(k): int(v) for k, v in (variable_depths or {}).items()}

    # ------------------------------------------------------------------ schedule
    @property
    def memory_on(self) -> bool:
        return self.memory_blend_mode != "none"

    @property
    def decays(self) -> tuple[float, float, float]:
        return (self.short_term_decay, self.medium_term_decay, self.long_term_decay)

    @property
    def fixed_weights(self) -> tuple[float, float, float]:
        return (self.short_term_weight, self.medium_term_weight, self.long_term_weight)

    def _require_unbuilt(self, what: str) -> None:
        if self.built:
            raise RuntimeError(
                f"{what}: the optimizer is already built and its update intervals are fixed; "
                "register depths before the first training step (before model.fit)")

    def compute_depths_from_model(self, model) -> dict[str, int]:
        """Assign every trainable variable of ``model`` its depth (depths.py); return the map."""
        self._require_unbuilt("compute_depths_from_model")
        depths = compute_depths(model)
        self._variable_depths.update(depths)
        return dict(depths)

    def register_variable_depth(self, variable, depth: int) -> None:
        """Set the depth of one variable (keyed by its path)."""
        self._require_unbuilt("register_variable_depth")
        _check_number("depth", depth, 0, integer=True, allowed="an integer >= 0")
        self._variable_depths[variable.path] = int(depth)

    def register_layer_depth(self, layer, depth: int) -> None:
        """Set the depth of every trainable variable of ``layer``."""
        if not layer.trainable_weights:
            raise ValueError(
                f"register_layer_depth: layer {layer.name!r} has no trainable variables "
                "(build it first)")
        for v in layer.trainable_weights:
            self.register_variable_depth(v, depth)

    @property
    def variable_depths(self) -> dict[str, int]:
        return dict(self._variable_depths)

    def _resolve_intervals(self, var_list) -> list[int]:
        paths = [v.path for v in var_list]
        if not self.auto_schedule:
            by_path = intervals.pattern_intervals(paths, self.layer_update_intervals,
                                                  self.default_interval)
            return [by_path[p] for p in paths]
        known = {p: d for p in paths if (d := self._depth_of(p)) is not None}
        if not known and self.max_interval > 1:
            warnings.warn(
                "NestedLearningOptimizer: auto_schedule=True but no layer depths are known; "
                "every variable updates every step. Call "
                "optimizer.compute_depths_from_model(model) before training.", stacklevel=3)
        by_path = intervals.auto_intervals(known, self.max_interval, self.schedule_curve,
                                           self.reverse_depth_order)
        return [by_path.get(p, 1) for p in paths]

    def _depth_of(self, path: str):
        """The registered depth of ``path``; a unique suffix match also counts.

        Keras drops a Sequential model's name from its variable paths when it is
        reloaded (``mlp/dense_0/kernel`` -> ``dense_0/kernel``), so saved depths are
        also found by the path they end with.
        """
        if path in self._variable_depths:
            return self._variable_depths[path]
        hits = [d for key, d in self._variable_depths.items()
                if key.endswith("/" + path) or path.endswith("/" + key)]
        return hits[0] if len(hits) == 1 else None

    @property
    def intervals(self) -> dict[str, int]:
        """``{variable path: update interval}`` (after the optimizer is built)."""
        if not self.built:
            raise RuntimeError("intervals are assigned when the optimizer is built")
        return {v.path: k for v, k in zip(self._trainable_variables, self._intervals)}

    # ------------------------------------------------------------------ lr
    def set_steps_per_epoch(self, steps: int) -> None:
        """Turn on (or re-size) the per-epoch schedule.

        Works before or after ``compile``; a train function already traced by
        ``fit`` keeps the rate it captured, so call it before the first ``fit``.
        """
        _check_number("steps_per_epoch", steps, 1, integer=True, allowed="an integer >= 1")
        base = self._learning_rate
        if isinstance(base, PerEpochSchedule) and self.steps_per_epoch is not None:
            base = base.initial_learning_rate
        elif isinstance(base, keras.Variable):
            base = float(base.numpy())
        self.steps_per_epoch = int(steps)
        self.learning_rate = PerEpochSchedule(
            base, self.steps_per_epoch, self.lr_warmup_fraction, self.lr_hold_fraction,
            self.lr_decay_fraction, self.lr_min_fraction)

    @property
    def current_learning_rate(self) -> float:
        """The learning rate the next step will use (the schedule at ``iterations``)."""
        return float(ops.convert_to_numpy(self.learning_rate))

    # ------------------------------------------------------------------ state
    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._intervals = self._resolve_intervals(var_list)
        if self.memory_on:
            self._memories = self.add_optimizer_variables(
                var_list, ["short_memory", "medium_memory", "long_memory"])
        else:
            self._memories = (self.add_optimizer_variables(var_list, "momentum"),)
        self._velocities = self.add_optimizer_variables(var_list, "velocity")
        if self.amsgrad:
            self._velocity_hats = self.add_optimizer_variables(var_list, "velocity_hat")
        self._blend_logits = []
        self._accumulators = []
        self._update_counts = []
        self._stats = []
        init_logits = memory.initial_adaptive_logits(self.fixed_weights)
        for var, k in zip(var_list, self._intervals):
            prefix = var.path.replace("/", "_")
            if self.memory_blend_mode == "adaptive":
                self._blend_logits.append(self.add_variable(
                    (3,), keras.initializers.Constant(init_logits), var.dtype,
                    name=f"{prefix}_blend_logits"))
            if k > 1 and self.accumulate_gradients:
                self._accumulators.append(
                    self.add_variable_from_reference(var, name="accumulator"))
            else:
                self._accumulators.append(None)
            self._update_counts.append(
                self.add_variable((), "zeros", "float32", name=f"{prefix}_updates"))
            if self.stats_every:
                self._stats.append(self.add_variable(
                    (len(STAT_FIELDS),), "zeros", "float32", name=f"{prefix}_stats"))

    # ------------------------------------------------------------------ step
    def update_step(self, gradient, variable, learning_rate):
        idx = self._get_variable_index(variable)
        # IndexedSlices (embeddings) arrive densified without a static shape: restore it.
        gradient = ops.reshape(ops.cast(ops.convert_to_tensor(gradient), variable.dtype),
                               variable.shape)
        lr = ops.cast(learning_rate, variable.dtype)
        k = self._intervals[idx]
        if k == 1:
            self._apply(idx, variable, gradient, lr)
            return
        step = self.iterations
        due = intervals.is_update_step(step, k, self.warmup_steps)
        acc = self._accumulators[idx]
        if acc is None:
            ops.cond(due, lambda: self._apply(idx, variable, gradient, lr), lambda: None)
            return

        def apply_window():
            n = float(k) if self.warmup_steps <= 0 else \
                ops.where(ops.less(step, self.warmup_steps), 1.0, float(k))
            self._apply(idx, variable, (acc + gradient) / ops.cast(n, variable.dtype), lr)
            self.assign(acc, ops.zeros_like(acc))

        ops.cond(due, apply_window, lambda: self.assign_add(acc, gradient))

    def _direction(self, idx, g, t):
        """The numerator, the second-moment input and epsilon of this mode (see module doc)."""
        if not self.memory_on:
            (m,) = (tier[idx] for tier in self._memories)
            self.assign_add(m, (g - m) * (1.0 - self.beta_1))
            bc2 = 1.0 - ops.power(self.beta_2, t)
            num = m / (1.0 - ops.power(self.beta_1, t))
            return num, g, self.epsilon / ops.sqrt(bc2), (m,), None
        mem_vars = [tier[idx] for tier in self._memories]
        old = [ops.convert_to_tensor(m) for m in mem_vars]
        new = memory.update_memories(old, g, self.decays)
        weights = self._retrieval_weights(idx, g, old, new)
        for var, value in zip(mem_vars, new):
            self.assign(var, value)
        effective = memory.mix(g, memory.combine(weights, new), self.memory_mix)
        return effective, effective, self.epsilon, new, weights

    def _retrieval_weights(self, idx, g, old, new):
        if self.memory_blend_mode == "fixed":
            return ops.convert_to_tensor(self.fixed_weights, g.dtype)
        if self.memory_blend_mode == "attention":
            return memory.attention_weights(g, new, int(np.prod(g.shape)))
        logits_var = self._blend_logits[idx]
        logits = memory.adaptive_logits_step(
            logits_var, memory.cosines(g, old), self.adaptive_rate,
            memory.ADAPTIVE_LOGIT_BOUND)
        self.assign(logits_var, logits)
        return ops.softmax(logits)

    def _apply(self, idx, variable, g, lr):
        count = self._update_counts[idx]
        t = ops.cast(count, variable.dtype) + 1.0
        self.assign(count, count + 1.0)
        if self.use_gradient_compression:
            g = compression.low_rank(g, self.compression_rank)
        num, second, eps, mems, weights = self._direction(idx, g, t)
        v = self._velocities[idx]
        v_new = v + (ops.square(second) - v) * (1.0 - self.beta_2)
        self.assign(v, v_new)
        if self.amsgrad:
            v_hat = self._velocity_hats[idx]
            v_new = ops.maximum(v_hat, v_new)
            self.assign(v_hat, v_new)
        bc2 = 1.0 - ops.power(self.beta_2, t)
        update = lr * num / (ops.sqrt(v_new / bc2) + eps)
        if self.stats_every:
            self._record_stats(idx, variable, g, mems, weights, update)
        self.assign_sub(variable, update)

    def _record_stats(self, idx, variable, g, mems, weights, update):
        """Write STAT_FIELDS on the last applied update of each ``stats_every`` window."""
        step = self.iterations
        k = self._intervals[idx]
        k_now = k if self.warmup_steps <= 0 else \
            ops.where(ops.less(step, self.warmup_steps), 1, k)
        due = ops.greater_equal(ops.mod(step, self.stats_every) + k_now, self.stats_every)

        def write():
            f32 = lambda x: ops.cast(x, "float32")  # noqa: E731
            tiers = list(mems) + [ops.zeros_like(g)] * (3 - len(mems))
            w = weights if weights is not None else ops.zeros((3,), g.dtype)
            values = [memory.vdot(g, g)] + [memory.vdot(m, m) for m in tiers] + \
                [memory.vdot(g, m) for m in tiers] + [w[0], w[1], w[2]] + \
                [memory.vdot(update, update), memory.vdot(variable, variable), step]
            self.assign(self._stats[idx], ops.stack([f32(x) for x in values]))

        ops.cond(due, write, lambda: None)

    # ------------------------------------------------------------------ inspection
    def memory_stats(self) -> dict[str, dict]:
        """Per-layer statistics as a dict ``{layer path: {stat: value}}``.

        Always: depth, interval, applied updates, steps since the last update,
        tier norms, accumulator norm, second-moment RMS.  With ``stats_every``:
        also the retrieval weights, gradient/tier cosines, gradient, update and
        parameter norms and the update-to-weight ratio, as recorded in the step
        at the layer's last update of the latest ``stats_every`` window.
        """
        from nested_research.stats import layer_stats
        return layer_stats(self)

    def print_memory_stats(self) -> None:
        """Print ``memory_stats()`` as a table, one row per layer."""
        from nested_research.stats import format_table
        print(format_table(self.memory_stats()))

    # ------------------------------------------------------------------ config
    def get_config(self):
        config = super().get_config()
        if self.steps_per_epoch is not None and isinstance(self._learning_rate, PerEpochSchedule):
            base = self._learning_rate.initial_learning_rate
            config["learning_rate"] = (
                keras.optimizers.schedules.serialize(base)
                if isinstance(base, keras.optimizers.schedules.LearningRateSchedule)
                else float(base))
        config.update({
            "short_term_decay": self.short_term_decay,
            "medium_term_decay": self.medium_term_decay,
            "long_term_decay": self.long_term_decay,
            "memory_blend_mode": self.memory_blend_mode,
            "short_term_weight": self.short_term_weight,
            "medium_term_weight": self.medium_term_weight,
            "long_term_weight": self.long_term_weight,
            "auto_schedule": self.auto_schedule,
            "max_interval": self.max_interval,
            "schedule_curve": self.schedule_curve,
            "reverse_depth_order": self.reverse_depth_order,
            "warmup_steps": self.warmup_steps,
            "accumulate_gradients": self.accumulate_gradients,
            "layer_update_intervals": [list(p) for p in self.layer_update_intervals] or None,
            "default_interval": self.default_interval,
            "use_gradient_compression": self.use_gradient_compression,
            "compression_rank": self.compression_rank,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "amsgrad": self.amsgrad,
            "steps_per_epoch": self.steps_per_epoch,
            "lr_warmup_fraction": self.lr_warmup_fraction,
            "lr_hold_fraction": self.lr_hold_fraction,
            "lr_decay_fraction": self.lr_decay_fraction,
            "lr_min_fraction": self.lr_min_fraction,
            "memory_mix": self.memory_mix,
            "adaptive_rate": self.adaptive_rate,
            "variable_depths": dict(self._variable_depths) or None,
            "stats_every": self.stats_every,
        })
        return config
