"""``NestedLearningOptimizer``: the thin Keras shell around the update rules.

Per trainable variable ``x`` with gradient ``g`` the optimizer applies, on the
steps its update interval allows (``intervals.py``)::

    g_hat = mean of the gradients accumulated since the last update  (accumulate_gradients)
    g_hat = low_rank(g_hat, compression_rank)                        (use_gradient_compression)
    t     = number of updates this variable has applied, this one included
    # memory on (memory_blend_mode in fixed / attention / adaptive):  see memory.py
    w     = retrieval weights of the tiers M (memory.retrieval_weights)
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
``short_term_weight`` ...); ``lr`` is ``learning_rate``.  The parameters are
declared once, in typed groups (``memory.MemoryParams``,
``intervals.IntervalParams``, ``compression.CompressionParams``,
``MomentParams``, ``lr_schedule.EpochParams``, ``StateParams``; the Hydra
groups mirror them), and ``family.FamilyOptimizer`` derives the constructor
keywords, validation, attributes and ``get_config`` from them.

Skipped steps (a variable with interval ``k > 1`` between updates): the
gradient is added to the accumulator (or dropped without accumulation) and
nothing else changes, so the memory decays per *applied* update.
Accumulated gradients are averaged, not summed: "interval k with
accumulation" equals "one step every k on the averaged gradient" (optax
``apply_every``).

State per variable: the three tiers stacked in one variable ``memory`` of
shape ``x.shape + (3,)`` (memory off: Adam's ``momentum``), ``velocity``
(and ``velocity_hat``), the ``accumulator`` of a slow layer, the adaptive
``blend_logits``, the update count and the statistics.

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
- The seed's ``steps_per_epoch`` / ``lr_*_fraction`` keywords wrap
  ``learning_rate`` in ``lr_schedule.PerEpochSchedule``, the schedule that the
  Hydra group ``lr_schedule=per_epoch`` builds: one learning-rate path.
- Keyword-only: every parameter but ``learning_rate`` is passed by name.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import ops

from nested_research.optimizers.nested import compression, intervals, memory

from nested_research.optimizers import sparse
from nested_research.optimizers.nested.depths import DepthRegistry
from nested_research.optimizers.family import FamilyOptimizer
from nested_research.core.hparams import HParams, boolean, choice, integer, param, real
from nested_research.optimizers.schedules import EpochParams, PerEpochSchedule
from nested_research.optimizers.nested.recorder import StatsRecorder
from nested_research.optimizers.nested.state_layout import add_state, convert_legacy_store

#: Storage dtypes of the memory tiers (and of the first moment with ``memory_blend_mode="none"``).
STATE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class MomentParams(HParams):
    """The Adam-style second moment (and the first moment with memory off)."""

    beta_1: float = param(0.9, real(0.0, 1.0, high_open=True))
    beta_2: float = param(0.999, real(0.0, 1.0, high_open=True))
    epsilon: float = param(1e-7, real(0.0, low_open=True))
    amsgrad: bool = param(False, boolean())


@dataclasses.dataclass(frozen=True)
class StateParams(HParams):
    """How the state is stored and inspected.

    ``stats_every``: record per-variable statistics in the step every this many
    steps (0: never); read them with ``memory_stats()`` (``recorder.py``).
    ``state_dtype``: storage of the tiers (memory off: the first moment) and the
    accumulators: ``"float32"`` (the variable's own dtype) or ``"bfloat16"``
    (10 instead of 16 optimizer bytes per parameter).  The second moment and
    the parameters keep the variable's dtype, and all math runs in it.

    NOTE (bfloat16 state): a tier or accumulator is computed in the variable's
    dtype from its widened value and rounded to nearest on store; the step
    uses the unrounded values.  bfloat16 keeps 8 significant bits, so an update
    ``(1 - d)(g - M)`` below half a unit in the last place of ``M`` is lost:
    the long tier (``1 - d = 1e-4``) only moves while ``|g - M| > ~20 |M|``,
    the medium tier (``6e-3``) while ``|g - M| > ~0.33 |M|``.
    """

    stats_every: int = param(0, integer(0))
    state_dtype: str = param("float32", choice(STATE_DTYPES))


@keras.saving.register_keras_serializable(package="nested_research")
class NestedLearningOptimizer(DepthRegistry, FamilyOptimizer):
    """Adam-style optimizer over a three-tier gradient memory, with per-layer intervals.

    The module docstring states the update rule; ``inspect.signature`` lists
    every keyword with its seed default.  Plus every ``keras.optimizers.Optimizer``
    keyword (``weight_decay``, ``clipnorm``, ``use_ema``, ...) and
    ``skip_nonfinite`` (``family.py``).  Depth registration
    (``compute_depths_from_model``, ``register_layer_depth``,
    ``register_variable_depth``) is ``depths.DepthRegistry``.
    """

    HPARAMS = {"memory": memory.MemoryParams, "intervals": intervals.IntervalParams,
               "compression": compression.CompressionParams, "moments": MomentParams,
               "epoch_lr": EpochParams, "state": StateParams, **FamilyOptimizer.HPARAMS}
    DEFAULT_NAME = "nested_learning"
    #: ``slots`` names -> the family-wide state roles (``state_norms.py``).
    STATE_ROLES = {"short": "fast", "medium": "medium", "long": "slow", "momentum": "fast",
                   "velocity": "second"}

    def __init__(self, learning_rate=0.001, name=None, **kwargs):
        epoch = EpochParams(**{k: kwargs[k] for k in EpochParams.names() if k in kwargs})
        if epoch.steps_per_epoch is not None:  # the seed's keywords: a front on the schedule
            learning_rate = PerEpochSchedule.for_run(
                learning_rate, steps_per_epoch=epoch.steps_per_epoch, **epoch.fractions())
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self._describe_schedule()
        self.stats = StatsRecorder(self.stats_every)
        self._init_depths(self.hparams["intervals"].variable_depths)

    # ------------------------------------------------------------ learning rate
    def _describe_schedule(self) -> None:
        """The seed's keywords (``hparams["epoch_lr"]``: ``steps_per_epoch``, the fractions)
        describe the schedule the optimizer runs, however it was given: by these keywords, by the
        trainer's ``lr_schedule`` group, or by ``set_steps_per_epoch``."""
        if isinstance(self._learning_rate, PerEpochSchedule):
            self.hparams = type(self.hparams)(
                {**self.hparams, "epoch_lr": EpochParams.of(self._learning_rate)})

    def set_steps_per_epoch(self, steps: int) -> None:
        """Turn on (or re-size) the per-epoch schedule; call it before the first ``fit`` (a
        traced train function keeps the rate it captured)."""
        epoch = dataclasses.replace(self.hparams["epoch_lr"], steps_per_epoch=steps)
        base = self._learning_rate
        if isinstance(base, PerEpochSchedule):
            base = base.initial_learning_rate
        elif isinstance(base, keras.Variable):  # the float32 rate, as its shortest decimal
            base = float(str(ops.convert_to_numpy(base).astype("float32")))
        self.learning_rate = PerEpochSchedule.for_run(
            base, steps_per_epoch=epoch.steps_per_epoch, **epoch.fractions())
        self._describe_schedule()

    @property
    def current_learning_rate(self) -> float:
        """The learning rate the next step will use (the schedule at ``iterations``)."""
        return float(ops.convert_to_numpy(self.learning_rate))

    # ------------------------------------------------------------ state
    @property
    def memory_on(self) -> bool:
        return self.hparams["memory"].on

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._intervals = self._resolve_intervals(var_list)
        dtype = self.state_dtype if self.state_dtype != "float32" else None
        # the tiers stacked, (3,) + shape (memory.py); memory off: Adam's first moment
        rows = 3 if self.memory_on else None
        self._tiers = add_state(self, var_list, "memory" if rows else "momentum", dtype, rows)
        self._velocities = add_state(self, var_list, "velocity")
        self._velocity_hats = add_state(self, var_list, "velocity_hat") if self.amsgrad else []
        adaptive = self.memory_blend_mode == "adaptive"
        logits = memory.initial_adaptive_logits(self.hparams["memory"].weights)
        self._blend_logits, self._accumulators, self._update_counts = [], [], []
        for var, k in zip(var_list, self._intervals):
            prefix = var.path.replace("/", "_")
            self._blend_logits.append(self.add_variable(
                (3,), keras.initializers.Constant(logits), var.dtype,
                name=f"{prefix}_blend_logits") if adaptive else None)
            self._accumulators.append(
                add_state(self, [var], "accumulator", dtype)[0]
                if k > 1 and self.accumulate_gradients else None)
            self._update_counts.append(
                self.add_variable((), "zeros", "float32", name=f"{prefix}_updates"))
            self.stats.add_variable(self, var)
        self.stats.longest = self.longest_interval

    def load_own_variables(self, store):
        """Keras' loading, after converting a store written with one variable per tier."""
        super().load_own_variables(convert_legacy_store(self, store))

    def convert_saved_state(self, arrays: list) -> list:
        """Saved values of ``variables`` (a checkpoint's, in order) in the current layout;
        ``ValueError`` naming what changed when they fit neither layout (``state_layout.py``)."""
        store = convert_legacy_store(self, {str(i): a for i, a in enumerate(arrays)})
        return [store[str(i)] for i in range(len(self.variables))]

    def slots(self, index: int) -> dict:
        """The optimizer state of trainable variable ``index`` by name (tensors or ``None``):
        ``short`` / ``medium`` / ``long`` (memory off: ``momentum``), ``velocity``,
        ``velocity_hat``, ``accumulator``, ``blend_logits``, ``updates``, ``stats``."""
        state = self._tiers[index]
        out = dict(zip(memory.TIERS, ops.unstack(state, 3, axis=0))) if self.memory_on \
            else {"momentum": state}
        out.update(velocity=self._velocities[index],
                   velocity_hat=self._velocity_hats[index] if self.amsgrad else None,
                   accumulator=self._accumulators[index],
                   blend_logits=self._blend_logits[index], updates=self._update_counts[index],
                   stats=self.stats.variables[index] if self.stats.variables else None)
        return out

    # ------------------------------------------------------------ step
    def update_step(self, gradient, variable, learning_rate):
        idx = self._get_variable_index(variable)
        g = sparse.prepare_gradient(gradient, variable, self.use_gradient_compression)
        lr = ops.cast(learning_rate, variable.dtype)
        apply = lambda g_: self._apply(idx, variable, g_, lr)  # noqa: E731
        intervals.interval_step(self, self.iterations, self._intervals[idx], self.warmup_steps,
                                self._accumulators[idx], g, apply, self._assigned(idx, variable))

    def _assigned(self, idx, variable) -> list:
        """Every variable an applied update of ``variable`` assigns (``_apply``), ``None``s
        dropped: what ``conditional.cond_assign`` selects on backends other than TensorFlow."""
        own = [variable, self._tiers[idx], self._velocities[idx], self._blend_logits[idx],
               self._update_counts[idx]]
        if self.amsgrad:
            own.append(self._velocity_hats[idx])
        if self.stats.variables:
            own.append(self.stats.variables[idx])
        return [v for v in own if v is not None]

    def _apply(self, idx, variable, g, lr):
        """One applied update of ``variable`` (module docstring)."""
        dtype = variable.dtype
        count = self._update_counts[idx]
        t = ops.add(count, 1.0)  # this update's number, counting it (read once)
        self.assign(count, t)
        t = ops.cast(t, dtype)
        if self.use_gradient_compression:
            g = compression.low_rank(g, self.compression_rank)
        bc2 = 1.0 - ops.power(self.beta_2, t)
        weights = None
        if self.memory_on:
            num, v, tiers, weights = self._memory_step(idx, g, dtype)
            root = ops.sqrt(bc2)
            alpha, eps = lr * root, self.epsilon * root
        else:  # keras.optimizers.Adam, op for op (with this variable's own count t)
            beta_1, beta_2 = self.beta_1, self.beta_2
            state = self._tiers[idx]
            num = sparse.store(self, state, lambda g_, m_: m_ + (g_ - m_) * (1.0 - beta_1), g,
                               sparse.read(state, dtype))
            tiers = [num]
            alpha = lr * ops.sqrt(bc2) / (1.0 - ops.power(beta_1, t))
            eps, v = self.epsilon, self._velocities[idx]
            if isinstance(g, sparse.RowSparse):
                sparse.store(self, v, lambda g_, v_: v_ + (g_ * g_ - v_) * (1.0 - beta_2), g,
                             sparse.read(v, dtype))
            else:
                self.assign_add(v, (ops.square(g) - v) * (1.0 - beta_2))
        if self.amsgrad:
            v_hat = self._velocity_hats[idx]
            self.assign(v_hat, ops.maximum(v_hat, v))
            v = v_hat
        # lr * e / (sqrt(v / bc2) + eps) == (lr sqrt(bc2)) e / (sqrt(v) + eps sqrt(bc2))
        update = ops.divide(ops.multiply(num, alpha), ops.add(ops.sqrt(v), eps))
        if self.stats.active:
            tiers = ops.unstack(tiers, 3, axis=0) if self.memory_on else tiers
            self.stats.record(idx, self.iterations,
                              [sparse.to_dense(g), *tiers, update, variable], weights)
        self.assign_sub(variable, update)

    def _memory_step(self, idx, g, dtype):
        """Tiers, retrieval and second moment of one applied update (``memory.py``); returns
        ``(e, v, new tiers, weights)``.  bfloat16 tiers are stored rounded, and ``e`` uses the
        unrounded values."""
        state = self._tiers[idx]
        old = sparse.read(state, dtype)
        updated = memory.scores_updated_tiers(self.memory_blend_mode)
        weights = self._retrieve(idx, g, old) if not updated else None
        decays, mix, beta_2 = self.decays, self.memory_mix, self.beta_2
        new = sparse.store(self, state, lambda g_, m_: memory.update_tiers(m_, g_, decays),
                           g, old)
        if updated:
            weights = self._retrieve(idx, g, new)
        xla = sparse.in_xla_context()
        num = sparse.elementwise(
            lambda g_, m_: memory.effective(g_, m_, weights, mix, fused=xla), g, new)
        v = self._velocities[idx]
        self.assign_add(v, (ops.square(num) - v) * (1.0 - beta_2))
        return num, v, new, weights

    def _retrieve(self, idx, g, tiers):
        """The retrieval weights (``memory.retrieval_weights``) from ``g`` and ``tiers``."""
        p = self.hparams["memory"]
        if p.memory_blend_mode == "fixed":
            return p.weights
        sums = memory.tier_sums(g, tiers, p.uses_cosines)
        logits_var = self._blend_logits[idx]
        w, logits = memory.retrieval_weights(p, *sums, sparse.num_elements(g), logits_var)
        if logits is not None:
            self.assign(logits_var, logits)
        return w

    # ------------------------------------------------------------ inspection
    def memory_stats(self) -> dict[str, dict]:
        """Per-layer statistics ``{layer path: {stat: value}}`` (``layer_stats.py``)."""
        from nested_research.optimizers.nested.layer_stats import layer_stats
        return layer_stats(self)

    def print_memory_stats(self) -> None:
        """Print ``memory_stats()`` as a table, one row per layer."""
        from nested_research.optimizers.nested.layer_stats import format_table
        print(format_table(self.memory_stats()))

    def stats_recording(self, record: bool):
        """``self.stats.recording(record)`` (``recorder.StatsRecorder``)."""
        return self.stats.recording(record)

    # ------------------------------------------------------------ config
    @property
    def steps_per_epoch(self):
        return self.hparams["epoch_lr"].steps_per_epoch

    @property
    def decays(self):
        return self.hparams["memory"].decays

    @property
    def fixed_weights(self):
        return self.hparams["memory"].weights

    def get_config(self):
        config = super().get_config()
        if self.steps_per_epoch is not None:  # the schedule as the seed's keywords describe it
            base = self._learning_rate.initial_learning_rate
            config["learning_rate"] = (
                keras.optimizers.schedules.serialize(base)
                if isinstance(base, keras.optimizers.schedules.LearningRateSchedule)
                else float(base))
        config["layer_update_intervals"] = \
            [list(p) for p in self.layer_update_intervals] or None
        config["variable_depths"] = self.variable_depths or None
        return config

