"""In-step statistics: what an optimizer records on the steps the statistics are read for.

``StatsRecorder`` is the optimizer's public handle on its statistics
(``NestedLearningOptimizer.stats``): the optimizer calls ``record`` with the
rows of one applied update, and the recorder decides which steps write:

* inside ``recording(True)`` / ``recording(False)`` (trace-time): every step /
  none, with no per-step ``cond``: a caller that counts steps on the host
  (``training.stats_window.StatsWindow``, what the trainer does) traces one train function
  each way and runs the recording one only on the window's steps;
* otherwise (the optimizer in a plain ``model.fit``): the steps of the window
  (``in_stats_window``: the last ``longest`` steps of each ``every``-step
  window, one comparison per traced graph shared by all variables), under a
  ``cond`` per variable.

Per variable it keeps ``STAT_FIELDS``: raw sums, so that layers aggregate
exactly (``layer_stats.aggregate``).  The inner products of the rows
``[g; tiers; update; x]`` are one Gram matrix (one matmul) from which the
fields are gathered.
"""

from __future__ import annotations

import weakref

import keras
import numpy as np
from keras import ops

from nested_research.core import checks

#: Per-variable fields recorded in the step (``stats_every > 0``).
STAT_FIELDS = (
    "grad_sq", "mem_sq_short", "mem_sq_medium", "mem_sq_long",
    "dot_short", "dot_medium", "dot_long",
    "weight_short", "weight_medium", "weight_long",
    "update_sq", "param_sq", "step",
)


def in_stats_window(step, every: int, longest: int):
    """Whether the 0-based ``step`` is one of the last ``longest`` steps of its ``every``-step
    window (``step mod every >= every - longest``): a variable whose interval is at most
    ``longest`` applies its last update of the window among them.  ``step``: an int (a bool
    comes back) or a tensor (a boolean tensor)."""
    if isinstance(step, (int, np.integer)):
        return step % every >= every - longest
    return ops.greater_equal(ops.mod(step, every), every - longest)


def _gather_index(n_tiers: int) -> np.ndarray:
    """Where each of ``STAT_FIELDS`` sits in ``[gram.flat, w_0, w_1, w_2, step, 0]``, the Gram
    matrix being that of the rows ``[g, tier_1 .. tier_n, update, x]`` (missing tiers read 0)."""
    r = n_tiers + 3
    zero = r * r + 4

    def gram(i, j):
        return i * r + j

    def tier(t):
        return t + 1 if t < n_tiers else None
    index = [gram(0, 0)]
    index += [gram(tier(t), tier(t)) if tier(t) else zero for t in range(3)]
    index += [gram(0, tier(t)) if tier(t) else zero for t in range(3)]
    index += [r * r, r * r + 1, r * r + 2]
    index += [gram(r - 2, r - 2), gram(r - 1, r - 1), r * r + 3]
    return np.asarray(index, "int32")


class _Recording:
    """``StatsRecorder.recording``'s context (entered on every train-function call: cheap)."""

    __slots__ = ("recorder", "record", "previous")

    def __init__(self, recorder, record: bool):
        self.recorder, self.record = recorder, record

    def __enter__(self):
        self.previous, self.recorder.mode = self.recorder.mode, self.record
        return self.recorder

    def __exit__(self, *exc):
        self.recorder.mode = self.previous
        return False


class StatsRecorder:
    """The in-step statistics of one optimizer (module docstring).

    ``every``: record every this many steps (0: never).  ``add_variable`` creates a
    variable's record; ``longest`` (the optimizer's longest interval) sets the window.
    """

    def __init__(self, every: int):
        self.every = int(every)
        self.mode = None  # None: cond per step; True / False: inside recording()
        self.variables: list = []
        self.longest = 1
        self._due = weakref.WeakKeyDictionary()

    def add_variable(self, opt, var) -> None:
        """Create ``var``'s record (one float32 vector of ``STAT_FIELDS``) in ``opt``; the
        optimizer calls this in ``build``, in its order of variables."""
        self._assign = opt.assign
        if self.every:
            self.variables.append(opt.add_variable(
                (len(STAT_FIELDS),), "zeros", "float32",
                name=f"{var.path.replace('/', '_')}_stats"))

    @property
    def active(self) -> bool:
        """Whether the step being traced (or run eagerly) may record."""
        return bool(self.every) and self.mode is not False

    def recording(self, record: bool) -> _Recording:
        """A context: steps traced (or run eagerly) inside record on every step (``True``) or on
        none (``False``), with no per-step ``cond``; a traced function keeps what it was traced
        with.  No effect with ``every=0``."""
        return _Recording(self, checks.check_bool("record", record))

    def _is_due(self, step):
        import tensorflow as tf

        if tf.executing_eagerly():
            return in_stats_window(step, self.every, self.longest)
        graph = tf.compat.v1.get_default_graph()
        if graph not in self._due:
            self._due[graph] = in_stats_window(step, self.every, self.longest)
        return self._due[graph]

    def record(self, idx: int, step, rows: list, weights) -> None:
        """Write variable ``idx``'s fields from ``rows = [g, tier_1 .. tier_n, update, x]``
        (dense tensors of one shape; ``n`` in 1..3) and the retrieval ``weights`` (length 3,
        or ``None``), on the steps the module docstring says."""
        if not self.active:
            return
        if keras.backend.backend() != "tensorflow":
            self._record_keras(idx, step, rows, weights)
            return
        import tensorflow as tf

        index = _gather_index(len(rows) - 3)

        def write():
            f32 = "float32"
            flat = tf.stack([tf.reshape(tf.convert_to_tensor(r), (-1,)) for r in rows])
            gram = tf.reshape(tf.cast(tf.matmul(flat, flat, transpose_b=True), f32), (-1,))
            w = tf.zeros((3,), f32) if weights is None else \
                tf.cast(tf.reshape(tf.convert_to_tensor(weights), (3,)), f32)
            values = tf.concat([gram, w, tf.cast(tf.reshape(step, (1,)), f32),
                                tf.zeros((1,), f32)], axis=0)
            self._assign(self.variables[idx], tf.gather(values, index))

        if self.mode is None:
            ops.cond(self._is_due(step), write, lambda: None)
        else:
            write()

    def _record_keras(self, idx: int, step, rows: list, weights) -> None:
        """``record`` in Keras ops, for backends other than TensorFlow (JAX): the same fields,
        the window's conditional written as ``conditional.cond_assign``."""
        from nested_research.optimizers.conditional import cond_assign

        index = _gather_index(len(rows) - 3)

        def write():
            f32 = "float32"
            flat = ops.stack([ops.reshape(ops.convert_to_tensor(r), (-1,)) for r in rows])
            gram = ops.reshape(ops.cast(ops.matmul(flat, ops.transpose(flat)), f32), (-1,))
            w = ops.zeros((3,), f32) if weights is None else \
                ops.cast(ops.reshape(ops.convert_to_tensor(weights), (3,)), f32)
            values = ops.concatenate([gram, w, ops.cast(ops.reshape(step, (1,)), f32),
                                      ops.zeros((1,), f32)], axis=0)
            self._assign(self.variables[idx], ops.take(values, index))

        if self.mode is None:
            cond_assign(in_stats_window(step, self.every, self.longest), write, None,
                        [self.variables[idx]])
        else:
            write()
