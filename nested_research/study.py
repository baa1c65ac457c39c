"""Optimizer studies: run grids of training jobs with resume, aggregate, tabulate, plot.

Used by ``scripts/compare_optimizers.py`` and ``scripts/ablation.py``.  Every
job is one ``nested_research.job.run`` call (in-process, ``logger=none``)
with Hydra overrides; its ``results.json`` lands in ``<study>/runs/<job id>/``
and a job whose results exist is never run again, so a killed study resumes
where it stopped.  A job that raises is recorded as failed (``failed.txt``)
and the study goes on.

Reported per workload and optimizer (or ablation variant), over seeds:

- final test accuracy, mean +- std (sample std, ddof=1);
- best validation loss, mean +- std;
- steps to target: the median over seeds of the first optimizer step at the
  end of an epoch whose validation accuracy reaches the target, with the
  number of seeds that reached it; the target is the best *baseline's* mean
  final validation accuracy (AlgoPerf's way of setting targets);
- stability: loss spikes, epochs whose training loss rose more than 5% over
  the previous epoch, summed over seeds.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import traceback
from dataclasses import dataclass, field

import numpy as np

CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")

#: Study sizes of the embedded workloads (epochs kept small enough for a 2-core CPU).
WORKLOADS = {
    "digits_mlp": ["experiment=digits_mlp", "trainer.epochs=10"],
    "mnist1d_cnn": ["experiment=mnist1d_cnn", "trainer.epochs=10"],
    "recall_transformer": ["experiment=recall_transformer", "trainer.epochs=6",
                           "data.builder_kwargs.config.num_train=4000"],
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
}
SPIKE_RATIO = 1.05


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

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return hydra_compose("config", overrides=list(overrides))


def run_job(job: Job, study_dir: str, base_overrides=()) -> Outcome:
    """Run ``job`` unless its results exist; never raises."""
    import keras

    from nested_research.job import run

    out = os.path.join(study_dir, "runs", job.job_id)
    path = os.path.join(out, "results.json")
    if os.path.exists(path):
        with open(path) as fh:
            return Outcome(job, json.load(fh))
    keras.backend.clear_session()
    overrides = ["logger=none", "trainer.verbose=0", f"trainer.seed={job.seed}",
                 *base_overrides, *job.overrides]
    try:
        run(compose(overrides), out)
        with open(path) as fh:
            return Outcome(job, json.load(fh))
    except Exception as err:  # a failed job is a result too
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "failed.txt"), "w") as fh:
            fh.write(traceback.format_exc())
        return Outcome(job, None, error=f"{type(err).__name__}: {err}")


def default_lr(optimizer: str) -> float:
    return float(compose([f"optimizer={optimizer}"]).optimizer.learning_rate)


# ---------------------------------------------------------------- aggregation
def _mean_std(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return float(np.mean(values)), std


def steps_to_target(results: dict, target: float) -> int | None:
    history = results.get("history", {})
    accs = history.get("val/accuracy", [])
    if not accs:
        return None
    steps = results["steps"]
    per_epoch = steps / max(len(accs), 1)
    for i, acc in enumerate(accs):
        if acc >= target:
            return int(round(per_epoch * (i + 1)))
    return None


def loss_spikes(results: dict) -> int:
    losses = results.get("history", {}).get("train/loss", [])
    return sum(1 for a, b in zip(losses, losses[1:]) if b > SPIKE_RATIO * a)


def summarize(outcomes: list[Outcome], baselines: set[str]) -> list[dict]:
    """One row per (workload, label) over the final jobs."""
    rows = []
    by_key: dict = {}
    for o in outcomes:
        by_key.setdefault((o.job.workload, o.job.label), []).append(o)
    targets = {}
    for (workload, label), group in by_key.items():
        if label in baselines:
            mean, _ = _mean_std([o.results["metrics"].get("val/accuracy") for o in group
                                 if o.results])
            if math.isfinite(mean):
                targets[workload] = max(targets.get(workload, -1.0), mean)
    for (workload, label), group in sorted(by_key.items()):
        ok = [o for o in group if o.results]
        test = _mean_std([o.results["metrics"].get("test/accuracy") for o in ok])
        best_val = _mean_std([o.results["metrics"].get("val/best_loss") for o in ok])
        target = targets.get(workload)
        reached = [steps_to_target(o.results, target) for o in ok] if target is not None else []
        hits = [s for s in reached if s is not None]
        rows.append({
            "workload": workload, "label": label, "lr": group[0].job.lr,
            "seeds": len(group), "failed": len(group) - len(ok),
            "test_acc_mean": test[0], "test_acc_std": test[1],
            "best_val_loss_mean": best_val[0], "best_val_loss_std": best_val[1],
            "target_val_acc": target,
            "steps_to_target": float(np.median(hits)) if hits else None,
            "reached": f"{len(hits)}/{len(ok)}",
            "loss_spikes": sum(loss_spikes(o.results) for o in ok),
            "wall_time_mean": _mean_std([o.results.get("wall_time") for o in ok])[0],
        })
    return rows


def _fmt(mean, std, digits=3):
    if mean is None or not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(rows: list[dict], label_name: str) -> str:
    header = ["workload", label_name, "lr", "test acc (mean ± std)", "best val loss",
              "steps to target", "loss spikes", "s/run"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        stt = "-" if r["steps_to_target"] is None else f"{r['steps_to_target']:.0f}"
        lines.append("| " + " | ".join([
            r["workload"], r["label"], "-" if r["lr"] is None else f"{r['lr']:.2g}",
            _fmt(r["test_acc_mean"], r["test_acc_std"]),
            _fmt(r["best_val_loss_mean"], r["best_val_loss_std"]),
            f"{stt} ({r['reached']})", str(r["loss_spikes"]),
            f"{r['wall_time_mean']:.1f}" if math.isfinite(r["wall_time_mean"]) else "-",
        ]) + " |")
    return "\n".join(lines)


def write_tables(rows: list[dict], study_dir: str, stem: str, label_name: str) -> str:
    os.makedirs(study_dir, exist_ok=True)
    table = markdown_table(rows, label_name)
    with open(os.path.join(study_dir, f"{stem}.md"), "w") as fh:
        fh.write(table + "\n")
    with open(os.path.join(study_dir, f"{stem}.csv"), "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["workload"])
        writer.writeheader()
        writer.writerows(rows)
    return table


# ---------------------------------------------------------------- plots
def plot_curves(outcomes: list[Outcome], path: str, metric: str = "val/loss") -> None:
    """Per workload: ``metric`` per epoch, mean over seeds with a +-std band, per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({o.job.workload for o in outcomes})
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 3.6), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        labels = sorted({o.job.label for o in outcomes if o.job.workload == workload})
        for label in labels:
            curves = [o.results["history"].get(metric, []) for o in outcomes
                      if o.job.workload == workload and o.job.label == label and o.results]
            curves = [c for c in curves if c]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            arr = np.array([c[:n] for c in curves], dtype=float)
            x = np.arange(1, n + 1)
            mean, std = arr.mean(0), arr.std(0)
            ax.plot(x, mean, label=label)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_title(workload)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_lr_sensitivity(outcomes: list[Outcome], path: str,
                        metric: str = "val/accuracy") -> None:
    """Per workload: final ``metric`` against learning rate, one line per optimizer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = sorted({o.job.workload for o in outcomes})
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 3.6), squeeze=False)
    for ax, workload in zip(axes[0], workloads):
        for label in sorted({o.job.label for o in outcomes if o.job.workload == workload}):
            pts = sorted((o.job.lr, o.results["metrics"].get(metric, float("nan"))
                          if o.results else float("nan"))
                         for o in outcomes if o.job.workload == workload and o.job.label == label)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_title(workload)
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"final {metric}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
