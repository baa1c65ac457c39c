"""Speed of the paper's architecture: ``python -m nested_research.bench.models``.

Two sections, each printed as a table (``--json PATH`` also writes the numbers):

``train``
    Training tokens per second (``model.train_on_batch`` with Adam, next-token logits at every
    position, random tokens) of the Transformer, the CMS Transformer and Hope built from their
    ``conf/model/*.yaml`` sizes (about equal parameter counts, printed), in graph mode and under
    XLA (``--modes``).  Rows are timed in alternated blocks; the median block is reported.
``memory``
    One :class:`~nested_research.models.hope.HopeBlock` at sequence length ``--memory-length``
    (256): the delta-rule memory's exact chunked form against the token-by-token recurrence,
    forward and backward (the gradient of a sum of the outputs with respect to the block's
    weights), compiled with ``tf.function`` in graph mode (``--memory-modes``; under XLA the
    recurrence, 256 unrolled steps, did not finish compiling in 8 minutes here, so XLA is not
    the default).  The block's CMS is
    one level with no in-context update, the same in every row, so the rows differ by the
    memory only.  The first call (tracing and compilation) is timed apart.

TensorFlow backend (``tf.function``, ``tf.GradientTape``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from nested_research.core.configs import conf_dir

MODELS = ("transformer", "cms_transformer", "hope")


def _model_from_conf(option: str, seq_len: int, vocab: int):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(conf_dir(), version_base="1.3"):
        cfg = compose("config", overrides=[f"model={option}"])
    return instantiate(cfg.model, input_shape=(seq_len,), num_classes=vocab, vocab_size=vocab,
                       _convert_="all")


def _alternate(runners: dict, repeats: int, block) -> dict:
    """Median seconds per step of each runner, blocks alternated in a rotating order."""
    times = {name: [] for name in runners}
    names = list(runners)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(block(runners[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def bench_train(modes, seq_len, batch, vocab, steps, repeats, log=print) -> dict:
    import keras

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, vocab, size=(batch, seq_len + 1)).astype("int32")
    x = keras.ops.convert_to_tensor(tokens[:, :-1])
    y = keras.ops.convert_to_tensor(tokens[:, 1:])
    out = {}
    for mode in modes:
        keras.backend.clear_session()
        runners, params, compile_s = {}, {}, {}
        for name in MODELS:
            keras.utils.set_random_seed(0)
            model = _model_from_conf(name, seq_len, vocab)
            model.compile(keras.optimizers.Adam(1e-3),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                          jit_compile=(mode == "xla"))
            t0 = time.perf_counter()
            model.train_on_batch(x, y)
            compile_s[name] = time.perf_counter() - t0
            model.train_on_batch(x, y)
            runners[name], params[name] = model, model.count_params()

        def block(model):
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = model.train_on_batch(x, y)
            float(np.asarray(loss))
            return (time.perf_counter() - t0) / steps

        seconds = _alternate(runners, repeats, block)
        rows = {name: {"parameters": params[name], "ms_per_step": 1e3 * seconds[name],
                       "tokens_per_s": batch * seq_len / seconds[name],
                       "first_step_s": compile_s[name]} for name in MODELS}
        base = rows["transformer"]["tokens_per_s"]
        for row in rows.values():
            row["speed_vs_transformer"] = row["tokens_per_s"] / base
        out[mode] = rows
        log(f"\ntraining step, {mode}, batch {batch} x L={seq_len} (Adam)")
        log(f"  {'model':16s} {'parameters':>10s} {'ms/step':>9s} {'tokens/s':>10s} "
            f"{'x Transformer':>13s} {'first step s':>12s}")
        for name, row in rows.items():
            log(f"  {name:16s} {row['parameters']:>10,d} {row['ms_per_step']:>9.1f} "
                f"{row['tokens_per_s']:>10,.0f} {row['speed_vs_transformer']:>13.2f} "
                f"{row['first_step_s']:>12.1f}", flush=True)
    return out


def _memory_step(chunk, length, batch, d_model, heads, jit):
    import keras
    import tensorflow as tf

    from nested_research.models import HopeBlock

    keras.utils.set_random_seed(0)
    block = HopeBlock(num_heads=heads, conv_size=4, chunk_size=chunk, cms_hidden_units=(d_model,),
                      cms_chunk_sizes=(None,), cms_inner_learning_rates=(0.0,))
    block.build((None, length, d_model))
    x = tf.constant(np.random.default_rng(1).normal(size=(batch, length, d_model)),
                    dtype="float32")

    @tf.function(jit_compile=jit)
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(block(x) ** 2) / (batch * length)
        grads = tape.gradient(loss, block.trainable_variables)
        return loss, tf.add_n([tf.reduce_sum(g) for g in grads])

    return step


def bench_memory(modes, length, batch, d_model, heads, chunks, steps, repeats,
                 log=print) -> dict:
    out = {}
    forms = {"recurrent": None, **{f"chunked C={c}": c for c in chunks}}
    for mode in modes:
        runners, first = {}, {}
        for name, chunk in forms.items():
            step = _memory_step(chunk, length, batch, d_model, heads, jit=(mode == "xla"))
            t0 = time.perf_counter()
            np.asarray(step()[0])
            first[name] = time.perf_counter() - t0
            runners[name] = step

        def block(step):
            t0 = time.perf_counter()
            for _ in range(steps):
                loss, _ = step()
            float(np.asarray(loss))
            return (time.perf_counter() - t0) / steps

        seconds = _alternate(runners, repeats, block)
        rec = seconds["recurrent"]
        rows = {name: {"ms_per_step": 1e3 * s, "speedup_vs_recurrent": rec / s,
                       "first_call_s": first[name]} for name, s in seconds.items()}
        out[mode] = rows
        log(f"\nHopeBlock memory, forward+backward, {mode}, batch {batch} x L={length}, "
            f"d={d_model}, {heads} heads")
        log(f"  {'form':16s} {'ms/step':>9s} {'x recurrent':>11s} {'first call s':>12s}")
        for name, row in rows.items():
            log(f"  {name:16s} {row['ms_per_step']:>9.1f} {row['speedup_vs_recurrent']:>11.2f} "
                f"{row['first_call_s']:>12.1f}", flush=True)
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m nested_research.bench.models",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="train,memory")
    parser.add_argument("--modes", default="graph,xla", help="graph and/or xla")
    parser.add_argument("--seq-len", type=int, default=64, help="training section's L")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--memory-modes", default="graph", help="memory section: graph/xla")
    parser.add_argument("--memory-length", type=int, default=256)
    parser.add_argument("--memory-batch", type=int, default=8)
    parser.add_argument("--chunks", default="16,64", help="memory section's chunk sizes")
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per row")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    memory_modes = [m for m in args.memory_modes.split(",") if m]
    for m in modes + memory_modes:
        if m not in ("graph", "xla"):
            parser.error(f"--modes: {m!r} is not one of graph, xla")

    from nested_research.bench.report import machine

    result = {"machine": machine(), "args": vars(args)}
    desc = result["machine"]
    print(f"{desc.get('cpu_model', '?')}, {desc['cpu_count']} CPUs, TF {desc.get('tensorflow')}, "
          f"Keras {desc['keras']}, load {desc.get('load_average')}", flush=True)
    if "train" in sections:
        result["train"] = bench_train(modes, args.seq_len, args.batch, args.vocab, args.steps,
                                      args.repeats)
    if "memory" in sections:
        chunks = [int(c) for c in args.chunks.split(",") if c]
        result["memory"] = bench_memory(memory_modes, args.memory_length, args.memory_batch, 64, 4,
                                        chunks, args.steps, args.repeats)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2, default=float)
    return result


if __name__ == "__main__":
    main()
