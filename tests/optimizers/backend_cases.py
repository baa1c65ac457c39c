"""The optimizer cases of ``test_backends.py``, run on one Keras backend in this process.

``python backend_cases.py OUT_DIR`` with ``KERAS_BACKEND`` set (one process per backend: the
backend is chosen before Keras is imported) runs every case of ``CASES`` for 30 steps of the
same gradients (fixed seed), eagerly (``optimizer.apply``) and compiled (TensorFlow:
``tf.function(jit_compile=True)`` around ``apply``; JAX: ``jax.jit`` of ``stateless_apply``, as
Keras' JAX trainer runs it), and writes ``OUT_DIR/<case>-<mode>.npz`` (the trainable variables,
then the optimizer's variables) or the error into ``OUT_DIR/results.json``.  The cases in
``FIT`` also train a tiny MLP in a compiled ``model.fit``; their losses go to the same file.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np

STEPS = 30
SHAPES = {"l0/kernel": (8, 6), "l0/bias": (6,), "l1/kernel": (6, 4), "l1/bias": (4,)}
DEPTHS = {"l0/kernel": 0, "l0/bias": 0, "l1/kernel": 1, "l1/bias": 1}
#: Steps whose gradients hold a NaN / an inf (the ``skip_nonfinite`` cases).
NONFINITE_STEPS = {7: np.nan, 19: np.inf}

NL, ADEMAMIX, M3, DELTA = "NestedLearningOptimizer", "AdEMAMix", "M3", "DeltaMomentum"
_DEPTH = dict(variable_depths=DEPTHS, max_interval=4)
_PATTERN = dict(auto_schedule=False, layer_update_intervals=[["l0/", 3]], default_interval=1,
                warmup_steps=2)

#: ``{case: (optimizer class name, keywords)}``; ``*_skip`` cases see non-finite gradients.
CASES = {
    "nl_fixed": (NL, dict(memory_blend_mode="fixed")),
    "nl_attention_dot": (NL, dict(memory_blend_mode="attention")),
    "nl_attention_cosine": (NL, dict(memory_blend_mode="attention", attention_scoring="cosine")),
    "nl_adaptive": (NL, dict(memory_blend_mode="adaptive")),
    "nl_memory_off": (NL, dict(memory_blend_mode="none")),
    "nl_amsgrad": (NL, dict(memory_blend_mode="attention", amsgrad=True)),
    "nl_amsgrad_memory_off": (NL, dict(memory_blend_mode="none", amsgrad=True)),
    "nl_depth_accumulate": (NL, dict(memory_blend_mode="attention", **_DEPTH)),
    "nl_depth_drop": (NL, dict(memory_blend_mode="adaptive", accumulate_gradients=False,
                               **_DEPTH)),
    "nl_pattern_accumulate": (NL, dict(memory_blend_mode="fixed", **_PATTERN)),
    "nl_pattern_drop": (NL, dict(memory_blend_mode="none", accumulate_gradients=False,
                                 amsgrad=True, **_PATTERN)),
    "nl_bfloat16": (NL, dict(memory_blend_mode="attention", state_dtype="bfloat16")),
    "nl_bfloat16_depth": (NL, dict(memory_blend_mode="fixed", state_dtype="bfloat16",
                                   **_DEPTH)),
    "nl_skip": (NL, dict(memory_blend_mode="attention", skip_nonfinite=True, **_DEPTH)),
    "nl_stats": (NL, dict(memory_blend_mode="attention", stats_every=5, **_DEPTH)),
    "nl_compression": (NL, dict(memory_blend_mode="fixed", use_gradient_compression=True,
                                compression_rank=2)),
    "ademamix": (ADEMAMIX, dict()),
    "ademamix_warmups": (ADEMAMIX, dict(alpha_warmup_steps=10, beta_3_warmup_steps=20)),
    "ademamix_skip": (ADEMAMIX, dict(skip_nonfinite=True, weight_decay=0.01)),
    "m3": (M3, dict(learning_rate=1e-3, frequency=4)),
    "m3_skip": (M3, dict(learning_rate=1e-3, frequency=4, alpha=0.0, skip_nonfinite=True)),
    "delta_momentum": (DELTA, dict(learning_rate=0.01)),
    "delta_momentum_adam": (DELTA, dict(learning_rate=1e-3, preconditioner="adam")),
    "delta_momentum_skip": (DELTA, dict(learning_rate=0.01, skip_nonfinite=True)),
}
#: Cases that also train in a compiled ``model.fit``.
FIT = ("nl_depth_accumulate", "nl_pattern_drop", "nl_skip", "ademamix_warmups", "m3",
       "delta_momentum")
MODES = ("eager", "compiled")


def gradients(case: str) -> list[list[np.ndarray]]:
    """The 30 steps' gradients (seed 0), non-finite at ``NONFINITE_STEPS`` for ``*_skip``."""
    rng = np.random.default_rng(0)
    steps = [[rng.normal(size=s).astype("float32") * 0.1 for s in SHAPES.values()]
             for _ in range(STEPS)]
    if case.endswith("_skip"):
        for step, value in NONFINITE_STEPS.items():
            steps[step][1][2] = value
    return steps


def initial_values() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=s).astype("float32") for s in SHAPES.values()]


def make(case: str):
    import keras

    import nested_research.optimizers as family

    name, kwargs = CASES[case]
    variables = []
    for (path, _), value in zip(SHAPES.items(), initial_values()):
        scope, leaf = path.split("/")
        with keras.name_scope(scope):
            variables.append(keras.Variable(value, name=leaf))
    return getattr(family, name)(**kwargs), variables


def run(case: str, mode: str) -> dict[str, np.ndarray]:
    import keras

    opt, variables = make(case)
    opt.build(variables)
    steps = gradients(case)
    backend = keras.backend.backend()
    if mode == "eager":
        for grads in steps:
            opt.apply([keras.ops.convert_to_tensor(g) for g in grads], variables)
    elif backend == "tensorflow":
        import tensorflow as tf

        step = tf.function(lambda grads: opt.apply(grads, variables), jit_compile=True)
        for grads in steps:
            step([tf.constant(g) for g in grads])
    else:
        import jax

        step = jax.jit(opt.stateless_apply)
        trainable = [v.value for v in variables]
        state = [v.value for v in opt.variables]
        for grads in steps:
            trainable, state = step(state, [jax.numpy.asarray(g) for g in grads], trainable)
        for var, value in zip(variables, trainable):
            var.assign(value)
        for var, value in zip(opt.variables, state):
            var.assign(value)
    out = {f"var{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(variables)}
    for i, v in enumerate(opt.variables):
        out[f"opt{i}:{v.path}"] = keras.ops.convert_to_numpy(
            keras.ops.cast(v, "float32") if v.dtype == "bfloat16" else v)
    return out


def fit(case: str) -> list[float]:
    """Losses of 3 epochs of a tiny MLP in a compiled ``model.fit``."""
    import keras

    import nested_research.optimizers as family

    keras.utils.set_random_seed(0)
    name, kwargs = CASES[case]
    kwargs = {k: v for k, v in kwargs.items() if k != "variable_depths"}
    opt = getattr(family, name)(**kwargs)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu",
                                                                    name="l0"),
                              keras.layers.Dense(3, name="l1")])
    if hasattr(opt, "compute_depths_from_model"):
        opt.compute_depths_from_model(model)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=True)
    rng = np.random.default_rng(2)
    x = rng.normal(size=(128, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")
    history = model.fit(x, y, batch_size=16, epochs=4, verbose=0, shuffle=False)
    return [float(v) for v in history.history["loss"]]


def main(out_dir: str) -> None:
    results = {}
    for case in CASES:
        for mode in MODES:
            try:
                np.savez(os.path.join(out_dir, f"{case}-{mode}.npz"), **run(case, mode))
                results[f"{case}-{mode}"] = "ok"
            except Exception as err:  # noqa: BLE001  (the test reports it)
                results[f"{case}-{mode}"] = "".join(
                    traceback.format_exception_only(type(err), err)).strip()[-2000:]
    for case in FIT:
        try:
            results[f"{case}-fit"] = fit(case)
        except Exception as err:  # noqa: BLE001
            results[f"{case}-fit"] = "".join(
                traceback.format_exception_only(type(err), err)).strip()[-2000:]
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
