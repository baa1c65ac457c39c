"""The one mechanism for a step with NaN/inf values: every replica skips it, or none does.

:class:`NonFiniteSkip` is what both users build on: the family optimizers' ``skip_nonfinite``
(``family.py``: the optimizer's own ``apply``, flags of the gradients) and the trainer's
``NonFiniteGuard`` (``training/guard.py``: ``model.fit``'s step, flags of the loss and of the
gradients, plus its streak of bad losses and a loss scale to halve)::

    flags    = [group has a NaN/inf value for group in groups]      (float vector, local)
    total    = flags summed over all replicas
    skip     = any(total);  skipped_steps += skip;  also(total)
    skip ? on_skip(total) : apply(*args)

Under a ``tf.distribute`` strategy the decision must be global, or replicas
diverge and the gradient all-reduce inside ``apply`` hangs or spreads the NaN.
Strategies that use ``merge_call`` (``MirroredStrategy``, multi-worker) take
the decision and the conditional apply in cross-replica context
(``merge_call``, then ``call_for_each_replica``), as Keras'
``LossScaleOptimizer`` does: a ``cond`` in replica context may not contain the
optimizer's own ``merge_call``.  There the local replicas' flags are summed
without a collective op (an extra collective launched beside the gradient
all-reduce got its instance keys out of order between devices when the
process had trained under another ``MirroredStrategy`` before: "Shape
mismatch in the collective instance"); only replicas on other workers add a
``strategy.reduce``.  Strategies without ``merge_call`` all-reduce the flags
in replica context.  Other backends (JAX) have no strategy: the flags are the total, and the
conditional apply is ``conditional.cond_assign`` over the ``variables`` the caller names (the
step runs, then every variable selects its old or its new value: the escaped tracer of a
``cond`` whose branches assign, avoided; see the NOTE there).  Without ``variables`` they take
a plain ``cond``.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import ops

from nested_research.optimizers.conditional import cond_assign


def all_finite(tensors):
    """A boolean scalar: every value of every tensor (``None`` skipped, ``IndexedSlices`` by
    their values) is finite."""
    oks = []
    for t in tensors:
        if t is None:
            continue
        # (a backend's row-sparse gradient, e.g. IndexedSlices: its fields, no common type)
        values = t.values if hasattr(t, "values") and hasattr(t, "indices") else t
        oks.append(ops.all(ops.isfinite(values)))
    if not oks:
        return ops.convert_to_tensor(True)
    return ops.all(ops.stack(oks))


class NonFiniteSkip:
    """Skips a step with NaN/inf values (module docstring) and counts it in ``counter`` (an int64
    scalar variable, ``aggregation="only_first_replica"``: updated once per step)."""

    def __init__(self, counter):
        self.counter = counter

    @staticmethod
    def flags(*groups):
        """A float32 vector: 1 for each group of tensors that holds a NaN/inf value, else 0."""
        return ops.cast(ops.stack([ops.logical_not(all_finite(g)) for g in groups]), "float32")

    def apply(self, flags, apply: Callable, args: tuple, also: Callable | None = None,
              on_skip: Callable | None = None, variables=None):
        """``apply(*args)`` unless a flag is set on some replica; returns ``skip``.  ``also(total)``
        runs once per step with the flags' total (a streak to keep); ``on_skip(total)`` runs
        instead of ``apply`` on a skipped step.  ``variables``: every variable ``apply`` and
        ``on_skip`` assign (backends other than TensorFlow, ``apply_unless_flagged``)."""
        def decide(total):
            skip = ops.sum(total) > 0
            self.counter.assign_add(ops.cast(skip, "int64"))
            if also is not None:
                also(total)
            return skip, (lambda: on_skip(total)) if on_skip is not None else (lambda: None)

        return apply_unless_flagged(flags, apply, args, decide, variables)


def apply_unless_flagged(flags, apply: Callable, args: tuple, decide: Callable, variables=None):
    """``apply(*args)`` unless ``decide(total)`` says skip (module docstring); returns ``skip``.

    ``decide(total) -> (skip, on_skip)`` runs once per step where the total of ``flags`` over
    all replicas is known (it may update counters); ``on_skip()`` runs instead of ``apply``.
    ``variables``: every variable ``apply`` and ``on_skip`` assign, for backends other than
    TensorFlow (module docstring; ``None``: a plain ``cond``).
    """
    if keras.backend.backend() != "tensorflow":
        skip, on_skip = decide(flags)
        if variables is None:
            ops.cond(skip, on_skip, lambda: apply(*args))
        else:
            cond_assign(skip, on_skip, lambda: apply(*args), variables)
        return skip
    import tensorflow as tf

    distributed = tf.distribute.has_strategy()
    merge = distributed and not tf.__internal__.distribute.strategy_supports_no_merge_call()
    if not merge:
        if distributed and tf.distribute.get_strategy().num_replicas_in_sync > 1:
            flags = tf.distribute.get_replica_context().all_reduce("SUM", flags)
        skip, on_skip = decide(flags)
        ops.cond(skip, on_skip, lambda: apply(*args))
        return skip

    def cross_replica(strategy, flags_, *args_):
        local = strategy.experimental_local_results(flags_)
        if len(local) < strategy.num_replicas_in_sync:  # replicas on other workers
            total = strategy.reduce("SUM", flags_, axis=None)
        else:  # all replicas are local: no collective (see the module docstring)
            total = tf.add_n(list(local))
        skip_, on_skip_ = decide(total)
        ops.cond(skip_, on_skip_,
                 lambda: strategy.extended.call_for_each_replica(apply, args=args_))
        return skip_

    return tf.distribute.get_replica_context().merge_call(cross_replica, args=(flags, *args))
