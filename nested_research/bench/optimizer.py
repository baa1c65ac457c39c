"""Optimizer speed and memory: ``NestedLearningOptimizer`` against Keras Adam, AdamW and Lion.

``python -m nested_research.bench.optimizer`` (about 6 minutes on 2 CPU cores), or
``--quick`` for a smoke run on tiny sizes.  In one process, alternating the
optimizers inside every repeat (the order rotates), after warm-up, with medians
over the repeats, it measures:

``optimizer``
    the optimizer-only step (``optimizer.apply`` of precomputed gradients in one
    ``tf.function``), in graph mode and under XLA (``jit_compile=True``), on
    ``dense4m`` (four 1024x1024 kernels and biases, 4.2M parameters) and
    ``transformer`` (134 small variables, 1.7M parameters: embeddings, layer
    norms, attention and MLP kernels).  Rows: ``nested`` in each blend mode,
    with ``state_dtype="bfloat16"``, with every variable on interval 4 without
    (``_k4``) and with (``_k4_acc``) accumulation, and Keras Adam, AdamW, Lion.
``train``
    the full training step (``model.train_on_batch``) of the project's CNN on
    (40,) mnist1d-like inputs and Transformer on (12,) tokens of a 32-word
    vocabulary (random data, batch 64), nested with depth scheduling
    (``compute_depths_from_model``) against Adam, graph mode and XLA; each
    timed block is whole cycles of the layers' intervals (60 steps).
``bytes``
    optimizer state bytes per trainable parameter (on ``dense4m`` and on the two
    models with depth scheduling, whose slow layers add gradient accumulators).
``sparse``
    an embedding table's step (200000x64, 2048 rows looked up, graph mode) with an
    ``IndexedSlices`` gradient: nested ``attention`` on its sparse path, the same
    with the gradient densified first, and Adam.
``profile``
    why the ratios are what they are: the full-size memory traffic of one
    1024x1024 variable's step under XLA, read off the optimised HLO (words of
    4 bytes per parameter, by fusion), and the op count of a small variable's
    step in graph mode.
``accuracy`` (``--accuracy``; about 10 minutes)
    final test accuracy of digits (MLP) and mnist1d (CNN) with float32 and
    bfloat16 optimizer state, 3 seeds each, through ``nested_research.training.job.run``.

It prints the tables (ratios to Adam measured in the same run) and writes
everything, raw times included, as JSON (``--out``).

On a GPU machine without TensorFlow, ``KERAS_BACKEND=jax python -m
nested_research.bench.optimizer --modes xla --sections optimizer,train,bytes`` runs
the same optimizer-only and training-step sections with Keras' JAX backend
(every step under ``jax.jit``; the rows whose intervals need a ``cond`` around
state updates, ``_k4*``, are TensorFlow-only).

This module is the command (:func:`main`: the flags, the sections run in order, the JSON); the
sections are :mod:`.optimizer_only` (``optimizer``, ``sparse``), :mod:`.training_step`
(``train``), :mod:`.memory` (``bytes``, ``profile``) and :mod:`.accuracy`, on the rows and
variable sets of :mod:`.setups`, timed by :mod:`.timing`, printed by :mod:`.report`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

from nested_research.bench.accuracy import accuracy_comparison
from nested_research.bench.memory import profile, state_bytes
from nested_research.bench.optimizer_only import bench_optimizer_only, bench_sparse
from nested_research.bench.report import format_tables, machine
from nested_research.bench.setups import (OPTIMIZERS, PROFILE_OPTIMIZERS, TRAIN_OPTIMIZERS,
                                          variable_sets)
from nested_research.bench.timing import load_average
from nested_research.bench.training_step import bench_train_step


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke run)")
    p.add_argument("--out", default="outputs/bench_optimizer.json", help="JSON output path")
    p.add_argument("--sections", default="optimizer,train,bytes,sparse,profile",
                   help="comma list of optimizer,train,bytes,sparse,profile,accuracy")
    p.add_argument("--accuracy", action="store_true", help="also run the accuracy comparison")
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                   help="optimizer rows (adam is always included)")
    p.add_argument("--modes", default="graph,xla")
    p.add_argument("--sets", default="dense4m,transformer", help="optimizer-only variable sets")
    p.add_argument("--workloads", default="cnn,transformer", help="training-step models")
    p.add_argument("--train-modes", default=None, help="modes of the training step (--modes)")
    p.add_argument("--repeats", type=int, default=None, help="timed blocks per optimizer")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per timed block")
    p.add_argument("--train-steps", type=int, default=None, help="training steps per block")
    p.add_argument("--seeds", default="0,1,2", help="seeds of the accuracy comparison")
    args = p.parse_args(argv)
    # The variable sets have no model to take depths from: every variable is on interval 1.
    warnings.filterwarnings("ignore", message=".*no layer depths are known.*")

    sections = [s for s in args.sections.split(",") if s]
    if args.accuracy and "accuracy" not in sections:
        sections.append("accuracy")
    names = ["adam"] + [n for n in args.optimizers.split(",") if n and n != "adam"]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        p.error(f"unknown optimizers {unknown}; known: {list(OPTIMIZERS)}")
    modes = [m for m in args.modes.split(",") if m]
    train_modes = modes if args.train_modes is None else \
        [m for m in args.train_modes.split(",") if m]
    if not set(modes + train_modes) <= {"graph", "xla"}:
        p.error(f"--modes: {modes + train_modes}; allowed: graph, xla")
    if os.environ.get("KERAS_BACKEND") == "jax" and set(modes + train_modes) != {"xla"}:
        p.error("KERAS_BACKEND=jax compiles every step with XLA: use --modes xla")
    workloads = [w for w in args.workloads.split(",") if w]
    if not set(workloads) <= {"cnn", "transformer"}:
        p.error(f"--workloads: {workloads}; allowed: cnn, transformer")
    quick = args.quick
    repeats = args.repeats or (2 if quick else 11)
    steps = args.steps or (2 if quick else 4)  # 4: one cycle of the interval-4 rows
    train_steps = args.train_steps or (3 if quick else 60)
    train_names = [n for n in TRAIN_OPTIMIZERS if n in names]
    profile_names = [n for n in PROFILE_OPTIMIZERS if n in names]
    sets = {k: v for k, v in variable_sets(quick).items() if k in args.sets.split(",")}

    import keras  # noqa: F401  (after argument errors: importing TF takes seconds)

    command = sys.argv if argv is None else ["nested_research/bench/optimizer.py"] + list(argv)
    result = {"machine": machine(), "command": " ".join(["python"] + command),
              "config": {"quick": quick, "repeats": repeats, "steps": steps,
                         "train_steps": train_steps, "modes": modes, "optimizers": names,
                         "train_optimizers": train_names, "sets": list(sets),
                         "workloads": workloads, "train_modes": train_modes,
                         "optimizer_kwargs": {n: OPTIMIZERS[n][1] for n in names}}}
    jobs = {
        "optimizer": lambda: bench_optimizer_only(names, sets, modes, repeats, steps,
                                                  warmup=2 if quick else 3),
        "train": lambda: bench_train_step(train_names, workloads, train_modes,
                                          max(2, repeats // 2), train_steps,
                                          warmup=2 if quick else 10, quick=quick),
        "bytes": lambda: state_bytes(names, workloads, quick),
        "sparse": lambda: bench_sparse(repeats, steps, quick),
        "profile": lambda: profile(profile_names),
        "accuracy": lambda: accuracy_comparison([int(s) for s in args.seeds.split(",")], quick),
    }
    t_start = time.perf_counter()
    result["section_seconds"], result["load_average"] = {}, {}
    for section, job in jobs.items():
        if section in sections:
            print(f"{section} ...", flush=True)
            t0 = time.perf_counter()
            load = load_average()
            result[section] = job()
            result["section_seconds"][section] = round(time.perf_counter() - t0, 1)
            result["load_average"][section] = [load, load_average()]
    result["wall_seconds"] = time.perf_counter() - t_start
    print()
    print(format_tables(result))
    out = os.path.abspath(args.out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"\nwrote {out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
