"""How the optimizer's state variables are created, and how an older layout is read.

``add_state`` creates one state variable per trainable variable (``None``
for variables Keras overwrites with their gradient), of the variable's shape
or with a trailing axis of ``tiers`` (the stacked memory tiers), in the
variable's dtype or another (bfloat16 state), placed beside the variable
under a ``tf.distribute`` strategy as Keras' own slots are.

Layout history.  Up to version 0.1.0 the three memory tiers were three
variables per trainable variable (``..._short_memory``, ``..._medium_memory``,
``..._long_memory``, one variable after the other), followed by the
velocities; now they are one variable ``..._memory`` of shape
``(3,) + shape``.  Everything else kept its order.  ``convert_legacy_store`` reads a ``.keras`` file written with
the old layout into the new one (the tiers stacked in their order); a store
that matches neither layout is refused with one message that says what
changed.
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np

LEGACY_TIER_NAMES = ("short_memory", "medium_memory", "long_memory")


def _beside(opt, var):
    """Create variables next to ``var`` (TensorFlow distribution strategies), as Keras does."""
    strategy = getattr(opt, "_distribution_strategy", None)  # (Keras: TensorFlow backend only)
    if strategy is None:
        return contextlib.nullcontext()
    return strategy.extended.colocate_vars_with(
        var.value if isinstance(var, keras.Variable) else var)


def add_state(opt, var_list, name: str, dtype: str | None = None, tiers: int | None = None):
    """One state variable named ``<variable path>_<name>`` per variable of ``var_list``."""
    out = []
    for var in var_list:
        if opt._overwrite_variable_with_gradient(var):
            out.append(None)
        elif dtype is None and tiers is None:
            out.append(opt.add_variable_from_reference(var, name=name))
        else:
            shape = ((tiers,) if tiers else ()) + tuple(var.shape)
            with _beside(opt, var):
                out.append(opt.add_variable(shape, "zeros", dtype or var.dtype,
                                            name=f"{var.path.replace('/', '_')}_{name}"))
    return out


def convert_legacy_store(opt, store):
    """``store`` (Keras' saved optimizer variables, keys ``"0" .. "n-1"``) in the current
    layout: as it is when it already is; converted when it has the layout before 0.2.0."""
    n = len(opt.variables)
    keys = len(store.keys())
    if keys == n or n == 0 or not opt.memory_on:
        return store
    stacks = [v for v in opt._tiers if v is not None]
    k = len(stacks)
    extra = 2 * k  # before: three tier variables per variable, now one stack
    if keys != n + extra:
        raise ValueError(
            f"optimizer '{opt.name}': the saved state has {keys} variables; this optimizer has "
            f"{n} (and would read {n + extra} in the layout before 0.2.0, one variable per "
            "memory tier). The state was written with another configuration "
            "(memory_blend_mode, amsgrad, intervals, stats_every, state_dtype) or another "
            "model; load it with the configuration it was saved with.")
    first = min(i for i, v in enumerate(opt.variables) if any(v is s for s in stacks))
    out = {}
    for i, var in enumerate(opt.variables):
        if first <= i < first + k:
            j = i - first
            parts = [np.asarray(store[str(first + 3 * j + t)]) for t in range(3)]
            value = np.stack(parts, axis=0)
        else:
            value = store[str(i if i < first else i + extra)]
        if tuple(np.shape(value)) != tuple(var.shape):
            raise ValueError(
                f"optimizer '{opt.name}': saved variable {i} has shape {tuple(np.shape(value))}, "
                f"the optimizer's '{var.path}' has {tuple(var.shape)}; the state was written "
                "for another model or configuration")
        out[str(i)] = value
    return out
