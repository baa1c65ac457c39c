"""Optimizer studies: run grids of training jobs with resume, and aggregate them.

Used by ``nested_research/studies/comparison.py``, ``nested_research/studies/ablation.py`` and
``nested_research/studies/horizon.py``.  Every job is one ``nested_research.training.job.run`` call
(in-process, ``logger=none``) with Hydra overrides; its ``results.json``
lands in ``<study>/runs/<job id>/`` and a job whose results exist is never
run again, so a killed study resumes where it stopped.  A job that raises is
recorded as failed (``failed.txt``) and the study goes on.

Each workload is scored by one validation metric (``metric_of``: accuracy,
or bits per byte for the language model).  Reported per workload and
optimizer (or ablation variant), over seeds (``summarize``):

- final test accuracy, mean +- std (sample std, ddof=1); best validation
  loss and best validation metric, mean +- std;
- AlgoPerf-style (``scoring.py``): the target from the best baseline, steps
  and seconds to it (median over seeds, a miss when fewer than half the seeds
  reach it), the ratio to the fastest, and each label's performance-profile
  score over all workloads;
- stability: loss spikes, epochs whose training loss rose more than 5% over
  the previous epoch, summed over seeds.

The figures are ``plots.py``; the learning-rate search ``lr_search.py``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field

import numpy as np

from nested_research.studies import processes, ray_pool, scoring
from nested_research.core.configs import conf_dir
from nested_research.core.files import replace_file

CONF_DIR = conf_dir()

#: Study sizes of the embedded workloads (epochs kept small enough for a 2-core CPU).
WORKLOADS = {
    "digits_mlp": ["experiment=digits_mlp", "trainer.epochs=10"],
    "mnist1d_cnn": ["experiment=mnist1d_cnn", "trainer.epochs=10"],
    "recall_transformer": ["experiment=recall_transformer", "trainer.epochs=6",
                           "data.builder_kwargs.config.num_train=4000"],
    # 10 epochs of 203 steps: >= 2,000 steps, the long-horizon real-data workload
    "lm_transformer": ["experiment=lm_transformer"],
}
#: Smoke-test sizes: a few eager steps (no tracing) on small batches.
QUICK_WORKLOADS = {
    "digits_mlp": ["experiment=digits_mlp", "trainer.max_steps=6", "trainer.epochs=2",
                   "trainer.batch_size=256", "trainer.run_eagerly=true"],
    "mnist1d_cnn": ["experiment=mnist1d_cnn", "trainer.max_steps=4", "trainer.epochs=2",
                    "trainer.batch_size=512", "trainer.run_eagerly=true"],
    "recall_transformer": ["experiment=recall_transformer", "trainer.max_steps=4",
                           "trainer.epochs=2", "data.builder_kwargs.config.num_train=256",
                           "data.builder_kwargs.config.num_test=64", "trainer.run_eagerly=true"],
    "lm_transformer": ["experiment=lm_transformer", "trainer.max_steps=4", "trainer.epochs=2",
                       "data.builder_kwargs.config.max_bytes=40000",
                       "trainer.run_eagerly=true"],
}
#: Workloads not scored by validation accuracy: (metric, direction).
METRICS = {"lm_transformer": ("val/bits_per_byte", "min")}
SPIKE_RATIO = 1.05
COST_FILE = "cost.json"
#: The error of a job that a report-only pass (``run_job(train=False)``) found not run yet.
NOT_RUN = "not run yet"


def optimizers() -> list[str]:
    """Every ``conf/optimizer`` choice: the family as the configs define it (nested first)."""
    names = sorted(os.path.splitext(f)[0] for f in os.listdir(os.path.join(CONF_DIR, "optimizer"))
                   if f.endswith(".yaml"))
    return sorted(names, key=lambda n: n != "nested")


@dataclass
class Job:
    workload: str
    label: str                 # optimizer or ablation variant
    seed: int
    overrides: list
    lr: float | None = None
    group: str = ""            # "tune" or "final"

    @property
    def job_id(self) -> str:
        key = json.dumps([self.workload, self.label, self.seed, sorted(self.overrides)])
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        return f"{self.workload}__{self.label}__s{self.seed}__{digest}"


@dataclass
class Outcome:
    job: Job
    results: dict | None
    error: str | None = None
    extra: dict = field(default_factory=dict)


def compose(overrides):
    from hydra import compose as hydra_compose, initialize_config_dir

    from nested_research.training.config_groups import register_resolvers

    register_resolvers()  # the configs' ${nr.join:...}, as the command line has it
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def run_job(job: Job, study_dir: str, base_overrides=(), train: bool = True) -> Outcome:
    """Run ``job`` unless its results exist; never raises.  ``train=False``: only read what
    exists (a job not run yet comes back with ``error == NOT_RUN``)."""
    import keras

    from nested_research.training.job import run

    out = os.path.join(study_dir, "runs", job.job_id)
    path = os.path.join(out, "results.json")
    if os.path.exists(path):
        with open(path) as fh:
            return Outcome(job, json.load(fh))
    if not train:
        return Outcome(job, None, error=NOT_RUN)
    keras.backend.clear_session()
    overrides = ["logger=none", "trainer.verbose=0", f"trainer.seed={job.seed}",
                 *base_overrides, *job.overrides]
    cpu = time.process_time()
    try:
        run(compose(overrides), out)
        replace_file(os.path.join(out, COST_FILE),
                     json.dumps({"cpu_seconds": time.process_time() - cpu}))
        with open(path) as fh:
            return Outcome(job, json.load(fh))
    except Exception as err:  # a failed job is a result too
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "failed.txt"), "w") as fh:
            fh.write(traceback.format_exc())
        return Outcome(job, None, error=f"{type(err).__name__}: {err}")


def run_seeds(jobs: list[Job], study_dir: str, train: bool, tag: str, name: str,
              show, twin: tuple[str, str] | None = None) -> list[Outcome] | None:
    """``run_job`` for each of ``jobs`` (one group: its seeds), each printed as
    ``[tag] name s<seed>: show(results)`` (or its error) unless not run yet; ``None`` (and a
    ``[report]`` line) when one is not run yet, so a report tabulates complete groups only.
    ``twin=(other_study_dir, label)``: a job that ran in that study under that label, with the
    same workload, seed and overrides, is the same run (``borrow``) and is not trained again."""
    runs = []
    for job in jobs:
        outcome = (borrow(job, *twin) if twin else None) or run_job(job, study_dir, train=train)
        runs.append(outcome)
        if outcome.error != NOT_RUN:
            shown = show(outcome.results) if outcome.results else outcome.error
            print(f"[{tag}] {name} s{job.seed}: {shown}", flush=True)
    if any(o.error == NOT_RUN for o in runs):
        print(f"[report] {name}: not complete, left out", flush=True)
        return None
    return runs


def borrow(job: Job, study_dir: str, label: str) -> Outcome | None:
    """``job``'s outcome when the same run (workload, seed, overrides) finished in another
    study under ``label``: the ablation's ``full`` is the comparison's ``nested``, and so on.
    Its cost stays with the study that trained it (``cost_line``)."""
    found = run_job(dataclasses.replace(job, label=label), study_dir, train=False)
    return Outcome(job, found.results, extra={"borrowed_from": study_dir}) \
        if found.results else None


def cpu_seconds(run_dir: str) -> float | None:
    """The CPU time of the run in ``run_dir`` (its ``cost.json``), or None where there is
    none (not trained in this study, or stopped between its results and its cost)."""
    path = os.path.join(run_dir, COST_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as fh:
        return json.load(fh)["cpu_seconds"]


def cost_line(outcomes: list[Outcome], study_dir: str) -> str:
    """The study's cost: the finished runs it trained itself, their CPU time (each run's
    ``cost.json``, written when it trained; a resumed run's counts too) and their training
    wall time; runs borrowed from another study (``borrow``) are counted apart, as that
    study's cost."""
    seen = {o.job.job_id: o for o in outcomes if o.results}
    own = [job_id for job_id, o in seen.items() if "borrowed_from" not in o.extra]
    cpu = sum(cpu_seconds(os.path.join(study_dir, "runs", job_id)) or 0.0 for job_id in own)
    wall = sum(seen[job_id].results.get("wall_time") or 0.0 for job_id in own)
    borrowed = len(seen) - len(own)
    return (f"[cost] {len(own)} runs, {cpu / 3600:.2f} CPU hours "
            f"({cpu:.0f} s over all cores), {wall / 3600:.2f} hours of training wall time"
            + (f"; {borrowed} more runs borrowed from other studies" if borrowed else ""))


def train_in_processes(module: str, common: list, flag: str, labels: list, jobs: int,
                       executor: str = "local") -> None:
    """``python -m module *common flag label`` for each of ``labels``, a process per label,
    ``jobs`` at a time (``processes.run_pool``, or ``ray_pool.run_pool`` with ``executor="ray"``),
    to the end; ``SystemExit`` if one failed.  The studies' ``--jobs``: they then tabulate with
    ``run_job(train=False)``."""
    import sys

    python = ray_pool.PYTHON if executor == "ray" else sys.executable
    argv = [python, "-m", module, *common, flag]
    tasks = [processes.Task(label, [*argv, label]) for label in dict.fromkeys(labels)]
    failed = (ray_pool.run_pool if executor == "ray" else processes.run_pool)(tasks, jobs)
    if failed:
        raise SystemExit(f"training processes failed: {', '.join(failed)}")


def publish(study_dir: str, target: str, stem: str) -> None:
    """Copy ``<stem>.md``/``.csv``/``.png`` and ``<stem>_*.png`` of ``study_dir`` into
    ``target``."""
    os.makedirs(target, exist_ok=True)
    for name in sorted(os.listdir(study_dir)):
        if name in (f"{stem}.md", f"{stem}.csv", f"{stem}.png") or (
                name.startswith(f"{stem}_") and name.endswith(".png")):
            shutil.copy(os.path.join(study_dir, name), os.path.join(target, name))


def default_lr(optimizer: str) -> float:
    return float(compose([f"optimizer={optimizer}"]).optimizer.learning_rate)


# ---------------------------------------------------------------- aggregation
def metric_of(workload: str) -> tuple[str, str]:
    """The validation metric a workload is scored by, and its direction (``max``/``min``)."""
    return METRICS.get(workload, ("val/accuracy", "max"))


def mean_std(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), std


def curve(results: dict, metric: str) -> list:
    return list(results.get("history", {}).get(metric, []))


def eval_points(results: dict, metric: str) -> tuple[list, list]:
    """The optimizer step and the wall time (pro rata) of each evaluation of ``metric``
    (one per epoch, the last at the run's end)."""
    n = len(curve(results, metric))
    steps, wall = results.get("steps", 0), results.get("wall_time") or float("nan")
    return ([steps * (i + 1) / n for i in range(n)], [wall * (i + 1) / n for i in range(n)])


def final_value(results: dict | None, metric: str) -> float:
    """A run's last validation value (NaN for a failed run): what the search selects by."""
    values = curve(results, metric) if results else []
    return float(values[-1]) if values and values[-1] is not None else float("nan")


def loss_spikes(results: dict) -> int:
    losses = results.get("history", {}).get("train/loss", [])
    return sum(1 for a, b in zip(losses, losses[1:]) if b > SPIKE_RATIO * a)


def summarize(outcomes: list[Outcome], baselines: set[str]) -> list[dict]:
    """One row per (workload, label) over the final jobs, with the AlgoPerf-style scores of
    ``scoring.py`` (targets from ``baselines``)."""
    by_key: dict = {}
    for o in outcomes:
        by_key.setdefault((o.job.workload, o.job.label), []).append(o)
    rows, ratios, seconds_ratios = [], {}, {}
    for workload in sorted({w for w, _ in by_key}):
        metric, direction = metric_of(workload)
        labels = sorted(label for w, label in by_key if w == workload)
        ok = {label: [o for o in by_key[workload, label] if o.results] for label in labels}
        best = {label: [scoring.best_value(curve(o.results, metric), direction)
                        for o in ok[label]] for label in labels}
        target = scoring.target(best, baselines, direction)
        times, seconds, reached = {}, {}, {}
        for label in labels:
            steps, secs = [], []
            for o in ok[label]:
                at_steps, at_seconds = eval_points(o.results, metric)
                values = curve(o.results, metric)
                steps.append(scoring.first_reach(values, at_steps, target, direction))
                secs.append(scoring.first_reach(values, at_seconds, target, direction))
            reached[label] = sum(1 for s in steps if math.isfinite(s))
            misses = len(by_key[workload, label]) - len(ok[label])  # failed runs miss too
            times[label] = scoring.median_time(steps + [math.inf] * misses)
            seconds[label] = scoring.median_time(secs + [math.inf] * misses)
        ratios[workload] = scoring.ratios(times)
        seconds_ratios[workload] = scoring.ratios(seconds)
        for label in labels:
            group, good = by_key[workload, label], ok[label]
            test = mean_std([o.results["metrics"].get("test/accuracy") for o in good])
            best_val = mean_std([o.results["metrics"].get("val/best_loss") for o in good])
            val = mean_std(best[label])
            rows.append({
                "workload": workload, "label": label, "lr": group[0].job.lr,
                "seeds": len(group), "failed": len(group) - len(good),
                "test_acc_mean": test[0], "test_acc_std": test[1],
                "best_val_loss_mean": best_val[0], "best_val_loss_std": best_val[1],
                "target_val_acc": target if metric == "val/accuracy" else None,
                "steps_to_target": _finite(times[label]),
                "reached": f"{reached[label]}/{len(group)}",
                "loss_spikes": sum(loss_spikes(o.results) for o in good),
                "wall_time_mean": mean_std([o.results.get("wall_time") for o in good])[0],
                "metric": metric, "target": target,
                "val_metric_mean": val[0], "val_metric_std": val[1],
                "seconds_to_target": _finite(seconds[label]),
                "ratio_to_best": ratios[workload][label],
                "seconds_ratio_to_best": seconds_ratios[workload][label],
            })
    for row in rows:
        row["score"] = scoring.score(ratios, row["label"])
        row["seconds_score"] = scoring.score(seconds_ratios, row["label"])
    return rows


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _fmt(mean, std, digits=3):
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def number(x, fmt: str) -> str:
    """``x`` formatted with ``fmt``; ``-`` for ``None`` or a non-finite value."""
    return "-" if x is None or not math.isfinite(x) else format(x, fmt)


def markdown_table(rows: list[dict], label_name: str) -> str:
    """Per (workload, label) rows, then the profile scores per label (``scoring.py``)."""
    header = ["workload", label_name, "lr", "test acc (mean ± std)", "best val metric",
              "steps to target (reached)", "ratio to best", "s to target", "loss spikes",
              "s/run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["workload"], r["label"], number(r["lr"], ".2g"),
            _fmt(r["test_acc_mean"], r["test_acc_std"]),
            f"{r['metric'].split('/')[-1]} {_fmt(r['val_metric_mean'], r['val_metric_std'])}",
            f"{number(r['steps_to_target'], '.0f')} ({r['reached']})",
            number(r["ratio_to_best"], ".2f"), number(r["seconds_to_target"], ".1f"),
            str(r["loss_spikes"]), number(r["wall_time_mean"], ".1f"),
        ]) + " |")
    scores = {r["label"]: (r["score"], r["seconds_score"]) for r in rows}
    lines += ["", f"| {label_name} | score (steps) | score (seconds) |", "|---|---|---|"]
    for label, (steps, seconds) in sorted(scores.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {label} | {steps:.3f} | {seconds:.3f} |")
    return "\n".join(lines)


def write_tables(rows: list[dict], study_dir: str, stem: str, label_name: str) -> str:
    os.makedirs(study_dir, exist_ok=True)
    table = markdown_table(rows, label_name)
    with open(os.path.join(study_dir, f"{stem}.md"), "w") as fh:
        fh.write(table + "\n")
    write_csv(rows, os.path.join(study_dir, f"{stem}.csv"))
    return table


def write_csv(rows: list[dict], path: str) -> None:
    """``rows`` as a CSV file, the first row's keys as the header."""
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["workload"])
        writer.writeheader()
        writer.writerows(rows)


