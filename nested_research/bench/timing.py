"""The timing machinery of the optimizer benchmark: a compiled optimizer step (:class:`Step`,
TensorFlow graph/XLA or JAX), seconds per step over a block (:func:`time_steps`), blocks of the
rows alternated in a rotating order (:func:`alternate`) and their medians and ratios to Adam
(:func:`summary`); the Keras backend and the load average.
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np


def backend():
    import keras

    return keras.backend.backend()


def load_average():
    """The 1-minute load average (other processes on a shared machine)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def sync_optimizer(opt):
    return int(np.asarray(opt.iterations))


class Step:
    """One optimizer step on ``variables``, compiled: ``step(grads)``; ``sync()`` waits for it.

    TensorFlow: ``optimizer.apply`` in a ``tf.function`` (graph mode, or XLA with ``jit``).
    JAX (``KERAS_BACKEND=jax``, always XLA): ``optimizer.stateless_apply`` under ``jax.jit``,
    the state carried from call to call and written back to the variables on ``sync()``.
    ``prepare`` (TensorFlow): applied to the gradients inside the compiled step.
    """

    def __init__(self, opt, variables, jit, prepare=None):
        self.opt, self.variables = opt, variables
        prepare = prepare or (lambda grads: grads)
        if backend() == "jax":
            import jax

            self._fn = jax.jit(lambda ov, tv, g: opt.stateless_apply(ov, g, tv),
                               donate_argnums=(0, 1))
            self._state = ([v.value for v in opt.variables], [v.value for v in variables])
        else:
            import tensorflow as tf

            self._fn = tf.function(lambda grads: opt.apply(prepare(grads), variables),
                                   jit_compile=jit)

    def __call__(self, grads):
        if backend() == "jax":
            ov, tv = self._state
            tv, ov = self._fn(ov, tv, grads)
            self._state = (ov, tv)
        else:
            self._fn(grads)

    def sync(self) -> int:
        if backend() == "jax":
            import jax

            ov, tv = jax.block_until_ready(self._state)
            for var, value in zip(self.opt.variables, ov):
                var.assign(value)
            for var, value in zip(self.variables, tv):
                var.assign(value)
        return sync_optimizer(self.opt)


def time_steps(step, grads, steps):
    """Seconds per call of ``step(grads)``, over ``steps`` calls after a sync."""
    step.sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(grads)
    step.sync()
    return (time.perf_counter() - t0) / steps


def summary(times, names):
    med = {n: float(statistics.median(times[n])) for n in names}
    return {
        "seconds": med,
        "min_seconds": {n: float(min(times[n])) for n in names},
        "times": {n: [float(t) for t in times[n]] for n in names},
        "ratio_to_adam": {n: med[n] / med["adam"] for n in names},
        # the fastest block of each: less sensitive to other processes on a shared machine
        "ratio_to_adam_min": {n: min(times[n]) / min(times["adam"]) for n in names},
    }


def alternate(runners, names, repeats, block):
    """``{name: [seconds per step, one per repeat]}``; the order rotates every repeat."""
    times = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(block(runners[name]))
    return times
