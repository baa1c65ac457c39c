"""The full training step's time (``model.train_on_batch``) of the CNN and the Transformer, nested
with depth scheduling against Adam, in blocks of whole interval cycles (:func:`bench_train_step`,
section ``train``).
"""

from __future__ import annotations

import math
import time

from nested_research.bench.setups import make_optimizer, train_workloads
from nested_research.bench.timing import alternate, backend, summary, sync_optimizer
from nested_research.optimizers.protocols import DepthScheduled


def _intervals(model) -> list[int]:
    """The update intervals of ``model``'s optimizer (built by the warm-up steps)."""
    opt = model.optimizer
    return opt.planned_intervals(model.trainable_variables) if isinstance(opt, DepthScheduled) \
        else [1]


def _compiled_model(builder, name, jit):
    import keras

    keras.utils.set_random_seed(0)
    model = builder()
    opt = make_optimizer(name)
    if isinstance(opt, DepthScheduled) and backend() != "jax":
        # (JAX: the interval conds update state, which jax.jit cannot; every layer on interval 1)
        opt.compute_depths_from_model(model)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    return model


def bench_train_step(names, workloads, modes, repeats, steps, warmup, quick, log=print):
    import keras

    results = {}
    for wl, (builder, x, y) in train_workloads(quick).items():
        if wl not in workloads:
            continue
        results[wl] = {}
        xt, yt = keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y)
        for mode in modes:
            keras.backend.clear_session()
            runners = {}
            for name in names:
                model = _compiled_model(builder, name, jit=(mode == "xla"))
                for _ in range(warmup):
                    model.train_on_batch(xt, yt)
                runners[name] = model
            # a block is whole cycles of the slowest layers' intervals, for every optimizer
            cycle = math.lcm(*[k for m in runners.values() for k in _intervals(m)])
            n_steps = cycle * max(1, -(-steps // cycle))

            def block(model):
                t0 = time.perf_counter()
                for _ in range(n_steps):
                    model.train_on_batch(xt, yt)
                sync_optimizer(model.optimizer)
                return (time.perf_counter() - t0) / n_steps

            row = summary(alternate(runners, names, repeats, block), names)
            row["steps_per_block"] = n_steps
            results[wl][mode] = row
            log(f"  train {wl:11s} {mode:5s} " + "  ".join(
                f"{n}={row['ratio_to_adam'][n]:.2f} ({1e3 * row['seconds'][n]:.2f} ms)"
                for n in names), flush=True)
    return results
