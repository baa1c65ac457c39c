"""The one conditional state update of the family, on every Keras backend: ``cond_assign``.

NOTE (backends): a step of the family sometimes updates state only when a condition holds
(a slow layer's update on the steps its interval allows, ``nested/intervals.py``; M3's slow
memory every ``frequency`` steps, ``m3.py``; a step skipped for NaN/inf gradients,
``nonfinite.py``).  On TensorFlow that is an ``ops.cond`` whose branches assign: only the
taken branch runs, so a skipped update costs nothing in graph mode.  JAX traces functional
code: an assignment inside ``lax.cond`` stores a tracer of the branch (``UnexpectedTracerError``),
eagerly and under ``jax.jit`` alike.  There (and on every backend but TensorFlow) we write it in
Keras' stateless style, as Keras' own optimizers do for JAX: both branches run from the same
state, then each variable takes ``where(pred, value after true_fn, value after false_fn)``;
under XLA that is a select fused into the update.  The choice is made at trace time, in
``cond_assign`` only; the TensorFlow path is the ``ops.cond`` it always was.
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
from keras import ops


def cond_assign(pred, true_fn: Callable, false_fn: Callable | None, variables: Sequence) -> None:
    """``true_fn()`` if the boolean scalar ``pred`` holds, else ``false_fn()`` (``None``: nothing),
    for their assignments to ``variables`` (module docstring).  ``variables`` must hold every
    variable either branch assigns (on other backends than TensorFlow one that is not listed
    keeps both branches' assignments); their return values are dropped."""
    if keras.backend.backend() == "tensorflow":
        ops.cond(pred, true_fn, false_fn if false_fn is not None else (lambda: None))
        return
    variables = [v for v in variables if v is not None]
    before = [v.value for v in variables]
    true_fn()
    after_true = [v.value for v in variables]
    if false_fn is not None:
        for var, old, new in zip(variables, before, after_true):
            if new is not old:
                var.assign(old)
        false_fn()
    for var, old, new in zip(variables, before, after_true):
        other = var.value if false_fn is not None else old
        if new is not other:  # (a variable neither branch assigned keeps its value)
            var.assign(ops.where(pred, new, other))
