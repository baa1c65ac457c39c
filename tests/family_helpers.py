"""Shared by the family optimizers' reference tests: variables, a gradient stream, and the
step-by-step comparison with a NumPy reference (eager, or compiled by XLA)."""

import numpy as np
import keras
import tensorflow as tf


def make_vars(shapes, dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    return [keras.Variable(rng.normal(size=s).astype(dtype), name=f"v{i}")
            for i, s in enumerate(shapes)]


def grad_stream(shapes, steps, seed=1):
    """Gradients with a persistent direction (drift) and noise, ``steps`` of them."""
    rng = np.random.default_rng(seed)
    drift = [rng.normal(size=s) for s in shapes]
    return [[d + rng.normal(size=s) for d, s in zip(drift, shapes)] for _ in range(steps)]


def stepper(opt, variables, jit):
    if jit:
        return tf.function(lambda g: opt.apply(g, variables), jit_compile=True)
    return lambda g: opt.apply(g, variables)


def follow_reference(opt, ref, variables, grads, jit, rtol=1e-9, atol=1e-9):
    """Apply ``grads`` with ``opt`` and ``ref.step``; the parameters must agree after every
    step (atol: Keras casts ``weight_decay`` through float32, 1.5e-8 relative for 0.05)."""
    params = [v.numpy() for v in variables]
    step = stepper(opt, variables, jit)
    for g in grads:
        step([tf.constant(x) for x in g])
        params = ref.step(params, g)
        for v, p in zip(variables, params):
            np.testing.assert_allclose(v.numpy(), p, rtol=rtol, atol=atol)
    return params
