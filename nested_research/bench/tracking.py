"""Cost of experiment tracking per training step, part by part, on the default workloads.

For the digits MLP and the MNIST-1D CNN (batch 32 / 64, the nested optimizer, cached batches so
no input pipeline work is timed) it measures:

    step            one train step without statistics: the train function the trainer runs on
                    most steps (traced inside ``stats_recording(False)``; its graph is the one
                    of ``stats_every=0``, op for op, see tests/test_stats_window.py), traced
                    twice per round; the median of the two traces' mean
    A/A             the second trace minus the first: the noise floor
    in-step         the steps as the trainer runs them with ``stats_every=N``
                    (``stats_window.StatsWindow``: the recording function on the last
                    ``longest_interval`` steps of each window, the plain one elsewhere, and the
                    callback's own work), minus ``step``: what recording the statistics costs
                    per step, on average over whole windows
    recording step  within those, a recording step minus a plain one (median per step)
    cond form       the optimizer in a plain ``model.fit`` (no ``StatsWindow``): a ``cond``
                    per variable on every step decides whether to record, minus ``step``
    read            the tracker's statistics read on a logging step (one on-device reduction
                    plus the per-layer rows), every N steps
    layer row       handing that row (about 20 keys per layer) to W&B, every N steps
    timing          the optimizer timing (``OptimizerTimer.measure``), every ``timing_every``
    train row       a ``train/*`` row to W&B, every ``log_every`` steps

The train functions belong to one model (one set of variables, so no two models' memory
layouts are compared), are traced anew in each of ``--rounds`` rounds, in a rotated order (two traces of one
function differ in speed by several percent here) and run by ``model.fit`` (the loop and
callbacks of real training, since a bare loop of calls is much more sensitive to any host work
between steps) in interleaved blocks of 2N steps, in an order shuffled block by block (the first
steps after a change of function are slower); the time of a step is measured between batch
ends.  A function's cost is paired: each block's mean step time minus the mean of the two plain
functions' blocks of the same round of blocks, then the median over the blocks.  A row's cost is ``run.log``'s time in this process plus
the mean CPU time W&B's service process spends on it (the tracker calls ``run.log`` on a
background thread).  The table gives each part's cost per call, per step (divided by its
period) and as a share of ``step``; the totals are the statistics (in-step + read + layer row)
and all tracking with the defaults.

    python -m nested_research.bench.tracking [--steps 3000] [--calls 60] [--every N]
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

import keras
import psutil

from nested_research import NestedLearningOptimizer
from nested_research.data import load_splits
from nested_research.models import build_cnn, build_mlp
from nested_research.training.stats_window import StatsWindow, traced_with_stats
from nested_research.tracking.trackers import WandbTracker
from nested_research.tracking.callback import layer_log

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


class _StepTimes(keras.callbacks.Callback):
    """Wall time between batch ends, the first ``skip`` of each ``fit`` left out."""

    def __init__(self, skip: int = 2):
        super().__init__()
        self.skip, self.times, self.recording = skip, [], []
        self.window: StatsWindow | None = None

    def on_train_begin(self, logs=None):
        self.times, self.recording, self._last, self._seen = [], [], time.perf_counter(), 0

    def on_train_batch_end(self, batch, logs=None):
        now = time.perf_counter()
        self._seen += 1
        if self._seen > self.skip:
            self.times.append(now - self._last)
            fn = self.model.train_function
            self.recording.append(self.window is not None and fn is self.window._fns.get(True))
        self._last = now


def in_step_ms(workload: str, data, n: int, rounds: int, blocks: int) -> dict:
    """Per-step times (ms) of one model's train functions run by ``model.fit`` (see the module
    docstring)."""
    model, opt, _ = make_model(workload, data, n)
    batches = data.train.take(min(data.steps_per_epoch, 40)).cache().repeat()
    timer = _StepTimes()

    def fresh(record):
        model.make_train_function(force=True)  # a newly traced function
        fn = model.train_function
        return fn if record is None else traced_with_stats(opt, fn, record)

    # each function's stats_recording (None: traced outside it)
    kinds = {"step": False, "A/A": False, "in-step": None, "cond form": None}
    names = list(kinds)
    rng = random.Random(0)
    means = {name: [] for name in names}
    per_step = {True: [], False: []}  # the in-step steps, recording or not
    for r in range(rounds):  # each round traces every function anew, in a rotated order
        window = StatsWindow(opt)
        fns = {name: fresh(kinds[name]) for name in names[r % 4:] + names[:r % 4]}
        for b in range(blocks + 1):  # the first block of a round traces
            for name in rng.sample(names, len(names)):  # shuffled: each follows each alike
                model.train_function = fns[name]
                timer.window = window if name == "in-step" else None
                callbacks = [window, timer] if name == "in-step" else [timer]
                model.fit(batches, steps_per_epoch=2 * n, epochs=1, verbose=0,
                          callbacks=callbacks)
                if name == "in-step":  # the window's functions, for the next block
                    fns[name] = window._fns[False]
                if b:
                    means[name].append(statistics.fmean(timer.times))
                    if name == "in-step":
                        for t, rec in zip(timer.times, timer.recording):
                            per_step[rec].append(t)
    # Paired: each block's time minus the mean of the two plain functions' blocks next to it
    # (slow drifts of the machine cancel), then the median over blocks.
    plain = [(a + b) / 2 for a, b in zip(means["step"], means["A/A"])]
    out = {name: statistics.median([m - p for m, p in zip(v, plain)]) * 1e3
           for name, v in means.items() if name not in ("step", "A/A")}
    out["plain"] = statistics.median(plain) * 1e3
    out["A/A"] = statistics.median([b - a for a, b in zip(means["step"], means["A/A"])]) * 1e3
    out["recording step"] = (statistics.median(per_step[True]) -
                             statistics.median(per_step[False])) * 1e3
    out["longest"] = opt.longest_interval
    return out


def bench(workload: str, data, args, out: str) -> list[tuple]:
    defaults = WandbTracker()
    n = args.every or defaults.stats_every
    blocks = max(args.steps // (2 * n * args.rounds), 2)
    step = in_step_ms(workload, data, n, args.rounds, blocks)

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

    base, aa = step["plain"], step["A/A"]
    in_step, cond, longest = step["in-step"], step["cond form"], step["longest"]
    rows = [("step", base, 1, base), ("A/A", aa, 1, aa),
            (f"in-step, N={n}", in_step, 1, in_step),
            (f"  recording step ({longest}/{n})", step["recording step"], n / longest,
             step["recording step"] * longest / n)]
    periods = {"read": n, "layer row": n, "timing": defaults.timing_every,
               "train row": defaults.log_every}
    for name, ms in parts.items():
        rows.append((name, ms, periods[name], ms / periods[name]))
    stats = in_step + parts["read"] / n + parts["layer row"] / n
    total = stats + parts["timing"] / defaults.timing_every + \
        parts["train row"] / defaults.log_every
    rows.append((f"statistics, N={n}", None, None, stats))
    rows.append(("all tracking, defaults", None, None, total))
    rows.append((f"(cond form, N={n})", cond, 1, cond))
    return rows, base


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000,
                        help="timed steps per train function (in blocks of N)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="times every train function is traced anew (they differ in speed)")
    parser.add_argument("--calls", type=int, default=60, help="repetitions of each W&B part")
    parser.add_argument("--every", type=int, default=None,
                        help="stats_every (default: the tracker's default)")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--data-dir", default=os.environ.get("NESTED_RESEARCH_DATA_DIR",
                                                             "data_dir"))
    args = parser.parse_args(argv)
    # W&B offline and quiet (a value already set wins): the parts are timed, nothing uploaded
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
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
                period = "" if every is None else f"{every:6.4g}"
                print(f"  {part:<24} {call:>8} {period:>6} {per_step:8.3f} "
                      f"{per_step / base * 100:7.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
