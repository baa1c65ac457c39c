"""Cost of experiment tracking per training step: in-step statistics, their readout, W&B logging.

Trains the digits MLP and the MNIST-1D CNN (the framework's default workloads, batch 32 / 64)
with the nested optimizer under these variants, interleaved, ``--repeats`` times each:

    plain            no tracker, optimizer stats_every=0               (pure training)
    instep_N         no tracker, optimizer stats_every=N               (in-graph recording only)
    wandb_off        W&B offline tracker with the default log_every (train/* rows), no layer
                     statistics, no optimizer timing
    wandb_N          the same plus stats_every=N and timing_every=100 (N=25: the default)

Each run takes ``--warmup`` steps (the one-time traces of the train step, the statistics reader
and the optimizer timer fall in them), then times ``--steps`` steps: periodic costs (every N or
100 steps, and the logging thread) are averaged in.  The training set repeats, so no epoch
boundary (iterator rebuild, shuffle) falls in the timed steps.  Two clocks:

    wall   wall time per step; on a shared machine the fastest repeat is the least disturbed
    cpu    CPU time per step of this process and its children (W&B's service process),
           median over repeats: what the tracking costs, less sensitive to other load

Overheads are of the cpu median against ``plain`` and against ``wandb_off``.

    python scripts/bench_tracking.py [--steps 400] [--warmup 120] [--repeats 5] [--every 25 1]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
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


def _cpu_seconds() -> float:
    """User + system time of this process and its children (W&B's service)."""
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


class _StepClock(keras.callbacks.Callback):
    """Wall and CPU time of steps warmup+1 .. warmup+steps (batch end to batch end)."""

    def __init__(self, warmup: int, steps: int):
        super().__init__()
        self.warmup, self.steps, self.n = warmup, steps, 0
        self.start = self.end = None

    def on_train_batch_end(self, batch, logs=None):
        self.n += 1
        if self.n == self.warmup:
            self.start = (time.perf_counter(), _cpu_seconds())
        elif self.n == self.warmup + self.steps:
            self.end = (time.perf_counter(), _cpu_seconds())

    def per_step_ms(self) -> tuple[float, float]:
        return tuple((b - a) / self.steps * 1e3 for a, b in zip(self.start, self.end))


def one_run(workload: str, variant: str, data, steps: int, warmup: int, out: str,
            log_every: int | None = None) -> tuple[float, float]:
    """``(wall, cpu)`` milliseconds per step of one variant."""
    _, _, build = WORKLOADS[workload]
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    model = build(input_shape=tuple(data.input_shape), num_classes=data.num_classes)
    n = int(variant.rsplit("_", 1)[1]) if variant[-1].isdigit() else 0
    opt = NestedLearningOptimizer(learning_rate=1e-3, stats_every=n,
                                  steps_per_epoch=data.steps_per_epoch)
    opt.compute_depths_from_model(model)
    model.compile(optimizer=opt, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clock = _StepClock(warmup, steps)
    callbacks, tracker = [clock], None
    if variant.startswith("wandb"):
        extra = {} if log_every is None else {"log_every": log_every}
        tracker = WandbTracker(mode="offline", dir=out, stats_every=n,
                               timing_every=0 if variant == "wandb_off" else 100, **extra)
        tracker.start({"bench": variant, "workload": workload}, out)
        callbacks = tracker.callbacks(opt) + callbacks
    try:
        model.fit(data.train.repeat(), steps_per_epoch=warmup + steps + 1, epochs=1,
                  callbacks=callbacks, verbose=0)
    finally:
        if tracker is not None:
            with contextlib.redirect_stdout(io.StringIO()):
                tracker.finish(None, optimizer=opt)
    return clock.per_step_ms()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--every", type=int, nargs="+", default=[25, 1])
    parser.add_argument("--log-every", type=int, default=None,
                        help="the tracker's log_every (default: the tracker's default)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--data-dir", default=os.environ.get("NESTED_RESEARCH_DATA_DIR",
                                                             "data_dir"))
    args = parser.parse_args(argv)
    variants = ["plain"] + [f"instep_{n}" for n in args.every] + ["wandb_off"] + \
        [f"wandb_{n}" for n in args.every]
    log_every = args.log_every or WandbTracker().log_every
    print(f"keras {keras.__version__}, {os.cpu_count()} CPUs, log_every={log_every}; ms/step "
          f"over {args.steps} steps after {args.warmup}; {args.repeats} interleaved repeats")
    with tempfile.TemporaryDirectory() as out:
        for workload in args.workloads:
            name, batch, _ = WORKLOADS[workload]
            data = load_splits(name, data_dir=args.data_dir, batch_size=batch, seed=0)
            wall = {v: [] for v in variants}
            cpu = {v: [] for v in variants}
            for _ in range(args.repeats):
                for v in variants:
                    w, c = one_run(workload, v, data, args.steps, args.warmup, out,
                                   args.log_every)
                    wall[v].append(w)
                    cpu[v].append(c)
            cpu_med = {v: statistics.median(t) for v, t in cpu.items()}
            print(f"\n{workload} (batch {batch}), ms/step")
            print(f"  {'variant':<11} {'wall fastest':>12} {'wall median':>11} "
                  f"{'cpu median':>10} {'cpu vs plain':>12} {'cpu vs wandb_off':>16}")
            for v in variants:
                rel = f"{(cpu_med[v] / cpu_med['wandb_off'] - 1) * 100:+15.1f}%" \
                    if v.startswith("wandb") else ""
                print(f"  {v:<11} {min(wall[v]):12.3f} {statistics.median(wall[v]):11.3f} "
                      f"{cpu_med[v]:10.3f} {(cpu_med[v] / cpu_med['plain'] - 1) * 100:+11.1f}% "
                      f"{rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
