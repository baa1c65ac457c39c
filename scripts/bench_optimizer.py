"""Optimizer speed and memory: ``NestedLearningOptimizer`` against Keras Adam, AdamW and Lion.

``python scripts/bench_optimizer.py`` (a few minutes on 2 CPU cores), or
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
    (``compute_depths_from_model``) against Adam, graph mode and XLA.
``bytes``
    optimizer state bytes per trainable parameter (on ``dense4m`` and on the two
    models with depth scheduling, whose slow layers add gradient accumulators).
``profile``
    why the ratios are what they are: the full-size memory traffic of one
    1024x1024 variable's step under XLA, read off the optimised HLO (words of
    4 bytes per parameter, by fusion), and the op count of a small variable's
    step in graph mode.
``accuracy`` (``--accuracy``; about 10 minutes)
    final test accuracy of digits (MLP) and mnist1d (CNN) with float32 and
    bfloat16 optimizer state, 3 seeds each, through ``nested_research.train.run``.

It prints the tables (ratios to Adam measured in the same run) and writes
everything, raw times included, as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
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
}
TRAIN_OPTIMIZERS = ["adam", "nested_attention", "nested_fixed", "nested_none",
                    "nested_attention_bf16"]
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


def _make_grads(spec, seed):
    import tensorflow as tf

    rng = np.random.default_rng(seed + 1)
    return [tf.constant((rng.normal(size=shape) * 1e-2).astype("float32")) for _, shape in spec]


def _sync(opt):
    return int(np.asarray(opt.iterations))


def _step_function(opt, variables, jit):
    import tensorflow as tf

    def step(grads):
        opt.apply(grads, variables)

    return tf.function(step, jit_compile=jit)


def _summary(times, names):
    med = {n: float(statistics.median(times[n])) for n in names}
    return {
        "seconds": med,
        "min_seconds": {n: float(min(times[n])) for n in names},
        "times": {n: [float(t) for t in times[n]] for n in names},
        "ratio_to_adam": {n: med[n] / med["adam"] for n in names},
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
                fn = _step_function(opt, variables, jit=(mode == "xla"))
                for _ in range(warmup):
                    fn(grads)
                _sync(opt)
                runners[name] = (fn, opt)

            def block(runner):
                fn, opt = runner
                _sync(opt)
                t0 = time.perf_counter()
                for _ in range(steps):
                    fn(grads)
                _sync(opt)
                return (time.perf_counter() - t0) / steps

            row = _summary(_alternate(runners, names, repeats, block), names)
            results[set_name][mode] = row
            log(f"  optimizer {set_name:11s} {mode:5s} " + "  ".join(
                f"{n}={row['ratio_to_adam'][n]:.2f}" for n in names), flush=True)
    return results


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

    keras.utils.set_random_seed(0)
    model = builder()
    opt = make_optimizer(name)
    if hasattr(opt, "compute_depths_from_model"):
        opt.compute_depths_from_model(model)
    model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=jit)
    return model


def bench_train_step(names, workloads, modes, repeats, steps, warmup, quick, log=print):
    import keras
    import tensorflow as tf

    results = {}
    for wl, (builder, x, y) in _workloads(quick).items():
        if wl not in workloads:
            continue
        results[wl] = {}
        xt, yt = tf.constant(x), tf.constant(y)
        for mode in modes:
            keras.backend.clear_session()
            runners = {}
            for name in names:
                model = _compiled_model(builder, name, jit=(mode == "xla"))
                for _ in range(warmup):
                    model.train_on_batch(xt, yt)
                runners[name] = model

            def block(model):
                t0 = time.perf_counter()
                for _ in range(steps):
                    model.train_on_batch(xt, yt)
                _sync(model.optimizer)
                return (time.perf_counter() - t0) / steps

            row = _summary(_alternate(runners, names, repeats, block), names)
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

    out = {}
    spec = dense_shapes(width=64 if quick else 1024, layers=4)
    workloads = {k: v for k, v in _workloads(quick).items() if k in workloads}
    for name in names:
        variables = _make_variables(spec, 0)
        opt = make_optimizer(name)
        opt.build(variables)
        row = {"dense4m": _bytes_per_param(opt, variables)}
        for wl, (builder, _, _) in workloads.items():
            keras.backend.clear_session()
            model = builder()
            opt = make_optimizer(name)
            if hasattr(opt, "compute_depths_from_model"):
                opt.compute_depths_from_model(model)
            opt.build(model.trainable_variables)
            row[f"{wl} (depths)"] = _bytes_per_param(opt, model.trainable_variables)
        out[name] = row
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


def profile(names, log=print):
    """XLA memory traffic of one 1024x1024 variable's step, graph-mode op count of a small one."""
    import collections
    import keras
    import tensorflow as tf

    out = {}
    for name in names:
        row = {}
        for label, shape, jit in (("xla_1024x1024", (1024, 1024), True),
                                  ("graph_64x64", (64, 64), False)):
            keras.backend.clear_session()
            var = [keras.Variable(np.zeros(shape, "float32"), name="w")]
            opt = make_optimizer(name)
            opt.build(var)
            grads = [tf.zeros(shape)]
            fn = _step_function(opt, var, jit=jit)
            if jit:
                hlo = fn.experimental_get_compiler_ir(grads)(stage="optimized_hlo")
                row[label] = hlo_traffic(hlo, int(np.prod(shape)))
            else:
                graph = fn.get_concrete_function(grads).graph
                kinds = collections.Counter(op.type for op in graph.get_operations()
                                            if op.type not in ("Const", "Placeholder", "NoOp"))
                row[label] = {"ops": int(sum(kinds.values())), "by_type": dict(kinds)}
        out[name] = row
        log(f"  profile {name:22s} xla words/param {row['xla_1024x1024']['words_per_param']:5.1f}"
            f" in {row['xla_1024x1024']['passes']} passes; graph ops {row['graph_64x64']['ops']}",
            flush=True)
    return out


# ---------------------------------------------------------------- accuracy
def accuracy_comparison(seeds, quick, log=print):
    """Final test accuracy with float32 and bfloat16 optimizer state (digits MLP, mnist1d CNN)."""
    from hydra import compose, initialize_config_dir
    from nested_research.train import run

    conf = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")
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
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    desc = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0], "tensorflow": tf.__version__,
            "keras": keras.__version__, "gpus": [g.name for g in gpus]}
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
                 f"GPUs: {m.get('gpu_name') or len(m['gpus'])}; TF {m['tensorflow']}, "
                 f"Keras {m['keras']}; load average at the end {m.get('load_average_end')}")
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
    prof = result.get("profile", {})
    if prof:
        header = ["profile", "XLA words/param (1024x1024)", "XLA full-size passes",
                  "graph-mode ops (64x64 variable)"]
        rows = [[n, f"{p['xla_1024x1024']['words_per_param']:.1f}",
                 p["xla_1024x1024"]["passes"], p["graph_64x64"]["ops"]] for n, p in prof.items()]
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
    p.add_argument("--sections", default="optimizer,train,bytes,profile",
                   help="comma list of optimizer,train,bytes,profile,accuracy")
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
    workloads = [w for w in args.workloads.split(",") if w]
    if not set(workloads) <= {"cnn", "transformer"}:
        p.error(f"--workloads: {workloads}; allowed: cnn, transformer")
    quick = args.quick
    repeats = args.repeats or (2 if quick else 9)
    steps = args.steps or (2 if quick else 6)
    train_steps = args.train_steps or (3 if quick else 40)
    train_names = [n for n in TRAIN_OPTIMIZERS if n in names]
    profile_names = [n for n in PROFILE_OPTIMIZERS if n in names]
    sets = {k: v for k, v in variable_sets(quick).items() if k in args.sets.split(",")}

    import keras  # noqa: F401  (after argument errors: importing TF takes seconds)

    command = sys.argv if argv is None else ["scripts/bench_optimizer.py"] + list(argv)
    result = {"machine": machine(), "command": " ".join(["python"] + command),
              "config": {"quick": quick, "repeats": repeats, "steps": steps,
                         "train_steps": train_steps, "modes": modes, "optimizers": names,
                         "train_optimizers": train_names, "sets": list(sets),
                         "workloads": workloads, "train_modes": train_modes,
                         "optimizer_kwargs": {n: OPTIMIZERS[n][1] for n in names}}}
    jobs = {
        "optimizer": lambda: bench_optimizer_only(names, sets, modes, repeats, steps,
                                                  warmup=2 if quick else 3),
        "train": lambda: bench_train_step(train_names, workloads, train_modes, repeats,
                                          train_steps, warmup=2 if quick else 10, quick=quick),
        "bytes": lambda: state_bytes(names, workloads, quick),
        "profile": lambda: profile(profile_names),
        "accuracy": lambda: accuracy_comparison([int(s) for s in args.seeds.split(",")], quick),
    }
    t_start = time.perf_counter()
    result["section_seconds"] = {}
    for section, job in jobs.items():
        if section in sections:
            print(f"{section} ...", flush=True)
            t0 = time.perf_counter()
            result[section] = job()
            result["section_seconds"][section] = round(time.perf_counter() - t0, 1)
    result["wall_seconds"] = time.perf_counter() - t_start
    try:
        result["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
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
