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
import weakref

import keras
import numpy as np
from keras import ops

from nested_research import compression, intervals, memory, sparse
from nested_research.stats import in_stats_window
from nested_research.depths import compute_depths
from nested_research.lr_schedule import PerEpochSchedule, validate_fractions

BLEND_MODES = ("fixed", "adaptive", "attention", "none")
#: In graph mode, tensors of at most this many elements take the stacked form of the
#: memory step (``memory.stack_rows``): fewer ops, one extra copy of the memories.
#: (Under XLA the op count hardly matters and the stack would be copied: not used.)
STACK_MAX_ELEMENTS = 1 << 13
#: Storage dtypes of the memory tiers (and of the first moment with ``memory_blend_mode="none"``).
STATE_DTYPES = ("float32", "bfloat16")

#: Per-variable statistics recorded in the step (``stats_every > 0``), raw sums so
#: that layers aggregate exactly: squared norms and inner products.
STAT_FIELDS = (
    "grad_sq", "mem_sq_short", "mem_sq_medium", "mem_sq_long",
    "dot_short", "dot_medium", "dot_long",
    "weight_short", "weight_medium", "weight_long",
    "update_sq", "param_sq", "step",
)


def _stat_gather_index(n_tiers: int) -> np.ndarray:
    """Where each of ``STAT_FIELDS`` sits in ``[gram.flat, w_0, w_1, w_2, step, 0]``, the Gram
    matrix being that of the rows ``[g, tier_1 .. tier_n, update, x]`` (missing tiers read 0)."""
    r = n_tiers + 3
    gram = lambda i, j: i * r + j  # noqa: E731
    zero = r * r + 4
    tier = lambda t: t + 1 if t < n_tiers else None  # noqa: E731
    index = [gram(0, 0)]
    index += [gram(tier(t), tier(t)) if tier(t) else zero for t in range(3)]
    index += [gram(0, tier(t)) if tier(t) else zero for t in range(3)]
    index += [r * r, r * r + 1, r * r + 2]
    index += [gram(r - 2, r - 2), gram(r - 1, r - 1), r * r + 3]
    assert len(index) == len(STAT_FIELDS)
    return np.asarray(index, "int32")


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
    if not isinstance(cfg["state_dtype"], str) or cfg["state_dtype"] not in STATE_DTYPES:
        raise ValueError(f"state_dtype={cfg['state_dtype']!r} is not one of {STATE_DTYPES}")


class _StatsRecording:
    """``NestedLearningOptimizer.stats_recording``'s context (a class: it is entered on every
    call of a train function, so it is kept cheap)."""

    __slots__ = ("opt", "record", "previous")

    def __init__(self, opt, record: bool):
        self.opt, self.record = opt, record

    def __enter__(self):
        self.previous, self.opt._stats_recording = self.opt._stats_recording, self.record
        return self.opt

    def __exit__(self, *exc):
        self.opt._stats_recording = self.previous
        return False


def _in_xla_context() -> bool:
    """Whether the step is being traced for XLA (``jit_compile=True``); a trace-time fact."""
    if keras.backend.backend() == "jax":
        return True
    if keras.backend.backend() != "tensorflow":
        return False
    try:
        from tensorflow.python.framework import ops as tf_ops
        from tensorflow.python.ops import control_flow_util
        return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))
    except (ImportError, AttributeError):  # private TF API moved: take the graph-mode form
        return False


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
            many steps (0: never); read them with ``memory_stats()``.  Each
            step decides on the device whether to record (a ``cond``), unless it
            was traced inside ``stats_recording``: the trainer runs a recording
            and a plain train function (``stats.StatsWindow``).
        state_dtype: storage of the gradient memories: the three tiers (with
            ``memory_blend_mode="none"``: the first moment) and the interval
            accumulators.  ``"float32"`` (full precision: the variable's own
            dtype) or ``"bfloat16"`` (2 bytes each: 10 instead of 16 optimizer
            bytes per parameter, 12 instead of 20 on a slow layer).  The second
            moment and the parameters keep the variable's dtype, and all math
            runs in it.

    NOTE (bfloat16 state): a tier or accumulator is computed in the variable's
    dtype from its widened bfloat16 value and rounded to nearest on store; the
    step itself uses the unrounded values.  bfloat16 keeps 8 significant bits,
    so an update ``(1 - d)(g - M)`` smaller than half a unit in the last place
    of ``M`` (``2^-9 |M|``) is lost: the long tier (``1 - d = 1e-4``) only
    moves while ``|g - M| > ~20 |M|`` and the medium tier (``6e-3``) while
    ``|g - M| > ~0.33 |M|``, so the slow tiers stall at a smaller magnitude
    than in float32 (round to nearest, no stochastic rounding).  An
    accumulated window of ``k`` gradients carries ``k`` roundings of ``2^-9``
    relative.  The second moment stays in full precision: the step divides
    by its root.
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
        state_dtype="float32",
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
        self._stats_recording = None  # see stats_recording()
        self.state_dtype = state_dtype
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
        names = ["short_memory", "medium_memory", "long_memory"] if self.memory_on \
            else ["momentum"]
        if self._low_precision:
            self._memories = self._add_state_variables(var_list, names, self.state_dtype)
        else:
            self._memories = tuple(self.add_optimizer_variables(var_list, names))
        self._velocities = self.add_optimizer_variables(var_list, "velocity")
        if self.amsgrad:
            self._velocity_hats = self.add_optimizer_variables(var_list, "velocity_hat")
        self._blend_logits = []
        self._accumulators = []
        self._update_counts = []
        self._stats = []
        self._stats_due_by_graph = weakref.WeakKeyDictionary()
        init_logits = memory.initial_adaptive_logits(self.fixed_weights)
        for var, k in zip(var_list, self._intervals):
            prefix = var.path.replace("/", "_")
            if self.memory_blend_mode == "adaptive":
                self._blend_logits.append(self.add_variable(
                    (3,), keras.initializers.Constant(init_logits), var.dtype,
                    name=f"{prefix}_blend_logits"))
            if k > 1 and self.accumulate_gradients:
                self._accumulators.append(
                    self._add_state_variables([var], ["accumulator"], self.state_dtype)[0][0]
                    if self._low_precision else
                    self.add_variable_from_reference(var, name="accumulator"))
            else:
                self._accumulators.append(None)
            self._update_counts.append(
                self.add_variable((), "zeros", "float32", name=f"{prefix}_updates"))
            if self.stats_every:
                self._stats.append(self.add_variable(
                    (len(STAT_FIELDS),), "zeros", "float32", name=f"{prefix}_stats"))

    def _add_state_variables(self, var_list, names, dtype):
        """``add_optimizer_variables`` (same names and order) with another dtype."""
        out = tuple([] for _ in names)
        for var in var_list:
            for i, name in enumerate(names):
                if self._overwrite_variable_with_gradient(var):
                    out[i].append(None)
                    continue
                out[i].append(self.add_variable(
                    var.shape, "zeros", dtype, name=f"{var.path.replace('/', '_')}_{name}"))
        return out

    # ------------------------------------------------------------------ step
    def update_step(self, gradient, variable, learning_rate):
        idx = self._get_variable_index(variable)
        gradient = self._prepare_gradient(gradient, variable)
        lr = ops.cast(learning_rate, variable.dtype)
        k = self._intervals[idx]
        if k == 1:
            self._apply(idx, variable, gradient, lr)
            return
        step = self.iterations
        due = intervals.is_update_step(step, k, self.warmup_steps)
        acc = self._accumulators[idx]
        if acc is None:
            # Skipped steps run no optimizer math at all (a real branch, not a select).
            ops.cond(due, lambda: self._apply(idx, variable, gradient, lr), lambda: None)
            return

        def add(g, a):
            return a + g

        def apply_window():
            n = float(k) if self.warmup_steps <= 0 else \
                ops.where(ops.less(step, self.warmup_steps), 1.0, float(k))
            total = self._elementwise(add, gradient, self._widen(acc, variable.dtype))
            self._apply(idx, variable, total / ops.cast(n, variable.dtype), lr)
            self.assign(acc, ops.zeros_like(acc))

        def accumulate():
            if self._low_precision:  # add in full precision, round once
                self._store(acc, self._elementwise(add, gradient, self._widen(acc, variable.dtype)))
            elif isinstance(gradient, sparse.RowSparse):
                self.assign_add(acc, sparse.as_indexed_slices(gradient))  # a scatter-add
            else:
                self.assign_add(acc, gradient)

        ops.cond(due, apply_window, accumulate)

    def _prepare_gradient(self, gradient, variable):
        """The gradient in the variable's dtype and static shape: a dense tensor, or a
        ``sparse.RowSparse`` for ``IndexedSlices`` where the sparse rules apply.

        Sparse gradients stay sparse (no table-sized gradient, see ``sparse.py``)
        for variables above ``STACK_MAX_ELEMENTS`` elements, in graph mode, without
        gradient compression; otherwise they are densified (a small table costs its
        ops, not its bytes; XLA cannot compile the merge of duplicate rows; the
        low-rank projection needs the matrix).
        """
        dtype = variable.dtype
        if sparse.is_indexed_slices(gradient):
            n = int(np.prod(variable.shape))
            if n > STACK_MAX_ELEMENTS and not _in_xla_context() and \
                    not self.use_gradient_compression:
                return sparse.from_indexed_slices(gradient, variable.shape, dtype)
            gradient = sparse.densify_slices(gradient)
        gradient = ops.convert_to_tensor(gradient)
        if tuple(gradient.shape) != tuple(variable.shape):
            # densified IndexedSlices (embeddings) lose the static shape
            gradient = ops.reshape(gradient, variable.shape)
        if gradient.dtype != dtype:
            gradient = ops.cast(gradient, dtype)
        return gradient

    @staticmethod
    def _elementwise(fn, g, *state):
        """``fn(g, *state)``; for a row-sparse ``g`` without a dense gradient (``sparse.py``)."""
        if isinstance(g, sparse.RowSparse):
            return sparse.rowwise(fn, g, *state)
        return fn(g, *state)

    def _apply(self, idx, variable, g, lr):
        """One applied update of ``variable`` (module docstring), in as few passes as we can.

        The optimizer streams its whole state through memory, so the step is
        written to read and write each tensor as few times as the backend allows
        (``memory.py`` states the identities; all forms are the same numbers up
        to float rounding, and the tests hold each to the NumPy reference):

        - graph mode, large tensors: the old memories are read once; the
          attention scores come from ``<g, g>`` and ``<g, M_i>``
          (``attention_weights_from_dots``) and the effective gradient from
          the old memories (``effective_from_old``), so the new memories are
          only written, and their buffers are handed to the variables.
        - graph mode, small tensors (``STACK_MAX_ELEMENTS``): the cost is the
          number of ops, so ``[g; M_s; M_m; M_l]`` is stacked once and the
          reductions and the retrieval are matrix products of the stack.
        - XLA: XLA on CPU fuses each output separately (no multi-output
          fusion) and copies a variable that more than one fusion reads before
          updating it in place, so the new memories are computed once and the
          retrieval reads them, with blocked reductions (``vdot``).  bfloat16
          tiers read the old memories instead (reading the new float32 values
          back would store them twice: in float32 for the readers and rounded
          for the variable), and so does the adaptive mode, whose cosines are
          of the old memories.

        The second moment is updated in place and re-read, and the parameter
        step is ``(lr sqrt(bc2)) e / (sqrt(v) + eps sqrt(bc2))``, the module
        docstring's ``lr e / (sqrt(v / bc2) + eps)`` without a full-size
        division by ``bc2``.
        """
        dtype = variable.dtype
        count = self._update_counts[idx]
        t = ops.add(count, 1.0)  # this update's number, counting it (read once)
        self.assign(count, t)
        t = ops.cast(t, dtype)
        if self.use_gradient_compression:
            g = compression.low_rank(g, self.compression_rank)
        bc2 = 1.0 - ops.power(self.beta_2, t)
        if not self.memory_on:
            # keras.optimizers.Adam, op for op (with this variable's own count t).
            (m,) = (tier[idx] for tier in self._memories)
            ema = lambda g_, m_: m_ + (g_ - m_) * (1.0 - self.beta_1)  # noqa: E731
            if isinstance(g, sparse.RowSparse):
                num = self._store_rowwise(m, ema, g, self._read_value(m, dtype))
            elif self._low_precision:
                # widen, update, round on store; step with the f32 value
                num = ema(g, self._read_value(m, dtype))
                self._store(m, num)
            else:
                self.assign_add(m, (g - m) * (1.0 - self.beta_1))
                num = m
            alpha = lr * ops.sqrt(bc2) / (1.0 - ops.power(self.beta_1, t))
            eps = self.epsilon
            mems, weights, second = (num,), None, g
        else:
            num, mems, weights = self._memory_step(idx, g)
            root = ops.sqrt(bc2)
            alpha, eps, second = lr * root, self.epsilon * root, num
        v = self._velocities[idx]
        if isinstance(second, sparse.RowSparse):
            self._store_rowwise(v, lambda g_, v_: v_ + (g_ * g_ - v_) * (1.0 - self.beta_2),
                                second, v.value)
        else:
            self.assign_add(v, (ops.square(second) - v) * (1.0 - self.beta_2))
        if self.amsgrad:
            v_hat = self._velocity_hats[idx]
            self.assign(v_hat, ops.maximum(v_hat, v))
            v = v_hat
        # lr * e / (sqrt(v / bc2) + eps) == (lr sqrt(bc2)) e / (sqrt(v) + eps sqrt(bc2))
        update = ops.divide(ops.multiply(num, alpha), ops.add(ops.sqrt(v), eps))
        if self._records_stats:
            self._record_stats(idx, variable, g, mems, weights, update)
        self.assign_sub(variable, update)

    @property
    def _low_precision(self) -> bool:
        return self.state_dtype != "float32"

    @staticmethod
    def _widen(var, dtype):
        """A state variable in the compute dtype (the variable itself when it already is)."""
        return var if var.dtype == dtype else ops.cast(var, dtype)

    @staticmethod
    def _read_value(var, dtype):
        """A state variable's value in the compute dtype (no copy when it already is)."""
        return var.value if var.dtype == dtype else ops.cast(var.value, dtype)

    def _read_state(self, var, dtype):
        """A memory variable's current value (a read, not the variable) in the compute dtype."""
        if var.dtype != dtype:
            return ops.cast(var, dtype)      # bfloat16 state is widened
        return ops.copy(var)                 # a read: later assignments do not change it

    def _store(self, var, value):
        """``var <- value``, rounded to nearest in the state dtype (see ``state_dtype``)."""
        self.assign(var, value if value.dtype == var.dtype else ops.cast(value, var.dtype))

    def _memory_step(self, idx, g):
        """Update the three memories; return ``(effective, new memories, weights)``."""
        dtype = g.dtype
        mem_vars = [tier[idx] for tier in self._memories]
        if isinstance(g, sparse.RowSparse):
            return self._memory_step_sparse(idx, g, mem_vars)
        n = int(np.prod(g.shape))
        xla = _in_xla_context()
        if n <= STACK_MAX_ELEMENTS and not xla:
            return self._memory_step_stacked(idx, g, mem_vars, n)
        old = [self._read_state(m, dtype) for m in mem_vars]
        mode = self.memory_blend_mode
        from_old = not xla or mode == "adaptive" or self._low_precision  # see _apply
        if mode == "adaptive":
            weights = ops.reshape(
                self._adaptive_weights(idx, memory.cosines(g, old, blocked=xla)), (1, 3))
        elif mode == "fixed":
            weights = self.fixed_weights
        elif from_old:
            dots = ops.stack([memory.vdot(g, g, xla)] + [memory.vdot(g, m, xla) for m in old])
            weights = memory.attention_weights_from_dots(
                ops.reshape(dots, (4, 1)), self.decays, n)
        new = memory.update_memories(old, g, self.decays)
        for var, value in zip(mem_vars, new):
            self._store(var, value)
        if from_old:
            if isinstance(weights, tuple):  # fixed: Python floats, no tensor work
                c_g, c = memory.mix_coefficients(weights, self.decays, self.memory_mix)
            else:
                row = memory.mix_row(weights, self.decays, self.memory_mix, dtype)
                c_g, *c = ops.unstack(ops.reshape(row, (4,)), 4)
            effective = memory.effective_from_old(g, old, c_g, c)
        else:
            if mode == "attention":
                weights = memory.attention_weights(g, new, n, blocked=True)
            effective = memory.mix(g, memory.combine(weights, new), self.memory_mix)
        return effective, new, self._weights_for_stats(weights, dtype)

    def _memory_step_stacked(self, idx, g, mem_vars, n):
        """``_memory_step`` for a small tensor: few ops on ``[g; M_s; M_m; M_l]`` stacked."""
        dtype = g.dtype
        old = [m.value if m.dtype == dtype else ops.cast(m.value, dtype) for m in mem_vars]
        stacked, rows = memory.stack_rows(g, old)  # reads each memory once (a snapshot)
        mode = self.memory_blend_mode
        if mode == "fixed":
            weights = self.fixed_weights
        else:
            dots = memory.stacked_dots(rows, g)  # (4, 1): <g,g>, <g,M_i>
            if mode == "attention":
                weights = memory.attention_weights_from_dots(dots, self.decays, n)
            else:
                sq = ops.sum(ops.square(rows[1:]), axis=1)
                dots = ops.reshape(dots, (4,))
                weights = ops.reshape(self._adaptive_weights(
                    idx, memory.cosines_from_sums(dots[0], sq, dots[1:])), (1, 3))
        row = memory.mix_row(weights, self.decays, self.memory_mix, dtype)
        effective = memory.stacked_effective(row, rows, g.shape)
        new = memory.stacked_update_memories(stacked, self.decays)
        for var, value in zip(mem_vars, new):
            self._store(var, value)
        return effective, new, self._weights_for_stats(weights, dtype)

    def _memory_step_sparse(self, idx, g, mem_vars):
        """``_memory_step`` for a row-sparse gradient (``sparse.py``): the old memories are read
        once, the scores read only ``g``'s rows, and no table-sized gradient is made."""
        dtype = g.values.dtype
        old = [self._read_value(m, dtype) for m in mem_vars]
        mode = self.memory_blend_mode
        if mode == "fixed":
            weights = self.fixed_weights
        else:
            dots = ops.stack([sparse.sq_norm(g)] + [sparse.vdot(g, m) for m in old])
            if mode == "attention":
                weights = memory.attention_weights_from_dots(
                    ops.reshape(dots, (4, 1)), self.decays, int(np.prod(g.shape)))
            else:
                sq = ops.stack([memory.vdot(m, m) for m in old])
                weights = ops.reshape(self._adaptive_weights(
                    idx, memory.cosines_from_sums(dots[0], sq, dots[1:])), (1, 3))
        if isinstance(weights, tuple):
            c_g, c = memory.mix_coefficients(weights, self.decays, self.memory_mix)
        else:
            row = memory.mix_row(weights, self.decays, self.memory_mix, dtype)
            c_g, *c = ops.unstack(ops.reshape(row, (4,)), 4)
        effective = sparse.rowwise(
            lambda g_, *m_: memory.effective_from_old(g_, m_, c_g, c), g, *old)
        new = [self._store_rowwise(
            var, lambda g_, m_, d=d: memory.update_memories([m_], g_, [d])[0], g, m)
            for var, m, d in zip(mem_vars, old, self.decays)]
        return effective, new, self._weights_for_stats(weights, dtype)

    def _store_rowwise(self, var, fn, g, old):
        """``var <- fn(g, old)`` for a row-sparse ``g`` (``sparse.rowwise``); returns the new
        value.  A float32 state variable takes the dense pass ``fn(0, old)`` and then its
        rows in place (a scatter into the variable, no second table-sized tensor)."""
        if var.dtype != old.dtype:  # bfloat16 state: round the whole new value once
            value = sparse.rowwise(fn, g, old)
            self._store(var, value)
            return value
        rows = fn(g.values, sparse.gather(old, g.indices))  # from the old value, read first
        self.assign(var, fn(0.0, old))
        self.assign(var, sparse.as_indexed_slices(g._replace(values=rows)))  # scatter-update
        return var

    def _adaptive_weights(self, idx, cos):
        logits_var = self._blend_logits[idx]
        logits = memory.adaptive_logits_step(
            logits_var, cos, self.adaptive_rate, memory.ADAPTIVE_LOGIT_BOUND)
        self.assign(logits_var, logits)
        return ops.softmax(logits)

    @property
    def _records_stats(self) -> bool:
        """Whether the step being traced (or run eagerly) may record statistics."""
        return bool(self.stats_every) and self._stats_recording is not False

    def _weights_for_stats(self, weights, dtype):
        if not self._records_stats:
            return None
        if isinstance(weights, (list, tuple)):
            return ops.convert_to_tensor(weights, dtype)
        return ops.reshape(weights, (3,))

    def _record_stats(self, idx, variable, g, mems, weights, update):
        """Write STAT_FIELDS on (at least) the last applied update of each ``stats_every`` window.

        The write is a few ops whatever the mode: the inner products of
        ``[g; tiers; update; x]`` are one Gram matrix (one matmul of the stacked
        rows), and the fields are gathered from it.  Which steps write:

        * inside ``stats_recording(True)`` / ``(False)``: every step / none; the
          caller runs the recording function only on the window's steps
          (``stats.StatsWindow``, what the trainer does), so the other steps carry
          no statistics work at all;
        * otherwise (the optimizer in a plain ``model.fit``): the steps of the
          window (``_stats_due``, one comparison shared by all variables), under a
          ``cond`` per variable.  A graph-mode ``cond`` still walks its untaken
          branch on every step (measured in ``scripts/bench_tracking.py``).

        The last write of a window is the variable's last applied update in it.
        """
        step = self.iterations
        rows = [g, *mems, update]  # g: densified in the branch if row-sparse
        index = _stat_gather_index(len(mems))

        def write():
            import tensorflow as tf  # the fewest ops: matmul(transpose_b), gather

            f32 = "float32"
            stacked = tf.stack([tf.convert_to_tensor(sparse.to_dense(r))
                                for r in [*rows, variable]])  # (Keras variables are read)
            flat = tf.reshape(stacked, (len(rows) + 1, -1))
            gram = tf.reshape(tf.cast(tf.matmul(flat, flat, transpose_b=True), f32), (-1,))
            w = tf.zeros((3,), f32) if weights is None else tf.cast(weights, f32)
            values = tf.concat([gram, w, tf.cast(tf.reshape(step, (1,)), f32),
                                tf.zeros((1,), f32)], axis=0)
            self.assign(self._stats[idx], tf.gather(values, index))

        if self._stats_recording is None:
            ops.cond(self._stats_due(step), write, lambda: None)
        elif self._stats_recording:
            write()

    def stats_recording(self, record: bool) -> "_StatsRecording":
        """A context: steps traced (or run eagerly) inside record statistics on every step
        (``True``) or on none (``False``), with no per-step ``cond``.

        For a caller that counts steps on the host: it traces one train function
        each way and runs the recording one on the last ``longest_interval`` steps of
        each window (``stats.StatsWindow``).  A traced function keeps what it was traced
        with.  No effect with ``stats_every=0``.
        """
        if not isinstance(record, bool):
            raise ValueError(f"stats_recording: record={record!r}; allowed: True or False")
        return _StatsRecording(self, record)

    @property
    def longest_interval(self) -> int:
        """The largest update interval of any variable (after the optimizer is built)."""
        return max(self.intervals.values(), default=1)

    def _stats_due(self, step):
        """Whether ``step`` is one of the last ``longest_interval`` steps of its ``stats_every``
        window (``stats.in_stats_window``): each variable's last applied update of the window
        falls among them.  One tensor per traced graph, shared by the variables (one
        comparison per step, not one per variable)."""
        import tensorflow as tf

        due = lambda: in_stats_window(step, self.stats_every, self.longest_interval)  # noqa: E731
        if tf.executing_eagerly():
            return due()
        graph = tf.compat.v1.get_default_graph()
        if graph not in self._stats_due_by_graph:
            self._stats_due_by_graph[graph] = due()
        return self._stats_due_by_graph[graph]

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
            "state_dtype": self.state_dtype,
        })
        return config
