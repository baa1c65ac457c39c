"""Cost of experiment tracking per training step, part by part, on the default workloads.

For the digits MLP and the MNIST-1D CNN (batch 32 / 64, the nested optimizer, cached batches so
no input pipeline work is timed) it measures, each as a median over many repetitions:

    step            one train step, statistics off (the compiled train function)
    in-step         the same step with the optimizer's stats_every=N (N: the tracker's default,
                    and 1), minus ``step``: what the in-graph recording costs on every step
    A/A             a second model without statistics, minus ``step``: the noise floor
    read            the tracker's statistics read on a logging step (one on-device reduction
                    plus the per-layer rows), every N steps
    layer row       handing that row (about 20 keys per layer) to W&B, every N steps
    timing          the optimizer timing (``OptimizerTimer.measure``), every ``timing_every``
    train row       a ``train/*`` row to W&B, every ``log_every`` steps

(a row's cost is ``run.log``'s time in this process plus the mean CPU time W&B's service
process spends on it; the tracker calls ``run.log`` on a background thread)
The models' steps are interleaved one by one (A, B, C, A, B, C, ...) so that load on a shared
machine hits them alike; W&B rows are timed with ``run.log`` called directly.  The table gives
each part's cost per call, per step (divided by its period) and as a share of ``step``; the
totals are the statistics (in-step + read + layer row) and all tracking with the defaults.

    python scripts/bench_tracking.py [--steps 3000] [--calls 60] [--every N]
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
from nested_research.tracking import WandbTracker, layer_log  # noqa: E402

WORKLOADS = {
    "digits_mlp": ("sklearn_digits", 32, build_mlp),
    "mnist1d_cnn": ("mnist1d", 64, build_cnn),
}


def make_model(workload: str, data, stats_every: int):
    """A compiled model, its optimizer and an iterator over a cached set of batches."""
    _, _, build = WORKLOADS[workload]
    keras.utils.set_random_seed(0)
    model = build(input_shape=tuple(data.input_shape), num_classes=data.num_classes)
    opt = NestedLearningOptimizer(learning_rate=1e-3, stats_every=stats_every,
                                  steps_per_epoch=data.steps_per_epoch)
    opt.compute_depths_from_model(model)
    model.compile(optimizer=opt, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    iterator = iter(data.train.take(min(data.steps_per_epoch, 40)).cache().repeat())
    model.make_train_function()
    return model, opt, iterator


def median_ms(fn, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def service_cpu_seconds() -> float:
    """CPU time so far of this process's children: W&B's service (wandb-core)."""
    total = 0.0
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def row_ms(run, row: dict, calls: int) -> float:
    """``run.log(row)``: median wall time in this process plus the service's mean CPU time."""
    before = service_cpu_seconds()
    ms = median_ms(lambda: run.log(row), calls)
    time.sleep(0.5)  # let the service catch up before reading its CPU time
    return ms + (service_cpu_seconds() - before) / calls * 1e3


def bench(workload: str, data, args, out: str) -> list[tuple]:
    defaults = WandbTracker()
    n = args.every or defaults.stats_every
    models = {"step": make_model(workload, data, 0), "A/A": make_model(workload, data, 0),
              f"in-step N={n}": make_model(workload, data, n),
              "in-step N=1": make_model(workload, data, 1)}
    step_times = {name: [] for name in models}
    for i in range(args.steps + 50):
        for name, (model, _, iterator) in models.items():
            start = time.perf_counter()
            logs = model.train_function(iterator)
            float(logs["loss"])  # waits for the step, as a callback reading logs does
            if i >= 50:  # the first steps trace
                step_times[name].append(time.perf_counter() - start)
    step = {name: statistics.median(t) * 1e3 for name, t in step_times.items()}

    # The tracker's parts, on a tracked copy of the in-step model after a few logging steps.
    model, opt, iterator = make_model(workload, data, n)
    tracker = WandbTracker(mode="offline", dir=out, stats_every=n)
    tracker.start({"bench": workload}, out)
    cb = tracker.callbacks(opt)[0]
    cb.set_model(model)
    cb.on_train_begin()
    cb.on_epoch_begin(0)
    for b in range(2 * n + 1):
        cb.on_train_batch_end(b, {k: float(v) for k, v in model.train_function(iterator).items()})
    cb._timing()  # traces the timer
    layer_row = dict(layer_log(cb.read_stats()), **{"trainer/step": cb.step})
    train_row = {"train/loss": 1.0, "train/accuracy": 0.5, "train/lr": 1e-3,
                 "timing/step_ms": 2.0, "trainer/step": cb.step}
    parts = {
        "read": median_ms(cb.read_stats, args.calls),
        "layer row": row_ms(tracker.run, layer_row, args.calls * 5),
        "timing": median_ms(cb._timing, max(args.calls // 3, 5)),
        "train row": row_ms(tracker.run, train_row, args.calls * 5),
    }
    with contextlib.redirect_stdout(io.StringIO()):
        tracker.finish(None, optimizer=opt)

    base = step["step"]
    rows = [("step", base, 1, base)]
    for name in models:
        if name != "step":
            rows.append((name, step[name] - base, 1, step[name] - base))
    periods = {"read": n, "layer row": n, "timing": defaults.timing_every,
               "train row": defaults.log_every}
    for name, ms in parts.items():
        rows.append((name, ms, periods[name], ms / periods[name]))
    stats = rows[2][3] + parts["read"] / n + parts["layer row"] / n
    total = stats + parts["timing"] / defaults.timing_every + \
        parts["train row"] / defaults.log_every
    rows.append((f"statistics, N={n}", None, None, stats))
    rows.append(("all tracking, defaults", None, None, total))
    return rows, base


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="timed steps per model")
    parser.add_argument("--calls", type=int, default=60, help="repetitions of each W&B part")
    parser.add_argument("--every", type=int, default=None,
                        help="stats_every (default: the tracker's default)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--data-dir", default=os.environ.get("NESTED_RESEARCH_DATA_DIR",
                                                             "data_dir"))
    args = parser.parse_args(argv)
    d = WandbTracker()
    print(f"keras {keras.__version__}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; "
          f"defaults stats_every={d.stats_every}, timing_every={d.timing_every}, "
          f"log_every={d.log_every}; medians")
    with tempfile.TemporaryDirectory() as out:
        for workload in args.workloads:
            name, batch, _ = WORKLOADS[workload]
            data = load_splits(name, data_dir=args.data_dir, batch_size=batch, seed=0)
            rows, base = bench(workload, data, args, out)
            print(f"\n{workload} (batch {batch})")
            print(f"  {'part':<24} {'ms/call':>8} {'every':>6} {'ms/step':>8} {'of step':>8}")
            for part, ms, every, per_step in rows:
                call = "" if ms is None else f"{ms:8.3f}"
                period = "" if every is None else f"{every:6d}"
                print(f"  {part:<24} {call:>8} {period:>6} {per_step:8.3f} "
                      f"{per_step / base * 100:7.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
