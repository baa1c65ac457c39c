"""Memory of the optimizer: its state bytes per parameter (:func:`state_bytes`, section ``bytes``)
and the memory traffic and kernel/op counts of one variable's step, read off the optimised XLA HLO
and the graph (:func:`hlo_traffic`, :func:`profile`, section ``profile``).
"""

from __future__ import annotations

import re

import numpy as np

from nested_research.bench.setups import (dense_shapes, make_optimizer, make_variables,
                                          train_workloads)
from nested_research.bench.timing import Step
from nested_research.optimizers.protocols import DepthScheduled


# ---------------------------------------------------------------- state bytes
def _bytes_per_param(opt, variables):
    n = sum(int(np.prod(v.shape)) for v in variables)
    size = sum(int(np.prod(v.shape)) * np.dtype(str(v.dtype)).itemsize for v in opt.variables)
    return size / n


def state_bytes(names, workloads, quick):
    import keras

    keras.backend.clear_session()
    sets = {"dense4m": (None, make_variables(dense_shapes(width=64 if quick else 1024), 0))}
    for wl, (builder, _, _) in train_workloads(quick).items():
        if wl in workloads:
            model = builder()
            sets[f"{wl} (depths)"] = (model, model.trainable_variables)
    out = {}
    for name in names:
        out[name] = {}
        for label, (model, variables) in sets.items():
            opt = make_optimizer(name)
            if model is not None and isinstance(opt, DepthScheduled):
                opt.compute_depths_from_model(model)
            opt.build(variables)
            out[name][label] = _bytes_per_param(opt, variables)
    return out


# ---------------------------------------------------------------- profile
_INSTR = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\S+?)(?:\{[^}]*\})? (\w[\w-]*)\((.*?)\)(.*)$")
_SHAPE = re.compile(r"^(pred|s\d+|u\d+|f\d+|bf16)\[([\d,]*)\]$")
_BYTES = {"pred": 1, "bf16": 2, "f16": 2, "f32": 4, "f64": 8, "s32": 4, "s64": 8, "u32": 4}


def _shape_bytes(shape):
    m = _SHAPE.match(shape)
    if not m:
        return 0
    dims = [int(d) for d in m.group(2).split(",") if d]
    return int(np.prod(dims)) * _BYTES.get(m.group(1), 4)


def hlo_traffic(hlo: str, n: int):
    """Words (4 bytes) per parameter that each full-size instruction of the entry reads/writes."""
    entry = hlo[hlo.index("\nENTRY"):]
    shapes, rows = {}, []
    for line in entry.splitlines()[1:]:
        m = _INSTR.match(line)
        if not m:
            continue
        name, shape, opcode, operands, rest = m.groups()
        shapes[name] = shape
        if opcode in ("parameter", "constant", "bitcast", "tuple", "get-tuple-element"):
            continue
        args = re.findall(r"%([\w.\-]+)", operands)
        read = sum(_shape_bytes(shapes.get(a, "")) for a in args)
        written = _shape_bytes(shape)
        if max(read, written) < n:  # scalars and small vectors: not a pass over the data
            continue
        kind = opcode if opcode != "fusion" else re.sub(r"[._]?\d+$", "", name)
        rows.append({"op": kind, "read": read / (4 * n), "written": written / (4 * n)})
    return {"words_per_param": sum(r["read"] + r["written"] for r in rows),
            "passes": len(rows), "ops": rows}


def _entry_ops(hlo: str) -> int:
    """Instructions of the optimised HLO entry that run (kernels: fusions, dots, copies ...)."""
    entry = hlo[hlo.index("\nENTRY"):]
    ops_ = [m.group(3) for m in map(_INSTR.match, entry.splitlines()[1:]) if m]
    return sum(op not in ("parameter", "constant", "bitcast", "tuple", "get-tuple-element")
               for op in ops_)


def profile(names, log=print):
    """Per variable: XLA memory traffic of a 1024x1024 step (words per parameter, passes),
    and the number of kernels (XLA) / ops (graph mode) of a small 64x64 variable's step."""
    import collections
    import keras
    import tensorflow as tf

    out = {}
    for name in names:
        row = {}
        for label, shape, jit in (("xla_1024x1024", (1024, 1024), True),
                                  ("xla_64x64", (64, 64), True),
                                  ("graph_64x64", (64, 64), False)):
            keras.backend.clear_session()
            var = [keras.Variable(np.zeros(shape, "float32"), name="w")]
            opt = make_optimizer(name)
            opt.build(var)
            grads = [tf.zeros(shape)]
            fn = Step(opt, var, jit=jit)._fn  # the tf.function (the profile is TensorFlow's)
            if jit:
                hlo = fn.experimental_get_compiler_ir(grads)(stage="optimized_hlo")
                row[label] = hlo_traffic(hlo, int(np.prod(shape)))
                row[label]["kernels"] = _entry_ops(hlo)
            else:
                graph = fn.get_concrete_function(grads).graph
                kinds = collections.Counter(op.type for op in graph.get_operations()
                                            if op.type not in ("Const", "Placeholder", "NoOp"))
                row[label] = {"ops": int(sum(kinds.values())), "by_type": dict(kinds)}
        out[name] = row
        big = row["xla_1024x1024"]
        log(f"  profile {name:22s} xla words/param {big['words_per_param']:5.1f} in "
            f"{big['passes']} passes; small variable: {row['xla_64x64']['kernels']} XLA kernels, "
            f"{row['graph_64x64']['ops']} graph ops", flush=True)
    return out
