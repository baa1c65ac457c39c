"""Optimizer speed and memory: ``NestedLearningOptimizer`` against Keras Adam, AdamW and Lion.

Run ``python scripts/bench_optimizer.py`` (a few minutes on 2 CPU cores) or
``python scripts/bench_optimizer.py --quick`` (a smoke run on tiny sizes).
In one process, alternating the optimizers inside every repeat, after warm-up,
with medians over the repeats, it measures:

1. ``optimizer``: the optimizer-only step (``optimizer.apply`` of precomputed
   gradients inside one ``tf.function``) on two variable sets, in graph mode
   and under XLA (``jit_compile=True``):

   - ``dense4m``: four 1024x1024 kernels and their biases (4.2M parameters);
   - ``transformer``: a Transformer-like set of many small variables
     (embeddings, layer norms, attention and MLP kernels and biases).

   Rows: ``nested`` in each blend mode (``attention``, ``fixed``,
   ``adaptive``, ``none``), with ``state_dtype="bfloat16"``, and with every
   variable on interval 4 with and without accumulation (the skipped steps'
   saving), against ``keras.optimizers.Adam`` / ``AdamW`` / ``Lion``.
2. ``train``: the full training step (``model.train_on_batch``) of the CNN on
   (40,) mnist1d-like inputs and of the Transformer on (12,) tokens of a
   32-word vocabulary, random data, nested (attention, depth scheduling via
   ``compute_depths_from_model``) against Adam, graph mode and XLA.
3. ``bytes``: optimizer state bytes per trainable parameter.
4. ``accuracy`` (only with ``--accuracy``; about 10 minutes): final test
   accuracy of digits (MLP) and mnist1d (CNN) with f32 and bf16 optimizer
   state over 3 seeds, through ``nested_research.train.run``.

It prints the tables as ratios to Adam measured in the same run and writes
everything as JSON (``--out``, default ``outputs/bench_optimizer.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

# ---------------------------------------------------------------- configurations
#: name -> (factory kind, kwargs).  ``nested`` rows are NestedLearningOptimizer.
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
    # every variable on interval 4: without accumulation 3 of 4 steps skip all math
    "nested_attention_k4": ("nested", {"memory_blend_mode": "attention", "auto_schedule": False,
                                       "default_interval": 4, "accumulate_gradients": False}),
    "nested_attention_k4_acc": ("nested", {"memory_blend_mode": "attention",
                                           "auto_schedule": False, "default_interval": 4,
                                           "accumulate_gradients": True}),
}
TRAIN_OPTIMIZERS = ["adam", "nested_attention", "nested_fixed", "nested_none",
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


def _median(values):
    return float(statistics.median(values))


def _step_function(opt, variables, jit):
    import tensorflow as tf

    def step(grads):
        opt.apply(grads, variables)

    return tf.function(step, jit_compile=jit)


def bench_optimizer_only(names, sets, modes, repeats, steps, warmup, log=print):
    """Median seconds per optimizer step: ``{set: {mode: {name: seconds}}}``."""
    import keras
    import tensorflow as tf

    results = {}
    for set_name, spec in sets.items():
        grads = _make_grads(spec, 0)
        n_params = int(sum(np.prod(s) for _, s in spec))
        results[set_name] = {"params": n_params, "variables": len(spec)}
        for mode in modes:
            keras.backend.clear_session()
            runners = {}
            for name in names:
                variables = _make_variables(spec, 0)
                opt = make_optimizer(name)
                opt.build(variables)

                fn = _step_function(opt, variables, jit=(mode == "xla"))
                t0 = time.perf_counter()
                for _ in range(warmup):
                    fn(grads)
                _sync(opt)
                runners[name] = (fn, opt, time.perf_counter() - t0)
            times = {name: [] for name in names}
            for r in range(repeats):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    fn, opt, _ = runners[name]
                    _sync(opt)
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        fn(grads)
                    _sync(opt)
                    times[name].append((time.perf_counter() - t0) / steps)
            med = {name: _median(v) for name, v in times.items()}
            results[set_name][mode] = {
                "seconds": med,
                "spread": {n: [float(min(v)), float(max(v))] for n, v in times.items()},
                "ratio_to_adam": {n: med[n] / med["adam"] for n in names},
            }
            log(f"  optimizer {set_name:12s} {mode:5s} " + "  ".join(
                f"{n}={med[n] / med['adam']:.2f}" for n in names))
            del runners
    return results


# ---------------------------------------------------------------- full training step
def _workloads(quick):
    from nested_research.models import build_cnn, build_transformer

    rng = np.random.default_rng(0)
    batch = 16 if quick else 64

    def cnn():
        return build_cnn((40,), 10, filters=[32, 64, 64], kernel_size=3, dense_units=64,
                         global_pool="flatten")

    def transformer():
        return build_transformer((12,), 32, vocab_size=32, d_model=64, num_heads=4,
                                 num_layers=2, ff_dim=128)

    data = {
        "cnn": (cnn, rng.normal(size=(batch, 40)).astype("float32"),
                rng.integers(0, 10, size=(batch,))),
        "transformer": (transformer, rng.integers(0, 32, size=(batch, 12)).astype("int32"),
                        rng.integers(0, 32, size=(batch, 12))),
    }
    return data


def bench_train_step(names, modes, repeats, steps, warmup, quick, log=print):
    import keras
    import tensorflow as tf

    results = {}
    for wl, (builder, x, y) in _workloads(quick).items():
        results[wl] = {}
        for mode in modes:
            keras.backend.clear_session()
            runners = {}
            for name in names:
                keras.utils.set_random_seed(0)
                model = builder()
                opt = make_optimizer(name)
                if hasattr(opt, "compute_depths_from_model"):
                    opt.compute_depths_from_model(model)
                model.compile(opt, keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                              jit_compile=(mode == "xla"))
                xt, yt = tf.constant(x), tf.constant(y)
                for _ in range(warmup):
                    model.train_on_batch(xt, yt)
                runners[name] = (model, xt, yt)
            times = {name: [] for name in names}
            for r in range(repeats):
                order = names[r % len(names):] + names[:r % len(names)]
                for name in order:
                    model, xt, yt = runners[name]
                    t0 = time.perf_counter()
                    for _ in range(steps):
                        model.train_on_batch(xt, yt)
                    _sync(model.optimizer)
                    times[name].append((time.perf_counter() - t0) / steps)
            med = {n: _median(v) for n, v in times.items()}
            results[wl][mode] = {"seconds": med,
                                 "ratio_to_adam": {n: med[n] / med["adam"] for n in names}}
            log(f"  train {wl:12s} {mode:5s} " + "  ".join(
                f"{n}={med[n] / med['adam']:.2f} ({1e3 * med[n]:.2f} ms)" for n in names))
    return results


# ---------------------------------------------------------------- state bytes
def state_bytes(names, quick):
    """Optimizer state bytes per trainable parameter, on the dense set and the models."""
    import keras

    out = {}
    sets = {"dense4m": dense_shapes(width=64 if quick else 1024, layers=4)}
    workloads = _workloads(quick)
    for name in names:
        row = {}
        for set_name, spec in sets.items():
            variables = _make_variables(spec, 0)
            opt = make_optimizer(name)
            opt.build(variables)
            row[set_name] = _bytes_per_param(opt, variables)
        for wl, (builder, _, _) in workloads.items():
            keras.backend.clear_session()
            model = builder()
            opt = make_optimizer(name)
            if hasattr(opt, "compute_depths_from_model"):
                opt.compute_depths_from_model(model)
            opt.build(model.trainable_variables)
            row[wl + "_depth_scheduled"] = _bytes_per_param(opt, model.trainable_variables)
        out[name] = row
    return out


def _bytes_per_param(opt, variables):
    n = sum(int(np.prod(v.shape)) for v in variables)
    size = sum(int(np.prod(v.shape)) * np.dtype(str(v.dtype)).itemsize for v in opt.variables)
    return size / n


# ---------------------------------------------------------------- accuracy
def accuracy_comparison(seeds, quick, log=print):
    """Final test accuracy with f32 and bf16 optimizer state (digits MLP, mnist1d CNN)."""
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
                                     f"+optimizer.params.state_dtype={dtype}"]
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
                f"{out[wl][dtype]['std']:.4f}  {accs}")
    return out


# ---------------------------------------------------------------- report
def machine():
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    desc = {"platform": platform.platform(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
            "tensorflow": tf.__version__, "gpus": [g.name for g in gpus]}
    try:
        import keras
        desc["keras"] = keras.__version__
        if gpus:
            desc["gpu_name"] = tf.config.experimental.get_device_details(gpus[0]).get(
                "device_name")
    except Exception:  # pragma: no cover - informational only
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    desc["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return desc


def format_tables(result) -> str:
    lines = []
    opt = result.get("optimizer", {})
    if opt:
        names = result["config"]["optimizers"]
        cols = [(s, m) for s in opt for m in result["config"]["modes"]]
        header = ["optimizer-only, ratio to Adam"] + [f"{s} {m}" for s, m in cols]
        rows = [[n] + [f"{opt[s][m]['ratio_to_adam'][n]:.2f}" for s, m in cols] for n in names]
        rows.append(["(adam ms/step)"] + [f"{1e3 * opt[s][m]['seconds']['adam']:.2f}"
                                          for s, m in cols])
        lines += _table(header, rows)
    tr = result.get("train", {})
    if tr:
        names = result["config"]["train_optimizers"]
        cols = [(w, m) for w in tr for m in result["config"]["modes"]]
        header = ["train step, ratio to Adam"] + [f"{w} {m}" for w, m in cols]
        rows = [[n] + [f"{tr[w][m]['ratio_to_adam'][n]:.2f}" for w, m in cols] for n in names]
        rows.append(["(adam ms/step)"] + [f"{1e3 * tr[w][m]['seconds']['adam']:.2f}"
                                          for w, m in cols])
        lines += [""] + _table(header, rows)
    by = result.get("bytes", {})
    if by:
        cols = list(next(iter(by.values())))
        header = ["state bytes / parameter"] + cols
        rows = [[n] + [f"{by[n][c]:.2f}" for c in cols] for n in by]
        lines += [""] + _table(header, rows)
    acc = result.get("accuracy", {})
    if acc:
        header = ["test accuracy (mean +- std)", "float32 state", "bfloat16 state"]
        rows = [[wl] + [f"{acc[wl][d]['mean']:.4f} +- {acc[wl][d]['std']:.4f}"
                        for d in ("float32", "bfloat16")] for wl in acc]
        lines += [""] + _table(header, rows)
    return "\n".join(lines)


def _table(header, rows):
    widths = [max(len(str(r[j])) for r in [header] + rows) for j in range(len(header))]
    fmt = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"  # noqa
    return [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + \
        [fmt(r) for r in rows]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, few repeats (smoke run)")
    p.add_argument("--out", default="outputs/bench_optimizer.json", help="JSON output path")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="steps per timed block")
    p.add_argument("--sections", default="optimizer,train,bytes",
                   help="comma list of optimizer,train,bytes,accuracy")
    p.add_argument("--accuracy", action="store_true", help="also run the accuracy comparison")
    p.add_argument("--optimizers", default=",".join(OPTIMIZERS),
                   help="comma list of optimizer rows (adam is always included)")
    p.add_argument("--modes", default="graph,xla")
    p.add_argument("--sets", default="dense4m,transformer",
                   help="variable sets of the optimizer-only section")
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args(argv)

    import keras  # noqa: F401
    import tensorflow as tf  # noqa: F401

    sections = [s for s in args.sections.split(",") if s]
    if args.accuracy and "accuracy" not in sections:
        sections.append("accuracy")
    names = ["adam"] + [n for n in args.optimizers.split(",") if n and n != "adam"]
    unknown = [n for n in names if n not in OPTIMIZERS]
    if unknown:
        p.error(f"unknown optimizers {unknown}; known: {list(OPTIMIZERS)}")
    modes = [m for m in args.modes.split(",") if m]
    repeats = args.repeats or (2 if args.quick else 7)
    steps = args.steps or (2 if args.quick else 8)
    train_names = [n for n in TRAIN_OPTIMIZERS if n in names]
    result = {"machine": machine(), "command": " ".join(["python"] + sys.argv),
              "config": {"quick": args.quick, "repeats": repeats, "steps": steps,
                         "modes": modes, "optimizers": names, "train_optimizers": train_names,
                         "optimizer_kwargs": {n: OPTIMIZERS[n][1] for n in names}}}
    t_start = time.perf_counter()
    if "optimizer" in sections:
        print("optimizer-only step ...", flush=True)
        result["optimizer"] = bench_optimizer_only(
            names, {k: v for k, v in variable_sets(args.quick).items()
                    if k in args.sets.split(",")}, modes, repeats, steps, warmup=2 if args.quick else 3)
    if "train" in sections:
        print("training step ...", flush=True)
        result["train"] = bench_train_step(
            train_names, modes, repeats, steps=4 if args.quick else 60,
            warmup=2 if args.quick else 10, quick=args.quick)
    if "bytes" in sections:
        result["bytes"] = state_bytes(names, args.quick)
    if "accuracy" in sections:
        print("accuracy, f32 vs bf16 state ...", flush=True)
        result["accuracy"] = accuracy_comparison(
            [int(s) for s in args.seeds.split(",")], args.quick)
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
