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

On a GPU machine without TensorFlow, ``KERAS_BACKEND=jax python
nested_research/bench/optimizer.py --modes xla --sections optimizer,train,bytes`` runs
the same optimizer-only and training-step sections with Keras' JAX backend
(every step under ``jax.jit``; the rows whose intervals need a ``cond`` around
state updates, ``_k4*``, are TensorFlow-only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The variable sets have no model to take depths from: every variable is on interval 1.
warnings.filterwarnings("ignore", message=".*no layer depths are known.*")

import numpy as np  # noqa: E402

# ---------------------------------------------------------------- configurations
#: name -> (kind, NestedLearningOptimizer kwargs)
OPTIMIZERS = {
    "adam": ("adam", {}),
    "adamw": ("adamw", {}),
    "lion": ("lion", {}),
    "nested_none": ("nested", {"memory_blend_mode": "none"}),
    "nested_fixed": ("nested", {"memory_blend_mode": "fixed"}),
    "nested_attention": ("nested", {"memory_blend_mode": "attention"}),
    "nested_adaptive": ("nested", {"memory_blend_mode": "adaptive"}),
    "nested_attention_bf16": ("nested", {"memory_blend_mode": "attention",
                                         "state_dtype": "bfloat16"}),
    "nested_fixed_bf16": ("nested", {"memory_blend_mode": "fixed", "state_dtype": "bfloat16"}),
    # every variable on interval 4: without accumulation 3 of 4 steps run no optimizer math
    "nested_attention_k4": ("nested", {"memory_blend_mode": "attention", "auto_schedule": False,
                                       "default_interval": 4, "accumulate_gradients": False}),
    "nested_attention_k4_acc": ("nested", {"memory_blend_mode": "attention",
                                           "auto_schedule": False, "default_interval": 4,
                                           "accumulate_gradients": True}),
    # the cost of skip_nonfinite (one isfinite pass over the gradients and a cond per step)
    "nested_attention_skip": ("nested", {"memory_blend_mode": "attention",
                                         "skip_nonfinite": True}),
    "nested_fixed_skip": ("nested", {"memory_blend_mode": "fixed", "skip_nonfinite": True}),
}
TRAIN_OPTIMIZERS = ["adam", "nested_attention", "nested_fixed", "nested_none",
                    "nested_attention_bf16", "nested_attention_skip"]
PROFILE_OPTIMIZERS = ["adam", "nested_none", "nested_fixed", "nested_attention",
                      "nested_attention_bf16"]


def make_optimizer(name, learning_rate=1e-3):
    import keras
    from nested_research import NestedLearningOptimizer

    kind, kw = OPTIMIZERS[name]
    if kind == "adam":
        return keras.optimizers.Adam(learning_rate)
    if kind == "adamw":
        return keras.optimizers.AdamW(learning_rate)
    if kind == "lion":
        return keras.optimizers.Lion(learning_rate * 0.1)
    return NestedLearningOptimizer(learning_rate=learning_rate, **kw)


# ---------------------------------------------------------------- variable sets
def dense_shapes(width=1024, layers=4):
    out = []
    for i in range(layers):
        out += [(f"dense_{i}/kernel", (width, width)), (f"dense_{i}/bias", (width,))]
    return out


def transformer_shapes(d=128, layers=8, ff=512, vocab=512, seq=64, heads=4):
    out = [("embed/embeddings", (vocab, d)), ("pos_embed/embeddings", (seq, d))]
    hd = d // heads
    for i in range(layers):
        b = f"block{i}"
        out += [(f"{b}_ln1/gamma", (d,)), (f"{b}_ln1/beta", (d,))]
        for proj in ("query", "key", "value"):
            out += [(f"{b}_attn/{proj}/kernel", (d, heads, hd)),
                    (f"{b}_attn/{proj}/bias", (heads, hd))]
        out += [(f"{b}_attn/attention_output/kernel", (heads, hd, d)),
                (f"{b}_attn/attention_output/bias", (d,)),
                (f"{b}_ln2/gamma", (d,)), (f"{b}_ln2/beta", (d,)),
                (f"{b}_mlp1/kernel", (d, ff)), (f"{b}_mlp1/bias", (ff,)),
                (f"{b}_mlp2/kernel", (ff, d)), (f"{b}_mlp2/bias", (d,))]
    out += [("final_ln/gamma", (d,)), ("final_ln/beta", (d,)),
            ("logits/kernel", (d, vocab)), ("logits/bias", (vocab,))]
    return out


def variable_sets(quick):
    if quick:
        return {"dense4m": dense_shapes(width=64, layers=2),
                "transformer": transformer_shapes(d=16, layers=1, ff=32, vocab=32, seq=8)}
    return {"dense4m": dense_shapes(), "transformer": transformer_shapes()}


def _make_variables(spec, seed):
    import keras

    rng = np.random.default_rng(seed)
    return [keras.Variable((rng.normal(size=shape) * 0.02).astype("float32"),
                           name=name.replace("/", "_"))
            for name, shape in spec]


def _backend():
    import keras

    return keras.backend.backend()


def _make_grads(spec, seed):
    from keras import ops

    rng = np.random.default_rng(seed + 1)
    return [ops.convert_to_tensor((rng.normal(size=shape) * 1e-2).astype("float32"))
            for _, shape in spec]


def _load():
    """The 1-minute load average (other processes on a shared machine)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _sync(opt):
    return int(np.asarray(opt.iterations))


class _Step:
    """One optimizer step on ``variables``, compiled: ``step(grads)``; ``sync()`` waits for it.

    TensorFlow: ``optimizer.apply`` in a ``tf.function`` (graph mode, or XLA with ``jit``).
    JAX (``KERAS_BACKEND=jax``, always XLA): ``optimizer.stateless_apply`` under ``jax.jit``,
    the state carried from call to call and written back to the variables on ``sync()``.
    ``prepare`` (TensorFlow): applied to the gradients inside the compiled step.
    """

    def __init__(self, opt, variables, jit, prepare=None):
        self.opt, self.variables = opt, variables
        prepare = prepare or (lambda grads: grads)
        if _backend() == "jax":
            import jax

            self._fn = jax.jit(lambda ov, tv, g: opt.stateless_apply(ov, g, tv),
                               donate_argnums=(0, 1))
            self._state = ([v.value for v in opt.variables], [v.value for v in variables])
        else:
            import tensorflow as tf

            self._fn = tf.function(lambda grads: opt.apply(prepare(grads), variables),
                                   jit_compile=jit)

    def __call__(self, grads):
        if _backend() == "jax":
            ov, tv = self._state
            tv, ov = self._fn(ov, tv, grads)
            self._state = (ov, tv)
        else:
            self._fn(grads)

    def sync(self) -> int:
        if _backend() == "jax":
            import jax

            ov, tv = jax.block_until_ready(self._state)
            for var, value in zip(self.opt.variables, ov):
                var.assign(value)
            for var, value in zip(self.variables, tv):
                var.assign(value)
        return _sync(self.opt)


def _time_steps(step, grads, steps):
    """Seconds per call of ``step(grads)``, over ``steps`` calls after a sync."""
    step.sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(grads)
    step.sync()
    return (time.perf_counter() - t0) / steps


def _summary(times, names):
    med = {n: float(statistics.median(times[n])) for n in names}
    return {
        "seconds": med,
        "min_seconds": {n: float(min(times[n])) for n in names},
        "times": {n: [float(t) for t in times[n]] for n in names},
        "ratio_to_adam": {n: med[n] / med["adam"] for n in names},
        # the fastest block of each: less sensitive to other processes on a shared machine
        "ratio_to_adam_min": {n: min(times[n]) / min(times["adam"]) for n in names},
    }


def _alternate(runners, names, repeats, block):
    """``{name: [seconds per step, one per repeat]}``; the order rotates every repeat."""
    times = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(block(runners[name]))
    return times


def bench_optimizer_only(names, sets, modes, repeats, steps, warmup, log=print):
    import keras

    results = {}
    for set_name, spec in sets.items():
        grads = _make_grads(spec, 0)
        results[set_name] = {"params": int(sum(np.prod(s) for _, s in spec)),
                             "variables": len(spec)}
        for mode in modes:
            keras.backend.clear_session()
            runners = {}
            for name in names:
                variables = _make_variables(spec, 0)
                opt = make_optimizer(name)
                opt.build(variables)
                step = _Step(opt, variables, jit=(mode == "xla"))
                for _ in range(warmup):
                    step(grads)
                step.sync()
                runners[name] = step

            row = _summary(_alternate(runners, names, repeats,
                                      lambda step: _time_steps(step, grads, steps)), names)
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
        step = _Step(opt, table, jit=False, prepare=prepare)
        for _ in range(2):
            step(grads)
        step.sync()
        runners[name] = step
    names = list(runners)
    row = _summary(_alternate(runners, names, repeats,
                              lambda step: _time_steps(step, grads, steps)), names)
    row.update(rows=rows, width=width, looked_up=looked_up)
    log(f"  sparse {rows}x{width}, {looked_up} rows looked up: " + "  ".join(
        f"{n}={row['ratio_to_adam'][n]:.2f} ({1e3 * row['seconds'][n]:.2f} ms)" for n in names),
        flush=True)
    return row


# ---------------------------------------------------------------- full training step
def _workloads(quick):
    from nested_research.models import build_cnn, build_transformer

    rng = np.random.default_rng(0)
    batch = 16 if quick else 64

    def cnn():  # conf/model/cnn.yaml on mnist1d
        return build_cnn((40,), 10, filters=[32, 64, 64], kernel_size=3, dense_units=64,
                         global_pool="flatten")

    def transformer():  # conf/model/transformer.yaml
        return build_transformer((12,), 32, vocab_size=32, d_model=64, num_heads=4,
                                 num_layers=2, ff_dim=128)

    return {
        "cnn": (cnn, rng.normal(size=(batch, 40)).astype("float32"),
                rng.integers(0, 10, size=(batch,))),
        "transformer": (transformer, rng.integers(0, 32, size=(batch, 12)).astype("int32"),
                        rng.integers(0, 32, size=(batch, 12))),
    }


def _compiled_model(builder, name, jit):
    import keras

    from nested_research.optimizers.protocols import DepthScheduled

    keras.utils.set_random_seed(0)
    model = builder()
    opt = make_optimizer(name)
    if isinstance(opt, DepthScheduled) and _backend() != "jax":
        # (JAX: the interval conds update state, which jax.jit cannot; every layer on interval 1)
        opt.compute_depths_from_model(model)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    return model


def bench_train_step(names, workloads, modes, repeats, steps, warmup, quick, log=print):
    import keras

    from nested_research.optimizers.protocols import DepthScheduled

    def intervals(model):  # (built by the warm-up steps)
        opt = model.optimizer
        return opt.planned_intervals(model.trainable_variables) \
            if isinstance(opt, DepthScheduled) else [1]

    results = {}
    for wl, (builder, x, y) in _workloads(quick).items():
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
            cycle = math.lcm(*[k for m in runners.values() for k in intervals(m)])
            n_steps = cycle * max(1, -(-steps // cycle))

            def block(model):
                t0 = time.perf_counter()
                for _ in range(n_steps):
                    model.train_on_batch(xt, yt)
                _sync(model.optimizer)
                return (time.perf_counter() - t0) / n_steps

            row = _summary(_alternate(runners, names, repeats, block), names)
            row["steps_per_block"] = n_steps
            results[wl][mode] = row
            log(f"  train {wl:11s} {mode:5s} " + "  ".join(
                f"{n}={row['ratio_to_adam'][n]:.2f} ({1e3 * row['seconds'][n]:.2f} ms)"
                for n in names), flush=True)
    return results


# ---------------------------------------------------------------- state bytes
def _bytes_per_param(opt, variables):
    n = sum(int(np.prod(v.shape)) for v in variables)
    size = sum(int(np.prod(v.shape)) * np.dtype(str(v.dtype)).itemsize for v in opt.variables)
    return size / n


def state_bytes(names, workloads, quick):
    import keras

    from nested_research.optimizers.protocols import DepthScheduled

    keras.backend.clear_session()
    sets = {"dense4m": (None, _make_variables(dense_shapes(width=64 if quick else 1024), 0))}
    for wl, (builder, _, _) in _workloads(quick).items():
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
            fn = _Step(opt, var, jit=jit)._fn  # the tf.function (the profile is TensorFlow's)
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


# ---------------------------------------------------------------- accuracy
def accuracy_comparison(seeds, quick, log=print):
    """Final test accuracy with float32 and bfloat16 optimizer state (digits MLP, mnist1d CNN)."""
    from hydra import compose, initialize_config_dir
    from nested_research.training.job import run

    conf = conf_dir()
    workloads = {"digits_mlp": ["experiment=digits_mlp"],
                 "mnist1d_cnn": ["experiment=mnist1d_cnn"]}
    out = {}
    for wl, overrides in workloads.items():
        out[wl] = {}
        for dtype in ("float32", "bfloat16"):
            accs = []
            for seed in seeds:
                extra = overrides + [f"trainer.seed={seed}", "logger=none", "trainer.verbose=0",
                                     f"optimizer.params.state_dtype={dtype}"]
                if quick:
                    extra += ["trainer.epochs=1", "trainer.max_steps=5"]
                with initialize_config_dir(conf, version_base="1.3"):
                    cfg = compose("config", overrides=extra)
                with tempfile.TemporaryDirectory() as tmp:
                    run(cfg, tmp)
                    with open(os.path.join(tmp, "results.json")) as fh:
                        accs.append(float(json.load(fh)["metrics"]["test/accuracy"]))
            out[wl][dtype] = {"test_accuracy": accs, "mean": float(np.mean(accs)),
                              "std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0}
            log(f"  accuracy {wl:12s} {dtype:9s} {np.mean(accs):.4f} +- "
                f"{out[wl][dtype]['std']:.4f}  {accs}", flush=True)
    return out


# ---------------------------------------------------------------- report
def machine():
    import keras

    desc = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0], "keras": keras.__version__,
            "backend": _backend()}
    if _backend() == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        desc.update(jax=jax.__version__, tensorflow=None, gpus=[str(d) for d in gpus])
        if gpus:
            desc["gpu_name"] = getattr(gpus[0], "device_kind", None)  # (JAX's device: if known)
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        desc.update(tensorflow=tf.__version__, gpus=[g.name for g in gpus])
        if gpus:
            try:
                desc["gpu_name"] = tf.config.experimental.get_device_details(gpus[0]).get(
                    "device_name")
            except Exception:  # informational only
                pass
    try:
        with open("/proc/cpuinfo") as fh:
            desc["cpu_model"] = next(line.split(":", 1)[1].strip() for line in fh
                                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        desc["load_average"] = os.getloadavg()
    except OSError:
        pass
    return desc


def _table(header, rows):
    widths = [max(len(str(r[j])) for r in [header] + rows) for j in range(len(header))]
    fmt = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa
    return [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + \
        [fmt(r) for r in rows]


def format_tables(result) -> str:
    lines = []
    m = result["machine"]
    lines.append(f"machine: {m.get('cpu_model', '?')}, {m['cpu_count']} cores, "
                 f"GPUs: {m.get('gpu_name') or len(m['gpus'])}; "
                 f"{'JAX ' + str(m.get('jax')) if m.get('backend') == 'jax' else 'TF ' + str(m['tensorflow'])}, "
                 f"Keras {m['keras']}; 1-minute load average (start, end) by section: "
                 f"{result.get('load_average')}")
    cfg = result["config"]
    opt = result.get("optimizer", {})
    if opt:
        cols = [(s, md) for s in opt for md in cfg["modes"]]
        header = ["optimizer-only step / Adam"] + [f"{s} {md}" for s, md in cols]
        rows = [[n] + [f"{opt[s][md]['ratio_to_adam'][n]:.2f}" for s, md in cols]
                for n in cfg["optimizers"]]
        rows.append(["(Adam, ms per step)"] + [f"{1e3 * opt[s][md]['seconds']['adam']:.2f}"
                                               for s, md in cols])
        lines += [""] + _table(header, rows)
    tr = result.get("train", {})
    if tr:
        cols = [(w, md) for w in tr for md in cfg["train_modes"]]
        header = ["training step / Adam"] + [f"{w} {md}" for w, md in cols]
        rows = [[n] + [f"{tr[w][md]['ratio_to_adam'][n]:.2f}" for w, md in cols]
                for n in cfg["train_optimizers"]]
        rows.append(["(Adam, ms per step)"] + [f"{1e3 * tr[w][md]['seconds']['adam']:.2f}"
                                               for w, md in cols])
        lines += [""] + _table(header, rows)
    by = result.get("bytes", {})
    if by:
        cols = list(next(iter(by.values())))
        header = ["state bytes / parameter"] + cols
        lines += [""] + _table(header, [[n] + [f"{by[n][c]:.2f}" for c in cols] for n in by])
    sp = result.get("sparse")
    if sp:
        header = [f"sparse gradient, {sp['rows']}x{sp['width']} table, {sp['looked_up']} rows",
                  "ratio to Adam", "ms per step"]
        lines += [""] + _table(header, [[n, f"{sp['ratio_to_adam'][n]:.2f}",
                                         f"{1e3 * sp['seconds'][n]:.2f}"] for n in sp["seconds"]])
    prof = result.get("profile", {})
    if prof:
        header = ["profile (one variable)", "XLA words/param, 1024x1024", "XLA passes, 1024x1024",
                  "XLA kernels, 64x64", "graph ops, 64x64"]
        rows = [[n, f"{p['xla_1024x1024']['words_per_param']:.1f}",
                 p["xla_1024x1024"]["passes"], p["xla_64x64"]["kernels"], p["graph_64x64"]["ops"]]
                for n, p in prof.items()]
        lines += [""] + _table(header, rows)
    acc = result.get("accuracy", {})
    if acc:
        header = ["test accuracy, 3 seeds", "float32 state", "bfloat16 state"]
        rows = [[wl] + [f"{acc[wl][d]['mean']:.4f} +- {acc[wl][d]['std']:.4f}"
                        for d in ("float32", "bfloat16")] for wl in acc]
        lines += [""] + _table(header, rows)
    return "\n".join(lines)


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
            load = _load()
            result[section] = job()
            result["section_seconds"][section] = round(time.perf_counter() - t0, 1)
            result["load_average"][section] = [load, _load()]
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
