"""The optimizer-only step's time (``optimizer.apply`` of precomputed gradients): on the variable
sets in graph mode and under XLA (:func:`bench_optimizer_only`, section ``optimizer``) and on an
embedding table with an ``IndexedSlices`` gradient (:func:`bench_sparse`, section ``sparse``).
"""

from __future__ import annotations

import numpy as np

from nested_research.bench.setups import make_grads, make_optimizer, make_variables
from nested_research.bench.timing import Step, alternate, summary, time_steps


def bench_optimizer_only(names, sets, modes, repeats, steps, warmup, log=print):
    import keras

    results = {}
    for set_name, spec in sets.items():
        grads = make_grads(spec, 0)
        results[set_name] = {"params": int(sum(np.prod(s) for _, s in spec)),
                             "variables": len(spec)}
        for mode in modes:
            keras.backend.clear_session()
            runners = {}
            for name in names:
                variables = make_variables(spec, 0)
                opt = make_optimizer(name)
                opt.build(variables)
                step = Step(opt, variables, jit=(mode == "xla"))
                for _ in range(warmup):
                    step(grads)
                step.sync()
                runners[name] = step

            row = summary(alternate(runners, names, repeats,
                                      lambda step: time_steps(step, grads, steps)), names)
            results[set_name][mode] = row
            log(f"  optimizer {set_name:11s} {mode:5s} " + "  ".join(
                f"{n}={row['ratio_to_adam'][n]:.2f}" for n in names), flush=True)
    return results


# ---------------------------------------------------------------- sparse gradients
def bench_sparse(repeats, steps, quick, log=print):
    """An embedding table's step with an ``IndexedSlices`` gradient (graph mode): nested with
    the sparse rules (``sparse.py``) against the same gradient densified first, and Adam."""
    import keras
    import tensorflow as tf

    rows, width, looked_up = (2000, 16, 64) if quick else (200_000, 64, 2048)
    rng = np.random.default_rng(0)
    idx = tf.constant(rng.integers(0, rows, size=looked_up).astype("int32"))
    vals = tf.constant((rng.normal(size=(looked_up, width)) * 1e-2).astype("float32"))
    grads = [tf.IndexedSlices(vals, idx, tf.constant((rows, width), "int64"))]
    keras.backend.clear_session()
    densify = lambda gs: [tf.convert_to_tensor(g) for g in gs]  # noqa: E731 (in the step)
    runners = {}
    for name, opt_name, prepare in (("adam", "adam", None),
                                    ("nested_attention_sparse", "nested_attention", None),
                                    ("nested_attention_densified", "nested_attention", densify)):
        table = [keras.Variable(np.zeros((rows, width), "float32"), name="embeddings")]
        opt = make_optimizer(opt_name)
        opt.build(table)
        step = Step(opt, table, jit=False, prepare=prepare)
        for _ in range(2):
            step(grads)
        step.sync()
        runners[name] = step
    names = list(runners)
    row = summary(alternate(runners, names, repeats,
                              lambda step: time_steps(step, grads, steps)), names)
    row.update(rows=rows, width=width, looked_up=looked_up)
    log(f"  sparse {rows}x{width}, {looked_up} rows looked up: " + "  ".join(
        f"{n}={row['ratio_to_adam'][n]:.2f} ({1e3 * row['seconds'][n]:.2f} ms)" for n in names),
        flush=True)
    return row
