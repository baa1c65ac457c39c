"""Cost of experiment tracking per training step: in-step statistics, their readout, W&B logging.

Trains the digits MLP and the MNIST-1D CNN (the framework's default workloads, batch 32 / 64)
with the nested optimizer, one model per variant, all built alike:

    plain            no tracker, optimizer stats_every=0               (pure training)
    plain_again      the same, a second model: the noise floor of the comparison
    instep_N         no tracker, optimizer stats_every=N               (in-graph recording only)
    wandb_off        W&B offline tracker, default log_every (train/* rows), no layer
                     statistics, no optimizer timing
    wandb_N          the same plus stats_every=N and the default timing_every (N=50: the
                     default stats_every)

Method (robust on a shared, busy machine): the variants train in turns, block by block, each
block ``--block`` steps (default 200: every block holds the same number of logging, statistics
and timing steps), the variants' order shuffled every round.  Each step is what ``model.fit``
does: the compiled train function, the logs made Python numbers, the callbacks'
``on_train_batch_end`` (the batches are a cached, fixed set: no input pipeline work is
timed); a tracked block ends when its logging thread has drained.  After
``--warmup`` steps per variant (at least ``timing_every + 1``: the traces of the train step, the
statistics reader and the optimizer timer), ``--rounds`` rounds are timed with two clocks: wall time, and CPU time of
this process and its children (W&B's service process); CPU time is what the tracking costs and
is far less disturbed by other load on a shared machine.  The overhead of a variant is the
median over rounds of its block's CPU (wall) time divided by ``plain``'s in the same round (and
by ``wandb_off``'s, for what the statistics and timing add to the logging).

    python scripts/bench_tracking.py [--rounds 15] [--block 200] [--every 50 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import random
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import keras  # noqa: E402
import psutil  # noqa: E402

from nested_research import NestedLearningOptimizer  # noqa: E402
from nested_research.data import load_splits  # noqa: E402
from nested_research.models import build_cnn, build_mlp  # noqa: E402
from nested_research.tracking import WandbTracker  # noqa: E402

WORKLOADS = {
    "digits_mlp": ("sklearn_digits", 32, build_mlp),
    "mnist1d_cnn": ("mnist1d", 64, build_cnn),
}


def cpu_seconds() -> float:
    """User + system time of this process and its children (W&B's service)."""
    me = psutil.Process()
    total = time.process_time()  # this process, all threads, nanosecond clock
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


class Variant:
    """One model, its optimizer, iterator and (for wandb_*) tracker callback."""

    def __init__(self, name: str, workload: str, data, out: str, log_every: int | None):
        _, _, build = WORKLOADS[workload]
        keras.utils.set_random_seed(0)
        self.name = name
        self.model = build(input_shape=tuple(data.input_shape), num_classes=data.num_classes)
        n = int(name.rsplit("_", 1)[1]) if name[-1].isdigit() else 0
        # A fixed set of batches, cached: no shuffling or decoding in the timed steps.
        batches = min(data.steps_per_epoch, 40)
        self.opt = NestedLearningOptimizer(learning_rate=1e-3, stats_every=n,
                                           steps_per_epoch=data.steps_per_epoch)
        self.opt.compute_depths_from_model(self.model)
        self.model.compile(optimizer=self.opt, metrics=["accuracy"],
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        self.iterator = iter(data.train.take(batches).cache().repeat())
        self.model.make_train_function()
        self.train = self.model.train_function
        self.tracker, self.callbacks, self.step = None, [], 0
        if name.startswith("wandb"):
            extra = {} if log_every is None else {"log_every": log_every}
            if name == "wandb_off":
                extra["timing_every"] = 0
            self.tracker = WandbTracker(mode="offline", dir=out, stats_every=n, **extra)
            self.tracker.start({"bench": name, "workload": workload}, out)
            self.callbacks = self.tracker.callbacks(self.opt)
            for cb in self.callbacks:
                cb.set_model(self.model)
                cb.on_train_begin()
                cb.on_epoch_begin(0)
            cb = self.callbacks[0]
            cb.read_stats = self._timed("read", cb.read_stats, time.process_time)
            cb._timing = self._timed("timing", cb._timing, time.process_time)
            if self.tracker._logger is not None:  # the logging thread's own CPU time
                logger = self.tracker._logger
                logger._log = self._timed("row", logger._log, time.thread_time)
        self.costs = {}

    def _timed(self, what, fn, clock):
        """``fn`` that adds its CPU seconds per call to ``self.costs[what]``."""
        def wrapper(*args, **kwargs):
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                self.costs.setdefault(what, []).append(clock() - start)
        return wrapper

    def block(self, steps: int) -> tuple[float, float]:
        """Wall and CPU seconds for ``steps`` steps, the logging thread drained."""
        start, cpu = time.perf_counter(), cpu_seconds()
        for _ in range(steps):
            logs = {k: float(v) for k, v in self.train(self.iterator).items()}
            for cb in self.callbacks:
                cb.on_train_batch_end(self.step, logs)
            self.step += 1
        if self.tracker is not None and self.tracker._logger is not None:
            self.tracker._logger.flush()
        return time.perf_counter() - start, cpu_seconds() - cpu

    def close(self):
        if self.tracker is not None:
            with contextlib.redirect_stdout(io.StringIO()):
                self.tracker.finish(None, optimizer=self.opt)


def bench(workload: str, data, variants: list[str], args, out: str) -> dict:
    runs = [Variant(v, workload, data, out, args.log_every) for v in variants]
    # The warmup holds the first statistics read and the first timing call (both trace).
    warmup = max(args.warmup, WandbTracker().timing_every + 1)
    try:
        for r in runs:
            r.block(warmup)
            r.costs = {}
        times = {r.name: ([], []) for r in runs}
        rng = random.Random(0)
        for _ in range(args.rounds):
            order = runs[:]
            rng.shuffle(order)
            for r in order:
                wall, cpu = r.block(args.block)
                times[r.name][0].append(wall / args.block * 1e3)
                times[r.name][1].append(cpu / args.block * 1e3)
    finally:
        for r in runs:
            r.close()
    costs = {}
    for r in runs:
        for what, values in r.costs.items():
            costs.setdefault(what, []).extend(values)
    return times, costs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--block", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=120)
    parser.add_argument("--every", type=int, nargs="+", default=[50, 1])
    parser.add_argument("--log-every", type=int, default=None,
                        help="the tracker's log_every (default: the tracker's default)")
    parser.add_argument("--threads", type=int, default=None,
                        help="TensorFlow intra- and inter-op threads (default: TF's own)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--data-dir", default=os.environ.get("NESTED_RESEARCH_DATA_DIR",
                                                             "data_dir"))
    args = parser.parse_args(argv)
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    variants = ["plain", "plain_again"] + [f"instep_{n}" for n in args.every] + \
        ["wandb_off"] + \
        [f"wandb_{n}" for n in args.every]
    defaults = WandbTracker()
    print(f"keras {keras.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, "
          f"log_every={args.log_every or defaults.log_every}, timing_every="
          f"{defaults.timing_every}, TF threads {args.threads or 'default'}; {args.rounds} "
          f"rounds of {args.block}-step blocks")
    with tempfile.TemporaryDirectory() as out:
        for workload in args.workloads:
            name, batch, _ = WORKLOADS[workload]
            data = load_splits(name, data_dir=args.data_dir, batch_size=batch, seed=0)
            times, costs = bench(workload, data, variants, args, out)

            def over(v, base, clock):
                ratios = [a / b for a, b in zip(times[v][clock], times[base][clock])]
                return f"{(statistics.median(ratios) - 1) * 100:+.1f}%"

            print(f"\n{workload} (batch {batch}); medians, ms per step; overheads: CPU (wall)")
            print(f"  {'variant':<10} {'wall':>6} {'cpu':>6}  {'vs plain':<16} {'vs wandb_off':<16}")
            for v in variants:
                rel = f"{over(v, 'wandb_off', 1)} ({over(v, 'wandb_off', 0)})" \
                    if v.startswith("wandb") else ""
                print(f"  {v:<10} {statistics.median(times[v][0]):6.2f} "
                      f"{statistics.median(times[v][1]):6.2f}  "
                      f"{over(v, 'plain', 1) + ' (' + over(v, 'plain', 0) + ')':<16} {rel}")
            names = {"read": "statistics read (reduction + layer rows), per logging step",
                     "timing": "optimizer timing, per timing step",
                     "row": "one W&B row, logging thread (+ the service process, not here)"}
            print("  CPU ms per call, median:")
            for what in ("read", "timing", "row"):
                if costs.get(what):
                    print(f"    {statistics.median(costs[what]) * 1e3:6.2f}  {names[what]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
